//! The Docker API version testcontainers speaks, against what the engine
//! accepts — checked before the first container, so an engine that refuses
//! the client fails with a message naming both versions and the ways out,
//! not with the engine's terse reply to the first request.
//!
//! testcontainers 0.28 builds its own bollard client with bollard's
//! `API_DEFAULT_VERSION` (1.53 in bollard 0.21) and offers neither a version
//! pin nor negotiation: bollard has `Docker::negotiate_version`, but
//! testcontainers never calls it, and nobody can hand testcontainers a
//! client. An engine serves a request under `/vX.Y/` only when `X.Y` lies
//! within its supported range (Debian bookworm's docker.io 20.10: 1.12 to
//! 1.41) and otherwise answers `client version 1.53 is too new. Maximum
//! supported API version is 1.41`. Unversioned paths it serves at its own
//! version.
//!
//! bollard 0.21.1 works with such an engine by accident: it builds
//! `…/v1.53{path}` and then joins the absolute `path` onto that URL, which
//! drops the prefix, so every request goes out unversioned. A bollard that
//! fixes this would fail every container start on that engine. So
//! [`check`] asks the engine for its range (an unversioned `GET /version`),
//! and looks at what bollard actually sends (one `ping` to a socket of our
//! own); when the engine would refuse the client's version and bollard sends
//! it, the check fails; when the accident still covers it, it passes with a
//! note.

use std::io::{Read, Write};
use std::time::Duration;

use testcontainers::bollard::{API_DEFAULT_VERSION, Docker};

/// A Docker API version, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ApiVersion {
    major: u32,
    minor: u32,
}

impl ApiVersion {
    pub(crate) const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.trim().split_once('.')?;
        Some(Self::new(major.parse().ok()?, minor.parse().ok()?))
    }

    /// The version testcontainers' bollard client declares.
    pub(crate) fn client() -> Self {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self::new(
            clamp(API_DEFAULT_VERSION.major_version),
            clamp(API_DEFAULT_VERSION.minor_version),
        )
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What the engine makes of the client's version.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the engine's range.
    Accepted,
    /// Outside it, but requests go out unversioned: works, by accident.
    Accident(String),
    /// Outside it, and requests carry the version: every one is refused.
    Refused(String),
}

/// The verdict for an engine supporting `min..=max` and a client declaring
/// `client`, which puts it into request paths if `sends_version`.
pub(crate) fn judge(
    engine: &str,
    min: ApiVersion,
    max: ApiVersion,
    client: ApiVersion,
    sends_version: bool,
) -> Verdict {
    if (min..=max).contains(&client) {
        return Verdict::Accepted;
    }
    let (relation, upgrade) = if client > max {
        (
            format!("too new for it (maximum {max})"),
            format!("an engine whose API version reaches {client} (a newer Docker Engine)"),
        )
    } else {
        (
            format!("too old for it (minimum {min})"),
            format!("an engine that still accepts API version {client} (an older Docker Engine)"),
        )
    };
    if sends_version {
        Verdict::Refused(format!(
            "the Docker engine at {engine} supports API versions {min} to {max}, and the client \
             testcontainers uses (bollard) sends API version {client}, which is {relation}: the \
             engine refuses every request. testcontainers 0.28 can neither pin nor negotiate the \
             version. Ways out: use {upgrade}; or pin the workspace's testcontainers/bollard to a \
             release whose version the engine accepts; or put a proxy that rewrites `/v{client}/` \
             to `/v{max}/` in front of the engine and point DOCKER_HOST at it; or skip containers \
             and set the LOCKSTORE_TEST_*_URL variables to running servers \
             (`eval \"$(scripts/servers.sh start)\"` starts them without Docker)."
        ))
    } else {
        Verdict::Accident(format!(
            "note: the Docker engine at {engine} supports API versions {min} to {max}, and \
             testcontainers' client (bollard) declares {client}, which is {relation}. It works \
             only because this bollard sends unversioned request paths, which the engine serves \
             at its own version; a bollard that sends its version will be refused (this check \
             then fails and says what to do). Lasting fix: {upgrade}."
        ))
    }
}

