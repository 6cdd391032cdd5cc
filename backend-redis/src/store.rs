//! [`RedisStore`] and its [`LockStore`] implementation: each operation is one
//! script call, and its reply is read strictly.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lockstore_api::{
    AcquireOutcome, AcquireRequest, FencingToken, Holder, LeaseId, LockError, LockKey, LockStore,
    ReleaseOutcome, ReleaseSignal, RenewOutcome, Ttl,
};
use redis::Value;
use redis::aio::ConnectionManager;

use crate::config::RedisStoreBuilder;
use crate::connection::RedisConnection;
use crate::error::{command_error, unexpected_reply};
use crate::notify::Listener;
use crate::scripts;

/// A [`LockStore`] on Redis. Cheap to clone; clones share the connection and
/// the release listener.
///
/// Made by [`RedisStore::connect`] or [`RedisStore::builder`]. Use it within
/// the tokio runtime that connected it (its connection tasks live there).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// To the server or the cluster.
    pub(crate) connection: RedisConnection,
    /// `host:port` only (a cluster: its seeds), for messages: the URL may
    /// hold a password.
    pub(crate) address: String,
    pub(crate) key_prefix: String,
    pub(crate) channel: String,
    pub(crate) idle_retention_ms: u64,
    /// How long finished ledger records live, in ms; 0 = until purge.
    pub(crate) ledger_retention_ms: u64,
    /// Finished ledger records deleted per purge script, at most.
    pub(crate) purge_batch_size: u32,
    /// Running records examined per stuck-query script, at most.
    pub(crate) stuck_scan_batch_size: u32,
    pub(crate) notifications: bool,
    pub(crate) listener: Arc<Listener>,
    /// `maxmemory-policy` as the server reported it at connect time.
    pub(crate) eviction_policy: Option<String>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.shut_down();
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.inner.address)
            .field("key_prefix", &self.inner.key_prefix)
            .field("notifications", &self.inner.notifications)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` with default settings: key prefix
    /// `lockstore:`, notifications on, 5 s timeouts.
    ///
    /// URLs: `redis://[user:password@]host[:port][/db]`, `rediss://…` for
    /// TLS; `redis+cluster://host1:port1,host2:port2` (`rediss+cluster://…`)
    /// for a Redis Cluster, named by some of its nodes.
    ///
    /// # Errors
    /// As [`RedisStoreBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Self, LockError> {
        Self::builder(url).connect().await
    }

    /// Settings for a store on the Redis at `url`; finish with
    /// [`RedisStoreBuilder::connect`].
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(url)
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// The Redis key holding the record of `key`: `<prefix>{<key>}`.
    ///
    /// The braces make the whole lock key the cluster hash tag, so every
    /// Redis key a lock ever needs (`<prefix>{<key>}…`) lands in one slot.
    pub fn record_key(&self, key: &LockKey) -> String {
        format!("{}{{{}}}", self.inner.key_prefix, key.as_str())
    }

    /// The server's `maxmemory-policy` as it answered at connect time
    /// (`None` if it refused `CONFIG GET` or the check was off). Anything but
    /// `noeviction` can evict a live lease; see [`EvictionCheck`](crate::EvictionCheck).
    pub fn eviction_policy(&self) -> Option<&str> {
        self.inner.eviction_policy.as_deref()
    }

    /// The pub/sub channel this store's releases are published on.
    pub fn release_channel(&self) -> &str {
        &self.inner.channel
    }

    /// A clone of the connection the store uses, for callers that want to
    /// share it: to one server or to a cluster.
    pub fn connection(&self) -> RedisConnection {
        self.inner.connection.clone()
    }

    /// A clone of the store's [`ConnectionManager`]; `None` for a store on
    /// a Redis Cluster (see [`connection`](Self::connection)).
    pub fn connection_manager(&self) -> Option<ConnectionManager> {
        match &self.inner.connection {
            RedisConnection::Node(manager) => Some(manager.clone()),
            RedisConnection::Cluster(_) => None,
        }
    }

    /// The namespace's key prefix (for the ledger's keys).
    /// How long finished ledger records live, in ms; 0 = until purge.
    pub(crate) fn ledger_retention_ms(&self) -> u64 {
        self.inner.ledger_retention_ms
    }

    /// Finished ledger records deleted per purge script, at most.
    pub(crate) fn purge_batch_size(&self) -> u32 {
        self.inner.purge_batch_size
    }

    /// Running records examined per stuck-query script, at most.
    pub(crate) fn stuck_scan_batch_size(&self) -> u32 {
        self.inner.stuck_scan_batch_size
    }

    pub(crate) fn key_prefix(&self) -> &str {
        &self.inner.key_prefix
    }

    /// How long an idle record outlives its last lease, in ms.
    pub(crate) fn idle_retention_ms(&self) -> u64 {
        self.inner.idle_retention_ms
    }

    /// Whether a task of this process waits for `message` on the release
    /// channel (it registered before its attempt).
    pub(crate) fn message_has_waiters(&self, message: &str) -> bool {
        self.inner.notifications && self.inner.listener.has_waiters(message)
    }

    /// A signal for the next message `message` on the release channel (the
    /// ledger's finish notifications share the listener).
    pub(crate) fn message_signal(&self, message: &str) -> Option<ReleaseSignal> {
        if !self.inner.notifications {
            return None;
        }
        let mut changed = self.inner.listener.register(message)?;
        Some(ReleaseSignal::new(async move {
            let _ = changed.changed().await;
        }))
    }

    pub(crate) async fn invoke(
        &self,
        doing: impl Fn() -> String,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<Value, LockError> {
        let mut connection = self.inner.connection.clone();
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|err| command_error(&doing(), err))
    }
}

