//! Holder **processes** counted by a resource: never more than N inside.
//!
//! The test binary re-run as children (see [`crate::child`]) takes permits
//! of one key through the real backend and writes to a [`PermitResource`]
//! the parent serves over TCP, entering before the work and leaving before
//! the release, so the resource counts the holders inside at once. First in
//! an order the parent sets — N children hold, the next one must be refused
//! naming them, whatever the timing — then racing, each child waiting for
//! permits in a loop.

use std::time::Duration;

use lockstore_api::semaphore::PermitOutcome;
use lockstore_api::{AcquireOptions, Backoff, FencingToken};

use super::resource::{Connection, Entry, PermitResource, join};
use super::{limit, permit_request};
use crate::Ctx;
use crate::cases::{HANG, in_one_process, key};
use crate::child::{self, ChildProcess, next_command, report};

const RESOURCE_VAR: &str = "LOCKSTORE_CONFORMANCE_PERMIT_RESOURCE";
const HOLDER_VAR: &str = "LOCKSTORE_CONFORMANCE_PERMIT_HOLDER";
const KEY: &str = "sem-processes";
const LIMIT: u32 = 3;
/// Permits each holder process takes while racing.
const ROUNDS: u32 = 5;
/// Long enough that no permit expires while its holder is inside on a
/// loaded machine: too many inside must mean a broken semaphore.
const HOLD: Duration = Duration::from_secs(60);

/// N holder processes hold every permit and the next is refused, naming
/// them; then N + 1 processes race. A resource that counts holders inside
/// never sees more than N, no fence enters twice, and each process's fences
/// rise.
pub async fn semaphore_holder_processes_never_exceed_the_limit(ctx: Ctx) {
    let backend = ctx.semaphore().await.semaphore_backend_name();
    if in_one_process(&ctx, backend, "permits") {
        return;
    }
    if ctx.is_child() {
        return holder(ctx).await;
    }
    let started = tokio::time::Instant::now();
    let resource = PermitResource::new(LIMIT);
    let addr = resource.serve().await.to_string();
    let mut holders: Vec<ChildProcess> = (0..=LIMIT)
        .map(|i| {
            child::spawn(
                &ctx,
                &[(RESOURCE_VAR, addr.clone()), (HOLDER_VAR, i.to_string())],
            )
        })
        .collect();
    for holder in &mut holders {
        holder.expect("READY").await;
    }

    let mut held = Vec::new();
    for (i, holder) in holders.iter_mut().take(LIMIT as usize).enumerate() {
        holder.send("HOLD").await;
        let reply = holder.expect("HELD").await;
        let (fence, inside) = reply.split_once(' ').expect("HELD <fence> <inside>");
        let fence: u64 = fence.parse().expect("a fence");
        assert_eq!(inside, (i + 1).to_string(), "holders inside after {i} held");
        assert!(
            held.last().is_none_or(|&last| fence > last),
            "fence {fence} granted after {held:?}"
        );
        held.push(fence);
    }
    let last = holders.last_mut().expect("N + 1 holders");
    last.send("TRY").await;
    assert_eq!(
        last.expect("TRIED").await,
        format!("refused limit={LIMIT} free=0 fences={}", join(&held)),
        "with {LIMIT} holder processes holding every permit, another must be refused, naming \
         them (`granted` means a permit past the limit)"
    );
    for holder in holders.iter_mut().take(LIMIT as usize) {
        holder.send("LETGO").await;
        holder.expect("FREED").await;
    }
    let ordered = started.elapsed();

    for holder in &mut holders {
        holder.send(&format!("RACE {ROUNDS}")).await;
    }
    for holder in &mut holders {
        holder.expect("RACED").await;
    }
    for mut holder in holders {
        holder.send("EXIT").await;
        holder.finish().await;
    }
    let counts = resource.counts();
    tracing::info!(?ordered, total = ?started.elapsed(), most = counts.most, "holder processes");
    assert_eq!(
        counts.most, LIMIT as usize,
        "the most holder processes inside at once; the limit is {LIMIT}"
    );
    assert!(
        counts.reentered.is_empty(),
        "fences handed out twice: {:?}",
        counts.reentered
    );
    assert!(
        counts.refused.is_empty(),
        "the resource refused live holders: {:?}",
        counts.refused
    );
    assert_eq!(counts.inside, 0, "a holder never left");
    assert_eq!(
        counts.entries,
        u64::from(LIMIT + (LIMIT + 1) * ROUNDS),
        "every grant entered once"
    );
}

