//! `lockctl run`: a child process under a lock, or under a run-once record.

use std::ffi::OsString;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lockstore::ledger::{Begin, RunFailure, RunOptions, RunRecord};
use lockstore::{AcquireOptions, Holder, LockError, LockKey, Store, Wait};
use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, Command};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use crate::cli::{RunArgs, WaitArgs};
use crate::duration::human;
use crate::exit::{self, Codes};
use crate::signals::{self, Forwarded};
use crate::{Failure, describe_store_error};

/// How much of the child's stderr a failed `--once` run keeps in its record
/// (the ledger stores at most 2 KiB per error, with the exit code in front).
const STDERR_TAIL_BYTES: usize = 1500;

/// Runs `lockctl run`.
pub async fn run(store: &Store, args: RunArgs, codes: &Codes) -> Result<u8, Failure> {
    let key = LockKey::new(&args.key).map_err(|err| Failure::error(codes, err.to_string()))?;
    let mut signals = Forwarded::install()
        .map_err(|err| Failure::error(codes, format!("cannot handle signals: {err}")))?;
    if args.once {
        run_once(store, key, args, codes, &mut signals).await
    } else {
        run_locked(store, key, args, codes, &mut signals).await
    }
}

async fn run_locked(
    store: &Store,
    key: LockKey,
    args: RunArgs,
    codes: &Codes,
    signals: &mut Forwarded,
) -> Result<u8, Failure> {
    let client = store.lock_client();
    let wait = match args.wait {
        WaitArgs { no_wait: true, .. } => Wait::No,
        WaitArgs {
            wait: Some(limit), ..
        } => Wait::Up(limit),
        WaitArgs { .. } => Wait::Forever,
    };
    let options = AcquireOptions::new(args.ttl).wait(wait);
    let progress = (wait != Wait::No).then(|| {
        let client = client.clone();
        let polled = key.clone();
        Progress::start(&key, move || {
            let client = client.clone();
            let key = polled.clone();
            async move {
                match client.inspect(&key).await {
                    Ok(Some(holder)) => holder_text(&holder),
                    Ok(None) => "free, taking it".into(),
                    Err(err) => format!("cannot inspect: {err}"),
                }
            }
        })
    });
    let waiting = format!("waiting for {key}");
    let acquired = match unless_signalled(
        client.acquire(&key, options),
        signals,
        &waiting,
        progress.flatten(),
    )
    .await
    {
        Ok(acquired) => acquired,
        Err(code) => return Ok(code),
    };
    let guard = match acquired {
        Ok(guard) => guard,
        Err(LockError::Timeout {
            key,
            waited,
            holder,
            ..
        }) => {
            let holder = holder.map_or_else(|| "held".to_owned(), |h| holder_text(&h));
            return Err(Failure {
                code: codes.not_acquired,
                message: format!(
                    "{key} is {holder}; gave up after {}, the command was not run",
                    human(waited)
                ),
            });
        }
        Err(err) => return Err(Failure::store(codes, &err)),
    };
    tracing::debug!(%key, fence = %guard.fence(), "acquired; starting the command");
    let env = [
        ("LOCKSTORE_KEY", key.to_string()),
        ("LOCKSTORE_FENCE", guard.fence().to_string()),
        ("LOCKSTORE_LEASE_ID", guard.lease_id().to_string()),
    ];
    let mut child = match spawn(&args.command, &env, false) {
        Ok(child) => child,
        Err(failure) => {
            let _ = guard.release().await;
            return Err(failure);
        }
    };
    let ended = supervise(&mut child, guard.lost(), signals, args.kill_grace, &key).await;
    let released = guard.release().await;
    match ended {
        Ok(Ended::Exited(status)) => {
            if let Err(err) = released {
                eprintln!(
                    "lockctl: releasing {key} failed ({}); it ends by its TTL",
                    describe_store_error(&err)
                );
            }
            Ok(exit_code(status))
        }
        Ok(Ended::Lost(status)) => Err(Failure {
            code: codes.lost,
            message: format!(
                "the lease on {key} was lost while the command ran; it was stopped ({})",
                status_text(status)
            ),
        }),
        Err(err) => Err(Failure::error(
            codes,
            format!("waiting for the command failed: {err}"),
        )),
    }
}

