//! A TCP proxy that injects faults between a store and its server.
//!
//! A test points a store at [`FaultProxy::addr`] instead of the server, then
//! breaks the path under it while requests are in flight. The proxy has one
//! **mode** ([`Mode`]) that every open connection follows at once and every
//! new connection starts with, so an outage is an outage:
//!
//! * [`delay`](FaultProxy::delay): latency per direction — each chunk of
//!   bytes is held back for the delay after it was read, without limiting
//!   throughput (a slow or long link);
//! * [`blackhole`](FaultProxy::blackhole): nothing is forwarded either way,
//!   sockets stay open and bytes wait (in the proxy and in kernel buffers);
//!   new connections are accepted but never reach the server. No error, just
//!   silence — a partition, or a NAT that lost its mapping. Bytes flow again
//!   when the mode heals, as after a partition heals;
//! * [`half_open`](FaultProxy::half_open): one direction only, stalled
//!   ([`Flow::Stall`]: requests reach the server, its replies do not come
//!   back, so the server acts and the client never hears) or closed
//!   ([`Flow::Closed`]: that direction gets a FIN and stays shut);
//! * [`reset`](FaultProxy::reset): every open connection is closed with a
//!   TCP reset and every new one is reset on arrival (a `REJECT
//!   --reject-with tcp-reset` firewall, or a server that is down);
//! * [`heal`](FaultProxy::heal): back to forwarding; stalled bytes flow.
//!
//! Two one-shot actions on the connections open *now* leave the mode (and
//! new connections) alone, as after a one-off network hiccup:
//! [`reset_all`](FaultProxy::reset_all) resets them, and
//! [`blackhole_open`](FaultProxy::blackhole_open) silences them for good
//! (a NAT or load balancer that dropped an idle flow: those sockets never
//! carry a byte again).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

/// What the proxy does to the bytes going one way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flow {
    /// Forward at once.
    #[default]
    Pass,
    /// Forward each chunk this long after it was read.
    Delay(Duration),
    /// Forward nothing, keep the bytes and the sockets; they flow again when
    /// the direction passes again.
    Stall,
    /// Send a FIN this way and forward nothing more, ever, on connections
    /// that saw it; new connections start with this direction shut.
    Closed,
}

/// One way through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the store (the client) to the server: requests.
    ToServer,
    /// From the server to the store: replies.
    ToClient,
}

/// What the proxy does, for open and new connections alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mode {
    /// Requests.
    pub to_server: Flow,
    /// Replies.
    pub to_client: Flow,
    /// Reset every connection, open or new.
    pub refuse: bool,
}

impl Mode {
    fn flow(&self, direction: Direction) -> Flow {
        match direction {
            Direction::ToServer => self.to_server,
            Direction::ToClient => self.to_client,
        }
    }
}

/// What a one-shot action did to one open connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Fate {
    /// Silenced for good ([`FaultProxy::blackhole_open`]).
    silenced: bool,
    /// Reset ([`FaultProxy::reset_all`]).
    reset: bool,
}

