//! The Redis ledger against a real server: transitions, fences, query
//! paging, purge, wake-ups, and one `EVALSHA` per transition on the wire.

mod common;

use std::time::Duration;

use common::CountingProxy;
use lockstore_api::ledger::{
    BeginOutcome, BeginRequest, EnqueueOutcome, Finish, FinishOutcome, FinishRequest, LedgerStore,
    RequestHash, RetryOutcome, RunError, RunQuery, RunStatus, StatusFilter,
};
use lockstore_api::{
    AcquireOutcome, AcquireRequest, LeaseId, LockKey, LockStore, OwnerLabel, RenewOutcome, Ttl,
};
use lockstore_redis::RedisStore;

fn begin(key: &LockKey, ttl_ms: u64, max_attempts: u32, hash: Option<&str>) -> BeginRequest {
    BeginRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::from_millis(ttl_ms).unwrap(),
        owner: OwnerLabel::new("worker-1").unwrap(),
        max_attempts,
        request_hash: hash.map(|h| RequestHash::new(h).unwrap()),
    }
}

fn started(outcome: BeginOutcome) -> (u64, u32) {
    match outcome {
        BeginOutcome::Started { fence, attempt, .. } => (fence.get(), attempt),
        other => panic!("expected a start, got {other:?}"),
    }
}

fn failed(key: &LockKey, lease: LeaseId, attempt: u32, retryable: bool) -> FinishRequest {
    FinishRequest {
        key: key.clone(),
        lease_id: lease,
        finish: Finish::Failed {
            error: RunError::new(attempt, format!("boom {attempt}"), retryable),
        },
    }
}

#[tokio::test]
async fn a_run_starts_once_and_replays_its_result() {
    let store = common::store("ledger-once").await;
    let key = LockKey::new("job").unwrap();
    let first = begin(&key, 30_000, 3, Some("h1"));
    let (fence, attempt) = started(store.begin(&first).await.unwrap());
    assert_eq!(attempt, 1);
    // The same request again keeps its run and fence.
    assert_eq!(started(store.begin(&first).await.unwrap()), (fence, 1));
    // Someone else finds the live run.
    let BeginOutcome::Existing(record) = store.begin(&begin(&key, 30_000, 3, None)).await.unwrap()
    else {
        panic!("a live run was started twice");
    };
    assert_eq!(record.status, RunStatus::Running);
    assert!(record.holder().is_some());
    let done = FinishRequest {
        key: key.clone(),
        lease_id: first.lease_id,
        finish: Finish::Succeeded {
            result: Some(b"42".to_vec()),
        },
    };
    assert_eq!(
        store.finish(&done).await.unwrap(),
        FinishOutcome::Finished(RunStatus::Succeeded)
    );
    assert_eq!(store.finish(&done).await.unwrap(), FinishOutcome::NotHeld);
    let record = store.get(&key).await.unwrap().unwrap();
    assert_eq!(record.result.as_deref(), Some(&b"42"[..]));
    assert_eq!(record.request_hash.unwrap().as_str(), "h1");
    assert!(record.finished_at.is_some());
    assert!(record.lease_expires_in.is_none());
    let BeginOutcome::Existing(again) = store.begin(&begin(&key, 30_000, 3, None)).await.unwrap()
    else {
        panic!("a succeeded key ran again");
    };
    assert_eq!(again.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn failures_fill_the_history_and_fences_keep_rising() {
    let store = common::store("ledger-fail").await;
    let key = LockKey::new("flaky").unwrap();
    let mut last_fence = 0;
    for attempt in 1..=2 {
        let request = begin(&key, 30_000, 2, None);
        let (fence, got) = started(store.begin(&request).await.unwrap());
        assert_eq!(got, attempt);
        assert!(fence > last_fence, "fence {fence} after {last_fence}");
        last_fence = fence;
        let status = if attempt < 2 {
            RunStatus::Failed
        } else {
            RunStatus::Ignored
        };
        assert_eq!(
            store
                .finish(&failed(&key, request.lease_id, attempt, true))
                .await
                .unwrap(),
            FinishOutcome::Finished(status)
        );
    }
    let record = store.get(&key).await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Ignored);
    assert_eq!(record.attempts, 2);
    let attempts: Vec<u32> = record.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2]);
    assert_eq!(store.retry(&key).await.unwrap(), RetryOutcome::Requeued);
    assert_eq!(
        store.retry(&key).await.unwrap(),
        RetryOutcome::Unchanged(RunStatus::Pending)
    );
    let (fence, attempt) = started(store.begin(&begin(&key, 30_000, 2, None)).await.unwrap());
    assert_eq!(attempt, 3);
    assert!(fence > last_fence);
    assert_eq!(
        store
            .retry(&LockKey::new("nothing").unwrap())
            .await
            .unwrap(),
        RetryOutcome::NotFound
    );
}

