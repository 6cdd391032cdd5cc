//! Where the suite finds real servers.
//!
//! In order: a URL in the environment (`LOCKSTORE_TEST_REDIS_URL`,
//! `LOCKSTORE_TEST_POSTGRES_URL`, `LOCKSTORE_TEST_DYNAMODB_URL`); else a
//! container started through `testcontainers` when a Docker engine is
//! reachable (official images, overridable with `LOCKSTORE_TEST_*_IMAGE`;
//! `eval "$(scripts/docker.sh images)"` starts an engine and builds local
//! stand-ins for machines without Docker Hub, and sets those variables);
//! else a failure that says how to provide a server. Nothing is skipped: a
//! backend whose server cannot be had fails its tests loudly.
//!
//! Before the first container of a process, the engine's supported Docker
//! API versions are compared with the version testcontainers' client sends;
//! an engine that would refuse it fails the start with both versions and
//! what to do (why this needs checking: the `engine_api` module).
//!
//! A container serves the whole test process and is removed after it ends,
//! by a small reaper process that needs `sh` and the `docker` CLI. Without
//! them (or with `TESTCONTAINERS_COMMAND=keep`) containers stay; all carry
//! the label `lockstore-test` and go with
//! `docker rm -f -v $(docker ps -aq --filter label=lockstore-test)`.
//!
//! `eval "$(scripts/servers.sh start)"` starts all three servers locally without Docker
//! (and dynalite, a second DynamoDB-compatible server the DynamoDB tests read from
//! `LOCKSTORE_TEST_DYNALITE_URL`, and a Redis Cluster for `LOCKSTORE_TEST_REDIS_CLUSTER_URL`;
//! neither has a container fallback).

use std::sync::OnceLock;

mod engine_api;

/// A server the suite can talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// Redis, default image `redis:7`.
    Redis,
    /// PostgreSQL, default image `postgres:16`.
    Postgres,
    /// A DynamoDB-compatible server, default image `amazon/dynamodb-local`.
    DynamoDb,
}

impl Service {
    /// The environment variable holding the server's URL.
    pub fn url_var(self) -> &'static str {
        match self {
            Service::Redis => "LOCKSTORE_TEST_REDIS_URL",
            Service::Postgres => "LOCKSTORE_TEST_POSTGRES_URL",
            Service::DynamoDb => "LOCKSTORE_TEST_DYNAMODB_URL",
        }
    }

    /// The environment variable that overrides the container image.
    pub fn image_var(self) -> &'static str {
        match self {
            Service::Redis => "LOCKSTORE_TEST_REDIS_IMAGE",
            Service::Postgres => "LOCKSTORE_TEST_POSTGRES_IMAGE",
            Service::DynamoDb => "LOCKSTORE_TEST_DYNAMODB_IMAGE",
        }
    }

    /// The official image used when Docker is available.
    pub fn default_image(self) -> &'static str {
        match self {
            Service::Redis => "redis:7",
            Service::Postgres => "postgres:16",
            Service::DynamoDb => "amazon/dynamodb-local:latest",
        }
    }
}

/// The URL of a server for `service`, found as the module docs say.
///
/// # Panics
/// When no server can be had, with a message saying how to provide one;
/// this is test support, and a missing server must fail the run.
pub fn server_url(service: Service) -> String {
    let slot = &URLS[service as usize];
    slot.get_or_init(|| find_server(service)).clone()
}

/// The URL variables of every server this process has found so far, with
/// their values: a child test process (see [`crate::child`]) gets them, so
/// that it talks to its parent's servers, not to containers of its own.
pub fn found_servers() -> Vec<(&'static str, String)> {
    [Service::Redis, Service::Postgres, Service::DynamoDb]
        .into_iter()
        .filter_map(|service| {
            let url = URLS[service as usize].get()?;
            Some((service.url_var(), url.clone()))
        })
        .collect()
}

/// What [`server_url`] found for each [`Service`], by its discriminant.
static URLS: [OnceLock<String>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];

