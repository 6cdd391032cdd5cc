//! The store on a Redis Cluster of three primaries
//! (`LOCKSTORE_TEST_REDIS_CLUSTER_URL`, a `redis+cluster://` URL;
//! `scripts/servers.sh start` starts one on 127.0.0.1): the shared lock suite
//! (`redis_cluster::…`) and ledger suite (`redis_cluster_ledger::…`)
//! unchanged, and what is particular to a cluster — records on the primary
//! of their slot, releases waking waiters whatever node their key lives on,
//! the eviction check asking every primary, and a one-node URL on a cluster
//! failing with advice.

mod common;

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::ledger::LedgerStore;
use lockstore_api::semaphore::SemaphoreStore;
use lockstore_api::{
    AcquireOutcome, AcquireRequest, LeaseId, LockError, LockKey, LockStore, OwnerLabel, Ttl,
};
use lockstore_conformance::{Harness, Network, Profile, Restart};
use lockstore_redis::{EvictionCheck, RedisStore};

const URL_VAR: &str = "LOCKSTORE_TEST_REDIS_CLUSTER_URL";

/// The cluster's URL; a missing one fails the test with instructions.
fn cluster_url() -> String {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "no Redis Cluster for the lockstore cluster tests: set {URL_VAR}=redis+cluster://host1:port1,host2:port2,… \
             naming a running cluster (`eval \"$(scripts/servers.sh start)\"` starts one of three primaries \
             on 127.0.0.1 and sets it)"
        ),
    }
}

/// `redis://host:port` of every node the URL names.
fn node_urls() -> Vec<String> {
    let url = cluster_url();
    let hosts = url
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'))
        .expect("a redis+cluster:// URL");
    hosts
        .split(',')
        .map(|host| format!("redis://{host}"))
        .collect()
}

struct ClusterHarness;

impl ClusterHarness {
    async fn connect(&self, namespace: &str) -> RedisStore {
        RedisStore::builder(cluster_url())
            .key_prefix(format!("lockstore-test:{namespace}:"))
            .connect()
            .await
            .unwrap_or_else(|err| panic!("connect to the test Redis Cluster: {err}"))
    }
}

#[async_trait::async_trait]
impl Harness for ClusterHarness {
    fn profile(&self) -> Profile {
        // Each call is one script on one primary, as on a single server.
        // The fault-proxy and restart cases run on the single-server suite
        // (tests/conformance.rs): the nodes announce their own addresses,
        // which a proxy in front of one of them cannot intercept.
        Profile {
            network: Network::Cluster,
            restart: Restart::Cluster,
            ..Profile::real_server()
        }
    }

    async fn store(&self, namespace: &str) -> Arc<dyn LockStore> {
        Arc::new(self.connect(namespace).await)
    }

    async fn ledger(&self, namespace: &str) -> Option<Arc<dyn LedgerStore>> {
        Some(Arc::new(self.connect(namespace).await))
    }

    async fn semaphore(&self, namespace: &str) -> Option<Arc<dyn SemaphoreStore>> {
        Some(Arc::new(self.connect(namespace).await))
    }
}

lockstore_conformance::suite!(redis_cluster, ClusterHarness);
lockstore_conformance::ledger_suite!(redis_cluster_ledger, ClusterHarness);
lockstore_conformance::semaphore_suite!(redis_cluster_semaphore, ClusterHarness);

fn request(key: &LockKey) -> AcquireRequest {
    AcquireRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::from_millis(30_000).unwrap(),
        owner: OwnerLabel::new("cluster-test").unwrap(),
    }
}

async fn cluster_store(label: &str) -> RedisStore {
    RedisStore::builder(cluster_url())
        .key_prefix(common::fresh_prefix(label))
        .connect()
        .await
        .expect("connect to the test Redis Cluster")
}

/// Which node (index into [`node_urls`]) holds `redis_key`: the one that
/// answers `EXISTS` instead of redirecting with `MOVED`.
async fn holder_node(redis_key: &str) -> usize {
    let mut holders = Vec::new();
    for (index, url) in node_urls().iter().enumerate() {
        let mut node = common::raw_connection(url).await;
        let exists: Result<bool, redis::RedisError> = redis::cmd("EXISTS")
            .arg(redis_key)
            .query_async(&mut node)
            .await;
        match exists {
            Ok(true) => holders.push(index),
            Ok(false) => panic!("{redis_key} is not on node {url}, which serves its slot"),
            Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved) => {}
            Err(err) => panic!("EXISTS on {url}: {err}"),
        }
    }
    assert_eq!(holders.len(), 1, "{redis_key} is held by nodes {holders:?}");
    holders[0]
}

/// Acquires keys `spread-0`, `spread-1`, … until every node holds one;
/// returns one key (and its lease) per node, in node order.
async fn one_key_per_node(store: &RedisStore) -> Vec<(LockKey, LeaseId)> {
    let nodes = node_urls().len();
    let mut found: Vec<Option<(LockKey, LeaseId)>> = vec![None; nodes];
    for i in 0..1000 {
        let key = LockKey::new(format!("spread-{i}")).unwrap();
        let mine = request(&key);
        let outcome = store.try_acquire(&mine).await.unwrap();
        assert!(
            matches!(outcome, AcquireOutcome::Acquired { .. }),
            "{outcome:?}"
        );
        let node = holder_node(&store.record_key(&key)).await;
        if found[node].is_none() {
            found[node] = Some((key, mine.lease_id));
        } else {
            store.release(&key, mine.lease_id).await.unwrap();
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().collect();
        }
    }
    panic!("1000 keys and still a node without one: is every node a primary with slots?");
}

