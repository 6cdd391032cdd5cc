//! Concurrency lanes: messages carry a lane, each lane has its own limit,
//! and workers in several processes never run more of a lane's messages at
//! once than its limit — a semaphore per lane
//! ([`Semaphore::with_permit`](lockstore::semaphore::Semaphore::with_permit)).
//!
//! Run without arguments, it starts three worker processes on one SQLite
//! file. Each takes messages of the lanes `urgent` (limit 2) and `bulk`
//! (limit 3) and, while it holds a lane's permit, marks itself inside that
//! lane (a file per permit) and counts who else is: the most ever inside a
//! lane is printed next to its limit. Then a worker takes a permit and dies
//! without releasing it, and the program shows its permit coming back
//! within one TTL:
//!
//! ```text
//! cargo run -p lockstore --example lanes --features sqlite
//! ```
//!
//! In a real service only [`worker`] is needed, with the service's store
//! URL (`postgres://…`, `redis://…`) instead of the file.

use std::error::Error;

/// Errors that cross tasks.
type BoxError = Box<dyn Error + Send + Sync>;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use lockstore::semaphore::PermitLimit;
use lockstore::{AcquireOptions, OwnerLabel};
use tokio::time::Instant;

/// The lanes and their limits.
const LANES: [(&str, u32); 2] = [("urgent", 2), ("bulk", 3)];
/// How long a permit lives unless renewed: a dead worker's permit comes
/// back within it.
const TTL: Duration = Duration::from_secs(2);

/// One worker: handles `messages` messages, cycling through the lanes, with
/// up to four at once in this process. Each runs under a permit of its
/// lane; `inside` gets a file per running message, so a lane's directory
/// counts who is in it across processes.
pub async fn worker(
    name: &str,
    store_url: &str,
    inside: &Path,
    messages: usize,
) -> Result<u32, BoxError> {
    let store = lockstore::open(store_url).await?;
    store.ensure_schema().await?;
    let lanes = store.semaphore_client()?.with_owner(OwnerLabel::new(name)?);
    let options = AcquireOptions::new(TTL).wait_up_to(Duration::from_secs(60));
    let mut tasks = tokio::task::JoinSet::new();
    let mut most_inside = 0;
    for n in 0..messages {
        let (lane, limit) = LANES[n % LANES.len()];
        let (lanes, dir) = (lanes.clone(), inside.join(lane));
        tasks.spawn(async move {
            let outcome: Result<u32, BoxError> = lanes
                .with_permit(
                    format!("lanes/{lane}"),
                    PermitLimit::new(limit)?,
                    options,
                    |permit| async move {
                        let mark = dir.join(permit.fence().to_string());
                        std::fs::write(&mark, b"")?;
                        let now_inside = std::fs::read_dir(&dir)?.count() as u32;
                        if now_inside > limit {
                            return Err(format!("{now_inside} messages inside lane {lane}, over its limit of {limit}").into());
                        }
                        // The message's work.
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        std::fs::remove_file(&mark)?;
                        Ok::<u32, BoxError>(now_inside)
                    },
                )
                .await?;
            outcome
        });
        if tasks.len() >= 4
            && let Some(done) = tasks.join_next().await
        {
            most_inside = most_inside.max(done.map_err(|err| -> BoxError { err.into() })??);
        }
    }
    while let Some(done) = tasks.join_next().await {
        most_inside = most_inside.max(done.map_err(|err| -> BoxError { err.into() })??);
    }
    Ok(most_inside)
}

/// A worker that takes a permit of `lanes/solo` (limit 1) and dies holding
/// it: no release, no drop, as a crash or `kill -9`.
async fn die_holding_a_permit(store_url: &str) -> Result<(), Box<dyn Error>> {
    let store = lockstore::open(store_url).await?;
    let guard = store
        .semaphore_client()?
        .acquire("lanes/solo", PermitLimit::new(1)?, AcquireOptions::new(TTL))
        .await?;
    println!(
        "doomed worker: holding lanes/solo with fence {}, dying",
        guard.fence()
    );
    std::process::exit(0);
}

fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("lockstore-lanes-{}", std::process::id()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("worker") => {
            let (name, store, inside) = (&args[2], &args[3], Path::new(&args[4]));
            return match worker(name, store, inside, 24).await {
                Ok(most) => {
                    println!("{name}: done (most inside a lane at once, as it saw: {most})");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("{name}: {err}");
                    ExitCode::FAILURE
                }
            };
        }
        Some("die") => {
            if let Err(err) = die_holding_a_permit(&args[2]).await {
                eprintln!("doomed worker: {err}");
            }
            return ExitCode::FAILURE;
        }
        _ => {}
    }
    let dir = scratch_dir();
    let inside = dir.join("inside");
    for (lane, _) in LANES {
        std::fs::create_dir_all(inside.join(lane)).expect("a scratch directory");
    }
    let store = format!("sqlite:{}", dir.join("lanes.db").display());
    let exe = std::env::current_exe().expect("this program's path");
    let workers: Vec<_> = (1..=3)
        .map(|n| {
            Command::new(&exe)
                .args(["worker", &format!("worker-{n}"), &store])
                .arg(&inside)
                .spawn()
                .expect("a worker process starts")
        })
        .collect();
    let mut ok = true;
    for mut worker in workers {
        ok &= worker.wait().is_ok_and(|status| status.success());
    }
    println!("lane limits: {LANES:?}; every worker checked its lane on entry");

    let died = Command::new(&exe).args(["die", &store]).status();
    ok &= died.is_ok();
    let lanes = lockstore::open(&store)
        .await
        .and_then(|store| Ok(store.semaphore_client()?))
        .expect("the store opens");
    let asked = Instant::now();
    match lanes
        .acquire(
            "lanes/solo",
            PermitLimit::new(1).expect("a valid limit"),
            AcquireOptions::new(TTL).wait_up_to(TTL * 5),
        )
        .await
    {
        Ok(guard) => {
            println!(
                "the dead worker's permit came back after {:?} (TTL {TTL:?}); fence {}",
                asked.elapsed(),
                guard.fence()
            );
            let _ = guard.release().await;
        }
        Err(err) => {
            println!("the dead worker's permit did not come back: {err}");
            ok = false;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
