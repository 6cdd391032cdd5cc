//! Opening a store from a URL, so a service (or the `lockctl` tool) picks its
//! backend from configuration instead of from code.
//!
//! | URL | backend | cargo feature |
//! |-----|---------|---------------|
//! | `memory:` (`?namespace=NAME`) | in-process, gone when the process ends | `memory` |
//! | `sqlite:PATH`, `sqlite:///abs/path`, `sqlite::memory:` (`?table=T`) | one file per host | `sqlite` |
//! | `postgres://user:pw@host/db` (`?schema=S&table=T`, plus libpq options such as `sslmode`) | PostgreSQL | `postgres` |
//! | `redis://host:6379/0`, `rediss://…` (`?prefix=P`) | Redis | `redis` |
//! | `redis+cluster://host1:port1,host2:port2`, `rediss+cluster://…` (`?prefix=P`) | Redis Cluster | `redis` |
//! | `dynamodb://TABLE?region=R&endpoint=URL&profile=P&prefix=X&partition_key=K` | DynamoDB | `dynamodb` |
//!
//! The parameters in brackets are lockstore's own and are removed before
//! the URL reaches the backend's driver; a PostgreSQL or Redis URL keeps its
//! other parameters. For DynamoDB, anything not in the URL comes from the
//! standard AWS chain (environment, profile, SSO, container or instance
//! role); `access_key_id` and `secret_access_key` parameters exist for local
//! emulators, which accept any.
//!
//! URLs are read with the [`url`] crate. Parameter values are decoded the
//! way sqlx and redis-rs decode theirs: `%XX` escapes, and `+` for a space
//! (write `%2B` for a plus sign, as in a secret key).

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use url::{ParseError, SyntaxViolation, Url, form_urlencoded};

use lockstore_api::ledger::{Ledger, LedgerStore};
use lockstore_api::semaphore::{Semaphore, SemaphoreStore};
use lockstore_api::{LockClient, LockError, LockStore};

/// Why [`open`] could not give a store. Each message says what to write
/// instead; URLs in messages never show a password.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL does not have a form lockstore knows.
    Malformed {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// The URL names a backend this build was compiled without.
    FeatureDisabled {
        /// The backend named by the URL.
        backend: &'static str,
        /// The cargo feature of the `lockstore` crate that adds it.
        feature: &'static str,
    },
    /// The backend refused to open (unreachable server, bad file, invalid
    /// table name, no AWS region).
    Backend(LockError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Malformed { url, reason } => {
                write!(f, "invalid store URL {url:?}: {reason}")
            }
            OpenError::FeatureDisabled { backend, feature } => write!(
                f,
                "this build has no {backend} backend: enable the cargo feature \
                 `{feature}` of the `lockstore` crate (lockstore = {{ features = [\"{feature}\"] }}), \
                 or use a URL of a backend it has: {}",
                compiled_schemes()
            ),
            OpenError::Backend(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Backend(err) => Some(err),
            _ => None,
        }
    }
}

impl From<LockError> for OpenError {
    fn from(err: LockError) -> Self {
        OpenError::Backend(err)
    }
}

/// The URL forms of the backends compiled in, for error messages.
fn compiled_schemes() -> String {
    let mut forms: Vec<&str> = Vec::new();
    if cfg!(feature = "memory") {
        forms.push("memory:");
    }
    if cfg!(feature = "sqlite") {
        forms.push("sqlite:PATH");
    }
    if cfg!(feature = "postgres") {
        forms.push("postgres://…");
    }
    if cfg!(feature = "redis") {
        forms.push("redis://…");
    }
    if cfg!(feature = "dynamodb") {
        forms.push("dynamodb://TABLE?region=…");
    }
    if forms.is_empty() {
        "none (no backend feature is enabled)".into()
    } else {
        forms.join(", ")
    }
}

/// A store opened from a URL: the lock store and the execution ledger of one
/// backend, as trait objects.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use lockstore::AcquireOptions;
///
/// // From configuration: "sqlite:/var/lib/app/locks.db", "postgres://…", "redis://…",
/// // "dynamodb://Locks?region=eu-west-1", …
/// let store = lockstore::open("memory:").await?;
/// store.ensure_schema().await?; // creates tables where the backend has them; idempotent
///
/// let guard = store
///     .lock_client()
///     .acquire("nightly-report", AcquireOptions::new(Duration::from_secs(30)))
///     .await?;
/// println!("holding with fence {}", guard.fence());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Store {
    locks: Arc<dyn LockStore>,
    ledger: Arc<dyn LedgerStore>,
    /// The semaphores' store; every backend [`open`] opens has one.
    /// `None` would mean a backend without semaphores.
    semaphores: Option<Arc<dyn SemaphoreStore>>,
    /// Handed out as clones, so every task of the process that waits for
    /// a key waits in the same line (see [`LockClient`]).
    lock_client: LockClient,
    /// As `lock_client`, for semaphores.
    semaphore_client: Option<Semaphore>,
    schema: Schema,
}

