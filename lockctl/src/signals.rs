//! Signals lockctl receives, to forward to the command's process group.
//!
//! Receiving goes through tokio's handlers (sending, in `group`, through
//! nix's safe `killpg`), so the crate stays free of `unsafe`.

use std::io;

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

/// The signals forwarded to the child: SIGINT, SIGTERM, SIGHUP.
///
/// Once installed, they no longer end lockctl: it passes them on and exits
/// when the child does, with the child's code.
pub struct Forwarded {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Forwarded {
    /// Installs the handlers.
    ///
    /// # Errors
    /// When the OS refuses a handler.
    pub fn install() -> io::Result<Self> {
        Ok(Forwarded {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal received.
    pub async fn next(&mut self) -> Signal {
        loop {
            // `None` would mean the runtime's signal driver is gone; then
            // nothing more arrives, and the other arms decide.
            tokio::select! {
                Some(()) = self.interrupt.recv() => return Signal::SIGINT,
                Some(()) = self.terminate.recv() => return Signal::SIGTERM,
                Some(()) = self.hangup.recv() => return Signal::SIGHUP,
                else => std::future::pending::<()>().await,
            }
        }
    }
}