async fn run_once(
    store: &Store,
    key: LockKey,
    args: RunArgs,
    codes: &Codes,
    signals: &mut Forwarded,
) -> Result<u8, Failure> {
    let ledger = store.ledger_client();
    let options = RunOptions::new(args.ttl).max_attempts(args.max_attempts);
    // A run live elsewhere is waited for only when asked: the key's work is
    // being done, which is usually what a second `--once` wants to know.
    let deadline = match args.wait {
        WaitArgs {
            wait: Some(limit),
            no_wait: false,
        } => Some(Instant::now() + limit),
        _ => None,
    };
    let run = loop {
        let starting = format!("starting {key}");
        let begun =
            match unless_signalled(ledger.begin(&key, &options), signals, &starting, None).await {
                Ok(begun) => begun,
                Err(code) => return Ok(code),
            };
        let record = match begun.map_err(|err| Failure::store(codes, &err))? {
            Begin::Started(run) => break run,
            Begin::AlreadySucceeded(record) => {
                return Err(Failure {
                    code: codes.already_succeeded,
                    message: format!(
                        "{key} already succeeded ({}); not running it again",
                        record_summary(&record)
                    ),
                });
            }
            Begin::Ignored(record) => {
                let last = record
                    .last_error()
                    .map(|e| format!("; last error: {}", first_line(&e.message)))
                    .unwrap_or_default();
                return Err(Failure {
                    code: codes.ignored,
                    message: format!(
                        "{key} is given up after {} attempt(s){last}; not running it. \
                         `lockctl retry {key}` lets it run again",
                        record.attempts
                    ),
                });
            }
            Begin::Running(record) => record,
        };
        let holder = record
            .holder()
            .map_or_else(|| "running".to_owned(), |h| holder_text(&h));
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let Some(left) = left.filter(|left| !left.is_zero()) else {
            return Err(Failure {
                code: codes.not_acquired,
                message: format!("{key} is running elsewhere ({holder}); not running it here"),
            });
        };
        let progress = {
            let ledger = ledger.clone();
            let polled = key.clone();
            Progress::start(&key, move || {
                let ledger = ledger.clone();
                let key = polled.clone();
                async move {
                    match ledger.get(&key).await {
                        Ok(Some(record)) => match record.holder() {
                            Some(holder) => format!("run {}", holder_text(&holder)),
                            None => format!("run is {}", record.status),
                        },
                        Ok(None) => "no record".into(),
                        Err(err) => format!("cannot read the record: {err}"),
                    }
                }
            })
        };
        let waiting = format!("waiting for {key}");
        let waited =
            match unless_signalled(ledger.wait(&key, left), signals, &waiting, progress).await {
                Ok(waited) => waited,
                Err(code) => return Ok(code),
            };
        match waited {
            Ok(_) => continue, // it ended: begin again decides
            Err(LockError::Timeout { waited, .. }) => {
                return Err(Failure {
                    code: codes.not_acquired,
                    message: format!(
                        "{key} is still running elsewhere ({holder}) after {}; not running it here",
                        human(waited)
                    ),
                });
            }
            Err(err) => return Err(Failure::store(codes, &err)),
        }
    };
    let attempt = run.attempt();
    tracing::debug!(%key, fence = %run.fence(), attempt, "run started; starting the command");
    let env = [
        ("LOCKSTORE_KEY", key.to_string()),
        ("LOCKSTORE_FENCE", run.fence().to_string()),
        ("LOCKSTORE_LEASE_ID", run.lease_id().to_string()),
        ("LOCKSTORE_ATTEMPT", attempt.to_string()),
    ];
    let started = Instant::now();
    let mut child = match spawn(&args.command, &env, true) {
        Ok(child) => child,
        Err(failure) => {
            let message = format!("the command could not be started: {}", failure.message);
            let _ = run.fail(RunFailure::retryable(message)).await;
            return Err(failure);
        }
    };
    let tail = Tail::default();
    let tee = child.stderr.take().map(|stderr| tee(stderr, tail.clone()));
    let ended = supervise(&mut child, run.lost(), signals, args.kill_grace, &key).await;
    if let Some(tee) = tee {
        // A grandchild may hold stderr open after the command exits: take
        // what came, and stop copying.
        let mut tee = tee;
        if timeout(Duration::from_secs(2), &mut tee).await.is_err() {
            tee.abort();
        }
    }
    let status = match ended {
        Ok(Ended::Exited(status)) => status,
        Ok(Ended::Lost(status)) => {
            let message = format!(
                "lease lost while running; stopped ({})",
                status_text(status)
            );
            let _ = run.fail(RunFailure::retryable(message)).await;
            return Err(Failure {
                code: codes.lost,
                message: format!(
                    "the run lease on {key} was lost while the command ran; it was stopped ({})",
                    status_text(status)
                ),
            });
        }
        Err(err) => {
            let _ = run
                .fail(RunFailure::retryable(format!(
                    "lockctl lost the command: {err}"
                )))
                .await;
            return Err(Failure::error(
                codes,
                format!("waiting for the command failed: {err}"),
            ));
        }
    };
    if status.success() {
        let result = serde_json::json!({
            "exit_code": 0,
            "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        return match run.succeed_json(&result).await {
            Ok(()) => Ok(0),
            Err(LockError::LeaseLost { .. }) => Err(Failure {
                code: codes.lost,
                message: format!(
                    "the command succeeded, but the run lease on {key} was lost before it could be recorded"
                ),
            }),
            Err(err) => Err(Failure::store(codes, &err)),
        };
    }
    let tail = tail.text();
    let mut message = status_text(status);
    if !tail.trim().is_empty() {
        message.push_str("; stderr tail:\n");
        message.push_str(&tail);
    }
    match run.fail(RunFailure::retryable(message)).await {
        Ok(recorded) => eprintln!(
            "lockctl: {key} failed on attempt {attempt} of {} ({}); recorded as {recorded}",
            args.max_attempts,
            status_text(status)
        ),
        Err(err) => eprintln!(
            "lockctl: {key} failed ({}), and recording it failed: {}",
            status_text(status),
            describe_store_error(&err)
        ),
    }
    Ok(exit_code(status))
}

/// How the child ended.
enum Ended {
    /// On its own (or by a signal someone sent it).
    Exited(ExitStatus),
    /// Stopped by lockctl after the lease was lost.
    Lost(ExitStatus),
}

/// Waits for the child, forwarding signals; when `lost` resolves first,
/// stops the child: SIGTERM, then SIGKILL after `grace`.
async fn supervise(
    child: &mut Child,
    lost: impl Future<Output = ()>,
    signals: &mut Forwarded,
    grace: Duration,
    key: &LockKey,
) -> std::io::Result<Ended> {
    let pid = child.id();
    tokio::pin!(lost);
    loop {
        tokio::select! {
            biased;
            status = child.wait() => return status.map(Ended::Exited),
            () = &mut lost => break,
            signal = signals.next() => {
                tracing::debug!(%signal, "forwarding to the command");
                signals::send(pid, signal);
            }
        }
    }
    eprintln!(
        "lockctl: the lease on {key} was lost; stopping the command (SIGTERM, SIGKILL after {})",
        human(grace)
    );
    signals::send(pid, Signal::SIGTERM);
    let kill_at = sleep(grace);
    tokio::pin!(kill_at);
    loop {
        tokio::select! {
            biased;
            status = child.wait() => return status.map(Ended::Lost),
            () = &mut kill_at => {
                eprintln!("lockctl: the command outlived --kill-grace; sending SIGKILL");
                child.start_kill()?;
                return child.wait().await.map(Ended::Lost);
            }
            signal = signals.next() => { signals::send(pid, signal); }
        }
    }
}

fn spawn(
    command: &[OsString],
    env: &[(&str, String)],
    pipe_stderr: bool,
) -> Result<Child, Failure> {
    let (program, arguments) = command.split_first().ok_or_else(|| Failure {
        code: exit::ERROR,
        message: "no command given after `--`".into(),
    })?;
    let mut cmd = Command::new(program);
    cmd.args(arguments)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(if pipe_stderr {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
    cmd.spawn().map_err(|err| {
        let name = program.to_string_lossy();
        match err.kind() {
            std::io::ErrorKind::NotFound => Failure {
                code: exit::NOT_FOUND,
                message: format!("{name}: command not found"),
            },
            _ => Failure {
                code: exit::CANNOT_EXECUTE,
                message: format!("{name}: cannot run it: {err}"),
            },
        }
    })
}

/// The last bytes of the child's stderr.
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<Vec<u8>>>);

impl Tail {
    fn push(&self, bytes: &[u8]) {
        let mut tail = self.0.lock().unwrap_or_else(|p| p.into_inner());
        tail.extend_from_slice(bytes);
        let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
        tail.drain(..excess);
    }

    fn text(&self) -> String {
        let tail = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // The cut may fall inside a UTF-8 sequence: skip continuation bytes.
        let start = tail
            .iter()
            .position(|b| (b & 0xC0) != 0x80)
            .unwrap_or(tail.len());
        String::from_utf8_lossy(&tail[start..]).into_owned()
    }
}

/// Copies the child's stderr to ours as it comes, keeping the tail.
fn tee(mut stderr: ChildStderr, tail: Tail) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0_u8; 8192];
        loop {
            match stderr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let mut out = std::io::stderr().lock();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                    tail.push(&buf[..n]);
                }
            }
        }
    })
}

