//! PostgreSQL-specific promises: one statement per operation (counted on the
//! wire), fencing across purges, wake-ups through NOTIFY (also after the
//! listener connection is killed), and error mapping.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstore_api::{
    AcquireOutcome, AcquireRequest, FencingToken, LeaseId, LockError, LockKey, LockStore,
    OwnerLabel, ReleaseOutcome, RenewOutcome, Ttl,
};
use lockstore_sql::PostgresStore;
use support::{PostgresHarness, TEST_SCHEMA, postgres_url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn request(key: &str, ttl_ms: u64) -> AcquireRequest {
    AcquireRequest {
        key: LockKey::new(key).unwrap(),
        lease_id: LeaseId::random(),
        ttl: Ttl::from_millis(ttl_ms).unwrap(),
        owner: OwnerLabel::new("test").unwrap(),
    }
}

fn fresh_table() -> String {
    format!("t{:016x}", rand::random::<u64>())
}

async fn acquired(store: &dyn LockStore, req: &AcquireRequest) -> FencingToken {
    match store.try_acquire(req).await.unwrap() {
        AcquireOutcome::Acquired { fence } => fence,
        AcquireOutcome::Held(h) => panic!("{} refused, held by {h:?}", req.key),
    }
}

/// The attempt a waiting client makes after subscribing: refused by the
/// holder, it asks the holder's release to notify (release.sql notifies
/// only then). Errors are ignored: some callers make it through a faulty
/// proxy, and a lost attempt only means no notification.
async fn refused_while_waiting(store: &dyn LockStore, key: &str) -> bool {
    matches!(
        store.try_acquire(&request(key, 60_000)).await,
        Ok(AcquireOutcome::Held(_))
    )
}

// ------------------------------------------------------------ statement count

/// Messages the client sent, by protocol tag ('Q' simple query, 'P' parse,
/// 'E' execute, 'S' a Sync that ends a round trip with something in it),
/// across every connection through the proxy. An empty Sync — nothing sent
/// since the previous one — is what sqlx's pool sends to check a connection
/// as it goes back to the pool, in the background; it is counted apart,
/// under [`EMPTY_SYNC`], so it never lands in an operation's count.
#[derive(Clone, Default)]
struct Counts(Arc<Mutex<HashMap<u8, u64>>>);

/// The pseudo-tag empty Syncs are counted under.
const EMPTY_SYNC: u8 = 0;

impl Counts {
    fn get(&self, tag: u8) -> u64 {
        self.0.lock().unwrap().get(&tag).copied().unwrap_or(0)
    }
    fn snapshot(&self) -> HashMap<u8, u64> {
        self.0.lock().unwrap().clone()
    }
    fn add(&self, tag: u8) {
        *self.0.lock().unwrap().entry(tag).or_default() += 1;
    }
}

/// A TCP proxy in front of the test server that parses the client's side of
/// the PostgreSQL protocol and counts messages by tag. Returns its port.
///
/// A message is counted *before* its last byte is forwarded, so once the
/// server has answered an operation, every message of that operation is
/// already in the counts: no waiting, nothing that depends on scheduling.
async fn counting_proxy(upstream: String, counts: Counts) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&upstream).await.unwrap();
            let counts = counts.clone();
            tokio::spawn(async move {
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                });
                let mut pending = Vec::new();
                let mut started = false;
                let mut since_sync = false;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    // The startup message has no tag; every later one does.
                    loop {
                        let header = if started { 5 } else { 4 };
                        if pending.len() < header {
                            break;
                        }
                        let at = header - 4;
                        let len =
                            u32::from_be_bytes(pending[at..at + 4].try_into().unwrap()) as usize;
                        if pending.len() < at + len {
                            break;
                        }
                        if started {
                            match pending[0] {
                                b'S' if !since_sync => counts.add(EMPTY_SYNC),
                                b'S' => {
                                    counts.add(b'S');
                                    since_sync = false;
                                }
                                tag => {
                                    counts.add(tag);
                                    since_sync = true;
                                }
                            }
                        }
                        pending.drain(..at + len);
                        started = true;
                    }
                    if server_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A pool of `size` connections (no check before acquire, as the store's
/// own) whose every connection goes through [`counting_proxy`], and its counts.
async fn counted_pool(size: u32) -> (sqlx::PgPool, Counts) {
    let options: sqlx::postgres::PgConnectOptions = postgres_url().parse().unwrap();
    let upstream = format!("{}:{}", options.get_host(), options.get_port());
    let counts = Counts::default();
    let port = counting_proxy(upstream, counts.clone()).await;
    let proxied = options
        .host("127.0.0.1")
        .port(port)
        .ssl_mode(sqlx::postgres::PgSslMode::Disable);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(size)
        .test_before_acquire(false)
        .connect_with(proxied)
        .await
        .unwrap();
    (pool, counts)
}

/// One statement, in one round trip, reaches the server per acquire, failed
/// acquire, renew, release and inspect — counted on the wire, once the
/// statements are prepared on the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_is_one_statement_in_one_round_trip() {
    let (pool, counts) = counted_pool(1).await;
    let store = PostgresStore::builder_with_pool(pool)
        .schema(TEST_SCHEMA)
        .table(fresh_table())
        .build()
        .await
        .unwrap();
    store.ensure_schema().await.unwrap();

    let mine = request("counted", 60_000);
    let theirs = request("counted", 60_000);
    let ttl = mine.ttl;
    // Warm up: prepare each statement on the pooled connection.
    acquired(&store, &mine).await;
    assert!(matches!(
        store.try_acquire(&theirs).await.unwrap(),
        AcquireOutcome::Held(_)
    ));
    store.renew(&mine.key, mine.lease_id, ttl).await.unwrap();
    store.inspect(&mine.key).await.unwrap();
    store.release(&mine.key, mine.lease_id).await.unwrap();

    // What an operation sent is counted by the time its answer is back (see
    // `counting_proxy`), and the pool's background check of a returned
    // connection is an empty Sync, counted apart: nothing to wait for.
    let mut report = Vec::new();
    let mut measure = |name: &'static str, before: HashMap<u8, u64>| {
        let after = counts.snapshot();
        let delta = |tag: u8| after.get(&tag).unwrap_or(&0) - before.get(&tag).unwrap_or(&0);
        report.push((name, delta(b'E'), delta(b'Q'), delta(b'P'), delta(b'S')));
    };
    let before = counts.snapshot();
    acquired(&store, &mine).await;
    measure("acquire", before);
    let before = counts.snapshot();
    let AcquireOutcome::Held(holder) = store.try_acquire(&theirs).await.unwrap() else {
        panic!("foreign lease acquired a held key");
    };
    measure("failed acquire", before);
    assert_eq!(holder.owner(), "test");
    let before = counts.snapshot();
    assert_eq!(
        store.renew(&mine.key, mine.lease_id, ttl).await.unwrap(),
        RenewOutcome::Renewed
    );
    measure("renew", before);
    let before = counts.snapshot();
    assert!(store.inspect(&mine.key).await.unwrap().is_some());
    measure("inspect", before);
    let before = counts.snapshot();
    assert_eq!(
        store.release(&mine.key, mine.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    measure("release", before);

    for (name, execute, simple, parse, sync) in &report {
        println!("{name}: Execute {execute}, Query {simple}, Parse {parse}, Sync {sync}");
    }
    for (name, execute, simple, parse, sync) in &report {
        assert_eq!(
            (*execute, *simple, *parse),
            (1, 0, 0),
            "{name}: expected exactly one statement (one Execute, no Query, no Parse)"
        );
        // One Sync ends the statement's single round trip.
        assert_eq!(*sync, 1, "{name}: {sync} round trips");
    }
    assert!(counts.get(b'E') > 0);
    println!("pool checks (empty Syncs): {}", counts.get(EMPTY_SYNC));
}

/// sqlx's pool checks every connection that comes back to it with a round
/// trip of its own (an empty Sync). The store keeps the connections of
/// finished statements instead, so back-to-back operations send none: 50
/// acquire + release cycles sent 100 such checks before. A few are allowed
/// for connections the store gives back after a second unused (a machine
/// that stalls the test that long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_send_no_pool_checks_between_them() {
    let (pool, counts) = counted_pool(4).await;
    let store = PostgresStore::builder_with_pool(pool)
        .schema(TEST_SCHEMA)
        .table(fresh_table())
        .notifications(false)
        .build()
        .await
        .unwrap();
    store.ensure_schema().await.unwrap();

    let checks_before = counts.get(EMPTY_SYNC);
    let statements_before = counts.get(b'E');
    for _ in 0..50 {
        let lease = request("unchecked", 60_000);
        acquired(&store, &lease).await;
        assert_eq!(
            store.release(&lease.key, lease.lease_id).await.unwrap(),
            ReleaseOutcome::Released
        );
    }
    let checks = counts.get(EMPTY_SYNC) - checks_before;
    let statements = counts.get(b'E') - statements_before;
    println!("{statements} statements, {checks} pool checks");
    assert_eq!(statements, 100);
    assert!(
        checks <= 5,
        "{checks} pool checks for {statements} statements: connections went back to the pool"
    );
}

