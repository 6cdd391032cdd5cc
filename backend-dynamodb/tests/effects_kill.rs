//! Exactly-once effects under SIGKILL, on DynamoDB (moto): worker
//! processes put each key's effect item and record the run's success in
//! one `TransactWriteItems` (`DynamoDbStore::succeed_item`), and are killed
//! mid-run — after the begin, before the transaction is built, and after
//! `succeed_item` detached the run, just before the transaction is sent —
//! and at random moments (some while a transaction is in flight). At the
//! end every key's effect item exists exactly once, with the fence of the
//! run the ledger recorded as succeeded.
//!
//! The DynamoDB counterpart of `backend-sql/tests/effects_kill.rs`: the
//! test binary is its own worker (`--worker`). Eight workers run 200 keys.
//! The first run of every tenth key that gets there writes a marker file at
//! its kill point and hangs until the parent SIGKILLs its process; the
//! parent also kills a worker at random moments. The marker kills do not
//! depend on timing; the random ones land wherever they land.
//!
//! moto only: dynalite has no `TransactWriteItems`. moto is single-threaded
//! and slow, so a worker skips the keys that it or another worker has seen
//! succeed (its own success or `AlreadySucceeded`, noted in a file), rather
//! than begin every key in every pass; the checks at the end read only
//! DynamoDB. The keys are spread over four ledger tables, each with an
//! effect table beside it, of this run's own and deleted at the end: moto
//! deep-copies a transaction's tables (for its rollback), so the cost of a
//! transaction grows with them.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put,
    ScalarAttributeType, TransactWriteItem,
};
use common::Server;
use lockstore_api::LockError;
use lockstore_api::ledger::{Begin, Ledger, LedgerStore, RunGuard, RunOptions, RunStatus};
use lockstore_dynamodb::DynamoDbStore;

const WORKERS: usize = 8;
const KEYS: usize = 200;
/// Keys whose first run hangs after its begin, before its transaction is
/// built (started, nothing written).
const AFTER_BEGIN: usize = 3;
/// Keys whose first run hangs after `succeed_item` detached it, just
/// before its transaction is sent.
const BEFORE_SEND: usize = 7;
/// Of every `EVERY` keys, one of each kind.
const EVERY: usize = 10;
/// Kills at random moments, besides the marked ones.
const RANDOM_KILLS: usize = 12;
/// Short, so that a killed run is taken over quickly; renewed at a third.
const RUN_TTL: Duration = Duration::from_secs(2);
/// A worker reads which keys the workers have seen succeed (their notes in
/// the marker directory) before every this many begins, and skips them: a
/// begin of a succeeded key is a request to moto too.
const REFRESH_EVERY: usize = 10;
/// Between a worker's passes over its unfinished keys: every begin of a
/// key still running is a request to the one moto thread.
const PASS_PAUSE: Duration = Duration::from_millis(250);

/// The keys are spread over this many pairs of tables (a ledger table and
/// an effect table): moto deep-copies the table of every item of a
/// transaction for its rollback, so a transaction's cost grows with the
/// tables it writes to.
const TABLES: usize = 4;

fn key(i: usize) -> String {
    format!("fx-{i:03}")
}

/// The partition key attribute of the effect table.
const EFFECT_PK: &str = "pk";

const URL_VAR: &str = "LOCKSTORE_TEST_DYNAMODB_URL";

/// Where the processes meet: the base name of the tables on moto (pair `t`
/// is `{table}_{t}` and `{table}_{t}_effects`; key `i` is in pair
/// `i % TABLES`), the key prefix of this run (ledger records under
/// `{prefix}/`, effect items under `{prefix}/effect/`), and the marker
/// directory.
struct Setup {
    table: String,
    prefix: String,
    markers: PathBuf,
}