/// What `ensure_schema` does for the backend opened.
#[derive(Clone, Debug)]
enum Schema {
    /// Memory, Redis: nothing to create.
    #[allow(dead_code)] // unused when no backend feature is on
    Nothing,
    #[cfg(feature = "sqlite")]
    Sqlite(crate::sqlite::SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::PostgresStore),
    #[cfg(feature = "dynamodb")]
    DynamoDb(Arc<crate::dynamodb::DynamoDbStore>),
}

impl Store {
    /// Opens the store `url` names; see [`open`].
    ///
    /// # Errors
    /// As [`open`].
    pub async fn open(url: &str) -> Result<Store, OpenError> {
        open(url).await
    }

    /// The lock store.
    pub fn locks(&self) -> Arc<dyn LockStore> {
        Arc::clone(&self.locks)
    }

    /// The execution ledger's store.
    pub fn ledger(&self) -> Arc<dyn LedgerStore> {
        Arc::clone(&self.ledger)
    }

    /// The semaphores' store. Every backend has one; on DynamoDB they need
    /// the store's default `TakeoverMode::WallClock`, the mode a URL opens.
    ///
    /// # Errors
    /// [`LockError::Config`] on a backend without semaphores (none of the
    /// backends [`open`] opens today).
    pub fn semaphores(&self) -> Result<Arc<dyn SemaphoreStore>, LockError> {
        self.semaphores.clone().ok_or_else(|| {
            LockError::config(
                self.backend_name(),
                "semaphores are not available on this backend",
            )
        })
    }

    /// A [`Semaphore`] client over the semaphores' store.
    ///
    /// # Errors
    /// As [`Store::semaphores`].
    ///
    /// Every call returns a clone of one client, so waiters of a key take
    /// turns across the process, as [`Store::lock_client`]'s do.
    pub fn semaphore_client(&self) -> Result<Semaphore, LockError> {
        self.semaphores()?;
        self.semaphore_client.clone().ok_or_else(|| {
            LockError::config(
                self.backend_name(),
                "semaphores are not available on this backend",
            )
        })
    }

    /// A [`LockClient`] over the lock store.
    ///
    /// Every call returns a clone of one client: the tasks of a process
    /// that wait for the same key then wait in one line, and a release
    /// wakes only the one at its front (a client made with
    /// `LockClient::from_arc(store.locks())` has a line of its own).
    pub fn lock_client(&self) -> LockClient {
        self.lock_client.clone()
    }

    /// A [`Ledger`] over the ledger's store.
    pub fn ledger_client(&self) -> Ledger {
        Ledger::from_arc(self.ledger())
    }

    /// The backend's short name: `"memory"`, `"sqlite"`, `"postgres"`,
    /// `"redis"` or `"dynamodb"`.
    pub fn backend_name(&self) -> &'static str {
        self.locks.backend_name()
    }

    /// Creates what the backend needs if it is missing — the SQLite or
    /// PostgreSQL tables, the DynamoDB table with its ledger index and TTL —
    /// and does nothing on memory and Redis. Idempotent.
    ///
    /// # Errors
    /// Backend errors (no privilege, unreachable server, an existing
    /// DynamoDB table with another key schema).
    pub async fn ensure_schema(&self) -> Result<(), LockError> {
        match &self.schema {
            Schema::Nothing => Ok(()),
            #[cfg(feature = "sqlite")]
            Schema::Sqlite(store) => store.ensure_schema().await,
            #[cfg(feature = "postgres")]
            Schema::Postgres(store) => store.ensure_schema().await,
            #[cfg(feature = "dynamodb")]
            Schema::DynamoDb(store) => store.create_table().await,
        }
    }

    #[allow(dead_code)] // unused when no backend feature is on
    fn from_store<S: LockStore + LedgerStore>(store: Arc<S>, schema: Schema) -> Store {
        Store {
            locks: store.clone(),
            lock_client: LockClient::from_arc(store.clone() as Arc<dyn LockStore>),
            ledger: store,
            semaphores: None,
            semaphore_client: None,
            schema,
        }
    }

    /// The same store, with `store` as its semaphores.
    #[allow(dead_code)] // unused when no backend feature is on
    fn with_semaphores<S: SemaphoreStore>(mut self, store: Arc<S>) -> Store {
        self.semaphore_client = Some(Semaphore::from_arc(store.clone() as Arc<dyn SemaphoreStore>));
        self.semaphores = Some(store);
        self
    }
}

