//! The release listener on a server that stops answering (review m3): a
//! pub/sub connection that cannot be made, or dies silently, must wake the
//! waiters and be made again, never park them on a signal nobody sends.
//!
//! Outcomes are logical (a waiter's signal resolves, the listener connects
//! again); the time bounds only catch a hang.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lockstore_api::{AcquireOutcome, AcquireRequest, LeaseId, LockKey, LockStore, OwnerLabel, Ttl};
use lockstore_conformance::proxy::FaultProxy;
use lockstore_redis::{RedisStore, RedisStoreBuilder};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Far beyond any timeout the stores here use: reaching it means a hang.
const HANG: Duration = Duration::from_secs(60);

fn key(name: &str) -> LockKey {
    LockKey::new(name).unwrap()
}

/// A TCP server that accepts connections, reads whatever comes and never
/// answers (a stuck proxy, a paused server). Counts the connections.
async fn silent_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                while matches!(socket.read(&mut buffer).await, Ok(n) if n > 0) {}
            });
        }
    });
    (format!("redis://{addr}"), accepted)
}

/// The store's commands go to the real server; its pub/sub connection (made
/// with `client`) to a server that never answers. Today's listener waited
/// for `SUBSCRIBE`'s reply forever: no waiter was woken, nothing retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_server_never_answers_wakes_waiters_and_connects_again() {
    let (silent_url, accepted) = silent_server().await;
    let silent = redis::Client::open(silent_url).unwrap();
    let manager = redis::Client::open(common::url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let store = RedisStoreBuilder::from_connection_manager(silent, manager)
        .key_prefix(common::fresh_prefix("silent"))
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Some(Duration::from_millis(500)))
        .connect()
        .await
        .unwrap();
    let k = key("silent");
    for round in 0..2 {
        let signal = store.release_signal(&k).expect("notifications are on");
        tokio::time::timeout(HANG, signal)
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: a waiter stayed parked on a listener that cannot subscribe")
            });
    }
    tokio::time::timeout(HANG, async {
        while accepted.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the listener never tried to connect again");
}

/// The pub/sub connection goes silent after subscribing (a NAT dropped the
/// flow): a release published then is lost, but the health check notices
/// the dead socket, wakes the waiter, and the listener subscribes again so
/// that a later release wakes a later waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_lost_on_a_silently_dead_subscription_still_wakes_the_waiter() {
    let upstream = common::url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = FaultProxy::start(upstream).await;
    let prefix = common::fresh_prefix("dead-pubsub");
    let waiter_store = RedisStore::builder(format!("redis://{}", proxy.addr()))
        .key_prefix(prefix.clone())
        .response_timeout(Some(Duration::from_millis(500)))
        .connect()
        .await
        .unwrap();
    let direct = RedisStore::builder(common::url())
        .key_prefix(prefix)
        .connect()
        .await
        .unwrap();
    let k = key("dead-pubsub");
    let acquire = |owner: &str| AcquireRequest {
        key: k.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(Duration::from_secs(30)).unwrap(),
        owner: OwnerLabel::new(owner).unwrap(),
    };
    // The first signal resolves once the listener has subscribed.
    let subscribed = waiter_store.release_signal(&k).unwrap();
    tokio::time::timeout(HANG, subscribed)
        .await
        .expect("the listener subscribed");

    proxy.blackhole_open();
    let waiting = waiter_store.release_signal(&k).unwrap();
    let holder = acquire("holder");
    assert!(matches!(
        direct.try_acquire(&holder).await.unwrap(),
        AcquireOutcome::Acquired { .. }
    ));
    direct.release(&k, holder.lease_id).await.unwrap();
    tokio::time::timeout(HANG, waiting)
        .await
        .expect("a release lost on a dead subscription left the waiter parked");

    // The listener subscribes again through the proxy, which lets new
    // connections pass: a later waiter is woken again (by the release, or
    // by the new subscription if the release came before it).
    let mut woken = false;
    tokio::time::timeout(HANG, async {
        while !woken {
            let next = waiter_store.release_signal(&k).unwrap();
            let holder = acquire("holder");
            direct.try_acquire(&holder).await.unwrap();
            direct.release(&k, holder.lease_id).await.unwrap();
            woken = tokio::time::timeout(Duration::from_secs(5), next)
                .await
                .is_ok();
        }
    })
    .await
    .expect("no waiter was woken after the listener came back");
}