#[async_trait]
impl LockStore for RedisStore {
    fn backend_name(&self) -> &'static str {
        "redis"
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, LockError> {
        let doing = || format!("acquire {:?}", request.key.as_str());
        // A caller that will wait on a refusal has registered for the next
        // release (`release_signal`) before this attempt; say so, so that
        // a refusal asks the holder's release to publish.
        let waits =
            self.inner.notifications && self.inner.listener.has_waiters(request.key.as_str());
        let ttl_ms = request.ttl.as_millis();
        let mut invocation = scripts::ACQUIRE.prepare_invoke();
        invocation
            .key(self.record_key(&request.key))
            .arg(request.lease_id.to_string())
            .arg(request.owner.as_str())
            .arg(ttl_ms)
            .arg(ttl_ms.saturating_add(self.inner.idle_retention_ms))
            .arg(if waits { "1" } else { "0" });
        let reply = self.invoke(doing, invocation).await?;
        parse_acquire(&reply).ok_or_else(|| unexpected_reply(&doing(), &reply))
    }

    async fn renew(
        &self,
        key: &LockKey,
        lease_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        let doing = || format!("renew {:?}", key.as_str());
        let mut invocation = scripts::RENEW.prepare_invoke();
        invocation
            .key(self.record_key(key))
            .arg(lease_id.to_string())
            .arg(ttl.as_millis())
            .arg(self.inner.idle_retention_ms);
        let reply = self.invoke(doing, invocation).await?;
        match int(&reply) {
            Some(1) => Ok(RenewOutcome::Renewed),
            Some(0) => Ok(RenewOutcome::Lost),
            _ => Err(unexpected_reply(&doing(), &reply)),
        }
    }

    async fn release(&self, key: &LockKey, lease_id: LeaseId) -> Result<ReleaseOutcome, LockError> {
        let doing = || format!("release {:?}", key.as_str());
        let mut invocation = scripts::RELEASE.prepare_invoke();
        invocation
            .key(self.record_key(key))
            .arg(lease_id.to_string())
            .arg(self.inner.idle_retention_ms)
            .arg(&self.inner.channel)
            .arg(key.as_str());
        let reply = self.invoke(doing, invocation).await?;
        match int(&reply) {
            Some(1) => Ok(ReleaseOutcome::Released),
            Some(0) => Ok(ReleaseOutcome::NotHeld),
            _ => Err(unexpected_reply(&doing(), &reply)),
        }
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<Holder>, LockError> {
        let doing = || format!("inspect {:?}", key.as_str());
        let mut invocation = scripts::INSPECT.prepare_invoke();
        invocation.key(self.record_key(key));
        let reply = self.invoke(doing, invocation).await?;
        parse_inspect(&reply).ok_or_else(|| unexpected_reply(&doing(), &reply))
    }

    fn release_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        if !self.inner.notifications {
            return None;
        }
        let mut released = self.inner.listener.register(key.as_str())?;
        Some(ReleaseSignal::new(async move {
            // An error means the sender was dropped: wake up and try again.
            let _ = released.changed().await;
        }))
    }
}

/// `{1, fence}` or `{0, owner, fence, µs left}`; `None` for anything else, so
/// a malformed reply is an error and never a lock reported as held.
fn parse_acquire(reply: &Value) -> Option<AcquireOutcome> {
    let Value::Array(items) = reply else {
        return None;
    };
    match items.as_slice() {
        [status, fence] if int(status) == Some(1) => Some(AcquireOutcome::Acquired {
            fence: fence_of(fence)?,
        }),
        [status, owner, fence, left] if int(status) == Some(0) => {
            Some(AcquireOutcome::Held(holder_of(owner, fence, left)?))
        }
        _ => None,
    }
}

/// `{}` or `{owner, fence, µs left}`.
fn parse_inspect(reply: &Value) -> Option<Option<Holder>> {
    let Value::Array(items) = reply else {
        return None;
    };
    match items.as_slice() {
        [] => Some(None),
        [owner, fence, left] => Some(Some(holder_of(owner, fence, left)?)),
        _ => None,
    }
}

fn holder_of(owner: &Value, fence: &Value, left: &Value) -> Option<Holder> {
    let owner = match owner {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(text) => text.clone(),
        _ => return None,
    };
    let left = u64::try_from(int(left)?).ok()?;
    Some(Holder::new(
        owner,
        fence_of(fence)?,
        Duration::from_micros(left),
    ))
}

fn fence_of(value: &Value) -> Option<FencingToken> {
    u64::try_from(int(value)?).ok().map(FencingToken::new)
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn replies_parse_strictly() {
        let acquired = Value::Array(vec![Value::Int(1), Value::Int(1_700_000_000_000_000)]);
        assert_eq!(
            parse_acquire(&acquired),
            Some(AcquireOutcome::Acquired {
                fence: FencingToken::new(1_700_000_000_000_000)
            })
        );
        let held = Value::Array(vec![
            Value::Int(0),
            bulk("web-1"),
            Value::Int(7),
            Value::Int(2_500),
        ]);
        assert_eq!(
            parse_acquire(&held),
            Some(AcquireOutcome::Held(Holder::new(
                "web-1",
                FencingToken::new(7),
                Duration::from_micros(2_500)
            )))
        );
        for bad in [
            Value::Nil,
            Value::Int(1),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Int(2), Value::Int(7)]),
            Value::Array(vec![Value::Int(1), Value::Int(-3)]),
            Value::Array(vec![
                Value::Int(0),
                Value::Nil,
                Value::Int(7),
                Value::Int(1),
            ]),
        ] {
            assert_eq!(parse_acquire(&bad), None, "{bad:?}");
        }
        assert_eq!(parse_inspect(&Value::Array(vec![])), Some(None));
        assert_eq!(parse_inspect(&Value::Nil), None);
    }
}