fn find_server(service: Service) -> String {
    if let Ok(url) = std::env::var(service.url_var())
        && !url.trim().is_empty()
    {
        return url;
    }
    if let Some(url) = crate::provision::docker::start(service) {
        return url;
    }
    panic!(
        "no {service:?} server for the lockstore conformance tests.\n\
         Provide one of:\n  \
         - {var}=<url> pointing at a running server (`eval \"$(scripts/servers.sh start)\"` starts Redis, \
         PostgreSQL and a DynamoDB-compatible moto server on 127.0.0.1 and sets all three), or\n  \
         - a reachable Docker engine, and the image {image} (override with {image_var}) is started for you \
         (`eval \"$(scripts/docker.sh images)\"` starts an engine and builds local images, for machines \
         without Docker Hub).",
        var = service.url_var(),
        image = service.default_image(),
        image_var = service.image_var(),
    );
}

mod docker {
    //! Test servers in containers, through `testcontainers`' blocking API.
    //!
    //! Reachability is decided up front and cheaply — the engine
    //! testcontainers would pick (`DOCKER_HOST`, else the first socket file
    //! that exists of `/var/run/docker.sock`,
    //! `$XDG_RUNTIME_DIR/.docker/run/docker.sock`,
    //! `$HOME/.docker/run/docker.sock` and `$HOME/.docker/desktop/docker.sock`)
    //! must accept a connection — so a machine without an engine gets `None`
    //! at once, without timeouts or output.
    //!
    //! Readiness is a protocol probe of the mapped port from this process
    //! (Redis `PING`, PostgreSQL `SSLRequest`, an HTTP request to DynamoDB
    //! Local) rather than a log line: it holds for any compatible image given
    //! in `LOCKSTORE_TEST_*_IMAGE`, is not fooled by PostgreSQL's init-time
    //! server, and an answer only comes once the server itself listens (the
    //! engine's port proxy accepts connections before that).
    //!
    //! Lifetime: a container serves every test of the process, so it is kept
    //! in a static, and statics are never dropped: testcontainers' own
    //! remove-on-drop never runs. testcontainers-rs has no Ryuk-style reaper
    //! (its `watchdog` feature covers signals only, not a normal exit), and
    //! `--rm`/auto-remove acts only once a container stops, which nothing
    //! would do. So each container gets a reaper of our own: a small `sh`
    //! child, in its own process group, that blocks reading a pipe whose only
    //! writer is this process and, on end-of-file — this process ending in any
    //! way, `SIGKILL` included — runs `docker rm -f -v <id>` against the same
    //! engine. That needs `sh` and the `docker` CLI; where either is missing
    //! (or `TESTCONTAINERS_COMMAND=keep` asks to keep containers) containers
    //! stay behind, and every one carries the label `lockstore-test`:
    //!
    //! ```sh
    //! docker rm -f -v $(docker ps -aq --filter label=lockstore-test)
    //! ```

    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use testcontainers::core::IntoContainerPort;
    use testcontainers::runners::SyncRunner;
    use testcontainers::{Container, GenericImage, ImageExt};

    use super::Service;

    /// The label on every container started here (value: the service).
    const LABEL: &str = "lockstore-test";
    /// How long a started container may take to answer on its port.
    const READY_TIMEOUT: Duration = Duration::from_secs(120);

    /// Containers (and their reapers' pipes) kept for the rest of the process.
    static KEPT: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

    struct Kept {
        _container: Container<GenericImage>,
        /// Closed only when the process ends, which sets the reaper off.
        _reaper: Option<std::process::ChildStdin>,
    }

