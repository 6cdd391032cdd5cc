//! `lockctl run`: a child process under a lock, or under a run-once record.

use std::ffi::OsString;
use std::future::Future;
use std::io::IsTerminal;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lockstore::ledger::{Begin, RunFailure, RunOptions, RunRecord};
use lockstore::semaphore::{PermitGuard, PermitLimit, Permits};
use lockstore::{
    AcquireOptions, FencingToken, Holder, LeaseId, LockError, LockGuard, LockKey, ReleaseOutcome,
    Store, Wait,
};
use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use crate::cli::{RunArgs, WaitArgs};
use crate::duration::human;
use crate::errout;
use crate::exit::{self, Codes};
use crate::group::{AFTER_SIGKILL, Group};
use crate::signals::Forwarded;
use crate::template;
use crate::terminal::Foreground;
use crate::watch::Watchdog;
use crate::{Failure, describe_store_error};

/// How much of the child's stderr a failed `--once` run keeps in its record
/// (the ledger stores at most 2 KiB per error, with the exit code in front).
const STDERR_TAIL_BYTES: usize = 1500;

/// Runs `lockctl run`.
pub async fn run(store: &Store, args: RunArgs, codes: &Codes) -> Result<u8, Failure> {
    let key = if args.once {
        template::expand(&args.key, SystemTime::now())
            .map_err(|err| Failure::error(codes, err.to_string()))?
    } else {
        args.key.clone()
    };
    let key = LockKey::new(&key).map_err(|err| Failure::error(codes, err.to_string()))?;
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
    let permits = if args.permits > 1 {
        let limit =
            PermitLimit::new(args.permits).map_err(|err| Failure::error(codes, err.to_string()))?;
        let semaphore = store
            .semaphore_client()
            .map_err(|err| Failure::store(codes, &err))?;
        Some((semaphore, limit))
    } else {
        None
    };
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
        let permits = permits.clone();
        let polled = key.clone();
        Progress::start(&key, move || {
            let client = client.clone();
            let permits = permits.clone();
            let key = polled.clone();
            async move {
                match permits {
                    Some((semaphore, _)) => match semaphore.inspect(&key).await {
                        Ok(Some(permits)) => permits_text(&permits),
                        Ok(None) => "free, taking a permit".into(),
                        Err(err) => format!("cannot inspect: {err}"),
                    },
                    None => match client.inspect(&key).await {
                        Ok(Some(holder)) => holder_text(&holder),
                        Ok(None) => "free, taking it".into(),
                        Err(err) => format!("cannot inspect: {err}"),
                    },
                }
            }
        })
    });
    let waiting = format!("waiting for {key}");
    let acquire = async {
        match &permits {
            Some((semaphore, limit)) => semaphore
                .acquire(&key, *limit, options)
                .await
                .map(Held::Permit),
            None => client.acquire(&key, options).await.map(Held::Lock),
        }
    };
    let acquired = match unless_signalled(acquire, signals, &waiting, progress.flatten()).await {
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
    tracing::debug!(%key, fence = %guard.fence(), permits = args.permits, "acquired; starting the command");
    let env = [
        ("LOCKSTORE_KEY", key.to_string()),
        ("LOCKSTORE_FENCE", guard.fence().to_string()),
        ("LOCKSTORE_LEASE_ID", guard.lease_id().to_string()),
    ];
    let started = match spawn(&args.command, &env, false, args.kill_grace) {
        Ok(started) => started,
        Err(failure) => {
            let _ = guard.release().await;
            return Err(failure);
        }
    };
    let ended = supervise(started, guard.lost(), signals, args.kill_grace, &key).await;
    let released = guard.release().await;
    match ended {
        Ok(Ended::Exited(status)) => {
            if let Err(err) = released {
                errout::say(&format!(
                    "releasing {key} failed ({}); it ends by its TTL",
                    describe_store_error(&err)
                ));
            }
            Ok(passed_through(status, codes))
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
        } => Some(deadline_after(limit)),
        _ => None,
    };
    let waited_since = Instant::now();
    let run = loop {
        let starting = format!("starting {key}");
        // A request is bounded by what is left of --wait, but given at
        // least a TTL (a store slower than that is broken): a PostgreSQL
        // `begin` queued behind a row lock must not hold lockctl forever.
        // Given up on, a `begin` that did reach the store leaves a run
        // nobody renews, which the next `begin` takes over after its TTL.
        let bound = deadline
            .map_or(args.ttl, |d| d.saturating_duration_since(Instant::now()))
            .max(args.ttl);
        let begun = match unless_signalled(
            timeout(bound, ledger.begin(&key, &options)),
            signals,
            &starting,
            None,
        )
        .await
        {
            Ok(Ok(begun)) => begun,
            Ok(Err(_)) => {
                return Err(Failure {
                    code: if deadline.is_some() {
                        codes.not_acquired
                    } else {
                        codes.error
                    },
                    message: format!(
                        "the store did not answer within {}; {key} was not run here",
                        human(bound)
                    ),
                });
            }
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
        let holder = record.holder();
        let holder_said = holder
            .as_ref()
            .map_or_else(|| "running".to_owned(), holder_text);
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let Some(left) = left.filter(|left| !left.is_zero()) else {
            let message = if deadline.is_some() {
                format!(
                    "{key} is still running elsewhere ({holder_said}) after {}; not running it here",
                    human(waited_since.elapsed())
                )
            } else {
                format!("{key} is running elsewhere ({holder_said}); not running it here")
            };
            return Err(Failure {
                code: codes.not_acquired,
                message,
            });
        };
        // A run that crashed stays `running` until its lease expires, and
        // nobody announces the expiry: wait no longer than that lease, then
        // begin again, which takes a stuck run over (or finds it renewed).
        let until_expiry = holder.map_or(TAKEOVER_POLL, |h| {
            h.expires_in().saturating_add(TAKEOVER_POLL)
        });
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
        let step = left.min(until_expiry);
        let waited = match unless_signalled(
            // The wait's own requests are bounded too: a store that stops
            // answering must not hold lockctl past --wait.
            timeout(step.saturating_add(TAKEOVER_POLL), ledger.wait(&key, step)),
            signals,
            &waiting,
            progress,
        )
        .await
        {
            Ok(waited) => waited,
            Err(code) => return Ok(code),
        };
        match waited {
            // It ended, or its lease may have run out, or the store was
            // slow: begin again decides (and the deadline ends the loop).
            Ok(Ok(_) | Err(LockError::Timeout { .. })) | Err(_) => continue,
            Ok(Err(err)) => return Err(Failure::store(codes, &err)),
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
    let started_at = Instant::now();
    let mut started = match spawn(&args.command, &env, true, args.kill_grace) {
        Ok(started) => started,
        Err(failure) => {
            let message = format!("the command could not be started: {}", failure.message);
            let _ = run.fail(RunFailure::retryable(message)).await;
            return Err(failure);
        }
    };
    let tail = Tail::default();
    let tee = started
        .child
        .stderr
        .take()
        .map(|stderr| tee(stderr, tail.clone()));
    let ended = supervise(started, run.lost(), signals, args.kill_grace, &key).await;
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
            "duration_ms": u64::try_from(started_at.elapsed().as_millis()).unwrap_or(u64::MAX),
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
        Ok(recorded) => errout::say(&format!(
            "{key} failed on attempt {attempt} of {} ({}); recorded as {recorded}",
            args.max_attempts,
            status_text(status)
        )),
        Err(err) => errout::say(&format!(
            "{key} failed ({}), and recording it failed: {}",
            status_text(status),
            describe_store_error(&err)
        )),
    }
    Ok(passed_through(status, codes))
}

/// While `--once --wait` waits for a run elsewhere: how long past the
/// run's lease lockctl asks again (and how often, for a record with no live
/// lease).
const TAKEOVER_POLL: Duration = Duration::from_millis(250);

/// `now + limit`, or a far future for a limit too large for the clock
/// (`--wait 1e19`).
fn deadline_after(limit: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(limit)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// How the child ended.
pub(crate) enum Ended {
    /// On its own (or by a signal someone sent it).
    Exited(ExitStatus),
    /// Stopped by lockctl after the lease was lost.
    Lost(ExitStatus),
}

/// The command, started in a process group of its own, with the watchdog
/// that stops the group if lockctl dies, and the terminal's foreground if
/// lockctl had it.
pub(crate) struct Started {
    child: Child,
    group: Group,
    watchdog: Option<Watchdog>,
    foreground: Option<Foreground>,
}

/// Waits for the command, forwarding signals to its group; when `lost`
/// resolves first, stops the group: SIGTERM, then SIGKILL after `grace`.
/// Either way it returns only once no process of the group is left (or
/// SIGKILL could not end one, which it says): a process the command left
/// behind must not outlive the lease.
pub(crate) async fn supervise(
    started: Started,
    lost: impl Future<Output = ()>,
    signals: &mut Forwarded,
    grace: Duration,
    key: &LockKey,
) -> std::io::Result<Ended> {
    let Started {
        mut child,
        group,
        watchdog,
        foreground,
    } = started;
    tokio::pin!(lost);
    // Job control stops the command in the terminal's foreground; lockctl
    // learns of it by SIGCHLD (a stop is no exit, so it stays unreaped).
    let mut stops = match foreground {
        Some(_) => Some(signal(SignalKind::child())?),
        None => None,
    };
    let exited = loop {
        tokio::select! {
            biased;
            status = child.wait() => break Some(status?),
            () = &mut lost => break None,
            signal = signals.next() => {
                tracing::debug!(%signal, "forwarding to the command's process group");
                group.signal(signal);
                if matches!(signal, Signal::SIGTERM | Signal::SIGHUP) {
                    // As a shell's `kill` and a terminal's hangup do: a
                    // stopped process would keep the signal pending.
                    group.signal(Signal::SIGCONT);
                }
            }
            Some(()) = async { stops.as_mut()?.recv().await } => {
                if let (Some(foreground), true) = (&foreground, group.leader_stopped()) {
                    foreground.suspend(group);
                }
            }
        }
    };
    let ended = match exited {
        Some(status) => {
            if group.alive() {
                errout::say(&format!(
                    "the command ended, but processes it started still run in its process \
                     group; stopping them (SIGTERM, SIGKILL after {})",
                    human(grace)
                ));
                stop(&mut child, Some(status), group, signals, grace).await?;
            }
            Ended::Exited(status)
        }
        None => {
            errout::say(&format!(
                "the lease on {key} was lost; stopping the command's process group \
                 (SIGTERM, SIGKILL after {})",
                human(grace)
            ));
            Ended::Lost(stop(&mut child, None, group, signals, grace).await?)
        }
    };
    drop(foreground);
    if let Some(watchdog) = watchdog {
        if group.alive() {
            // Unkillable for now: the watchdog, told nothing, keeps trying
            // after lockctl is gone.
            drop(watchdog);
        } else {
            watchdog.finish().await;
        }
    }
    Ok(ended)
}

/// Stops `group`, whose leader is `child` (already reaped when `exited` is
/// given): SIGTERM, SIGKILL after `grace` if any of it is left; returns
/// the leader's status once the group is empty.
async fn stop(
    child: &mut Child,
    mut exited: Option<ExitStatus>,
    group: Group,
    signals: &mut Forwarded,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    group.signal(Signal::SIGTERM);
    // A stopped process (Ctrl-Z, SIGSTOP) would keep SIGTERM pending.
    group.signal(Signal::SIGCONT);
    let kill_at = sleep(grace);
    tokio::pin!(kill_at);
    loop {
        if let Some(status) = exited {
            // The leader is reaped, so an empty group is the whole tree gone.
            if !group.alive() {
                return Ok(status);
            }
        }
        tokio::select! {
            biased;
            status = child.wait(), if exited.is_none() => exited = Some(status?),
            () = &mut kill_at => break,
            signal = signals.next() => { group.signal(signal); }
            () = sleep(Duration::from_millis(25)), if exited.is_some() => {}
        }
    }
    errout::say("the command's process group outlived --kill-grace; sending SIGKILL");
    group.signal(Signal::SIGKILL);
    let status = match exited {
        Some(status) => status,
        None => child.wait().await?,
    };
    if !group.emptied_by(Instant::now() + AFTER_SIGKILL).await {
        errout::say(&format!(
            "process group {} still has processes after SIGKILL (in uninterruptible sleep?)",
            group.id()
        ));
    }
    Ok(status)
}

/// Starts the command in a process group of its own, with a watchdog.
pub(crate) fn spawn(
    command: &[OsString],
    env: &[(&str, String)],
    pipe_stderr: bool,
    grace: Duration,
) -> Result<Started, Failure> {
    let (program, arguments) = command.split_first().ok_or_else(|| Failure {
        code: exit::ERROR,
        message: "no command given after `--`".into(),
    })?;
    let mut cmd = Command::new(program);
    cmd.args(arguments)
        // It may hold the store's password; a nested lockctl is given the
        // store another way (see the README).
        .env_remove("LOCKSTORE_URL")
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(if pipe_stderr {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .process_group(0);
    let child = cmd.spawn().map_err(|err| {
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
    })?;
    let Some(group) = Group::led_by(child.id()) else {
        return Err(Failure {
            code: exit::ERROR,
            message: "the command started without a process id".into(),
        });
    };
    let watchdog = Watchdog::start(group, grace)
        .map_err(|err| {
            errout::say(&format!(
                "cannot start the watchdog ({err}); if lockctl is killed, the command is \
                 not stopped"
            ));
        })
        .ok();
    let foreground = Foreground::lend(group);
    Ok(Started {
        child,
        group,
        watchdog,
        foreground,
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
                    errout::write(&buf[..n]);
                    tail.push(&buf[..n]);
                }
            }
        }
    })
}

/// The child's exit code, passed through as lockctl's; when it is one of
/// lockctl's reserved codes in force, says so, since a script reading the
/// code alone cannot tell them apart.
pub(crate) fn passed_through(status: ExitStatus, codes: &Codes) -> u8 {
    let code = exit_code(status);
    if code != 0 && codes.reserved(code) {
        errout::say(&format!(
            "the command itself exited {code}, which is also one of lockctl's reserved \
             exit codes (move them with --conflict-exit-code etc.)"
        ));
    }
    code
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
pub(crate) async fn unless_signalled<T>(
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

pub(crate) fn status_text(status: ExitStatus) -> String {
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
/// What `run` holds while the command runs: the lock, or (`--permits N`,
/// N > 1) one permit of the key's semaphore. Both are the same renewing
/// guard underneath.
enum Held {
    Lock(LockGuard),
    Permit(PermitGuard),
}

impl Held {
    fn fence(&self) -> FencingToken {
        match self {
            Held::Lock(guard) => guard.fence(),
            Held::Permit(guard) => guard.fence(),
        }
    }

    fn lease_id(&self) -> LeaseId {
        match self {
            Held::Lock(guard) => guard.lease_id(),
            Held::Permit(guard) => guard.permit_id(),
        }
    }

    fn lost(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        match self {
            Held::Lock(guard) => Box::pin(guard.lost()),
            Held::Permit(guard) => Box::pin(guard.lost()),
        }
    }

    async fn release(self) -> Result<ReleaseOutcome, LockError> {
        match self {
            Held::Lock(guard) => guard.release().await,
            Held::Permit(guard) => guard.release().await,
        }
    }
}

/// A semaphore's live permits, for people.
pub fn permits_text(permits: &Permits) -> String {
    let holders: Vec<String> = permits
        .holders
        .iter()
        .map(|holder| {
            format!(
                "{} (fence {}, expires in {})",
                holder.owner(),
                holder.fence(),
                human(holder.expires_in())
            )
        })
        .collect();
    format!(
        "{} of {} permits held, {} free: {}",
        permits.holders.len(),
        permits.limit,
        permits.free(),
        holders.join(", ")
    )
}

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
pub(crate) struct Progress {
    bar: ProgressBar,
    poller: JoinHandle<()>,
}

impl Progress {
    pub(crate) fn start<F, Fut>(key: &LockKey, poll: F) -> Option<Progress>
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
