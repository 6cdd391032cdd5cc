//! The ledger's model-based test: random sequences of begin, renew, finish,
//! enqueue, retry, get and purge by several workers on a few keys, checked
//! step by step against a reference model of the run-once contract.
//!
//! Leases here are long, so no run expires during a sequence and every
//! outcome is exact on every backend, real clock or not; expiry and
//! takeover have their own example cases. Sequences come from a `proptest`
//! strategy and failures shrink to a minimal sequence, driven by hand as in
//! the lock's model test.

use std::collections::HashMap;

use lockstore_api::ledger::{
    BeginOutcome, BeginRequest, EnqueueOutcome, Finish, FinishOutcome, FinishRequest, LedgerStore,
    RetryOutcome, RunError, RunStatus,
};
use lockstore_api::{FencingToken, LeaseId, LockKey, OwnerLabel, RenewOutcome, Ttl};
use proptest::prelude::*;

use super::long_ttl;
use crate::Ctx;
use crate::model::check_sequences;

const WORKERS: u8 = 3;
const KEYS: u8 = 2;

/// One step of a sequence.
#[derive(Clone, Debug)]
enum Op {
    Begin {
        worker: u8,
        key: u8,
        max_attempts: u8,
    },
    Renew {
        worker: u8,
        key: u8,
    },
    Succeed {
        worker: u8,
        key: u8,
    },
    Fail {
        worker: u8,
        key: u8,
        retryable: bool,
    },
    Enqueue {
        key: u8,
    },
    Retry {
        key: u8,
    },
    Get {
        key: u8,
    },
    Purge,
}

fn op() -> impl Strategy<Value = Op> {
    let worker = 0..WORKERS;
    let key = 0..KEYS;
    prop_oneof![
        5 => (worker.clone(), key.clone(), 1..=3u8).prop_map(|(worker, key, max_attempts)| Op::Begin { worker, key, max_attempts }),
        1 => (worker.clone(), key.clone()).prop_map(|(worker, key)| Op::Renew { worker, key }),
        3 => (worker.clone(), key.clone()).prop_map(|(worker, key)| Op::Succeed { worker, key }),
        3 => (worker, key.clone(), any::<bool>()).prop_map(|(worker, key, retryable)| Op::Fail { worker, key, retryable }),
        1 => key.clone().prop_map(|key| Op::Enqueue { key }),
        2 => key.clone().prop_map(|key| Op::Retry { key }),
        1 => key.prop_map(|key| Op::Get { key }),
        1 => Just(Op::Purge),
    ]
}

#[derive(Clone, Debug)]
struct ModelRecord {
    status: RunStatus,
    attempts: u32,
    max_attempts: u32,
    /// The worker whose run holds the record, with its lease id.
    running: Option<(u8, LeaseId)>,
}

#[derive(Default)]
struct Model {
    records: HashMap<u8, ModelRecord>,
    /// The last fence seen per key, across purges.
    last_fence: HashMap<u8, FencingToken>,
    /// The lease id each worker last began each key with.
    leases: HashMap<(u8, u8), LeaseId>,
}

fn lock_key(key: u8) -> LockKey {
    LockKey::new(format!("model-{key}")).expect("valid")
}

async fn run_sequence(ctx: &Ctx, ops: &[Op]) -> Result<(), String> {
    let ledger = ctx.other_ledger().await;
    let ttl = Ttl::new(long_ttl(ctx)).expect("valid");
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        step_once(&*ledger, ttl, &mut model, op)
            .await
            .map_err(|failure| format!("step {step} ({op:?}): {failure}"))?;
    }
    Ok(())
}

