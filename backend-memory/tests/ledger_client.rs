//! The ledger's client layer (`Ledger`, `run_once`, `IdempotentConsumer`) on
//! the memory store and a paused tokio clock, with a wrapper that makes the
//! store fail or stop answering the way a backend or a network can.
//!
//! The paused clock makes every wait instant; [`HANG`] only tells a call
//! that never returns from one that does.

use std::collections::HashSet;
use std::future::pending;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lockstore_api::ledger::{
    BeginOutcome, BeginRequest, EnqueueOutcome, FinishOutcome, FinishRequest, IdempotentConsumer,
    Ledger, LedgerStore, Message, Processed, RequestHash, RetryOutcome, RunFailure, RunOnce,
    RunOptions, RunPage, RunQuery, RunRecord, RunStatus,
};
use lockstore_api::{
    LeaseId, LockError, LockKey, OwnerLabel, ReleaseSignal, RenewOutcome, Ttl, UnexpectedReply,
};
use lockstore_memory::MemoryStore;
use tokio::time::timeout;

/// Far beyond every bound under test: reaching it means a call hung.
const HANG: Duration = Duration::from_secs(24 * 3600);

/// The memory store with faults switched on per test.
#[derive(Debug, Default)]
struct Faulty {
    inner: MemoryStore,
    /// `begin` is applied, then answers with a retryable error, this many
    /// times (a reply lost on the way back).
    lost_begin_replies: AtomicU32,
    /// `begin` answers with a configuration error, as a missing table does.
    begin_config_error: AtomicBool,
    /// `begin` answers with a permanent backend error (permission denied).
    begin_permanent_error: AtomicBool,
    /// Calls that never answer: "begin", "get", "finish".
    hangs: Mutex<HashSet<&'static str>>,
    begins: AtomicU32,
}

impl Faulty {
    fn hang(&self, call: &'static str) {
        self.hangs.lock().unwrap().insert(call);
    }

    async fn maybe_hang(&self, call: &'static str) {
        if self.hangs.lock().unwrap().contains(call) {
            pending::<()>().await;
        }
    }
}

#[async_trait]
impl LedgerStore for Faulty {
    fn backend_name(&self) -> &'static str {
        "faulty-memory"
    }

    async fn begin(&self, request: &BeginRequest) -> Result<BeginOutcome, LockError> {
        self.begins.fetch_add(1, Ordering::SeqCst);
        self.maybe_hang("begin").await;
        if self.begin_config_error.load(Ordering::SeqCst) {
            return Err(LockError::config("x", "missing table"));
        }
        if self.begin_permanent_error.load(Ordering::SeqCst) {
            return Err(LockError::permanent(
                "x",
                "starting a run",
                UnexpectedReply("42501 permission denied".into()),
            ));
        }
        let outcome = self.inner.begin(request).await?;
        let lost = self
            .lost_begin_replies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            return Err(LockError::retryable(
                "x",
                "starting a run",
                UnexpectedReply("connection reset before the reply".into()),
            ));
        }
        Ok(outcome)
    }

    async fn renew_run(
        &self,
        key: &LockKey,
        lease_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        self.inner.renew_run(key, lease_id, ttl).await
    }

    async fn finish(&self, request: &FinishRequest) -> Result<FinishOutcome, LockError> {
        self.maybe_hang("finish").await;
        self.inner.finish(request).await
    }

    async fn get(&self, key: &LockKey) -> Result<Option<RunRecord>, LockError> {
        self.maybe_hang("get").await;
        self.inner.get(key).await
    }

    async fn enqueue(
        &self,
        key: &LockKey,
        request_hash: Option<&RequestHash>,
    ) -> Result<EnqueueOutcome, LockError> {
        self.inner.enqueue(key, request_hash).await
    }

    async fn retry(&self, key: &LockKey) -> Result<RetryOutcome, LockError> {
        self.inner.retry(key).await
    }

    async fn query(&self, query: &RunQuery) -> Result<RunPage, LockError> {
        self.inner.query(query).await
    }

    async fn purge(&self, older_than: Duration) -> Result<u64, LockError> {
        self.inner.purge(older_than).await
    }

    fn finish_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        self.inner.finish_signal(key)
    }
}

fn key(name: &str) -> LockKey {
    LockKey::new(name).unwrap()
}

/// A run begun straight on the store by a worker that then crashed: nobody
/// renews or finishes it.
async fn crashed_run(store: &dyn LedgerStore, name: &str, ttl: Duration, max_attempts: u32) {
    let request = BeginRequest {
        key: key(name),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(ttl).unwrap(),
        owner: OwnerLabel::new("crashed").unwrap(),
        max_attempts,
        request_hash: None,
    };
    let outcome = store.begin(&request).await.unwrap();
    assert!(
        matches!(outcome, BeginOutcome::Started { attempt: 1, .. }),
        "{outcome:?}"
    );
}

