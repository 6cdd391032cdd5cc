//! The store's command connection: to one Redis server, or to a Redis
//! Cluster.
//!
//! The scripts need nothing else from the topology. Every script names its
//! keys in `KEYS`, and all keys of one call share a hash tag (`{<key>}` for
//! a lock, `{ledger}` for a namespace's ledger; the ledger's query and purge
//! scripts build record keys from that same tag), so each call lives in one
//! slot, and the cluster client sends `EVALSHA` to that slot's primary by
//! the first key. `SCRIPT LOAD` after a `NOSCRIPT` goes to every node.
//!
//! Release notifications use plain `PUBLISH`, which a cluster forwards to
//! every node over its bus; so the store's one subscriber may listen on any
//! node ([`Topology::pubsub_clients`] lists the candidates, tried in turn
//! when one is down). Sharded pub/sub (`SPUBLISH`, Redis 7) would keep a
//! message inside its slot's shard, but a waiter would then need one
//! subscription per slot its keys live in; broadcasting is simpler and
//! costs one bus message per node and release.
//!
//! # URLs
//!
//! `redis+cluster://[user[:password]@]host1[:port1][,host2[:port2]…][/0][?params]`
//! (`rediss+cluster://` for TLS; also `valkey+cluster://`, `valkeys+cluster://`)
//! names a cluster by some of its nodes (seeds); the client learns the rest
//! from them. Every seed gets the same credentials and parameters; the only
//! database a cluster has is 0.

use std::fmt;

use lockstore_api::LockError;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::error::{BACKEND, command_error};

/// The connection a [`RedisStore`](crate::RedisStore) sends its scripts
/// over; [`RedisStore::connection`](crate::RedisStore::connection) gives a
/// clone (clones share it) for running other commands on the same server
/// or cluster.
#[derive(Clone)]
#[non_exhaustive]
pub enum RedisConnection {
    /// One server (or a proxy in front of a cluster), reconnecting by itself.
    Node(ConnectionManager),
    /// A Redis Cluster: each command goes to the primary of its key's slot,
    /// following `MOVED`/`ASK` redirects and topology changes.
    Cluster(ClusterConnection),
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedisConnection::Node(_) => "RedisConnection::Node",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Node(manager) => manager.req_packed_command(cmd),
            RedisConnection::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Node(manager) => manager.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(cluster) => {
                cluster.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Node(manager) => manager.get_db(),
            RedisConnection::Cluster(cluster) => cluster.get_db(),
        }
    }
}

impl RedisConnection {
    /// `maxmemory-policy` of the server, or of every primary of a cluster:
    /// one `(node, answer)` per node; an answer is `Err` when the node
    /// refused `CONFIG GET` (managed services often do).
    pub(crate) async fn eviction_policies(
        &self,
        address: &str,
    ) -> Vec<(String, Result<String, String>)> {
        let mut get = redis::cmd("CONFIG");
        get.arg("GET").arg("maxmemory-policy");
        match self {
            RedisConnection::Node(manager) => {
                let reply: Result<Vec<String>, _> = get.query_async(&mut manager.clone()).await;
                let answer = reply
                    .map_err(|err| err.to_string())
                    .and_then(|pair| policy_of(&pair));
                vec![(address.to_owned(), answer)]
            }
            RedisConnection::Cluster(cluster) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                // Without a response policy the client answers with one
                // entry per primary: address → that node's reply.
                match cluster.clone().route_command(get, routing).await {
                    Ok(Value::Map(replies)) => replies
                        .into_iter()
                        .map(|(node, reply)| (text(&node), policy_reply(reply)))
                        .collect(),
                    Ok(other) => vec![(address.to_owned(), policy_reply(other))],
                    Err(err) => vec![(address.to_owned(), Err(err.to_string()))],
                }
            }
        }
    }
}

fn policy_reply(reply: Value) -> Result<String, String> {
    match reply {
        Value::ServerError(err) => Err(err.to_string()),
        reply => redis::from_redis_value::<Vec<String>>(reply)
            .map_err(|err| err.to_string())
            .and_then(|pair| policy_of(&pair)),
    }
}

fn policy_of(pair: &[String]) -> Result<String, String> {
    pair.get(1)
        .cloned()
        .ok_or_else(|| "CONFIG GET maxmemory-policy returned nothing".to_owned())
}

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(text) => text.clone(),
        other => format!("{other:?}"),
    }
}

/// What a store connects to, once its URL or settings are read.
pub(crate) struct Topology {
    /// The command connection.
    pub(crate) connection: RedisConnection,
    /// Where the release listener may subscribe, in the order to try.
    pub(crate) pubsub_clients: Vec<redis::Client>,
    /// `host:port` (a cluster: its seeds, comma-separated), for messages;
    /// never the password.
    pub(crate) address: String,
}

