//! Records and holders as JSON (for scripts) and as text (for people).

use std::time::{Duration, SystemTime};

use lockstore::Holder;
use lockstore::ledger::{RunRecord, unix_millis};
use serde_json::{Value, json};

use crate::duration::human;

/// A lock holder as JSON.
pub fn holder_json(holder: &Holder) -> Value {
    json!({
        "owner": holder.owner(),
        "fence": holder.fence().get(),
        "expires_in_ms": millis(holder.expires_in()),
    })
}

/// A run record as JSON. The stored result is inlined when it is JSON (as
/// `lockctl run --once` writes it), else given as text.
pub fn record_json(record: &RunRecord) -> Value {
    let result = record.result.as_ref().map(|bytes| {
        serde_json::from_slice::<Value>(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
    });
    json!({
        "key": record.key.as_str(),
        "status": record.status.as_str(),
        "attempts": record.attempts,
        "max_attempts": record.max_attempts,
        "fence": record.fence.map(|f| f.get()),
        "owner": record.owner,
        "lease_expires_in_ms": record.lease_expires_in.map(millis),
        "stuck": record.is_stuck(),
        "result": result,
        "errors": record.errors.iter().map(|e| json!({
            "attempt": e.attempt,
            "message": e.message,
            "retryable": e.retryable,
        })).collect::<Vec<_>>(),
        "created_at_ms": unix_millis(record.created_at),
        "updated_at_ms": unix_millis(record.updated_at),
        "finished_at_ms": record.finished_at.map(unix_millis),
    })
}

/// A run record for people, several lines.
pub fn record_text(record: &RunRecord) -> String {
    let mut out = format!(
        "run  {}: {}{}, attempt {} of {}",
        record.key,
        record.status,
        if record.is_stuck() {
            " (stuck: its lease expired)"
        } else {
            ""
        },
        record.attempts,
        record.max_attempts
    );
    if let Some(fence) = record.fence {
        out.push_str(&format!(", fence {fence}"));
    }
    if let Some(holder) = record.holder() {
        out.push_str(&format!(
            "\n     running as {} (lease expires in {})",
            holder.owner(),
            human(holder.expires_in())
        ));
    }
    out.push_str(&format!("\n     updated {}", ago(record.updated_at)));
    if let Some(finished) = record.finished_at {
        out.push_str(&format!(", finished {}", ago(finished)));
    }
    if let Some(error) = record.last_error() {
        out.push_str(&format!("\n     last error (attempt {}):", error.attempt));
        for line in error.message.lines() {
            out.push_str("\n       ");
            out.push_str(line);
        }
    }
    out
}

/// One line per record, for `list`.
pub fn record_row(record: &RunRecord) -> String {
    let error = record
        .last_error()
        .map(|e| e.message.lines().next().unwrap_or("").to_owned())
        .unwrap_or_default();
    format!(
        "{:<32} {:<10} {:>3}/{:<3} {:<14} {}",
        record.key.as_str(),
        if record.is_stuck() {
            "stuck"
        } else {
            record.status.as_str()
        },
        record.attempts,
        record.max_attempts,
        ago(record.updated_at),
        error
    )
}

/// `5m02s ago`, or `in 3s` for a time ahead of this host's clock.
pub fn ago(time: SystemTime) -> String {
    match SystemTime::now().duration_since(time) {
        Ok(age) => format!("{} ago", human(age)),
        Err(ahead) => format!("in {}", human(ahead.duration())),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
