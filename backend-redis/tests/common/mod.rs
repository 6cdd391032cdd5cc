//! Test support: the shared server's URL, a private `redis-server` we can
//! kill, and a proxy that counts the commands reaching the server.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstore_conformance::provision::{Service, server_url};
use lockstore_redis::RedisStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// The shared test server (`LOCKSTORE_TEST_REDIS_URL`, or a container).
pub fn url() -> String {
    server_url(Service::Redis)
}

/// A fresh prefix, so runs and cases never meet.
pub fn fresh_prefix(label: &str) -> String {
    format!("lockstore-test:{label}:{:016x}:", rand::random::<u64>())
}

/// A store on the shared server under a fresh prefix.
pub async fn store(label: &str) -> RedisStore {
    RedisStore::builder(url())
        .key_prefix(fresh_prefix(label))
        .connect()
        .await
        .expect("connect to the test Redis")
}

/// A plain connection for looking behind the store's back.
pub async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("test URL parses")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test Redis")
}

/// A `redis-server` of our own, without persistence, that tests may kill and
/// restart. Killed on drop.
pub struct PrivateServer {
    binary: String,
    pub port: u16,
    child: Option<Child>,
}

impl PrivateServer {
    /// Starts one on a free port.
    pub async fn start() -> Self {
        let binary = std::env::var("LOCKSTORE_TEST_REDIS_SERVER")
            .unwrap_or_else(|_| "redis-server".to_owned());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = Self {
            binary,
            port,
            child: None,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot run `{}` ({err}). This test needs its own redis-server to restart: \
                     install it (Debian/Ubuntu: `apt-get install redis-server`, macOS: `brew install redis`) \
                     or point LOCKSTORE_TEST_REDIS_SERVER at the binary.",
                    self.binary
                )
            });
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut reply = [0u8; 64];
                if stream.write_all(b"PING\r\n").await.is_ok()
                    && let Ok(n) = stream.read(&mut reply).await
                    && reply[..n].starts_with(b"+PONG")
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on port {} did not come up",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }

    /// Kills the server (all data is lost) and starts it again on the same port.
    pub async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
        self.spawn().await;
    }
}

/// A TCP proxy in front of a server that records the name of every command
/// clients send through it.
pub struct CountingProxy {
    pub addr: SocketAddr,
    commands: Arc<Mutex<Vec<String>>>,
}

impl CountingProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let commands = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&commands);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let upward = async move {
                        let mut parser = CommandParser::default();
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match client_rx.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            for name in parser.feed(&buf[..n]) {
                                log.lock().unwrap().push(name);
                            }
                            if server_tx.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let downward = async move {
                        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                    };
                    tokio::join!(upward, downward);
                });
            }
        });
        Self { addr, commands }
    }

    /// Forgets what was recorded so far.
    pub fn clear(&self) {
        self.commands.lock().unwrap().clear();
    }

    /// The command names recorded since the last `clear`, upper case.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.commands.lock().unwrap())
    }
}

/// Splits a client's RESP stream (arrays of bulk strings) into commands.
#[derive(Default)]
struct CommandParser {
    pending: Vec<u8>,
}

impl CommandParser {
    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut names = Vec::new();
        while let Some((name, used)) = parse_command(&self.pending) {
            names.push(name);
            self.pending.drain(..used);
        }
        names
    }
}

fn parse_command(buf: &[u8]) -> Option<(String, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }
    let (header, mut at) = line(buf, 0)?;
    let count: usize = std::str::from_utf8(header.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut name = String::new();
    for i in 0..count {
        let (len, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        let data = buf.get(next..next + len)?;
        if i == 0 {
            name = String::from_utf8_lossy(data).to_uppercase();
        }
        at = next + len + 2;
        if buf.len() < at {
            return None;
        }
    }
    Some((name, at))
}

/// The fenced write's promise on `conn`: an absent key and a higher fence
/// are written; the same or a lower fence is refused and changes nothing.
pub async fn fenced_set_refuses_stale_fences<C>(conn: &mut C, key: &str)
where
    C: redis::aio::ConnectionLike + Send,
{
    use lockstore_api::FencingToken;
    use lockstore_redis::fenced_write::{FencedSet, fenced_set, read_fenced};
    let token = FencingToken::new;
    assert_eq!(read_fenced(conn, key).await.unwrap(), None);
    assert_eq!(
        fenced_set(conn, key, token(9), b"nine").await.unwrap(),
        FencedSet::Applied
    );
    assert_eq!(
        fenced_set(conn, key, token(5), b"five").await.unwrap(),
        FencedSet::Stale { stored: token(9) }
    );
    assert_eq!(
        fenced_set(conn, key, token(9), b"again").await.unwrap(),
        FencedSet::Stale { stored: token(9) }
    );
    assert_eq!(
        read_fenced(conn, key).await.unwrap(),
        Some((token(9), b"nine".to_vec()))
    );
    // Compared as numbers, not text ("10" < "9" as text), and beyond a
    // Lua double's 2^53.
    assert_eq!(
        fenced_set(conn, key, token(10), b"ten").await.unwrap(),
        FencedSet::Applied
    );
    let (high, higher) = (token(u64::MAX - 1), token(u64::MAX));
    assert_eq!(
        fenced_set(conn, key, higher, b"max").await.unwrap(),
        FencedSet::Applied
    );
    assert_eq!(
        fenced_set(conn, key, high, b"max-1").await.unwrap(),
        FencedSet::Stale { stored: higher }
    );
    assert_eq!(
        read_fenced(conn, key).await.unwrap(),
        Some((higher, b"max".to_vec()))
    );
}
