//! `lockctl elect` and `lockctl leader`: leader election from a shell.
//!
//! `elect` is `run` with a campaign instead of an acquire: it waits until
//! this process leads, runs the command under the same supervision (its
//! own process group, the watchdog, signals forwarded, the group stopped
//! when the term is lost), and resigns when the command ends, so the next
//! candidate takes over at once.

use std::time::Duration;

use lockstore::election::Leader;
use lockstore::{LockKey, Store};
use serde_json::{Value, json};
use tokio::time::sleep;

use crate::cli::{ElectArgs, LeaderArgs};
use crate::duration::human;
use crate::errout;
use crate::exit::Codes;
use crate::run::{
    Ended, Progress, passed_through, spawn, status_text, supervise, unless_signalled,
};
use crate::signals::Forwarded;
use crate::{Failure, describe_store_error};

/// Any valid TTL, for an election that is only read.
const READ_ONLY_TTL: Duration = Duration::from_secs(30);

/// Runs `lockctl elect`.
pub async fn elect(store: &Store, args: ElectArgs, codes: &Codes) -> Result<u8, Failure> {
    let name = LockKey::new(&args.name).map_err(|err| Failure::error(codes, err.to_string()))?;
    let election = store
        .lock_client()
        .election(&name, args.ttl)
        .map_err(|err| Failure::error(codes, err.to_string()))?;
    let mut signals = Forwarded::install()
        .map_err(|err| Failure::error(codes, format!("cannot handle signals: {err}")))?;
    let progress = {
        let election = election.clone();
        Progress::start(&name, move || {
            let election = election.clone();
            async move {
                match election.leader().await {
                    Ok(leader) => leader_text(election.name(), leader.as_ref()),
                    Err(err) => format!("cannot read the leader: {err}"),
                }
            }
        })
    };
    let campaigning = format!("campaigning for {name}");
    let leadership = match unless_signalled(
        election.campaign(args.value.clone()),
        &mut signals,
        &campaigning,
        progress,
    )
    .await
    {
        Ok(won) => won.map_err(|err| Failure::store(codes, &err))?,
        Err(code) => return Ok(code),
    };
    let term = leadership.term();
    tracing::debug!(%name, %term, "leading; starting the command");
    let env = [
        ("LOCKSTORE_ELECTION", name.to_string()),
        ("LOCKSTORE_TERM", term.to_string()),
        ("LOCKSTORE_FENCE", term.to_string()),
        ("LOCKSTORE_LEADER_VALUE", args.value.clone()),
    ];
    let started = match spawn(&args.command, &env, false, args.kill_grace) {
        Ok(started) => started,
        Err(failure) => {
            let _ = leadership.resign().await;
            return Err(failure);
        }
    };
    let ended = supervise(
        started,
        leadership.lost(),
        &mut signals,
        args.kill_grace,
        &name,
    )
    .await;
    let resigned = leadership.resign().await;
    match ended {
        Ok(Ended::Exited(status)) => {
            if let Err(err) = resigned {
                errout::say(&format!(
                    "resigning the leadership of {name} failed ({}); it ends by its TTL",
                    describe_store_error(&err)
                ));
            }
            Ok(passed_through(status, codes))
        }
        Ok(Ended::Lost(status)) => Err(Failure {
            code: codes.lost,
            message: format!(
                "the leadership of {name} (term {term}) was lost while the command ran; it was \
                 stopped ({})",
                status_text(status)
            ),
        }),
        Err(err) => Err(Failure::error(
            codes,
            format!("waiting for the command failed: {err}"),
        )),
    }
}

/// Runs `lockctl leader`: the leader now, or (`--watch`) each change until
/// interrupted.
pub async fn leader(
    store: &Store,
    args: LeaderArgs,
    json: bool,
    codes: &Codes,
) -> Result<u8, Failure> {
    let name = LockKey::new(&args.name).map_err(|err| Failure::error(codes, err.to_string()))?;
    let election = store
        .lock_client()
        .election(&name, READ_ONLY_TTL)
        .map_err(|err| Failure::error(codes, err.to_string()))?;
    if !args.watch {
        let leader = election
            .leader()
            .await
            .map_err(|err| Failure::store(codes, &err))?;
        print(&name, leader.as_ref(), json);
        return Ok(0);
    }
    let mut observer = election.observe_every(args.every).observe();
    loop {
        match observer.changed().await {
            Ok(leader) => print(&name, leader.as_ref(), json),
            // A watch outlives a server's restart: say so and ask again.
            Err(err) => {
                errout::say(&format!(
                    "cannot read the leader of {name} ({}); trying again in {}",
                    describe_store_error(&err),
                    human(args.every)
                ));
                sleep(args.every).await;
            }
        }
    }
}

fn print(name: &LockKey, leader: Option<&Leader>, json: bool) {
    if json {
        println!("{}", leader_json(name, leader));
    } else {
        println!("{}", leader_text(name, leader));
    }
}

/// `NAME: CANDIDATE leads (term N, value "V", expires in 12.0s)`.
fn leader_text(name: &LockKey, leader: Option<&Leader>) -> String {
    match leader {
        Some(leader) => format!(
            "{name}: {} leads (term {}, value {:?}, expires in {})",
            leader.candidate(),
            leader.term(),
            leader.value(),
            human(leader.expires_in())
        ),
        None => format!("{name}: no leader"),
    }
}

fn leader_json(name: &LockKey, leader: Option<&Leader>) -> Value {
    json!({
        "name": name.as_str(),
        "leader": leader.map(|leader| json!({
            "candidate": leader.candidate(),
            "value": leader.value(),
            "term": leader.term().get(),
            "expires_in_ms": u64::try_from(leader.expires_in().as_millis()).unwrap_or(u64::MAX),
        })),
    })
}
