//! Whole-process cost of `lockctl`, next to awsflock's CLI and `flock(1)`:
//! what a shell script or cron job pays per command. Prints a table;
//! asserts nothing.
//!
//! Variants, interleaved round by round so a busy machine slows them alike:
//!
//! * `flock(1) FILE true` — the floor: a process that takes a local lock and
//!   runs `true`;
//! * `lockctl run KEY -- true` on SQLite (a file in a temporary directory),
//!   from process start to exit: open the store, acquire, run the child,
//!   release;
//! * `lockctl acquire` + `lockctl release` (two processes, a lease id handed
//!   from one to the other, as a script does) on moto and on dynalite;
//! * `awsflock acquire` + `awsflock release` on the same two emulators
//!   (awsflock 0.2.0 from PyPI, installed into `.cache/awsflock-0.2.0` on
//!   first use; `AWSFLOCK=/path/to/awsflock` uses another).
//!
//! ```text
//! eval "$(scripts/servers.sh start)"
//! cargo bench -p lockctl --bench cli
//! CLI_BENCH_ROUNDS=9 CLI_BENCH_CYCLES=20 cargo bench -p lockctl --bench cli
//! ```
//!
//! The DynamoDB emulators come from `LOCKSTORE_TEST_DYNAMODB_URL` (moto) and
//! `LOCKSTORE_TEST_DYNALITE_URL` (dynalite); without them the bench stops
//! and says how to start them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const LOCKCTL: &str = env!("CARGO_BIN_EXE_lockctl");
const AWSFLOCK_VERSION: &str = "0.2.0";

/// One way of taking and giving back a lock from the shell.
struct Variant {
    name: String,
    /// One cycle: lock, (run,) unlock. Returns an error text if it failed.
    cycle: Box<dyn Fn(usize) -> Result<(), String>>,
    samples: Vec<Duration>,
    failures: u64,
}