fn three_messages() -> Vec<Message<u32>> {
    (1..=3).map(|n| Message::new(format!("m-{n}"), n)).collect()
}

// ------------------------------------------------------------ C2: consumer

/// A store that cannot be used at all (a missing table, a denied
/// permission) fails the batch: nothing is acknowledged, nothing runs.
#[tokio::test(start_paused = true)]
async fn consumer_fails_the_batch_on_a_configuration_or_permanent_error() {
    for permanent in [false, true] {
        let store = Faulty::default();
        if permanent {
            store.begin_permanent_error.store(true, Ordering::SeqCst);
        } else {
            store.begin_config_error.store(true, Ordering::SeqCst);
        }
        let consumer =
            IdempotentConsumer::new(Ledger::new(store), Duration::from_secs(30)).unwrap();
        let ran = AtomicU32::new(0);
        let outcome = consumer
            .process(three_messages(), |n, _| {
                ran.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<u32, RunFailure>(n) }
            })
            .await;
        match outcome {
            Err(LockError::Config { .. }) if !permanent => {}
            Err(LockError::Backend {
                retryable: false, ..
            }) if permanent => {}
            Ok(report) => panic!(
                "the batch was answered; to be redelivered: {:?} of {:?}",
                report.batch_item_failures(),
                report.items
            ),
            Err(other) => panic!("unexpected error: {other}"),
        }
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}

/// A store that fails retryably (and keeps failing past the retries) has
/// every message reported for redelivery.
#[tokio::test(start_paused = true)]
async fn consumer_redelivers_every_message_the_store_could_not_answer_for() {
    let store = Faulty::default();
    store.lost_begin_replies.store(u32::MAX, Ordering::SeqCst);
    let consumer = IdempotentConsumer::new(Ledger::new(store), Duration::from_secs(30)).unwrap();
    let report = consumer
        .process(
            three_messages(),
            |n, _| async move { Ok::<u32, RunFailure>(n) },
        )
        .await
        .unwrap();
    assert_eq!(
        report.batch_item_failures(),
        vec!["m-1", "m-2", "m-3"],
        "{report:?}"
    );
    assert!(
        report
            .items
            .iter()
            .all(|(_, p)| matches!(p, Processed::Error(e) if e.is_retryable()))
    );
}

/// Options are checked once, when the consumer is built, with typed errors.
#[tokio::test(start_paused = true)]
async fn consumer_options_are_checked_when_it_is_built() {
    let ledger = || Ledger::new(MemoryStore::new());
    let two_days = IdempotentConsumer::new(ledger(), Duration::from_secs(172_800)).unwrap_err();
    assert!(
        matches!(two_days, LockError::InvalidTtl { .. }),
        "{two_days}"
    );
    let too_short = IdempotentConsumer::new(ledger(), Duration::from_millis(2)).unwrap_err();
    assert!(
        matches!(too_short, LockError::InvalidTtl { .. }),
        "{too_short}"
    );
    let consumer = IdempotentConsumer::new(ledger(), Duration::from_secs(30)).unwrap();
    for attempts in [0, 1001] {
        let err = consumer.clone().max_attempts(attempts).unwrap_err();
        assert!(
            matches!(
                err,
                LockError::InvalidArgument {
                    name: "max_attempts",
                    ..
                }
            ),
            "{err}"
        );
    }
    assert!(consumer.max_attempts(1000).is_ok());
}

/// A message's own bad input is rejected (not redelivered), and only it.
#[tokio::test(start_paused = true)]
async fn consumer_rejects_only_a_message_with_bad_input() {
    let consumer =
        IdempotentConsumer::new(Ledger::new(MemoryStore::new()), Duration::from_secs(30)).unwrap();
    let batch = vec![
        Message::new("m-1", 1u32),
        Message::new("m-2", 2u32).with_key(""),
        Message::new("m-3", 3u32),
    ];
    let report = consumer
        .process(batch, |n, _| async move { Ok::<u32, RunFailure>(n) })
        .await
        .unwrap();
    assert!(matches!(report.items[0].1, Processed::Ran(1)), "{report:?}");
    assert!(
        matches!(
            report.items[1].1,
            Processed::Rejected(LockError::InvalidKey { .. })
        ),
        "{report:?}"
    );
    assert!(matches!(report.items[2].1, Processed::Ran(3)), "{report:?}");
    assert!(report.batch_item_failures().is_empty());
}

// ------------------------------------------------------------ m7: panics