/// Opens the lock store and ledger a URL names.
///
/// | URL | backend (cargo feature) |
/// |-----|-------------------------|
/// | `memory:` (`?namespace=NAME`) | in-process (`memory`) |
/// | `sqlite:PATH`, `sqlite:///abs/path`, `sqlite::memory:` (`?table=T`) | SQLite file (`sqlite`) |
/// | `postgres://user@host/db` (`?schema=S&table=T`) | PostgreSQL (`postgres`) |
/// | `redis://host:6379/0`, `rediss://…` (`?prefix=P`) | Redis (`redis`) |
/// | `redis+cluster://host1:port1,host2:port2` (`?prefix=P`) | Redis Cluster (`redis`) |
/// | `dynamodb://TABLE` (`?region=R&endpoint=URL&profile=P&prefix=X&partition_key=K`) | DynamoDB (`dynamodb`) |
///
/// Nothing is created: call [`Store::ensure_schema`] once (or run the DDL as
/// a migration). PostgreSQL and Redis are connected to here; DynamoDB sends
/// no request until first used.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockstore::OpenError> {
/// let store = lockstore::open("memory:?namespace=billing").await?;
/// assert_eq!(store.backend_name(), "memory");
///
/// let err = lockstore::open("postgress://db/app").await.unwrap_err();
/// assert!(err.to_string().contains("postgres://"));
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`OpenError::Malformed`] for a URL of no known form or with an unknown
/// lockstore parameter; [`OpenError::FeatureDisabled`] for a backend not
/// compiled in; [`OpenError::Backend`] when the backend refuses.
pub async fn open(url: &str) -> Result<Store, OpenError> {
    let target = Target::parse(url)?;
    target.open().await
}

/// A parsed URL: which backend, and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Memory {
        namespace: Option<String>,
    },
    Sqlite {
        location: String,
        table: Option<String>,
    },
    Postgres {
        url: String,
        schema: Option<String>,
        table: Option<String>,
    },
    Redis {
        url: String,
        prefix: Option<String>,
    },
    DynamoDb(DynamoDbTarget),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct DynamoDbTarget {
    table: String,
    region: Option<String>,
    endpoint: Option<String>,
    profile: Option<String>,
    prefix: Option<String>,
    partition_key: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
}

const FORMS: &str = "memory:, sqlite:PATH, sqlite::memory:, postgres://user@host/db, \
                     redis://host:port, rediss://host:port, redis+cluster://host1:port1,host2:port2, \
                     dynamodb://TABLE?region=…";