/// The child's exit code as lockctl's: its own, or 128 + the signal.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(u8::MAX),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(u8::MAX),
        (None, None) => exit::ERROR,
    }
}

/// Awaits `step` (a wait before the command starts) unless a signal comes
/// first: then says so, naming what was being `doing`, and gives the exit
/// code for that signal, the command not run. The progress line, if any,
/// is cleared either way.
async fn unless_signalled<T>(
    step: impl Future<Output = T>,
    signals: &mut Forwarded,
    doing: &str,
    progress: Option<Progress>,
) -> Result<T, u8> {
    tokio::select! {
        done = step => {
            drop(progress);
            Ok(done)
        }
        signal = signals.next() => {
            drop(progress);
            eprintln!("lockctl: {signal} while {doing}; the command was not run");
            Err(signal_code(signal))
        }
    }
}

fn signal_code(signal: Signal) -> u8 {
    u8::try_from(128 + signal as i32).unwrap_or(u8::MAX)
}

fn status_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(name) => format!("killed by {name}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        _ => "ended".into(),
    }
}

/// `held by OWNER (fence N, expires in 12.0s)`.
pub fn holder_text(holder: &Holder) -> String {
    format!(
        "held by {} (fence {}, expires in {})",
        holder.owner(),
        holder.fence(),
        human(holder.expires_in())
    )
}

