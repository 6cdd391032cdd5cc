//! The DynamoDB expressions of the execution ledger's transitions, in one
//! place (the counterpart of the lock's [`expressions`](crate::expressions)).
//!
//! Placeholders are the attribute names with a `#` in front, except `#pk`
//! (the configured partition key) and `#cleanup` (the configured DynamoDB
//! TTL attribute); see [`names_for`]. Clock values (`:now_ms`, `:cutoff`,
//! `:expires_at_ms`) come from the client's wall clock: DynamoDB has none.

use std::collections::HashMap;

use crate::expressions::placeholders;

/// Begin starts a run when the record is absent (no item, or the
/// fence-only tombstone a purge leaves: no `exec_state`), pending, failed
/// with attempts left, or running under a lease that expired more than the
/// skew allowance ago (`:cutoff` = now − allowance) with attempts left and
/// another lease id. A running record under the request's own lease id
/// (a retried begin) fails the condition whether its lease expired or not:
/// the refusal shows it, and [`REFRESH_UPDATE`] keeps its fence and attempt
/// (the same run, as on every other backend).
pub(crate) const BEGIN_STARTABLE: &str = "(attribute_not_exists(#exec_state) OR #exec_state = :pending OR (#exec_state = :failed AND #exec_attempts < :max) OR (#exec_state = :running AND #lease_expires_at_ms <= :cutoff AND #exec_attempts < :max AND #lease_id <> :lease_id))";

/// With a request hash: a stored hash must be the same.
pub(crate) const BEGIN_HASH_AGREES: &str =
    "(attribute_not_exists(#exec_request_hash) OR #exec_request_hash = :hash)";

/// The start of a run. `fence` rises by one per run while the item exists
/// (a purged record's tombstone keeps it) and restarts from the writer's
/// wall clock in microseconds when it does not (a new key, or an item
/// deleted by DynamoDB TTL): the lock's scheme, with the same assumptions
/// (crate docs, "Fencing").
pub(crate) const BEGIN_UPDATE: &str = "SET #exec_key = :key, #exec_state = :running, #exec_status = :index_pk, #exec_sort = :sort, #exec_attempts = if_not_exists(#exec_attempts, :zero) + :one, #exec_max_attempts = :max, #fence = if_not_exists(#fence, :fence_base) + :one, #exec_owner = :owner, #lease_id = :lease_id, #lease_expires_at_ms = :expires_at_ms, #lease_ttl_ms = :ttl_ms, #exec_created_ms = if_not_exists(#exec_created_ms, :now_ms), #exec_updated_at_ms = :now_ms";

/// Appended to [`BEGIN_UPDATE`] when the request has a hash: kept if the
/// record already has one.
pub(crate) const BEGIN_SET_HASH: &str =
    ", #exec_request_hash = if_not_exists(#exec_request_hash, :hash)";

/// A running or pending record is never deleted by DynamoDB TTL.
pub(crate) const REMOVE_CLEANUP: &str = " REMOVE #cleanup";

/// The cleanup rule (the lock's, `expressions` module docs), added to a
/// write that sets a cleanup time: the record's fence stays below the
/// cleanup time less its delay, in microseconds. A refusal that shows a
/// higher fence (the record's creator had a clock ahead of this writer's)
/// is sent again with the cleanup time dated from that fence.
pub(crate) const FENCE_UNDER_CAP: &str = "(attribute_not_exists(#fence) OR #fence < :fence_cap)";

/// The run is (still) this lease's.
pub(crate) const HELD: &str = "#exec_state = :running AND #lease_id = :lease_id";

/// A retried begin that found its own run: refresh the lease, keep the
/// fence and attempt.
pub(crate) const REFRESH_UPDATE: &str =
    "SET #lease_expires_at_ms = :expires_at_ms, #lease_ttl_ms = :ttl_ms";

/// Renew only a live lease with this id, judged by this client's clock
/// without the allowance (the holder gives up early, never late).
pub(crate) const RENEW_CONDITION: &str =
    "#exec_state = :running AND #lease_id = :lease_id AND #lease_expires_at_ms > :now_ms";

