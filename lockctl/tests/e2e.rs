//! End-to-end tests: the built `lockctl` binary against SQLite (a temporary
//! file), PostgreSQL, Redis and DynamoDB, whose servers are found as the
//! conformance suite finds them (`lockstore_conformance::provision`): a URL
//! in `LOCKSTORE_TEST_POSTGRES_URL`, `LOCKSTORE_TEST_REDIS_URL` or
//! `LOCKSTORE_TEST_DYNAMODB_URL` (an emulator endpoint such as moto's),
//! else a container where a Docker engine is reachable, else the test fails
//! saying how to provide one.
//!
//! Every case runs on every backend, as its own named test
//! (`postgres::lease_loss_stops_the_child`, …). Nothing here asserts on
//! durations: waits are on conditions, with generous limits.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lockstore_conformance::provision::{Service, server_url};
use serde_json::Value;

const LOCKCTL: &str = env!("CARGO_BIN_EXE_lockctl");
/// How long any one lockctl process may take before the test gives up on
/// it: far beyond what the cases need, for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(120);

/// A store the cases run against.
struct Backend {
    url: String,
    dir: tempfile::TempDir,
}

impl Backend {
    fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite:{}", dir.path().join("locks.db").display());
        Backend { url, dir }
    }

    fn postgres() -> Backend {
        Self::server("postgres", Service::Postgres, |url| {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}table=lockctl_e2e")
        })
    }

    fn redis() -> Backend {
        Self::server("redis", Service::Redis, |url| {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}prefix=lockctl-e2e:")
        })
    }

    fn dynamodb() -> Backend {
        Self::server("dynamodb", Service::DynamoDb, |endpoint| {
            format!(
                "dynamodb://lockctl_e2e?endpoint={endpoint}&region=us-east-1\
                 &access_key_id=test&secret_access_key=test"
            )
        })
    }

    /// A server backend (found as the module docs say; panics with how to
    /// provide one when there is none), set up once per test process.
    fn server(name: &str, service: Service, to_url: fn(&str) -> String) -> Backend {
        let server = server_url(service);
        let backend = Backend {
            url: to_url(&server),
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        static SET_UP: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
        let mut done = SET_UP
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !done.contains(&backend.url) {
            let out = backend.lockctl(&["setup"]).output_within(PATIENCE);
            assert_eq!(out.code(), 0, "lockctl setup on {name}: {}", out.stderr);
            done.push(backend.url.clone());
        }
        backend
    }

    /// `lockctl ARGS` on this store (through LOCKSTORE_URL, so a child
    /// calling lockctl uses the same store).
    fn lockctl(&self, args: &[&str]) -> Lockctl {
        let mut command = Command::new(LOCKCTL);
        command
            .args(args)
            .env("LOCKSTORE_URL", &self.url)
            .env("LOCKCTL", LOCKCTL)
            .env_remove("LOCKCTL_LOG");
        Lockctl(command)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A key no other test (or earlier run on a shared server) uses.
fn unique(case: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("e2e/{case}/{}-{nanos}", std::process::id())
}

struct Lockctl(Command);

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {:?}", self.stdout))
    }
}

impl Lockctl {
    fn spawn(mut self, stdin: Stdio) -> Running {
        let mut child = self
            .0
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lockctl starts");
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());
        Running {
            child,
            stdout,
            stderr,
        }
    }

    fn output_within(self, limit: Duration) -> Output {
        self.spawn(Stdio::null()).wait_within(limit)
    }

    fn output(self) -> Output {
        self.output_within(PATIENCE)
    }
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

struct Running {
    child: Child,
    stdout: thread::JoinHandle<String>,
    stderr: thread::JoinHandle<String>,
}

impl Running {
    fn wait_within(mut self, limit: Duration) -> Output {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "lockctl did not exit within {limit:?}; stderr: {}",
                    self.stderr.join().unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.stderr.join().unwrap_or_default(),
        }
    }
}

