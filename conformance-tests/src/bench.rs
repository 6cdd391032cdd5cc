//! The benchmark harness the backends' bench programs share: variants
//! interleaved over rounds, with the server's own round trip measured in the
//! same rounds as the unit.
//!
//! On a shared, noisy machine one long run per variant compares the load of
//! the moment, not the variants: a variant measured while another program
//! was busy looks slow. So every measure here runs in *rounds*; each round
//! runs every variant once, in an order that rotates from round to round,
//! and a variant's figure is the median over rounds of its per-round figure.
//! Ratios (a variant's p50 over the round trip's p50) are taken within each
//! round, then their median is reported, so a slow round slows both sides
//! of the ratio alike.
//!
//! Timing lives here and in the bench programs only; no test asserts on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lockstore_api::semaphore::{PermitLimit, Semaphore, SemaphoreStore};
use lockstore_api::{
    AcquireOptions, AcquireOutcome, AcquireRequest, LeaseId, LockClient, LockKey, LockStore,
    OwnerLabel, Ttl,
};
use tokio::time::Instant;

use crate::fault::CountingStore;

/// A future the harness can spawn.
pub type BoxFuture = Pin<Box<dyn Future<Output = Duration> + Send + 'static>>;

/// One thing to measure, run once per call: it returns the duration that
/// counts (the whole call for a plain operation, or the part it measured
/// itself, such as release → waiter holds).
#[derive(Clone)]
pub struct Variant {
    name: String,
    op: Arc<dyn Fn(usize) -> BoxFuture + Send + Sync>,
}

impl std::fmt::Debug for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Variant").field("name", &self.name).finish()
    }
}

impl Variant {
    /// A variant timed by the harness: the whole of `op` counts. `op` gets
    /// the index of the key to use (always 0 when run sequentially).
    pub fn timed<F, Fut>(name: impl Into<String>, op: F) -> Self
    where
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            name: name.into(),
            op: Arc::new(move |key| {
                let fut = op(key);
                Box::pin(async move {
                    let started = Instant::now();
                    fut.await;
                    started.elapsed()
                })
            }),
        }
    }

    /// A variant that measures itself: `op` returns the duration that
    /// counts (for contention: how long the acquire took).
    pub fn self_timed<F, Fut>(name: impl Into<String>, op: F) -> Self
    where
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Duration> + Send + 'static,
    {
        Self {
            name: name.into(),
            op: Arc::new(move |key| Box::pin(op(key))),
        }
    }

    /// The name printed in tables.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A variant's figures in one round.
#[derive(Clone, Copy, Debug)]
pub struct RoundFigures {
    /// Median of the samples.
    pub p50: Duration,
    /// 99th percentile of the samples.
    pub p99: Duration,
    /// Calls completed per second of wall time in the round.
    pub per_second: f64,
}

/// A variant's figures over all rounds.
#[derive(Clone, Debug)]
pub struct Figures {
    /// The variant's name.
    pub name: String,
    /// One entry per round, in round order.
    pub rounds: Vec<RoundFigures>,
}

impl Figures {
    /// Median over rounds of the per-round p50.
    pub fn p50(&self) -> Duration {
        median_duration(self.rounds.iter().map(|r| r.p50))
    }

    /// Median over rounds of the per-round p99.
    pub fn p99(&self) -> Duration {
        median_duration(self.rounds.iter().map(|r| r.p99))
    }

    /// Median over rounds of calls per second.
    pub fn per_second(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.per_second))
    }

    /// Median over rounds of this variant's p50 divided by `unit`'s p50 in
    /// the same round.
    pub fn p50_in(&self, unit: &Figures) -> f64 {
        median(
            self.rounds
                .iter()
                .zip(&unit.rounds)
                .map(|(a, u)| a.p50.as_secs_f64() / u.p50.as_secs_f64()),
        )
    }

    /// Median over rounds of this variant's p99 divided by `unit`'s p50.
    pub fn p99_in(&self, unit: &Figures) -> f64 {
        median(
            self.rounds
                .iter()
                .zip(&unit.rounds)
                .map(|(a, u)| a.p99.as_secs_f64() / u.p50.as_secs_f64()),
        )
    }

    /// Median over rounds of this variant's rate divided by `other`'s rate
    /// in the same round.
    pub fn rate_over(&self, other: &Figures) -> f64 {
        median(
            self.rounds
                .iter()
                .zip(&other.rounds)
                .map(|(a, o)| a.per_second / o.per_second),
        )
    }
}