/// Fails (with the message to show) when the engine at `engine` would refuse
/// every request of testcontainers' client; prints a note when it works only
/// by the accident described in the module docs. An engine whose versions
/// cannot be read is left to testcontainers, which reports its own errors.
pub(crate) fn check(engine: &str) -> Result<(), String> {
    let Ok((min, max)) = engine_range(engine) else {
        return Ok(());
    };
    let client = ApiVersion::client();
    if (min..=max).contains(&client) {
        return Ok(());
    }
    // Where we cannot look (no unix sockets), assume bollard is fixed.
    let sends_version = bollard_sends_version().unwrap_or(true);
    match judge(engine, min, max, client, sends_version) {
        Verdict::Accepted => Ok(()),
        Verdict::Accident(note) => {
            eprintln!("{note}");
            Ok(())
        }
        Verdict::Refused(message) => {
            // Quote the engine's own refusal, as proof and for searching.
            let answer = request(engine, &format!("/v{client}/version"))
                .ok()
                .filter(|(status, _)| *status != 200)
                .map(|(status, body)| format!(" (the engine's answer: {status} {})", body.trim()))
                .unwrap_or_default();
            Err(format!("{message}{answer}"))
        }
    }
}

/// The engine's `MinAPIVersion` and `ApiVersion`, from an unversioned
/// `GET /version`.
fn engine_range(engine: &str) -> Result<(ApiVersion, ApiVersion), String> {
    let (status, body) = request(engine, "/version")?;
    if status != 200 {
        return Err(format!("GET /version answered {status}"));
    }
    let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let field = |name: &str| {
        json.get(name)
            .and_then(serde_json::Value::as_str)
            .and_then(ApiVersion::parse)
            .ok_or_else(|| format!("GET /version has no {name}"))
    };
    Ok((field("MinAPIVersion")?, field("ApiVersion")?))
}

/// One HTTP/1.0 `GET` to the engine (unix socket or TCP): status and body.
fn request(engine: &str, path: &str) -> Result<(u16, String), String> {
    let head = format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n");
    let timeout = Some(Duration::from_secs(10));
    let mut reply = Vec::new();
    if let Some(socket) = engine.strip_prefix("unix://") {
        #[cfg(unix)]
        {
            let mut stream =
                std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(timeout)
                .map_err(|e| e.to_string())?;
            stream
                .write_all(head.as_bytes())
                .map_err(|e| e.to_string())?;
            stream.read_to_end(&mut reply).map_err(|e| e.to_string())?;
        }
        #[cfg(not(unix))]
        return Err(format!("no unix sockets here for {socket}"));
    } else {
        let authority = ["tcp://", "http://"]
            .iter()
            .find_map(|scheme| engine.strip_prefix(scheme))
            .ok_or_else(|| format!("cannot query {engine} by hand"))?;
        let authority = authority.split('/').next().unwrap_or(authority);
        let mut stream = std::net::TcpStream::connect(authority).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(timeout)
            .map_err(|e| e.to_string())?;
        stream
            .write_all(head.as_bytes())
            .map_err(|e| e.to_string())?;
        stream.read_to_end(&mut reply).map_err(|e| e.to_string())?;
    }
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or("no HTTP reply from the engine")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or("no HTTP status from the engine")?;
    Ok((status, body.to_owned()))
}

/// Whether bollard, as testcontainers builds it, puts its API version into
/// request paths: one `ping` through a bollard client to a socket of our
/// own, which records the path and answers `OK`.
#[cfg(unix)]
pub(crate) fn bollard_sends_version() -> Result<bool, String> {
    Ok(bollard_request_path()?.starts_with("/v"))
}

#[cfg(not(unix))]
pub(crate) fn bollard_sends_version() -> Result<bool, String> {
    Err("no unix sockets to look with".to_owned())
}