/// A running proxy; it stops (resetting every connection) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    connections: Arc<Mutex<Vec<watch::Sender<Fate>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) to `upstream` (`host:port`),
    /// forwarding.
    ///
    /// # Panics
    /// If no local port can be bound: a test set-up failure.
    pub async fn start(upstream: impl Into<String>) -> Self {
        let upstream = upstream.into();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (mode, mode_rx) = watch::channel(Mode::default());
        let connections: Arc<Mutex<Vec<watch::Sender<Fate>>>> = Arc::default();
        let registry = Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if mode_rx.borrow().refuse {
                    reset_stream(&client);
                    continue;
                }
                let (fate, fate_rx) = watch::channel(Fate::default());
                let mut open = registry.lock().expect("not poisoned");
                open.retain(|tx| !tx.is_closed());
                open.push(fate);
                tokio::spawn(serve(client, upstream.clone(), mode_rx.clone(), fate_rx));
            }
        });
        Self {
            addr,
            mode,
            connections,
            accept,
        }
    }

    /// Where to point the store.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Switches every connection, open and new, to `mode`.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Adds latency: requests arrive `to_server` late, replies `to_client`.
    pub fn delay(&self, to_server: Duration, to_client: Duration) {
        self.set_mode(Mode {
            to_server: Flow::Delay(to_server),
            to_client: Flow::Delay(to_client),
            refuse: false,
        });
    }

    /// Forwards nothing either way, on open and new connections, without
    /// closing anything.
    pub fn blackhole(&self) {
        self.set_mode(Mode {
            to_server: Flow::Stall,
            to_client: Flow::Stall,
            refuse: false,
        });
    }

    /// Breaks one direction only (`flow` is [`Flow::Stall`] or
    /// [`Flow::Closed`]); the other keeps forwarding.
    pub fn half_open(&self, broken: Direction, flow: Flow) {
        let mut mode = Mode::default();
        match broken {
            Direction::ToServer => mode.to_server = flow,
            Direction::ToClient => mode.to_client = flow,
        }
        self.set_mode(mode);
    }

    /// Resets every open connection and every new one until [`heal`](Self::heal).
    pub fn reset(&self) {
        self.set_mode(Mode {
            refuse: true,
            ..Mode::default()
        });
    }

    /// Forwards again: stalled bytes flow, new connections go through.
    /// Directions already closed stay closed.
    pub fn heal(&self) {
        self.set_mode(Mode::default());
    }

    /// Resets every connection open now; new ones are untouched.
    pub fn reset_all(&self) {
        self.act(Fate {
            silenced: false,
            reset: true,
        });
    }

    /// Stops forwarding, for good, on every connection open now, without
    /// closing it; new ones are untouched.
    pub fn blackhole_open(&self) {
        self.act(Fate {
            silenced: true,
            reset: false,
        });
    }

    /// How many connections are open through the proxy (neither reset nor
    /// closed by both sides).
    pub fn open_connections(&self) -> usize {
        let mut open = self.connections.lock().expect("not poisoned");
        open.retain(|tx| !tx.is_closed());
        open.len()
    }

    fn act(&self, fate: Fate) {
        let mut open = self.connections.lock().expect("not poisoned");
        open.retain(|tx| {
            tx.send_modify(|f| {
                f.silenced |= fate.silenced;
                f.reset |= fate.reset;
            });
            !tx.is_closed()
        });
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset_all();
    }
}

/// One connection: waits until requests may flow before it dials the server
/// (a blackholed SYN never reaches it either), then pumps both ways under
/// the mode until both sides closed, or resets both on a reset.
async fn serve(
    client: TcpStream,
    upstream: String,
    mut mode: watch::Receiver<Mode>,
    mut fate: watch::Receiver<Fate>,
) {
    loop {
        let (m, f) = (*mode.borrow_and_update(), *fate.borrow_and_update());
        if m.refuse || f.reset {
            return reset_stream(&client);
        }
        if !f.silenced && m.to_server != Flow::Stall {
            break;
        }
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return reset_stream(&client) },
            changed = fate.changed() => if changed.is_err() { return reset_stream(&client) },
        }
    }
    let Ok(server) = TcpStream::connect(&upstream).await else {
        // As a client dialing a dead server sees it: refused.
        return reset_stream(&client);
    };
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up = pump(
        &mut client_rx,
        &mut server_tx,
        Direction::ToServer,
        mode.clone(),
        fate.clone(),
    );
    let down = pump(
        &mut server_rx,
        &mut client_tx,
        Direction::ToClient,
        mode.clone(),
        fate.clone(),
    );
    let finished = tokio::select! {
        both = async { tokio::try_join!(up, down) } => both.is_ok(),
        () = reset_requested(&mut mode, &mut fate) => false,
    };
    if !finished {
        reset_stream(client_rx.as_ref());
        reset_stream(server_rx.as_ref());
    }
}

/// Resolves when the mode or a one-shot action asks for a reset, or the
/// proxy is gone.
async fn reset_requested(mode: &mut watch::Receiver<Mode>, fate: &mut watch::Receiver<Fate>) {
    loop {
        if mode.borrow_and_update().refuse || fate.borrow_and_update().reset {
            return;
        }
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
            changed = fate.changed() => if changed.is_err() { return },
        }
    }
}

