//! Every metric documented in `lockstore::telemetry` moves when its event
//! happens, on the memory backend and on SQLite (a real file).
//!
//! One `metrics-util` debugging recorder is installed for the whole test
//! binary; each test labels its clients with a namespace of its own, so
//! tests running side by side never count each other's events. The
//! recorder's snapshots drain it, so every read folds the snapshot into
//! running totals under one lock (a gauge only ever moves by increments
//! here, so the sum of its drained values is its value).
//!
//! No assertion depends on speed: a test that needs a renewal or a loss to
//! happen waits for the counter to move, bounded by `HANG` only to turn a
//! hang into a failure.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use lockstore::ledger::{
    Begin, IdempotentConsumer, Ledger, LedgerStore, Message, Processed, RunFailure, RunOnce,
    RunOptions,
};
use lockstore::memory::MemoryStore;
use lockstore::semaphore::{PermitLimit, Semaphore, SemaphoreStore};
use lockstore::sqlite::SqliteStore;
use lockstore::{AcquireOptions, LockClient, LockError, LockStore};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Turns a hang into a failure; never a speed requirement.
const HANG: Duration = Duration::from_secs(30);
/// Short leases, so a loss by deadline or a takeover comes quickly.
const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(30);

/// (name, sorted labels) → the running total: a counter's count, a gauge's
/// value, a histogram's number of observations.
type Series = BTreeMap<(String, Vec<(String, String)>), f64>;

struct Totals {
    snapshotter: Snapshotter,
    series: Mutex<Series>,
}

fn totals() -> &'static Totals {
    static TOTALS: OnceLock<Totals> = OnceLock::new();
    TOTALS.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test binary");
        Totals {
            snapshotter,
            series: Mutex::new(Series::new()),
        }
    })
}

/// The total of `name` over the series carrying all of `labels`.
fn total(name: &str, labels: &[(&str, &str)]) -> f64 {
    let totals = totals();
    let mut series = totals.series.lock().unwrap();
    for (key, _, _, value) in totals.snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        let mut pairs: Vec<(String, String)> = key
            .labels()
            .map(|label| (label.key().to_owned(), label.value().to_owned()))
            .collect();
        pairs.sort();
        let add = match value {
            DebugValue::Counter(n) => n as f64,
            DebugValue::Gauge(value) => value.into_inner(),
            DebugValue::Histogram(values) => values.len() as f64,
        };
        *series.entry((key.name().to_owned(), pairs)).or_insert(0.0) += add;
    }
    series
        .iter()
        .filter(|((series_name, pairs), _)| {
            series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| pairs.iter().any(|(pk, pv)| pk == k && pv == v))
        })
        .map(|(_, value)| *value)
        .sum()
}

/// Waits until `name` with `labels` reaches `at_least`: for events that
/// happen on a background task.
async fn moves_to(name: &str, labels: &[(&str, &str)], at_least: f64) {
    let reached = tokio::time::timeout(HANG, async {
        while total(name, labels) < at_least {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "{name} {labels:?} stayed at {} (expected at least {at_least})",
        total(name, labels)
    );
}

/// A namespace label of this test's own; installs the recorder first, so
/// the test's first events are not recorded by no recorder.
fn namespace(test: &str, backend: &str) -> &'static str {
    totals();
    Box::leak(format!("{test}-{backend}").into_boxed_str())
}

/// A store of each kind for the cases below.
trait Backend: LockStore + LedgerStore + SemaphoreStore + Clone + Sized + 'static {
    const NAME: &'static str;
    /// The store shared by a test, made (or opened again) on the current runtime.
    fn open(test: &str) -> impl Future<Output = Self>;
}

impl Backend for MemoryStore {
    const NAME: &'static str = "memory";
    async fn open(test: &str) -> Self {
        static SHARED: OnceLock<MemoryStore> = OnceLock::new();
        SHARED.get_or_init(MemoryStore::new).namespace(test)
    }
}

fn sqlite_path(test: &str) -> String {
    let path: PathBuf = std::env::temp_dir().join(format!(
        "lockstore-metrics-{}-{test}.db",
        std::process::id()
    ));
    path.to_str()
        .expect("a UTF-8 temporary directory")
        .to_owned()
}

