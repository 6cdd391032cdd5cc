//! The commands besides `run`: leases for scripts, the ledger for
//! operators, set-up, completions and the man page.

use std::io::Write;

use clap::CommandFactory;
use lockstore::ledger::{RetryOutcome, RunQuery, RunStatus, StatusFilter};
use lockstore::{
    AcquireOptions, LeaseId, LockError, LockKey, ReleaseOutcome, RenewOutcome, Store, Ttl, Wait,
};
use serde_json::json;

use crate::Failure;
use crate::cli::{
    AcquireArgs, Cli, KeyArgs, LeaseArgs, ListArgs, PurgeArgs, RenewArgs, StatusArg, WaitArgs,
};
use crate::duration::human;
use crate::exit::Codes;
use crate::output::{holder_json, record_json, record_row, record_text};
use crate::run::{holder_text, permits_text};

fn key(codes: &Codes, key: &str) -> Result<LockKey, Failure> {
    LockKey::new(key).map_err(|err| Failure::error(codes, err.to_string()))
}

fn lease_id(codes: &Codes, id: &str) -> Result<LeaseId, Failure> {
    id.trim()
        .parse()
        .map_err(|err: LockError| Failure::error(codes, err.to_string()))
}

fn print_json(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
}

/// `lockctl acquire KEY`.
pub async fn acquire(
    store: &Store,
    args: AcquireArgs,
    json: bool,
    codes: &Codes,
) -> Result<u8, Failure> {
    let key = key(codes, &args.key)?;
    let wait = match args.wait {
        WaitArgs { no_wait: true, .. } => Wait::No,
        WaitArgs {
            wait: Some(limit), ..
        } => Wait::Up(limit),
        WaitArgs { .. } => Wait::Forever,
    };
    let client = store.lock_client();
    let lease = match client
        .acquire_lease(&key, AcquireOptions::new(args.ttl).wait(wait))
        .await
    {
        Ok(lease) => lease,
        Err(LockError::Timeout { holder, waited, .. }) => {
            let holder = holder.map_or_else(|| "held".to_owned(), |h| holder_text(&h));
            if json {
                print_json(&json!({"key": key.as_str(), "acquired": false}));
            }
            return Err(Failure {
                code: codes.not_acquired,
                message: format!("{key} is {holder}; gave up after {}", human(waited)),
            });
        }
        Err(err) => return Err(Failure::store(codes, &err)),
    };
    if json {
        print_json(&json!({
            "key": key.as_str(),
            "acquired": true,
            "lease_id": lease.id().to_string(),
            "fence": lease.fence().get(),
            "ttl_ms": lease.ttl().as_millis(),
            "owner": lease.owner().as_str(),
        }));
    } else {
        println!("{} {}", lease.id(), lease.fence());
    }
    Ok(0)
}

/// `lockctl renew KEY LEASE_ID`.
pub async fn renew(
    store: &Store,
    args: RenewArgs,
    json: bool,
    codes: &Codes,
) -> Result<u8, Failure> {
    let key = key(codes, &args.key)?;
    let id = lease_id(codes, &args.lease_id)?;
    let ttl = Ttl::new(args.ttl).map_err(|err| Failure::error(codes, err.to_string()))?;
    let outcome = store
        .locks()
        .renew(&key, id, ttl)
        .await
        .map_err(|err| Failure::store(codes, &err))?;
    let renewed = outcome == RenewOutcome::Renewed;
    if json {
        print_json(&json!({"key": key.as_str(), "renewed": renewed, "ttl_ms": ttl.as_millis()}));
    }
    if renewed {
        Ok(0)
    } else {
        Err(Failure {
            code: codes.lost,
            message: format!(
                "the lease on {key} is gone (expired, released or taken over); nothing was renewed"
            ),
        })
    }
}

/// `lockctl release KEY LEASE_ID`.
pub async fn release(
    store: &Store,
    args: LeaseArgs,
    json: bool,
    codes: &Codes,
) -> Result<u8, Failure> {
    let key = key(codes, &args.key)?;
    let id = lease_id(codes, &args.lease_id)?;
    let outcome = store
        .locks()
        .release(&key, id)
        .await
        .map_err(|err| Failure::store(codes, &err))?;
    let released = outcome == ReleaseOutcome::Released;
    if json {
        print_json(&json!({"key": key.as_str(), "released": released}));
    }
    if released {
        Ok(0)
    } else {
        Err(Failure {
            code: codes.lost,
            message: format!(
                "the lease on {key} was not held (it expired, was released or taken over)"
            ),
        })
    }
}

/// `lockctl status KEY`.
pub async fn status(
    store: &Store,
    args: KeyArgs,
    json: bool,
    codes: &Codes,
) -> Result<u8, Failure> {
    let key = key(codes, &args.key)?;
    let holder = store
        .locks()
        .inspect(&key)
        .await
        .map_err(|err| Failure::store(codes, &err))?;
    let record = store
        .ledger_client()
        .get(&key)
        .await
        .map_err(|err| Failure::store(codes, &err))?;
    // A backend without semaphores has none to list.
    let permits = match store.semaphores() {
        Ok(semaphores) => semaphores
            .inspect_permits(&key)
            .await
            .map_err(|err| Failure::store(codes, &err))?,
        Err(_) => None,
    };
    if json {
        print_json(&json!({
            "key": key.as_str(),
            "backend": store.backend_name(),
            "lock": holder.as_ref().map(holder_json),
            "semaphore": permits.as_ref().map(|permits| json!({
                "limit": permits.limit,
                "free": permits.free(),
                "holders": permits.holders.iter().map(holder_json).collect::<Vec<_>>(),
            })),
            "run": record.as_ref().map(record_json),
        }));
        return Ok(0);
    }
    match &holder {
        Some(holder) => println!("lock {key}: {}", holder_text(holder)),
        None => println!("lock {key}: free"),
    }
    if let Some(permits) = &permits {
        println!("semaphore {key}: {}", permits_text(permits));
    }
    match &record {
        Some(record) => println!("{}", record_text(record)),
        None => println!("run  {key}: no record (never run with --once, or purged)"),
    }
    Ok(0)
}

