//! A second OS process for a case: the test binary re-run as a child.
//!
//! A case that needs a holder in another process (one it can stop with
//! `SIGSTOP`) calls [`spawn`]: the child runs the same test
//! (`<binary> <test name> --exact`) with [`NAMESPACE_VAR`] set, so
//! [`Ctx::is_child`] is true there and the case plays the child's part,
//! in the parent's namespace, through the same harness and the real
//! backend. Parent and child talk in lines: the child [`report`]s on stdout
//! (lines holding [`REPORT_PREFIX`]; the test harness's own output is
//! skipped) and reads commands from stdin ([`next_command`]).

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use crate::Ctx;

/// Set in a child to the parent's namespace.
pub const NAMESPACE_VAR: &str = "LOCKSTORE_CONFORMANCE_CHILD_NAMESPACE";

/// What starts a line the parent reads from the child.
pub const REPORT_PREFIX: &str = "lockstore-child: ";

/// How long the parent waits for one line, or for the child to exit: only
/// to catch a hang (a child building a store may wait on a busy server).
const HANG: Duration = Duration::from_secs(60);

/// The parent's namespace, in a child.
pub fn namespace() -> Option<String> {
    std::env::var(NAMESPACE_VAR).ok()
}

/// A variable the parent set for the child.
///
/// # Panics
/// When it is missing: the child was not started by [`spawn`].
pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("the child process needs {name} from its parent"))
}

/// A running child; killed when dropped (even when stopped).
#[derive(Debug)]
pub struct ChildProcess {
    process: tokio::process::Child,
    pid: Pid,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// Starts the case's own test again as a child, with `env` set beside the
/// namespace.
///
/// # Panics
/// When the test's name is unknown (the case did not run through
/// [`suite!`](crate::suite)) or the binary cannot be started.
pub fn spawn(ctx: &Ctx, env: &[(&str, String)]) -> ChildProcess {
    let name = ctx
        .test_name()
        .expect("a case with a child process runs through suite!, which names the test");
    let binary = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new(binary);
    command
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(NAMESPACE_VAR, ctx.namespace())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // The parent's servers, containers included: a child that looked for
    // its own would start a second container and hold its lease there.
    for (key, value) in crate::provision::found_servers() {
        command.env(key, value);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut process = command.spawn().expect("start the child test process");
    let pid = Pid::from_raw(
        i32::try_from(process.id().expect("a running child has a pid")).expect("pids fit i32"),
    );
    let stdin = process.stdin.take().expect("piped stdin");
    let stdout = BufReader::new(process.stdout.take().expect("piped stdout")).lines();
    ChildProcess {
        process,
        pid,
        stdin,
        stdout,
    }
}

impl ChildProcess {
    /// Stops the child (`SIGSTOP`): none of its threads runs until
    /// [`resume`](Self::resume), its renewal task included.
    pub fn stop(&self) {
        kill(self.pid, Signal::SIGSTOP).expect("SIGSTOP the child");
    }

    /// Continues a stopped child (`SIGCONT`).
    pub fn resume(&self) {
        kill(self.pid, Signal::SIGCONT).expect("SIGCONT the child");
    }

    /// Sends the child one command line.
    pub async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the child");
        self.stdin.flush().await.expect("flush to the child");
    }

    /// The child's next report whose first word is `what`, without it.
    ///
    /// # Panics
    /// When the child exits first or says nothing for a minute.
    pub async fn expect(&mut self, what: &str) -> String {
        let give_up = Instant::now() + HANG;
        loop {
            let line = tokio::time::timeout_at(give_up, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| {
                    panic!("the child said nothing for {HANG:?} (waiting for {what})")
                })
                .expect("read the child's output");
            let Some(line) = line else {
                panic!("the child exited before reporting {what} (its stderr is above)")
            };
            // Anywhere in the line: the test harness's `test … ... ` may
            // come first, without a newline.
            if let Some(at) = line.find(REPORT_PREFIX) {
                let report = &line[at + REPORT_PREFIX.len()..];
                let (word, rest) = report.split_once(' ').unwrap_or((report, ""));
                assert_eq!(word, what, "the child reported {report:?}, not {what}");
                return rest.to_owned();
            }
        }
    }

    /// Waits for the child to exit, and fails the case unless it passed.
    pub async fn finish(mut self) {
        let status = tokio::time::timeout(HANG, self.process.wait())
            .await
            .expect("the child did not exit")
            .expect("wait for the child");
        assert!(
            status.success(),
            "the child failed ({status}); its stderr is above"
        );
    }
}

/// In the child: tells the parent `line`.
pub fn report(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{REPORT_PREFIX}{line}").expect("write to the parent");
    out.flush().expect("flush to the parent");
}

/// In the child: the parent's next command line.
///
/// # Panics
/// When the parent closed stdin.
pub async fn next_command() -> String {
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let n = std::io::stdin()
            .read_line(&mut line)
            .expect("read from the parent");
        assert!(n > 0, "the parent closed stdin");
        line.trim_end().to_owned()
    })
    .await
    .expect("the stdin reader")
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock `Instant` reads on
/// Linux, and one clock for every process on the host, so two processes
/// can compare instants through it.
pub fn monotonic_nanos() -> u128 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there");
    u128::try_from(now.tv_sec()).expect("after boot") * 1_000_000_000
        + u128::try_from(now.tv_nsec()).expect("in range")
}

/// This process's [`Instant`] for a [`monotonic_nanos`] reading taken in
/// any process on the host.
///
/// The raw clock is read before `Instant::now()`, so the result is never
/// earlier than the true instant: it errs late, by the time between two
/// adjacent reads.
pub fn instant_of(monotonic: u128) -> Instant {
    let raw_now = monotonic_nanos();
    let now = Instant::now();
    if monotonic <= raw_now {
        now - nanos(raw_now - monotonic)
    } else {
        now + nanos(monotonic - raw_now)
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).expect("within 584 years"))
}