impl Target {
    fn parse(text: &str) -> Result<Target, OpenError> {
        let malformed = |reason: String| OpenError::Malformed {
            url: redact(text),
            reason,
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(malformed(format!("it is empty; write one of {FORMS}")));
        }
        if let Some(target) = Target::parse_redis_cluster(text) {
            return Ok(target);
        }
        let url = parse_url(text).map_err(&malformed)?;
        let mut params = Params::of(url.query());
        match url.scheme() {
            "memory" => {
                if !url.path().is_empty() || url.host_str().is_some_and(|host| !host.is_empty()) {
                    return Err(malformed(
                        "a memory store has no path; write memory: or memory:?namespace=NAME"
                            .into(),
                    ));
                }
                let namespace = params.take("namespace");
                params
                    .reject_rest("memory", "namespace")
                    .map_err(&malformed)?;
                Ok(Target::Memory { namespace })
            }
            "sqlite" => {
                let table = params.take("table");
                params.reject_rest("sqlite", "table").map_err(&malformed)?;
                // sqlite:PATH and sqlite:///abs/path have only a path; in
                // sqlite://relative/path the first name is the URL's host.
                let path = format!("{}{}", url.host_str().unwrap_or(""), url.path());
                let location = match decode(&path).map_err(&malformed)? {
                    path if path == ":memory:" => "sqlite::memory:".to_owned(),
                    path if path.is_empty() => {
                        return Err(malformed(
                            "it names no file; write sqlite:PATH (e.g. sqlite:/var/lib/app/locks.db) \
                             or sqlite::memory:"
                                .into(),
                        ));
                    }
                    path => path,
                };
                Ok(Target::Sqlite { location, table })
            }
            "postgres" | "postgresql" => {
                if !url.has_authority() {
                    return Err(malformed(
                        "write postgres://user[:password]@host[:port]/database".into(),
                    ));
                }
                let schema = params.take("schema");
                let table = params.take("table");
                Ok(Target::Postgres {
                    url: params.put_back(url),
                    schema,
                    table,
                })
            }
            "redis" | "rediss" | "valkey" | "valkeys" | "redis+unix" | "unix" => {
                let prefix = params.take("prefix");
                Ok(Target::Redis {
                    url: params.put_back(url),
                    prefix,
                })
            }
            "dynamodb" | "dynamo" => {
                let table = match url.host_str() {
                    Some(table) => decode(table).map_err(&malformed)?,
                    None => {
                        return Err(malformed(
                            "write dynamodb://TABLE?region=REGION (and &endpoint=http://host:port for an emulator)"
                                .into(),
                        ));
                    }
                };
                if table.is_empty() {
                    return Err(malformed(
                        "it names no table; write dynamodb://TABLE?region=REGION".into(),
                    ));
                }
                if !matches!(url.path(), "" | "/") {
                    return Err(malformed(
                        "it has a path after the table; write dynamodb://TABLE?region=REGION"
                            .into(),
                    ));
                }
                let target = DynamoDbTarget {
                    table,
                    region: params.take("region"),
                    endpoint: params.take("endpoint"),
                    profile: params.take("profile"),
                    prefix: params.take("prefix"),
                    partition_key: params.take("partition_key"),
                    access_key_id: params.take("access_key_id"),
                    secret_access_key: params.take("secret_access_key"),
                };
                params
                    .reject_rest(
                        "dynamodb",
                        "region, endpoint, profile, prefix, partition_key, access_key_id, secret_access_key",
                    )
                    .map_err(&malformed)?;
                if target.access_key_id.is_some() != target.secret_access_key.is_some() {
                    return Err(malformed(
                        "give both access_key_id and secret_access_key, or neither (then the AWS chain is used)"
                            .into(),
                    ));
                }
                Ok(Target::DynamoDb(target))
            }
            other => {
                let hint = match other {
                    "postgress" | "pg" | "psql" | "postgre" => " (did you mean postgres://?)",
                    "sqlite3" | "file" => " (did you mean sqlite:PATH?)",
                    "ddb" | "dynamo-db" | "aws" => " (did you mean dynamodb://TABLE?)",
                    "mem" | "inmemory" => " (did you mean memory:?)",
                    "http" | "https" => {
                        " (for a DynamoDB endpoint write dynamodb://TABLE?endpoint=http://…)"
                    }
                    _ => "",
                };
                Err(malformed(format!(
                    "unknown scheme {other:?}{hint}; write one of {FORMS}"
                )))
            }
        }
    }

