//! The semaphore's model-based test: random sequences of permit acquires
//! (fresh or retried with the same permit id, now and then under another
//! limit), renewals, releases, forged requests, inspections and time passing
//! by several clients on a few keys, checked step by step against a
//! sequential model of Part 4 of the contract: granted or refused, the
//! holders a refusal names, the limit a key keeps, ownership, and fences
//! rising per key.
//!
//! Time is judged as in the lock's model test: on a real clock the model
//! keeps both ends of each permit's expiry and calls a permit live or
//! expired only outside `[earliest expiry − tolerance, latest expiry +
//! tolerance]`; inside that window either answer is accepted and the model
//! follows the backend. On a paused tokio clock every outcome is exact.
//!
//! A permit the backend has once answered as gone (a renewal `Lost`, a
//! release `NotHeld`) never renews or releases again; until its window has
//! passed it may still count against the limit, as a wall-clock store's
//! acquirer keeps it for its skew allowance.

use std::collections::HashMap;
use std::time::Duration;

use lockstore_api::semaphore::{PermitLimit, PermitOutcome, PermitRequest, Permits};
use lockstore_api::{
    FencingToken, LeaseId, LockError, LockKey, OwnerLabel, ReleaseOutcome, RenewOutcome, Ttl,
};
use proptest::prelude::*;
use tokio::time::Instant;

use crate::model::check_sequences;
use crate::{Clock, Ctx};

const CLIENTS: u8 = 4;
/// The limit each key is usually asked with; an acquire now and then asks
/// with another (1 to 3), which is a mismatch while permits are live and the
/// key's new limit once none is.
const USUAL_LIMITS: [u32; 2] = [2, 3];
const KEYS: u8 = USUAL_LIMITS.len() as u8;