/// Waits until `path` exists (a child's "I am ready" mark).
fn wait_for_file(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < PATIENCE,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

// ---------------------------------------------------------------- the cases

fn child_exit_code_is_passed_through(b: &Backend) {
    let key = unique("exit-code");
    let ok = b.lockctl(&["run", &key, "--", "true"]).output();
    assert_eq!(ok.code(), 0, "{}", ok.stderr);
    let failed = b
        .lockctl(&["run", &key, "--", "sh", "-c", "exit 7"])
        .output();
    assert_eq!(failed.code(), 7, "{}", failed.stderr);
    let signalled = b
        .lockctl(&["run", &key, "--", "sh", "-c", "kill -TERM $$"])
        .output();
    assert_eq!(signalled.code(), 128 + 15, "{}", signalled.stderr);
    let missing = b
        .lockctl(&["run", &key, "--", "no-such-command-lockctl-e2e"])
        .output();
    assert_eq!(missing.code(), 127, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("command not found"),
        "{}",
        missing.stderr
    );
}

fn environment_names_key_fence_and_lease(b: &Backend) {
    let key = unique("env");
    let out = b
        .lockctl(&[
            "run",
            &key,
            "--",
            "sh",
            "-c",
            r#"printf '%s\n%s\n%s\n' "$LOCKSTORE_KEY" "$LOCKSTORE_FENCE" "$LOCKSTORE_LEASE_ID""#,
        ])
        .output();
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{:?}", out.stdout);
    assert_eq!(lines[0], key);
    assert!(
        lines[1].parse::<u64>().is_ok_and(|f| f > 0),
        "fence {:?}",
        lines[1]
    );
    assert!(
        lines[2].len() == 32 && lines[2].bytes().all(|c| c.is_ascii_hexdigit()),
        "lease id {:?}",
        lines[2]
    );
}

fn held_key_is_not_acquired_without_waiting(b: &Backend) {
    let key = unique("held");
    // Another process holds the key: a script's `acquire`.
    let acquired = b
        .lockctl(&["--json", "acquire", &key, "--ttl", "5m"])
        .output();
    assert_eq!(acquired.code(), 0, "{}", acquired.stderr);
    let lease = acquired.json();
    assert_eq!(lease["acquired"], true);
    let lease_id = lease["lease_id"].as_str().expect("lease_id").to_owned();
    assert!(lease["fence"].as_u64().is_some(), "{lease}");

    let refused = b
        .lockctl(&["run", &key, "--no-wait", "--", "true"])
        .output();
    assert_eq!(refused.code(), 200, "{}", refused.stderr);
    assert!(refused.stderr.contains("held by"), "{}", refused.stderr);
    let overridden = b
        .lockctl(&[
            "run",
            &key,
            "-n",
            "--conflict-exit-code",
            "75",
            "--",
            "true",
        ])
        .output();
    assert_eq!(overridden.code(), 75, "{}", overridden.stderr);
    let waited = b
        .lockctl(&["run", &key, "--wait", "300ms", "--", "true"])
        .output();
    assert_eq!(waited.code(), 200, "{}", waited.stderr);

    let status = b.lockctl(&["--json", "status", &key]).output();
    assert_eq!(status.code(), 0, "{}", status.stderr);
    assert_eq!(status.json()["lock"]["fence"], lease["fence"]);

    let renewed = b
        .lockctl(&["renew", &key, &lease_id, "--ttl", "1m"])
        .output();
    assert_eq!(renewed.code(), 0, "{}", renewed.stderr);
    let released = b.lockctl(&["--json", "release", &key, &lease_id]).output();
    assert_eq!(released.code(), 0, "{}", released.stderr);
    assert_eq!(released.json()["released"], true);
    let again = b.lockctl(&["release", &key, &lease_id]).output();
    assert_eq!(again.code(), 201, "released twice: {}", again.stderr);
    let renew_gone = b.lockctl(&["renew", &key, &lease_id]).output();
    assert_eq!(renew_gone.code(), 201, "{}", renew_gone.stderr);

    let free = b
        .lockctl(&["run", &key, "--no-wait", "--", "true"])
        .output();
    assert_eq!(free.code(), 0, "{}", free.stderr);
}

fn once_skips_a_key_that_succeeded(b: &Backend) {
    let key = unique("once");
    let first = b
        .lockctl(&["run", "--once", &key, "--", "sh", "-c", "echo ran"])
        .output();
    assert_eq!(first.code(), 0, "{}", first.stderr);
    assert_eq!(first.stdout.trim(), "ran");
    let second = b
        .lockctl(&["run", "--once", &key, "--", "sh", "-c", "echo ran"])
        .output();
    assert_eq!(second.code(), 202, "{}", second.stderr);
    assert_eq!(second.stdout, "", "the command ran again");
    assert!(
        second.stderr.contains("already succeeded"),
        "{}",
        second.stderr
    );
    let quiet = b
        .lockctl(&["run", "--once", "--skip-exit-code", "0", &key, "--", "true"])
        .output();
    assert_eq!(quiet.code(), 0, "{}", quiet.stderr);

    let status = b.lockctl(&["--json", "status", &key]).output();
    let run = &status.json()["run"];
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["exit_code"], 0, "{run}");
    let listed = b
        .lockctl(&["--json", "list", "--status", "succeeded"])
        .output();
    assert_eq!(listed.code(), 0, "{}", listed.stderr);
    assert!(
        listed
            .json()
            .as_array()
            .is_some_and(|records| records.iter().any(|r| r["key"] == key.as_str())),
        "{}",
        listed.stdout
    );
}

