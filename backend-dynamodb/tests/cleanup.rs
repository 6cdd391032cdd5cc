//! DynamoDB TTL cleanup and the clocks behind it (review M4 and m6), on moto
//! and on dynalite.
//!
//! Neither server runs DynamoDB TTL in the background (dynalite has no TTL
//! operations at all), so [`ttl_pass`] plays it: DynamoDB deletes an item
//! once the service's clock is past the item's cleanup attribute (epoch
//! seconds), and never deletes an item without one. The tests run that pass
//! at a chosen "service time" and check what clients see afterwards:
//!
//! * a skew-free lease whose writer's wall clock is a month behind is never
//!   deleted while it is held;
//! * the fence of a key re-created after deletion is above every earlier
//!   token, even when the clock of the client that created the item was a
//!   month ahead (so the item's counter started a month in the future);
//! * a release whose reply was lost and retried by the SDK says `Released`;
//! * a skew-free client dates its first sighting of a version after it has
//!   read it, so a renewal landing during its read is waited out in full.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::config_bag::ConfigBag;
use common::{Server, acquired, held, key, request};
use lockstore_api::{AcquireOutcome, LeaseId, LockKey, LockStore, ReleaseOutcome, RenewOutcome};
use lockstore_dynamodb::{DynamoDbStore, TakeoverMode, WallClock};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const LONG: Duration = Duration::from_secs(30);

/// A wall clock a fixed amount ahead of (or behind) this machine's.
#[derive(Debug, Clone, Copy)]
enum Skew {
    Ahead(Duration),
    Behind(Duration),
}

impl WallClock for Skew {
    fn now(&self) -> SystemTime {
        match *self {
            Skew::Ahead(d) => SystemTime::now() + d,
            Skew::Behind(d) => SystemTime::now() - d,
        }
    }
}

fn epoch_secs_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A store on `server`'s shared table under `prefix`, with this clock and
/// takeover mode.
async fn store(server: Server, prefix: &str, mode: TakeoverMode, clock: Skew) -> DynamoDbStore {
    common::ensure_table_on(server).await;
    common::builder_on(server, &server.table(common::TABLE))
        .key_prefix(format!("{prefix}/"))
        .takeover(mode)
        .wall_clock(clock)
        .build()
        .await
        .unwrap()
}

fn raw(server: Server) -> Client {
    Client::from_conf(common::sdk_config_builder_on(server).build())
}

