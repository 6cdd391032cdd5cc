//! Connecting: the URL, the key prefix, timeouts and retention.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lockstore_api::LockError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::connection::{ClusterSettings, RedisConnection, Topology, cluster_nodes};
use crate::error::{BACKEND, command_error};
use crate::notify::{Listener, ListenerTimeouts};
use crate::store::{Inner, RedisStore};

/// The default response timeout, and the listener's when there is none.
pub(crate) const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The key prefix used unless [`RedisStoreBuilder::key_prefix`] says otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "lockstore:";

/// The longest retention accepted; longer values are clamped to it.
const MAX_RETENTION: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How long an idle lock record (its fencing counter) is kept by default.
pub const DEFAULT_IDLE_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How many finished ledger records one purge script deletes at most, by
/// default.
pub const DEFAULT_PURGE_BATCH_SIZE: u32 = 1_000;

/// How many running records one script of a stuck-runs query examines at
/// most, by default.
pub const DEFAULT_STUCK_SCAN_BATCH_SIZE: u32 = 1_000;

/// Settings for a [`RedisStore`]; made by [`RedisStore::builder`].
///
/// ```no_run
/// # async fn demo() -> Result<(), lockstore_api::LockError> {
/// use std::time::Duration;
/// use lockstore_redis::RedisStore;
///
/// let store = RedisStore::builder("rediss://app:secret@redis.internal:6380/2")
///     .key_prefix("billing:locks:")
///     .response_timeout(Some(Duration::from_secs(1)))
///     .connect()
///     .await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStoreBuilder {
    target: Target,
    pub(crate) key_prefix: String,
    pub(crate) idle_retention: Duration,
    pub(crate) ledger_retention: Option<Duration>,
    pub(crate) purge_batch_size: u32,
    pub(crate) stuck_scan_batch_size: u32,
    pub(crate) notifications: bool,
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
    reconnect_retries: usize,
    eviction_check: EvictionCheck,
}

/// What [`RedisStoreBuilder::connect`] does when the server may evict keys.
///
/// With any `maxmemory-policy` other than `noeviction` (the `volatile-*`
/// policies included: lock records carry a TTL), a Redis under memory
/// pressure can delete a **live** lease; the next acquirer then takes the
/// key at once, while the holder learns of it only at its next renewal.
/// Mutual exclusion holds only with `noeviction`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvictionCheck {
    /// Log a warning (the default). Servers that refuse `CONFIG GET`
    /// (managed services often do) are logged at debug and accepted.
    #[default]
    Warn,
    /// Refuse to connect with a [`LockError::Config`] naming the policy.
    Refuse,
    /// Do not ask.
    Off,
}

#[derive(Clone)]
enum Target {
    /// One server, or a cluster (`redis+cluster://…`).
    Url(String),
    Client(redis::Client),
    Manager(redis::Client, ConnectionManager),
    /// A cluster, by the URLs of some of its nodes.
    Cluster(Vec<String>),
}

