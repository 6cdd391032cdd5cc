//! The execution ledger in memory: one record per key beside the locks,
//! each transition one critical section under the namespace's mutex.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use lockstore_api::ledger::{
    BeginOutcome, BeginRequest, ERROR_HISTORY, EnqueueOutcome, Finish, FinishOutcome,
    FinishRequest, LedgerStore, Order, PageCursor, RequestHash, RetryOutcome, RunError, RunPage,
    RunQuery, RunRecord, RunStatus, time_from_unix_millis, unix_millis,
};
use lockstore_api::{FencingToken, LeaseId, LockError, LockKey, ReleaseSignal, RenewOutcome, Ttl};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::MemoryStore;

/// The records of one namespace, and the clock their times are read from.
#[derive(Debug)]
pub(crate) struct Runs {
    records: HashMap<LockKey, Run>,
    /// Created by the first waiter of a key; dropped when the key is purged.
    ended: HashMap<LockKey, watch::Sender<()>>,
    /// The wall clock and tokio's clock at one moment, so record times move
    /// with tokio's (paused, in tests) clock.
    wall_base: SystemTime,
    tokio_base: Instant,
}

impl Default for Runs {
    fn default() -> Self {
        Self {
            records: HashMap::new(),
            ended: HashMap::new(),
            wall_base: SystemTime::now(),
            tokio_base: Instant::now(),
        }
    }
}

#[derive(Debug)]
struct Run {
    status: RunStatus,
    attempts: u32,
    max_attempts: u32,
    fence: Option<FencingToken>,
    owner: Option<String>,
    /// The running lease: its id and when it expires.
    lease: Option<(LeaseId, Instant)>,
    result: Option<Vec<u8>>,
    /// The error-history ring, indexed by `attempt % ERROR_HISTORY`.
    errors: Vec<Option<RunError>>,
    request_hash: Option<RequestHash>,
    created_ms: u64,
    updated_ms: u64,
    finished_ms: Option<u64>,
}

impl Run {
    fn new(now_ms: u64, request_hash: Option<RequestHash>) -> Self {
        Self {
            status: RunStatus::Pending,
            attempts: 0,
            max_attempts: 1,
            fence: None,
            owner: None,
            lease: None,
            result: None,
            errors: vec![None; ERROR_HISTORY as usize],
            request_hash,
            created_ms: now_ms,
            updated_ms: now_ms,
            finished_ms: None,
        }
    }

    fn live_lease(&self, now: Instant) -> Option<(LeaseId, Instant)> {
        self.lease.filter(|&(_, expires_at)| now < expires_at)
    }

    fn startable(&self, request: &BeginRequest, now: Instant) -> bool {
        let hashes_agree = match (&self.request_hash, &request.request_hash) {
            (Some(stored), Some(given)) => stored == given,
            _ => true,
        };
        let status_allows = match self.status {
            RunStatus::Pending => true,
            RunStatus::Failed => self.attempts < request.max_attempts,
            RunStatus::Running => {
                self.live_lease(now).is_none() && self.attempts < request.max_attempts
            }
            RunStatus::Succeeded | RunStatus::Ignored => false,
        };
        hashes_agree && status_allows
    }

    fn record(&self, key: &LockKey, now: Instant) -> RunRecord {
        let lease_expires_in = match self.status {
            RunStatus::Running => self.live_lease(now).map(|(_, expires_at)| expires_at - now),
            _ => None,
        };
        RunRecord {
            key: key.clone(),
            status: self.status,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            fence: self.fence,
            owner: self.owner.clone(),
            lease_expires_in,
            result: self.result.clone(),
            errors: RunError::history(self.errors.iter().flatten().cloned().collect()),
            request_hash: self.request_hash.clone(),
            created_at: time_from_unix_millis(self.created_ms),
            updated_at: time_from_unix_millis(self.updated_ms),
            finished_at: self.finished_ms.map(time_from_unix_millis),
        }
    }
}

impl Runs {
    fn now_ms(&self, now: Instant) -> u64 {
        unix_millis(self.wall_base + (now - self.tokio_base))
    }

    fn announce_end(&self, key: &LockKey) {
        if let Some(ended) = self.ended.get(key) {
            ended.send_replace(());
        }
    }
}

#[async_trait]
impl LedgerStore for MemoryStore {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    async fn begin(&self, request: &BeginRequest) -> Result<BeginOutcome, LockError> {
        let now = Instant::now();
        let mut state = self.state();
        let next_fence = state.last_fence + 1;
        let runs = &mut state.runs;
        let now_ms = runs.now_ms(now);
        let expires_at = now + request.ttl.as_duration();
        let run = runs
            .records
            .entry(request.key.clone())
            .or_insert_with(|| Run::new(now_ms, request.request_hash.clone()));
        if run.status == RunStatus::Running
            && run.lease.is_some_and(|(id, _)| id == request.lease_id)
        {
            // The same request again (its reply was lost): keep the run.
            run.lease = Some((request.lease_id, expires_at));
            return Ok(BeginOutcome::Started {
                fence: run.fence.expect("a running record has a fence"),
                attempt: run.attempts,
                took_over: false,
            });
        }
        if !run.startable(request, now) {
            return Ok(BeginOutcome::Existing(run.record(&request.key, now)));
        }
        // `startable` lets a running record through only when its lease
        // expired (its own lease id was answered above): a takeover.
        let took_over = run.status == RunStatus::Running;
        let fence = FencingToken::new(next_fence);
        run.status = RunStatus::Running;
        run.attempts += 1;
        run.max_attempts = request.max_attempts;
        run.fence = Some(fence);
        run.owner = Some(request.owner.as_str().to_owned());
        run.lease = Some((request.lease_id, expires_at));
        if run.request_hash.is_none() {
            run.request_hash = request.request_hash.clone();
        }
        run.updated_ms = now_ms;
        let attempt = run.attempts;
        state.last_fence = next_fence;
        Ok(BeginOutcome::Started {
            fence,
            attempt,
            took_over,
        })
    }

