//! Exit codes: the child's own, or one of lockctl's reserved codes.
//!
//! The reserved codes sit above the range programs use for their own
//! failures (1–125), above the shell's 126/127 and the signal range
//! 129–192 (128 + signal number), in the 200s as cronlock's, so a script can
//! tell "the job failed" from "the job did not run".

/// The key is held by someone else (`--no-wait`, or `--wait` ran out), or
/// with `--once` a run of the key is live elsewhere.
pub const NOT_ACQUIRED: u8 = 200;
/// The lease was lost while the child ran; the child was stopped. Also
/// `renew`/`release` of a lease that no longer holds its key.
pub const LEASE_LOST: u8 = 201;
/// `--once`: the key already succeeded; nothing was run.
pub const ALREADY_SUCCEEDED: u8 = 202;
/// `--once`: the key is `ignored` (out of attempts, or given up); nothing
/// was run. `lockctl retry KEY` puts it back.
pub const IGNORED: u8 = 203;
/// lockctl's own error: bad arguments, a bad store URL, an unreachable or
/// unprepared store.
pub const ERROR: u8 = 204;
/// The command was found but could not be started (as the shell's 126).
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found (as the shell's 127).
pub const NOT_FOUND: u8 = 127;

/// The table printed under `--help` and in the README.
pub const TABLE: &str = "\
Exit codes:
  0-255  the command's own exit code (128+N when it was killed by signal N);
         a command's own 200-204 collides with the codes below: lockctl
         then says so on stderr
  126    the command could not be started; 127: not found
  200    not acquired: the key is held (--no-wait, or --wait ran out); with
         --once, a run of the key is live elsewhere
  201    the lease was lost while the command ran (it was sent SIGTERM, then
         SIGKILL after --kill-grace); renew/release: the lease is gone
  202    --once: the key already succeeded, nothing was run
  203    --once: the key is ignored (out of attempts), nothing was run
  204    lockctl's own error (bad arguments or store URL, store unreachable)
The reserved codes can be changed per call: --conflict-exit-code,
--lost-exit-code, --skip-exit-code (202), --ignored-exit-code (203),
--error-exit-code.";

/// The reserved codes in force for this call, after overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codes {
    /// See [`NOT_ACQUIRED`].
    pub not_acquired: u8,
    /// See [`LEASE_LOST`].
    pub lost: u8,
    /// See [`ALREADY_SUCCEEDED`].
    pub already_succeeded: u8,
    /// See [`IGNORED`].
    pub ignored: u8,
    /// See [`ERROR`].
    pub error: u8,
}

impl Codes {
    /// Whether `code` is one of these reserved codes.
    pub fn reserved(&self, code: u8) -> bool {
        [
            self.not_acquired,
            self.lost,
            self.already_succeeded,
            self.ignored,
            self.error,
        ]
        .contains(&code)
    }
}

impl Default for Codes {
    fn default() -> Self {
        Codes {
            not_acquired: NOT_ACQUIRED,
            lost: LEASE_LOST,
            already_succeeded: ALREADY_SUCCEEDED,
            ignored: IGNORED,
            error: ERROR,
        }
    }
}
