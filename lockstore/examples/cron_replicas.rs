//! A cron job in a service with three replicas: each replica's scheduler
//! (`tokio-cron-scheduler`) fires the job every second, and each tick runs
//! once, on whichever replica gets the tick's lock first
//! ([`LockClient::run_tick`](lockstore::LockClient::run_tick)).
//!
//! Run without arguments, it starts three replicas as three processes on one
//! SQLite file for a few seconds, then prints which replica ran each tick and
//! exits non-zero if any tick ran twice:
//!
//! ```text
//! cargo run -p lockstore --example cron_replicas --features sqlite [seconds]
//! ```
//!
//! In a real service only [`replica`] is needed, with the service's store
//! URL (`postgres://…`, `redis://…`, `dynamodb://…`) instead of the file.
//! Its test (at the bottom) runs the same three processes and checks every
//! tick that any replica fired: run exactly once.

use std::collections::BTreeMap;
use std::error::Error;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockstore::OwnerLabel;
use lockstore::schedule::{Tick, TickOptions, tick_of};
use tokio_cron_scheduler::{Job, JobScheduler};

/// The job's name: with the tick's time, the key every replica asks for.
const JOB: &str = "sync-orders";
/// Every second, in `tokio-cron-scheduler`'s six-field cron syntax.
const EVERY_SECOND: &str = "* * * * * *";
const PERIOD: Duration = Duration::from_secs(1);

/// One replica: a scheduler firing [`JOB`] every second for `seconds`. Each
/// firing asks for its tick (named by the scheduled second, not by when the
/// timer fired) and runs the job only if no other replica has it. `log`
/// gets a line per firing saying what came of it, for the count at the end.
pub async fn replica(
    name: &str,
    store_url: &str,
    log: &Path,
    seconds: u64,
) -> Result<(), Box<dyn Error>> {
    let store = lockstore::open(store_url).await?;
    // Idempotent: every replica may run it at start-up (or run it once at
    // deploy time, `lockctl setup`).
    store.ensure_schema().await?;
    let client = store.lock_client().with_owner(OwnerLabel::new(name)?);
    let (name, log) = (name.to_owned(), log.to_owned());
    // Jobs still running when the scheduler stops are waited for, so that
    // every firing that asked for its tick also logs what came of it.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&in_flight);
    let scheduler = JobScheduler::new().await?;
    scheduler
        .add(Job::new_async(EVERY_SECOND, move |_job, _scheduler| {
            let (client, name, log) = (client.clone(), name.clone(), log.clone());
            let in_flight = InFlight::enter(&counter);
            Box::pin(async move {
                let _in_flight = in_flight;
                // The scheduler does not say which tick it fires for: the
                // nearest whole second is it, for a timer less than half a
                // second off.
                let scheduled = tick_of(SystemTime::now(), PERIOD);
                let second = scheduled.duration_since(UNIX_EPOCH).unwrap().as_secs();
                // Held at most 10 s if this replica dies mid-run; at least
                // half the period, so a replica whose timer fires late finds
                // the tick taken.
                let options = TickOptions::new(Duration::from_secs(10)).hold_at_least(PERIOD / 2);
                let outcome = client
                    .run_tick(JOB, scheduled, options, |lease| async move {
                        // The job itself: pass the fence to what it writes.
                        lease.fence()
                    })
                    .await;
                append(
                    &log,
                    &match outcome {
                        Ok(Tick::Ran { fence, .. }) => format!("ran {second} {name} {fence}"),
                        Ok(Tick::Skipped { .. }) => format!("skipped {second} {name}"),
                        Err(err) => format!("error {second} {name} {err}"),
                    },
                );
            })
        })?)
        .await?;
    scheduler.start().await?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let mut scheduler = scheduler;
    scheduler.shutdown().await?;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    while in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Counts a job from its firing to its end.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Appends one line in one write: the replicas share the file.
fn append(log: &Path, line: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the run log opens");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("the run log takes a line");
}

/// What the log says about one tick.
#[derive(Debug, Default)]
pub struct TickRecord {
    /// Replicas whose scheduler fired for it (and logged the outcome).
    pub fired: Vec<String>,
    /// Replicas that ran the job for it, with their fences.
    pub ran: Vec<(String, u64)>,
    /// Errors replicas got asking for it.
    pub errors: Vec<String>,
}

/// The log, by tick (Unix second).
pub fn read_log(log: &Path) -> BTreeMap<u64, TickRecord> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut ticks: BTreeMap<u64, TickRecord> = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(what), Some(second), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(second) = second.parse() else {
            continue;
        };
        let tick = ticks.entry(second).or_default();
        tick.fired.push(name.to_owned());
        match what {
            "skipped" => {}
            "ran" => tick.ran.push((
                name.to_owned(),
                parts.next().and_then(|f| f.parse().ok()).unwrap_or(0),
            )),
            _ => tick
                .errors
                .push(format!("{name}: {}", parts.next().unwrap_or(""))),
        }
    }
    ticks
}