impl Backend for SqliteStore {
    const NAME: &'static str = "sqlite";
    async fn open(test: &str) -> Self {
        let store = SqliteStore::builder(sqlite_path(test))
            .build()
            .await
            .expect("open the SQLite file");
        store.ensure_schema().await.expect("create the tables");
        store
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Acquire: granted, refused, timed out — counted, timed, and a granted
/// one's wait observed; the lease counts as held until released.
async fn acquire_outcomes<B: Backend>() {
    let ns = namespace("acquire", B::NAME);
    let store = B::open(ns).await;
    let client = LockClient::new(store).with_metrics_namespace(ns);
    let labels = |outcome| {
        [
            ("namespace", ns),
            ("backend", B::NAME),
            ("outcome", outcome),
        ]
    };

    let guard = client
        .acquire("acquire/a", AcquireOptions::new(LONG))
        .await
        .unwrap();
    assert_eq!(total("lockstore_acquire_total", &labels("granted")), 1.0);
    assert_eq!(
        total("lockstore_acquire_duration_seconds", &labels("granted")),
        1.0
    );
    assert_eq!(
        total("lockstore_acquire_wait_seconds", &[("namespace", ns)]),
        1.0
    );
    assert_eq!(total("lockstore_leases_held", &[("namespace", ns)]), 1.0);

    let refused = client.acquire("acquire/a", AcquireOptions::new(LONG)).await;
    assert!(
        matches!(refused, Err(LockError::Timeout { .. })),
        "{refused:?}"
    );
    assert_eq!(total("lockstore_acquire_total", &labels("refused")), 1.0);
    assert_eq!(
        total("lockstore_acquire_duration_seconds", &labels("refused")),
        1.0
    );

    let timed_out = client
        .acquire(
            "acquire/a",
            AcquireOptions::new(LONG).wait_up_to(Duration::from_millis(20)),
        )
        .await;
    assert!(
        matches!(timed_out, Err(LockError::Timeout { .. })),
        "{timed_out:?}"
    );
    assert_eq!(total("lockstore_acquire_total", &labels("timed_out")), 1.0);
    // Waiting is observed for granted acquires only.
    assert_eq!(
        total("lockstore_acquire_wait_seconds", &[("namespace", ns)]),
        1.0
    );

    guard.release().await.unwrap();
    moves_to("lockstore_acquire_total", &labels("granted"), 1.0).await;
    assert_eq!(total("lockstore_leases_held", &[("namespace", ns)]), 0.0);
    assert_eq!(
        total("lockstore_leases_lost_total", &[("namespace", ns)]),
        0.0
    );
}

/// Semaphores: a permit granted, one refused (every permit taken), one
/// timed out, each counted and timed; a held permit counts as a held lease.
/// Elections: a won term and its resignation are counted.
async fn permits_and_leadership<B: Backend>() {
    let ns = namespace("permits", B::NAME);
    let store = B::open(ns).await;
    let semaphore = Semaphore::new(store.clone()).with_metrics_namespace(ns);
    let permits = |outcome| {
        [
            ("namespace", ns),
            ("backend", B::NAME),
            ("outcome", outcome),
        ]
    };
    let one = PermitLimit::new(1).unwrap();
    let permit = semaphore
        .acquire("permits/lane", one, AcquireOptions::new(LONG))
        .await
        .unwrap();
    assert_eq!(
        total("lockstore_permit_acquire_total", &permits("granted")),
        1.0
    );
    assert_eq!(
        total(
            "lockstore_permit_acquire_duration_seconds",
            &permits("granted")
        ),
        1.0
    );
    assert_eq!(total("lockstore_leases_held", &[("namespace", ns)]), 1.0);
    let refused = semaphore
        .acquire("permits/lane", one, AcquireOptions::new(LONG))
        .await;
    assert!(
        matches!(refused, Err(LockError::Timeout { .. })),
        "{refused:?}"
    );
    assert_eq!(
        total("lockstore_permit_acquire_total", &permits("refused")),
        1.0
    );
    let timed_out = semaphore
        .acquire(
            "permits/lane",
            one,
            AcquireOptions::new(LONG).wait_up_to(Duration::from_millis(20)),
        )
        .await;
    assert!(
        matches!(timed_out, Err(LockError::Timeout { .. })),
        "{timed_out:?}"
    );
    assert_eq!(
        total("lockstore_permit_acquire_total", &permits("timed_out")),
        1.0
    );
    permit.release().await.unwrap();
    assert_eq!(total("lockstore_leases_held", &[("namespace", ns)]), 0.0);
    // Locks are not counted as permits, nor permits as locks.
    assert_eq!(total("lockstore_acquire_total", &[("namespace", ns)]), 0.0);

    let client = LockClient::new(store).with_metrics_namespace(ns);
    let election = client.election("permits/leader", LONG).unwrap();
    let change = |change| [("namespace", ns), ("backend", B::NAME), ("change", change)];
    let term = election.campaign("a").await.unwrap();
    assert_eq!(
        total("lockstore_leadership_changes_total", &change("won")),
        1.0
    );
    term.resign().await.unwrap();
    assert_eq!(
        total("lockstore_leadership_changes_total", &change("resigned")),
        1.0
    );
    // The campaign's acquire is a lock acquire; its term a held lease.
    assert_eq!(
        total(
            "lockstore_acquire_total",
            &[("namespace", ns), ("outcome", "granted")]
        ),
        1.0
    );
    assert_eq!(total("lockstore_leases_held", &[("namespace", ns)]), 0.0);
}

/// Renewals counted as renewed, then a renewal refused (the lease was
/// released behind the guard's back) is a lease lost by `refused_renewal`.
async fn renewals_and_refused_renewal<B: Backend>() {
    let ns = namespace("renewal", B::NAME);
    let store = B::open(ns).await;
    let client = LockClient::new(store.clone()).with_metrics_namespace(ns);
    let guard = client
        .acquire("renewal/a", AcquireOptions::new(SHORT))
        .await
        .unwrap();
    moves_to(
        "lockstore_renewals_total",
        &[("namespace", ns), ("outcome", "renewed")],
        1.0,
    )
    .await;
    // Someone with the lease id ends the lease: the next renewal is refused.
    LockStore::release(&store, guard.key(), guard.lease_id())
        .await
        .unwrap();
    tokio::time::timeout(HANG, guard.lost()).await.unwrap();
    assert_eq!(
        total(
            "lockstore_renewals_total",
            &[("namespace", ns), ("outcome", "refused")]
        ),
        1.0
    );
    assert_eq!(
        total(
            "lockstore_leases_lost_total",
            &[("namespace", ns), ("cause", "refused_renewal")]
        ),
        1.0
    );
    drop(guard);
    moves_to("lockstore_leases_lost_total", &[("namespace", ns)], 1.0).await;
    // The guard's task ends after the drop.
    let ended = tokio::time::timeout(HANG, async {
        while total("lockstore_leases_held", &[("namespace", ns)]) != 0.0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "the lease still counts as held");
}

/// A holder paused past its deadline (the runtime's only thread blocked,
/// so nothing renews) loses its lease by `deadline`.
async fn loss_by_deadline<B: Backend>() {
    let ns = namespace("deadline", B::NAME);
    let store = B::open(ns).await;
    let client = LockClient::new(store).with_metrics_namespace(ns);
    let guard = client
        .acquire("deadline/a", AcquireOptions::new(SHORT))
        .await
        .unwrap();
    std::thread::sleep(SHORT * 2);
    assert!(guard.is_lost());
    moves_to(
        "lockstore_leases_lost_total",
        &[("namespace", ns), ("cause", "deadline")],
        1.0,
    )
    .await;
    assert_eq!(
        total("lockstore_leases_lost_total", &[("namespace", ns)]),
        1.0
    );
}

/// The ledger's transitions through this client, and a stale finisher.
async fn ledger_transitions_and_stale_finish<B: Backend>() {
    let ns = namespace("ledger", B::NAME);
    let store = B::open(ns).await;
    let ledger = Ledger::new(store).with_metrics_namespace(ns);
    let status = |status| {
        total(
            "lockstore_ledger_transitions_total",
            &[("namespace", ns), ("status", status)],
        )
    };
    let options = RunOptions::new(LONG).max_attempts(2);

    let ran = ledger
        .run_once("ledger/ok", options.clone(), |_| async {
            Ok::<_, RunFailure>(1)
        })
        .await
        .unwrap();
    assert!(matches!(ran, RunOnce::Ran { .. }));
    assert_eq!((status("running"), status("succeeded")), (1.0, 1.0));

    for expected in ["failed", "ignored"] {
        let outcome = ledger
            .run_once("ledger/fails", options.clone(), |_| async {
                Err::<u32, _>(RunFailure::retryable("down"))
            })
            .await
            .unwrap();
        assert!(matches!(outcome, RunOnce::Failed { .. }), "{outcome:?}");
        assert_eq!(status(expected), 1.0, "{expected}");
    }
    assert_eq!(status("running"), 3.0);

    ledger.enqueue("ledger/queued", None).await.unwrap();
    assert_eq!(status("pending"), 1.0);
    ledger.retry("ledger/fails").await.unwrap();
    assert_eq!(status("pending"), 2.0);

    // A run paused past its lease is taken over; its finish is refused.
    let short = RunOptions::new(SHORT);
    let Begin::Started(paused) = ledger.begin("ledger/stale", &short).await.unwrap() else {
        panic!("the first begin did not start");
    };
    std::thread::sleep(SHORT * 2);
    let Begin::Started(taker) = ledger.begin("ledger/stale", &short).await.unwrap() else {
        panic!("the expired run was not taken over");
    };
    assert_eq!(
        total(
            "lockstore_ledger_stale_finishes_total",
            &[("namespace", ns)]
        ),
        0.0
    );
    let stale = paused.succeed(None).await;
    assert!(
        matches!(stale, Err(LockError::LeaseLost { .. })),
        "{stale:?}"
    );
    assert_eq!(
        total(
            "lockstore_ledger_stale_finishes_total",
            &[("namespace", ns)]
        ),
        1.0
    );
    assert_eq!(
        status("succeeded"),
        1.0,
        "the stale finish counted as a transition"
    );
    taker.succeed(None).await.unwrap();
    assert_eq!(status("succeeded"), 2.0);
}

/// A plain `begin` (no waiting, nothing read first) that lands on a stuck
/// run counts one takeover, told by the backend's begin reply; a begin of a
/// new key counts none.
async fn plain_begin_counts_a_takeover<B: Backend>() {
    let ns = namespace("plain-takeover", B::NAME);
    let store = B::open(ns).await;
    let ledger = Ledger::new(store).with_metrics_namespace(ns);
    let takeovers = || total("lockstore_ledger_takeovers_total", &[("namespace", ns)]);
    let short = RunOptions::new(SHORT);
    let Begin::Started(paused) = ledger.begin("plain/stuck", &short).await.unwrap() else {
        panic!("the first begin did not start");
    };
    assert_eq!(takeovers(), 0.0, "a begin of a new key counted a takeover");
    // Blocks this (current-thread) runtime: the guard cannot renew, so the
    // run's lease expires and the run is stuck.
    std::thread::sleep(SHORT * 2);
    let Begin::Started(taker) = ledger.begin("plain/stuck", &short).await.unwrap() else {
        panic!("the expired run was not taken over");
    };
    assert_eq!(taker.attempt(), 2);
    assert_eq!(
        takeovers(),
        1.0,
        "a plain begin's takeover was not counted once"
    );
    drop(paused);
    taker.succeed(None).await.unwrap();
    assert_eq!(takeovers(), 1.0);
}

/// Every outcome the consumer reports for a message is counted.
async fn consumer_outcomes<B: Backend>() {
    let ns = namespace("consumer", B::NAME);
    let store = B::open(ns).await;
    let ledger = Ledger::new(store).with_metrics_namespace(ns);
    let consumer = IdempotentConsumer::new(ledger.clone(), LONG)
        .unwrap()
        .max_attempts(1)
        .unwrap();
    // A copy of `msg/busy` is running elsewhere.
    let Begin::Started(busy) = ledger
        .begin("msg/busy", &RunOptions::new(LONG))
        .await
        .unwrap()
    else {
        panic!("could not start the busy run");
    };
    let batch = |ids: &[&str]| {
        ids.iter()
            .map(|id| match *id {
                "bad-key" => Message::new(*id, id.to_string()).with_key(""),
                _ => Message::new(*id, id.to_string()),
            })
            .collect::<Vec<_>>()
    };
    let handler = |payload: String, _| async move {
        match payload.as_str() {
            "fails" => Err(RunFailure::retryable("down")),
            _ => Ok(payload),
        }
    };
    let first = consumer
        .process(batch(&["ok", "ok", "busy", "bad-key", "fails"]), handler)
        .await
        .unwrap();
    assert!(matches!(first.items[2].1, Processed::InProgress(_)));
    // One attempt: the failure is final.
    assert!(matches!(first.items[4].1, Processed::GaveUp(_)));
    consumer.process(batch(&["fails"]), handler).await.unwrap();
    let outcome = |outcome| {
        total(
            "lockstore_consumer_messages_total",
            &[
                ("namespace", ns),
                ("backend", B::NAME),
                ("outcome", outcome),
            ],
        )
    };
    for (name, count) in [
        ("ran", 1.0),
        ("replayed", 1.0),
        ("in_progress", 1.0),
        ("rejected", 1.0),
        ("gave_up", 1.0),
        ("ignored", 1.0),
    ] {
        assert_eq!(outcome(name), count, "{name}");
    }
    busy.succeed(None).await.unwrap();
    // A retryable failure with attempts left is `failed`.
    let retrying = IdempotentConsumer::new(ledger, LONG).unwrap();
    retrying
        .process(batch(&["fails-again"]), |_: String, _| async {
            Err::<String, _>(RunFailure::retryable("down"))
        })
        .await
        .unwrap();
    assert_eq!(outcome("failed"), 1.0);
}

/// A guard whose runtime shut down lost its lease by `task_death`; a run
/// it held is stuck, and a `run_once` that waited for it and took it over
/// counts a takeover.
fn task_death_and_takeover<B: Backend>() {
    let ns = namespace("takeover", B::NAME);
    let dying = runtime();
    let guard = dying.block_on(async {
        let ledger = Ledger::new(B::open(ns).await).with_metrics_namespace(ns);
        match ledger
            .begin("takeover/a", &RunOptions::new(SHORT))
            .await
            .unwrap()
        {
            Begin::Started(guard) => guard,
            other => panic!("{other:?}"),
        }
    });
    assert_eq!(total("lockstore_leases_held", &[("namespace", ns)]), 1.0);
    drop(dying);
    assert_eq!(
        total(
            "lockstore_leases_lost_total",
            &[("namespace", ns), ("cause", "task_death")]
        ),
        1.0
    );
    assert_eq!(total("lockstore_leases_held", &[("namespace", ns)]), 0.0);

    runtime().block_on(async {
        let ledger = Ledger::new(B::open(ns).await).with_metrics_namespace(ns);
        let options = RunOptions::new(LONG).wait_for_running(HANG);
        let outcome = ledger
            .run_once("takeover/a", options, |_| async { Ok::<_, RunFailure>(()) })
            .await
            .unwrap();
        assert!(
            matches!(outcome, RunOnce::Ran { attempt: 2, .. }),
            "{outcome:?}"
        );
    });
    assert_eq!(
        total("lockstore_ledger_takeovers_total", &[("namespace", ns)]),
        1.0
    );
    drop(guard);
}

macro_rules! on_backends {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $case() {
                    super::$case::<lockstore::memory::MemoryStore>().await;
                }
            )*
            #[test]
            fn task_death_and_takeover() {
                super::task_death_and_takeover::<lockstore::memory::MemoryStore>();
            }
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $case() {
                    super::$case::<lockstore::sqlite::SqliteStore>().await;
                }
            )*
            #[test]
            fn task_death_and_takeover() {
                super::task_death_and_takeover::<lockstore::sqlite::SqliteStore>();
            }
        }
    };
}