fn once_records_failure_with_code_and_stderr(b: &Backend) {
    let key = unique("fail");
    let script = "echo 'disk full on /data' >&2; exit 4";
    let failed = b
        .lockctl(&[
            "run",
            "--once",
            "--max-attempts",
            "2",
            &key,
            "--",
            "sh",
            "-c",
            script,
        ])
        .output();
    assert_eq!(failed.code(), 4, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("disk full on /data"),
        "stderr is teed through: {}",
        failed.stderr
    );
    let status = b.lockctl(&["--json", "status", &key]).output();
    let run = status.json()["run"].clone();
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["attempts"], 1, "{run}");
    let message = run["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("exit code 4"), "{message}");
    assert!(message.contains("disk full on /data"), "{message}");

    // The last attempt makes the key ignored; then it is skipped.
    let last = b
        .lockctl(&[
            "run",
            "--once",
            "--max-attempts",
            "2",
            &key,
            "--",
            "sh",
            "-c",
            script,
        ])
        .output();
    assert_eq!(last.code(), 4, "{}", last.stderr);
    let skipped = b
        .lockctl(&["run", "--once", "--max-attempts", "2", &key, "--", "true"])
        .output();
    assert_eq!(skipped.code(), 203, "{}", skipped.stderr);
    assert!(
        skipped.stderr.contains("lockctl retry"),
        "{}",
        skipped.stderr
    );

    // An operator's retry lets it run again.
    let retried = b.lockctl(&["--json", "retry", &key]).output();
    assert_eq!(retried.code(), 0, "{}", retried.stderr);
    assert_eq!(retried.json()["requeued"], true);
    let ran = b
        .lockctl(&["run", "--once", "--max-attempts", "2", &key, "--", "true"])
        .output();
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
}