impl fmt::Debug for RedisStoreBuilder {
    // By hand: the URL and the client hold the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("key_prefix", &self.key_prefix)
            .field("idle_retention", &self.idle_retention)
            .field("ledger_retention", &self.ledger_retention)
            .field("purge_batch_size", &self.purge_batch_size)
            .field("stuck_scan_batch_size", &self.stuck_scan_batch_size)
            .field("notifications", &self.notifications)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("eviction_check", &self.eviction_check)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        Self::with_target(Target::Url(url.into()))
    }

    fn with_target(target: Target) -> Self {
        Self {
            target,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            idle_retention: DEFAULT_IDLE_RETENTION,
            ledger_retention: None,
            purge_batch_size: DEFAULT_PURGE_BATCH_SIZE,
            stuck_scan_batch_size: DEFAULT_STUCK_SCAN_BATCH_SIZE,
            notifications: true,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Some(DEFAULT_RESPONSE_TIMEOUT),
            reconnect_retries: 6,
            eviction_check: EvictionCheck::Warn,
        }
    }

    /// Settings for a store on a Redis Cluster, given the URLs of some of its
    /// nodes (`redis://host:port`, `rediss://…`; same credentials on each):
    /// the client learns the other nodes from them. The same as
    /// `RedisStore::builder("redis+cluster://host1:port1,host2:port2")`.
    /// Give several: the store's release listener subscribes on one of
    /// them and moves to the next when that one is down.
    ///
    /// Each script call goes to the primary of its key's slot. What a
    /// cluster does to the lock contract (failover) is in the crate docs.
    pub fn cluster<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        Self::with_target(Target::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    /// Settings for a store over an existing [`redis::Client`] (for TLS
    /// certificates or other options a URL cannot carry).
    pub fn from_client(client: redis::Client) -> Self {
        Self::with_target(Target::Client(client))
    }

    /// Settings for a store that shares an existing [`ConnectionManager`].
    /// `client` must be the client the manager was made from: the store
    /// opens its pub/sub connection (for release notifications) with it.
    /// The manager's own timeouts and reconnect policy apply.
    pub fn from_connection_manager(client: redis::Client, manager: ConnectionManager) -> Self {
        Self::with_target(Target::Manager(client, manager))
    }

    /// Prepended to every Redis key and to the release channel, so several
    /// applications (or tenants) share one Redis without meeting. Default
    /// [`DEFAULT_KEY_PREFIX`]. A lock `k` lives in the hash `<prefix>{k}`.
    /// The prefix may not contain `{` or `}` (it would become the cluster
    /// hash tag, and two prefixes could share keys): `connect` refuses it.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How long a lock record outlives its last lease (default one day).
    ///
    /// While the record lives, the next fencing token is the last one + 1;
    /// after that the record is gone (memory stays bounded by the keys used
    /// within this window) and the next token comes from the server clock,
    /// which is still larger. Shorter saves memory; longer covers keys
    /// acquired more than a million times a second.
    pub fn idle_retention(mut self, retention: Duration) -> Self {
        // Clamped: PEXPIRE of more than ~10 years reaches Lua as a float in
        // exponent form, which Redis refuses on every acquire.
        self.idle_retention = retention.clamp(Duration::from_millis(1), MAX_RETENTION);
        self
    }

    /// How long the execution ledger keeps a finished run record
    /// (`succeeded` or `ignored`) after it finished. Without this setting
    /// (the default) records stay until
    /// [`purge`](lockstore_api::ledger::LedgerStore::purge) deletes them.
    ///
    /// With a retention the finishing script sets `PEXPIRE` on the record,
    /// so Redis deletes it by itself; a record that goes back to `pending`
    /// or `running` (retry) loses its expiry again. Fences do not go back:
    /// the same script first raises the namespace's fence high-water to the
    /// record's fence, and the next run of the key starts above it. A
    /// replayed result is only available while the record lives, so choose
    /// a retention longer than the longest redelivery window of the work
    /// (e.g. an SQS queue's retention). `failed` records (attempts left)
    /// never expire: they wait for their next attempt. Clamped to at least
    /// 1 ms. The retention is the namespace's (key prefix's) in effect, so
    /// give every store of one prefix the same: a record expires after the
    /// retention of the store that finished it.
    pub fn ledger_retention(mut self, retention: Duration) -> Self {
        self.ledger_retention = Some(retention.max(Duration::from_millis(1)));
        self
    }

    /// How many finished ledger records one purge script deletes at most
    /// (default [`DEFAULT_PURGE_BATCH_SIZE`]); a purge runs as many scripts
    /// as it needs. A script blocks the server while it runs, so this
    /// bounds the pause a purge causes. At least 1.
    pub fn purge_batch_size(mut self, records: u32) -> Self {
        self.purge_batch_size = records.max(1);
        self
    }

    /// How many running records one script examines at most when a query
    /// looks for stuck runs (default [`DEFAULT_STUCK_SCAN_BATCH_SIZE`]).
    /// Whether a run is stuck depends on the time, so no index holds them:
    /// the query walks the running records in its order, as many scripts
    /// as it needs, each examining at most this many, so a ledger with many
    /// live runs never blocks the server (a script blocks it) for a whole
    /// walk. At least 1.
    pub fn stuck_scan_batch_size(mut self, records: u32) -> Self {
        self.stuck_scan_batch_size = records.max(1);
        self
    }

    /// Whether waiters are woken by pub/sub (default `true`). With `false`,
    /// [`release_signal`](lockstore_api::LockStore::release_signal) returns
    /// `None` and waiters poll with backoff; releases still publish.
    pub fn notifications(mut self, enabled: bool) -> Self {
        self.notifications = enabled;
        self
    }

    /// How long one connection attempt may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for a reply before failing the call with a
    /// retryable error (default 5 s; `None` waits forever). A request whose
    /// reply is lost is never reported as held; the client retries it with
    /// the same lease id, which the scripts recognise.
    ///
    /// The release listener waits on its pub/sub connection this long too
    /// (5 s with `None`), and connect + response timeout for connecting and
    /// subscribing, even with a shared [`ConnectionManager`]: a server that
    /// stops answering then costs a waiter a bounded wait (crate docs,
    /// "Waking waiters").
    pub fn response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How many times the connection manager tries to reconnect before a
    /// call fails (default 6, with exponential backoff). On a cluster: how
    /// many times a command is retried (reconnects, redirects, a
    /// `CLUSTERDOWN` during failover) before it fails.
    pub fn reconnect_retries(mut self, retries: usize) -> Self {
        self.reconnect_retries = retries;
        self
    }

    /// What to do when the server's `maxmemory-policy` is not `noeviction`
    /// (default [`EvictionCheck::Warn`]); see [`EvictionCheck`].
    pub fn eviction_check(mut self, check: EvictionCheck) -> Self {
        self.eviction_check = check;
        self
    }

    /// Connects and returns the store.
    ///
    /// # Errors
    /// [`LockError::Config`] for a malformed URL or failed authentication
    /// (the message names the problem, never the password), or for a server
    /// (on a cluster: any primary) that may evict keys under
    /// [`EvictionCheck::Refuse`]; a retryable [`LockError::Backend`] when
    /// the server cannot be reached.
    pub async fn connect(self) -> Result<RedisStore, LockError> {
        if self.key_prefix.contains(['{', '}']) {
            return Err(LockError::config(
                BACKEND,
                format!(
                    "the key prefix {:?} contains `{{` or `}}`: the braces around the lock key are \
                     its cluster hash tag, and a brace in the prefix would let two prefixes \
                     share keys. Use another separator, e.g. `app:locks:`",
                    self.key_prefix
                ),
            ));
        }
        let topology = match self.target.clone() {
            Target::Url(url) => match cluster_nodes(&url)? {
                Some(nodes) => self.cluster_topology(&nodes).await?,
                None => {
                    let client = open_client(&url)?;
                    let manager = self.manager(&client).await?;
                    Topology::node(client, manager)
                }
            },
            Target::Client(client) => {
                let manager = self.manager(&client).await?;
                Topology::node(client, manager)
            }
            Target::Manager(client, manager) => Topology::node(client, manager),
            Target::Cluster(nodes) => self.cluster_topology(&nodes).await?,
        };
        let Topology {
            connection,
            pubsub_clients,
            address,
        } = topology;
        let eviction_policy = self.check_eviction(&connection, &address).await?;
        let channel = format!("{}released", self.key_prefix);
        let reply_wait = self.response_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT);
        let listener = Listener::new(
            pubsub_clients,
            channel.clone(),
            ListenerTimeouts {
                subscribe: self.connect_timeout + reply_wait,
                ping: reply_wait,
            },
        );
        Ok(RedisStore::from_inner(Arc::new(Inner {
            connection,
            address,
            key_prefix: self.key_prefix,
            channel,
            idle_retention_ms: u64::try_from(self.idle_retention.as_millis()).unwrap_or(u64::MAX),
            // 0 = keep; PEXPIRE takes a 64-bit count, and Lua numbers are
            // exact only up to 2^53.
            purge_batch_size: self.purge_batch_size,
            stuck_scan_batch_size: self.stuck_scan_batch_size,
            ledger_retention_ms: self.ledger_retention.map_or(0, |r| {
                u64::try_from(r.as_millis())
                    .unwrap_or(u64::MAX)
                    .min(1 << 53)
            }),
            notifications: self.notifications,
            listener,
            eviction_policy,
        })))
    }

    /// Asks for `maxmemory-policy` (on a cluster: of every primary, since
    /// each holds some of the leases) and applies [`EvictionCheck`]. Returns
    /// the first policy other than `noeviction`, else `noeviction` if every
    /// node told, else `None`.
    async fn check_eviction(
        &self,
        connection: &RedisConnection,
        address: &str,
    ) -> Result<Option<String>, LockError> {
        if self.eviction_check == EvictionCheck::Off {
            return Ok(None);
        }
        let mut known = Some("noeviction".to_owned());
        for (node, answer) in connection.eviction_policies(address).await {
            let policy = match answer {
                Ok(policy) => policy,
                Err(err) => {
                    tracing::debug!(%node, error = %err, "CONFIG GET maxmemory-policy refused; eviction policy unknown");
                    known = known.filter(|policy| policy != "noeviction");
                    continue;
                }
            };
            if policy == "noeviction" {
                continue;
            }
            if self.eviction_check == EvictionCheck::Refuse {
                return Err(LockError::config(
                    BACKEND,
                    format!(
                        "the Redis at {node} has maxmemory-policy {policy}: it may evict a live \
                         lease under memory pressure, and two clients would then hold one key. \
                         Set `maxmemory-policy noeviction` on the server (on a cluster: on every \
                         primary, or use a Redis for locks only), or connect with \
                         EvictionCheck::Warn to accept the risk"
                    ),
                ));
            }
            tracing::warn!(
                %node,
                %policy,
                "Redis maxmemory-policy is not noeviction: a live lease can be evicted under \
                 memory pressure, and two clients would then hold one key"
            );
            if known.as_deref().is_none_or(|known| known == "noeviction") {
                known = Some(policy);
            }
        }
        Ok(known)
    }

    async fn cluster_topology(&self, nodes: &[String]) -> Result<Topology, LockError> {
        if nodes.iter().any(|node| is_tls(node)) {
            enable_tls()?;
        }
        let settings = ClusterSettings {
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            retries: u32::try_from(self.reconnect_retries).unwrap_or(u32::MAX),
        };
        Topology::cluster(nodes, &settings).await
    }

    async fn manager(&self, client: &redis::Client) -> Result<ConnectionManager, LockError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(self.response_timeout)
            .set_number_of_retries(self.reconnect_retries)
            .set_max_delay(Duration::from_secs(2));
        let address = client.get_connection_info().addr().to_string();
        client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|err| command_error(&format!("connect to {address}"), err))
    }
}