// ------------------------------------------------------------ refused polls
/// Review m7: a refused acquire writes no row version and takes no row
/// lock. The row's `xmin` (the transaction that wrote the version), `ctid`
/// (where the version lives) and `xmax` (set by anyone who locks the row)
/// are what they were, and the refusal still names the holder, with its
/// fence and time left, from the same statement. Waiters are the
/// exception, once per lease: the first records `wake_fence` (a new
/// version), and those after it find it recorded and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_acquire_writes_no_row_version_and_names_the_holder() {
    let harness = PostgresHarness::default();
    let namespace = fresh_table();
    let store = harness.postgres_store(&namespace).await;
    let table = format!("\"{TEST_SCHEMA}\".\"locks_{namespace}\""); // the harness's table
    assert_eq!(store.table_name(), table);
    let pool = harness.pool().await;
    let version = || async {
        sqlx::query_as::<_, (String, String, String)>(&format!(
            "SELECT xmin::text, ctid::text, xmax::text FROM {table} WHERE key = 'polled'"
        ))
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let ttl_ms = 60_000;
    let mine = request("polled", ttl_ms);
    let fence = acquired(&store, &mine).await;
    let written = version().await;
    for poll in 0..5 {
        let AcquireOutcome::Held(holder) =
            store.try_acquire(&request("polled", ttl_ms)).await.unwrap()
        else {
            panic!("poll {poll}: a foreign lease acquired a held key");
        };
        assert_eq!(
            (holder.owner(), holder.fence()),
            ("test", fence),
            "poll {poll}"
        );
        assert!(
            !holder.expires_in().is_zero() && holder.expires_in() <= Duration::from_millis(ttl_ms),
            "poll {poll}: {holder:?}"
        );
        assert_eq!(
            version().await,
            written,
            "poll {poll}: a refused acquire wrote a new row version or locked the row"
        );
    }
    // A waiting poll (this process holds a release signal for the key): the
    // first asks the release to notify, which writes; the next ones don't.
    let key = LockKey::new("polled").unwrap();
    let _signal = store
        .release_signal(&key)
        .expect("PostgreSQL has notifications");
    assert!(matches!(
        store.try_acquire(&request("polled", ttl_ms)).await.unwrap(),
        AcquireOutcome::Held(_)
    ));
    let registered = version().await;
    assert_ne!(
        registered.0, written.0,
        "the first waiter records wake_fence"
    );
    for poll in 0..3 {
        assert!(matches!(
            store.try_acquire(&request("polled", ttl_ms)).await.unwrap(),
            AcquireOutcome::Held(_)
        ));
        assert_eq!(
            version().await,
            registered,
            "waiting poll {poll}: the release is already asked to notify, yet it wrote or locked"
        );
    }
    // A retried acquire of our own lease does write: it refreshes the expiry.
    assert_eq!(acquired(&store, &mine).await, fence);
    assert_ne!(
        version().await,
        written,
        "a retried acquire refreshes the row"
    );
}