impl Setup {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name}"));
        Self {
            table: var("EFFECTS_KILL_TABLE"),
            prefix: var("EFFECTS_KILL_PREFIX"),
            markers: var("EFFECTS_KILL_MARKERS").into(),
        }
    }

    /// A store on each ledger table.
    async fn stores(&self) -> Vec<DynamoDbStore> {
        let mut stores = Vec::new();
        for t in 0..TABLES {
            stores.push(
                common::builder_on(Server::Moto, &self.ledger_table(t))
                    .key_prefix(format!("{}/", self.prefix))
                    .build()
                    .await
                    .expect("a store on moto"),
            );
        }
        stores
    }

    fn ledger_table(&self, t: usize) -> String {
        format!("{}_{t}", self.table)
    }

    /// The table of the effect items beside ledger table `t`.
    fn effects_table(&self, t: usize) -> String {
        format!("{}_{t}_effects", self.table)
    }

    /// The partition key of key `key`'s effect under fence `fence`: a
    /// second execution of a key leaves a second item.
    fn effect_pk(&self, key: &str, fence: u64) -> String {
        format!("{}/effect/{key}/{fence}", self.prefix)
    }

    fn spawn_worker(&self, slot: usize) -> Child {
        Command::new(std::env::current_exe().expect("the test binary"))
            .arg("--worker")
            .env("EFFECTS_KILL_SLOT", slot.to_string())
            .env(URL_VAR, Server::Moto.url())
            .env("EFFECTS_KILL_TABLE", &self.table)
            .env("EFFECTS_KILL_PREFIX", &self.prefix)
            .env("EFFECTS_KILL_MARKERS", &self.markers)
            .spawn()
            .expect("start a worker process")
    }

    /// The first run of a marked key to get to its kill point claims it
    /// (exactly one run in all processes does), tells the parent, and
    /// hangs until it is killed.
    async fn hang_if_marked(&self, i: usize, point: usize) {
        if i % EVERY != point {
            return;
        }
        let key = key(i);
        if std::fs::File::create_new(self.markers.join(format!("claimed-{key}"))).is_ok() {
            let marker = self
                .markers
                .join(format!("{}-{point}-{key}", std::process::id()));
            std::fs::write(&marker, b"").expect("write the marker");
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
}

fn ledger(store: &DynamoDbStore) -> Ledger {
    Ledger::from_arc(Arc::new(store.clone()) as Arc<dyn LedgerStore>)
}

/// One run of key `i`: the effect item and the success in one
/// `TransactWriteItems`.
async fn run(
    setup: &Setup,
    store: &DynamoDbStore,
    i: usize,
    run: RunGuard,
) -> Result<(), LockError> {
    let key = key(i);
    let fence = run.fence().get();
    setup.hang_if_marked(i, AFTER_BEGIN).await;
    let effect = Put::builder()
        .table_name(setup.effects_table(i % TABLES))
        .item(EFFECT_PK, AttributeValue::S(setup.effect_pk(&key, fence)))
        .item("key", AttributeValue::S(key.clone()))
        .item("fence", AttributeValue::N(fence.to_string()))
        .build()
        .map_err(|err| LockError::permanent("test", "the effect item", err))?;
    let effect = TransactWriteItem::builder().put(effect).build();
    let success = store.succeed_item(run, Some(fence.to_string().into_bytes()))?;
    setup.hang_if_marked(i, BEFORE_SEND).await;
    let reply = store
        .client()
        .transact_write_items()
        .transact_items(effect)
        .transact_items(success.item().clone())
        .send()
        .await;
    success.check(reply, 1)?;
    Ok(())
}

/// The keys any worker has seen succeed, from their notes in
/// `{markers}/done`.
fn seen_done(setup: &Setup) -> impl Iterator<Item = usize> {
    std::fs::read_dir(setup.markers.join("done"))
        .expect("the done notes")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
}

/// Notes that key `i` has succeeded, for the other workers.
fn note_done(setup: &Setup, i: usize) {
    std::fs::write(setup.markers.join("done").join(i.to_string()), b"").expect("a done note");
}

/// A worker process: runs every key it can start until it has seen all
/// succeed.
async fn worker() {
    let setup = Setup::from_env();
    let stores = setup.stores().await;
    let ledgers: Vec<Ledger> = stores.iter().map(ledger).collect();
    let options = RunOptions::new(RUN_TTL).max_attempts(50);
    // Each worker starts on a part of the keys of its own.
    let slot: usize = std::env::var("EFFECTS_KILL_SLOT")
        .expect("EFFECTS_KILL_SLOT")
        .parse()
        .unwrap();
    let offset = slot * KEYS / WORKERS;
    // The keys this process has seen succeed: not begun again.
    let mut done = HashSet::new();
    loop {
        let mut unfinished = 0;
        let mut begun = 0;
        for i in (0..KEYS).map(|i| (i + offset) % KEYS) {
            if begun % REFRESH_EVERY == 0 {
                done.extend(seen_done(&setup));
            }
            if done.contains(&i) {
                continue;
            }
            begun += 1;
            let started = match ledgers[i % TABLES].begin(key(i).as_str(), &options).await {
                Ok(Begin::Started(started)) => started,
                Ok(Begin::AlreadySucceeded(_)) => {
                    note_done(&setup, i);
                    done.insert(i);
                    continue;
                }
                Ok(Begin::Running(_)) => {
                    unfinished += 1;
                    continue;
                }
                Ok(Begin::Ignored(record)) => panic!("{} was given up: {record:?}", key(i)),
                Err(err) if err.is_retryable() => {
                    unfinished += 1;
                    continue;
                }
                Err(err) => panic!("begin {}: {err}", key(i)),
            };
            match run(&setup, &stores[i % TABLES], i, started).await {
                Ok(()) => {
                    note_done(&setup, i);
                    done.insert(i);
                }
                // Taken over, or a transaction refused: nothing was
                // written; the key is run again once its lease has run out.
                Err(err) if err.is_retryable() || matches!(err, LockError::LeaseLost { .. }) => {
                    unfinished += 1;
                }
                Err(err) => panic!("run {}: {err}", key(i)),
            }
        }
        if unfinished == 0 {
            return;
        }
        tokio::time::sleep(PASS_PAUSE).await;
    }
}

/// Every effect item under the prefix in effect table `t`, added to
/// `found`: the fences by key, from the fence attribute, checked against
/// the fence in the partition key.
async fn effects(
    setup: &Setup,
    store: &DynamoDbStore,
    t: usize,
    found: &mut BTreeMap<String, Vec<u64>>,
) -> Result<(), String> {
    let pk = EFFECT_PK;
    let start = format!("{}/effect/", setup.prefix);
    let mut from = None;
    loop {
        let page = store
            .client()
            .scan()
            .table_name(setup.effects_table(t))
            .consistent_read(true)
            .filter_expression("begins_with(#pk, :start)")
            .expression_attribute_names("#pk", pk)
            .expression_attribute_values(":start", AttributeValue::S(start.clone()))
            .set_exclusive_start_key(from)
            .send()
            .await
            .map_err(|err| format!("scan the effect items: {err:?}"))?;
        for item in page.items() {
            let (
                Some(AttributeValue::S(id)),
                Some(AttributeValue::S(key)),
                Some(AttributeValue::N(fence)),
            ) = (item.get(pk), item.get("key"), item.get("fence"))
            else {
                return Err(format!("a malformed effect item {item:?}"));
            };
            let fence: u64 = fence.parse().map_err(|_| format!("fence of {id}"))?;
            if *id != setup.effect_pk(key, fence) {
                return Err(format!("effect item {id} holds key {key}, fence {fence}"));
            }
            found.entry(key.clone()).or_default().push(fence);
        }
        from = page.last_evaluated_key;
        if from.is_none() {
            return Ok(());
        }
    }
}

/// The parent: workers, kills, then the checks. Returns the summary line.
async fn kill_workers(dir: &Path) -> Result<String, String> {
    let setup = Setup {
        table: format!("lockstore_effects_kill_{:016x}", rand::random::<u64>()),
        prefix: common::fresh_prefix("effects-kill"),
        markers: dir.join("markers"),
    };
    std::fs::create_dir_all(setup.markers.join("done")).unwrap();
    let stores = setup.stores().await;
    let outcome = match create_tables(&setup, &stores).await {
        Ok(()) => kill_workers_on(&setup, &stores).await,
        Err(err) => Err(err),
    };
    // Not left behind: moto keeps every table in one process's memory.
    for t in 0..TABLES {
        for table in [setup.ledger_table(t), setup.effects_table(t)] {
            let _ = stores[0]
                .client()
                .delete_table()
                .table_name(table)
                .send()
                .await;
        }
    }
    outcome
}

async fn create_tables(setup: &Setup, stores: &[DynamoDbStore]) -> Result<(), String> {
    for (t, store) in stores.iter().enumerate() {
        store
            .create_table()
            .await
            .map_err(|err| format!("create {}: {err}", setup.ledger_table(t)))?;
        store
            .client()
            .create_table()
            .table_name(setup.effects_table(t))
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(EFFECT_PK)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(EFFECT_PK)
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .map_err(|err| format!("create {}: {err:?}", setup.effects_table(t)))?;
    }
    Ok(())
}

async fn kill_workers_on(setup: &Setup, stores: &[DynamoDbStore]) -> Result<String, String> {
    let ledgers: Vec<Ledger> = stores.iter().map(ledger).collect();
    let started = std::time::Instant::now();
    let mut workers: Vec<Child> = (0..WORKERS).map(|slot| setup.spawn_worker(slot)).collect();
    let (mut after_begin, mut before_send) = (Vec::new(), Vec::new());
    let mut random_kills = 0;
    let mut randomly_killed = Vec::new();
    let mut next_random = std::time::Instant::now() + random_pause();
    let give_up = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        for entry in std::fs::read_dir(&setup.markers).unwrap() {
            let entry = entry.unwrap();
            let marker = entry.file_name().to_string_lossy().into_owned();
            if marker.starts_with("claimed-") || marker == "done" {
                continue;
            }
            let mut parts = marker.splitn(3, '-');
            let (pid, point, key) = (
                parts.next().unwrap().parse::<u32>().unwrap(),
                parts.next().unwrap().parse::<usize>().unwrap(),
                parts.next().unwrap().to_owned(),
            );
            match workers.iter().position(|child| child.id() == pid) {
                Some(at) => {
                    workers[at].kill().unwrap(); // SIGKILL
                    workers[at].wait().unwrap();
                    workers[at] = setup.spawn_worker(at);
                }
                // A random kill found it hanging first: killed there all the same.
                None if randomly_killed.contains(&pid) => {}
                None => return Err(format!("marker of an unknown worker {pid}")),
            }
            if point == AFTER_BEGIN {
                after_begin.push(key);
            } else {
                before_send.push(key);
            }
            std::fs::remove_file(entry.path()).unwrap();
        }
        let mut running = Vec::new();
        for (at, child) in workers.iter_mut().enumerate() {
            match child.try_wait().unwrap() {
                None => running.push(at),
                Some(status) if status.success() => {}
                Some(status) => return Err(format!("a worker failed: {status}")),
            }
        }
        if running.is_empty() {
            break;
        }
        if random_kills < RANDOM_KILLS && std::time::Instant::now() >= next_random {
            let at = running[rand::random_range(0..running.len())];
            randomly_killed.push(workers[at].id());
            workers[at].kill().unwrap();
            workers[at].wait().unwrap();
            workers[at] = setup.spawn_worker(at);
            random_kills += 1;
            next_random = std::time::Instant::now() + random_pause();
        }
        if std::time::Instant::now() > give_up {
            for child in &mut workers {
                let _ = child.kill();
            }
            return Err("workers did not finish within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();

    // A random kill between a claim and its marker: killed at the point
    // all the same (the claimed run never got past it).
    for entry in std::fs::read_dir(&setup.markers).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(key) = name.strip_prefix("claimed-")
            && !after_begin.iter().chain(&before_send).any(|k| k == key)
        {
            let i: usize = key.trim_start_matches("fx-").parse().unwrap();
            if i % EVERY == AFTER_BEGIN {
                after_begin.push(key.to_owned());
            } else {
                before_send.push(key.to_owned());
            }
        }
    }
    let marked = |point: usize| -> Vec<String> {
        (0..KEYS).filter(|i| i % EVERY == point).map(key).collect()
    };
    after_begin.sort();
    before_send.sort();
    if after_begin != marked(AFTER_BEGIN) || before_send != marked(BEFORE_SEND) {
        return Err(format!(
            "killed after the begin {after_begin:?}, before the send {before_send:?}"
        ));
    }
    let mut found = BTreeMap::new();
    for (t, store) in stores.iter().enumerate() {
        effects(setup, store, t, &mut found).await?;
    }
    let mut effects = found;
    let mut twice_begun = 0;
    for i in 0..KEYS {
        let key = key(i);
        let record = ledgers[i % TABLES]
            .get(key.as_str())
            .await
            .map_err(|err| err.to_string())?
            .ok_or_else(|| format!("{key} has no record"))?;
        if record.status != RunStatus::Succeeded {
            return Err(format!("{key} ended {}", record.status));
        }
        let fence = record
            .fence
            .expect("a succeeded record keeps its fence")
            .get();
        let fences = effects.remove(&key).unwrap_or_default();
        if fences != [fence] {
            return Err(format!(
                "{key}: effect items with fences {fences:?}; the ledger's run has fence {fence}"
            ));
        }
        if record.result.as_deref() != Some(fence.to_string().as_bytes()) {
            return Err(format!("{key}: result {:?}, fence {fence}", record.result));
        }
        if matches!(i % EVERY, AFTER_BEGIN | BEFORE_SEND) && record.attempts < 2 {
            return Err(format!(
                "{key}: killed mid-run but {} attempt",
                record.attempts
            ));
        }
        if record.attempts > 1 {
            twice_begun += 1;
        }
    }
    if !effects.is_empty() {
        return Err(format!("effect items of unknown keys: {effects:?}"));
    }
    Ok(format!(
        "dynamodb (moto): {WORKERS} worker processes, {KEYS} keys, {} killed after the begin \
         before the transaction, {} after succeed_item before the send, {random_kills} at \
         random; {twice_begun} keys run more than once, every key's effect item exists once \
         with the record's fence ({:.1} s)",
        after_begin.len(),
        before_send.len(),
        took.as_secs_f64()
    ))
}

fn random_pause() -> Duration {
    Duration::from_millis(rand::random_range(100..600))
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::args().any(|arg| arg == "--worker") {
        runtime.block_on(worker());
        return ExitCode::SUCCESS;
    }
    if std::env::args().any(|arg| arg == "--list") {
        println!("worker_processes_killed_mid_transaction: test");
        return ExitCode::SUCCESS;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("dynamodb-effects-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let outcome = runtime.block_on(kill_workers(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    match outcome {
        Ok(summary) => {
            println!("{summary}");
            println!("test worker_processes_killed_mid_transaction::moto ... ok");
            println!("test result: ok. 1 passed; 0 failed");
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("test worker_processes_killed_mid_transaction::moto ... FAILED: {err}");
            println!("test result: FAILED. 0 passed; 1 failed");
            ExitCode::FAILURE
        }
    }
}
