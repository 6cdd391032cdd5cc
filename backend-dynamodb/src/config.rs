//! Configuration: where the table is, how keys are named, how expiry is
//! judged, and how the SDK client is made.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::Client;
use lockstore_api::LockError;

use crate::layout::{DEFAULT_CLEANUP_ATTRIBUTE, DEFAULT_PARTITION_KEY};
use crate::{BACKEND, DynamoDbStore};

/// The default clock-skew allowance: how much later than the writer's
/// expiry time another client waits before taking a lease over.
pub const DEFAULT_CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(1);

/// How long a released or abandoned item is kept before DynamoDB TTL may
/// delete it, by default.
pub const DEFAULT_CLEANUP_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest key prefix accepted, in bytes. With the longest lock key
/// (1024 bytes) it stays within DynamoDB's 2048-byte partition-key limit.
pub const MAX_KEY_PREFIX_LEN: usize = 1024;

/// The shortest `cleanup_after` accepted: DynamoDB TTL works in whole
/// seconds and deletes items late, never early, so an hour keeps every
/// deletion far from a lease's expiry.
pub const MIN_CLEANUP_AFTER: Duration = Duration::from_secs(60 * 60);
/// The longest `cleanup_after` accepted (10 years).
pub const MAX_CLEANUP_AFTER: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// The largest `clock_skew_allowance` accepted (1 hour).
pub const MAX_CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);

/// Attribute names of the item layout, which a partition key or cleanup
/// attribute must not take.
const RESERVED_ATTRIBUTES: [&str; 9] = [
    crate::layout::FENCE,
    crate::layout::LEASE_ID,
    crate::layout::LEASE_OWNER,
    crate::layout::LEASE_EXPIRES_AT_MS,
    crate::layout::LEASE_TTL_MS,
    crate::layout::RECORD_VERSION,
    crate::layout::RELEASED_AT_MS,
    crate::layout::PERMIT_LIMIT,
    crate::layout::PERMITS,
];

fn is_reserved_attribute(name: &str) -> bool {
    RESERVED_ATTRIBUTES.contains(&name) || name.starts_with("exec_") || name.starts_with("lease_")
}

/// How a client decides that someone else's lease has expired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TakeoverMode {
    /// Compare this client's wall clock with the expiry time the holder
    /// wrote from *its* wall clock, plus the clock-skew allowance. Takes over
    /// as soon as a lease is expired, but assumes client clocks are within
    /// the allowance of each other (crate docs, "Clocks").
    #[default]
    WallClock,
    /// The AWS DynamoDB Lock Client's scheme: ignore written expiry times;
    /// take a lease over only after this client has seen the same record
    /// version, unchanged, for the lease's full TTL on its own monotonic
    /// clock. Assumes nothing about wall clocks, only that monotonic clocks
    /// run at about the same rate; the price is that a newcomer waits a full
    /// TTL even for a lease that expired long ago, and a held item carries
    /// no cleanup time (DynamoDB TTL never deletes it; an abandoned lease's
    /// item stays until the key is next acquired and released).
    SkewFree,
}