/// A retryable failure leaves the record `failed` only while attempts are
/// left; the stored `max_attempts` is the one this run's begin asked for.
pub(crate) const HELD_WITH_ATTEMPTS_LEFT: &str =
    "#exec_state = :running AND #lease_id = :lease_id AND #exec_attempts < #exec_max_attempts";

/// The end of a run: status, index position, times; the lease goes.
/// Followed by the result or error assignment and a `REMOVE` list.
pub(crate) const FINISH_SET: &str = "SET #exec_state = :state, #exec_status = :index_pk, #exec_sort = :sort, #exec_updated_at_ms = :now_ms, #exec_finished_ms = :now_ms";

/// The lease attributes a finished or requeued record drops.
pub(crate) const REMOVE_LEASE: &str = "#lease_id, #lease_expires_at_ms, #lease_ttl_ms";

/// Enqueue creates a record only where none is (no item, or a purged
/// record's tombstone, whose fence it keeps).
pub(crate) const ENQUEUE_CONDITION: &str = "attribute_not_exists(#exec_state)";

/// See [`ENQUEUE_CONDITION`]; followed by [`REMOVE_CLEANUP`] (a
/// tombstone's cleanup time goes).
pub(crate) const ENQUEUE_UPDATE: &str = "SET #exec_key = :key, #exec_state = :pending, #exec_status = :index_pk, #exec_sort = :sort, #exec_attempts = :zero, #exec_max_attempts = :one, #exec_created_ms = :now_ms, #exec_updated_at_ms = :now_ms";

/// Retry requeues a failed, ignored or stuck record.
pub(crate) const RETRY_CONDITION: &str = "#exec_state = :failed OR #exec_state = :ignored OR (#exec_state = :running AND #lease_expires_at_ms <= :cutoff)";

/// See [`RETRY_CONDITION`]; attempts keep counting.
pub(crate) const RETRY_UPDATE: &str = "SET #exec_state = :pending, #exec_status = :index_pk, #exec_sort = :sort, #exec_updated_at_ms = :now_ms REMOVE #lease_id, #lease_expires_at_ms, #lease_ttl_ms, #cleanup";

/// Purge removes a record only if it is still finished and old: never a
/// record that was begun or requeued since the index was read. It dates
/// the tombstone's cleanup time from the fence the index showed, under the
/// cleanup rule; a record begun and finished again since (a higher fence)
/// is left for the next purge.
pub(crate) const PURGE_CONDITION: &str = "#exec_state = :state AND #exec_updated_at_ms <= :cutoff_ms AND (attribute_not_exists(#fence) OR #fence < :fence_cap)";

/// What a purge leaves: a fence-only tombstone. Every `exec_*` attribute
/// goes, so `get`, `query` and the sparse index (no `exec_status`, no
/// `exec_sort`) no longer see a record, and `begin` and `enqueue` treat the
/// key as new; `fence` stays, so the key's next run gets a larger one
/// whatever the clocks. The tombstone itself is deleted by DynamoDB TTL
/// after `cleanup_after`, as a released lock item is.
pub(crate) const PURGE_UPDATE: &str = "SET #cleanup = :cleanup_at REMOVE #exec_key, #exec_state, #exec_status, #exec_sort, #exec_attempts, #exec_max_attempts, #exec_owner, #exec_result, #exec_error_0, #exec_error_1, #exec_error_2, #exec_error_3, #exec_error_4, #exec_request_hash, #exec_created_ms, #exec_updated_at_ms, #exec_finished_ms, #lease_id, #lease_expires_at_ms, #lease_ttl_ms";

/// The `ExpressionAttributeNames` of `expressions`.
pub(crate) fn names_for(
    expressions: &[&str],
    partition_key: &str,
    cleanup: &str,
) -> HashMap<String, String> {
    placeholders(expressions, '#')
        .into_iter()
        .map(|p| {
            let attribute = match p {
                "#pk" => partition_key,
                "#cleanup" => cleanup,
                other => &other[1..],
            };
            (p.to_owned(), attribute.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_map_to_attributes() {
        let names = names_for(&["attribute_not_exists(#pk)", RETRY_UPDATE], "k", "c");
        assert_eq!(names["#pk"], "k");
        assert_eq!(names["#cleanup"], "c");
        assert_eq!(names["#exec_state"], "exec_state");
    }
}
