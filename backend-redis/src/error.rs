//! Turning `redis` errors and odd replies into [`LockError`]s.
//!
//! The rule: anything a later attempt can get past (the connection, a
//! timeout, a server that is loading, busy, read-only during a failover, or
//! out of memory until leases expire) is retryable; anything that will fail
//! the same way again (a wrong type under our key, a script error, an
//! unexpected reply) is permanent; and what only an operator can fix
//! (authentication, ACL permissions, a cluster behind a single-node URL) is a
//! configuration error. The `redis` error is always kept as the source.

use lockstore_api::{LockError, UnexpectedReply};
use redis::{ErrorKind, RedisError, ServerErrorKind};

pub(crate) const BACKEND: &str = "redis";

/// Server error codes after which the same request may well succeed.
const RETRYABLE_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "READONLY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "NOSCRIPT",
    "OOM",
];

/// Maps a failed command; `doing` says what was being done ("acquire
/// \"etl\"") for the message.
pub(crate) fn command_error(doing: &str, err: RedisError) -> LockError {
    match classify(&err) {
        Class::Retryable => {
            LockError::retryable(BACKEND, format!("{doing}: {}", describe(&err)), err)
        }
        Class::Permanent => {
            LockError::permanent(BACKEND, format!("{doing}: {}", describe(&err)), err)
        }
        Class::Config(advice) => LockError::Config {
            backend: BACKEND,
            message: format!("{doing}: {}; {advice}", describe(&err)),
            source: Some(Box::new(err)),
        },
    }
}

/// A reply that does not have the shape the script returns: permanent, since
/// the same script will answer the same way.
pub(crate) fn unexpected_reply(doing: &str, reply: &redis::Value) -> LockError {
    LockError::permanent(
        BACKEND,
        format!("{doing}: unexpected reply from the lock script"),
        UnexpectedReply(format!("{reply:?}")),
    )
}

enum Class {
    Retryable,
    Permanent,
    Config(&'static str),
}

fn classify(err: &RedisError) -> Class {
    match err.kind() {
        ErrorKind::Io => return Class::Retryable,
        ErrorKind::AuthenticationFailed => {
            return Class::Config("check the user name and password in the Redis URL");
        }
        ErrorKind::InvalidClientConfig => return Class::Config("check the Redis URL"),
        ErrorKind::Server(ServerErrorKind::NoPerm) => {
            return Class::Config(
                "the Redis user needs EVALSHA, EVAL, SCRIPT LOAD, PUBLISH and SUBSCRIBE on the store's keys and channel",
            );
        }
        ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask) => {
            return Class::Config(
                "the URL points at one node of a Redis Cluster; name the cluster with \
                 redis+cluster://host1:port1,host2:port2 (or use a cluster-aware proxy)",
            );
        }
        _ => {}
    }
    if err.is_timeout() || err.is_connection_dropped() || err.is_connection_refusal() {
        return Class::Retryable;
    }
    match err.code() {
        Some(code) if RETRYABLE_CODES.contains(&code) => Class::Retryable,
        _ => Class::Permanent,
    }
}

/// The error's own words. `RedisError`'s display never includes the URL or
/// password, only the server's message or the library's.
fn describe(err: &RedisError) -> String {
    if err.is_connection_refusal() {
        "connection refused (is the server running and the URL's host and port right?)".to_owned()
    } else if err.is_timeout() {
        "no reply in time".to_owned()
    } else {
        err.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str) -> RedisError {
        redis::make_extension_error(code.to_owned(), Some("detail".to_owned()))
    }

    #[test]
    fn transient_server_states_are_retryable() {
        for code in ["BUSY", "OOM"] {
            assert!(
                command_error("acquire", server_error(code)).is_retryable(),
                "{code}"
            );
        }
        assert!(!command_error("acquire", server_error("WRONGTYPE")).is_retryable());
    }

    #[test]
    fn io_errors_are_retryable_and_keep_their_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = command_error("acquire \"k\"", RedisError::from(io));
        assert!(err.is_retryable());
        assert!(std::error::Error::source(&err).is_some());
        assert!(err.to_string().contains("connection refused"), "{err}");
    }
}
