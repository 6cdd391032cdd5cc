//! Servers of a case's own, to stop and start: the restart cases.
//!
//! Each is a child process on a free port of 127.0.0.1, started from the
//! locally installed binaries (what `scripts/servers.sh start` installs),
//! with its data in a fresh temporary directory, stopped and cleaned up when
//! dropped. A missing binary fails the case with how to install it.
//!
//! | server | binary | stop | what a restart keeps |
//! |---|---|---|---|
//! | Redis | `LOCKSTORE_TEST_REDIS_SERVER` or `redis-server` on `PATH`, no persistence | `SIGKILL` | nothing |
//! | PostgreSQL | `initdb`/`pg_ctl` of the newest `/usr/lib/postgresql/*/bin` (or `LOCKSTORE_TEST_PG_BIN`), as the `postgres` OS user when run as root | `pg_ctl stop -m fast` | everything |
//! | moto | `scripts/moto_single_threaded.py` with `LOCKSTORE_PYTHON` or `python3` | `SIGKILL` | nothing, not even tables |
//! | dynalite | `scripts/dynalite_server.js` with `node`, dynalite from `LOCKSTORE_DYNALITE_HOME` (or the checkout's `.cache/dynalite-*`, where `servers.sh` installs it) | `SIGKILL` | nothing, not even tables |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// A server a case owns and may restart (see [`Harness::private_server`](crate::Harness::private_server)).
#[async_trait]
pub trait PrivateServer: Send + Sync {
    /// Where it listens, the same across restarts.
    fn addr(&self) -> SocketAddr;

    /// Stops it the way the module docs' table says; returns once it is down.
    async fn stop(&mut self);

    /// Starts it again on the same address; returns once it accepts
    /// connections.
    async fn start(&mut self);

    /// Re-creates what a restart lost and an operator would re-create (an
    /// in-memory emulator's table). Nothing by default.
    async fn provision(&mut self) {}
}

/// How long a server may take to come up or go down before the case fails.
const STARTUP: Duration = Duration::from_secs(60);

/// A free port on 127.0.0.1 (the kernel's pick; a tiny race until the
/// server binds it, as in `scripts/servers.sh`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The checkout's root (beside `scripts/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("conformance-tests is in the workspace")
        .to_path_buf()
}

/// A fresh directory for one server's data and log, removed on drop.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(label: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("lockstore-{label}-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn wait_until_listening(name: &str, addr: SocketAddr, log: &Path, child: &mut Option<Child>) {
    let give_up = Instant::now() + STARTUP;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Some(child) = child
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "{name} exited ({status}) before listening on {addr}; its log:\n{}",
                tail(log)
            );
        }
        assert!(
            Instant::now() < give_up,
            "{name} did not listen on {addr} within {STARTUP:?}; its log:\n{}",
            tail(log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A server that is one child process, killed to stop.
#[derive(Debug)]
struct KilledProcess {
    name: &'static str,
    program: String,
    args: Vec<String>,
    addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
    install_hint: &'static str,
    _dir: ScratchDir,
}

impl KilledProcess {
    async fn start_new(
        name: &'static str,
        program: String,
        args: impl FnOnce(u16, &Path) -> Vec<String>,
        install_hint: &'static str,
    ) -> Self {
        let dir = ScratchDir::new(name);
        let port = free_port();
        let mut server = Self {
            name,
            program,
            args: args(port, &dir.0),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log: dir.0.join("server.log"),
            child: None,
            install_hint,
            _dir: dir,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the server log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot run `{}` for a private {} server ({err}). {}",
                    self.program, self.name, self.install_hint
                )
            });
        self.child = Some(child);
        wait_until_listening(self.name, self.addr, &self.log, &mut self.child).await;
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill the server");
        }
    }
}

/// A private `redis-server` without persistence.
#[derive(Debug)]
pub struct RedisServer(KilledProcess);

impl RedisServer {
    /// Starts one on a free port.
    pub async fn start_new() -> Self {
        let binary = std::env::var("LOCKSTORE_TEST_REDIS_SERVER")
            .unwrap_or_else(|_| "redis-server".to_owned());
        Self(
            KilledProcess::start_new(
                "redis",
                binary,
                |port, dir| {
                    [
                        "--port",
                        &port.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        &dir.to_string_lossy(),
                    ]
                    .map(str::to_owned)
                    .to_vec()
                },
                "Install it (Debian/Ubuntu: `apt-get install redis-server`, macOS: `brew install redis`) \
                 or point LOCKSTORE_TEST_REDIS_SERVER at the binary; `scripts/servers.sh start` does both.",
            )
            .await,
        )
    }
}

#[async_trait]
impl PrivateServer for RedisServer {
    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    async fn stop(&mut self) {
        self.0.kill().await;
    }

    async fn start(&mut self) {
        self.0.spawn().await;
    }
}

/// Which in-memory DynamoDB emulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulator {
    /// moto, single-threaded (`scripts/moto_single_threaded.py`).
    Moto,
    /// dynalite (`scripts/dynalite_server.js`).
    Dynalite,
}

/// A private DynamoDB emulator; it keeps nothing across a restart. The
/// table is the caller's to create (a harness wraps this in a
/// [`PrivateServer`] whose `provision` does).
#[derive(Debug)]
pub struct EmulatorServer(KilledProcess);

