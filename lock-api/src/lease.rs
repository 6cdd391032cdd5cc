//! Leases and what they carry: lease ids, fencing tokens, TTLs, owner labels.
//!
//! A [`Lease`] is proof that a caller held a key at the moment a backend said
//! so, for [`Ttl`] from then on. Three numbers matter:
//!
//! * the **lease id** — 128 random bits made by the client. It is the only way
//!   to renew or release: knowing the key is not enough.
//! * the **fencing token** — a `u64` that strictly increases for a key with
//!   every successful acquisition. Pass it to whatever the lock protects, and
//!   have that resource reject a token lower than the highest it has seen: a
//!   paused holder whose lease expired can then do no harm.
//! * the **local deadline** — `request sent + TTL` (less 1 ms for backends
//!   that keep whole milliseconds), on the caller's monotonic clock. The lease
//!   was certainly not yet expired on the server before then, whatever the
//!   network did. A holder trusts it until a safety margin before that
//!   ([`Lease::trusted_until`]), for clock-rate differences and pauses.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::key::preview;
use crate::{LockError, LockKey};

/// The secret that proves ownership of a lease: 128 random bits.
///
/// Its [`Display`](fmt::Display) form is 32 lowercase hexadecimal digits and
/// [`FromStr`] parses it back, so a lease can travel through a shell or a
/// job queue. [`Debug`](fmt::Debug) shows only a prefix, so logs do not leak it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(u128);

impl LeaseId {
    /// A fresh id from the thread-local CSPRNG.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The id as a number, for backends that store it in binary.
    pub fn as_u128(&self) -> u128 {
        self.0
    }

    /// Rebuilds an id stored in binary by [`LeaseId::as_u128`].
    pub fn from_u128(value: u128) -> Self {
        Self(value)
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({:08x}…)", (self.0 >> 96) as u32)
    }
}

impl FromStr for LeaseId {
    type Err = LockError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `from_str_radix` alone would accept "+1" and short inputs; a lease id
        // is exactly 32 hex digits so that ids compare as text too.
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LockError::InvalidLeaseId { input: preview(s) });
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| LockError::InvalidLeaseId { input: preview(s) })
    }
}

/// A fencing token: strictly increasing per key across acquisitions.
///
/// Renewal keeps the token; every new acquisition (after release, expiry or
/// takeover) gets a larger one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token read from a backend.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The token as a number, to pass to a fenced resource.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How long a lease lives unless renewed: whole milliseconds, from
/// [`Ttl::MIN`] to [`Ttl::MAX`].
///
/// Sub-millisecond parts are rounded **up**, and the lease's local deadline
/// uses the same rounded value the backend is sent, so both sides agree.
///
/// ```
/// use std::time::Duration;
/// use lockstore_api::Ttl;
///
/// let ttl = Ttl::new(Duration::from_secs(30))?;
/// assert_eq!(ttl.as_millis(), 30_000);
/// assert!(Ttl::new(Duration::ZERO).is_err());
/// assert!(Ttl::new(Duration::from_secs(25 * 3600)).is_err());
/// # Ok::<(), lockstore_api::LockError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(u64);

impl Ttl {
    /// The shortest TTL: one millisecond.
    pub const MIN: Ttl = Ttl(1);
    /// The longest TTL: 24 hours. A longer lease is a lock nobody can break
    /// when its holder dies; renew instead.
    pub const MAX: Ttl = Ttl(24 * 60 * 60 * 1000);

    /// Validates a duration as a TTL.
    ///
    /// # Errors
    /// [`LockError::InvalidTtl`] for zero or for more than [`Ttl::MAX`].
    pub fn new(ttl: Duration) -> Result<Self, LockError> {
        if ttl.is_zero() {
            return Err(LockError::InvalidTtl {
                requested: ttl,
                reason: "a TTL must be greater than zero".into(),
            });
        }
        let millis = ttl.as_nanos().div_ceil(1_000_000);
        if millis > u128::from(Self::MAX.0) {
            return Err(LockError::InvalidTtl {
                requested: ttl,
                reason: format!(
                    "a TTL must be at most {:?}; hold longer by renewing",
                    Self::MAX.as_duration()
                ),
            });
        }
        Ok(Self(millis as u64))
    }

    /// A TTL of `millis` milliseconds.
    ///
    /// # Errors
    /// As [`Ttl::new`].
    pub fn from_millis(millis: u64) -> Result<Self, LockError> {
        Self::new(Duration::from_millis(millis))
    }

