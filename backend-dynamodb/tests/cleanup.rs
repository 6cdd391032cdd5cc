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
//!   read it, so a renewal landing during its read is waited out in full;
//! * a finished run record is never deleted unless a retention was opted
//!   into, whatever the finisher's clock (review C1);
//! * a run's fence rises after its record was purged or deleted by TTL,
//!   even when the record's creator had a clock a month ahead (review M3).

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
use lockstore_api::ledger::{
    BeginOutcome, BeginRequest, Finish, FinishOutcome, FinishRequest, LedgerStore, RunError,
    RunQuery, RunStatus, StatusFilter,
};
use lockstore_api::{
    AcquireOutcome, FencingToken, LeaseId, LockKey, LockStore, OwnerLabel, ReleaseOutcome,
    RenewOutcome, Ttl,
};
use lockstore_dynamodb::DEFAULT_CLEANUP_AFTER;
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
    item_at(server, store.item_key(k)).await
}

/// The item whose partition-key value is `pk`.
async fn item_at(server: Server, pk: String) -> Option<HashMap<String, AttributeValue>> {
    raw(server)
        .get_item()
        .table_name(server.table(common::TABLE))
        .key("lock_key", AttributeValue::S(pk))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

/// The partition-key value of `k`'s run record.
fn run_pk(store: &DynamoDbStore, k: &LockKey) -> String {
    format!("{}\0run", store.item_key(k))
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
    ttl_pass_at(server, store.item_key(k), service_time).await
}

/// [`ttl_pass`] on the item whose partition-key value is `pk`.
async fn ttl_pass_at(server: Server, pk: String, service_time: u64) -> bool {
    let Some(found) = item_at(server, pk.clone()).await else {
        return false;
    };
    match cleanup_at(&found) {
        Some(at) if at <= service_time => {
            raw(server)
                .delete_item()
                .table_name(server.table(common::TABLE))
                .key("lock_key", AttributeValue::S(pk))
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

/// A wall-clock store on `server`'s shared table under `prefix`, with this
/// clock and, if given, a ledger retention.
async fn ledger_store(
    server: Server,
    prefix: &str,
    clock: Skew,
    retention: Option<Duration>,
) -> DynamoDbStore {
    common::ensure_table_on(server).await;
    let mut builder = common::builder_on(server, &server.table(common::TABLE))
        .key_prefix(format!("{prefix}/"))
        .wall_clock(clock);
    if let Some(retention) = retention {
        builder = builder.ledger_retention(retention);
    }
    builder.build().await.unwrap()
}

fn begin_request(k: &LockKey, owner: &str) -> BeginRequest {
    BeginRequest {
        key: k.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(LONG).unwrap(),
        owner: OwnerLabel::new(owner).unwrap(),
        max_attempts: 3,
        request_hash: None,
    }
}

/// Begins `request` on `store`; panics unless it starts.
async fn started(store: &DynamoDbStore, request: &BeginRequest) -> FencingToken {
    match store.begin(request).await.unwrap() {
        BeginOutcome::Started { fence, .. } => fence,
        other => panic!("{} did not start: {other:?}", request.key),
    }
}

/// Finishes `request`'s run on `store`; panics unless it is accepted.
async fn finished(store: &DynamoDbStore, request: &BeginRequest, finish: Finish) -> RunStatus {
    let outcome = store
        .finish(&FinishRequest {
            key: request.key.clone(),
            lease_id: request.lease_id,
            finish,
        })
        .await
        .unwrap();
    match outcome {
        FinishOutcome::Finished(status) => status,
        FinishOutcome::NotHeld => panic!("{}: the finish was refused", request.key),
    }
}

fn fatal() -> Finish {
    Finish::Failed {
        error: RunError::new(1, "poison message", false),
    }
}

/// Review C1: without a retention, DynamoDB TTL never deletes a finished
/// run record, so its key is never run again: not after `cleanup_after`
/// (the lock items' delay), and not at once when the finisher's clock is
/// eight days behind (which would date any cleanup time in the past).
async fn finished_runs_are_never_deleted_by_ttl_without_a_retention(server: Server) {
    let prefix = common::fresh_prefix("c1");
    let accurate = ledger_store(server, &prefix, Skew::Ahead(Duration::ZERO), None).await;
    let lagging = ledger_store(server, &prefix, Skew::Behind(8 * DAY), None).await;
    let later = epoch_secs_now() + DEFAULT_CLEANUP_AFTER.as_secs() + 1;
    for (name, finisher) in [("accurate", &accurate), ("lagging", &lagging)] {
        for (suffix, finish, status) in [
            (
                "ok",
                Finish::Succeeded { result: None },
                RunStatus::Succeeded,
            ),
            ("poison", fatal(), RunStatus::Ignored),
        ] {
            let k = key(&format!("{name}-{suffix}"));
            let request = begin_request(&k, name);
            started(finisher, &request).await;
            assert_eq!(finished(finisher, &request, finish).await, status);
            for service_time in [epoch_secs_now(), later] {
                assert!(
                    !ttl_pass_at(server, run_pk(&accurate, &k), service_time).await,
                    "DynamoDB TTL deleted a {status} record ({name} finisher) at {service_time}"
                );
            }
            match accurate
                .begin(&begin_request(&k, "backfill"))
                .await
                .unwrap()
            {
                BeginOutcome::Existing(record) => assert_eq!(record.status, status),
                other => panic!("{k} ({name} finisher) was begun again: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_finished_runs_are_never_deleted_by_ttl_without_a_retention() {
    finished_runs_are_never_deleted_by_ttl_without_a_retention(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_finished_runs_are_never_deleted_by_ttl_without_a_retention() {
    finished_runs_are_never_deleted_by_ttl_without_a_retention(Server::Dynalite).await;
}

/// Review M3, the twin of
/// [`fence_rises_after_ttl_deletion_when_the_creator_was_ahead`] for run
/// records: a creator a month ahead begins the key (its fence starts a
/// month in the future) and fails; an accurate worker begins and succeeds
/// under a retention; DynamoDB TTL deletes the record at the earliest
/// moment it may; an accurate client at that moment begins the key again.
/// Its fence must be above every earlier one.
async fn run_fence_rises_after_ttl_deletion_when_the_creator_was_ahead(server: Server) {
    let prefix = common::fresh_prefix("m3-ttl");
    let k = key("m3-ttl");
    let retention = Some(2 * DAY);
    let creator = ledger_store(server, &prefix, Skew::Ahead(30 * DAY), retention).await;
    let accurate = ledger_store(server, &prefix, Skew::Ahead(Duration::ZERO), retention).await;
    let first = begin_request(&k, "creator");
    let mut last = started(&creator, &first).await;
    let flaky = Finish::Failed {
        error: RunError::new(1, "flaky", true),
    };
    assert_eq!(finished(&creator, &first, flaky).await, RunStatus::Failed);
    let second = begin_request(&k, "accurate");
    let fence = started(&accurate, &second).await;
    assert!(fence > last, "{fence} after {last}");
    last = fence;
    let ok = Finish::Succeeded { result: None };
    assert_eq!(finished(&accurate, &second, ok).await, RunStatus::Succeeded);
    let left = item_at(server, run_pk(&accurate, &k))
        .await
        .expect("the record");
    let Some(deletable_at) = cleanup_at(&left) else {
        panic!("a record finished under a retention has no cleanup time: {left:?}")
    };
    assert!(
        ttl_pass_at(server, run_pk(&accurate, &k), deletable_at).await,
        "the record was not deleted at its own cleanup time"
    );
    let then = Skew::Ahead(Duration::from_secs(
        deletable_at.saturating_sub(epoch_secs_now()),
    ));
    let recreator = ledger_store(server, &prefix, then, retention).await;
    let fence = started(&recreator, &begin_request(&k, "recreator")).await;
    assert!(
        fence > last,
        "run fence went back after TTL deletion: {fence} after {last} (cleanup time {deletable_at})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_run_fence_rises_after_ttl_deletion_when_the_creator_was_ahead() {
    run_fence_rises_after_ttl_deletion_when_the_creator_was_ahead(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_run_fence_rises_after_ttl_deletion_when_the_creator_was_ahead() {
    run_fence_rises_after_ttl_deletion_when_the_creator_was_ahead(Server::Dynalite).await;
}

/// Review M3 through `purge(ZERO)`: the same creator a month ahead, an
/// accurate worker succeeds, the record is purged at once, and an accurate
/// client begins the key again at once. Its fence must be above every
/// earlier one: the purge leaves a fence-only tombstone, which no read,
/// query or index shows, and which TTL deletes only after `cleanup_after`
/// from its fence.
async fn run_fence_rises_after_purge_when_the_creator_was_ahead(server: Server) {
    let prefix = common::fresh_prefix("m3-purge");
    let k = key("m3-purge");
    let creator = ledger_store(server, &prefix, Skew::Ahead(30 * DAY), None).await;
    let accurate = ledger_store(server, &prefix, Skew::Ahead(Duration::ZERO), None).await;
    let first = begin_request(&k, "creator");
    started(&creator, &first).await;
    let flaky = Finish::Failed {
        error: RunError::new(1, "flaky", true),
    };
    assert_eq!(finished(&creator, &first, flaky).await, RunStatus::Failed);
    let second = begin_request(&k, "accurate");
    let last = started(&accurate, &second).await;
    let ok = Finish::Succeeded { result: None };
    assert_eq!(finished(&accurate, &second, ok).await, RunStatus::Succeeded);
    assert_eq!(accurate.purge(Duration::ZERO).await.unwrap(), 1);
    // What purge left, checked after the fence (the point of the test).
    let tombstone = item_at(server, run_pk(&accurate, &k)).await;
    assert_eq!(accurate.get(&k).await.unwrap(), None);
    let page = accurate
        .query(&RunQuery::new(StatusFilter::All))
        .await
        .unwrap();
    assert!(page.records.is_empty(), "{:?}", page.records);
    assert_eq!(accurate.purge(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(
        accurate.retry(&k).await.unwrap(),
        lockstore_api::ledger::RetryOutcome::NotFound
    );

    match accurate.begin(&begin_request(&k, "again")).await.unwrap() {
        BeginOutcome::Started {
            fence,
            attempt,
            took_over,
        } => {
            assert_eq!(attempt, 1, "a purged key starts afresh");
            assert!(!took_over, "a start after a purge took over nothing");
            assert!(
                fence > last,
                "run fence went back after purge: {fence} after {last}"
            );
        }
        other => panic!("a purged key did not start: {other:?}"),
    }
    let tombstone = tombstone.expect("purge leaves a tombstone");
    assert!(
        !tombstone
            .keys()
            .any(|a| a.starts_with("exec_") || a.starts_with("lease_")),
        "the tombstone keeps run attributes (the sparse index would list it): {tombstone:?}"
    );
    assert_eq!(
        tombstone.get("fence"),
        Some(&AttributeValue::N(last.get().to_string())),
        "{tombstone:?}"
    );
    let deletable_at = cleanup_at(&tombstone).expect("the tombstone is left to DynamoDB TTL");
    assert!(
        deletable_at >= last.get() / 1_000_000 + DEFAULT_CLEANUP_AFTER.as_secs(),
        "the tombstone's cleanup time {deletable_at} is not dated from its fence {last}"
    );
    let record = accurate.get(&k).await.unwrap().expect("the new record");
    assert_eq!((record.status, record.attempts), (RunStatus::Running, 1));
    let running = item_at(server, run_pk(&accurate, &k)).await.unwrap();
    assert_eq!(cleanup_at(&running), None, "{running:?}");

    // Enqueue treats a tombstone as no record too.
    let queued = key("m3-purge-queued");
    let run = begin_request(&queued, "accurate");
    let fence = started(&accurate, &run).await;
    finished(&accurate, &run, Finish::Succeeded { result: None }).await;
    assert_eq!(accurate.purge(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(
        accurate.enqueue(&queued, None).await.unwrap(),
        lockstore_api::ledger::EnqueueOutcome::Created
    );
    let pending = item_at(server, run_pk(&accurate, &queued)).await.unwrap();
    assert_eq!(cleanup_at(&pending), None, "{pending:?}");
    let again = started(&accurate, &begin_request(&queued, "accurate")).await;
    assert!(again > fence, "{again} after {fence}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_run_fence_rises_after_purge_when_the_creator_was_ahead() {
    run_fence_rises_after_purge_when_the_creator_was_ahead(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_run_fence_rises_after_purge_when_the_creator_was_ahead() {
    run_fence_rises_after_purge_when_the_creator_was_ahead(Server::Dynalite).await;
}