    async fn renew_run(
        &self,
        key: &LockKey,
        lease_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        let now = Instant::now();
        let mut state = self.state();
        let run = state.runs.records.get_mut(key).filter(|run| {
            run.status == RunStatus::Running
                && run.live_lease(now).is_some_and(|(id, _)| id == lease_id)
        });
        Ok(match run {
            Some(run) => {
                run.lease = Some((lease_id, now + ttl.as_duration()));
                RenewOutcome::Renewed
            }
            None => RenewOutcome::Lost,
        })
    }

    async fn finish(&self, request: &FinishRequest) -> Result<FinishOutcome, LockError> {
        request.validate()?;
        let now = Instant::now();
        let mut state = self.state();
        let runs = &mut state.runs;
        let now_ms = runs.now_ms(now);
        let Some(run) = runs.records.get_mut(&request.key).filter(|run| {
            run.status == RunStatus::Running
                && run.lease.is_some_and(|(id, _)| id == request.lease_id)
        }) else {
            return Ok(FinishOutcome::NotHeld);
        };
        run.status = match &request.finish {
            Finish::Succeeded { result } => {
                run.result.clone_from(result);
                RunStatus::Succeeded
            }
            Finish::Failed { error } => {
                let slot = error.slot() as usize;
                run.errors[slot] = Some(error.stored());
                if error.retryable && run.attempts < run.max_attempts {
                    RunStatus::Failed
                } else {
                    RunStatus::Ignored
                }
            }
        };
        run.lease = None;
        run.updated_ms = now_ms;
        run.finished_ms = Some(now_ms);
        let status = run.status;
        runs.announce_end(&request.key);
        Ok(FinishOutcome::Finished(status))
    }

    async fn get(&self, key: &LockKey) -> Result<Option<RunRecord>, LockError> {
        let now = Instant::now();
        let state = self.state();
        Ok(state.runs.records.get(key).map(|run| run.record(key, now)))
    }

    async fn enqueue(
        &self,
        key: &LockKey,
        request_hash: Option<&RequestHash>,
    ) -> Result<EnqueueOutcome, LockError> {
        let now = Instant::now();
        let mut state = self.state();
        let runs = &mut state.runs;
        let now_ms = runs.now_ms(now);
        if let Some(run) = runs.records.get(key) {
            return Ok(EnqueueOutcome::Exists(run.status));
        }
        runs.records
            .insert(key.clone(), Run::new(now_ms, request_hash.cloned()));
        Ok(EnqueueOutcome::Created)
    }

    async fn retry(&self, key: &LockKey) -> Result<RetryOutcome, LockError> {
        let now = Instant::now();
        let mut state = self.state();
        let runs = &mut state.runs;
        let now_ms = runs.now_ms(now);
        let Some(run) = runs.records.get_mut(key) else {
            return Ok(RetryOutcome::NotFound);
        };
        let stuck = run.status == RunStatus::Running && run.live_lease(now).is_none();
        if !(matches!(run.status, RunStatus::Failed | RunStatus::Ignored) || stuck) {
            return Ok(RetryOutcome::Unchanged(run.status));
        }
        run.status = RunStatus::Pending;
        run.lease = None;
        run.updated_ms = now_ms;
        if stuck {
            // A stuck run ends here; a waiter should look again.
            runs.announce_end(key);
        }
        Ok(RetryOutcome::Requeued)
    }

    async fn query(&self, query: &RunQuery) -> Result<RunPage, LockError> {
        query.validate()?;
        let now = Instant::now();
        let state = self.state();
        let mut matching: Vec<RunRecord> = state
            .runs
            .records
            .iter()
            .map(|(key, run)| run.record(key, now))
            .filter(|record| query.filter.matches(record))
            .collect();
        drop(state);
        let position = |r: &RunRecord| (unix_millis(r.updated_at), r.key.as_str().to_owned());
        matching.sort_by_key(position);
        if query.order == Order::NewestFirst {
            matching.reverse();
        }
        if let Some(after) = &query.after {
            let cursor = (after.updated_ms, after.key.as_str().to_owned());
            matching.retain(|r| match query.order {
                Order::OldestFirst => position(r) > cursor,
                Order::NewestFirst => position(r) < cursor,
            });
        }
        let limit = query.limit as usize;
        let next = (matching.len() > limit).then(|| PageCursor::after(&matching[limit - 1]));
        matching.truncate(limit);
        Ok(RunPage {
            records: matching,
            next,
        })
    }

    async fn purge(&self, older_than: Duration) -> Result<u64, LockError> {
        let now = Instant::now();
        let mut state = self.state();
        let runs = &mut state.runs;
        let cutoff = runs
            .now_ms(now)
            .saturating_sub(u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX));
        let before = runs.records.len();
        runs.records
            .retain(|_, run| !(run.status.is_finished() && run.updated_ms <= cutoff));
        let Runs { records, ended, .. } = runs;
        ended.retain(|key, tx| records.contains_key(key) || tx.receiver_count() > 0);
        // The namespace's fence counter is untouched, so a purged key's next
        // run still gets a larger token.
        Ok((before - records.len()) as u64)
    }

    fn finish_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        let mut state = self.state();
        let mut ended = state
            .runs
            .ended
            .entry(key.clone())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe();
        Some(ReleaseSignal::new(async move {
            let _ = ended.changed().await;
        }))
    }
}
