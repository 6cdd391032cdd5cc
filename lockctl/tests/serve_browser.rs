//! `lockctl serve` in a real headless browser: Debian's `chromium`, driven
//! through `chromedriver` (WebDriver) by `fantoccini`.
//!
//! Each test writes records with the library into an SQLite file of its own,
//! starts `lockctl serve` on it (port 0) and its own `chromedriver`, and looks
//! at the pages as an operator would: the records it made are listed, retry
//! works by clicking through the confirmation, and a key and an error text
//! holding markup are shown as text, never run. The binaries come from
//! `scripts/browser.sh` (`apt-get install chromium chromium-driver`);
//! `LOCKSTORE_TEST_CHROMEDRIVER` and `LOCKSTORE_TEST_CHROMIUM` name others.
//! Nothing is skipped: without them the tests fail, saying so.
//!
//! `scripts/screenshot.sh` runs the ignored `screenshot` test, which writes
//! `target/lockctl-serve.png`.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use lockstore::Store;
use lockstore::ledger::{RunFailure, RunOnce, RunOptions, RunStatus};
use serde_json::json;

/// Turns a hang into a failure; never a speed requirement.
const HANG: Duration = Duration::from_secs(60);

/// A markup-bearing key: if the page rendered it as HTML, the script would
/// rename the page.
const SCRIPT_KEY: &str = "evil/<script>document.title='pwned'</script>";
const SCRIPT_ERROR: &str = "<img src=x onerror=\"document.title='pwned by error'\"> failed";

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The test's SQLite file and an open store on it.
async fn store(dir: &Path) -> (String, Store) {
    let url = format!("sqlite:{}", dir.join("serve.db").display());
    let store = lockstore::open(&url).await.expect("open the SQLite store");
    store.ensure_schema().await.expect("create the tables");
    (url, store)
}

/// Records of every kind the page shows: succeeded, failed with attempts
/// left, ignored, pending, and a failed one whose key and error hold markup.
async fn make_records(store: &Store) {
    let ledger = store.ledger_client();
    let ttl = Duration::from_secs(30);
    let ok = ledger
        .run_once("etl/2026-12-07", RunOptions::new(ttl), |_| async {
            Ok::<_, RunFailure>(json!({"rows": 42}))
        })
        .await
        .unwrap();
    assert!(matches!(ok, RunOnce::Ran { .. }));
    for (key, attempts, error) in [
        ("deploy/prod", 3, "connection refused by db-1"),
        ("report/weekly", 1, "bad input: no such customer"),
        (SCRIPT_KEY, 3, SCRIPT_ERROR),
    ] {
        let failed = ledger
            .run_once(
                key,
                RunOptions::new(ttl).max_attempts(attempts),
                |_| async move { Err::<(), _>(RunFailure::retryable(error)) },
            )
            .await
            .unwrap();
        assert!(matches!(failed, RunOnce::Failed { .. }), "{failed:?}");
    }
    ledger.enqueue("queued/job-7", None).await.unwrap();
}

