//! The Lua scripts, one per operation, each run with one `EVALSHA`.
//!
//! [`redis::Script`] sends `EVALSHA` and, only when the server answers
//! `NOSCRIPT` (first use, or after a restart or `SCRIPT FLUSH`), loads the
//! script and tries again; in steady state every operation is one command.
//! The scripts live in `src/lua/` so they are reviewed as Lua.

use std::sync::LazyLock;

use redis::Script;

/// Takes a key, refreshes the caller's own live lease, or reports the holder.
pub(crate) static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/acquire.lua")));

/// Extends a live lease.
pub(crate) static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/renew.lua")));

/// Ends a live lease and publishes the release.
pub(crate) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/release.lua")));

/// Reports the live holder, if any.
pub(crate) static INSPECT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/inspect.lua")));

/// Takes a semaphore permit, refreshes the caller's own, or reports the holders.
pub(crate) static SEMAPHORE_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/semaphore_acquire.lua")));

/// Extends a live permit.
pub(crate) static SEMAPHORE_RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/semaphore_renew.lua")));

/// Ends a live permit and publishes the release to refused waiters.
pub(crate) static SEMAPHORE_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/semaphore_release.lua")));

/// Reports a semaphore's live permits.
pub(crate) static SEMAPHORE_INSPECT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/semaphore_inspect.lua")));
