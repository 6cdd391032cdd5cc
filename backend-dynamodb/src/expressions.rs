//! The DynamoDB expressions of the four operations, in one place so they are
//! reviewed together as what they are (the DynamoDB counterpart of a `.lua`
//! or `.sql` file).
//!
//! Every attribute is written through a `#name` placeholder (several are
//! DynamoDB reserved words or configurable) and every value through a
//! `:value`; [`placeholders`] collects exactly the ones an expression uses,
//! because DynamoDB rejects unused placeholders.
//!
//! Clock values (`:now_ms`, `:takeover_cutoff_ms`, `:expires_at_ms`) are
//! computed by the client from its wall clock: DynamoDB has no server-side
//! "now". See the crate docs, "Clocks".
//!
//! # The cleanup rule
//!
//! Every write that sets the cleanup time `C` (epoch seconds) leaves the
//! item's fence below `:fence_cap` = `(C − cleanup_after) × 10⁶`: the cleanup
//! time less the cleanup delay, counted in microseconds, like the fence
//! base. The writer picks `C` from its own clock; when the stored fence is
//! higher (the item's creator had a clock ahead of this writer's) the
//! condition fails, the refusal shows the fence, and the writer tries again
//! with `C` computed from that fence. DynamoDB TTL deletes an item only
//! after the service's clock passes `C`, so by then any client whose clock
//! is less than `cleanup_after` behind the service's has a clock, in
//! microseconds, above every token the item handed out, and the fence base
//! of the item it re-creates is higher still (crate docs, "Fencing").

use std::collections::HashMap;

use crate::layout;

/// Acquire succeeds on a key that has no item, a released item, or a lease
/// that expired more than the skew allowance ago by this client's clock;
/// and only under the cleanup rule (module docs; a new item's fence is
/// `:fence_base + 1`, which the cap covers).
///
/// A live lease with the *same* lease id deliberately fails this condition:
/// the fence must not move for a retried request, and an `UpdateItem` cannot
/// increment conditionally. The refusal's `ALL_OLD` item shows our own lease
/// id, and [`REFRESH_*`](WALL_CLOCK) then extends it, keeping the token.
pub(crate) const ACQUIRE_CONDITION: &str = "(attribute_not_exists(#pk) OR attribute_not_exists(#lease_id) OR #lease_expires_at_ms <= :takeover_cutoff_ms) AND (attribute_not_exists(#fence) OR #fence < :fence_cap)";

/// Skew-free mode: expiry timestamps written by other clients are ignored.
/// A lease is taken over only through [`ACQUIRE_CONDITION_SEEN_VERSION`].
/// No cleanup rule: a skew-free grant removes the cleanup time.
pub(crate) const ACQUIRE_CONDITION_SKEW_FREE: &str =
    "attribute_not_exists(#pk) OR attribute_not_exists(#lease_id)";

/// Appended to the skew-free condition once this client has watched the
/// same record version, unchanged, for a full lease on its monotonic clock.
pub(crate) const ACQUIRE_CONDITION_SEEN_VERSION: &str = " OR #record_version = :seen_version";

/// The conditions and updates that write a lease, in one takeover mode.
///
/// They differ in one thing: whether a held item carries a cleanup time.
/// In [`TakeoverMode::WallClock`](crate::TakeoverMode) a grant or renewal
/// sets it to the writer's expiry + `cleanup_after`, so an abandoned lease's
/// item goes on its own; that trusts the writer's clock, which wall-clock
/// mode assumes anyway. In [`TakeoverMode::SkewFree`](crate::TakeoverMode)
/// a grant or renewal **removes** it: DynamoDB TTL must not delete the item
/// of a live lease because its writer's clock is behind, and skew-free mode
/// trusts no wall clock. Only a release sets it there.
pub(crate) struct LeaseWrites {
    /// The grant. `fence` is never removed, so after a release or expiry it
    /// is one more than the last token. When the item itself is gone
    /// (DynamoDB TTL deleted it, or it never existed) the count restarts
    /// from `:fence_base`, the writer's wall clock in microseconds.
    pub(crate) acquire_update: &'static str,
    /// A retried acquire by the lease that already holds the key: nobody
    /// else can have held it in between (every other grant rewrites
    /// `lease_id`), so the lease is refreshed and keeps its token.
    pub(crate) refresh_condition: &'static str,
    /// See `refresh_condition`.
    pub(crate) refresh_update: &'static str,
    /// Renew only the live lease with this id. "Live" is judged by this
    /// client's clock *without* the skew allowance: the holder is the one
    /// side that must give up early, never late.
    pub(crate) renew_condition: &'static str,
    /// See `renew_condition`.
    pub(crate) renew_update: &'static str,
}

/// The lease writes of [`TakeoverMode::WallClock`](crate::TakeoverMode).
pub(crate) const WALL_CLOCK: LeaseWrites = LeaseWrites {
    acquire_update: "SET #lease_id = :lease_id, #lease_owner = :owner, #lease_expires_at_ms = :expires_at_ms, #lease_ttl_ms = :ttl_ms, #record_version = :version, #cleanup = :cleanup_at, #fence = if_not_exists(#fence, :fence_base) + :one REMOVE #released_at_ms",
    refresh_condition: "#lease_id = :lease_id AND #fence < :fence_cap",
    refresh_update: "SET #lease_owner = :owner, #lease_expires_at_ms = :expires_at_ms, #lease_ttl_ms = :ttl_ms, #record_version = :version, #cleanup = :cleanup_at",
    renew_condition: "#lease_id = :lease_id AND #lease_expires_at_ms > :now_ms AND #fence < :fence_cap",
    renew_update: "SET #lease_expires_at_ms = :expires_at_ms, #lease_ttl_ms = :ttl_ms, #record_version = :version, #cleanup = :cleanup_at",
};