/// A handler that panics fails its own message, recorded as a retryable
/// failure; the other messages run, and a redelivery runs it again.
#[tokio::test(start_paused = true)]
async fn a_panicking_handler_fails_only_its_own_message() {
    let ledger = Ledger::new(MemoryStore::new());
    let consumer = IdempotentConsumer::new(ledger.clone(), Duration::from_secs(30)).unwrap();
    let report = consumer
        .process(three_messages(), |n, _| async move {
            if n == 2 {
                panic!("bug on message {n}");
            }
            Ok::<u32, RunFailure>(n * 10)
        })
        .await
        .unwrap();
    assert!(
        matches!(report.items[0].1, Processed::Ran(10)),
        "{report:?}"
    );
    assert!(
        matches!(&report.items[1].1, Processed::Failed(f) if f.is_retryable() && f.message().contains("bug on message 2")),
        "{report:?}"
    );
    assert!(
        matches!(report.items[2].1, Processed::Ran(30)),
        "{report:?}"
    );
    assert_eq!(report.batch_item_failures(), vec!["m-2"]);

    let record = ledger.get("msg/m-2").await.unwrap().expect("a record");
    assert_eq!(record.status, RunStatus::Failed);
    let error = record.last_error().expect("the panic is recorded");
    assert!(
        error.retryable && error.message.contains("panicked"),
        "{error:?}"
    );

    let again = consumer
        .process(vec![Message::new("m-2", 2u32)], |n, _| async move {
            Ok::<u32, RunFailure>(n * 10)
        })
        .await
        .unwrap();
    assert!(matches!(again.items[0].1, Processed::Ran(20)), "{again:?}");
}

// ------------------------------------------------------------ M1: stuck runs

/// A caller waiting for a run elsewhere takes over a run whose worker
/// crashed once its lease expires, instead of waiting out its whole wait;
/// with no attempts left it is told the key is given up.
#[tokio::test(start_paused = true)]
async fn waiting_for_a_crashed_run_takes_it_over() {
    let ledger = Ledger::new(MemoryStore::new());
    crashed_run(&**ledger.store(), "crashed", Duration::from_secs(1), 3).await;
    let options =
        RunOptions::new(Duration::from_secs(10)).wait_for_running(Duration::from_secs(600));
    let outcome = timeout(
        HANG,
        ledger.run_once("crashed", options.clone(), |_| async {
            Ok::<u32, RunFailure>(7)
        }),
    )
    .await
    .expect("run_once hung")
    .unwrap();
    assert!(
        matches!(
            outcome,
            RunOnce::Ran {
                value: 7,
                attempt: 2,
                ..
            }
        ),
        "{outcome:?}"
    );

    crashed_run(&**ledger.store(), "last-attempt", Duration::from_secs(1), 1).await;
    let outcome = ledger
        .run_once("last-attempt", options.max_attempts(1), |_| async {
            Ok::<u32, RunFailure>(7)
        })
        .await
        .unwrap();
    let RunOnce::Ignored { record } = outcome else {
        panic!("a stuck run without attempts left was not reported given up: {outcome:?}");
    };
    assert!(record.is_stuck(), "{record:?}");

    // `wait` itself returns once the run is stuck.
    crashed_run(&**ledger.store(), "waited", Duration::from_secs(1), 3).await;
    let record = ledger
        .wait("waited", Duration::from_secs(600))
        .await
        .unwrap();
    assert!(record.is_stuck(), "{record:?}");

    // And so does the consumer waiting for a duplicate.
    crashed_run(&**ledger.store(), "msg/m-1", Duration::from_secs(1), 3).await;
    let consumer = IdempotentConsumer::new(ledger, Duration::from_secs(10))
        .unwrap()
        .wait_for_duplicates(Duration::from_secs(600));
    let report = consumer
        .process(vec![Message::new("m-1", 1u32)], |n, _| async move {
            Ok::<u32, RunFailure>(n)
        })
        .await
        .unwrap();
    assert!(matches!(report.items[0].1, Processed::Ran(1)), "{report:?}");
}

// ------------------------------------------------------------ M2: lost replies

