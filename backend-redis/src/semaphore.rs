//! Semaphores on Redis: one hash per semaphore key, one Lua script per
//! operation (`lua/semaphore_*.lua`), so each is one `EVALSHA`.
//!
//! The hash holds the key's limit, the last fence, and one field per
//! permit (`p:<permit id>` → expiry, fence, owner). Expired permits are
//! dropped by the next acquire in the same script. All of a key's permits
//! live in one hash, whose name carries the key as its hash tag
//! (`<prefix>sem:{<key>}`), so on a Redis Cluster every operation is on one
//! slot. Fences follow the lock's rule (at least the server's time in µs,
//! above the last), so they rise across release, expiry, idle retention
//! and a restart without persistence, under the same assumptions.
//!
//! Release notifications ride on the store's release channel: a refused
//! waiter marks the hash, and the next release publishes
//! `"\0semaphore:" + key` (a lock key cannot contain NUL, so it never meets
//! a lock's message).

use std::time::Duration;

use async_trait::async_trait;
use lockstore_api::semaphore::{PermitOutcome, PermitRequest, Permits, SemaphoreStore};
use lockstore_api::{
    FencingToken, Holder, LeaseId, LockError, LockKey, ReleaseOutcome, ReleaseSignal, RenewOutcome,
    Ttl,
};
use redis::Value;

use crate::RedisStore;
use crate::error::unexpected_reply;
use crate::scripts;

impl RedisStore {
    /// The Redis key of a semaphore's hash: its key as the hash tag.
    pub fn semaphore_key(&self, key: &LockKey) -> String {
        format!("{}sem:{{{}}}", self.key_prefix(), key.as_str())
    }

    fn semaphore_message(key: &LockKey) -> String {
        format!("\0semaphore:{}", key.as_str())
    }
}

#[async_trait]
impl SemaphoreStore for RedisStore {
    fn semaphore_backend_name(&self) -> &'static str {
        "redis"
    }

    async fn try_acquire_permit(
        &self,
        request: &PermitRequest,
    ) -> Result<PermitOutcome, LockError> {
        let doing = || format!("acquire a permit of {:?}", request.key.as_str());
        let message = Self::semaphore_message(&request.key);
        let waits = self.message_has_waiters(&message);
        let ttl_ms = request.ttl.as_millis();
        let mut invocation = scripts::SEMAPHORE_ACQUIRE.prepare_invoke();
        invocation
            .key(self.semaphore_key(&request.key))
            .arg(request.permit_id.to_string())
            .arg(request.owner.as_str())
            .arg(request.limit.get())
            .arg(ttl_ms)
            .arg(ttl_ms.saturating_add(self.idle_retention_ms()))
            .arg(if waits { "1" } else { "0" });
        let reply = self.invoke(doing, invocation).await?;
        match parse_acquire(&reply) {
            Some(Acquired::Outcome(outcome)) => Ok(outcome),
            Some(Acquired::Mismatch(stored)) => Err(LockError::LimitMismatch {
                key: request.key.clone(),
                requested: request.limit.get(),
                stored,
            }),
            None => Err(unexpected_reply(&doing(), &reply)),
        }
    }

    async fn renew_permit(
        &self,
        key: &LockKey,
        permit_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        let doing = || format!("renew a permit of {:?}", key.as_str());
        let mut invocation = scripts::SEMAPHORE_RENEW.prepare_invoke();
        invocation
            .key(self.semaphore_key(key))
            .arg(permit_id.to_string())
            .arg(ttl.as_millis())
            .arg(ttl.as_millis().saturating_add(self.idle_retention_ms()));
        let reply = self.invoke(doing, invocation).await?;
        match int(&reply) {
            Some(1) => Ok(RenewOutcome::Renewed),
            Some(0) => Ok(RenewOutcome::Lost),
            _ => Err(unexpected_reply(&doing(), &reply)),
        }
    }

    async fn release_permit(
        &self,
        key: &LockKey,
        permit_id: LeaseId,
    ) -> Result<ReleaseOutcome, LockError> {
        let doing = || format!("release a permit of {:?}", key.as_str());
        let mut invocation = scripts::SEMAPHORE_RELEASE.prepare_invoke();
        invocation
            .key(self.semaphore_key(key))
            .arg(permit_id.to_string())
            .arg(self.release_channel())
            .arg(Self::semaphore_message(key));
        let reply = self.invoke(doing, invocation).await?;
        match int(&reply) {
            Some(1) => Ok(ReleaseOutcome::Released),
            Some(0) => Ok(ReleaseOutcome::NotHeld),
            _ => Err(unexpected_reply(&doing(), &reply)),
        }
    }

    async fn inspect_permits(&self, key: &LockKey) -> Result<Option<Permits>, LockError> {
        let doing = || format!("inspect the permits of {:?}", key.as_str());
        let mut invocation = scripts::SEMAPHORE_INSPECT.prepare_invoke();
        invocation.key(self.semaphore_key(key));
        let reply = self.invoke(doing, invocation).await?;
        let Value::Array(items) = &reply else {
            return Err(unexpected_reply(&doing(), &reply));
        };
        match items.split_first() {
            None => Ok(None),
            Some((limit, holders)) => parse_permits(limit, holders)
                .map(Some)
                .ok_or_else(|| unexpected_reply(&doing(), &reply)),
        }
    }

    fn permit_release_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        self.message_signal(&Self::semaphore_message(key))
    }
}

enum Acquired {
    Outcome(PermitOutcome),
    Mismatch(u32),
}

/// `{1, fence}`, `{0, limit, (owner, fence, µs left)…}` or `{2, limit}`;
/// `None` for anything else, so a malformed reply is an error.
fn parse_acquire(reply: &Value) -> Option<Acquired> {
    let Value::Array(items) = reply else {
        return None;
    };
    let (status, rest) = items.split_first()?;
    match (int(status)?, rest) {
        (1, [fence]) => Some(Acquired::Outcome(PermitOutcome::Granted {
            fence: FencingToken::new(u64::try_from(int(fence)?).ok()?),
        })),
        (0, [limit, holders @ ..]) => Some(Acquired::Outcome(PermitOutcome::Refused(
            parse_permits(limit, holders)?,
        ))),
        (2, [limit]) => Some(Acquired::Mismatch(u32::try_from(int(limit)?).ok()?)),
        _ => None,
    }
}

fn parse_permits(limit: &Value, holders: &[Value]) -> Option<Permits> {
    if !holders.len().is_multiple_of(3) {
        return None;
    }
    let holders = holders
        .chunks_exact(3)
        .map(|holder| {
            let owner = match &holder[0] {
                Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Value::SimpleString(text) => text.clone(),
                _ => return None,
            };
            let fence = FencingToken::new(u64::try_from(int(&holder[1])?).ok()?);
            let left = Duration::from_micros(u64::try_from(int(&holder[2])?).ok()?);
            Some(Holder::new(owner, fence, left))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Permits::new(u32::try_from(int(limit)?).ok()?, holders))
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}