/// Starts `replicas` copies of `exe` as replica processes (each with
/// `args(name)`), waits for them, and reads the log.
fn run_replicas(
    replicas: &[&str],
    log: &Path,
    mut command: impl FnMut(&str) -> Command,
) -> BTreeMap<u64, TickRecord> {
    let children: Vec<_> = replicas
        .iter()
        .map(|name| command(name).spawn().expect("a replica process starts"))
        .collect();
    for mut child in children {
        let status = child.wait().expect("a replica process ends");
        assert!(status.success(), "a replica process failed: {status}");
    }
    read_log(log)
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lockstore-cron-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, name, store, log, seconds] = &args[..]
        && flag == "--replica"
    {
        let seconds = seconds.parse().expect("seconds");
        return match replica(name, store, Path::new(log), seconds).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("{name}: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = scratch_dir();
    let store = format!("sqlite:{}", dir.join("locks.db").display());
    let log = dir.join("runs.log");
    let _ = std::fs::remove_file(&log);
    println!("three replicas, each firing {JOB} every second for {seconds} s, on {store}");
    let exe = std::env::current_exe().expect("this program's path");
    let ticks = run_replicas(&["replica-1", "replica-2", "replica-3"], &log, |name| {
        let mut command = Command::new(&exe);
        command.args(["--replica", name, &store]);
        command.arg(&log).arg(seconds.to_string());
        command
    });
    let (mut twice, mut failed) = (0, 0);
    println!("{:>12}  {:<7}  {:<12}  fence", "tick", "fired", "ran on");
    for (second, tick) in &ticks {
        let ran: Vec<_> = tick.ran.iter().map(|(name, _)| name.as_str()).collect();
        let fence = tick.ran.first().map_or(0, |(_, fence)| *fence);
        println!(
            "{second:>12}  {:<7}  {:<12}  {fence}{}",
            tick.fired.len(),
            ran.join(","),
            if tick.errors.is_empty() {
                String::new()
            } else {
                format!("  errors: {:?}", tick.errors)
            }
        );
        twice += usize::from(tick.ran.len() > 1);
        failed += usize::from(tick.ran.is_empty());
    }
    let _ = std::fs::remove_dir_all(&dir);
    if twice == 0 && failed == 0 {
        println!("every tick ran once");
        ExitCode::SUCCESS
    } else {
        println!("{twice} tick(s) ran more than once, {failed} not at all");
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLICA_VAR: &str = "LOCKSTORE_CRON_REPLICA";

    /// A replica process: this test binary re-run by the test below with
    /// [`REPLICA_VAR`] set (`name store log seconds`); a no-op otherwise.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replica_process() {
        let Ok(spec) = std::env::var(REPLICA_VAR) else {
            return;
        };
        let spec: Vec<&str> = spec.splitn(4, '\t').collect();
        let [name, store, log, seconds] = spec[..] else {
            panic!("{REPLICA_VAR} is name, store, log and seconds, tab-separated");
        };
        replica(name, store, Path::new(log), seconds.parse().unwrap())
            .await
            .unwrap();
    }

    /// Three replica processes fire every second on one SQLite file: every
    /// tick that any of them fired ran exactly once — never twice, never not
    /// at all — and nothing failed. (How many ticks fire in the window
    /// depends on the machine; that each fired tick ran once does not.)
    #[test]
    fn three_replicas_run_each_fired_tick_once() {
        let dir = scratch_dir().join("test");
        std::fs::create_dir_all(&dir).unwrap();
        let store = format!("sqlite:{}", dir.join("locks.db").display());
        let log = dir.join("runs.log");
        let _ = std::fs::remove_file(&log);
        let exe = std::env::current_exe().unwrap();
        let ticks = run_replicas(&["replica-1", "replica-2", "replica-3"], &log, |name| {
            let mut command = Command::new(&exe);
            command.args(["--exact", "tests::replica_process", "--nocapture"]);
            command.env(
                REPLICA_VAR,
                format!("{name}\t{store}\t{}\t4", log.display()),
            );
            command
        });
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            ticks.values().any(|tick| tick.fired.len() > 1),
            "no tick was fired by two replicas: the test proves nothing ({ticks:?})"
        );
        for (second, tick) in &ticks {
            assert!(
                tick.ran.len() <= 1,
                "tick {second} ran {} times: {tick:?}",
                tick.ran.len()
            );
            assert!(
                tick.errors.is_empty(),
                "tick {second}: a replica failed: {tick:?}"
            );
            assert!(
                !tick.ran.is_empty(),
                "tick {second} was fired but ran nowhere: {tick:?}"
            );
        }
        let fences: Vec<u64> = ticks
            .values()
            .flat_map(|t| t.ran.iter().map(|r| r.1))
            .collect();
        assert!(fences.iter().all(|&fence| fence > 0), "{ticks:?}");
    }
}