    /// The TTL in whole milliseconds, as sent to backends.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The TTL as a duration.
    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl TryFrom<Duration> for Ttl {
    type Error = LockError;

    fn try_from(value: Duration) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

/// Who holds a lease, in words a person reads when a lock is busy:
/// by default `host/pid-N/task-M`.
///
/// 1 to [`OwnerLabel::MAX_LEN`] bytes, no NUL. It is information, never
/// authority: only the [`LeaseId`] proves ownership.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct OwnerLabel(Arc<str>);

impl OwnerLabel {
    /// The longest label accepted, in bytes.
    pub const MAX_LEN: usize = 256;

    /// Validates a label.
    ///
    /// # Errors
    /// [`LockError::InvalidOwner`] when it is empty, too long or contains NUL.
    pub fn new(label: impl AsRef<str>) -> Result<Self, LockError> {
        let label = label.as_ref();
        let reason = if label.is_empty() {
            "an owner label must not be empty"
        } else if label.len() > Self::MAX_LEN {
            "an owner label must be at most 256 bytes"
        } else if label.as_bytes().contains(&0) {
            "an owner label must not contain a NUL byte"
        } else {
            return Ok(Self(Arc::from(label)));
        };
        Err(LockError::InvalidOwner {
            label: preview(label),
            reason,
        })
    }

    /// `hostname/pid-N` for this process; the host name is cut to fit.
    /// Computed once per process.
    pub fn for_this_process() -> Self {
        static PROCESS: OnceLock<OwnerLabel> = OnceLock::new();
        PROCESS
            .get_or_init(|| {
                let host = gethostname::gethostname();
                let host: String = host
                    .to_string_lossy()
                    .chars()
                    .filter(|c| *c != '\0')
                    .take(200)
                    .collect();
                let host = if host.is_empty() {
                    "unknown-host".into()
                } else {
                    host
                };
                Self(Arc::from(format!("{host}/pid-{}", std::process::id())))
            })
            .clone()
    }

    /// `hostname/pid-N/task-M` inside a tokio task, else
    /// [`OwnerLabel::for_this_process`]: the default label of a lease, so a
    /// person can tell which task of which process holds a key.
    pub fn for_this_task() -> Self {
        let process = Self::for_this_process();
        match tokio::task::try_id() {
            Some(task) => Self(Arc::from(format!("{process}/task-{task}"))),
            None => process,
        }
    }

    /// The label as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for OwnerLabel {
    /// [`OwnerLabel::for_this_task`].
    fn default() -> Self {
        Self::for_this_task()
    }
}

impl fmt::Display for OwnerLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OwnerLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerLabel({:?})", &*self.0)
    }
}

/// Who holds a key that could not be acquired, as reported by the backend in
/// the same reply that refused the acquisition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    owner: String,
    fence: FencingToken,
    expires_in: Duration,
}

impl Holder {
    /// Builds a holder report. `expires_in` is the time left by the backend's
    /// clock (for DynamoDB, by the writer's clock as read by this client).
    pub fn new(owner: impl Into<String>, fence: FencingToken, expires_in: Duration) -> Self {
        Self {
            owner: owner.into(),
            fence,
            expires_in,
        }
    }

    /// The holder's owner label, as stored.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The holder's fencing token.
    pub fn fence(&self) -> FencingToken {
        self.fence
    }

    /// Time left on the holder's lease when the backend answered.
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }
}

/// How far a backend's clock may lag the moment a request was sent because
/// it keeps whole milliseconds (SQLite's `unixepoch('subsec')`, DynamoDB's
/// `expires_at_ms`): the TTL can start up to this much before `sent`.
pub(crate) const BACKEND_CLOCK_GRANULARITY: Duration = Duration::from_millis(1);

/// A held lease: the key, the secret id, the fencing token, the TTL it was
/// granted with, and the local deadline.
///
/// Made by the client layer ([`LockClient`](crate::LockClient)), which stamps
/// the moment the request was sent; backends only answer yes or no.
#[derive(Clone, Debug)]
pub struct Lease {
    key: LockKey,
    id: LeaseId,
    fence: FencingToken,
    ttl: Ttl,
    owner: OwnerLabel,
    sent_at: Instant,
    safety_margin: Duration,
}

impl Lease {
    /// Assembles a lease from its parts. `sent_at` must be taken *before* the
    /// request that granted or renewed the lease was sent. The safety margin
    /// is a tenth of the TTL; change it with [`Lease::with_safety_margin`].
    pub fn new(
        key: LockKey,
        id: LeaseId,
        fence: FencingToken,
        ttl: Ttl,
        owner: OwnerLabel,
        sent_at: Instant,
    ) -> Self {
        Self {
            key,
            id,
            fence,
            ttl,
            owner,
            sent_at,
            safety_margin: ttl.as_duration() / 10,
        }
    }

    /// The same lease, trusted until `margin` before its deadline.
    pub fn with_safety_margin(mut self, margin: Duration) -> Self {
        self.safety_margin = margin;
        self
    }