impl Topology {
    /// One server, over `manager` made from `client`.
    pub(crate) fn node(client: redis::Client, manager: ConnectionManager) -> Self {
        Self {
            address: client.get_connection_info().addr().to_string(),
            connection: RedisConnection::Node(manager),
            pubsub_clients: vec![client],
        }
    }

    /// A cluster, from the URLs of some of its nodes.
    pub(crate) async fn cluster(
        nodes: &[String],
        settings: &ClusterSettings,
    ) -> Result<Self, LockError> {
        let mut clients = Vec::with_capacity(nodes.len());
        for node in nodes {
            clients.push(
                redis::Client::open(node.as_str()).map_err(|err| LockError::Config {
                    backend: BACKEND,
                    message: format!(
                        "invalid Redis Cluster node ({err}); expected \
                     redis+cluster://[user:password@]host1:port1,host2:port2"
                    ),
                    source: Some(Box::new(err)),
                })?,
            );
        }
        let address = clients
            .iter()
            .map(|client| client.get_connection_info().addr().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
            .connection_timeout(settings.connect_timeout)
            .retries(settings.retries);
        if let Some(timeout) = settings.response_timeout {
            builder = builder.response_timeout(timeout);
        }
        let doing = || format!("connect to the Redis Cluster at {address}");
        let client = builder
            .build()
            .map_err(|err| command_error(&doing(), err))?;
        let connection = client
            .get_async_connection()
            .await
            .map_err(|err| command_error(&doing(), err))?;
        Ok(Self {
            connection: RedisConnection::Cluster(connection),
            pubsub_clients: clients,
            address: format!("cluster {address}"),
        })
    }
}

/// The builder's settings a cluster connection takes.
pub(crate) struct ClusterSettings {
    pub(crate) connect_timeout: std::time::Duration,
    pub(crate) response_timeout: Option<std::time::Duration>,
    pub(crate) retries: u32,
}

/// The node URLs a cluster URL names (see the module docs), or `None` for a
/// URL of one server. Errors say what is wrong without repeating the URL.
pub(crate) fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>, LockError> {
    let Some((scheme, rest)) = url.trim().split_once("://") else {
        return Ok(None);
    };
    let node_scheme = match scheme.to_ascii_lowercase().as_str() {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        "valkey+cluster" => "valkey",
        "valkeys+cluster" => "valkeys",
        _ => return Ok(None),
    };
    let bad = |why: String| {
        LockError::config(
            BACKEND,
            format!(
                "invalid Redis Cluster URL: {why}; expected \
                 {scheme}://[user:password@]host1:port1[,host2:port2…]"
            ),
        )
    };
    // User info is percent-encoded, so the authority ends at the first `/`
    // or `?`, and its last `@` ends the user info.
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    match path.trim_start_matches('/') {
        "" | "0" => {}
        db => {
            return Err(bad(format!(
                "it names database {db:?}, and a Redis Cluster has only database 0"
            )));
        }
    }
    let urls: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(|host| {
            let mut url = format!("{node_scheme}://");
            if let Some(userinfo) = userinfo {
                url.push_str(userinfo);
                url.push('@');
            }
            url.push_str(host);
            if let Some(query) = query {
                url.push_str("/?");
                url.push_str(query);
            }
            url
        })
        .collect();
    if urls.is_empty() {
        return Err(bad("it names no node".to_owned()));
    }
    Ok(Some(urls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_names_its_seed_nodes() {
        assert_eq!(
            cluster_nodes("redis+cluster://10.0.0.1:7000,10.0.0.2:7001, 10.0.0.3").unwrap(),
            Some(vec![
                "redis://10.0.0.1:7000".to_owned(),
                "redis://10.0.0.2:7001".to_owned(),
                "redis://10.0.0.3".to_owned(),
            ])
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://app:p%40ss@a:7000,b:7000/0?protocol=resp3").unwrap(),
            Some(vec![
                "rediss://app:p%40ss@a:7000/?protocol=resp3".to_owned(),
                "rediss://app:p%40ss@b:7000/?protocol=resp3".to_owned(),
            ])
        );
        for single in [
            "redis://a:6379",
            "rediss://a",
            "unix:///tmp/r.sock",
            "nonsense",
        ] {
            assert_eq!(cluster_nodes(single).unwrap(), None, "{single}");
        }
    }

    #[test]
    fn bad_cluster_urls_are_config_errors_without_the_password() {
        for url in [
            "redis+cluster://",
            "redis+cluster://u:hunter2@,/",
            "redis+cluster://u:hunter2@a:7000/3",
        ] {
            let err = cluster_nodes(url).expect_err(url);
            assert!(matches!(err, LockError::Config { .. }), "{url}: {err:?}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
            assert!(err.to_string().contains("redis+cluster://"), "{err}");
        }
    }
}