#[tokio::test]
async fn a_different_request_hash_is_refused() {
    let store = common::store("ledger-hash").await;
    let key = LockKey::new("hashed").unwrap();
    assert_eq!(
        store
            .enqueue(&key, Some(&RequestHash::new("a").unwrap()))
            .await
            .unwrap(),
        EnqueueOutcome::Created
    );
    assert_eq!(
        store.enqueue(&key, None).await.unwrap(),
        EnqueueOutcome::Exists(RunStatus::Pending)
    );
    let BeginOutcome::Existing(record) = store
        .begin(&begin(&key, 30_000, 1, Some("b")))
        .await
        .unwrap()
    else {
        panic!("a different request was started");
    };
    assert_eq!(record.status, RunStatus::Pending);
    started(
        store
            .begin(&begin(&key, 30_000, 1, Some("a")))
            .await
            .unwrap(),
    );
}

#[tokio::test]
async fn an_expired_run_is_stuck_and_can_be_taken_over() {
    let store = common::store("ledger-stuck").await;
    let key = LockKey::new("slow").unwrap();
    let first = begin(&key, 1, 3, None);
    let (fence, _) = started(store.begin(&first).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store
            .renew_run(&key, first.lease_id, first.ttl)
            .await
            .unwrap(),
        RenewOutcome::Lost
    );
    let stuck = store
        .query(&RunQuery::new(StatusFilter::Stuck))
        .await
        .unwrap();
    assert_eq!(stuck.records.len(), 1);
    assert!(stuck.records[0].is_stuck());
    let second = begin(&key, 30_000, 3, None);
    let (taken, attempt) = started(store.begin(&second).await.unwrap());
    assert!(taken > fence);
    assert_eq!(attempt, 2);
    // The first runner's finish is refused.
    assert_eq!(
        store
            .finish(&failed(&key, first.lease_id, 1, true))
            .await
            .unwrap(),
        FinishOutcome::NotHeld
    );
    assert_eq!(
        store
            .renew_run(&key, second.lease_id, second.ttl)
            .await
            .unwrap(),
        RenewOutcome::Renewed
    );
    assert!(
        store
            .query(&RunQuery::new(StatusFilter::Stuck))
            .await
            .unwrap()
            .records
            .is_empty()
    );
}