/// The path of the request bollard sends for a `ping`.
#[cfg(unix)]
pub(crate) fn bollard_request_path() -> Result<String, String> {
    use std::os::unix::net::{UnixListener, UnixStream};

    let socket = std::env::temp_dir().join(format!(
        "lockstore-bollard-probe-{}-{:016x}.sock",
        std::process::id(),
        rand::random::<u64>()
    ));
    let listener = UnixListener::bind(&socket).map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || -> Result<String, String> {
        let (mut stream, _) = listener.accept().map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
              Connection: close\r\n\r\nOK",
        );
        let head = String::from_utf8_lossy(&head);
        head.split_whitespace()
            .nth(1)
            .map(str::to_owned)
            .ok_or_else(|| "bollard sent no request line".to_owned())
    });
    let pinged = (|| {
        let docker = Docker::connect_with_unix(
            &format!("unix://{}", socket.display()),
            10,
            API_DEFAULT_VERSION,
        )
        .map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime
            .block_on(docker.ping())
            .map(drop)
            .map_err(|e| e.to_string())
    })();
    if pinged.is_err() {
        // Unblock the accept if bollard never connected.
        let _ = UnixStream::connect(&socket);
    }
    let path = server
        .join()
        .unwrap_or_else(|_| Err("the probe thread panicked".to_owned()));
    let _ = std::fs::remove_file(&socket);
    pinged?;
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENGINE: &str = "unix:///var/run/docker.sock";

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(ApiVersion::parse("1.41"), Some(ApiVersion::new(1, 41)));
        assert_eq!(ApiVersion::parse(" 1.9 "), Some(ApiVersion::new(1, 9)));
        assert!(ApiVersion::new(1, 9) < ApiVersion::new(1, 41));
        assert!(ApiVersion::new(1, 53) > ApiVersion::new(1, 41));
        for bad in ["", "1", "1.x", "v1.41"] {
            assert_eq!(ApiVersion::parse(bad), None, "{bad:?}");
        }
        assert_eq!(ApiVersion::new(1, 41).to_string(), "1.41");
    }

    #[test]
    fn a_version_in_range_is_accepted_either_way() {
        let (min, max) = (ApiVersion::new(1, 12), ApiVersion::new(1, 53));
        for sends in [false, true] {
            let verdict = judge(ENGINE, min, max, ApiVersion::new(1, 53), sends);
            assert_eq!(verdict, Verdict::Accepted);
        }
    }

    #[test]
    fn a_refused_version_names_both_versions_and_the_ways_out() {
        let (min, max) = (ApiVersion::new(1, 12), ApiVersion::new(1, 41));
        let Verdict::Refused(message) = judge(ENGINE, min, max, ApiVersion::new(1, 53), true)
        else {
            panic!("a versioned client above the maximum must be refused");
        };
        for needle in [
            ENGINE,
            "1.41",
            "1.53",
            "too new",
            "DOCKER_HOST",
            "LOCKSTORE_TEST_",
        ] {
            assert!(message.contains(needle), "{needle:?} missing: {message}");
        }
        let Verdict::Refused(message) = judge(
            ENGINE,
            ApiVersion::new(1, 44),
            ApiVersion::new(1, 52),
            ApiVersion::new(1, 41),
            true,
        ) else {
            panic!("a versioned client below the minimum must be refused");
        };
        assert!(
            message.contains("too old") && message.contains("1.44"),
            "{message}"
        );
    }

    #[test]
    fn unversioned_requests_pass_with_a_note() {
        let (min, max) = (ApiVersion::new(1, 12), ApiVersion::new(1, 41));
        let Verdict::Accident(note) = judge(ENGINE, min, max, ApiVersion::new(1, 53), false) else {
            panic!("unversioned requests are served at the engine's version");
        };
        assert!(
            note.contains("unversioned") && note.contains("1.41"),
            "{note}"
        );
    }

    /// What this bollard sends is looked at, not assumed: the probe sees a
    /// real request and reads its path. (Either answer is legal; `check`
    /// decides what it means for the engine at hand.)
    #[cfg(unix)]
    #[test]
    fn the_probe_reads_bollards_request_path() {
        let path = bollard_request_path().expect("bollard pings our socket");
        assert!(path.ends_with("/_ping"), "{path}");
        let client = ApiVersion::client();
        let versioned = format!("/v{client}/_ping");
        assert!(path == "/_ping" || path == versioned, "{path}");
    }
}