/// The refusal reads the holder the upsert judged, even when the row is
/// created or changed by others during the statement: many clients at once
/// on brand-new keys, then on their released rows. Exactly one gets each
/// key, and every refusal names that one (its fence), never an error or a
/// stale holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_acquires_grant_one_and_refusals_name_it() {
    let harness = PostgresHarness::default();
    let namespace = fresh_table();
    let stores: Vec<PostgresStore> = {
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(harness.postgres_store(&namespace).await);
        }
        stores
    };
    for round in 0..40 {
        let key = format!("race-{}", round / 2);
        let attempts: Vec<_> = (0..8)
            .map(|i| {
                let store = stores[i % stores.len()].clone();
                let req = request(&key, 60_000);
                tokio::spawn(async move {
                    let outcome = store.try_acquire(&req).await.unwrap();
                    (req, outcome)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut refused = Vec::new();
        for attempt in attempts {
            match attempt.await.unwrap() {
                (req, AcquireOutcome::Acquired { fence }) => winners.push((req, fence)),
                (_, AcquireOutcome::Held(holder)) => refused.push(holder),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        let (winner, fence) = winners.pop().unwrap();
        for holder in refused {
            assert_eq!(
                holder.fence(),
                fence,
                "round {round}: a refusal named {holder:?}"
            );
        }
        // Odd rounds race for a released row, even rounds for a new one.
        stores[0]
            .release(&winner.key, winner.lease_id)
            .await
            .unwrap();
    }
}

// ------------------------------------------------------------ fencing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_survives_purge_of_idle_rows() {
    let harness = PostgresHarness::default();
    let store = harness.postgres_store(&fresh_table()).await;
    let first = request("purged", 60_000);
    let fence1 = acquired(&store, &first).await;
    store.release(&first.key, first.lease_id).await.unwrap();
    // An expired, never released lease too.
    let short = request("expired", 1);
    acquired(&store, &short).await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let purged = store.purge_idle(Duration::ZERO).await.unwrap();
    assert_eq!(purged, 2, "both idle rows are deleted");

    let again = request("purged", 60_000);
    let fence2 = acquired(&store, &again).await;
    assert!(
        fence2 > fence1,
        "fence went from {fence1} to {fence2} across a purge"
    );
}

/// M7: a takeover's fence is above the row's own fence even if the
/// sequence went back (`ALTER SEQUENCE … RESTART`, a logical-replication
/// move that re-created it at 1, a session cache); and the sequence is made
/// with `CACHE 1 NO CYCLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_never_goes_back_when_the_sequence_is_reset() {
    let harness = PostgresHarness::default();
    let namespace = fresh_table();
    let store = harness.postgres_store(&namespace).await;
    let table = format!("locks_{namespace}"); // the harness's table name
    assert!(store.table_name().ends_with(&format!("\"{table}\"")));
    let mut last = 0;
    for _ in 0..5 {
        let lease = request("reset", 60_000);
        last = acquired(&store, &lease).await.get();
        store.release(&lease.key, lease.lease_id).await.unwrap();
    }
    let pool = harness.pool().await;
    let (cache, cycle): (i64, bool) = sqlx::query_as(
        "SELECT cache_size, cycle FROM pg_sequences WHERE schemaname = $1 AND sequencename = $2",
    )
    .bind(TEST_SCHEMA)
    .bind(format!("{table}_fence"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (cache, cycle),
        (1, false),
        "the fence sequence's cache and cycle"
    );
    sqlx::query(&format!(
        "ALTER SEQUENCE \"{TEST_SCHEMA}\".\"{table}_fence\" RESTART WITH 1"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let after = acquired(&store, &request("reset", 60_000)).await.get();
    assert!(
        after > last,
        "fence went from {last} to {after} after the sequence was reset"
    );
}

/// A ledger table made before begin reported takeovers (no `took_over`
/// column) gets the column from `ensure_schema`, once (a second call finds
/// it), and its stuck runs are then reported taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_schema_adds_the_took_over_column_to_an_older_table() {
    use lockstore_api::ledger::{BeginOutcome, BeginRequest, LedgerStore};
    let harness = PostgresHarness::default();
    let namespace = fresh_table();
    let store = harness.postgres_store(&namespace).await;
    let runs = format!("\"{TEST_SCHEMA}\".\"locks_{namespace}_runs\""); // the harness's table
    let crashed = BeginRequest {
        key: LockKey::new("older").unwrap(),
        lease_id: LeaseId::random(),
        ttl: Ttl::from_millis(60_000).unwrap(),
        owner: OwnerLabel::new("test").unwrap(),
        max_attempts: 3,
        request_hash: None,
    };
    let started = store.begin(&crashed).await.unwrap();
    assert!(
        matches!(started, BeginOutcome::Started { .. }),
        "{started:?}"
    );
    let pool = harness.pool().await;
    // A run on the older table whose lease has expired: stuck.
    for statement in [
        format!("UPDATE {runs} SET expires_ms = 0 WHERE key = 'older'"),
        format!("ALTER TABLE {runs} DROP COLUMN took_over"),
    ] {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
    store.ensure_schema().await.unwrap();
    store.ensure_schema().await.unwrap();
    let taker = BeginRequest {
        lease_id: LeaseId::random(),
        ..crashed
    };
    match store.begin(&taker).await.unwrap() {
        BeginOutcome::Started {
            attempt, took_over, ..
        } => {
            assert_eq!(attempt, 2);
            assert!(took_over, "the stuck run's takeover was not reported");
        }
        BeginOutcome::Existing(record) => panic!("the stuck run was not taken over: {record:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_keeps_live_leases() {
    let harness = PostgresHarness::default();
    let store = harness.postgres_store(&fresh_table()).await;
    let live = request("live", 60_000);
    acquired(&store, &live).await;
    assert_eq!(store.purge_idle(Duration::ZERO).await.unwrap(), 0);
    assert!(store.inspect(&live.key).await.unwrap().is_some());
}

// ------------------------------------------------------------ notifications

/// A release through one store wakes a waiter of another store (another
/// listener connection) at once, and still does after the listener's
/// connection was killed by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_other_stores_and_survives_listener_loss() {
    let harness = PostgresHarness::default();
    let table = fresh_table();
    let releaser = harness.postgres_store(&table).await;
    let waiter = harness.postgres_store(&table).await;

    let held = request("k", 60_000);
    acquired(&releaser, &held).await;
    let signal = waiter
        .release_signal(&held.key)
        .expect("notifications are on");
    assert!(refused_while_waiting(&waiter, "k").await);
    releaser.release(&held.key, held.lease_id).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), signal)
        .await
        .expect("the release woke the other store's waiter");

    // Kill every LISTEN connection on this channel; waiters are woken (the
    // listener cannot promise to tell any more), then it reconnects.
    let held = request("k", 60_000);
    acquired(&releaser, &held).await;
    let signal = waiter.release_signal(&held.key).unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN %' AND datname = current_database()",
    )
    .fetch_one(&harness.pool().await)
    .await
    .unwrap();
    assert!(killed >= 2, "killed {killed} listener connections");
    tokio::time::timeout(Duration::from_secs(5), signal)
        .await
        .expect("losing the listener woke the waiter");

    // Once reconnected, releases wake waiters again. (The releasing store's
    // pool may hold a killed connection too: its errors are retryable.)
    while releaser.release(&held.key, held.lease_id).await.is_err() {}
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let signal = waiter.release_signal(&held.key).unwrap();
        let fresh = request("k", 60_000);
        acquired(&releaser, &fresh).await;
        refused_while_waiting(&waiter, "k").await;
        releaser.release(&fresh.key, fresh.lease_id).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(500), signal)
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener never came back"
        );
    }
}

/// Only the first waiter of a lease writes (it asks the release to
/// notify); the waiters after it are refused from the statement's snapshot,
/// without a lock or a write. The release still wakes every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiter_of_a_lease_is_woken_though_only_the_first_registers() {
    let harness = PostgresHarness::default();
    let table = fresh_table();
    let releaser = harness.postgres_store(&table).await;
    let mut waiters = Vec::new();
    for _ in 0..3 {
        waiters.push(harness.postgres_store(&table).await);
    }
    let held = request("k", 60_000);
    acquired(&releaser, &held).await;
    let mut signals = Vec::new();
    for waiter in &waiters {
        signals.push(
            waiter
                .release_signal(&held.key)
                .expect("notifications are on"),
        );
        assert!(refused_while_waiting(waiter, "k").await);
    }
    releaser.release(&held.key, held.lease_id).await.unwrap();
    for (i, signal) in signals.into_iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(5), signal)
            .await
            .unwrap_or_else(|_| panic!("waiter {i} was not woken by the release"));
    }
}