#[tokio::test]
async fn queries_page_by_updated_time_and_key() {
    let store = common::store("ledger-query").await;
    let mut keys = Vec::new();
    for i in 0..7 {
        let key = LockKey::new(format!("k{i}")).unwrap();
        store.enqueue(&key, None).await.unwrap();
        keys.push(key);
    }
    // Finish two, so "unfinished" must skip them.
    for key in &keys[..2] {
        let request = begin(key, 30_000, 1, None);
        started(store.begin(&request).await.unwrap());
        store
            .finish(&FinishRequest {
                key: key.clone(),
                lease_id: request.lease_id,
                finish: Finish::Succeeded { result: None },
            })
            .await
            .unwrap();
    }
    for order_newest in [false, true] {
        let mut seen = Vec::new();
        let mut query = RunQuery::new(StatusFilter::Unfinished).limit(2);
        if order_newest {
            query = query.newest_first();
        }
        loop {
            let page = store.query(&query).await.unwrap();
            assert!(page.records.len() <= 2);
            seen.extend(page.records.iter().cloned());
            match page.next {
                Some(cursor) => query = query.after(cursor),
                None => break,
            }
        }
        let names: Vec<&str> = seen.iter().map(|r| r.key.as_str()).collect();
        let mut expected: Vec<_> = seen.clone();
        expected.sort_by_key(|r| (r.updated_at, r.key.as_str().to_owned()));
        if order_newest {
            expected.reverse();
        }
        let expected: Vec<&str> = expected.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(names, expected);
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, ["k2", "k3", "k4", "k5", "k6"]);
    }
    let all = store
        .query(&RunQuery::new(StatusFilter::All))
        .await
        .unwrap();
    assert_eq!(all.records.len(), 7);
    assert!(all.next.is_none());
    assert!(
        store
            .query(&RunQuery::new(StatusFilter::All).limit(0))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn purge_deletes_finished_records_and_fences_survive() {
    let store = common::store("ledger-purge").await;
    let key = LockKey::new("done").unwrap();
    let pending = LockKey::new("waiting").unwrap();
    store.enqueue(&pending, None).await.unwrap();
    let request = begin(&key, 30_000, 1, None);
    let (fence, _) = started(store.begin(&request).await.unwrap());
    store
        .finish(&FinishRequest {
            key: key.clone(),
            lease_id: request.lease_id,
            finish: Finish::Succeeded { result: None },
        })
        .await
        .unwrap();
    assert_eq!(store.purge(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(store.purge(Duration::ZERO).await.unwrap(), 1);
    assert!(store.get(&key).await.unwrap().is_none());
    assert!(store.get(&pending).await.unwrap().is_some());
    let (again, attempt) = started(store.begin(&begin(&key, 30_000, 1, None)).await.unwrap());
    assert!(again > fence);
    assert_eq!(attempt, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_wakes_a_waiter() {
    let store = common::store("ledger-wake").await;
    let key = LockKey::new("awaited").unwrap();
    let request = begin(&key, 30_000, 1, None);
    started(store.begin(&request).await.unwrap());
    // The first signal starts the listener; wait until it is subscribed (a
    // signal taken now can only fire for a published message or a change of
    // the subscription), so a missing PUBLISH makes this test time out.
    let _starter = store.finish_signal(&key).expect("notifications are on");
    let mut raw = common::raw_connection(&common::url()).await;
    loop {
        let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(store.release_channel())
            .query_async(&mut raw)
            .await
            .unwrap();
        if counts.first().is_some_and(|(_, n)| *n > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signal = store.finish_signal(&key).expect("notifications are on");
    store
        .finish(&FinishRequest {
            key: key.clone(),
            lease_id: request.lease_id,
            finish: Finish::Succeeded { result: None },
        })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), signal)
        .await
        .expect("the finish woke the waiter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_is_one_evalsha() {
    let url = common::url();
    let upstream = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_info()
        .addr()
        .to_string();
    let proxy = CountingProxy::start(upstream.clone()).await;
    let proxied_url = url.replacen(&upstream, &proxy.addr.to_string(), 1);
    let store = RedisStore::builder(proxied_url)
        .key_prefix(common::fresh_prefix("ledger-round-trips"))
        .connect()
        .await
        .unwrap();
    let warm = LockKey::new("warm").unwrap();
    let key = LockKey::new("counted").unwrap();
    // Warm up every script (the first use may add a SCRIPT LOAD).
    let w = begin(&warm, 30_000, 1, None);
    store.begin(&w).await.unwrap();
    store.renew_run(&warm, w.lease_id, w.ttl).await.unwrap();
    store
        .finish(&failed(&warm, w.lease_id, 1, false))
        .await
        .unwrap();
    store.get(&warm).await.unwrap();
    store.enqueue(&warm, None).await.unwrap();
    store.retry(&warm).await.unwrap();
    proxy.clear();

    let mine = begin(&key, 30_000, 1, None);
    started(store.begin(&mine).await.unwrap());
    assert_eq!(proxy.take(), ["EVALSHA"], "begin");
    let BeginOutcome::Existing(_) = store.begin(&begin(&key, 30_000, 1, None)).await.unwrap()
    else {
        panic!("started twice");
    };
    assert_eq!(proxy.take(), ["EVALSHA"], "refused begin with its record");
    store
        .renew_run(&key, mine.lease_id, mine.ttl)
        .await
        .unwrap();
    assert_eq!(proxy.take(), ["EVALSHA"], "renew_run");
    store
        .finish(&failed(&key, mine.lease_id, 1, false))
        .await
        .unwrap();
    assert_eq!(proxy.take(), ["EVALSHA"], "finish");
    store.get(&key).await.unwrap();
    assert_eq!(proxy.take(), ["EVALSHA"], "get");
    store
        .enqueue(&LockKey::new("queued").unwrap(), None)
        .await
        .unwrap();
    assert_eq!(proxy.take(), ["EVALSHA"], "enqueue");
    assert_eq!(store.retry(&key).await.unwrap(), RetryOutcome::Requeued);
    assert_eq!(proxy.take(), ["EVALSHA"], "retry");
}

/// Begins a run, retrying while a just-restarted server is not back yet.
async fn begin_retrying(store: &RedisStore, request: &BeginRequest) -> (u64, u32) {
    loop {
        match store.begin(request).await {
            Ok(outcome) => return started(outcome),
            Err(err) if err.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(err) => panic!("begin: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_fences_increase_across_a_restart_that_lost_all_data() {
    let mut server = common::PrivateServer::start().await;
    let store = RedisStore::connect(server.url()).await.unwrap();
    let key = LockKey::new("survives-restart").unwrap();
    let (before, _) = begin_retrying(&store, &begin(&key, 30_000, 1, None)).await;
    server.restart().await;
    // The record is gone with the data; the next run must still fence the
    // old one out, and the scripts are reloaded transparently.
    let (after, attempt) = begin_retrying(&store, &begin(&key, 30_000, 1, None)).await;
    assert!(after > before, "fence went from {before} to {after}");
    assert_eq!(attempt, 1);
}

/// A store under a fresh prefix whose finished ledger records expire after
/// `retention`.
async fn store_with_retention(label: &str, retention: Duration) -> RedisStore {
    RedisStore::builder(common::url())
        .key_prefix(common::fresh_prefix(label))
        .ledger_retention(retention)
        .connect()
        .await
        .expect("connect to the test Redis")
}

async fn pttl(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(raw).await.unwrap()
}

fn succeed(request: &BeginRequest) -> FinishRequest {
    FinishRequest {
        key: request.key.clone(),
        lease_id: request.lease_id,
        finish: Finish::Succeeded { result: None },
    }
}

/// Polls until the record is gone. No timing assertion: only a generous
/// deadline against hanging forever.
async fn wait_until_expired(store: &RedisStore, key: &LockKey) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while store.get(key).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "record {key:?} still there a minute after its retention"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn finished_records_expire_after_the_retention_without_losing_the_fence() {
    let store = store_with_retention("ledger-retention", Duration::from_millis(150)).await;
    let mut raw = common::raw_connection(&common::url()).await;
    let again = LockKey::new("again").unwrap();
    let listed = LockKey::new("listed").unwrap();

    let first = begin(&again, 30_000, 3, None);
    let (fence, _) = started(store.begin(&first).await.unwrap());
    // A key's last fence can be above the server clock (the clock stepped
    // back, or many runs within one microsecond); then only the high-water
    // keeps the next fence above it once the record is gone. Put it there:
    // about 11 days ahead (and below 2^53, where Lua's numbers are exact).
    let ahead = fence + 1_000_000_000_000;
    let _: () = redis::cmd("HSET")
        .arg(store.run_record_key(&again))
        .arg("fence")
        .arg(ahead)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        store.finish(&succeed(&first)).await.unwrap(),
        FinishOutcome::Finished(RunStatus::Succeeded)
    );
    assert!(pttl(&mut raw, &store.run_record_key(&again)).await > 0);
    let other = begin(&listed, 30_000, 3, None);
    started(store.begin(&other).await.unwrap());
    store.finish(&succeed(&other)).await.unwrap();

    wait_until_expired(&store, &again).await;
    wait_until_expired(&store, &listed).await;

    // The next run starts above the expired record's fence, as a fresh
    // first attempt, and its record no longer expires.
    let next = begin(&again, 30_000, 3, None);
    let (fence, attempt) = started(store.begin(&next).await.unwrap());
    assert!(fence > ahead, "fence {fence} went back below {ahead}");
    assert_eq!(attempt, 1);
    assert_eq!(pttl(&mut raw, &store.run_record_key(&again)).await, -1);

    // Queries list each key once, by its live record, and skip (and drop)
    // the entries whose record expired; purge has nothing left to count.
    let page = store
        .query(&RunQuery::new(StatusFilter::All))
        .await
        .unwrap();
    let keys: Vec<(&str, RunStatus)> = page
        .records
        .iter()
        .map(|r| (r.key.as_str(), r.status))
        .collect();
    assert_eq!(keys, [("again", RunStatus::Running)]);
    let succeeded_set = store.run_status_key(RunStatus::Succeeded);
    let left: u64 = redis::cmd("ZCARD")
        .arg(&succeeded_set)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(left, 0, "expired records' entries were not removed");
    assert_eq!(store.purge(Duration::ZERO).await.unwrap(), 0);
}

#[tokio::test]
async fn only_finished_records_expire_and_retry_keeps_the_record() {
    let store = store_with_retention("ledger-persist", Duration::from_secs(3600)).await;
    let mut raw = common::raw_connection(&common::url()).await;
    let key = LockKey::new("job").unwrap();
    let record = store.run_record_key(&key);

    // A retryable failure with attempts left waits for its next attempt.
    let first = begin(&key, 30_000, 2, None);
    started(store.begin(&first).await.unwrap());
    assert_eq!(
        store
            .finish(&failed(&key, first.lease_id, 1, true))
            .await
            .unwrap(),
        FinishOutcome::Finished(RunStatus::Failed)
    );
    assert_eq!(pttl(&mut raw, &record).await, -1, "failed");
    // The last attempt fails: ignored, finished, expiring.
    let second = begin(&key, 30_000, 2, None);
    started(store.begin(&second).await.unwrap());
    assert_eq!(
        store
            .finish(&failed(&key, second.lease_id, 2, true))
            .await
            .unwrap(),
        FinishOutcome::Finished(RunStatus::Ignored)
    );
    assert!(pttl(&mut raw, &record).await > 0, "ignored");
    // An operator's retry puts it back to work: no expiry any more.
    assert_eq!(store.retry(&key).await.unwrap(), RetryOutcome::Requeued);
    assert_eq!(pttl(&mut raw, &record).await, -1, "requeued");

    // Without a retention nothing expires.
    let keeper = common::store("ledger-keep").await;
    let run = begin(&key, 30_000, 1, None);
    started(keeper.begin(&run).await.unwrap());
    keeper.finish(&succeed(&run)).await.unwrap();
    assert_eq!(pttl(&mut raw, &keeper.run_record_key(&key)).await, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_runs_in_batches_and_deletes_every_old_record() {
    let url = common::url();
    let upstream = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_info()
        .addr()
        .to_string();
    let proxy = CountingProxy::start(upstream.clone()).await;
    let proxied_url = url.replacen(&upstream, &proxy.addr.to_string(), 1);
    let store = RedisStore::builder(proxied_url)
        .key_prefix(common::fresh_prefix("ledger-purge-batches"))
        .purge_batch_size(2)
        .connect()
        .await
        .unwrap();
    let mut fences = Vec::new();
    for i in 0..5 {
        let key = LockKey::new(format!("done-{i}")).unwrap();
        let run = begin(&key, 30_000, 1, None);
        fences.push(started(store.begin(&run).await.unwrap()).0);
        // Succeeded and ignored records both go.
        let end = if i % 2 == 0 {
            succeed(&run)
        } else {
            failed(&key, run.lease_id, 1, false)
        };
        store.finish(&end).await.unwrap();
    }
    let pending = LockKey::new("waiting").unwrap();
    store.enqueue(&pending, None).await.unwrap();
    // Nothing is old enough: one batch finds nothing and ends. (The first
    // call warms the script up: on a fresh server it adds a SCRIPT LOAD.)
    assert_eq!(store.purge(Duration::from_secs(3600)).await.unwrap(), 0);
    proxy.clear();
    assert_eq!(store.purge(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(proxy.take(), ["EVALSHA"]);

    assert_eq!(store.purge(Duration::ZERO).await.unwrap(), 5);
    // 2 + 2 + 1: the short batch says there is no more.
    assert_eq!(proxy.take(), ["EVALSHA", "EVALSHA", "EVALSHA"]);
    for i in 0..5 {
        let key = LockKey::new(format!("done-{i}")).unwrap();
        assert!(store.get(&key).await.unwrap().is_none(), "{key:?}");
    }
    assert!(store.get(&pending).await.unwrap().is_some());
    // Every batch raised the high-water: no purged key's fence comes back.
    let highest = fences.into_iter().max().unwrap();
    let key = LockKey::new("done-0").unwrap();
    let (fence, _) = started(store.begin(&begin(&key, 30_000, 1, None)).await.unwrap());
    assert!(fence > highest, "fence {fence} not above {highest}");
}

/// A lock key may contain braces, but never names a ledger record: with the
/// ledger's keys as `<prefix>{ledger}:run:<key>`, the lock `ledger}:run:job`
/// was the hash `<prefix>{ledger}:run:job}`, the run record of `job}`, and
/// an acquire rewrote its fence and gave the succeeded record an expiry
/// (run-once lost when it expired).
#[tokio::test]
async fn a_lock_key_never_names_a_ledger_record() {
    let store = common::store("ledger-alias").await;
    let mut raw = common::raw_connection(&common::url()).await;
    let run_key = LockKey::new("job}").unwrap();
    let run = begin(&run_key, 30_000, 1, None);
    let (fence, _) = started(store.begin(&run).await.unwrap());
    store.finish(&succeed(&run)).await.unwrap();

    let lock = AcquireRequest {
        key: LockKey::new("ledger}:run:job").unwrap(),
        lease_id: LeaseId::random(),
        ttl: Ttl::from_millis(30_000).unwrap(),
        owner: OwnerLabel::new("locker").unwrap(),
    };
    let AcquireOutcome::Acquired { .. } = store.try_acquire(&lock).await.unwrap() else {
        panic!("the lock was refused: its key is taken by something else");
    };
    let record = store
        .get(&run_key)
        .await
        .unwrap()
        .expect("the record lives");
    assert_eq!(record.status, RunStatus::Succeeded);
    assert_eq!(record.fence.map(|f| f.get()), Some(fence));
    assert_eq!(pttl(&mut raw, &store.run_record_key(&run_key)).await, -1);
    assert_ne!(store.record_key(&lock.key), store.run_record_key(&run_key));
}

/// A store on a counting proxy: each stuck-runs script examines at most
/// `batch` running records.
async fn counted_store(label: &str, batch: u32) -> (RedisStore, CountingProxy) {
    let url = common::url();
    let upstream = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_info()
        .addr()
        .to_string();
    let proxy = CountingProxy::start(upstream.clone()).await;
    let proxied_url = url.replacen(&upstream, &proxy.addr.to_string(), 1);
    let store = RedisStore::builder(proxied_url)
        .key_prefix(common::fresh_prefix(label))
        .stuck_scan_batch_size(batch)
        .connect()
        .await
        .unwrap();
    (store, proxy)
}

/// Begins a run with a 1 ms lease and waits (no timing assertion, only a
/// bound against hanging) until it is stuck.
async fn stuck_run(store: &RedisStore, key: &LockKey) {
    started(store.begin(&begin(key, 1, 3, None)).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !store.get(key).await.unwrap().unwrap().is_stuck() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key:?} never got stuck"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// All pages of `query`, and the keys on each.
async fn pages(store: &RedisStore, mut query: RunQuery) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    loop {
        let page = store.query(&query).await.unwrap();
        assert!(page.records.iter().all(|r| r.is_stuck()), "{page:?}");
        pages.push(
            page.records
                .iter()
                .map(|r| r.key.as_str().to_owned())
                .collect(),
        );
        match page.next {
            Some(cursor) => query = query.after(cursor),
            None => return pages,
        }
    }
}

/// Stuck runs are found by walking the running set, which may be large and
/// hold none: the walk takes one short script per `stuck_scan_batch_size`
/// entries, never one script over the whole set, and it pages like any
/// query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_runs_are_found_in_bounded_script_calls() {
    let (store, proxy) = counted_store("ledger-stuck-scan", 3).await;
    let live: Vec<LockKey> = (0..10)
        .map(|i| LockKey::new(format!("live-{i}")).unwrap())
        .collect();
    for key in &live {
        started(store.begin(&begin(key, 600_000, 3, None)).await.unwrap());
    }
    let stuck_query = RunQuery::new(StatusFilter::Stuck);
    // Warm up (the first call may add a SCRIPT LOAD).
    store.query(&stuck_query).await.unwrap();
    proxy.clear();
    let none = store.query(&stuck_query).await.unwrap();
    assert!(none.records.is_empty() && none.next.is_none(), "{none:?}");
    // 10 entries, at most 3 per call: 3 + 3 + 3 + 1.
    assert_eq!(proxy.take(), ["EVALSHA"; 4]);

    // Stuck runs before, among (same walk) and after the live ones.
    let stuck: Vec<LockKey> = ["stuck-a", "stuck-b", "stuck-c"]
        .iter()
        .map(|k| LockKey::new(*k).unwrap())
        .collect();
    stuck_run(&store, &stuck[0]).await;
    stuck_run(&store, &stuck[1]).await;
    started(
        store
            .begin(&begin(
                &LockKey::new("live-late").unwrap(),
                600_000,
                3,
                None,
            ))
            .await
            .unwrap(),
    );
    stuck_run(&store, &stuck[2]).await;
    let mut expected = Vec::new();
    for key in &stuck {
        let record = store.get(key).await.unwrap().unwrap();
        expected.push((record.updated_at, key.as_str().to_owned()));
    }
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, k)| k).collect();

    proxy.clear();
    let all = store.query(&stuck_query).await.unwrap();
    let keys: Vec<&str> = all.records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, expected);
    assert!(all.next.is_none());
    // 14 running entries, at most 3 per call.
    assert_eq!(proxy.take(), ["EVALSHA"; 5]);

    assert_eq!(
        pages(&store, stuck_query.clone().limit(2)).await,
        [expected[..2].to_vec(), expected[2..].to_vec()]
    );
    let mut newest: Vec<String> = expected.iter().rev().cloned().collect();
    assert_eq!(
        pages(&store, stuck_query.clone().limit(2).newest_first()).await,
        [newest[..2].to_vec(), newest[2..].to_vec()]
    );

    // The cursor's record leaves the running set between pages (an
    // operator requeues it): the next page still starts right after it.
    let first = store.query(&stuck_query.clone().limit(1)).await.unwrap();
    assert_eq!(first.records[0].key.as_str(), expected[0]);
    assert_eq!(
        store.retry(&first.records[0].key).await.unwrap(),
        RetryOutcome::Requeued
    );
    let rest = pages(&store, stuck_query.clone().after(first.next.unwrap())).await;
    assert_eq!(rest, [expected[1..].to_vec()]);
    newest.retain(|k| *k != expected[0]);
    assert_eq!(pages(&store, stuck_query.newest_first()).await, [newest]);
}