/// How much to run: `rounds` rounds of `per_round` calls (after `warm_up`
/// unmeasured calls) per variant.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Rounds; each runs every variant once.
    pub rounds: usize,
    /// Measured calls per variant per round (per client when concurrent).
    pub per_round: usize,
    /// Unmeasured calls before each variant's measured ones.
    pub warm_up: usize,
}

/// Runs `variants` one call at a time, interleaved over `plan.rounds`
/// rounds, and returns their figures in the order given.
pub async fn sequential(variants: &[Variant], plan: Plan) -> Vec<Figures> {
    concurrent(variants, plan, 1, 1).await
}

/// Runs each variant with `clients` concurrent callers spread over `keys`
/// keys (caller `i` uses key `i % keys`), each making `plan.per_round` calls
/// per round, rounds interleaved as in [`sequential`]. The rate is calls per
/// second by all callers together.
pub async fn concurrent(
    variants: &[Variant],
    plan: Plan,
    clients: usize,
    keys: usize,
) -> Vec<Figures> {
    let mut figures: Vec<Figures> = variants
        .iter()
        .map(|v| Figures {
            name: v.name.clone(),
            rounds: Vec::with_capacity(plan.rounds),
        })
        .collect();
    let mut per_round: Vec<Vec<Option<RoundFigures>>> =
        vec![vec![None; variants.len()]; plan.rounds];
    for (round, slots) in per_round.iter_mut().enumerate() {
        for offset in 0..variants.len() {
            let index = (round + offset) % variants.len();
            slots[index] = Some(run_round(&variants[index], plan, clients, keys).await);
        }
    }
    for slots in per_round {
        for (index, slot) in slots.into_iter().enumerate() {
            figures[index].rounds.push(slot.expect("every variant ran"));
        }
    }
    figures
}

async fn run_round(variant: &Variant, plan: Plan, clients: usize, keys: usize) -> RoundFigures {
    let keys = keys.max(1);
    let clients = clients.max(1);
    // Warm up every key's path (connections, prepared statements, scripts).
    for i in 0..plan.warm_up {
        (variant.op)(i % keys).await;
    }
    let started = Instant::now();
    let mut samples = if clients == 1 {
        let mut samples = Vec::with_capacity(plan.per_round);
        for _ in 0..plan.per_round {
            samples.push((variant.op)(0).await);
        }
        samples
    } else {
        let tasks: Vec<_> = (0..clients)
            .map(|client| {
                let op = Arc::clone(&variant.op);
                let calls = plan.per_round;
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(calls);
                    for _ in 0..calls {
                        samples.push(op(client % keys).await);
                    }
                    samples
                })
            })
            .collect();
        let mut samples = Vec::with_capacity(clients * plan.per_round);
        for task in tasks {
            samples.extend(task.await.expect("a bench client panicked"));
        }
        samples
    };
    let elapsed = started.elapsed();
    samples.sort_unstable();
    RoundFigures {
        p50: percentile(&samples, 50.0),
        p99: percentile(&samples, 99.0),
        per_second: samples.len() as f64 / elapsed.as_secs_f64(),
    }
}

/// The `p`th percentile of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The median of some numbers (0 for none).
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn median_duration(values: impl Iterator<Item = Duration>) -> Duration {
    Duration::from_secs_f64(median(values.map(|d| d.as_secs_f64())))
}

/// Whether the table `name` is to be printed: every table unless
/// `BENCH_SECTIONS` lists some (comma-separated).
pub fn section(name: &str) -> bool {
    match std::env::var("BENCH_SECTIONS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|s| s.trim() == name),
        _ => true,
    }
}

/// The `BENCH_SECTIONS` setting, for the header line.
pub fn sections() -> String {
    std::env::var("BENCH_SECTIONS")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "all".to_owned())
}

/// Microseconds, for tables.
pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// A markdown table with aligned columns.
#[derive(Debug)]
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table under `title` with these column headers.
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells print empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        let columns = self.headers.len();
        let width = |c: usize| {
            std::iter::once(&self.headers[c])
                .chain(self.rows.iter().filter_map(|r| r.get(c)))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let line = |cells: &[String]| {
            let mut out = String::from("|");
            for (c, w) in widths.iter().enumerate() {
                let cell = cells.get(c).map_or("", String::as_str);
                let pad = w - cell.chars().count();
                if c == 0 {
                    out.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
                } else {
                    out.push_str(&format!(" {}{cell} |", " ".repeat(pad)));
                }
            }
            out
        };
        println!("\n{}\n", self.title);
        println!("{}", line(&self.headers));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        println!("{}", line(&rule).replace(' ', "-"));
        for row in &self.rows {
            println!("{}", line(row));
        }
    }
}