async fn step_once(
    ledger: &dyn LedgerStore,
    ttl: Ttl,
    model: &mut Model,
    op: &Op,
) -> Result<(), String> {
    match *op {
        Op::Begin {
            worker,
            key,
            max_attempts,
        } => {
            let request = BeginRequest {
                key: lock_key(key),
                lease_id: LeaseId::random(),
                ttl,
                owner: OwnerLabel::new(format!("worker-{worker}")).expect("valid"),
                max_attempts: u32::from(max_attempts),
                request_hash: None,
            };
            let got = ledger.begin(&request).await.map_err(|e| e.to_string())?;
            let record = model.records.get(&key);
            let startable = match record {
                None => true,
                Some(r) => match r.status {
                    RunStatus::Pending => true,
                    RunStatus::Failed => r.attempts < u32::from(max_attempts),
                    _ => false, // no run expires in a sequence
                },
            };
            match (startable, got) {
                (
                    true,
                    BeginOutcome::Started {
                        fence,
                        attempt,
                        took_over,
                    },
                ) => {
                    if took_over {
                        return Err("a start said it took over, but no run expires here".into());
                    }
                    let attempts = record.map_or(0, |r| r.attempts) + 1;
                    if attempt != attempts {
                        return Err(format!("started attempt {attempt}, model says {attempts}"));
                    }
                    if let Some(last) = model.last_fence.get(&key).filter(|last| fence <= **last) {
                        return Err(format!("fence {fence} not above {last}"));
                    }
                    model.last_fence.insert(key, fence);
                    model.leases.insert((worker, key), request.lease_id);
                    model.records.insert(
                        key,
                        ModelRecord {
                            status: RunStatus::Running,
                            attempts,
                            max_attempts: u32::from(max_attempts),
                            running: Some((worker, request.lease_id)),
                        },
                    );
                }
                (false, BeginOutcome::Existing(got)) => {
                    let want = record.expect("refused only with a record");
                    if got.status != want.status || got.attempts != want.attempts {
                        return Err(format!(
                            "refusal shows {}/{} attempts, model {}/{}",
                            got.status, got.attempts, want.status, want.attempts
                        ));
                    }
                }
                (true, got) => return Err(format!("should have started, got {got:?}")),
                (false, got) => return Err(format!("should have been refused, got {got:?}")),
            }
        }
        Op::Renew { worker, key } => {
            let Some(&lease_id) = model.leases.get(&(worker, key)) else {
                return Ok(());
            };
            let got = ledger
                .renew_run(&lock_key(key), lease_id, ttl)
                .await
                .map_err(|e| e.to_string())?;
            let holds = model
                .records
                .get(&key)
                .is_some_and(|r| r.running == Some((worker, lease_id)));
            let want = if holds {
                RenewOutcome::Renewed
            } else {
                RenewOutcome::Lost
            };
            if got != want {
                return Err(format!("renew answered {got:?}, model {want:?}"));
            }
        }
        Op::Succeed { worker, key } | Op::Fail { worker, key, .. } => {
            let Some(&lease_id) = model.leases.get(&(worker, key)) else {
                return Ok(());
            };
            let record = model.records.get(&key).cloned();
            let holds = record
                .as_ref()
                .is_some_and(|r| r.running == Some((worker, lease_id)));
            let (finish, next) = match *op {
                Op::Fail { retryable, .. } => {
                    let attempt = record.as_ref().map_or(0, |r| r.attempts);
                    let next = match &record {
                        Some(r) if retryable && r.attempts < r.max_attempts => RunStatus::Failed,
                        _ => RunStatus::Ignored,
                    };
                    (
                        Finish::Failed {
                            error: RunError::new(attempt, "model failure", retryable),
                        },
                        next,
                    )
                }
                _ => (
                    Finish::Succeeded {
                        result: Some(vec![worker]),
                    },
                    RunStatus::Succeeded,
                ),
            };
            let got = ledger
                .finish(&FinishRequest {
                    key: lock_key(key),
                    lease_id,
                    finish,
                })
                .await
                .map_err(|e| e.to_string())?;
            let want = if holds {
                FinishOutcome::Finished(next)
            } else {
                FinishOutcome::NotHeld
            };
            if got != want {
                return Err(format!("finish answered {got:?}, model {want:?}"));
            }
            if holds {
                let r = model.records.get_mut(&key).expect("held");
                r.status = next;
                r.running = None;
            }
        }
        Op::Enqueue { key } => {
            let got = ledger
                .enqueue(&lock_key(key), None)
                .await
                .map_err(|e| e.to_string())?;
            let want = match model.records.get(&key) {
                Some(r) => EnqueueOutcome::Exists(r.status),
                None => {
                    model.records.insert(
                        key,
                        ModelRecord {
                            status: RunStatus::Pending,
                            attempts: 0,
                            max_attempts: 1,
                            running: None,
                        },
                    );
                    EnqueueOutcome::Created
                }
            };
            if got != want {
                return Err(format!("enqueue answered {got:?}, model {want:?}"));
            }
        }
        Op::Retry { key } => {
            let got = ledger
                .retry(&lock_key(key))
                .await
                .map_err(|e| e.to_string())?;
            let want = match model.records.get_mut(&key) {
                None => RetryOutcome::NotFound,
                Some(r) if matches!(r.status, RunStatus::Failed | RunStatus::Ignored) => {
                    r.status = RunStatus::Pending;
                    RetryOutcome::Requeued
                }
                Some(r) => RetryOutcome::Unchanged(r.status),
            };
            if got != want {
                return Err(format!("retry answered {got:?}, model {want:?}"));
            }
        }
        Op::Get { key } => {
            let got = ledger
                .get(&lock_key(key))
                .await
                .map_err(|e| e.to_string())?;
            match (got, model.records.get(&key)) {
                (None, None) => {}
                (Some(got), Some(want)) => {
                    if got.status != want.status || got.attempts != want.attempts {
                        return Err(format!(
                            "get shows {}/{} attempts, model {}/{}",
                            got.status, got.attempts, want.status, want.attempts
                        ));
                    }
                    if got.status == RunStatus::Running && got.lease_expires_in.is_none() {
                        return Err("a live run shows as stuck".into());
                    }
                }
                (got, want) => return Err(format!("get shows {got:?}, model {want:?}")),
            }
        }
        Op::Purge => {
            let got = ledger
                .purge(std::time::Duration::ZERO)
                .await
                .map_err(|e| e.to_string())?;
            let before = model.records.len();
            model.records.retain(|_, r| !r.status.is_finished());
            let want = (before - model.records.len()) as u64;
            if got != want {
                return Err(format!("purge deleted {got}, model {want}"));
            }
        }
    }
    Ok(())
}

/// Random sequences of ledger operations agree with the reference model at
/// every step: who may start, attempts, statuses, refusals, stale
/// finishers, enqueue, retry, purge, and strictly increasing fences.
pub async fn ledger_model_based_sequences(ctx: Ctx) {
    let ctx = &ctx;
    check_sequences(ctx, "ledger model", op(), move |ops| async move {
        run_sequence(ctx, &ops).await
    })
    .await;
}