fn record_summary(record: &RunRecord) -> String {
    let mut parts = vec![format!("attempt {}", record.attempts)];
    if let Some(fence) = record.fence {
        parts.push(format!("fence {fence}"));
    }
    if let Some(finished) = record.finished_at {
        parts.push(format!("finished {}", crate::output::ago(finished)));
    }
    parts.join(", ")
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// A spinner on stderr while waiting, when stderr is a terminal.
struct Progress {
    bar: ProgressBar,
    poller: JoinHandle<()>,
}

impl Progress {
    fn start<F, Fut>(key: &LockKey, poll: F) -> Option<Progress>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = String> + Send + 'static,
    {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let shown = bar.clone();
        let key = key.clone();
        let started = Instant::now();
        let poller = tokio::spawn(async move {
            loop {
                let state = poll().await;
                shown.set_message(format!(
                    "waiting for {key}: {state}; waited {}",
                    human(started.elapsed())
                ));
                sleep(Duration::from_millis(500)).await;
            }
        });
        Some(Progress { bar, poller })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.poller.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes_on_a_char_boundary() {
        let tail = Tail::default();
        tail.push("é".repeat(STDERR_TAIL_BYTES).as_bytes());
        tail.push(b"the end");
        let text = tail.text();
        assert!(text.ends_with("the end"));
        assert!(!text.contains('\u{fffd}'), "cut inside a character");
        assert!(text.len() <= STDERR_TAIL_BYTES);
    }

    #[test]
    fn signals_map_to_128_plus_n() {
        assert_eq!(signal_code(Signal::SIGTERM), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137); // killed by SIGKILL
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
    }
}
