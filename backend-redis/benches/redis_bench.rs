//! The Redis backend next to its peers, on one server, in one run, variants
//! interleaved over rounds, with the server's `PING` round trip (RTT) as the
//! unit (see `lockstore_conformance::bench`):
//!
//! * uncontended acquire+release: p50, p99, in RTTs, cycles/s, next to a
//!   hand-written `SET NX PX` + Lua compare-and-delete and next to `rslock`
//!   (Redlock on one instance);
//! * hand-off (release → the next waiter holds) with pub/sub notification
//!   and with polling only;
//! * contention: 1, 8 and 64 clients on one key and on 64 keys, cycles/s and
//!   p99 acquire latency, against the same peers (each waiting its own way:
//!   lockstore by notification, `SET NX PX` with lockstore's default
//!   backoff, rslock with its own retry loop);
//! * requests counted per hand-off among 8 and 64 waiters of one key, sharing
//!   one client (in its line) or one client each;
//! * connections a store holds;
//! * semaphores: permit acquire + release next to the lock's, uncontended
//!   and with 8 and 64 clients on one key, N = 4;
//! * server time per acquire + release, from the server's own
//!   `INFO commandstats`, next to the same peers.
//!
//! `scripts/servers.sh run cargo bench -p lockstore-redis --bench redis_bench`
//! (or a server in `LOCKSTORE_TEST_REDIS_URL`). `BENCH_ROUNDS` overrides the
//! number of rounds, `BENCH_SECTIONS` (comma-separated: uncontended,
//! handoff, contention, connections, semaphores, server) runs only some tables, `BENCH_DIAG=1`
//! adds rows that show where a cycle's time goes. Prints tables; asserts nothing about time.

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::{
    AcquireOptions, AcquireOutcome, AcquireRequest, Backoff, LeaseId, LockClient, LockKey,
    LockStore, OwnerLabel, Ttl,
};
use lockstore_conformance::bench::{self, Plan, Table, Variant};
use lockstore_conformance::provision::{Service, server_url};
use lockstore_redis::RedisStore;
use redis::aio::ConnectionManager;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(30);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15)
}

/// Everything the variants share.
struct Setup {
    url: String,
    prefix: String,
    store: RedisStore,
    polling: RedisStore,
    manager: ConnectionManager,
    rslock: rslock::LockManager,
    cad: redis::Script,
}

async fn run() {
    let url = server_url(Service::Redis);
    let prefix = format!("lockstore-bench:{:08x}:", rand::random::<u32>());
    let store = RedisStore::builder(url.clone())
        .key_prefix(prefix.clone())
        .connect()
        .await
        .expect("connect");
    let polling = RedisStore::builder(url.clone())
        .key_prefix(prefix.clone())
        .notifications(false)
        .connect()
        .await
        .expect("connect");
    let setup = Arc::new(Setup {
        manager: store
            .connection_manager()
            .expect("the bench runs on one Redis server, not a cluster"),
        rslock: rslock::LockManager::new(vec![url.clone()]),
        cad: redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        ),
        url,
        prefix,
        store,
        polling,
    });
    let rounds = rounds();
    println!(
        "lockstore-redis bench: {rounds} rounds (BENCH_ROUNDS), sections: {}",
        bench::sections()
    );
    if bench::section("uncontended") {
        uncontended(&setup, rounds).await;
    }
    if bench::section("handoff") {
        handoff_table(&setup, rounds).await;
        bench::handoff_requests_table(
            "Redis",
            rounds.div_ceil(3).max(3),
            Arc::new(setup.store.clone()),
            TTL,
        )
        .await;
    }
    if bench::section("contention") {
        contention(&setup, rounds.div_ceil(3).max(3)).await;
    }
    if bench::section("connections") {
        connections_table(&setup).await;
    }
    if bench::section("semaphores") {
        bench::semaphore_table("Redis", rounds.div_ceil(3).max(3), setup.store.clone(), TTL).await;
    }
    if bench::section("server") {
        server_table(&setup, rounds).await;
    }
}