    /// A Redis Cluster URL (`redis+cluster://host1:port1,host2:port2`) names
    /// several nodes where a URL has one authority, so no URL parser reads
    /// it: it goes to the Redis store whole, which checks it. Only the query,
    /// which in every URL begins at the first `?`, holds lockstore's `prefix`.
    fn parse_redis_cluster(text: &str) -> Option<Target> {
        let (scheme, _) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(
            scheme.as_str(),
            "redis+cluster" | "rediss+cluster" | "valkey+cluster" | "valkeys+cluster"
        ) {
            return None;
        }
        let (base, query) = match text.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (text, None),
        };
        let mut params = Params::of(query);
        let prefix = params.take("prefix");
        let url = match params.encoded() {
            Some(query) => format!("{base}?{query}"),
            None => base.to_owned(),
        };
        Some(Target::Redis { url, prefix })
    }

    async fn open(self) -> Result<Store, OpenError> {
        match self {
            #[cfg(feature = "memory")]
            Target::Memory { namespace } => {
                let store = crate::memory::MemoryStore::new();
                let store = match namespace {
                    Some(name) => store.namespace(&name),
                    None => store,
                };
                let store = Arc::new(store);
                Ok(Store::from_store(Arc::clone(&store), Schema::Nothing).with_semaphores(store))
            }
            #[cfg(feature = "sqlite")]
            Target::Sqlite { location, table } => {
                let mut builder = crate::sqlite::SqliteStore::builder(location);
                if let Some(table) = table {
                    builder = builder.table(table);
                }
                let store = builder.build().await?;
                Ok(
                    Store::from_store(Arc::new(store.clone()), Schema::Sqlite(store.clone()))
                        .with_semaphores(Arc::new(store)),
                )
            }
            #[cfg(feature = "postgres")]
            Target::Postgres { url, schema, table } => {
                let mut builder = crate::postgres::PostgresStore::builder(url);
                if let Some(schema) = schema {
                    builder = builder.schema(schema);
                }
                if let Some(table) = table {
                    builder = builder.table(table);
                }
                let store = builder.build().await?;
                Ok(
                    Store::from_store(Arc::new(store.clone()), Schema::Postgres(store.clone()))
                        .with_semaphores(Arc::new(store)),
                )
            }
            #[cfg(feature = "redis")]
            Target::Redis { url, prefix } => {
                let mut builder = crate::redis::RedisStore::builder(url);
                if let Some(prefix) = prefix {
                    builder = builder.key_prefix(prefix);
                }
                let store = Arc::new(builder.connect().await?);
                Ok(Store::from_store(Arc::clone(&store), Schema::Nothing).with_semaphores(store))
            }
            #[cfg(feature = "dynamodb")]
            Target::DynamoDb(t) => {
                let mut builder = crate::dynamodb::DynamoDbStore::builder(t.table);
                if let Some(region) = t.region {
                    builder = builder.region(region);
                }
                if let Some(endpoint) = t.endpoint {
                    builder = builder.endpoint_url(endpoint);
                }
                if let Some(profile) = t.profile {
                    builder = builder.profile(profile);
                }
                if let Some(prefix) = t.prefix {
                    builder = builder.key_prefix(prefix);
                }
                if let Some(partition_key) = t.partition_key {
                    builder = builder.partition_key(partition_key);
                }
                if let (Some(id), Some(secret)) = (t.access_key_id, t.secret_access_key) {
                    builder = builder.static_credentials(id, secret);
                }
                let store = Arc::new(builder.build().await?);
                Ok(
                    Store::from_store(Arc::clone(&store), Schema::DynamoDb(Arc::clone(&store)))
                        .with_semaphores(store),
                )
            }
            #[allow(unreachable_patterns)] // reached when a backend feature is off
            other => Err(OpenError::FeatureDisabled {
                backend: other.backend(),
                feature: other.backend(),
            }),
        }
    }

    #[allow(dead_code)] // unused when every backend feature is on
    fn backend(&self) -> &'static str {
        match self {
            Target::Memory { .. } => "memory",
            Target::Sqlite { .. } => "sqlite",
            Target::Postgres { .. } => "postgres",
            Target::Redis { .. } => "redis",
            Target::DynamoDb(_) => "dynamodb",
        }
    }
}

/// Parses `text` with the `url` crate, refusing a `%` that starts no escape
/// (the crate would keep it as it is).
fn parse_url(text: &str) -> Result<Url, String> {
    // sqlx also reads sqlite://:memory:, where a URL parser sees a port.
    let memory_prefix = "sqlite://:memory:";
    let text = match text.get(..memory_prefix.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(memory_prefix) => {
            format!("sqlite::memory:{}", &text[memory_prefix.len()..])
        }
        _ => text.to_owned(),
    };
    let bad_escape = Cell::new(false);
    let note = |violation| {
        if violation == SyntaxViolation::PercentDecode {
            bad_escape.set(true);
        }
    };
    let url = Url::options()
        .syntax_violation_callback(Some(&note))
        .parse(&text)
        .map_err(|err| match err {
            ParseError::RelativeUrlWithoutBase => format!(
                "it has no scheme; write one of {FORMS} (a plain file path is written sqlite:PATH)"
            ),
            // The crate's messages name the part, never repeat the text.
            err => format!("{err}; write one of {FORMS}"),
        })?;
    if bad_escape.get() {
        return Err("it has a '%' not followed by two hex digits; write %25 for '%'".into());
    }
    Ok(url)
}

/// Decodes a URL's percent-escapes (a path, a host) to the text meant.
fn decode(text: &str) -> Result<String, String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| "its percent-escapes do not decode to UTF-8".to_owned())
}