    /// The URL of a container started for `service`, or `None` when no
    /// Docker engine is reachable.
    ///
    /// # Panics
    /// When an engine is reachable but the container cannot be started or
    /// never answers; the message names the image and both ways around it.
    pub(super) fn start(service: Service) -> Option<String> {
        let engine = reachable_engine()?;
        // Once per process, before the first container: an engine that
        // refuses the client's API version fails here, saying so.
        static API_CHECK: OnceLock<Result<(), String>> = OnceLock::new();
        let checked = API_CHECK.get_or_init(|| {
            std::thread::scope(|scope| {
                scope
                    .spawn(|| super::engine_api::check(&engine))
                    .join()
                    .unwrap_or_else(|_| Err("the API version check panicked".to_owned()))
            })
        });
        if let Err(message) = checked {
            panic!(
                "cannot start {service:?} containers for the lockstore conformance tests: {message}"
            );
        }
        let image = std::env::var(service.image_var())
            .ok()
            .filter(|image| !image.trim().is_empty())
            .unwrap_or_else(|| service.default_image().to_owned());
        // The blocking runner drives its own tokio runtime and must not be
        // called from inside one; a thread of its own is right either way.
        let started = std::thread::scope(|scope| {
            scope
                .spawn(|| run(service, &image, &engine))
                .join()
                .unwrap_or_else(|_| Err("the start-up thread panicked".to_owned()))
        });
        match started {
            Ok(url) => Some(url),
            Err(error) => panic!(
                "could not start a {service:?} container for the lockstore conformance tests \
                 from the image `{image}` on the Docker engine at {engine}: {error}\n\
                 Use another image with {image_var}=<image>, or set {url_var}=<url> to use a \
                 running server instead (`eval \"$(scripts/servers.sh start)\"` starts one without Docker).",
                image_var = service.image_var(),
                url_var = service.url_var(),
            ),
        }
    }

    /// Starts the container, waits until it answers and keeps it.
    fn run(service: Service, image: &str, engine: &str) -> Result<String, String> {
        let (name, tag) = split_image(image);
        let port = match service {
            Service::Redis => 6379,
            Service::Postgres => 5432,
            Service::DynamoDb => 8000,
        };
        let request = GenericImage::new(name, tag)
            .with_exposed_port(port.tcp())
            .with_label(LABEL, format!("{service:?}").to_lowercase());
        let request = match service {
            Service::Postgres => request
                .with_env_var("POSTGRES_PASSWORD", "postgres")
                .with_env_var("POSTGRES_DB", "lockstore_test"),
            Service::Redis | Service::DynamoDb => request,
        };
        let container = request.start().map_err(|e| e.to_string())?;
        let reaper = spawn_reaper(engine, container.id());

        let host = container.get_host().map_err(|e| e.to_string())?.to_string();
        // The usual answer, `localhost`, may resolve to `::1`, where the
        // engine does not always publish ports.
        let host = if host == "localhost" {
            "127.0.0.1".to_owned()
        } else {
            host
        };
        let host_port = container
            .get_host_port_ipv4(port)
            .map_err(|e| e.to_string())?;

        let deadline = Instant::now() + READY_TIMEOUT;
        while !answers(service, &host, host_port) {
            // Dropping `container` on these paths removes it again.
            if !container.is_running().unwrap_or(true) {
                return Err(format!("the container exited{}", log_tail(&container)));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the container did not answer on port {port} within {READY_TIMEOUT:?}{}",
                    log_tail(&container)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }

        KEPT.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Kept {
                _container: container,
                _reaper: reaper,
            });
        Ok(match service {
            Service::Redis => format!("redis://{host}:{host_port}"),
            Service::Postgres => {
                format!("postgres://postgres:postgres@{host}:{host_port}/lockstore_test")
            }
            Service::DynamoDb => format!("http://{host}:{host_port}"),
        })
    }