    /// The locked key.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// The secret lease id.
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The fencing token of this acquisition.
    pub fn fence(&self) -> FencingToken {
        self.fence
    }

    /// The TTL granted by the last acquire or renew.
    pub fn ttl(&self) -> Ttl {
        self.ttl
    }

    /// The owner label stored with the lease.
    pub fn owner(&self) -> &OwnerLabel {
        &self.owner
    }

    /// When the last acquire or renew request was sent.
    pub fn sent_at(&self) -> Instant {
        self.sent_at
    }

    /// How long before [`Lease::deadline`] the holder stops trusting the
    /// lease: room for clock-rate differences and pauses.
    pub fn safety_margin(&self) -> Duration {
        self.safety_margin
    }

    /// `sent_at + ttl − 1 ms`: the backend may let the lease go from this
    /// instant on. (Backends that keep whole milliseconds floor the moment
    /// they start counting, so a TTL can begin up to 1 ms before `sent_at`.)
    pub fn deadline(&self) -> Instant {
        self.sent_at
            + self
                .ttl
                .as_duration()
                .saturating_sub(BACKEND_CLOCK_GRANULARITY)
    }

    /// The last instant the holder may trust the lease: the deadline minus
    /// the safety margin, never before `sent_at`.
    pub fn trusted_until(&self) -> Instant {
        self.deadline()
            .checked_sub(self.safety_margin)
            .unwrap_or(self.sent_at)
            .max(self.sent_at)
    }

    /// Whether the lease may no longer be trusted: now is at or past
    /// [`Lease::trusted_until`] (the deadline minus the safety margin).
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.trusted_until()
    }

    /// The same lease after a renewal sent at `sent_at` for `ttl`.
    pub(crate) fn renewed(&self, ttl: Ttl, sent_at: Instant) -> Self {
        Self {
            ttl,
            sent_at,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_id_round_trips_through_text() {
        let id = LeaseId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<LeaseId>().unwrap(), id);
        assert!(!format!("{id:?}").contains(&text));
    }

    #[test]
    fn malformed_lease_ids_are_rejected() {
        for bad in [
            "",
            "abc",
            &"g".repeat(32),
            &"0".repeat(33),
            "+0000000000000000000000000000001",
        ] {
            assert!(
                matches!(
                    bad.parse::<LeaseId>(),
                    Err(LockError::InvalidLeaseId { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ttl_rounds_up_to_millis_and_checks_bounds() {
        assert_eq!(
            Ttl::new(Duration::from_micros(1500)).unwrap().as_millis(),
            2
        );
        assert_eq!(Ttl::new(Duration::from_nanos(1)).unwrap(), Ttl::MIN);
        assert_eq!(Ttl::new(Ttl::MAX.as_duration()).unwrap(), Ttl::MAX);
        assert!(Ttl::new(Ttl::MAX.as_duration() + Duration::from_nanos(1)).is_err());
        assert!(Ttl::new(Duration::MAX).is_err());
        assert!(Ttl::new(Duration::ZERO).is_err());
    }

    #[test]
    fn owner_labels_are_validated() {
        assert!(OwnerLabel::new("worker-1").is_ok());
        assert!(OwnerLabel::new("").is_err());
        assert!(OwnerLabel::new("a".repeat(257)).is_err());
        assert!(OwnerLabel::new("a\0").is_err());
        assert!(OwnerLabel::for_this_process().as_str().contains("/pid-"));
    }

    fn lease(ttl: Duration) -> Lease {
        Lease::new(
            LockKey::new("k").unwrap(),
            LeaseId::random(),
            FencingToken::new(1),
            Ttl::new(ttl).unwrap(),
            OwnerLabel::new("me").unwrap(),
            Instant::now(),
        )
    }

    /// m1: a backend that floors its clock to whole milliseconds may start
    /// the TTL up to 1 ms before the request was sent.
    #[tokio::test(start_paused = true)]
    async fn deadline_allows_for_a_backend_clock_floored_to_milliseconds() {
        let lease = lease(Duration::from_secs(1));
        assert_eq!(
            lease.deadline(),
            lease.sent_at() + Duration::from_secs(1) - Duration::from_millis(1)
        );
    }

    /// m1: a bare lease stops being trusted a safety margin before its
    /// deadline, as a guard does.
    #[tokio::test(start_paused = true)]
    async fn is_expired_counts_the_safety_margin() {
        let lease = lease(Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(850)).await;
        assert!(!lease.is_expired());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(lease.is_expired(), "trusted inside the default margin");
        let careful = lease.clone().with_safety_margin(Duration::from_millis(200));
        assert!(careful.trusted_until() < lease.trusted_until());
    }
}
