//! The watchdog: stops the command's process group when lockctl dies
//! without stopping it (SIGKILL, an OOM kill, a container runtime killing
//! only the wrapper), before its lease can run out and another host start
//! a second copy.
//!
//! It is lockctl itself, re-executed as the hidden `lockctl __watch PGID
//! GRACE_MS`, in a process group of its own and deaf to SIGINT, SIGTERM
//! and SIGHUP, so a signal meant for lockctl's job does not end it. Its
//! stdin is a pipe from lockctl, whose write end only lockctl holds (pipes
//! are made close-on-exec). On a normal end lockctl writes [`DONE`] once the
//! group is empty; the pipe closing without it means lockctl died, however
//! it died, and the watchdog stops the group: SIGTERM, then SIGKILL after
//! the grace. It signals only a group that still exists, so a group id
//! reused later is never touched by a normal end.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::timeout;

use crate::duration::human;
use crate::group::{AFTER_SIGKILL, Group};

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "__watch";

/// The byte lockctl writes when it ends normally: the group is gone.
const DONE: u8 = b'd';

/// A running watchdog, from lockctl's side.
pub struct Watchdog {
    process: Child,
    pipe: ChildStdin,
}

impl Watchdog {
    /// Starts a watchdog over `group`. Failing to start one is not fatal
    /// (the command runs as it did before there was a watchdog), so the
    /// caller warns and goes on.
    ///
    /// # Errors
    /// When lockctl's own executable cannot be found or started again.
    pub fn start(group: Group, grace: Duration) -> std::io::Result<Watchdog> {
        let exe = std::env::current_exe()?;
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let mut process = Command::new(exe)
            .arg(SUBCOMMAND)
            .arg(group.id().to_string())
            .arg(grace_ms.to_string())
            // It needs no store, and must not carry its secrets around.
            .env_remove("LOCKSTORE_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Not in lockctl's group: `kill -9 -PGID` of lockctl's job, or
            // a terminal's Ctrl-C, must not reach it.
            .process_group(0)
            .spawn()?;
        let pipe = process
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the watchdog has no stdin pipe"))?;
        Ok(Watchdog { process, pipe })
    }

    /// Tells the watchdog the group is gone, and reaps it. Call only once
    /// the group is empty: dropping the watchdog instead makes it stop the
    /// group.
    pub async fn finish(mut self) {
        let _ = self.pipe.write_all(&[DONE]).await;
        let _ = self.pipe.flush().await;
        drop(self.pipe);
        // It exits at once on DONE; a bound so lockctl never hangs on it.
        let _ = timeout(Duration::from_secs(5), self.process.wait()).await;
    }
}

/// `lockctl __watch PGID GRACE_MS`: the watchdog's own side. Returns its
/// exit code.
pub fn watch(args: &[String]) -> u8 {
    let (Some(pgid), Some(grace_ms)) = (
        args.first().and_then(|a| a.parse::<u32>().ok()),
        args.get(1).and_then(|a| a.parse::<u64>().ok()),
    ) else {
        let _ = writeln!(
            std::io::stderr(),
            "lockctl: {SUBCOMMAND} is internal to `lockctl run` (usage: {SUBCOMMAND} PGID GRACE_MS)"
        );
        return crate::exit::ERROR;
    };
    let Some(group) = Group::led_by(Some(pgid)) else {
        return crate::exit::ERROR;
    };
    // Blocked, these stay pending and never end it; SIGTTOU too, so a
    // message to a terminal whose foreground it is not cannot stop it.
    let mut deaf = SigSet::empty();
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGTTOU,
    ] {
        deaf.add(signal);
    }
    let _ = deaf.thread_block();

    if lockctl_finished(std::io::stdin().lock()) || !group.alive() {
        return 0;
    }
    let grace = Duration::from_millis(grace_ms);
    let _ = writeln!(
        std::io::stderr(),
        "lockctl: lockctl ended without stopping its command; stopping process group {} \
         (SIGTERM, SIGKILL after {})",
        group.id(),
        human(grace)
    );
    group.signal(Signal::SIGTERM);
    // SIGCONT too: a stopped member would hold SIGTERM pending forever.
    group.signal(Signal::SIGCONT);
    let started = std::time::Instant::now();
    if !group.emptied_by_blocking(started + grace) {
        group.signal(Signal::SIGKILL);
        let _ = group.emptied_by_blocking(std::time::Instant::now() + AFTER_SIGKILL);
    }
    0
}

/// Reads the pipe to its end; true if lockctl said [`DONE`] first.
fn lockctl_finished(mut pipe: impl Read) -> bool {
    let mut buf = [0_u8; 16];
    let mut done = false;
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return done,
            Ok(n) => done |= buf[..n].contains(&DONE),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_done_byte_before_the_end_means_finished() {
        assert!(lockctl_finished(&[DONE][..]));
        assert!(!lockctl_finished(&[][..]), "EOF alone: lockctl died");
        assert!(!lockctl_finished(&b"x"[..]));
    }
}