fn main() {
    let rounds = env_number("CLI_BENCH_ROUNDS", 5);
    let cycles = env_number("CLI_BENCH_CYCLES", 20);
    let moto = server("LOCKSTORE_TEST_DYNAMODB_URL", "moto");
    let dynalite = server("LOCKSTORE_TEST_DYNALITE_URL", "dynalite");
    let awsflock = awsflock();
    let scratch = std::env::temp_dir().join(format!("lockctl-cli-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("a scratch directory");
    let run_id = std::process::id();

    let mut variants = Vec::new();

    let flock_file = scratch.join("flock.lock");
    if Command::new("flock").arg("--version").output().is_ok() {
        variants.push(variant("flock(1) FILE true (local floor)", move |_| {
            checked(Command::new("flock").arg(&flock_file).arg("true"), "flock").map(drop)
        }));
    }

    let sqlite = format!("sqlite:{}", scratch.join("locks.db").display());
    variants.push(variant("lockctl run KEY -- true (SQLite)", move |i| {
        let key = format!("bench/run/{run_id}/{i}");
        checked(
            lockctl(&sqlite).args(["run", &key, "--", "true"]),
            "lockctl run",
        )
        .map(drop)
    }));

    for (emulator, endpoint) in [("moto", &moto), ("dynalite", &dynalite)] {
        let table = format!("lockctl_cli_bench_{emulator}");
        let url = format!(
            "dynamodb://{table}?endpoint={endpoint}&region=us-east-1\
             &access_key_id=test&secret_access_key=test"
        );
        let setup = lockctl(&url).arg("setup").output().expect("lockctl runs");
        assert!(
            setup.status.success(),
            "lockctl setup on {emulator}: {}",
            String::from_utf8_lossy(&setup.stderr)
        );
        variants.push(variant(
            &format!("lockctl acquire + release ({emulator})"),
            move |i| {
                let key = format!("bench/{run_id}/{i}");
                let out = checked(
                    lockctl(&url).args(["acquire", &key, "--ttl", "1m"]),
                    "lockctl acquire",
                )?;
                let lease = first_word(&out)?;
                checked(
                    lockctl(&url).args(["release", &key, &lease]),
                    "lockctl release",
                )
                .map(drop)
            },
        ));

        let aws_env = aws_env(endpoint);
        create_awsflock_table(&awsflock, &aws_env, emulator);
        let awsflock = awsflock.clone();
        variants.push(variant(
            &format!("awsflock acquire + release ({emulator})"),
            move |i| {
                let key = format!("bench/{run_id}/{i}");
                let out = checked(
                    Command::new(&awsflock).envs(aws_env.iter().cloned()).args([
                        "acquire",
                        &key,
                        "--no-wait",
                        "--lease-duration",
                        "1m",
                    ]),
                    "awsflock acquire",
                )?;
                let lease = first_word(&out)?;
                checked(
                    Command::new(&awsflock)
                        .envs(aws_env.iter().cloned())
                        .args(["release", &key, &lease]),
                    "awsflock release",
                )
                .map(drop)
            },
        ));
    }

    // One warm-up cycle each (page cache, the emulators' first requests).
    for v in &variants {
        if let Err(err) = (v.cycle)(usize::MAX) {
            panic!("{} failed its warm-up cycle: {err}", v.name);
        }
    }
    let mut next = 0_usize;
    for _ in 0..rounds {
        for v in &mut variants {
            for _ in 0..cycles {
                next += 1;
                let started = Instant::now();
                match (v.cycle)(next) {
                    Ok(()) => v.samples.push(started.elapsed()),
                    Err(err) => {
                        v.failures += 1;
                        eprintln!("{}: {err}", v.name);
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    print_table(&mut variants, rounds, cycles);
}

fn variant(name: &str, cycle: impl Fn(usize) -> Result<(), String> + 'static) -> Variant {
    Variant {
        name: name.to_owned(),
        cycle: Box::new(cycle),
        samples: Vec::new(),
        failures: 0,
    }
}

fn print_table(variants: &mut [Variant], rounds: usize, cycles: usize) {
    println!(
        "\nlockctl CLI bench: {rounds} rounds × {cycles} cycles per variant, interleaved; \
         one cycle = lock, (run `true`,) unlock, from process start to exit\n"
    );
    println!(
        "| variant | cycles | p50 ms | p90 ms | cycles/s (1 / mean) | failed |\n|---|---|---|---|---|---|"
    );
    for v in variants.iter_mut() {
        v.samples.sort();
        let n = v.samples.len();
        if n == 0 {
            println!("| {} | 0 | – | – | – | {} |", v.name, v.failures);
            continue;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let p50 = ms(v.samples[n / 2]);
        let p90 = ms(v.samples[(n * 9 / 10).min(n - 1)]);
        let mean = v.samples.iter().map(|d| d.as_secs_f64()).sum::<f64>() / n as f64;
        println!(
            "| {} | {n} | {p50:.1} | {p90:.1} | {:.1} | {} |",
            v.name,
            1.0 / mean,
            v.failures
        );
    }
    println!();
}

fn lockctl(url: &str) -> Command {
    let mut command = Command::new(LOCKCTL);
    command
        .env("LOCKSTORE_URL", url)
        .env_remove("LOCKCTL_LOG")
        .stdin(Stdio::null());
    command
}

/// Runs `command`; its stdout on success, else what it said.
fn checked(command: &mut Command, what: &str) -> Result<String, String> {
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("{what} did not start: {err}"))?;
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    } else {
        Err(format!(
            "{what} exited with {status}: {}",
            String::from_utf8_lossy(&stderr).trim()
        ))
    }
}

fn first_word(out: &str) -> Result<String, String> {
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| format!("no lease id in {out:?}"))
}

fn server(var: &str, name: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            eprintln!(
                "the CLI bench needs {name}: set {var}, e.g. with `eval \"$(scripts/servers.sh start)\"`"
            );
            std::process::exit(2);
        }
    }
}

fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWSFLOCK_TABLE", "awsflock_cli_bench"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// awsflock's `create-table` also turns on TTL, which dynalite does not
/// implement: the table is made, then the call fails. A table that exists
/// (a second run) fails too. Either way an acquire + release must work.
fn create_awsflock_table(awsflock: &Path, env: &[(String, String)], emulator: &str) {
    let _ = Command::new(awsflock)
        .envs(env.iter().cloned())
        .arg("create-table")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let probe = format!("bench/probe/{}", std::process::id());
    let acquired = checked(
        Command::new(awsflock)
            .envs(env.iter().cloned())
            .args(["acquire", &probe, "--no-wait"]),
        "awsflock acquire",
    )
    .and_then(|out| first_word(&out));
    let lease =
        acquired.unwrap_or_else(|err| panic!("awsflock does not work on {emulator}: {err}"));
    let _ = Command::new(awsflock)
        .envs(env.iter().cloned())
        .args(["release", &probe, &lease])
        .status();
}

/// awsflock's executable: `AWSFLOCK`, else a venv under `.cache` made on
/// first use (its own venv: awsflock pins click 7, which would break moto's
/// Flask if installed beside it).
fn awsflock() -> PathBuf {
    if let Ok(path) = std::env::var("AWSFLOCK")
        && !path.is_empty()
    {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".cache")
        .join(format!("awsflock-{AWSFLOCK_VERSION}"));
    let exe = venv.join("bin").join("awsflock");
    if exe.exists() {
        return exe;
    }
    eprintln!(
        "installing awsflock {AWSFLOCK_VERSION} into {}",
        venv.display()
    );
    let python = std::env::var("LOCKSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let made = Command::new(&python)
        .args(["-m", "venv"])
        .arg(&venv)
        .status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "`{python} -m venv` failed (Debian: apt-get install python3-venv)"
    );
    let pip = Command::new(venv.join("bin").join("pip"))
        .args([
            "install",
            "--quiet",
            &format!("awsflock=={AWSFLOCK_VERSION}"),
        ])
        .status();
    assert!(
        pip.is_ok_and(|s| s.success()) && exe.exists(),
        "pip install awsflock=={AWSFLOCK_VERSION} failed"
    );
    exe
}

fn env_number(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}