/// `value` against a goal of at most `goal`: "met", or by how much it is
/// over.
pub fn at_most(value: f64, goal: f64) -> String {
    if value <= goal {
        "met".to_owned()
    } else {
        format!("missed by {:.0}%", 100.0 * (value / goal - 1.0))
    }
}

/// `value` against a goal of at least `goal`.
pub fn at_least(value: f64, goal: f64) -> String {
    if value >= goal {
        "met".to_owned()
    } else {
        format!("missed by {:.0}%", 100.0 * (1.0 - value / goal))
    }
}

/// Resident memory of this process in bytes, from `/proc/self/statm`
/// (`None` where there is no such file).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

// The lock measures the Redis and PostgreSQL bench programs share: the same
// lockstore variants and tables, with each server's own unit and peers.

/// The best of the figures whose variant is named `peer…` (the hand-written
/// or third-party peers), by cycles per second.
///
/// # Panics
/// When no variant is named `peer…`: a bench table without a peer is a bug
/// in the bench program.
pub fn best_peer(figures: &[Figures]) -> &Figures {
    figures
        .iter()
        .filter(|f| f.name.starts_with("peer"))
        .max_by(|a, b| a.per_second().total_cmp(&b.per_second()))
        .expect("a bench table names at least one variant `peer…`")
}

/// An uncontended store-level cycle: `try_acquire` of a free key, then
/// `release` (2 requests; panics if the key is held, since then the bench
/// measures something else).
pub async fn store_cycle<S: LockStore>(store: &S, key: &str, ttl: Duration) {
    let request = AcquireRequest {
        key: LockKey::new(key).expect("key"),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(ttl).expect("ttl"),
        owner: OwnerLabel::new("bench").expect("owner"),
    };
    match store.try_acquire(&request).await.expect("acquire") {
        AcquireOutcome::Acquired { .. } => {}
        AcquireOutcome::Held(holder) => panic!("uncontended key held by {holder:?}"),
    }
    store
        .release(&request.key, request.lease_id)
        .await
        .expect("release");
}

/// The two lockstore rows of an uncontended table: the store's
/// `try_acquire` + `release`, and the client's `acquire_lease` + `release`
/// (guard bookkeeping included).
pub fn uncontended_variants<S: LockStore + Clone>(store: &S, ttl: Duration) -> [Variant; 2] {
    let store_variant = Variant::timed("lockstore store: try_acquire + release", {
        let store = store.clone();
        move |_| {
            let store = store.clone();
            async move { store_cycle(&store, "uncontended", ttl).await }
        }
    });
    let client_variant = Variant::timed("lockstore client: acquire_lease + release", {
        let client = LockClient::new(store.clone());
        move |_| {
            let client = client.clone();
            async move {
                let lease = client
                    .acquire_lease("uncontended-client", AcquireOptions::new(ttl))
                    .await
                    .expect("acquire");
                client.release(&lease).await.expect("release");
            }
        }
    });
    [store_variant, client_variant]
}

/// Prints the uncontended table: every variant against `figures[0]` (the
/// server's round trip) and the best peer, with the goals of p50 ≤
/// `goal_rtt` round trips and cycles/s ≥ the best peer for lockstore's rows.
pub fn print_uncontended(server: &str, unit: &str, figures: &[Figures], plan: Plan, goal_rtt: f64) {
    let rtt = &figures[0];
    let peer = best_peer(figures);
    let goal_p50 = format!("goal p50 ≤ {goal_rtt} RTT");
    let mut table = Table::new(
        format!(
            "{server} uncontended acquire+release, one client ({} rounds × {} cycles, interleaved; unit: {unit} p50 of the same round)",
            plan.rounds, plan.per_round
        ),
        &[
            "variant",
            "p50",
            "p99",
            "p50 in RTT",
            "cycles/s",
            "vs best peer",
            &goal_p50,
            "goal ≥ best peer",
        ],
    );
    for f in figures {
        let ratio = f.p50_in(rtt);
        let lockstore = f.name.starts_with("lockstore");
        let vs_peer = f.rate_over(peer);
        let goal = |verdict: String| if lockstore { verdict } else { String::new() };
        table.row(vec![
            f.name.clone(),
            us(f.p50()),
            us(f.p99()),
            format!("{ratio:.2}"),
            format!("{:.0}", f.per_second()),
            format!("{vs_peer:.2}×"),
            goal(at_most(ratio, goal_rtt)),
            goal(at_least(vs_peer, 1.0)),
        ]);
    }
    table.print();
}