/// Chunks a direction may hold back before it stops reading (and TCP's own
/// flow control takes over).
const MAX_HELD_CHUNKS: usize = 64;

/// Copies one direction under the mode. `Ok` when the source closed and the
/// close was passed on; `Err` when the connection must be reset (a read or
/// write error: pass the abort on, as a real network path would).
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    direction: Direction,
    mut mode: watch::Receiver<Mode>,
    mut fate: watch::Receiver<Fate>,
) -> Result<(), ()> {
    let mut buf = vec![0u8; 16 * 1024];
    // Bytes read, each with the instant it may be written.
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut source_closed = false;
    loop {
        let flow = if fate.borrow_and_update().silenced {
            Flow::Stall
        } else {
            mode.borrow_and_update().flow(direction)
        };
        let delay = match flow {
            Flow::Closed => {
                // Shut for good; drop what was in flight, and stop reading.
                let _ = to.shutdown().await;
                let never: std::convert::Infallible = std::future::pending().await;
                match never {}
            }
            Flow::Stall => {
                tokio::select! {
                    changed = mode.changed() => changed.map_err(drop)?,
                    changed = fate.changed() => changed.map_err(drop)?,
                }
                continue;
            }
            Flow::Pass => Duration::ZERO,
            Flow::Delay(delay) => delay,
        };
        if source_closed && held.is_empty() {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let next_due = held.front().map(|(due, _)| *due);
        tokio::select! {
            read = from.read(&mut buf), if !source_closed && held.len() < MAX_HELD_CHUNKS => match read {
                Ok(0) => source_closed = true,
                Ok(n) => held.push_back((Instant::now() + delay, buf[..n].to_vec())),
                Err(_) => return Err(()),
            },
            () = sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let (_, bytes) = held.pop_front().expect("a chunk is due");
                to.write_all(&bytes).await.map_err(drop)?;
            }
            changed = mode.changed() => changed.map_err(drop)?,
            changed = fate.changed() => changed.map_err(drop)?,
        }
    }
}