/// A source of wall-clock time, injectable for tests of clock skew.
pub trait WallClock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock ([`SystemTime::now`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Everything a [`DynamoDbStore`] needs besides its SDK client.
#[derive(Clone, Debug)]
pub(crate) struct StoreConfig {
    pub(crate) table: String,
    pub(crate) partition_key: String,
    pub(crate) key_prefix: String,
    pub(crate) cleanup_attribute: String,
    pub(crate) cleanup_after: Duration,
    pub(crate) clock_skew_allowance: Duration,
    pub(crate) takeover: TakeoverMode,
    pub(crate) clock: Arc<dyn WallClock>,
    pub(crate) max_observations: usize,
    pub(crate) ledger_retention: Option<Duration>,
}

impl StoreConfig {
    /// Wall-clock time since the Unix epoch, or a config error for a clock
    /// set before 1970 (nothing sensible can be compared then).
    pub(crate) fn wall_now(&self) -> Result<Duration, LockError> {
        self.clock.now().duration_since(UNIX_EPOCH).map_err(|_| {
            LockError::config(
                BACKEND,
                "the wall clock reads a time before 1970; set the system clock",
            )
        })
    }
}

/// Builds a [`DynamoDbStore`]; made by [`DynamoDbStore::builder`].
///
/// Connection options (`region`, `profile`, `endpoint_url`,
/// `static_credentials`, `operation_timeout`) apply to [`build`](Self::build),
/// which loads the standard AWS configuration chain. They are ignored by
/// [`build_with_client`](Self::build_with_client), which takes a client
/// configured by the caller (with its own interceptors, retry policy, …).
#[must_use]
pub struct DynamoDbStoreBuilder {
    config: StoreConfig,
    region: Option<String>,
    profile: Option<String>,
    endpoint_url: Option<String>,
    credentials: Option<(String, String)>,
    operation_timeout: Option<Duration>,
}

impl fmt::Debug for DynamoDbStoreBuilder {
    // By hand: the static credentials' secret never goes into a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = self
            .credentials
            .as_ref()
            .map(|(access_key_id, _)| format!("{access_key_id} (secret redacted)"));
        f.debug_struct("DynamoDbStoreBuilder")
            .field("config", &self.config)
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("endpoint_url", &self.endpoint_url)
            .field("credentials", &credentials)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

impl DynamoDbStoreBuilder {
    pub(crate) fn new(table: impl Into<String>) -> Self {
        Self {
            config: StoreConfig {
                table: table.into(),
                partition_key: DEFAULT_PARTITION_KEY.to_owned(),
                key_prefix: String::new(),
                cleanup_attribute: DEFAULT_CLEANUP_ATTRIBUTE.to_owned(),
                cleanup_after: DEFAULT_CLEANUP_AFTER,
                clock_skew_allowance: DEFAULT_CLOCK_SKEW_ALLOWANCE,
                takeover: TakeoverMode::WallClock,
                clock: Arc::new(SystemClock),
                max_observations: 10_000,
                ledger_retention: None,
            },
            region: None,
            profile: None,
            endpoint_url: None,
            credentials: None,
            operation_timeout: Some(Duration::from_secs(10)),
        }
    }

    /// The name of the table's partition-key attribute (type S). Default
    /// [`DEFAULT_PARTITION_KEY`] (`lock_key`).
    pub fn partition_key(mut self, attribute: impl Into<String>) -> Self {
        self.config.partition_key = attribute.into();
        self
    }

    /// A prefix put before every lock key, so several applications can share
    /// one table without seeing each other's locks. Default: none.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.key_prefix = prefix.into();
        self
    }

    /// The attribute DynamoDB TTL deletes idle items by (epoch seconds).
    /// Default [`DEFAULT_CLEANUP_ATTRIBUTE`] (`cleanup_at`). A table has one
    /// TTL attribute; name yours here if the table already has one.
    pub fn cleanup_attribute(mut self, attribute: impl Into<String>) -> Self {
        self.config.cleanup_attribute = attribute.into();
        self
    }

    /// How long after its lease's expiry (or its release) an item becomes
    /// eligible for deletion by DynamoDB TTL, at least
    /// [`MIN_CLEANUP_AFTER`]. Default [`DEFAULT_CLEANUP_AFTER`] (7 days).
    /// Fencing survives the deletion as long as the clock of the client that
    /// re-creates the item is less than this behind AWS's clock (crate docs,
    /// "Fencing"). In [`TakeoverMode::SkewFree`] a held item has no cleanup
    /// time; this applies from its release.
    pub fn cleanup_after(mut self, after: Duration) -> Self {
        self.config.cleanup_after = after;
        self
    }

    /// How long the execution ledger keeps a finished run record
    /// (`succeeded` or `ignored`) after it finished, between
    /// [`MIN_CLEANUP_AFTER`] and [`MAX_CLEANUP_AFTER`]. Without this setting
    /// (the default) records stay until
    /// [`purge`](lockstore_api::ledger::LedgerStore::purge) removes them:
    /// a succeeded key is never run again.
    ///
    /// With a retention the finishing write also sets the record's cleanup
    /// time, the retention after the finish by the finisher's wall clock
    /// (a finisher whose clock is behind shortens it), so DynamoDB TTL
    /// deletes it by itself; a record that goes back
    /// to `pending` or `running` (retry) loses its cleanup time again, and
    /// `failed` records (attempts left) never get one. The cleanup time is
    /// dated under the lock items' cleanup rule (crate docs, "Fencing"):
    /// never less than the retention after the record's fence read as
    /// microseconds, so the key's next run still gets a larger fence
    /// provided the clock of the client that re-creates the record is less
    /// than the retention behind AWS's clock. A replayed result is only
    /// available while the record lives, so choose a retention longer than
    /// the longest redelivery window of the work (e.g. an SQS queue's
    /// retention). The retention in effect is the finishing store's, so
    /// give every store of one key prefix the same.
    pub fn ledger_retention(mut self, retention: Duration) -> Self {
        self.config.ledger_retention = Some(retention);
        self
    }

    /// How much longer than the holder's written expiry time this client
    /// waits before a takeover, to cover clock differences between clients.
    /// Default [`DEFAULT_CLOCK_SKEW_ALLOWANCE`] (1 s). Used only in
    /// [`TakeoverMode::WallClock`].
    pub fn clock_skew_allowance(mut self, allowance: Duration) -> Self {
        self.config.clock_skew_allowance = allowance;
        self
    }

    /// How expiry of other clients' leases is judged. Default
    /// [`TakeoverMode::WallClock`].
    pub fn takeover(mut self, mode: TakeoverMode) -> Self {
        self.config.takeover = mode;
        self
    }

    /// The wall clock used for expiry times and fencing bases. Default
    /// [`SystemClock`]; tests inject a skewed one.
    pub fn wall_clock(mut self, clock: impl WallClock) -> Self {
        self.config.clock = Arc::new(clock);
        self
    }

    /// How many foreign record versions [`TakeoverMode::SkewFree`] remembers
    /// at most (default 10,000). Forgetting one is safe: its takeover just
    /// waits a full TTL again.
    pub fn max_observed_leases(mut self, max: usize) -> Self {
        self.config.max_observations = max.max(1);
        self
    }

    /// The AWS region (else the standard chain: `AWS_REGION`, profile, IMDS).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The named profile of `~/.aws/config` to load.
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }

    /// Sends requests to this endpoint instead of AWS, e.g. a local emulator
    /// at `http://127.0.0.1:8000`.
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Fixed credentials instead of the standard chain; for emulators, which
    /// accept any (`"test"`, `"test"`).
    pub fn static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some((access_key_id.into(), secret_access_key.into()));
        self
    }

    /// The longest one operation may take, retries included (default 10 s);
    /// `None` for the SDK's default (no limit).
    pub fn operation_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Loads the AWS configuration (environment, profile, SSO, container or
    /// instance role) with this builder's overrides, and makes the store.
    ///
    /// No request is sent; call [`DynamoDbStore::check_table`] to verify the
    /// table at start-up.
    ///
    /// # Errors
    /// [`LockError::Config`] for an invalid option (empty table or
    /// partition-key name, a prefix over [`MAX_KEY_PREFIX_LEN`], a malformed
    /// endpoint URL, no region anywhere in the configuration chain).
    pub async fn build(self) -> Result<DynamoDbStore, LockError> {
        self.validate()?;
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(LockError::config(
                BACKEND,
                format!(
                    "endpoint URL {url:?} must start with http:// or https:// \
                     (e.g. http://127.0.0.1:8000 for a local emulator)"
                ),
            ));
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some((id, secret)) = &self.credentials {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                id,
                secret,
                None,
                None,
                "lockstore-static",
            ));
        }
        if let Some(timeout) = self.operation_timeout {
            loader = loader.timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(timeout)
                    .connect_timeout(Duration::from_secs(3))
                    .build(),
            );
        }
        let sdk_config = loader.load().await;
        if sdk_config.region().is_none() {
            return Err(LockError::config(
                BACKEND,
                "no AWS region is configured: set AWS_REGION, a region in the AWS profile, \
                 or DynamoDbStore::builder(..).region(\"us-east-1\")",
            ));
        }
        Ok(DynamoDbStore::new(Client::new(&sdk_config), self.config))
    }

    /// Makes the store over a client the caller configured.
    ///
    /// # Errors
    /// [`LockError::Config`] for an invalid option, as [`build`](Self::build).
    pub fn build_with_client(self, client: Client) -> Result<DynamoDbStore, LockError> {
        self.validate()?;
        Ok(DynamoDbStore::new(client, self.config))
    }

    fn validate(&self) -> Result<(), LockError> {
        let c = &self.config;
        let problem = if c.table.len() < 3 || c.table.len() > 255 {
            Some(format!(
                "table name {:?} must be 3 to 255 characters long",
                c.table
            ))
        } else if c.partition_key.is_empty() {
            Some("the partition-key attribute name must not be empty".to_owned())
        } else if c.cleanup_attribute.is_empty() || c.cleanup_attribute == c.partition_key {
            Some(format!(
                "the cleanup attribute {:?} must be non-empty and differ from the partition key",
                c.cleanup_attribute
            ))
        } else if let Some(name) = [&c.partition_key, &c.cleanup_attribute]
            .into_iter()
            .find(|name| is_reserved_attribute(name))
        {
            Some(format!(
                "the attribute name {name:?} is used by lockstore's item layout; pick another \
                 (reserved: {}, and any name starting with `exec_` or `lease_`)",
                RESERVED_ATTRIBUTES.join(", ")
            ))
        } else if c.key_prefix.len() > MAX_KEY_PREFIX_LEN || c.key_prefix.contains('\0') {
            Some(format!(
                "the key prefix must be at most {MAX_KEY_PREFIX_LEN} bytes and contain no NUL"
            ))
        } else if !(MIN_CLEANUP_AFTER..=MAX_CLEANUP_AFTER).contains(&c.cleanup_after) {
            Some(format!(
                "cleanup_after {:?} must be between {MIN_CLEANUP_AFTER:?} and {MAX_CLEANUP_AFTER:?}: \
                 shorter lets DynamoDB TTL delete an item close to a lease's expiry, longer \
                 overflows the epoch-seconds attribute",
                c.cleanup_after
            ))
        } else if let Some(retention) = c
            .ledger_retention
            .filter(|r| !(MIN_CLEANUP_AFTER..=MAX_CLEANUP_AFTER).contains(r))
        {
            Some(format!(
                "ledger_retention {retention:?} must be between {MIN_CLEANUP_AFTER:?} and \
                 {MAX_CLEANUP_AFTER:?}: a finished run record's fence survives its deletion only \
                 for clients whose clock is less than the retention behind AWS's, and longer \
                 overflows the epoch-seconds attribute; leave it unset to keep records until purge"
            ))
        } else if c.clock_skew_allowance > MAX_CLOCK_SKEW_ALLOWANCE {
            Some(format!(
                "clock_skew_allowance {:?} is above {MAX_CLOCK_SKEW_ALLOWANCE:?}; clocks that far \
                 apart need TakeoverMode::SkewFree",
                c.clock_skew_allowance
            ))
        } else {
            None
        };
        match problem {
            Some(message) => Err(LockError::config(BACKEND, message)),
            None => Ok(()),
        }
    }
}