fn lease_loss_stops_the_child(b: &Backend) {
    let key = unique("lost");
    let marker = b.file("terminated");
    // The child loses the lease the way an operator would — a forced
    // release with its lease id — and then waits to be stopped.
    let script = format!(
        r#"trap 'echo term > "{m}"; kill $! 2>/dev/null; exit 0' TERM
"$LOCKCTL" release "$LOCKSTORE_KEY" "$LOCKSTORE_LEASE_ID" || exit 99
sleep 100 & wait"#,
        m = marker.display()
    );
    let out = b
        .lockctl(&[
            "run",
            &key,
            "--ttl",
            "3s",
            "--kill-grace",
            "30s",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .output();
    assert_eq!(out.code(), 201, "{}", out.stderr);
    assert!(out.stderr.contains("lost"), "{}", out.stderr);
    assert_eq!(read(&marker).trim(), "term", "the child got SIGTERM");
}

fn lease_loss_kills_a_child_that_ignores_sigterm(b: &Backend) {
    let key = unique("kill");
    let script = r#"trap '' TERM
"$LOCKCTL" release "$LOCKSTORE_KEY" "$LOCKSTORE_LEASE_ID" || exit 99
while :; do sleep 1; done"#;
    let out = b
        .lockctl(&[
            "run",
            &key,
            "--ttl",
            "3s",
            "--kill-grace",
            "500ms",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output();
    assert_eq!(out.code(), 201, "{}", out.stderr);
    assert!(out.stderr.contains("SIGKILL"), "{}", out.stderr);
}

fn stdin_reaches_the_child(b: &Backend) {
    let key = unique("stdin");
    let mut running = b
        .lockctl(&[
            "run",
            &key,
            "--",
            "sh",
            "-c",
            "read line; echo \"got:$line\"",
        ])
        .spawn(Stdio::piped());
    running
        .child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello lockctl\n")
        .expect("write stdin");
    let out = running.wait_within(PATIENCE);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "got:hello lockctl");
}

fn sigterm_is_forwarded_to_the_child(b: &Backend) {
    let key = unique("sigterm");
    let ready = b.file("ready");
    let got = b.file("got");
    let script = format!(
        r#"trap 'echo term > "{g}"; kill $! 2>/dev/null; exit 9' TERM
sleep 100 & echo up > "{r}"; wait"#,
        g = got.display(),
        r = ready.display()
    );
    let running = b
        .lockctl(&["run", &key, "--", "sh", "-c", &script])
        .spawn(Stdio::null());
    wait_for_file(&ready);
    let pid = running.child.id().to_string();
    // Only lockctl is signalled; the child hears it because lockctl forwards.
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let out = running.wait_within(PATIENCE);
    assert_eq!(out.code(), 9, "the child's own exit code: {}", out.stderr);
    assert_eq!(read(&got).trim(), "term");
    // The lock was released on the way out.
    let free = b
        .lockctl(&["run", &key, "--no-wait", "--", "true"])
        .output();
    assert_eq!(free.code(), 0, "{}", free.stderr);
}

macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[test]
                fn $case() {
                    let backend = super::Backend::$backend();
                    super::$case(&backend);
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($case:ident),* $(,)?) => {
        suite!(sqlite: $($case),*);
        suite!(postgres: $($case),*);
        suite!(redis: $($case),*);
        suite!(dynamodb: $($case),*);
    };
}

every_backend!(
    child_exit_code_is_passed_through,
    environment_names_key_fence_and_lease,
    held_key_is_not_acquired_without_waiting,
    once_skips_a_key_that_succeeded,
    once_records_failure_with_code_and_stderr,
    lease_loss_stops_the_child,
    lease_loss_kills_a_child_that_ignores_sigterm,
    stdin_reaches_the_child,
    sigterm_is_forwarded_to_the_child,
);

// ------------------------------------------------- backend-independent cases

fn bare(args: &[&str]) -> Output {
    let mut command = Command::new(LOCKCTL);
    command.args(args).env_remove("LOCKSTORE_URL");
    Lockctl(command).output()
}

#[test]
fn bad_store_urls_are_rejected_with_a_fix() {
    for (url, says) in [
        ("mysql://db/app", "unknown scheme"),
        ("postgress://db/app", "did you mean postgres://"),
        ("/var/lib/locks.db", "sqlite:PATH"),
        ("dynamodb://", "dynamodb://TABLE"),
        ("sqlite:x.db?tabel=t", "unknown parameter"),
    ] {
        let out = bare(&["--store", url, "status", "k"]);
        assert_eq!(out.code(), 204, "{url}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{url}: {}", out.stderr);
    }
    let overridden = bare(&[
        "--store",
        "mysql://x",
        "--error-exit-code",
        "70",
        "status",
        "k",
    ]);
    assert_eq!(overridden.code(), 70, "{}", overridden.stderr);
}

#[test]
fn bad_durations_and_arguments_are_rejected_with_a_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("sqlite:{}", dir.path().join("x.db").display());
    for args in [
        vec!["run", "k", "--wait", "5parsecs", "--", "true"],
        vec!["run", "k", "--ttl=-3s", "--", "true"],
        vec!["purge", "--older-than", "soon"],
    ] {
        let mut full = vec!["--store", store.as_str()];
        full.extend(args.iter().copied());
        let out = bare(&full);
        assert_eq!(out.code(), 204, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("e.g. 30s"), "{args:?}: {}", out.stderr);
    }
    let no_command = bare(&["--store", &store, "run", "k"]);
    assert_eq!(no_command.code(), 204, "{}", no_command.stderr);
    let bad_lease = bare(&["--store", &store, "release", "k", "not-a-lease"]);
    assert_eq!(bad_lease.code(), 204, "{}", bad_lease.stderr);
    assert!(
        bad_lease.stderr.contains("32 hexadecimal"),
        "{}",
        bad_lease.stderr
    );
}

#[test]
fn default_store_is_an_sqlite_file_in_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let mut command = Command::new(LOCKCTL);
        command
            .args(args)
            .env_remove("LOCKSTORE_URL")
            .env("XDG_DATA_HOME", dir.path());
        Lockctl(command).output()
    };
    let first = run(&["run", "--once", "nightly", "--", "true"]);
    assert_eq!(first.code(), 0, "{}", first.stderr);
    assert!(dir.path().join("lockstore/lockstore.db").exists());
    let second = run(&["run", "--once", "nightly", "--", "true"]);
    assert_eq!(second.code(), 202, "{}", second.stderr);
}

#[test]
fn completions_and_man_page_are_generated() {
    let bash = bare(&["completions", "bash"]);
    assert_eq!(bash.code(), 0, "{}", bash.stderr);
    assert!(bash.stdout.contains("lockctl"));
    let man = bare(&["man"]);
    assert_eq!(man.code(), 0, "{}", man.stderr);
    assert!(
        man.stdout.contains(".TH lockctl"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
    let help = bare(&["run", "--help"]);
    assert_eq!(help.code(), 0);
    assert!(help.stdout.contains("201"), "exit codes in --help");
}
