//! The terminal's foreground, handed to the command's process group while
//! it runs (as `timeout --foreground` keeps it): a command in a group of
//! its own that reads the terminal would otherwise be stopped by SIGTTIN,
//! and Ctrl-C, Ctrl-Z would reach lockctl instead of it.
//!
//! Only when lockctl's stdin is a terminal and lockctl's group is its
//! foreground; cron, CI and scripts have no terminal, and a background job
//! has no foreground to hand.

use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::{Pid, getpgrp, tcgetpgrp, tcsetpgrp};

use crate::group::Group;

/// The terminal's foreground, lent to a command's group; taken back when
/// dropped.
pub struct Foreground {
    own: Pid,
}

impl Foreground {
    /// Hands the foreground to `group` if lockctl holds it; `None` when
    /// there is nothing to hand.
    pub fn lend(group: Group) -> Option<Foreground> {
        let stdin = std::io::stdin();
        let own = getpgrp();
        if tcgetpgrp(&stdin).ok()? != own {
            return None;
        }
        // A background process changing the foreground gets SIGTTOU (which
        // stops it) unless it blocks the signal; lockctl is such a process
        // when it takes the foreground back. Blocking is per thread, and
        // the runtime runs lockctl on this one; the command's mask is reset
        // at spawn.
        let mut ttou = SigSet::empty();
        ttou.add(Signal::SIGTTOU);
        let _ = ttou.thread_block();
        tcsetpgrp(&stdin, Pid::from_raw(group.id())).ok()?;
        // The command may have read the terminal before it was handed over
        // and been stopped for it: it goes on now.
        group.signal(Signal::SIGCONT);
        Some(Foreground { own })
    }

    /// The command was stopped by job control (Ctrl-Z, or SIGTTIN after a
    /// `bg`): stops lockctl too, with the terminal taken back, so the shell
    /// sees its job stopped and gets the terminal, as it would without a
    /// group of the command's own. Once continued (`fg`, `bg`), hands the
    /// foreground back if lockctl has it again, and continues the command.
    ///
    /// Stopped, lockctl renews nothing: a job stopped past its lease finds
    /// the lease lost when continued, and its command is stopped.
    pub fn suspend(&self, group: Group) {
        let stdin = std::io::stdin();
        let _ = tcsetpgrp(&stdin, self.own);
        // Returns once someone sends SIGCONT.
        let _ = kill(Pid::this(), Signal::SIGSTOP);
        if tcgetpgrp(&stdin).is_ok_and(|fg| fg == self.own) {
            let _ = tcsetpgrp(&stdin, Pid::from_raw(group.id()));
        }
        group.signal(Signal::SIGCONT);
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        let _ = tcsetpgrp(std::io::stdin(), self.own);
    }
}