    /// `name[:tag]` or `name@digest` as testcontainers' name and tag (it
    /// joins them with `:` again). A `:` inside a registry address such as
    /// `localhost:5000/redis` is not a tag.
    fn split_image(image: &str) -> (&str, &str) {
        match image.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, tag),
            _ => (image, "latest"),
        }
    }

    /// The engine address testcontainers would use, if something accepts a
    /// connection there. Never waits long: a socket connect fails at once, a
    /// TCP one is bounded to two seconds.
    fn reachable_engine() -> Option<String> {
        let engine = match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.trim().is_empty() => host,
            _ => default_engine()?,
        };
        engine_answers(&engine).then_some(engine)
    }

    /// testcontainers' choice without `DOCKER_HOST`: the first socket that
    /// exists (even a dead one: it does not look further either).
    #[cfg(unix)]
    fn default_engine() -> Option<String> {
        use std::path::PathBuf;
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
        [
            Some(PathBuf::from("/var/run/docker.sock")),
            runtime.map(|dir| dir.join(".docker/run/docker.sock")),
            home.as_ref().map(|dir| dir.join(".docker/run/docker.sock")),
            home.map(|dir| dir.join(".docker/desktop/docker.sock")),
        ]
        .into_iter()
        .flatten()
        .find(|path| path.exists())
        .map(|path| format!("unix://{}", path.display()))
    }

    #[cfg(not(unix))]
    fn default_engine() -> Option<String> {
        std::path::Path::new(r"\\.\pipe\docker_engine")
            .exists()
            .then(|| "npipe:////./pipe/docker_engine".to_owned())
    }

    fn engine_answers(engine: &str) -> bool {
        if let Some(path) = engine.strip_prefix("unix://") {
            return socket_answers(path);
        }
        for scheme in ["tcp://", "http://", "https://"] {
            if let Some(rest) = engine.strip_prefix(scheme) {
                let authority = rest.split('/').next().unwrap_or(rest);
                return authority.to_socket_addrs().is_ok_and(|mut addrs| {
                    addrs.any(|addr| {
                        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
                    })
                });
            }
        }
        // `npipe://`, `ssh://`, …: no cheap check; testcontainers says
        // loudly enough if it cannot use the engine the user named.
        true
    }

    #[cfg(unix)]
    fn socket_answers(path: &str) -> bool {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    }

    #[cfg(not(unix))]
    fn socket_answers(_path: &str) -> bool {
        false
    }

    /// Whether the server itself answers a protocol greeting on the port.
    fn answers(service: Service, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let Some(addr) = (host, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
        else {
            return false;
        };
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let timeout = Some(Duration::from_secs(2));
        if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
            return false;
        }
        let greeting: &[u8] = match service {
            Service::Redis => b"PING\r\n",
            // SSLRequest: length 8, code 80877103; the server answers one byte.
            Service::Postgres => &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
            Service::DynamoDb => b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n",
        };
        if stream.write_all(greeting).is_err() {
            return false;
        }
        let mut reply = [0u8; 8];
        let mut len = 0;
        while len < reply.len() {
            match stream.read(&mut reply[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
        }
        let reply = &reply[..len];
        match service {
            Service::Redis => {
                reply.starts_with(b"+")
                    || (reply.starts_with(b"-") && !reply.starts_with(b"-LOADING"))
            }
            Service::Postgres => matches!(reply.first(), Some(b'S' | b'N')),
            Service::DynamoDb => reply.starts_with(b"HTTP/"),
        }
    }

    /// The end of the container's output, for a failure message.
    fn log_tail(container: &Container<GenericImage>) -> String {
        let mut logs = container.stdout_to_vec().unwrap_or_default();
        logs.extend(container.stderr_to_vec().unwrap_or_default());
        let logs = String::from_utf8_lossy(&logs);
        let tail: Vec<&str> = logs.lines().rev().take(20).collect();
        if tail.is_empty() {
            String::new()
        } else {
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("; its last output:\n{}\n", tail.join("\n"))
        }
    }

    /// Starts the reaper described in the module docs and returns the write
    /// end of its pipe, to be held until the process ends.
    #[cfg(unix)]
    fn spawn_reaper(engine: &str, id: &str) -> Option<std::process::ChildStdin> {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};

        if std::env::var("TESTCONTAINERS_COMMAND").is_ok_and(|command| command == "keep") {
            return None;
        }
        // `read` returns false only at end-of-file; signals that reach the
        // group of the test run (Ctrl-C) must not stop the reaper first.
        let script =
            r#"trap '' HUP INT TERM QUIT; while read -r _; do :; done; exec docker rm -f -v "$1""#;
        Command::new("sh")
            .args(["-c", script, "lockstore-reaper", id])
            .env("DOCKER_HOST", engine)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok()?
            .stdin
    }

    #[cfg(not(unix))]
    fn spawn_reaper(_engine: &str, _id: &str) -> Option<std::process::ChildStdin> {
        None
    }
}