// ------------------------------------------------------------ errors

/// A releasing store on a fresh table, a fault proxy to the server, and a
/// waiting store on the same table behind the proxy.
async fn proxied_waiter() -> (
    PostgresStore,
    lockstore_conformance::proxy::FaultProxy,
    PostgresStore,
) {
    let harness = PostgresHarness::default();
    let releaser = harness.postgres_store(&fresh_table()).await;
    let options: sqlx::postgres::PgConnectOptions = postgres_url().parse().unwrap();
    let proxy = lockstore_conformance::proxy::FaultProxy::start(format!(
        "{}:{}",
        options.get_host(),
        options.get_port()
    ))
    .await;
    let waiter = store_behind_proxy(&proxy, &releaser).await;
    (releaser, proxy, waiter)
}

/// A store whose every connection (the listener's included) goes through a
/// fault proxy, on the table of `releaser`, with a fast listener probe.
async fn store_behind_proxy(
    proxy: &lockstore_conformance::proxy::FaultProxy,
    releaser: &PostgresStore,
) -> PostgresStore {
    let options: sqlx::postgres::PgConnectOptions = postgres_url().parse().unwrap();
    let proxied = options
        .host("127.0.0.1")
        .port(proxy.addr().port())
        .ssl_mode(sqlx::postgres::PgSslMode::Disable);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(proxied);
    let table = releaser
        .table_name()
        .rsplit('.')
        .next()
        .unwrap()
        .trim_matches('"');
    PostgresStore::builder_with_pool(pool)
        .schema(TEST_SCHEMA)
        .table(table)
        .listener_probe(Duration::from_millis(200))
        .build()
        .await
        .unwrap()
}