/// Lock records live on the primary of their key's slot, and keys spread
/// over every primary: the store really uses the cluster, not one node.
#[tokio::test]
async fn records_live_on_the_primary_of_their_slot_on_every_node() {
    let store = cluster_store("spread").await;
    let keys = one_key_per_node(&store).await;
    assert_eq!(keys.len(), node_urls().len());
    for (key, lease) in keys {
        store.release(&key, lease).await.unwrap();
    }
}

/// The listener subscribes on one node; a release on any primary wakes
/// the waiters of its key, because the cluster forwards `PUBLISH` to every
/// node. The releases come from a second store, with its own connections,
/// each after the waiter was refused the key while its signal was held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_on_any_primary_wakes_the_waiters_of_its_key() {
    let prefix = common::fresh_prefix("wake");
    let connect = || async {
        RedisStore::builder(cluster_url())
            .key_prefix(prefix.clone())
            .connect()
            .await
            .unwrap()
    };
    let (holder, waiter) = (connect().await, connect().await);
    // The first signal starts the listener, and every signal fires once
    // when it subscribes (a release may have gone unheard before): wait
    // for that, so below only a published release can fire a signal.
    let warm_up = waiter
        .release_signal(&LockKey::new("warm-up").unwrap())
        .expect("a cluster store gives release signals");
    tokio::time::timeout(Duration::from_secs(20), warm_up)
        .await
        .expect("the release listener never subscribed");
    for (node, (key, lease)) in one_key_per_node(&holder).await.into_iter().enumerate() {
        let signal = waiter
            .release_signal(&key)
            .expect("a cluster store gives release signals");
        // As a waiting client does: registered, then refused. A release
        // publishes only when a refused waiter asked for it (wake_fence).
        assert!(
            matches!(
                waiter.try_acquire(&request(&key)).await.unwrap(),
                AcquireOutcome::Held(_)
            ),
            "the waiter got a held key"
        );
        holder.release(&key, lease).await.unwrap();
        // Generous: only a signal that never fires fails this.
        tokio::time::timeout(Duration::from_secs(20), signal)
            .await
            .unwrap_or_else(|_| {
                panic!("the release of {key:?} on node {node} never woke its waiter")
            });
    }
}

/// Sets `maxmemory-policy` on one node, and back to `noeviction` on drop
/// (also when the test fails).
struct PolicyOnNode {
    url: String,
}

impl PolicyOnNode {
    async fn set(url: &str, policy: &str) -> Self {
        let mut node = common::raw_connection(url).await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query_async(&mut node)
            .await
            .expect("CONFIG SET maxmemory-policy");
        Self {
            url: url.to_owned(),
        }
    }
}

impl Drop for PolicyOnNode {
    fn drop(&mut self) {
        let url = self.url.clone();
        // A thread of its own: Drop may run inside the test's runtime.
        std::thread::spawn(move || {
            let mut node = redis::Client::open(url.as_str())
                .and_then(|client| client.get_connection())
                .expect("reconnect to reset maxmemory-policy");
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg("noeviction")
                .query(&mut node)
                .expect("reset maxmemory-policy");
        })
        .join()
        .expect("reset maxmemory-policy");
    }
}

/// Every primary holds leases, so every primary's policy counts: an
/// evicting policy on the last node (not the first seed, where a one-node
/// check would look) is found, refused under `Refuse` and reported under
/// `Warn`.
#[tokio::test]
async fn the_eviction_check_asks_every_primary() {
    let store = cluster_store("policy").await;
    assert_eq!(store.eviction_policy(), Some("noeviction"));
    let nodes = node_urls();
    let last = nodes.last().expect("nodes").clone();
    let _policy = PolicyOnNode::set(&last, "allkeys-lru").await;
    let refused = RedisStore::builder(cluster_url())
        .eviction_check(EvictionCheck::Refuse)
        .connect()
        .await
        .expect_err("an evicting primary must be refused");
    let port = last.rsplit(':').next().unwrap();
    assert!(matches!(refused, LockError::Config { .. }), "{refused:?}");
    let message = refused.to_string();
    assert!(
        message.contains("allkeys-lru") && message.contains(port),
        "{message}"
    );
    let warned = RedisStore::builder(cluster_url())
        .eviction_check(EvictionCheck::Warn)
        .connect()
        .await
        .expect("Warn connects anyway");
    assert_eq!(warned.eviction_policy(), Some("allkeys-lru"));
}

/// A plain URL of one cluster node works for keys of that node's slots and
/// fails, with advice naming the cluster URL form, for the others.
#[tokio::test]
async fn a_one_node_url_on_a_cluster_says_how_to_name_the_cluster() {
    let prefix = common::fresh_prefix("one-node");
    let clustered = RedisStore::builder(cluster_url())
        .key_prefix(prefix.clone())
        .connect()
        .await
        .expect("connect to the test Redis Cluster");
    let keys = one_key_per_node(&clustered).await;
    let first = RedisStore::builder(node_urls()[0].clone())
        .key_prefix(prefix)
        .connect()
        .await
        .expect("connect to one node");
    let (elsewhere, _) = &keys[1];
    let err = first
        .inspect(elsewhere)
        .await
        .expect_err("a key of another node's slot is redirected");
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("redis+cluster://"), "{err}");
    for (key, lease) in keys {
        clustered.release(&key, lease).await.unwrap();
    }
}

/// The fenced write is one key (value and fence in one hash), so it runs on
/// a cluster unchanged: here on keys of several slots.
#[tokio::test]
async fn fenced_set_refuses_stale_fences_on_a_cluster() {
    let store = ClusterHarness.connect("fenced-set").await;
    for i in 0..3 {
        let key = format!("lockstore-test:fenced:{:016x}:{i}", rand::random::<u64>());
        common::fenced_set_refuses_stale_fences(&mut store.connection(), &key).await;
    }
}