/// One step of a sequence. Times are in units of a quarter of `short_ttl`.
#[derive(Clone, Debug)]
enum Op {
    Acquire {
        client: u8,
        key: u8,
        ttl: u8,
        /// Another limit than the key's usual one.
        limit: Option<u8>,
        /// Again with the client's last permit id of the key (a retry).
        retry: bool,
    },
    Renew {
        client: u8,
        key: u8,
        ttl: u8,
    },
    Release {
        client: u8,
        key: u8,
    },
    Forged {
        key: u8,
        renew: bool,
    },
    Inspect {
        key: u8,
    },
    Sleep {
        units: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS;
    let key = 0..KEYS;
    let limit = prop_oneof![5 => Just(None), 1 => (1..=3u8).prop_map(Some)];
    prop_oneof![
        6 => (client.clone(), key.clone(), 2..=8u8, limit, prop::bool::weighted(0.25))
            .prop_map(|(client, key, ttl, limit, retry)| Op::Acquire { client, key, ttl, limit, retry }),
        2 => (client.clone(), key.clone(), 2..=8u8).prop_map(|(client, key, ttl)| Op::Renew { client, key, ttl }),
        3 => (client, key.clone()).prop_map(|(client, key)| Op::Release { client, key }),
        1 => (key.clone(), any::<bool>()).prop_map(|(key, renew)| Op::Forged { key, renew }),
        1 => key.prop_map(|key| Op::Inspect { key }),
        2 => (1..=6u8).prop_map(|units| Op::Sleep { units }),
    ]
}

/// A permit the model believes in, with the window its expiry lies in.
#[derive(Clone, Debug)]
struct ModelPermit {
    client: u8,
    id: LeaseId,
    fence: FencingToken,
    /// Sent time + TTL: the backend expired it no earlier than this.
    earliest_expiry: Instant,
    /// Reply time + TTL: the backend expired it no later than this.
    latest_expiry: Instant,
    /// The backend has answered it as gone: it never renews or releases
    /// again (a retried acquire may still find it inside its window).
    gone: bool,
}

impl ModelPermit {
    /// The backend judged it expired somewhere in `[sent, received]`.
    fn judged_gone(&mut self, sent: Instant, received: Instant) {
        self.gone = true;
        self.earliest_expiry = self.earliest_expiry.min(sent);
        self.latest_expiry = self.latest_expiry.min(received);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Liveness {
    Live,
    Expired,
    Unsure,
}

#[derive(Default)]
struct KeyModel {
    /// The limit of the key's last grant: the backend's stored limit.
    limit: Option<u32>,
    permits: Vec<ModelPermit>,
    last_fence: Option<FencingToken>,
}

struct Model {
    tolerance: Duration,
    keys: Vec<KeyModel>,
    /// The latest permit id each client used for each key.
    ids: HashMap<(u8, u8), LeaseId>,
}

impl Model {
    /// Whether `permit` was live when the backend judged a request sent at
    /// `sent` and answered by `received`.
    fn liveness(&self, permit: &ModelPermit, sent: Instant, received: Instant) -> Liveness {
        if !permit.gone && received + self.tolerance < permit.earliest_expiry {
            Liveness::Live
        } else if sent >= permit.latest_expiry + self.tolerance {
            Liveness::Expired
        } else {
            Liveness::Unsure
        }
    }

    /// The client's permit id for `key`: its last, or a new one.
    fn id(&mut self, client: u8, key: u8, fresh: bool) -> LeaseId {
        if fresh {
            let id = LeaseId::random();
            self.ids.insert((client, key), id);
            id
        } else {
            *self
                .ids
                .entry((client, key))
                .or_insert_with(LeaseId::random)
        }
    }
}

/// Everything the sequence talks to.
struct World {
    keys: Vec<LockKey>,
    owners: Vec<OwnerLabel>,
}

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Checks that `permits` (a refusal's or an inspection's) names exactly the
/// holders the model allows: every permit certainly live, only permits not
/// certainly expired, each with its own owner and fence.
fn check_holders(
    model: &Model,
    world: &World,
    key: u8,
    permits: &Permits,
    sent: Instant,
    received: Instant,
) -> Result<(), String> {
    let state = &model.keys[usize::from(key)];
    let mut named = Vec::new();
    for holder in &permits.holders {
        let known = state.permits.iter().find(|p| p.fence == holder.fence());
        let Some(permit) = known else {
            return Err(format!(
                "{holder:?} is named, a permit the model never granted"
            ));
        };
        check!(
            model.liveness(permit, sent, received) != Liveness::Expired,
            "{holder:?} is named, but the model's permit expired: {permit:?}"
        );
        check!(
            holder.owner() == world.owners[usize::from(permit.client)].as_str(),
            "{holder:?} is named with the wrong owner: the model's permit is {permit:?}"
        );
        check!(!named.contains(&permit.fence), "{holder:?} is named twice");
        named.push(permit.fence);
    }
    for permit in &state.permits {
        check!(
            model.liveness(permit, sent, received) != Liveness::Live
                || named.contains(&permit.fence),
            "the live {permit:?} is not named among {permits:?}"
        );
    }
    Ok(())
}

async fn run_sequence(ctx: &Ctx, ops: &[Op]) -> Result<(), String> {
    let store = ctx.other_semaphore().await;
    let unit = ctx.profile().short_ttl / 4;
    let world = World {
        keys: (0..KEYS)
            .map(|k| LockKey::new(format!("sem-model-{k}")).expect("valid"))
            .collect(),
        owners: (0..CLIENTS)
            .map(|c| OwnerLabel::new(format!("client-{c}")).expect("valid"))
            .collect(),
    };
    let mut model = Model {
        tolerance: match ctx.profile().clock {
            Clock::Tokio => Duration::ZERO,
            Clock::Real => ctx.profile().tolerance,
        },
        keys: (0..KEYS).map(|_| KeyModel::default()).collect(),
        ids: HashMap::new(),
    };
    for (step, op) in ops.iter().enumerate() {
        let at = format!("step {step} ({op:?})");
        match *op {
            Op::Sleep { units } => ctx.sleep(unit * u32::from(units)).await,
            Op::Acquire {
                client,
                key,
                ttl,
                limit,
                retry,
            } => {
                let limit = limit.map_or(USUAL_LIMITS[usize::from(key)], u32::from);
                let request = PermitRequest {
                    key: world.keys[usize::from(key)].clone(),
                    permit_id: model.id(client, key, !retry),
                    limit: PermitLimit::new(limit).expect("valid"),
                    ttl: Ttl::new(unit * u32::from(ttl)).expect("valid"),
                    owner: world.owners[usize::from(client)].clone(),
                };
                let sent = Instant::now();
                let outcome = store.try_acquire_permit(&request).await;
                let received = Instant::now();
                acquired(&mut model, &world, key, &request, outcome, sent, received)
                    .map_err(|failure| format!("{at}: {failure}"))?;
            }
            Op::Renew { client, key, ttl } => {
                let ttl = Ttl::new(unit * u32::from(ttl)).expect("valid");
                let id = model.id(client, key, false);
                let sent = Instant::now();
                let outcome = store
                    .renew_permit(&world.keys[usize::from(key)], id, ttl)
                    .await;
                let received = Instant::now();
                let outcome = outcome.map_err(|e| format!("{at}: {e}"))?;
                let own = model.keys[usize::from(key)]
                    .permits
                    .iter()
                    .position(|p| p.id == id);
                let liveness = own.map(|i| {
                    model.liveness(&model.keys[usize::from(key)].permits[i], sent, received)
                });
                let permits = &mut model.keys[usize::from(key)].permits;
                match outcome {
                    RenewOutcome::Renewed => {
                        let i = own.ok_or_else(|| {
                            format!("{at}: renewed a permit id the model never saw granted")
                        })?;
                        check!(
                            !permits[i].gone && liveness != Some(Liveness::Expired),
                            "{at}: renewed {:?}, which is gone",
                            permits[i]
                        );
                        permits[i].earliest_expiry = sent + ttl.as_duration();
                        permits[i].latest_expiry = received + ttl.as_duration();
                    }
                    RenewOutcome::Lost => {
                        if let Some(i) = own {
                            check!(
                                liveness != Some(Liveness::Live),
                                "{at}: renewal of the live {:?} said lost",
                                permits[i]
                            );
                            permits[i].judged_gone(sent, received);
                        }
                    }
                }
            }
            Op::Release { client, key } => {
                let id = model.id(client, key, false);
                let sent = Instant::now();
                let outcome = store
                    .release_permit(&world.keys[usize::from(key)], id)
                    .await;
                let received = Instant::now();
                let outcome = outcome.map_err(|e| format!("{at}: {e}"))?;
                let own = model.keys[usize::from(key)]
                    .permits
                    .iter()
                    .position(|p| p.id == id);
                let liveness = own.map(|i| {
                    model.liveness(&model.keys[usize::from(key)].permits[i], sent, received)
                });
                let permits = &mut model.keys[usize::from(key)].permits;
                match outcome {
                    ReleaseOutcome::Released => {
                        let i = own.ok_or_else(|| {
                            format!("{at}: released a permit id the model never saw granted")
                        })?;
                        check!(
                            !permits[i].gone && liveness != Some(Liveness::Expired),
                            "{at}: released {:?}, which is gone",
                            permits[i]
                        );
                        permits.remove(i);
                    }
                    ReleaseOutcome::NotHeld => {
                        if let Some(i) = own {
                            check!(
                                liveness != Some(Liveness::Live),
                                "{at}: release of the live {:?} said not held",
                                permits[i]
                            );
                            permits[i].judged_gone(sent, received);
                        }
                    }
                }
            }
            Op::Forged { key, renew } => {
                let k = &world.keys[usize::from(key)];
                let forged = LeaseId::random();
                if renew {
                    let outcome = store
                        .renew_permit(k, forged, Ttl::new(unit * 4).expect("valid"))
                        .await
                        .map_err(|e| format!("{at}: {e}"))?;
                    check!(
                        outcome == RenewOutcome::Lost,
                        "{at}: a forged permit id renewed"
                    );
                } else {
                    let outcome = store
                        .release_permit(k, forged)
                        .await
                        .map_err(|e| format!("{at}: {e}"))?;
                    check!(
                        outcome == ReleaseOutcome::NotHeld,
                        "{at}: a forged permit id released"
                    );
                }
            }
            Op::Inspect { key } => {
                let sent = Instant::now();
                let outcome = store.inspect_permits(&world.keys[usize::from(key)]).await;
                let received = Instant::now();
                let outcome = outcome.map_err(|e| format!("{at}: {e}"))?;
                let state = &model.keys[usize::from(key)];
                match outcome {
                    Some(permits) if !permits.holders.is_empty() => {
                        check!(
                            Some(permits.limit) == state.limit,
                            "{at}: inspect says limit {}, the key's last grant was under {:?}",
                            permits.limit,
                            state.limit
                        );
                        check!(
                            permits.holders.len() <= permits.limit as usize,
                            "{at}: more holders than the limit: {permits:?}"
                        );
                        check_holders(&model, &world, key, &permits, sent, received)
                            .map_err(|failure| format!("{at}: {failure}"))?;
                    }
                    _ => {
                        let live = state
                            .permits
                            .iter()
                            .find(|p| model.liveness(p, sent, received) == Liveness::Live);
                        check!(
                            live.is_none(),
                            "{at}: inspect says no permits while {live:?} is live"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Checks an acquire's outcome against the model and moves the model on.
fn acquired(
    model: &mut Model,
    world: &World,
    key: u8,
    request: &PermitRequest,
    outcome: Result<PermitOutcome, LockError>,
    sent: Instant,
    received: Instant,
) -> Result<(), String> {
    let limit = request.limit.get();
    let state = &model.keys[usize::from(key)];
    let liveness: Vec<Liveness> = state
        .permits
        .iter()
        .map(|p| model.liveness(p, sent, received))
        .collect();
    let own = state.permits.iter().position(|p| p.id == request.permit_id);
    let count = |wanted: &[Liveness]| {
        (0..liveness.len())
            .filter(|&i| Some(i) != own && wanted.contains(&liveness[i]))
            .count()
    };
    let others_live = count(&[Liveness::Live]);
    let others_maybe = count(&[Liveness::Live, Liveness::Unsure]);
    let own_live = own.map(|i| liveness[i]);
    let any_live = others_live > 0 || own_live == Some(Liveness::Live);
    let any_maybe = others_maybe > 0 || own_live.is_some_and(|l| l != Liveness::Expired);
    let mismatch = state.limit.is_some_and(|stored| stored != limit);
    match outcome {
        Err(LockError::LimitMismatch {
            key: named,
            requested,
            stored,
        }) => {
            check!(
                named == world.keys[usize::from(key)]
                    && requested == limit
                    && Some(stored) == state.limit,
                "LimitMismatch names key {named}, requested {requested}, stored {stored}; \
                 the model has {:?} and asked {limit}",
                state.limit
            );
            check!(
                mismatch && any_maybe,
                "LimitMismatch although no permit of another limit is live: {:?}",
                state.permits
            );
            Ok(())
        }
        Err(err) => Err(err.to_string()),
        Ok(_) if mismatch && any_live => Err(format!(
            "limit {limit} while live permits hold under {:?}: not a LimitMismatch",
            state.limit
        )),
        Ok(PermitOutcome::Granted { fence }) => {
            let ttl = request.ttl.as_duration();
            let state = &mut model.keys[usize::from(key)];
            if let Some(i) = own.filter(|&i| state.permits[i].fence == fence) {
                // A retry that found its permit: refreshed, same fence.
                check!(
                    liveness[i] != Liveness::Expired && !mismatch,
                    "a retry got the fence of its expired {:?} back",
                    state.permits[i]
                );
                let permit = &mut state.permits[i];
                permit.earliest_expiry = sent + ttl;
                permit.latest_expiry = received + ttl;
                permit.gone = false;
                return Ok(());
            }
            check!(
                own_live != Some(Liveness::Live),
                "a retry of the live {:?} got fence {fence}, not its own",
                own.map(|i| &state.permits[i])
            );
            check!(
                state.last_fence.is_none_or(|last| fence > last),
                "fence {fence} is not above the key's previous {:?}",
                state.last_fence
            );
            check!(
                others_live < limit as usize,
                "granted fence {fence} although {others_live} permits of limit {limit} are live: {:?}",
                state.permits
            );
            if let Some(i) = own {
                state.permits.remove(i);
            }
            if mismatch {
                // A new limit: the backend saw no permit live.
                for permit in &mut state.permits {
                    permit.judged_gone(sent, received);
                }
            }
            state.limit = Some(limit);
            state.last_fence = Some(fence);
            state.permits.push(ModelPermit {
                client: world
                    .owners
                    .iter()
                    .position(|o| *o == request.owner)
                    .and_then(|c| u8::try_from(c).ok())
                    .expect("one of the world's owners"),
                id: request.permit_id,
                fence,
                earliest_expiry: sent + ttl,
                latest_expiry: received + ttl,
                gone: false,
            });
            Ok(())
        }
        Ok(PermitOutcome::Refused(permits)) => {
            check!(
                own_live != Some(Liveness::Live),
                "a retry of the live {:?} was refused: {permits:?}",
                own.map(|i| &state.permits[i])
            );
            check!(
                !mismatch && others_maybe >= limit as usize,
                "refused although a permit of limit {limit} is free \
                 (the key's limit {:?}, permits {:?}): {permits:?}",
                state.limit,
                state.permits
            );
            check!(
                permits.limit == limit && permits.holders.len() == limit as usize,
                "a refusal must name the limit {limit} and that many holders: {permits:?}"
            );
            check_holders(model, world, key, &permits, sent, received)
        }
    }
}

/// Part 4's promises 1–3, 5–7 under random interleavings: random sequences
/// of up to 40 permit operations, each in a fresh namespace, shrunk to a
/// minimal failing sequence on failure. On a real clock it runs a quarter of
/// `profile.model_cases` (at least 4): each sequence really sleeps, and the
/// lock's model test already spends that budget on the same clock rules.
pub async fn semaphore_model_based_sequences(ctx: Ctx) {
    let mut ctx = ctx;
    if ctx.profile.clock == Clock::Real {
        ctx.profile.model_cases = (ctx.profile.model_cases / 4).max(4);
    }
    let ctx = &ctx;
    check_sequences(ctx, "semaphore model test", op(), move |ops| async move {
        run_sequence(ctx, &ops).await
    })
    .await;
}