/// `lockctl serve` on `url`; returns the process and its base URL.
fn serve(url: &str, extra: &[&str]) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockctl"))
        .args([
            "--store",
            url,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--refresh",
            "0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start lockctl serve");
    let stdout = child.stdout.take().unwrap();
    let child = Killed(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read lockctl serve's address");
    let base = line
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("lockctl serve printed no address: {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");
    (child, base)
}

fn binary(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: install it with scripts/browser.sh (Debian's chromium and \
         chromium-driver), or name it with {var}",
        path.display()
    );
    path
}

/// A headless chromium session through a chromedriver of the test's own.
async fn browser() -> (Killed, Client) {
    let driver = binary("LOCKSTORE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
    let chromium = binary("LOCKSTORE_TEST_CHROMIUM", "/usr/bin/chromium");
    let port = free_port();
    let child = Killed(
        Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < HANG,
            "chromedriver did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900"],
        }
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a chromium session through chromedriver");
    (child, client)
}

/// The element `css` matches once the page that has it is loaded: a
/// click's navigation may still be under way when the click returns.
async fn arrived(client: &Client, css: &str) -> fantoccini::elements::Element {
    match client
        .wait()
        .at_most(HANG)
        .for_element(Locator::Css(css))
        .await
    {
        Ok(element) => element,
        Err(err) => panic!(
            "{css}: {err}: {}",
            client.source().await.unwrap_or_default()
        ),
    }
}

/// The text of every element `css` matches.
async fn texts(client: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for element in client.find_all(Locator::Css(css)).await.unwrap() {
        out.push(element.text().await.unwrap());
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn pages_render_the_records_a_test_created() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = store(dir.path()).await;
    make_records(&store).await;
    let (_server, base) = serve(&url, &[]);
    let (_driver, client) = browser().await;

    client.goto(&format!("{base}/runs")).await.unwrap();
    let keys = texts(&client, "tr.record td.key").await;
    for key in [
        "etl/2026-12-07",
        "deploy/prod",
        "report/weekly",
        "queued/job-7",
        SCRIPT_KEY,
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
    }
    let statuses = texts(&client, "tr.record td.status").await;
    for status in ["succeeded", "failed", "ignored", "pending"] {
        assert!(
            statuses.iter().any(|s| s == status),
            "{status} missing from {statuses:?}"
        );
    }
    let errors = texts(&client, "tr.record td.error").await;
    assert!(
        errors.iter().any(|e| e == "connection refused by db-1"),
        "{errors:?}"
    );

    // The failed tab lists only failed records.
    client
        .goto(&format!("{base}/runs?status=failed"))
        .await
        .unwrap();
    let mut failed = texts(&client, "tr.record td.key").await;
    failed.sort();
    assert_eq!(failed, ["deploy/prod", SCRIPT_KEY]);

    // A record's detail, reached by its link: attempts, fence, errors.
    client.goto(&format!("{base}/runs")).await.unwrap();
    client
        .find(Locator::LinkText("deploy/prod"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let detail = arrived(&client, "dl.detail").await.text().await.unwrap();
    assert!(detail.contains("1 of 3"), "{detail}");
    assert!(detail.contains("failed"), "{detail}");
    let record = store
        .ledger_client()
        .get("deploy/prod")
        .await
        .unwrap()
        .unwrap();
    let fence = record.fence.unwrap().get().to_string();
    assert!(detail.contains(&fence), "fence {fence} missing: {detail}");
    let history = texts(&client, "table.errors td").await;
    assert!(
        history.iter().any(|t| t == "connection refused by db-1"),
        "{history:?}"
    );

    // /metrics counts the same records.
    client.goto(&format!("{base}/metrics")).await.unwrap();
    let metrics = client
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("lockstore_ledger_records{backend=\"sqlite\",status=\"failed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lockstore_ledger_records{backend=\"sqlite\",status=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lockstore_ledger_stuck_runs{backend=\"sqlite\"} 0"),
        "{metrics}"
    );
    client.close().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn retry_works_from_the_page_after_its_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = store(dir.path()).await;
    make_records(&store).await;
    let (_server, base) = serve(&url, &[]);
    let (_driver, client) = browser().await;

    client
        .goto(&format!("{base}/run?key=report%2Fweekly"))
        .await
        .unwrap();
    client
        .find(Locator::LinkText("Retry…"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The confirmation page changes nothing by itself.
    arrived(&client, "button.confirm").await;
    let heading = client
        .find(Locator::Css("h2"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(heading, "Retry report/weekly?");
    let before = store
        .ledger_client()
        .get("report/weekly")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.status, RunStatus::Ignored);

    client
        .find(Locator::Css("button.confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let outcome = arrived(&client, "p.outcome").await.text().await.unwrap();
    assert_eq!(
        outcome,
        "report/weekly is pending again; the next `run --once` runs it"
    );
    let after = store
        .ledger_client()
        .get("report/weekly")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after.status,
        RunStatus::Pending,
        "the retry did not reach the store"
    );

    // Purge, through its two steps: nothing finished is old enough at 1h.
    client
        .goto(&format!("{base}/purge?older_than=1h"))
        .await
        .unwrap();
    client
        .find(Locator::Css("button.confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let purged = arrived(&client, "p.outcome").await.text().await.unwrap();
    assert!(
        purged.starts_with("purged 0 finished record(s)"),
        "{purged}"
    );
    client.close().await.unwrap();
}

/// The lookup on /locks, typed into its form: a held lock shows its holder
/// and fence; an election's name its leader, value and term; a semaphore's
/// key its permits; a free key says so. A value holding markup is text.
#[tokio::test(flavor = "current_thread")]
async fn lookups_show_a_locks_holder_a_leader_and_permits() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = store(dir.path()).await;
    let ttl = Duration::from_secs(60);
    let lock = store
        .lock_client()
        .with_owner(lockstore::OwnerLabel::new("batch-host-1").unwrap())
        .acquire("deploy/prod", lockstore::AcquireOptions::new(ttl))
        .await
        .unwrap();
    let leadership = store
        .lock_client()
        .election("scheduler", ttl)
        .unwrap()
        .campaign("<b>10.0.0.7:8080</b>")
        .await
        .unwrap();
    let semaphore = store.semaphore_client().unwrap();
    let limit = lockstore::semaphore::PermitLimit::new(3).unwrap();
    let mut permits = Vec::new();
    for _ in 0..2 {
        let permit = semaphore
            .acquire("lanes/export", limit, lockstore::AcquireOptions::new(ttl))
            .await
            .unwrap();
        permits.push(permit);
    }
    let (_server, base) = serve(&url, &[]);
    let (_driver, client) = browser().await;

    let look_up = |key: &'static str| {
        let client = client.clone();
        let base = base.clone();
        async move {
            client.goto(&format!("{base}/locks")).await.unwrap();
            let field = client.find(Locator::Css("input[name=key]")).await.unwrap();
            field.send_keys(key).await.unwrap();
            client
                .find(Locator::Css("button[type=submit]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            arrived(&client, "h3, p.free").await;
        }
    };

    look_up("deploy/prod").await;
    assert_eq!(texts(&client, "tr.lock td.holder").await, ["batch-host-1"]);
    let row = texts(&client, "tr.lock td").await;
    assert_eq!(row[2], lock.fence().get().to_string(), "{row:?}");

    look_up("scheduler").await;
    assert_eq!(
        texts(&client, "tr.leader td.value").await,
        ["<b>10.0.0.7:8080</b>"]
    );
    assert_eq!(
        texts(&client, "tr.leader td.term").await,
        [leadership.term().get().to_string()]
    );
    assert_eq!(
        texts(&client, "tr.leader td.candidate").await,
        [leadership.candidate()]
    );
    assert!(client.find_all(Locator::Css("b")).await.unwrap().is_empty());

    look_up("lanes/export").await;
    assert_eq!(
        texts(&client, "p.permits").await,
        ["2 of 3 permits taken, 1 free."]
    );
    let mut fences = texts(&client, "tr.permit td.fence").await;
    fences.sort();
    let mut expected: Vec<String> = permits
        .iter()
        .map(|p| p.fence().get().to_string())
        .collect();
    expected.sort();
    assert_eq!(fences, expected);

    look_up("nobody/holds").await;
    assert_eq!(texts(&client, "p.free").await, ["nobody/holds is free."]);
    assert!(texts(&client, "h3").await.is_empty());
    client.close().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn keys_and_errors_holding_markup_are_shown_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = store(dir.path()).await;
    make_records(&store).await;
    let (_server, base) = serve(&url, &[]);
    let (_driver, client) = browser().await;

    client.goto(&format!("{base}/runs")).await.unwrap();
    assert_eq!(
        client.title().await.unwrap(),
        "Runs — lockctl",
        "a key's script ran"
    );
    let keys = texts(&client, "tr.record td.key").await;
    assert!(keys.iter().any(|k| k == SCRIPT_KEY), "{keys:?}");
    let errors = texts(&client, "tr.record td.error").await;
    assert!(errors.iter().any(|e| e == SCRIPT_ERROR), "{errors:?}");
    // No element came from the data: the only scripts and images are none.
    assert!(
        client
            .find_all(Locator::Css("script, img"))
            .await
            .unwrap()
            .is_empty()
    );

    client
        .find(Locator::LinkText(SCRIPT_KEY))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    arrived(&client, "dl.detail").await;
    assert_eq!(
        client.title().await.unwrap(),
        "Run — lockctl",
        "a key's script ran"
    );
    let heading = client
        .find(Locator::Css("h2"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(heading, format!("Run {SCRIPT_KEY}"));
    assert!(
        client
            .find_all(Locator::Css("script, img"))
            .await
            .unwrap()
            .is_empty()
    );
    client.close().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn read_only_has_no_actions() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = store(dir.path()).await;
    make_records(&store).await;
    let (_server, base) = serve(&url, &["--read-only"]);
    let (_driver, client) = browser().await;

    client
        .goto(&format!("{base}/run?key=report%2Fweekly"))
        .await
        .unwrap();
    let header = client
        .find(Locator::Css("header"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(header.contains("read-only"), "{header}");
    assert!(!header.contains("Purge"), "{header}");
    assert!(
        client
            .find_all(Locator::LinkText("Retry…"))
            .await
            .unwrap()
            .is_empty(),
        "a read-only page offers retry"
    );
    // The action's confirmation is not served either.
    client
        .goto(&format!("{base}/retry?key=report%2Fweekly"))
        .await
        .unwrap();
    assert!(
        client
            .find_all(Locator::Css("button.confirm"))
            .await
            .unwrap()
            .is_empty()
    );
    let record = store
        .ledger_client()
        .get("report/weekly")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, RunStatus::Ignored);
    client.close().await.unwrap();
}

/// Not a check: writes `target/lockctl-serve.png` for a developer to look
/// at (`scripts/screenshot.sh`).
#[tokio::test(flavor = "current_thread")]
#[ignore = "writes a screenshot; run by scripts/screenshot.sh"]
async fn screenshot() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = store(dir.path()).await;
    make_records(&store).await;
    let (_server, base) = serve(&url, &[]);
    let (_driver, client) = browser().await;
    client.goto(&format!("{base}/runs")).await.unwrap();
    let png = client.screenshot().await.unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lockctl-serve.png");
    std::fs::write(&path, png).unwrap();
    println!("wrote {}", path.display());
    client.close().await.unwrap();
}