async fn uncontended(setup: &Arc<Setup>, rounds: usize) {
    let plan = Plan {
        rounds,
        per_round: 400,
        warm_up: 40,
    };
    let [store_cycle, client_cycle] = bench::uncontended_variants(&setup.store, TTL);
    let mut variants = vec![
        ping(setup),
        store_cycle,
        client_cycle,
        Variant::timed("peer: SET NX PX + Lua delete", {
            let s = Arc::clone(setup);
            move |_| {
                let s = Arc::clone(&s);
                async move {
                    assert!(set_nx_try(&s, "uncontended").await.is_some(), "held");
                }
            }
        }),
        Variant::timed("peer: rslock lock + unlock", {
            let s = Arc::clone(setup);
            move |_| {
                let s = Arc::clone(&s);
                async move {
                    let resource = format!("{}rslock-uncontended", s.prefix);
                    let lock = s.rslock.lock(resource.as_str(), TTL).await.expect("rslock");
                    s.rslock.unlock(&lock).await;
                }
            }
        }),
    ];
    if std::env::var_os("BENCH_DIAG").is_some() {
        variants.extend(diagnostics(setup));
    }
    let figures = bench::sequential(&variants, plan).await;
    bench::print_uncontended("Redis", "PING", &figures, plan, 2.4);
}

async fn handoff_table(setup: &Arc<Setup>, rounds: usize) {
    let plan = Plan {
        rounds,
        per_round: 8,
        warm_up: 1,
    };
    let variants = vec![
        ping(setup),
        Variant::self_timed("hand-off, pub/sub notification", {
            let s = Arc::clone(setup);
            move |_| bench::handoff(s.store.clone(), s.store.clone(), TTL)
        }),
        Variant::self_timed("hand-off, polling only (default backoff)", {
            let s = Arc::clone(setup);
            move |_| bench::handoff(s.store.clone(), s.polling.clone(), TTL)
        }),
    ];
    let mut variants = variants;
    variants.push(Variant::self_timed("PING after 20 ms idle (a cold RTT)", {
        let s = Arc::clone(setup);
        move |_| {
            let mut manager = s.manager.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let started = Instant::now();
                let _: String = redis::cmd("PING")
                    .query_async(&mut manager)
                    .await
                    .expect("PING");
                started.elapsed()
            }
        }
    }));
    if std::env::var_os("BENCH_DIAG").is_some() {
        variants.push(Variant::self_timed(
            "diag: release sent → the signal fires",
            {
                let s = Arc::clone(setup);
                move |_| signal_latency(s.store.clone())
            },
        ));
        variants.push(Variant::self_timed(
            "diag: raw PUBLISH sent → a subscriber has it",
            {
                let s = Arc::clone(setup);
                move |_| publish_latency(Arc::clone(&s))
            },
        ));
    }
    let figures = bench::sequential(&variants, plan).await;
    bench::print_handoff("Redis", "PING", &figures, plan, "notification");
}