/// A URL's query: lockstore's parameters are taken out, the rest kept in
/// order for the backend's driver.
struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// The query's name=value pairs, decoded as every URL library (and
    /// sqlx and redis-rs, which read the rest) decodes a query: `%XX`
    /// escapes, and `+` for a space.
    fn of(query: Option<&str>) -> Params {
        let query = query.unwrap_or("");
        Params {
            pairs: form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        }
    }

    /// Removes parameter `name` and returns its (last) value; an empty value
    /// counts as absent.
    fn take(&mut self, name: &str) -> Option<String> {
        let mut found = None;
        self.pairs.retain(|(n, v)| {
            if n == name {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found.filter(|v| !v.is_empty())
    }

    fn reject_rest(&self, backend: &str, known: &str) -> Result<(), String> {
        match self.pairs.first() {
            None => Ok(()),
            Some((name, _)) => Err(format!(
                "unknown parameter {name:?} for {backend}; its parameters are: {known}"
            )),
        }
    }

    /// The parameters not taken, as a query, or `None` when none is left.
    fn encoded(&self) -> Option<String> {
        (!self.pairs.is_empty()).then(|| {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&self.pairs)
                .finish()
        })
    }

    /// `url` with only the parameters not taken.
    fn put_back(&self, mut url: Url) -> String {
        url.set_query(self.encoded().as_deref());
        url.into()
    }
}

/// `text` as an error may show it: the password of its user info and the
/// values of secret parameters replaced by `***`. Most text shown is no
/// valid URL (that is why it is shown), so this reads it as loosely as
/// possible: everything before the last `@` is user info, and only a user
/// name plainly made of name characters is kept of it.
pub(crate) fn redact(text: &str) -> String {
    let Some((userinfo, rest)) = text.rsplit_once('@') else {
        return redact_secret_params(text);
    };
    let mut shown = String::new();
    let userinfo = match userinfo.split_once("://") {
        Some((scheme, userinfo)) if is_scheme(scheme) => {
            shown.push_str(scheme);
            shown.push_str("://");
            userinfo
        }
        _ => userinfo,
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((user, _)) => (user, true),
        None => (userinfo, false),
    };
    let plain_name = |c: char| c.is_ascii_alphanumeric() || "-._~%".contains(c);
    shown.push_str(if user.chars().all(plain_name) {
        user
    } else {
        "***"
    });
    if password {
        shown.push_str(":***");
    }
    shown.push('@');
    shown.push_str(&redact_secret_params(rest));
    shown
}

fn is_scheme(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// `text` with the values of query parameters whose (decoded) name says
/// they are secret replaced by `***`. Every `?`- or `&`-separated part is
/// looked at, wherever the query begins: the text may have lost its `?`
/// to the user info.
fn redact_secret_params(text: &str) -> String {
    let is_secret = |pair: &str| {
        form_urlencoded::parse(pair.as_bytes())
            .next()
            .is_some_and(|(name, _)| {
                let name = name.to_ascii_lowercase();
                ["secret", "password", "passwd", "token"]
                    .iter()
                    .any(|word| name.contains(word))
            })
    };
    text.split_inclusive(['?', '&'])
        .map(|part| {
            let (pair, separator) = match part.strip_suffix(['?', '&']) {
                Some(pair) => (pair, &part[pair.len()..]),
                None => (part, ""),
            };
            match pair.split_once('=') {
                Some((name, _)) if is_secret(pair) => format!("{name}=***{separator}"),
                _ => part.to_owned(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Target {
        Target::parse(url).unwrap_or_else(|err| panic!("{url}: {err}"))
    }

    fn reason(url: &str) -> String {
        match Target::parse(url) {
            Err(err @ OpenError::Malformed { .. }) => err.to_string(),
            other => panic!("{url}: expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn memory_urls() {
        assert_eq!(parse("memory:"), Target::Memory { namespace: None });
        assert_eq!(parse("memory://"), Target::Memory { namespace: None });
        assert_eq!(
            parse("memory:?namespace=billing"),
            Target::Memory {
                namespace: Some("billing".into())
            }
        );
        assert!(reason("memory:foo").contains("memory:?namespace=NAME"));
        assert!(reason("memory:?name=x").contains("\"name\""));
    }

    #[test]
    fn sqlite_urls_name_a_file() {
        let file = |url: &str| match parse(url) {
            Target::Sqlite { location, .. } => location,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            file("sqlite:/var/lib/app/locks.db"),
            "/var/lib/app/locks.db"
        );
        assert_eq!(
            file("sqlite:///var/lib/app/locks.db"),
            "/var/lib/app/locks.db"
        );
        assert_eq!(file("sqlite://locks.db"), "locks.db");
        assert_eq!(file("sqlite:locks.db"), "locks.db");
        assert_eq!(file("sqlite:my%20locks.db"), "my locks.db");
        assert_eq!(file("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(
            parse("sqlite:locks.db?table=jobs"),
            Target::Sqlite {
                location: "locks.db".into(),
                table: Some("jobs".into())
            }
        );
        assert!(reason("sqlite:").contains("sqlite:PATH"));
        assert!(reason("sqlite:x.db?tabel=jobs").contains("its parameters are: table"));
    }

    #[test]
    fn postgres_keeps_driver_parameters_and_takes_its_own() {
        assert_eq!(
            parse("postgres://app:pw@db:5432/app?sslmode=require&schema=locking&table=leases"),
            Target::Postgres {
                url: "postgres://app:pw@db:5432/app?sslmode=require".into(),
                schema: Some("locking".into()),
                table: Some("leases".into()),
            }
        );
        assert!(matches!(
            parse("postgresql://db/app"),
            Target::Postgres {
                schema: None,
                table: None,
                ..
            }
        ));
        assert!(reason("postgres:db").contains("postgres://user"));
    }

    #[test]
    fn redis_prefix_is_taken_out() {
        assert_eq!(
            parse("rediss://:pw@cache:6380/2?prefix=billing%3A&protocol=resp3"),
            Target::Redis {
                url: "rediss://:pw@cache:6380/2?protocol=resp3".into(),
                prefix: Some("billing:".into()),
            }
        );
        assert!(matches!(
            parse("redis://127.0.0.1"),
            Target::Redis { prefix: None, .. }
        ));
        // A cluster URL goes to the Redis store whole (it reads the nodes).
        assert_eq!(
            parse("redis+cluster://:pw@a:7000,b:7001?prefix=jobs:"),
            Target::Redis {
                url: "redis+cluster://:pw@a:7000,b:7001".into(),
                prefix: Some("jobs:".into()),
            }
        );
    }

    #[test]
    fn dynamodb_table_and_settings() {
        let Target::DynamoDb(t) = parse(
            "dynamodb://Locks?region=eu-west-1&endpoint=http%3A%2F%2F127.0.0.1%3A8000&profile=ops&prefix=app:&partition_key=pk",
        ) else {
            panic!("not dynamodb")
        };
        assert_eq!(t.table, "Locks");
        assert_eq!(t.region.as_deref(), Some("eu-west-1"));
        assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:8000"));
        assert_eq!(t.profile.as_deref(), Some("ops"));
        assert_eq!(t.prefix.as_deref(), Some("app:"));
        assert_eq!(t.partition_key.as_deref(), Some("pk"));
        let Target::DynamoDb(t) = parse("dynamodb://Locks?endpoint=http://127.0.0.1:8000") else {
            panic!("not dynamodb")
        };
        assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:8000"));
        assert!(reason("dynamodb://").contains("dynamodb://TABLE"));
        assert!(reason("dynamodb:Locks").contains("dynamodb://TABLE"));
        assert!(reason("dynamodb://Locks?regoin=x").contains("region, endpoint"));
        assert!(reason("dynamodb://Locks?access_key_id=x").contains("secret_access_key"));
    }

    #[test]
    fn what_the_url_parser_refuses_is_malformed() {
        assert!(reason("postgres://db:54x2/app").contains("invalid port number"));
        assert!(reason("memory://somewhere").contains("memory:?namespace=NAME"));
        assert!(reason("memory:?namespace=%zz").contains("%25"));
        assert!(reason("dynamodb://Locks/extra?region=x").contains("path after the table"));
        assert!(reason("sqlite:%FF.db").contains("UTF-8"));
    }

    #[test]
    fn parameters_are_form_decoded_and_put_back_for_the_driver() {
        assert_eq!(
            parse("sqlite://:memory:?table=t"),
            Target::Sqlite {
                location: "sqlite::memory:".into(),
                table: Some("t".into())
            }
        );
        assert_eq!(
            parse("postgres://db/app?options=-c%20search_path%3Dx&table=a+b"),
            Target::Postgres {
                url: "postgres://db/app?options=-c+search_path%3Dx".into(),
                schema: None,
                table: Some("a b".into()),
            }
        );
        let Target::DynamoDb(t) = parse("dynamodb://T?access_key_id=a&secret_access_key=x%2By")
        else {
            panic!("not dynamodb")
        };
        assert_eq!(t.secret_access_key.as_deref(), Some("x+y"));
    }

    #[test]
    fn unknown_and_missing_schemes_say_what_to_write() {
        assert!(reason("").contains("memory:"));
        assert!(reason("/var/lib/locks.db").contains("sqlite:PATH"));
        assert!(reason("postgress://db/app").contains("did you mean postgres://"));
        assert!(reason("mysql://db/app").contains("unknown scheme \"mysql\""));
        assert!(reason("http://127.0.0.1:8000").contains("dynamodb://TABLE?endpoint="));
        assert!(reason("sqlite:x%2").contains("%25"));
    }

    #[test]
    fn messages_never_show_a_password() {
        let err = reason("mysql://app:hunter2@db/app");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("app:***@db"), "{err}");
        let err = reason("dynamodb://T?access_key_id=a&secret_access_key=hunter2&x=1");
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(redact("redis://cache:6379"), "redis://cache:6379");
    }

    #[test]
    fn a_url_without_slashes_hides_its_password() {
        for url in [
            "postgres:app:hunter2@db/app",
            "app:hunter2@db/app",
            "postgres:/app:hunter2@db/app",
        ] {
            let shown = redact(url);
            assert!(!shown.contains("hunter2"), "{url} shown as {shown}");
            assert!(shown.ends_with("@db/app"), "{url} shown as {shown}");
        }
        let err = reason("postgres:app:hunter2@db/app");
        assert!(!err.contains("hunter2"), "{err}");
    }

    /// Text shown in errors is mostly no valid URL, so a password must be
    /// hidden however the URL around it is broken, and so must secret
    /// parameters, however their names are written.
    #[test]
    fn no_error_shows_a_secret() {
        let secrets = [
            "mysql://app:hunter2@db/app",
            "postgres://app:hun%74er2@db:5432/app?sslmode=require",
            "postgres://app:p%40ss@db/app",
            "postgres://app:hun?ter2@db/app",
            "postgres://app:hun/ter2@db/app",
            "postgres://app:hun#ter2@db/app",
            "postgres://me@corp.example:hunter2@db/app",
            "postgress://app:pw@db/app?password=hunter2",
            "rediss+cluster://:hunter2@a:7000,b:7001?prefix=%zz",
            "dynamodb://T?access_key_id=a&secret_access_key=hunter2&x=1",
            "dynamodb://T?secret%5Faccess%5Fkey=hunter2&regoin=x",
            "dynamodb://T?SECRET_ACCESS_KEY=hunter2&regoin=x",
            "dynamodb://T?aws_secret_access_key=hunter2",
            "dynamodb://T?endpoint=http://u@h&secret_access_key=hunter2&x=1",
            "dynamodb://T?secret_access_key=hunter2&endpoint=http://u@h&x=1",
            "memory:app:hunter2@x",
            "sqlite:app:hunter2@x%2",
        ];
        for url in secrets {
            let shown = redact(url);
            assert!(
                !shown.contains("hunter2")
                    && !shown.contains("hun%74er2")
                    && !shown.contains("p%40ss"),
                "{url} shown as {shown}"
            );
            if let Err(err) = Target::parse(url) {
                for text in [err.to_string(), format!("{err:?}")] {
                    assert!(!text.contains("hunter2"), "{url}: {text}");
                    assert!(!text.contains("hun%74er2"), "{url}: {text}");
                    assert!(!text.contains("ter2"), "{url}: {text}");
                }
            }
        }
        // What is no secret stays readable.
        assert_eq!(
            redact("postgres://app:pw@db:5432/app?sslmode=require"),
            "postgres://app:***@db:5432/app?sslmode=require"
        );
        assert_eq!(
            redact("dynamodb://T?region=eu-west-1&access_key_id=AKIA&secret_access_key=s"),
            "dynamodb://T?region=eu-west-1&access_key_id=AKIA&secret_access_key=***"
        );
        assert_eq!(redact("postgres://app@db/app"), "postgres://app@db/app");
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn memory_store_opens_and_locks() {
        let a = open("memory:?namespace=a").await.unwrap();
        assert_eq!(a.backend_name(), "memory");
        a.ensure_schema().await.unwrap();
        let guard = a
            .lock_client()
            .acquire(
                "k",
                crate::AcquireOptions::new(std::time::Duration::from_secs(5)),
            )
            .await
            .unwrap();
        assert!(a.locks().inspect(guard.key()).await.unwrap().is_some());
        guard.release().await.unwrap();
    }

    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn a_backend_compiled_out_names_its_feature() {
        let err = open("postgres://db/app").await.unwrap_err();
        assert!(matches!(
            err,
            OpenError::FeatureDisabled {
                feature: "postgres",
                ..
            }
        ));
        assert!(
            err.to_string().contains("features = [\"postgres\"]"),
            "{err}"
        );
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_in_memory_opens_with_its_schema() {
        let store = open("sqlite::memory:").await.unwrap();
        store.ensure_schema().await.unwrap();
        assert_eq!(store.backend_name(), "sqlite");
        let ledger = store.ledger_client();
        assert!(ledger.get("nothing").await.unwrap().is_none());
    }
}