impl EmulatorServer {
    /// Starts one on a free port.
    pub async fn start_new(emulator: Emulator) -> Self {
        let scripts = repo_root().join("scripts");
        let process = match emulator {
            Emulator::Moto => {
                let python =
                    std::env::var("LOCKSTORE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
                let script = scripts.join("moto_single_threaded.py");
                KilledProcess::start_new(
                    "moto",
                    python,
                    |port, dir| {
                        vec![
                            script.to_string_lossy().into_owned(),
                            dir.join("port").to_string_lossy().into_owned(),
                            port.to_string(),
                        ]
                    },
                    "It needs python3 with moto[server] (`pip install 'moto[server]'`; \
                     `scripts/servers.sh start` installs it).",
                )
                .await
            }
            Emulator::Dynalite => {
                let home = dynalite_home();
                let script = scripts.join("dynalite_server.js");
                KilledProcess::start_new(
                    "dynalite",
                    "node".to_owned(),
                    |port, dir| {
                        vec![
                            script.to_string_lossy().into_owned(),
                            home.to_string_lossy().into_owned(),
                            dir.join("port").to_string_lossy().into_owned(),
                            port.to_string(),
                        ]
                    },
                    "It needs node (Debian/Ubuntu: `apt-get install nodejs`) and dynalite \
                     (`scripts/servers.sh start` installs both).",
                )
                .await
            }
        };
        Self(process)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Kills it: every table and item is gone.
    pub async fn stop(&mut self) {
        self.0.kill().await;
    }

    /// Starts it again, empty, on the same port.
    pub async fn start(&mut self) {
        self.0.spawn().await;
    }
}

/// dynalite's install directory: `LOCKSTORE_DYNALITE_HOME`, else the
/// newest `.cache/dynalite-*` of the checkout that holds dynalite.
fn dynalite_home() -> PathBuf {
    if let Ok(home) = std::env::var("LOCKSTORE_DYNALITE_HOME")
        && !home.trim().is_empty()
    {
        return PathBuf::from(home);
    }
    let cache = repo_root().join(".cache");
    let mut installs: Vec<PathBuf> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("dynalite-"))
                && path.join("node_modules/dynalite/package.json").is_file()
        })
        .collect();
    installs.sort();
    installs.pop().unwrap_or_else(|| {
        panic!(
            "no dynalite install for a private dynalite server: set LOCKSTORE_DYNALITE_HOME to \
             a directory holding node_modules/dynalite, or run `scripts/servers.sh start`, which \
             installs it into {}",
            cache.display()
        )
    })
}

/// A private PostgreSQL cluster (`initdb` once, then `pg_ctl start`/`stop
/// -m fast`), with one database made at creation.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    running: bool,
    dir: ScratchDir,
}

impl PostgresServer {
    /// Initialises a cluster in a fresh directory, starts it on a free port
    /// and creates `database` in it.
    pub async fn start_new(database: &str) -> Self {
        let bin = postgres_bin();
        let dir = ScratchDir::new("pg");
        let data = dir.0.join("data");
        let log = dir.0.join("server.log");
        std::fs::write(&log, "").expect("create the server log");
        let server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            bin,
            data,
            log,
            running: false,
            dir,
        };
        if is_root() {
            // postgres refuses to run as root: hand the directory to the
            // postgres OS user, as scripts/servers.sh does.
            run_checked(
                std::process::Command::new("chown").args([
                    "-R",
                    "postgres:",
                    &server.dir.0.to_string_lossy(),
                ]),
                "chown the scratch directory to postgres",
            );
        }
        server
            .pg_tool(
                "initdb",
                &[
                    "-D",
                    &server.data.to_string_lossy(),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "-N",
                ],
            )
            .await;
        let mut server = server;
        server.start().await;
        server
            .pg_tool(
                "psql",
                &[
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &server.addr.port().to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                    &format!("CREATE DATABASE \"{database}\""),
                ],
            )
            .await;
        server
    }

    async fn pg_tool(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        // runuser keeps the cwd, which postgres may not be able to read.
        command.args(args).current_dir(&self.dir.0);
        let output = tokio::time::timeout(STARTUP, command.output())
            .await
            .unwrap_or_else(|_| panic!("{tool} did not finish within {STARTUP:?}"))
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", program.display()));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed ({}):\n{}{}\nserver log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            tail(&self.log)
        );
    }
}

#[async_trait]
impl PrivateServer for PostgresServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A fast shutdown: sessions are terminated, the server checkpoints.
    async fn stop(&mut self) {
        self.pg_tool(
            "pg_ctl",
            &[
                "-s",
                "-D",
                &self.data.to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )
        .await;
        self.running = false;
    }

    async fn start(&mut self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            self.addr.port(),
            self.data.to_string_lossy()
        );
        self.pg_tool(
            "pg_ctl",
            &[
                "-s",
                "-D",
                &self.data.to_string_lossy(),
                "-l",
                &self.log.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .await;
        self.running = true;
        wait_until_listening("postgres", self.addr, &self.log, &mut None).await;
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.running {
            // Synchronous (drop cannot await); immediate: the data goes anyway.
            let program = self.bin.join("pg_ctl");
            let data = self.data.to_string_lossy().into_owned();
            let args = ["-s", "-D", &data, "-m", "immediate", "-w", "stop"];
            let mut command = if is_root() {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&program);
                c
            } else {
                std::process::Command::new(&program)
            };
            let _ = command
                .args(args)
                .current_dir(&self.dir.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn run_checked(command: &mut std::process::Command, what: &str) {
    let status = command
        .status()
        .unwrap_or_else(|err| panic!("cannot {what}: {err}"));
    assert!(status.success(), "could not {what} ({status})");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The PostgreSQL binaries: `LOCKSTORE_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout), else the directory of
/// `pg_ctl` on `PATH`.
fn postgres_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("LOCKSTORE_TEST_PG_BIN")
        && !bin.trim().is_empty()
    {
        return PathBuf::from(bin);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("pg_ctl").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL binaries (initdb, pg_ctl) for a private server: install them \
                 (Debian/Ubuntu: `apt-get install postgresql`) or set LOCKSTORE_TEST_PG_BIN to \
                 their directory"
            )
        })
}