/// The lease writes of [`TakeoverMode::SkewFree`](crate::TakeoverMode).
pub(crate) const SKEW_FREE: LeaseWrites = LeaseWrites {
    acquire_update: "SET #lease_id = :lease_id, #lease_owner = :owner, #lease_expires_at_ms = :expires_at_ms, #lease_ttl_ms = :ttl_ms, #record_version = :version, #fence = if_not_exists(#fence, :fence_base) + :one REMOVE #released_at_ms, #cleanup",
    refresh_condition: "#lease_id = :lease_id",
    refresh_update: "SET #lease_owner = :owner, #lease_expires_at_ms = :expires_at_ms, #lease_ttl_ms = :ttl_ms, #record_version = :version REMOVE #cleanup",
    renew_condition: "#lease_id = :lease_id AND #lease_expires_at_ms > :now_ms",
    renew_update: "SET #lease_expires_at_ms = :expires_at_ms, #lease_ttl_ms = :ttl_ms, #record_version = :version REMOVE #cleanup",
};

/// Release whatever lease this id still has on the key, expired or not (an
/// expired one is cleared too, which frees the key sooner and is
/// harmless), under the cleanup rule (module docs), in both modes. The
/// item stays, so `fence` survives, and so does `lease_expires_at_ms`: with
/// `released_at_ms` and the request's own `record_version`, it lets an SDK
/// retry of an applied release, which finds the lease gone, recognise its
/// own earlier attempt and say whether the lease was still live then.
pub(crate) const RELEASE_CONDITION: &str = "#lease_id = :lease_id AND #fence < :fence_cap";

/// See [`RELEASE_CONDITION`].
pub(crate) const RELEASE_UPDATE: &str = "SET #released_at_ms = :now_ms, #record_version = :version, #cleanup = :cleanup_at REMOVE #lease_id, #lease_owner, #lease_ttl_ms";

/// The attribute names behind `#placeholders`, given the configurable ones.
pub(crate) fn attribute_name<'a>(
    placeholder: &str,
    partition_key: &'a str,
    cleanup: &'a str,
) -> Option<&'a str> {
    Some(match placeholder {
        "#pk" => partition_key,
        "#cleanup" => cleanup,
        "#fence" => layout::FENCE,
        "#lease_id" => layout::LEASE_ID,
        "#lease_owner" => layout::LEASE_OWNER,
        "#lease_expires_at_ms" => layout::LEASE_EXPIRES_AT_MS,
        "#lease_ttl_ms" => layout::LEASE_TTL_MS,
        "#record_version" => layout::RECORD_VERSION,
        "#released_at_ms" => layout::RELEASED_AT_MS,
        _ => return None,
    })
}

/// Every `#name` (when `sigil` is `'#'`) or `:value` (when `':'`) used in
/// `expressions`, each once.
pub(crate) fn placeholders<'e>(expressions: &[&'e str], sigil: char) -> Vec<&'e str> {
    let mut found: Vec<&str> = Vec::new();
    for expression in expressions {
        let mut rest = *expression;
        while let Some(start) = rest.find(sigil) {
            let tail = &rest[start..];
            let len = tail[1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(tail.len(), |end| end + 1);
            let name = &tail[..len];
            if len > 1 && !found.contains(&name) {
                found.push(name);
            }
            rest = &tail[len..];
        }
    }
    found
}

/// The `ExpressionAttributeNames` map for `expressions`.
pub(crate) fn names_for(
    expressions: &[&str],
    partition_key: &str,
    cleanup: &str,
) -> HashMap<String, String> {
    placeholders(expressions, '#')
        .into_iter()
        .filter_map(|p| {
            attribute_name(p, partition_key, cleanup).map(|a| (p.to_owned(), a.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_of_every_expression_is_known() {
        for e in [
            ACQUIRE_CONDITION,
            ACQUIRE_CONDITION_SKEW_FREE,
            ACQUIRE_CONDITION_SEEN_VERSION,
            RELEASE_CONDITION,
            RELEASE_UPDATE,
        ]
        .into_iter()
        .chain([WALL_CLOCK, SKEW_FREE].iter().flat_map(|w| {
            [
                w.acquire_update,
                w.refresh_condition,
                w.refresh_update,
                w.renew_condition,
                w.renew_update,
            ]
        })) {
            for p in placeholders(&[e], '#') {
                assert!(attribute_name(p, "pk", "c").is_some(), "{p} in {e}");
            }
        }
    }

    #[test]
    fn placeholders_are_collected_once_each() {
        assert_eq!(
            placeholders(&["#a = :x AND #b_c > :x", "SET #a = :y"], ':'),
            vec![":x", ":y"]
        );
        assert_eq!(
            placeholders(&["#a = :x AND #b_c > :x"], '#'),
            vec!["#a", "#b_c"]
        );
    }
}
