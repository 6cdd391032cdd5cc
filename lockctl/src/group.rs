//! The command's process group: everything the command starts (a shell's
//! children, a pipeline, a Python parent's workers) stays in it unless it
//! leaves on purpose (`setsid`), so signalling the group reaches the whole
//! tree, and an empty group means nothing of the command is left.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

/// How often a group is probed while lockctl waits for it to empty.
const PROBE_EVERY: Duration = Duration::from_millis(25);

/// After SIGKILL, how long lockctl waits for the group to empty before it
/// gives up: a member in uninterruptible sleep (a hung NFS read) dies only
/// when the kernel lets it, and lockctl must not hang on it forever.
pub const AFTER_SIGKILL: Duration = Duration::from_secs(10);

/// A process group lockctl started (its id is its leader's pid).
#[derive(Clone, Copy, Debug)]
pub struct Group(Pid);

impl Group {
    /// The group led by the process `pid` (started with
    /// `process_group(0)`); `None` for a pid the OS cannot have given.
    pub fn led_by(pid: Option<u32>) -> Option<Group> {
        let pid = i32::try_from(pid?).ok().filter(|pid| *pid > 1)?;
        Some(Group(Pid::from_raw(pid)))
    }

    /// The group id.
    pub fn id(self) -> i32 {
        self.0.as_raw()
    }

    /// Sends `signal` to every member; false when none is left.
    pub fn signal(self, signal: Signal) -> bool {
        killpg(self.0, signal).is_ok()
    }

    /// Whether any member is left. A zombie leader counts until it is
    /// reaped, so callers reap the leader first.
    pub fn alive(self) -> bool {
        // EPERM: a member exists that we may not signal (it changed its
        // user); it is still there.
        !matches!(killpg(self.0, None), Err(Errno::ESRCH))
    }

    /// Whether the leader was stopped (job control) since last asked. It
    /// leaves exits alone: those are the leader's reaper's to collect.
    pub fn leader_stopped(self) -> bool {
        matches!(
            waitid(
                Id::Pid(self.0),
                WaitPidFlag::WSTOPPED | WaitPidFlag::WNOHANG
            ),
            Ok(WaitStatus::Stopped(..))
        )
    }

    /// Waits until no member is left or `until` passes; true if the
    /// group emptied.
    pub async fn emptied_by(self, until: Instant) -> bool {
        loop {
            if !self.alive() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            sleep(PROBE_EVERY).await;
        }
    }

    /// The same as [`Group::emptied_by`], blocking (for the watchdog, which
    /// runs no async runtime).
    pub fn emptied_by_blocking(self, until: std::time::Instant) -> bool {
        loop {
            if !self.alive() {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(PROBE_EVERY);
        }
    }
}
