//! The DynamoDB expressions of the execution ledger's transitions, in one
//! place (the counterpart of the lock's [`expressions`](crate::expressions)).
//!
//! Placeholders are the attribute names with a `#` in front, except `#pk`
//! (the configured partition key) and `#cleanup` (the configured DynamoDB
//! TTL attribute); see [`names_for`]. Clock values (`:now_ms`, `:cutoff`,
//! `:expires_at_ms`) come from the client's wall clock: DynamoDB has none.

use std::collections::HashMap;

use crate::expressions::placeholders;

/// Begin starts a run when the record is absent, pending, failed with
/// attempts left, or running under a lease that expired more than the skew
/// allowance ago (`:cutoff` = now − allowance) with attempts left.
pub(crate) const BEGIN_STARTABLE: &str = "(#exec_state = :pending OR (#exec_state = :failed AND #exec_attempts < :max) OR (#exec_state = :running AND #lease_expires_at_ms <= :cutoff AND #exec_attempts < :max))";

/// With a request hash: a stored hash must be the same.
pub(crate) const BEGIN_HASH_AGREES: &str =
    "(attribute_not_exists(#exec_request_hash) OR #exec_request_hash = :hash)";

/// The start of a run. `fence` rises by one per run while the item exists
/// and restarts from the writer's wall clock in microseconds when it does
/// not (a new key, or one purged / deleted by DynamoDB TTL): the lock's
/// scheme, with the same assumptions (crate docs, "Fencing").
pub(crate) const BEGIN_UPDATE: &str = "SET #exec_key = :key, #exec_state = :running, #exec_status = :index_pk, #exec_sort = :sort, #exec_attempts = if_not_exists(#exec_attempts, :zero) + :one, #exec_max_attempts = :max, #fence = if_not_exists(#fence, :fence_base) + :one, #exec_owner = :owner, #lease_id = :lease_id, #lease_expires_at_ms = :expires_at_ms, #lease_ttl_ms = :ttl_ms, #exec_created_ms = if_not_exists(#exec_created_ms, :now_ms), #exec_updated_at_ms = :now_ms";

/// Appended to [`BEGIN_UPDATE`] when the request has a hash: kept if the
/// record already has one.
pub(crate) const BEGIN_SET_HASH: &str =
    ", #exec_request_hash = if_not_exists(#exec_request_hash, :hash)";

/// A running record is never deleted by DynamoDB TTL.
pub(crate) const REMOVE_CLEANUP: &str = " REMOVE #cleanup";

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

/// Enqueue creates a record only where none is.
pub(crate) const ENQUEUE_CONDITION: &str = "attribute_not_exists(#pk)";

/// See [`ENQUEUE_CONDITION`].
pub(crate) const ENQUEUE_UPDATE: &str = "SET #exec_key = :key, #exec_state = :pending, #exec_status = :index_pk, #exec_sort = :sort, #exec_attempts = :zero, #exec_max_attempts = :one, #exec_created_ms = :now_ms, #exec_updated_at_ms = :now_ms";

/// Retry requeues a failed, ignored or stuck record.
pub(crate) const RETRY_CONDITION: &str = "#exec_state = :failed OR #exec_state = :ignored OR (#exec_state = :running AND #lease_expires_at_ms <= :cutoff)";

/// See [`RETRY_CONDITION`]; attempts keep counting.
pub(crate) const RETRY_UPDATE: &str = "SET #exec_state = :pending, #exec_status = :index_pk, #exec_sort = :sort, #exec_updated_at_ms = :now_ms REMOVE #lease_id, #lease_expires_at_ms, #lease_ttl_ms, #cleanup";

/// Purge deletes a record only if it is still finished and old: never a
/// record that was begun or requeued since the index was read.
pub(crate) const PURGE_CONDITION: &str =
    "#exec_state = :state AND #exec_updated_at_ms <= :cutoff_ms";

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
        let names = names_for(&[ENQUEUE_CONDITION, RETRY_UPDATE], "k", "c");
        assert_eq!(names["#pk"], "k");
        assert_eq!(names["#cleanup"], "c");
        assert_eq!(names["#exec_state"], "exec_state");
    }
}