on_backends!(
    acquire_outcomes,
    permits_and_leadership,
    renewals_and_refused_renewal,
    loss_by_deadline,
    ledger_transitions_and_stale_finish,
    plain_begin_counts_a_takeover,
    consumer_outcomes,
);

/// Errors: an acquire, a renewal and a consumer's batch on a SQLite file
/// whose tables were never created (memory has no failures to show).
#[tokio::test(flavor = "current_thread")]
async fn sqlite_errors_are_counted() {
    let ns = namespace("errors", "sqlite");
    let path = sqlite_path(ns);
    let store = SqliteStore::builder(path).build().await.unwrap();
    let client = LockClient::new(store.clone()).with_metrics_namespace(ns);
    let acquired = client.acquire("errors/a", AcquireOptions::new(LONG)).await;
    assert!(acquired.is_err(), "{acquired:?}");
    assert_eq!(
        total(
            "lockstore_acquire_total",
            &[("namespace", ns), ("outcome", "error")]
        ),
        1.0
    );
    // A bare lease's renewal: the lease of another store, on this table-less one.
    let lease = LockClient::new(MemoryStore::new())
        .acquire_lease("errors/a", AcquireOptions::new(LONG))
        .await
        .unwrap();
    let renewed = client.renew(&lease).await;
    assert!(renewed.is_err(), "{renewed:?}");
    assert_eq!(
        total(
            "lockstore_renewals_total",
            &[("namespace", ns), ("outcome", "error")]
        ),
        1.0
    );
    let consumer =
        IdempotentConsumer::new(Ledger::new(store).with_metrics_namespace(ns), LONG).unwrap();
    let batch = consumer
        .process(vec![Message::new("m", ())], |(), _| async {
            Ok::<_, RunFailure>(())
        })
        .await;
    assert!(batch.is_err(), "a missing table should fail the batch");
    assert_eq!(
        total(
            "lockstore_consumer_messages_total",
            &[("namespace", ns), ("outcome", "batch_failed")]
        ),
        1.0
    );
}