/// Releases through `releaser` until one wakes `waiter`'s waiter: the
/// listener is (back) on its channel. The bound only catches "never".
async fn release_wakes(releaser: &PostgresStore, waiter: &PostgresStore, key: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lease = request(key, 60_000);
        let signal = waiter.release_signal(&lease.key).unwrap();
        acquired(releaser, &lease).await;
        refused_while_waiting(waiter, key).await;
        releaser.release(&lease.key, lease.lease_id).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(500), signal)
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no release woke the waiter for 30 s: the listener never came back"
        );
    }
}

/// M5: a connection reset (ECONNRESET, which sqlx reports as an error, not
/// as a lost connection) wakes the waiters and the listener comes back. The
/// old loop kept the failed listener, which held its pool's only slot, so
/// every reconnect waited for that slot forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_comes_back_after_a_connection_reset() {
    let (releaser, proxy, waiter) = proxied_waiter().await;
    release_wakes(&releaser, &waiter, "reset").await;

    let signal = waiter
        .release_signal(&LockKey::new("reset").unwrap())
        .unwrap();
    proxy.reset_all();
    tokio::time::timeout(Duration::from_secs(30), signal)
        .await
        .expect("losing the listener to a reset woke the waiter");
    release_wakes(&releaser, &waiter, "reset").await;
}