/// The child's part: hold, try, let go and race as the parent says.
async fn holder(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let owner = format!("holder-{}", child::var(HOLDER_VAR));
    let addr = child::var(RESOURCE_VAR).parse().expect("an address");
    let mut resource = Connection::open(addr).await;
    let k = key(KEY);
    let mut held: Option<(lockstore_api::LeaseId, FencingToken)> = None;
    report("READY");
    loop {
        let command = next_command().await;
        match command.split_once(' ').unwrap_or((&command, "")) {
            ("HOLD" | "TRY", "") => {
                let request = permit_request(&k, LIMIT, HOLD, &owner);
                let outcome = store
                    .try_acquire_permit(&request)
                    .await
                    .unwrap_or_else(|e| panic!("{owner}'s permit acquire failed: {e}"));
                let line = match outcome {
                    PermitOutcome::Granted { fence } => {
                        held = Some((request.permit_id, fence));
                        match resource.write(fence, &owner).await {
                            Entry::Accepted { inside } if command == "HOLD" => {
                                format!("HELD {fence} {inside}")
                            }
                            Entry::Accepted { inside } => {
                                format!("TRIED granted fence={fence} inside={inside}")
                            }
                            Entry::Refused { higher } => {
                                panic!("{owner}'s fresh fence {fence} refused: {higher:?}")
                            }
                        }
                    }
                    PermitOutcome::Refused(permits) => {
                        let mut fences: Vec<u64> =
                            permits.holders.iter().map(|h| h.fence().get()).collect();
                        fences.sort_unstable();
                        format!(
                            "TRIED refused limit={} free={} fences={}",
                            permits.limit,
                            permits.free(),
                            join(&fences)
                        )
                    }
                };
                report(&line);
            }
            ("LETGO", "") => {
                let (permit_id, fence) = held.take().expect("LETGO after HOLD");
                resource.leave(fence).await;
                store
                    .release_permit(&k, permit_id)
                    .await
                    .unwrap_or_else(|e| panic!("{owner}'s release failed: {e}"));
                report("FREED");
            }
            ("RACE", rounds) => {
                race(&ctx, &mut resource, &owner, rounds.parse().expect("rounds")).await;
                report("RACED");
            }
            ("EXIT", "") => return,
            _ => panic!("the parent said {command:?}"),
        }
    }
}

/// Waits for a permit, enters, leaves and releases, `rounds` times; each
/// fence above the last.
async fn race(ctx: &Ctx, resource: &mut Connection, owner: &str, rounds: u32) {
    let client = ctx
        .semaphore_client()
        .await
        .with_owner(lockstore_api::OwnerLabel::new(owner).expect("a valid owner"))
        .with_backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(40),
        ));
    let options = AcquireOptions::new(HOLD).wait_up_to(HANG);
    let mut last = FencingToken::new(0);
    for _ in 0..rounds {
        let permit = client
            .acquire_lease(KEY, limit(LIMIT), options)
            .await
            .unwrap_or_else(|e| panic!("{owner}'s waiting acquire failed: {e}"));
        let fence = permit.fence();
        assert!(fence > last, "{owner} got fence {fence} after {last}");
        last = fence;
        if let Entry::Refused { higher } = resource.write(fence, owner).await {
            panic!("{owner}'s live permit (fence {fence}) was refused: {higher:?} are inside");
        }
        resource.leave(fence).await;
        client
            .release(&permit)
            .await
            .unwrap_or_else(|e| panic!("{owner}'s release failed: {e}"));
    }
}