/// Release → the waiter holds, through two clients. The waiter has been
/// waiting (refused once, then asleep or subscribed) for 20 ms when the
/// release is sent; the duration is from sending the release to the
/// waiter's acquire returning.
pub async fn handoff<S: LockStore>(holder_store: S, waiter_store: S, ttl: Duration) -> Duration {
    let holder = LockClient::new(holder_store);
    let waiter = LockClient::new(waiter_store);
    let held = holder
        .acquire_lease("handoff", AcquireOptions::new(ttl))
        .await
        .expect("holder");
    let waiting = tokio::spawn(async move {
        let lease = waiter
            .acquire_lease("handoff", AcquireOptions::new(ttl).wait_forever())
            .await
            .expect("waiter");
        let at = Instant::now();
        waiter.release(&lease).await.expect("release waiter");
        at
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let released = Instant::now();
    holder.release(&held).await.expect("release");
    let acquired = waiting.await.expect("waiter task");
    acquired - released
}

/// Prints the hand-off table: every variant after the first (the server's
/// round trip) in round trips and in cold round trips (the variant named
/// `…cold RTT…`: the same command after the idle time a waiter has), with
/// the goal of ≤ 3 round trips for the variants whose name contains
/// `notified` (the store's hand-off with notification).
///
/// # Panics
/// When no variant is named `…cold RTT…`.
pub fn print_handoff(server: &str, unit: &str, figures: &[Figures], plan: Plan, notified: &str) {
    let cold = figures
        .iter()
        .find(|f| f.name.contains("cold RTT"))
        .expect("a hand-off table measures a cold round trip");
    let mut table = Table::new(
        format!(
            "{server} hand-off: release sent → the waiter holds ({} rounds × {} hand-offs; unit: {unit} p50 of the same round)",
            plan.rounds, plan.per_round
        ),
        &[
            "variant",
            "p50",
            "p99",
            "p50 in RTT",
            "p50 in cold RTT",
            "goal ≤ 3 RTT",
        ],
    );
    for f in &figures[1..] {
        let ratio = f.p50_in(&figures[0]);
        table.row(vec![
            f.name.clone(),
            us(f.p50()),
            us(f.p99()),
            format!("{ratio:.2}"),
            format!("{:.2}", f.p50_in(cold)),
            if f.name.contains(notified) {
                at_most(ratio, 3.0)
            } else {
                "(no goal)".into()
            },
        ]);
    }
    table.print();
}

/// The contention row of lockstore: a [`LockClient`] waiting for the key
/// (`wait_forever`, woken the store's way), then releasing it. What counts
/// is the acquire. Keys are `{tag}-{index}`.
pub fn waiting_client<S: LockStore>(
    name: &str,
    client: &LockClient<S>,
    tag: &str,
    ttl: Duration,
) -> Variant {
    let client = client.clone();
    let tag = tag.to_owned();
    Variant::self_timed(name, move |key| {
        let client = client.clone();
        let key = format!("{tag}-{key}");
        async move {
            let started = Instant::now();
            let lease = client
                .acquire_lease(key.as_str(), AcquireOptions::new(ttl).wait_forever())
                .await
                .expect("acquire");
            let took = started.elapsed();
            client.release(&lease).await.expect("release");
            took
        }
    })
}

/// The contention table: 1, 8 and 64 clients on one key and on 64 keys,
/// 256 cycles per round split over the clients. `variants(tag)` gives the
/// variants for one cell, keys named after `tag`: the server's round trip
/// first (the unit), then lockstore's and the peers' (named `peer…`).
pub async fn contention_table(
    server: &str,
    rounds: usize,
    mut variants: impl FnMut(&str) -> Vec<Variant>,
) {
    let mut table = Table::new(
        format!(
            "{server} contention: acquire (waiting) + release at once, {rounds} rounds interleaved, 256 cycles per round split over the clients"
        ),
        &[
            "clients × keys",
            "variant",
            "cycles/s",
            "p99 acquire",
            "p99 in RTT",
            "vs best peer (cycles/s)",
        ],
    );
    for (clients, keys) in [(1, 1), (8, 1), (64, 1), (1, 64), (8, 64), (64, 64)] {
        let plan = Plan {
            rounds,
            per_round: (256 / clients).max(4),
            warm_up: keys.min(64),
        };
        let figures = concurrent(
            &variants(&format!("c{clients}k{keys}")),
            plan,
            clients,
            keys,
        )
        .await;
        let rtt = &figures[0];
        let peer = best_peer(&figures);
        for f in &figures[1..] {
            table.row(vec![
                format!("{clients} × {keys}"),
                f.name.clone(),
                format!("{:.0}", f.per_second()),
                us(f.p99()),
                format!("{:.1}", f.p99_in(rtt)),
                format!("{:.2}×", f.rate_over(peer)),
            ]);
        }
    }
    table.print();
}

/// The permits row of a contention cell: a [`Semaphore`] client waiting for
/// one of `limit` permits of the key (woken the store's way), then
/// releasing it. What counts is the acquire. Keys are `{tag}-{index}`.
pub fn waiting_permit<S: ?Sized + SemaphoreStore>(
    name: &str,
    semaphore: &Semaphore<S>,
    limit: u32,
    tag: &str,
    ttl: Duration,
) -> Variant {
    let semaphore = semaphore.clone();
    let tag = tag.to_owned();
    let limit = PermitLimit::new(limit).expect("a valid limit");
    Variant::self_timed(name, move |key| {
        let semaphore = semaphore.clone();
        let key = format!("{tag}-{key}");
        async move {
            let started = Instant::now();
            let permit = semaphore
                .acquire_lease(key.as_str(), limit, AcquireOptions::new(ttl).wait_forever())
                .await
                .expect("acquire a permit");
            let took = started.elapsed();
            semaphore.release(&permit).await.expect("release");
            took
        }
    })
}

/// The semaphore table: permit acquire + release cycles/s next to the
/// lock's, on one server, uncontended and with 8 and 64 clients on one key
/// (N = 4 permits), the lock and permit rows interleaved in every round.
pub async fn semaphore_table<S>(server: &str, rounds: usize, store: S, ttl: Duration)
where
    S: LockStore + SemaphoreStore + Clone,
{
    let locks = LockClient::new(store.clone());
    let semaphores = Semaphore::new(store);
    let mut table = Table::new(
        format!(
            "{server} semaphores: acquire (waiting) + release, one key, {rounds} rounds interleaved, 256 cycles per round split over the clients"
        ),
        &[
            "clients",
            "variant",
            "cycles/s",
            "p50 acquire",
            "p99 acquire",
            "vs lock (cycles/s)",
        ],
    );
    for clients in [1, 8, 64] {
        let plan = Plan {
            rounds,
            per_round: (256 / clients).max(4),
            warm_up: 4,
        };
        let tag = format!("sem-c{clients}");
        let variants = [
            waiting_client("lock (1 holder)", &locks, &format!("{tag}-lock"), ttl),
            waiting_permit(
                "semaphore, N = 1",
                &semaphores,
                1,
                &format!("{tag}-n1"),
                ttl,
            ),
            waiting_permit(
                "semaphore, N = 4",
                &semaphores,
                4,
                &format!("{tag}-n4"),
                ttl,
            ),
        ];
        let figures = concurrent(&variants, plan, clients, 1).await;
        let lock = &figures[0];
        for f in &figures {
            table.row(vec![
                clients.to_string(),
                f.name.clone(),
                format!("{:.0}", f.per_second()),
                us(f.p50()),
                us(f.p99()),
                format!("{:.2}×", f.rate_over(lock)),
            ]);
        }
    }
    table.print();
}

/// The hand-off requests table: `waiters` tasks wait on one key held by
/// another client, then the holder releases and each waiter, in turn,
/// takes the key and releases it at once. Requests are counted at the
/// store (a [`CountingStore`]) from the holder's release to the last
/// waiter's, and divided by the hand-offs (one per waiter). The waiters
/// share one [`LockClient`] (they wait in its line, the front one asking)
/// or have one client each (every release wakes them all, as every
/// client did before lines). Waits are from the holder's release to each
/// waiter holding the key: the last in line waits for all the others.
/// `rounds` rounds per row, in alternation; default backoff.
pub async fn handoff_requests_table(
    server: &str,
    rounds: usize,
    store: Arc<dyn LockStore>,
    ttl: Duration,
) {
    let mut table = Table::new(
        format!(
            "{server} hand-offs among the waiters of one key: requests counted at the store per hand-off, {rounds} rounds alternating"
        ),
        &[
            "waiters",
            "clients",
            "requests per hand-off",
            "goal ≤ 3",
            "hand-offs/s",
            "p50 wait",
            "p99 wait",
        ],
    );
    for waiters in [8, 64] {
        let mut rows: [(u64, u64, Duration, Vec<Duration>); 2] = Default::default();
        for round in 0..rounds {
            for (shared, row) in rows.iter_mut().enumerate() {
                let tag = format!("handoff-requests-w{waiters}-r{round}-s{shared}");
                let (requests, took, waits) =
                    handoff_round(Arc::clone(&store), waiters, shared == 0, &tag, ttl).await;
                row.0 += requests;
                row.1 += waiters as u64;
                row.2 += took;
                row.3.extend(waits);
            }
        }
        for (shared, (requests, handoffs, took, mut waits)) in rows.into_iter().enumerate() {
            waits.sort();
            let per = requests as f64 / handoffs as f64;
            table.row(vec![
                waiters.to_string(),
                if shared == 0 {
                    "one, shared (in line)".into()
                } else {
                    "one each (all woken)".into()
                },
                format!("{per:.2}"),
                at_most(per, 3.0),
                format!("{:.0}", handoffs as f64 / took.as_secs_f64()),
                us(percentile(&waits, 50.0)),
                us(percentile(&waits, 99.0)),
            ]);
        }
    }
    table.print();
}

/// One round of [`handoff_requests_table`]: requests counted, time from
/// the holder's release to the last waiter's, and every waiter's wait.
async fn handoff_round(
    store: Arc<dyn LockStore>,
    waiters: usize,
    shared: bool,
    key: &str,
    ttl: Duration,
) -> (u64, Duration, Vec<Duration>) {
    let counting = Arc::new(CountingStore::new(Arc::clone(&store)));
    let holder = LockClient::from_arc(store);
    let held = holder
        .acquire_lease(key, AcquireOptions::new(ttl))
        .await
        .expect("holder");
    let shared_client = LockClient::from_arc(Arc::clone(&counting) as Arc<dyn LockStore>);
    let (released_tx, released_rx) = tokio::sync::watch::channel(None::<Instant>);
    let tasks: Vec<_> = (0..waiters)
        .map(|_| {
            let client = if shared {
                shared_client.clone()
            } else {
                LockClient::from_arc(Arc::clone(&counting) as Arc<dyn LockStore>)
            };
            let key = key.to_owned();
            let released = released_rx.clone();
            tokio::spawn(async move {
                let lease = client
                    .acquire_lease(key.as_str(), AcquireOptions::new(ttl).wait_forever())
                    .await
                    .expect("waiter");
                let at = Instant::now();
                client.release(&lease).await.expect("release waiter");
                let released = released.borrow().expect("the holder released first");
                (at - released, Instant::now())
            })
        })
        .collect();
    counting.counts().until_tried(waiters).await;
    let before = counting.calls();
    let released = Instant::now();
    released_tx.send_replace(Some(released));
    holder.release(&held).await.expect("release");
    let mut waits = Vec::with_capacity(waiters);
    let mut last = released;
    for task in tasks {
        let (wait, done) = task.await.expect("waiter task");
        waits.push(wait);
        last = last.max(done);
    }
    (counting.calls() - before, last - released, waits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&sorted, 99.0), Duration::from_millis(99));
        assert_eq!(at_most(2.0, 2.4), "met");
        assert_eq!(at_most(3.0, 2.0), "missed by 50%");
        assert_eq!(at_least(50.0, 100.0), "missed by 50%");
    }

    #[tokio::test]
    async fn every_variant_runs_every_round() {
        let plan = Plan {
            rounds: 3,
            per_round: 4,
            warm_up: 1,
        };
        let variants = [
            Variant::timed("a", |_| async {}),
            Variant::self_timed("b", |_| async { Duration::from_millis(2) }),
        ];
        let figures = concurrent(&variants, plan, 2, 2).await;
        assert_eq!(figures.len(), 2);
        assert!(figures.iter().all(|f| f.rounds.len() == 3));
        assert_eq!(figures[1].p50(), Duration::from_millis(2));
    }
}