/// A begin applied by the store whose reply is lost (twice) is retried
/// with the same lease id and finds its own run: the work runs as attempt
/// 1, even with a single attempt allowed.
#[tokio::test(start_paused = true)]
async fn a_lost_begin_reply_costs_no_attempt() {
    let store = Faulty::default();
    store.lost_begin_replies.store(2, Ordering::SeqCst);
    let ledger = Ledger::new(store);
    let options = RunOptions::new(Duration::from_secs(10)).max_attempts(1);
    let outcome = ledger
        .run_once("lossy", options.clone(), |_| async {
            Ok::<u32, RunFailure>(5)
        })
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            RunOnce::Ran {
                value: 5,
                attempt: 1,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(ledger.store().begins.load(Ordering::SeqCst), 3);
    let record = ledger.get("lossy").await.unwrap().unwrap();
    assert_eq!((record.status, record.attempts), (RunStatus::Succeeded, 1));

    // Past the TTL, the key is done, not given up.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let again = ledger
        .run_once("lossy", options.clone(), |_| async {
            Ok::<u32, RunFailure>(6)
        })
        .await
        .unwrap();
    assert!(
        matches!(again, RunOnce::AlreadySucceeded { value: 5, .. }),
        "{again:?}"
    );

    // A caller that waits for nothing still has its lost replies retried.
    ledger.store().lost_begin_replies.store(2, Ordering::SeqCst);
    let outcome = ledger
        .run_once(
            "lossy-no-wait",
            options.wait_for_running(Duration::ZERO),
            |_| async { Ok::<u32, RunFailure>(8) },
        )
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            RunOnce::Ran {
                value: 8,
                attempt: 1,
                ..
            }
        ),
        "{outcome:?}"
    );
}

/// Retries of a begin are bounded: a store whose replies are always lost
/// makes the call fail with the retryable error after about one TTL.
#[tokio::test(start_paused = true)]
async fn begin_retries_end_with_the_last_error() {
    let store = Faulty::default();
    store.lost_begin_replies.store(u32::MAX, Ordering::SeqCst);
    let ledger = Ledger::new(store);
    let err = timeout(
        HANG,
        ledger.run_once(
            "lossy",
            RunOptions::new(Duration::from_secs(10)),
            |_| async { Ok::<u32, RunFailure>(5) },
        ),
    )
    .await
    .expect("begin retried without a bound")
    .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(ledger.store().begins.load(Ordering::SeqCst) > 2);
}

// ------------------------------------------------------------ m8: hangs

fn assert_no_answer(err: &LockError) {
    assert!(
        matches!(err, LockError::Backend { retryable: true, message, .. } if message.contains("no answer")),
        "expected a retryable no-answer error, got {err}"
    );
}

/// A store that stops answering (a PostgreSQL row lock held by an open
/// transaction, a silent network) makes each call fail with a typed,
/// retryable error within its bound, instead of hanging.
#[tokio::test(start_paused = true)]
async fn calls_to_a_store_that_stops_answering_end_with_an_error() {
    let short = RunOptions::new(Duration::from_secs(10));

    // begin, plain and while waiting
    let ledger = Ledger::new(Faulty::default());
    ledger.store().hang("begin");
    for options in [
        short.clone(),
        short.clone().wait_for_running(Duration::from_secs(3)),
    ] {
        let err = timeout(
            HANG,
            ledger.run_once("k", options, |_| async { Ok::<u32, RunFailure>(1) }),
        )
        .await
        .expect("run_once hung on a begin")
        .unwrap_err();
        assert_no_answer(&err);
    }
    let err = timeout(HANG, ledger.begin("k", &short))
        .await
        .expect("begin hung")
        .unwrap_err();
    assert_no_answer(&err);

    // get, while waiting for a run elsewhere
    let ledger = Ledger::new(Faulty::default());
    crashed_run(&**ledger.store(), "busy", Duration::from_secs(3600), 3).await;
    ledger.store().hang("get");
    let err = timeout(HANG, ledger.wait("busy", Duration::from_secs(5)))
        .await
        .expect("wait hung")
        .unwrap_err();
    assert_no_answer(&err);
    let err = timeout(
        HANG,
        ledger.run_once(
            "busy",
            short.clone().wait_for_running(Duration::from_secs(5)),
            |_| async { Ok::<u32, RunFailure>(1) },
        ),
    )
    .await
    .expect("run_once hung waiting")
    .unwrap_err();
    assert_no_answer(&err);

    // finish
    let ledger = Ledger::new(Faulty::default());
    ledger.store().hang("finish");
    let err = timeout(
        HANG,
        ledger.run_once("k", short.clone(), |_| async { Ok::<u32, RunFailure>(1) }),
    )
    .await
    .expect("run_once hung on a finish")
    .unwrap_err();
    assert_no_answer(&err);

    // the consumer: the message comes back, the batch does not hang
    let store = Faulty::default();
    store.hang("begin");
    let consumer = IdempotentConsumer::new(Ledger::new(store), Duration::from_secs(10)).unwrap();
    let report = timeout(
        HANG,
        consumer.process(
            three_messages(),
            |n, _| async move { Ok::<u32, RunFailure>(n) },
        ),
    )
    .await
    .expect("the consumer hung")
    .unwrap();
    assert_eq!(report.batch_item_failures(), vec!["m-1", "m-2", "m-3"]);
}