/// Connections of a fresh store: after connecting, and while a waiter waits
/// (the listener connects on the first wait).
async fn connections_table(setup: &Setup) {
    let before = connections(&setup.url).await;
    let store = RedisStore::builder(setup.url.clone())
        .key_prefix(setup.prefix.clone())
        .connect()
        .await
        .expect("connect");
    let after_connect = connections(&setup.url).await;
    let client = LockClient::new(store);
    let held = client
        .acquire_lease("connections", AcquireOptions::new(TTL))
        .await
        .expect("holder");
    let waiting = tokio::spawn({
        let client = client.clone();
        async move {
            let _ = client
                .acquire_lease(
                    "connections",
                    AcquireOptions::new(TTL).wait_up_to(Duration::from_millis(500)),
                )
                .await;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let while_waiting = connections(&setup.url).await;
    client.release(&held).await.expect("release");
    waiting.await.expect("waiter");
    let mut table = Table::new(
        "Redis connections held by one store",
        &["state", "connections"],
    );
    table.row(vec![
        "after connect (one multiplexed connection for every operation)".into(),
        (after_connect - before).to_string(),
    ]);
    table.row(vec![
        "while waiters wait (+ one pub/sub listener shared by all of them)".into(),
        (while_waiting - before).to_string(),
    ]);
    table.print();
}

/// Where the time of a cycle goes (`BENCH_DIAG=1`): lockstore's own
/// scripts sent by hand, and two empty scripts (the cost of Lua itself).
fn diagnostics(setup: &Arc<Setup>) -> Vec<Variant> {
    let acquire = Arc::new(redis::Script::new(include_str!("../src/lua/acquire.lua")));
    let release = Arc::new(redis::Script::new(include_str!("../src/lua/release.lua")));
    let empty = Arc::new(redis::Script::new("return 1"));
    vec![
        Variant::timed("diag: lockstore's scripts by hand", {
            let s = Arc::clone(setup);
            move |_| {
                let (s, acquire, release) =
                    (Arc::clone(&s), Arc::clone(&acquire), Arc::clone(&release));
                async move {
                    let mut manager = s.manager.clone();
                    let key = format!("{}{{diag}}", s.prefix);
                    let id = LeaseId::random().to_string();
                    let _: redis::Value = acquire
                        .key(&key)
                        .arg(&id)
                        .arg("bench")
                        .arg(30_000)
                        .arg(60_000)
                        .invoke_async(&mut manager)
                        .await
                        .expect("acquire");
                    let _: redis::Value = release
                        .key(&key)
                        .arg(&id)
                        .arg(60_000)
                        .arg("diag-channel")
                        .arg("diag")
                        .invoke_async(&mut manager)
                        .await
                        .expect("release");
                }
            }
        }),
        Variant::timed("diag: EVALSHA 'return 1' twice", {
            let s = Arc::clone(setup);
            move |_| {
                let (s, empty) = (Arc::clone(&s), Arc::clone(&empty));
                async move {
                    let mut manager = s.manager.clone();
                    for _ in 0..2 {
                        let _: i64 = empty.invoke_async(&mut manager).await.expect("script");
                    }
                }
            }
        }),
        Variant::timed("diag: PING twice", {
            let s = Arc::clone(setup);
            move |_| {
                let s = Arc::clone(&s);
                async move {
                    let mut manager = s.manager.clone();
                    for _ in 0..2 {
                        let _: String = redis::cmd("PING")
                            .query_async(&mut manager)
                            .await
                            .expect("PING");
                    }
                }
            }
        }),
    ]
}

fn ping(setup: &Arc<Setup>) -> Variant {
    let s = Arc::clone(setup);
    Variant::timed("PING (the unit: 1 RTT)", move |_| {
        let mut manager = s.manager.clone();
        async move {
            let _: String = redis::cmd("PING")
                .query_async(&mut manager)
                .await
                .expect("PING");
        }
    })
}

/// One `SET NX PX` attempt and, if it took the key, the Lua delete. `None`
/// when the key was held.
async fn set_nx_try(s: &Setup, key: &str) -> Option<()> {
    let mut manager = s.manager.clone();
    let key = format!("{}peer:{key}", s.prefix);
    let token = LeaseId::random().to_string();
    let set: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .query_async(&mut manager)
        .await
        .expect("SET NX PX");
    set?;
    let deleted: i64 = s
        .cad
        .key(&key)
        .arg(&token)
        .invoke_async(&mut manager)
        .await
        .expect("CAD");
    assert_eq!(deleted, 1);
    Some(())
}

/// Release sent → the store's release signal fires, for a waiter that
/// subscribed and was refused.
async fn signal_latency(store: RedisStore) -> Duration {
    let key = LockKey::new("signal").expect("key");
    let holder = AcquireRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(TTL).expect("ttl"),
        owner: OwnerLabel::new("holder").expect("owner"),
    };
    assert!(matches!(
        store.try_acquire(&holder).await.expect("acquire"),
        AcquireOutcome::Acquired { .. }
    ));
    let signal = store.release_signal(&key).expect("notifications on");
    let waiter = AcquireRequest {
        lease_id: LeaseId::random(),
        ..holder.clone()
    };
    assert!(matches!(
        store.try_acquire(&waiter).await.expect("acquire"),
        AcquireOutcome::Held(_)
    ));
    let fired = tokio::spawn(async move {
        signal.await;
        Instant::now()
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let released = Instant::now();
    store.release(&key, holder.lease_id).await.expect("release");
    fired.await.expect("signal task") - released
}

/// The floor of any pub/sub hand-off with this client library: `PUBLISH`
/// sent → a subscribed connection has the message.
async fn publish_latency(s: Arc<Setup>) -> Duration {
    use futures::StreamExt as _;
    let client = redis::Client::open(s.url.as_str()).expect("url");
    let channel = format!("{}diag-publish", s.prefix);
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(&channel).await.expect("subscribe");
    let received = tokio::spawn(async move {
        let mut stream = pubsub.on_message();
        stream.next().await.expect("a message");
        Instant::now()
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut manager = s.manager.clone();
    let sent = Instant::now();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("x")
        .query_async(&mut manager)
        .await
        .expect("PUBLISH");
    received.await.expect("subscriber task") - sent
}

async fn contention(setup: &Arc<Setup>, rounds: usize) {
    let client = LockClient::new(setup.store.clone());
    bench::contention_table("Redis", rounds, |tag| {
        vec![
            ping(setup),
            bench::waiting_client("lockstore (LockClient, pub/sub wake-up)", &client, tag, TTL),
            Variant::self_timed("peer: SET NX PX + Lua delete (default backoff)", {
                let s = Arc::clone(setup);
                let tag = tag.to_owned();
                move |key| {
                    let s = Arc::clone(&s);
                    let key = format!("{tag}-{key}");
                    async move {
                        let started = Instant::now();
                        let backoff = Backoff::default();
                        let mut attempt = 0;
                        // The delete follows at once; the acquire is what is timed.
                        while set_nx_try(&s, &key).await.is_none() {
                            tokio::time::sleep(backoff.delay(attempt)).await;
                            attempt += 1;
                        }
                        started.elapsed()
                    }
                }
            }),
            Variant::self_timed("peer: rslock (its own retry loop)", {
                let s = Arc::clone(setup);
                let tag = tag.to_owned();
                move |key| {
                    let s = Arc::clone(&s);
                    let resource = format!("{}rslock-{tag}-{key}", s.prefix);
                    async move {
                        let started = Instant::now();
                        let lock = s
                            .rslock
                            .acquire_no_guard(resource.as_str(), TTL)
                            .await
                            .expect("rslock");
                        let took = started.elapsed();
                        s.rslock.unlock(&lock).await;
                        took
                    }
                }
            }),
        ]
    })
    .await;
}

/// How many clients the server has connected.
async fn connections(url: &str) -> usize {
    let client = redis::Client::open(url).expect("url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut connection)
        .await
        .expect("CLIENT LIST");
    // Minus this very connection.
    list.lines().count() - 1
}

/// The variants of the server-time table, each one acquire + release.
#[derive(Clone, Copy)]
enum ServerCycle {
    Store,
    SetNx,
    Rslock,
}

const SERVER_CYCLES: [(&str, ServerCycle); 3] = [
    ("lockstore: store try_acquire + release", ServerCycle::Store),
    ("peer: SET NX PX + Lua delete", ServerCycle::SetNx),
    ("peer: rslock lock + unlock", ServerCycle::Rslock),
];

/// Cycles per variant and round in the server-time table.
const SERVER_CYCLES_PER_ROUND: usize = 500;

/// The commands the variants send themselves. Every other command in
/// `INFO commandstats` was called by a script, and its time is already in
/// its script's.
const SENT: [&str; 6] = [
    "evalsha",
    "eval",
    "evalsha_ro",
    "eval_ro",
    "set",
    "script|load",
];

/// The bench's own bookkeeping, counted nowhere.
const NOT_COUNTED: [&str; 3] = ["config|resetstat", "info", "ping"];

async fn server_cycle(s: &Setup, cycle: ServerCycle) {
    match cycle {
        ServerCycle::Store => bench::store_cycle(&s.store, "server", TTL).await,
        ServerCycle::SetNx => assert!(set_nx_try(s, "server").await.is_some(), "held"),
        ServerCycle::Rslock => {
            let resource = format!("{}rslock-server", s.prefix);
            let lock = s.rslock.lock(resource.as_str(), TTL).await.expect("rslock");
            s.rslock.unlock(&lock).await;
        }
    }
}

/// `INFO commandstats` as (command, calls, µs) per command.
async fn command_stats(manager: &mut ConnectionManager) -> Vec<(String, u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(manager)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |wanted: &str| {
                fields.split(',').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    (key == wanted).then(|| value.parse().ok()).flatten()
                })
            };
            Some((name.to_owned(), field("calls")?, field("usec")?))
        })
        .collect()
}

/// Server time per acquire + release, as the server counts it: per round
/// and variant, `CONFIG RESETSTAT`, a fixed number of cycles on one key,
/// then the `usec` of the commands the client sent (`INFO commandstats`;
/// a script's time includes the commands it calls). The counters are the
/// whole server's: run it on a server nothing else uses meanwhile. Wall
/// time on the server's thread, so a busy machine inflates every variant.
async fn server_table(setup: &Arc<Setup>, rounds: usize) {
    let mut manager = setup.manager.clone();
    let cycles = SERVER_CYCLES_PER_ROUND;
    // Per variant, per round: (µs, commands sent, commands scripts called), per cycle.
    let mut figures = vec![Vec::new(); SERVER_CYCLES.len()];
    for _ in 0..rounds {
        for (index, &(_, cycle)) in SERVER_CYCLES.iter().enumerate() {
            // Scripts loaded and connections made before the counting starts.
            for _ in 0..5 {
                server_cycle(setup, cycle).await;
            }
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(&mut manager)
                .await
                .expect("CONFIG RESETSTAT");
            for _ in 0..cycles {
                server_cycle(setup, cycle).await;
            }
            let (mut usec, mut sent, mut called) = (0, 0, 0);
            for (name, calls, time) in command_stats(&mut manager).await {
                if SENT.contains(&name.as_str()) {
                    usec += time;
                    sent += calls;
                } else if !NOT_COUNTED.contains(&name.as_str()) {
                    called += calls;
                }
            }
            let per_cycle = |n: u64| n as f64 / cycles as f64;
            figures[index].push((per_cycle(usec), per_cycle(sent), per_cycle(called)));
        }
    }
    let median = |index: usize, pick: fn(&(f64, f64, f64)) -> f64| {
        bench::median(figures[index].iter().map(pick))
    };
    let peer = median(1, |f| f.0);
    let mut table = Table::new(
        format!(
            "Redis server µs per acquire + release (INFO commandstats, {rounds} rounds × {cycles} cycles, medians; goal: lockstore ≤ 2× SET NX PX + Lua delete)"
        ),
        &[
            "variant",
            "server µs / cycle",
            "fastest round",
            "commands sent / cycle",
            "redis.call()s in scripts / cycle",
            "× SET NX PX peer",
            "goal",
        ],
    );
    for (index, &(name, cycle)) in SERVER_CYCLES.iter().enumerate() {
        let usec = median(index, |f| f.0);
        let fastest = figures[index]
            .iter()
            .map(|f| f.0)
            .fold(f64::INFINITY, f64::min);
        let ratio = usec / peer;
        table.row(vec![
            name.to_owned(),
            format!("{usec:.1}"),
            format!("{fastest:.1}"),
            format!("{:.1}", median(index, |f| f.1)),
            format!("{:.1}", median(index, |f| f.2)),
            format!("{ratio:.2}×"),
            match cycle {
                ServerCycle::Store => bench::at_most(ratio, 2.0),
                _ => String::new(),
            },
        ]);
    }
    table.print();
}