/// Closes with RST (zero linger) rather than FIN, once the last handle to
/// the socket is dropped.
fn reset_stream(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// The `host:port` of a server URL (`scheme://[user[:password]@]host:port[/…]`),
/// for a proxy's upstream; `None` without a port.
pub fn url_host_port(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    host_port.rsplit_once(':')?;
    Some(host_port.to_owned())
}

/// `url` with its `host:port` replaced by `addr` (credentials, path and
/// query kept): the same server's URL, reached through a proxy, or a
/// private server's.
///
/// # Panics
/// When `url` has no `scheme://host:port`: a test set-up failure.
pub fn url_with_addr(url: &str, addr: SocketAddr) -> String {
    let host_port = url_host_port(url).unwrap_or_else(|| panic!("{url:?} names no host:port"));
    let (scheme, rest) = url.split_once("://").expect("checked");
    let at = rest.find(&host_port).expect("found above");
    format!(
        "{scheme}://{}{addr}{}",
        &rest[..at],
        &rest[at + host_port.len()..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_repointed_keeping_everything_else() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            url_with_addr("postgres://postgres@127.0.0.1:5432/lockstore_test", addr),
            "postgres://postgres@127.0.0.1:9/lockstore_test"
        );
        assert_eq!(
            url_with_addr("redis://127.0.0.1:6379", addr),
            "redis://127.0.0.1:9"
        );
        assert_eq!(
            url_host_port("http://user:pw@localhost:8000/x?y=1").as_deref(),
            Some("localhost:8000")
        );
        assert_eq!(url_host_port("redis://localhost"), None);
    }

    /// An upstream that echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut rx, mut tx) = socket.split();
                    let _ = tokio::io::copy(&mut rx, &mut tx).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut reply = vec![0u8; message.len()];
        stream.read_exact(&mut reply).await?;
        Ok(reply)
    }

    const HANG: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn forwards_until_told_otherwise() {
        let proxy = FaultProxy::start(echo_server().await.to_string()).await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"ping").await.unwrap(), b"ping");
        assert_eq!(proxy.open_connections(), 1);
    }

    #[tokio::test]
    async fn delay_holds_each_direction_back() {
        let proxy = FaultProxy::start(echo_server().await.to_string()).await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut stream, b"warm").await.unwrap();
        let delay = Duration::from_millis(150);
        proxy.delay(delay, delay);
        let sent = Instant::now();
        round_trip(&mut stream, b"slow").await.unwrap();
        // A lower bound only: the delay is a minimum by construction.
        assert!(sent.elapsed() >= delay * 2, "{:?}", sent.elapsed());
    }

    #[tokio::test]
    async fn blackhole_stalls_open_and_new_connections_until_healed() {
        let proxy = FaultProxy::start(echo_server().await.to_string()).await;
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut open, b"warm").await.unwrap();
        proxy.blackhole();
        open.write_all(b"lost?").await.unwrap();
        let mut reply = [0u8; 5];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), open.read_exact(&mut reply))
                .await
                .is_err(),
            "a blackholed connection answered"
        );
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        new.write_all(b"new").await.unwrap();
        let mut new_reply = [0u8; 3];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), new.read_exact(&mut new_reply))
                .await
                .is_err(),
            "a connection opened during the blackhole answered"
        );
        proxy.heal();
        tokio::time::timeout(HANG, open.read_exact(&mut reply))
            .await
            .expect("stalled bytes did not flow after healing")
            .unwrap();
        assert_eq!(&reply, b"lost?");
        tokio::time::timeout(HANG, new.read_exact(&mut new_reply))
            .await
            .expect("a connection opened in the blackhole did not go through after healing")
            .unwrap();
        assert_eq!(&new_reply, b"new");
    }

    #[tokio::test]
    async fn half_open_lets_requests_through_but_not_replies() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = FaultProxy::start(upstream.local_addr().unwrap().to_string()).await;
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        client.write_all(b"a").await.unwrap();
        let (mut server, _) = upstream.accept().await.unwrap();
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).await.unwrap();
        proxy.half_open(Direction::ToClient, Flow::Stall);
        client.write_all(b"b").await.unwrap();
        tokio::time::timeout(HANG, server.read_exact(&mut byte))
            .await
            .expect("a request did not reach the server through a half-open path")
            .unwrap();
        assert_eq!(&byte, b"b");
        server.write_all(b"r").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), client.read_exact(&mut byte))
                .await
                .is_err(),
            "a reply came back through the stalled direction"
        );
        proxy.half_open(Direction::ToClient, Flow::Closed);
        let read = tokio::time::timeout(HANG, client.read(&mut byte))
            .await
            .expect("a closed direction did not close");
        assert!(matches!(read, Ok(0)), "{read:?}");
    }

    #[tokio::test]
    async fn reset_kills_open_connections_and_refuses_new_ones_until_healed() {
        let proxy = FaultProxy::start(echo_server().await.to_string()).await;
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut open, b"warm").await.unwrap();
        proxy.reset();
        let err = tokio::time::timeout(HANG, round_trip(&mut open, b"dead"))
            .await
            .expect("a reset connection hung")
            .expect_err("a reset connection still answered");
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ),
            "{err:?}"
        );
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        let refused = tokio::time::timeout(HANG, round_trip(&mut new, b"new"))
            .await
            .expect("a refused connection hung");
        assert!(refused.is_err(), "a new connection went through a reset");
        proxy.heal();
        let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut after, b"ok").await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn one_shot_actions_leave_new_connections_alone() {
        let proxy = FaultProxy::start(echo_server().await.to_string()).await;
        let mut silenced = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut silenced, b"warm").await.unwrap();
        proxy.blackhole_open();
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut fresh, b"new").await.unwrap(), b"new");
        silenced.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), silenced.read_exact(&mut byte))
                .await
                .is_err()
        );
        proxy.reset_all();
        let read = tokio::time::timeout(HANG, silenced.read(&mut byte))
            .await
            .expect("reset_all did not end a silenced connection");
        assert!(!matches!(read, Ok(n) if n > 0), "{read:?}");
        // `fresh` was open at reset_all too.
        assert!(round_trip(&mut fresh, b"still").await.is_err());
    }
}