/// Parses the URL into a client, with errors that say what is wrong and never
/// repeat the URL (it may hold a password).
fn open_client(url: &str) -> Result<redis::Client, LockError> {
    if is_tls(url) {
        enable_tls()?;
    }
    redis::Client::open(url).map_err(|err| LockError::Config {
        backend: BACKEND,
        message: format!(
            "invalid Redis URL ({err}); expected redis://[user:password@]host[:port][/db], \
             rediss://… for TLS, or redis+cluster://host1:port1,host2:port2 for a cluster"
        ),
        source: Some(Box::new(err)),
    })
}

fn is_tls(url: &str) -> bool {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    matches!(scheme, Some("rediss" | "valkeys"))
}

#[cfg(feature = "tls")]
fn enable_tls() -> Result<(), LockError> {
    // rustls needs a process-wide crypto provider. Install ring unless the
    // application already chose one (then this is an error we ignore).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(())
}

#[cfg(not(feature = "tls"))]
fn enable_tls() -> Result<(), LockError> {
    Err(LockError::config(
        BACKEND,
        "rediss:// (TLS) URLs need lockstore-redis's `tls` feature; enable it or use redis://",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_config_errors_without_the_password() {
        for url in [
            "http://user:hunter2@host",
            "redis://user:hunter2@host:6379/notadb",
            "nonsense",
        ] {
            let err = open_client(url).expect_err(url);
            assert!(matches!(err, LockError::Config { .. }), "{url}: {err:?}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
            assert!(err.to_string().contains("redis://"), "{err}");
        }
    }

    #[test]
    fn good_urls_parse() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://u:p@localhost/3",
            "rediss://host:6380",
        ] {
            open_client(url).unwrap_or_else(|err| panic!("{url}: {err}"));
        }
    }
}