/// M5: a connection that goes silent (a NAT or load balancer dropped the
/// flow: no error, no EOF) is noticed by the listener's probe; waiters are
/// woken and the listener comes back. Without the probe, wake-ups just stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_notices_a_silent_connection() {
    let (releaser, proxy, waiter) = proxied_waiter().await;
    release_wakes(&releaser, &waiter, "silent").await;

    let signal = waiter
        .release_signal(&LockKey::new("silent").unwrap())
        .unwrap();
    proxy.blackhole_open();
    tokio::time::timeout(Duration::from_secs(30), signal)
        .await
        .expect("the probe noticed the silent connection and woke the waiter");
    release_wakes(&releaser, &waiter, "silent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_table_is_a_config_error_naming_table_and_fix() {
    let store = PostgresStore::builder(postgres_url())
        .schema(TEST_SCHEMA)
        .table("never_created")
        .notifications(false)
        .build()
        .await
        .unwrap();
    let err = store.try_acquire(&request("k", 1000)).await.unwrap_err();
    let LockError::Config {
        message, source, ..
    } = &err
    else {
        panic!("expected a Config error, got {err:?}");
    };
    assert!(
        message.contains("\"lockstore_conformance\".\"never_created\""),
        "{message}"
    );
    assert!(message.contains("ensure_schema()"), "{message}");
    assert!(source.is_some(), "the sqlx error is kept as source");
    assert!(!err.is_retryable());
    let err = store
        .inspect(&LockKey::new("k").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
}

#[tokio::test]
async fn bad_url_and_names_are_config_errors() {
    let err = PostgresStore::connect("postgres://host:notaport/db")
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
    let err = PostgresStore::builder(postgres_url())
        .table("locks; DROP TABLE x")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
    let err = PostgresStore::builder(postgres_url())
        .schema("")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
}

#[tokio::test]
async fn unreachable_server_is_retryable() {
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = PostgresStore::connect(&format!("postgres://postgres@127.0.0.1:{port}/x"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_is_retryable() {
    let options: sqlx::postgres::PgConnectOptions = postgres_url().parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.options([("statement_timeout", "50")]))
        .await
        .unwrap();
    let harness = PostgresHarness::default();
    let table = fresh_table();
    let plain = harness.postgres_store(&table).await;
    let timed = PostgresStore::builder_with_pool(pool)
        .schema(TEST_SCHEMA)
        .table(format!("locks_{table}"))
        .notifications(false)
        .build()
        .await
        .unwrap();
    let req = request("blocked", 60_000);
    acquired(&plain, &req).await;
    // A free row: the acquire takes the upsert, which needs the row lock (a
    // live foreign lease would be refused from the snapshot, lock-free).
    assert_eq!(
        plain.release(&req.key, req.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    // Hold the row lock in an open transaction so the acquire must wait.
    let mut blocker = harness.pool().await.begin().await.unwrap();
    sqlx::query(&format!(
        "SELECT 1 FROM {} WHERE key = $1 FOR UPDATE",
        plain.table_name()
    ))
    .bind("blocked")
    .execute(&mut *blocker)
    .await
    .unwrap();
    let err = timed
        .try_acquire(&request("blocked", 1000))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("acquiring blocked"), "{err}");
    blocker.rollback().await.unwrap();
}

/// The longest table name allowed (57 bytes) still gets both ledger indexes:
/// `<table>_runs_status` and `<table>_runs_updated` would both be cut to
/// `<table>_runs_` by PostgreSQL, and the second would silently not exist.
#[tokio::test]
async fn a_table_of_the_longest_name_gets_every_ledger_index() {
    let table = format!("{}{}", fresh_table(), "x".repeat(40));
    assert_eq!(table.len(), 57);
    let harness = PostgresHarness::default();
    let pool = harness.pool().await;
    let store = PostgresStore::builder_with_pool(pool.clone())
        .schema(TEST_SCHEMA)
        .table(&table)
        .build()
        .await
        .unwrap();
    store.ensure_schema().await.unwrap();
    // Twice: the derived names are stable, so nothing more is created.
    store.ensure_schema().await.unwrap();
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname, indexdef FROM pg_indexes \
         WHERE schemaname = $1 AND tablename = $2 ORDER BY indexname",
    )
    .bind(TEST_SCHEMA)
    .bind(format!("{table}_runs"))
    .fetch_all(&pool)
    .await
    .unwrap();
    let columns: Vec<&str> = indexes
        .iter()
        .filter_map(|(_, def)| def.split_once(" USING btree ").map(|(_, cols)| cols))
        .collect();
    assert_eq!(indexes.len(), 3, "{indexes:?}");
    for wanted in ["(key)", "(status, updated_ms, key)", "(updated_ms, key)"] {
        assert!(
            columns.contains(&wanted),
            "no index on {wanted}: {indexes:?}"
        );
    }
}