/// The records a `--status` (or the page's status tab) selects.
pub fn status_filter(status: StatusArg) -> StatusFilter {
    match status {
        StatusArg::All => StatusFilter::All,
        StatusArg::Unfinished => StatusFilter::Unfinished,
        StatusArg::Stuck => StatusFilter::Stuck,
        StatusArg::Pending => StatusFilter::Is(RunStatus::Pending),
        StatusArg::Running => StatusFilter::Is(RunStatus::Running),
        StatusArg::Succeeded => StatusFilter::Is(RunStatus::Succeeded),
        StatusArg::Failed => StatusFilter::Is(RunStatus::Failed),
        StatusArg::Ignored => StatusFilter::Is(RunStatus::Ignored),
    }
}

/// `lockctl list`.
pub async fn list(store: &Store, args: ListArgs, json: bool, codes: &Codes) -> Result<u8, Failure> {
    let filter = status_filter(args.status);
    let ledger = store.ledger_client();
    let mut records = Vec::new();
    let mut query = RunQuery::new(filter);
    if args.newest_first {
        query = query.newest_first();
    }
    loop {
        let left = args.limit.saturating_sub(records.len() as u32);
        if left == 0 {
            break;
        }
        let page = ledger
            .query(&query.clone().limit(left.min(RunQuery::MAX_LIMIT)))
            .await
            .map_err(|err| Failure::store(codes, &err))?;
        records.extend(page.records);
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    if json {
        print_json(&serde_json::Value::Array(
            records.iter().map(record_json).collect(),
        ));
        return Ok(0);
    }
    if records.is_empty() {
        println!("no records");
        return Ok(0);
    }
    println!(
        "{:<32} {:<10} {:>7} {:<14} LAST ERROR",
        "KEY", "STATUS", "TRIES", "UPDATED"
    );
    for record in &records {
        println!("{}", record_row(record));
    }
    Ok(0)
}

/// `lockctl retry KEY`.
pub async fn retry(store: &Store, args: KeyArgs, json: bool, codes: &Codes) -> Result<u8, Failure> {
    let key = key(codes, &args.key)?;
    let outcome = store
        .ledger_client()
        .retry(&key)
        .await
        .map_err(|err| Failure::store(codes, &err))?;
    let text = retry_text(&key, outcome);
    let (requeued, code) = match outcome {
        RetryOutcome::Requeued => (true, Ok(0)),
        RetryOutcome::Unchanged(_) => (false, Ok(0)),
        RetryOutcome::NotFound => (false, Err(Failure::error(codes, text.clone()))),
    };
    if json {
        print_json(&json!({"key": key.as_str(), "requeued": requeued}));
    } else if code.is_ok() {
        println!("{text}");
    }
    code
}

/// What a retry did, for people (`lockctl retry` and the page).
pub fn retry_text(key: &LockKey, outcome: RetryOutcome) -> String {
    match outcome {
        RetryOutcome::Requeued => format!("{key} is pending again; the next `run --once` runs it"),
        RetryOutcome::Unchanged(status) => {
            format!("{key} is {status}; retry only requeues failed, ignored or stuck runs")
        }
        RetryOutcome::NotFound => format!("{key} has no record"),
    }
}

/// What a purge did, for people (`lockctl purge` and the page).
pub fn purge_text(purged: u64, older_than: std::time::Duration) -> String {
    format!(
        "purged {purged} finished record(s) not updated for {}",
        human(older_than)
    )
}

/// `lockctl purge --older-than D`.
pub async fn purge(
    store: &Store,
    args: PurgeArgs,
    json: bool,
    codes: &Codes,
) -> Result<u8, Failure> {
    let purged = store
        .ledger_client()
        .purge(args.older_than)
        .await
        .map_err(|err| Failure::store(codes, &err))?;
    if json {
        print_json(&json!({"purged": purged}));
    } else {
        println!("{}", purge_text(purged, args.older_than));
    }
    Ok(0)
}

/// `lockctl setup`.
pub async fn setup(store: &Store, json: bool, codes: &Codes) -> Result<u8, Failure> {
    store
        .ensure_schema()
        .await
        .map_err(|err| Failure::store(codes, &err))?;
    if json {
        print_json(&json!({"backend": store.backend_name(), "ready": true}));
    } else {
        println!("{} store is ready", store.backend_name());
    }
    Ok(0)
}

/// `lockctl completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Result<u8, Failure> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "lockctl", &mut std::io::stdout());
    Ok(0)
}

/// `lockctl man`.
pub fn man(codes: &Codes) -> Result<u8, Failure> {
    let man = clap_mangen::Man::new(Cli::command());
    let mut out = std::io::stdout().lock();
    man.render(&mut out)
        .map_err(|err| Failure::error(codes, format!("cannot write the man page: {err}")))?;
    Ok(0)
}