async fn item(
    server: Server,
    store: &DynamoDbStore,
    k: &LockKey,
) -> Option<HashMap<String, AttributeValue>> {
    raw(server)
        .get_item()
        .table_name(server.table(common::TABLE))
        .key("lock_key", AttributeValue::S(store.item_key(k)))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

fn cleanup_at(item: &HashMap<String, AttributeValue>) -> Option<u64> {
    match item.get("cleanup_at") {
        None => None,
        Some(AttributeValue::N(n)) => Some(n.parse().unwrap()),
        Some(other) => panic!("cleanup_at is {other:?}"),
    }
}

/// What DynamoDB TTL does to `k`'s item when the service's clock reads
/// `service_time` (epoch seconds): deletes it if its cleanup time has
/// passed. Says whether it deleted it.
async fn ttl_pass(server: Server, store: &DynamoDbStore, k: &LockKey, service_time: u64) -> bool {
    let Some(found) = item(server, store, k).await else {
        return false;
    };
    match cleanup_at(&found) {
        Some(at) if at <= service_time => {
            raw(server)
                .delete_item()
                .table_name(server.table(common::TABLE))
                .key("lock_key", AttributeValue::S(store.item_key(k)))
                .send()
                .await
                .unwrap();
            true
        }
        _ => false,
    }
}

/// A skew-free holder whose wall clock is a month behind writes expiry and
/// cleanup times a month in the past. Skew-free mode exists for such
/// clocks: its item must survive TTL for as long as the lease is held, so
/// nobody else gets in.
async fn skew_free_lease_survives_ttl_whatever_the_writers_clock(server: Server) {
    let prefix = common::fresh_prefix("sf-ttl");
    let k = key("sf-ttl");
    let lagging = store(
        server,
        &prefix,
        TakeoverMode::SkewFree,
        Skew::Behind(30 * DAY),
    )
    .await;
    let accurate = store(
        server,
        &prefix,
        TakeoverMode::SkewFree,
        Skew::Ahead(Duration::ZERO),
    )
    .await;
    let alice = request(&k, LONG, "alice");
    let fence = acquired(&lagging, &alice).await;
    // TTL runs at any time while the lease is held: now, or much later.
    for service_time in [epoch_secs_now(), epoch_secs_now() + 365 * DAY.as_secs()] {
        assert!(
            !ttl_pass(server, &lagging, &k, service_time).await,
            "DynamoDB TTL may delete the item of a live skew-free lease: {:?}",
            item(server, &lagging, &k).await
        );
    }
    assert_eq!(
        lagging.renew(&k, alice.lease_id, alice.ttl).await.unwrap(),
        RenewOutcome::Renewed
    );
    assert!(
        !ttl_pass(server, &lagging, &k, epoch_secs_now()).await,
        "DynamoDB TTL may delete the item of a renewed skew-free lease: {:?}",
        item(server, &lagging, &k).await
    );
    let holder = held(&accurate, &request(&k, LONG, "bob")).await;
    assert_eq!((holder.owner(), holder.fence()), ("alice", fence));
    // A retried acquire (same lease id) refreshes the lease: still kept.
    acquired(&lagging, &alice).await;
    assert!(!ttl_pass(server, &lagging, &k, epoch_secs_now()).await);
    // Once released, the item may go: its release wrote a cleanup time.
    assert_eq!(
        lagging.release(&k, alice.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    let released = item(server, &lagging, &k).await.expect("the released item");
    assert!(
        cleanup_at(&released).is_some(),
        "a released item must be left to DynamoDB TTL: {released:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_skew_free_lease_survives_ttl_whatever_the_writers_clock() {
    skew_free_lease_survives_ttl_whatever_the_writers_clock(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_skew_free_lease_survives_ttl_whatever_the_writers_clock() {
    skew_free_lease_survives_ttl_whatever_the_writers_clock(Server::Dynalite).await;
}

/// The review's sequence: a client whose clock is a month ahead creates the
/// item (its counter starts a month in the future), accurate clients use
/// the key afterwards, the item is deleted by TTL at the earliest moment it
/// may be, and an accurate client re-creates it. Its token must be above
/// every earlier one. `last_op` is how the last accurate client left the
/// key: released, or abandoned after a renewal (wall-clock mode only: a
/// skew-free lease's item is never deleted while held).
async fn fence_rises_after_ttl_deletion_when_the_creator_was_ahead(
    server: Server,
    mode: TakeoverMode,
    release_last: bool,
) {
    let prefix = common::fresh_prefix("ahead");
    let k = key("ahead");
    let creator = store(server, &prefix, mode, Skew::Ahead(30 * DAY)).await;
    let accurate = store(server, &prefix, mode, Skew::Ahead(Duration::ZERO)).await;

    let first = request(&k, LONG, "creator");
    let mut last = acquired(&creator, &first).await;
    assert_eq!(
        creator.release(&k, first.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    for round in 0..2 {
        let r = request(&k, LONG, "accurate");
        let fence = acquired(&accurate, &r).await;
        assert!(fence > last, "round {round}: {fence} after {last}");
        last = fence;
        assert_eq!(
            accurate.renew(&k, r.lease_id, r.ttl).await.unwrap(),
            RenewOutcome::Renewed
        );
        if release_last || round == 0 {
            assert_eq!(
                accurate.release(&k, r.lease_id).await.unwrap(),
                ReleaseOutcome::Released
            );
        }
    }
    let left = item(server, &accurate, &k).await.expect("the item");
    let Some(deletable_at) = cleanup_at(&left) else {
        panic!("the item has no cleanup time, so TTL never deletes it: {left:?}")
    };
    assert!(
        ttl_pass(server, &accurate, &k, deletable_at).await,
        "the item was not deleted at its own cleanup time"
    );
    // An accurate client at the moment TTL deleted the item.
    let then = Skew::Ahead(Duration::from_secs(
        deletable_at.saturating_sub(epoch_secs_now()),
    ));
    let recreator = store(server, &prefix, mode, then).await;
    let fence = acquired(&recreator, &request(&k, LONG, "recreator")).await;
    assert!(
        fence > last,
        "fence went back after TTL deletion: {fence} after {last} (cleanup time {deletable_at})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_fence_rises_after_ttl_deletion_when_the_creator_was_ahead() {
    for mode in [TakeoverMode::WallClock, TakeoverMode::SkewFree] {
        fence_rises_after_ttl_deletion_when_the_creator_was_ahead(Server::Moto, mode, true).await;
    }
    fence_rises_after_ttl_deletion_when_the_creator_was_ahead(
        Server::Moto,
        TakeoverMode::WallClock,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_fence_rises_after_ttl_deletion_when_the_creator_was_ahead() {
    for mode in [TakeoverMode::WallClock, TakeoverMode::SkewFree] {
        fence_rises_after_ttl_deletion_when_the_creator_was_ahead(Server::Dynalite, mode, true)
            .await;
    }
    fence_rises_after_ttl_deletion_when_the_creator_was_ahead(
        Server::Dynalite,
        TakeoverMode::WallClock,
        false,
    )
    .await;
}

/// Turns the reply of the first `UpdateItem` whose request carries
/// the test armed into an HTTP 500 after the server applied it, as a lost
/// reply looks to the SDK, which then retries the request.
#[derive(Debug, Default, Clone)]
struct LoseFirstReleaseReply {
    /// Set by the test: the next `UpdateItem` reply is lost.
    armed: Arc<AtomicBool>,
    /// `UpdateItem` attempts sent since the test armed it.
    attempts: Arc<AtomicU32>,
    counting: Arc<AtomicBool>,
}

impl LoseFirstReleaseReply {
    fn arm(&self) {
        self.counting.store(true, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }
}

impl Intercept for LoseFirstReleaseReply {
    fn name(&self) -> &'static str {
        "LoseFirstReleaseReply"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.counting.load(Ordering::SeqCst)
            && cfg
                .load::<Metadata>()
                .is_some_and(|m| m.name() == "UpdateItem")
        {
            self.attempts.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if cfg
            .load::<Metadata>()
            .is_some_and(|m| m.name() == "UpdateItem")
            && self.armed.swap(false, Ordering::SeqCst)
        {
            *context.response_mut().status_mut() = StatusCode::try_from(500).unwrap();
        }
        Ok(())
    }
}

/// A release the server applied but whose reply was lost is retried by the
/// SDK; the retry finds the lease gone. The store must tell "released by
/// this very lease" from "not ours" and say `Released`.
async fn release_retried_after_a_lost_reply_says_released(server: Server) {
    common::ensure_table_on(server).await;
    let lose = LoseFirstReleaseReply::default();
    let client = Client::from_conf(
        common::sdk_config_builder_on(server)
            .interceptor(lose.clone())
            .build(),
    );
    let store = common::builder_on(server, &server.table(common::TABLE))
        .key_prefix(format!("{}/", common::fresh_prefix("lost-release")))
        .build_with_client(client)
        .unwrap();
    let k = key("lost-release");
    let alice = request(&k, LONG, "alice");
    acquired(&store, &alice).await;
    lose.arm();
    let outcome = store.release(&k, alice.lease_id).await.unwrap();
    assert_eq!(
        lose.attempts.load(Ordering::SeqCst),
        2,
        "the SDK should have retried the release once"
    );
    assert_eq!(
        outcome,
        ReleaseOutcome::Released,
        "a live lease was released"
    );
    // Another lease's release is still NotHeld, and so is ours again.
    assert_eq!(
        store.release(&k, LeaseId::random()).await.unwrap(),
        ReleaseOutcome::NotHeld
    );
    acquired(&store, &request(&k, LONG, "bob")).await;
    assert_eq!(
        store.release(&k, alice.lease_id).await.unwrap(),
        ReleaseOutcome::NotHeld,
        "a release of a lease already gone, the key since taken, is NotHeld"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_release_retried_after_a_lost_reply_says_released() {
    release_retried_after_a_lost_reply_says_released(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_release_retried_after_a_lost_reply_says_released() {
    release_retried_after_a_lost_reply_says_released(Server::Dynalite).await;
}

/// Holds the first `GetItem` after [`HoldFirstRead::arm`] until the test
/// lets it go, telling the test when it is about to be sent.
#[derive(Debug, Default, Clone)]
struct HoldFirstRead {
    state: Arc<Mutex<Option<HeldRead>>>,
}

/// The "read about to be sent" signal and the "go" receiver.
type HeldRead = (mpsc::Sender<()>, mpsc::Receiver<()>);

impl HoldFirstRead {
    /// Returns (the "read about to be sent" signal, the "go" sender).
    fn arm(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (sending_tx, sending_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel();
        *self.state.lock().unwrap() = Some((sending_tx, go_rx));
        (sending_rx, go_tx)
    }
}

impl Intercept for HoldFirstRead {
    fn name(&self) -> &'static str {
        "HoldFirstRead"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if cfg
            .load::<Metadata>()
            .is_some_and(|m| m.name() == "GetItem")
            && let Some((sending, go)) = self.state.lock().unwrap().take()
        {
            sending.send(()).unwrap();
            // Blocks this worker thread; the test's other thread renews.
            go.recv_timeout(Duration::from_secs(60))
                .expect("the test let the read go");
        }
        Ok(())
    }
}

/// dynalite returns no item with a refused condition, so a skew-free
/// client reads the holder with a `GetItem`. If the holder renews between
/// the refusal and that read, the read shows the new version: the client
/// must date its first sighting no earlier than the read's reply, so its
/// takeover waits a full TTL after the renewal was sent.
#[test]
fn dynalite_skew_free_sighting_is_dated_after_the_holder_read() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = Server::Dynalite;
    let prefix = common::fresh_prefix("sighting");
    let k = key("sighting");
    let ttl = Duration::from_millis(1500);
    let (alice_store, bob_store, hold) = runtime.block_on(async {
        let alice = store(
            server,
            &prefix,
            TakeoverMode::SkewFree,
            Skew::Ahead(Duration::ZERO),
        )
        .await;
        let hold = HoldFirstRead::default();
        let client = Client::from_conf(
            common::sdk_config_builder_on(server)
                .interceptor(hold.clone())
                .build(),
        );
        let bob = common::builder_on(server, &server.table(common::TABLE))
            .key_prefix(format!("{prefix}/"))
            .takeover(TakeoverMode::SkewFree)
            .build_with_client(client)
            .unwrap();
        (alice, bob, hold)
    });
    let alice = request(&k, ttl, "alice");
    runtime.block_on(acquired(&alice_store, &alice));
    let (sending, go) = hold.arm();
    // Bob's refused acquire reads the holder; meanwhile Alice renews.
    let renewer = std::thread::spawn({
        let alice_store = alice_store.clone();
        let k = k.clone();
        let alice = alice.clone();
        move || {
            sending
                .recv_timeout(Duration::from_secs(60))
                .expect("Bob's read started");
            // Let the gap between Bob's refusal and the renewal be wide.
            std::thread::sleep(Duration::from_millis(400));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let renew_sent = Instant::now();
            let outcome = rt.block_on(alice_store.renew(&k, alice.lease_id, alice.ttl));
            assert_eq!(outcome.unwrap(), RenewOutcome::Renewed);
            go.send(()).unwrap();
            renew_sent
        }
    });
    let b = request(&k, ttl, "bob");
    runtime.block_on(async {
        held(&bob_store, &b).await;
    });
    let renew_sent = renewer.join().unwrap();
    // Alice renews no more. Bob polls closely until he takes over.
    let taken_at = runtime.block_on(async {
        loop {
            match bob_store.try_acquire(&b).await.unwrap() {
                AcquireOutcome::Acquired { .. } => break Instant::now(),
                AcquireOutcome::Held(holder) => {
                    tokio::time::sleep(holder.expires_in().min(Duration::from_millis(20))).await;
                }
            }
        }
    });
    assert!(
        taken_at.duration_since(renew_sent) >= ttl,
        "taken over {:?} after Alice's renewal was sent, before her TTL of {ttl:?}",
        taken_at.duration_since(renew_sent)
    );
}
