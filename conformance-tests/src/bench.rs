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

use tokio::time::Instant;

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
