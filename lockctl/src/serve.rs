//! `lockctl serve`: a web page for operators over any store URL.
//!
//! Run-once records by status, page by page, with their attempts, holder,
//! fence, last error and times; a record's detail; a lock's holder and time
//! left; retry and purge behind a confirmation page (absent with
//! `--read-only`); and `/metrics` in the Prometheus text format.
//!
//! The HTML is rendered on the server by `maud`, which escapes every value
//! it is given: keys, owners and error texts are user data, and none of it
//! reaches the page as markup. No JavaScript: list pages reload with a
//! `<meta http-equiv="refresh">`, actions are plain forms. A POST from
//! another site (a cross-site request from the operator's browser) is
//! refused by its `Origin` and `Sec-Fetch-Site` headers.
//!
//! Listing, retry and purge are the ledger calls and texts `lockctl list`,
//! `retry` and `purge` use (`admin::status_filter`, `admin::retry_text`,
//! `admin::purge_text`).

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use clap::ValueEnum;
use lockstore::election::Leader;
use lockstore::ledger::{PageCursor, RunQuery, RunRecord, RunStatus, StatusFilter};
use lockstore::{LockError, LockKey, Store};
use maud::{DOCTYPE, Markup, html};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use crate::Failure;
use crate::admin::{purge_text, retry_text, status_filter};
use crate::cli::{ServeArgs, StatusArg};
use crate::describe_store_error;
use crate::duration::{self, human};
use crate::exit::Codes;
use crate::output::ago;

/// What every handler shares.
struct App {
    store: Store,
    read_only: bool,
    refresh: Duration,
    page_size: u32,
}

type Shared = Arc<App>;

/// `lockctl serve`: listens until SIGINT or SIGTERM.
pub async fn serve(store: Store, args: ServeArgs, codes: &Codes) -> Result<u8, Failure> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|err| Failure::error(codes, format!("cannot listen on {}: {err}", args.listen)))?;
    let addr = listener.local_addr().map_err(|err| {
        Failure::error(codes, format!("cannot read the listening address: {err}"))
    })?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "lockctl serve: warning: listening on {addr}, not loopback: the page has no \
             authentication{}; put it behind a reverse proxy that authenticates",
            if args.read_only {
                ""
            } else {
                " and can retry and purge runs"
            }
        );
    }
    {
        // The address first, on a line of its own: scripts and tests read it.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "http://{addr}/ ({} store{})",
            store.backend_name(),
            if args.read_only { ", read-only" } else { "" }
        );
        let _ = out.flush();
    }
    let app = Arc::new(App {
        store,
        read_only: args.read_only,
        refresh: args.refresh,
        page_size: args.page_size,
    });
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown())
        .await
        .map_err(|err| Failure::error(codes, format!("the server stopped: {err}")))?;
    Ok(0)
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async {
            match term.as_mut() {
                Some(term) => { term.recv().await; }
                None => std::future::pending().await,
            }
        } => {}
    }
}

/// The routes; the actions only without `--read-only`.
fn router(app: Shared) -> Router {
    let mut router = Router::new()
        .route("/", get(|| async { Redirect::to("/runs") }))
        .route("/runs", get(runs))
        .route("/run", get(run))
        .route("/locks", get(locks))
        .route("/metrics", get(metrics));
    if !app.read_only {
        router = router
            .route("/retry", get(retry_confirm).post(retry))
            .route("/purge", get(purge_confirm).post(purge));
    }
    router.with_state(app)
}

/// A page that says what went wrong, with the status code that fits.
struct Problem {
    status: StatusCode,
    message: String,
}

impl Problem {
    fn input(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn store(err: &LockError) -> Self {
        Self {
            status: if err.is_retryable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            },
            message: format!("the store answered: {}", describe_store_error(err)),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = html! {
            h1 { "Error" }
            p.problem { (self.message) }
            p { a href="/runs" { "Back to the runs" } }
        };
        (self.status, Html(layout("Error", None, body).into_string())).into_response()
    }
}

type Page = Result<Html<String>, Problem>;

#[derive(Debug, Deserialize)]
struct RunsQuery {
    status: Option<String>,
    after: Option<String>,
}

/// `/runs?status=S&after=CURSOR`: one page of records, newest update first.
async fn runs(State(app): State<Shared>, Query(query): Query<RunsQuery>) -> Page {
    let tab = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => StatusArg::All,
        Some(text) => StatusArg::from_str(text, true).map_err(|_| {
            Problem::input(format!(
                "unknown status {text:?}: use one of {}",
                TABS.iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
    };
    let tab_name = TABS
        .iter()
        .find(|(_, arg)| *arg == tab)
        .map_or("all", |(name, _)| *name);
    let mut run_query = RunQuery::new(status_filter(tab))
        .newest_first()
        .limit(app.page_size);
    if let Some(after) = query.after.as_deref().filter(|s| !s.is_empty()) {
        let cursor: PageCursor = after
            .parse()
            .map_err(|err: LockError| Problem::input(err.to_string()))?;
        run_query = run_query.after(cursor);
    }
    let page = app
        .store
        .ledger_client()
        .query(&run_query)
        .await
        .map_err(|err| Problem::store(&err))?;
    let body = html! {
        nav.tabs {
            @for (name, _) in TABS {
                @if *name == tab_name {
                    strong { (name) }
                } @else {
                    a href={ "/runs?status=" (name) } { (name) }
                }
                " "
            }
        }
        @if page.records.is_empty() {
            p.empty { "No " (if tab_name == "all" { "" } else { tab_name }) " records"
                (if query.after.is_some() { " on this page" } else { "" }) "." }
        } @else {
            table.records {
                thead { tr {
                    th { "Key" } th { "Status" } th { "Attempts" } th { "Holder" }
                    th { "Fence" } th { "Last error" } th { "Updated" } th { "Finished" }
                } }
                tbody {
                    @for record in &page.records {
                        tr.record {
                            td.key { a href={ "/run?key=" (encode(record.key.as_str())) } { (record.key.as_str()) } }
                            td.status { (status_of(record)) }
                            td { (record.attempts) "/" (record.max_attempts) }
                            td.holder { (holder_of(record)) }
                            td { (record.fence.map(|f| f.get().to_string()).unwrap_or_default()) }
                            td.error { (record.last_error().map(|e| first_line(&e.message)).unwrap_or_default()) }
                            td { (ago(record.updated_at)) }
                            td { (record.finished_at.map(ago).unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        p.paging {
            @if query.after.is_some() {
                a href={ "/runs?status=" (tab_name) } { "First page" } " "
            }
            @if let Some(next) = &page.next {
                a.next href={ "/runs?status=" (tab_name) "&after=" (encode(&next.to_string())) } { "Next page" }
            }
        }
    };
    Ok(Html(
        layout("Runs", Some(app.refresh), with_nav(&app, body)).into_string(),
    ))
}

/// The status tabs, as `--status` names them.
const TABS: &[(&str, StatusArg)] = &[
    ("all", StatusArg::All),
    ("unfinished", StatusArg::Unfinished),
    ("stuck", StatusArg::Stuck),
    ("running", StatusArg::Running),
    ("pending", StatusArg::Pending),
    ("failed", StatusArg::Failed),
    ("ignored", StatusArg::Ignored),
    ("succeeded", StatusArg::Succeeded),
];

#[derive(Debug, Deserialize)]
struct KeyQuery {
    key: String,
}

fn parse_key(text: &str) -> Result<LockKey, Problem> {
    LockKey::new(text).map_err(|err| Problem::input(err.to_string()))
}

/// `/run?key=K`: one record, with its whole error history.
async fn run(State(app): State<Shared>, Query(query): Query<KeyQuery>) -> Page {
    let key = parse_key(&query.key)?;
    let record = app
        .store
        .ledger_client()
        .get(&key)
        .await
        .map_err(|err| Problem::store(&err))?;
    let body = match &record {
        None => {
            html! { p.empty { "No record for " code.key { (key.as_str()) } " (never run, or purged)." } }
        }
        Some(record) => html! {
            h2 { "Run " code.key { (record.key.as_str()) } }
            dl.detail {
                dt { "Status" } dd.status { (status_of(record)) }
                dt { "Attempts" } dd { (record.attempts) " of " (record.max_attempts) }
                dt { "Holder" } dd.holder { (holder_of(record)) }
                dt { "Fence" } dd { (record.fence.map(|f| f.get().to_string()).unwrap_or_else(|| "none yet".into())) }
                dt { "Created" } dd { (ago(record.created_at)) }
                dt { "Updated" } dd { (ago(record.updated_at)) }
                dt { "Finished" } dd { (record.finished_at.map(ago).unwrap_or_else(|| "not yet".into())) }
                @if let Some(hash) = &record.request_hash {
                    dt { "Request hash" } dd { code { (hash.as_str()) } }
                }
                @if let Some(result) = &record.result {
                    dt { "Result" } dd { pre.result { (String::from_utf8_lossy(result)) } }
                }
            }
            @if !record.errors.is_empty() {
                h3 { "Errors" }
                table.errors {
                    thead { tr { th { "Attempt" } th { "Retryable" } th { "Message" } } }
                    tbody {
                        @for error in &record.errors {
                            tr { td { (error.attempt) } td { (if error.retryable { "yes" } else { "no" }) } td { pre { (error.message) } } }
                        }
                    }
                }
            }
            @if !app.read_only && can_retry(record) {
                p { a.action href={ "/retry?key=" (encode(record.key.as_str())) } { "Retry…" } }
            }
        },
    };
    Ok(Html(
        layout("Run", None, with_nav(&app, body)).into_string(),
    ))
}

fn can_retry(record: &RunRecord) -> bool {
    matches!(record.status, RunStatus::Failed | RunStatus::Ignored) || record.is_stuck()
}

/// `GET /retry?key=K`: what retry would do, and the button that does it.
async fn retry_confirm(State(app): State<Shared>, Query(query): Query<KeyQuery>) -> Page {
    let key = parse_key(&query.key)?;
    let body = html! {
        h2 { "Retry " code.key { (key.as_str()) } "?" }
        p { "The record goes back to pending (a failed, ignored or stuck run only), and the next "
            code { "run --once" } " of this key runs it again." }
        form method="post" action="/retry" {
            input type="hidden" name="key" value=(key.as_str());
            button.confirm type="submit" { "Yes, retry" }
            " "
            a href={ "/run?key=" (encode(key.as_str())) } { "Cancel" }
        }
    };
    Ok(Html(
        layout("Retry", None, with_nav(&app, body)).into_string(),
    ))
}

/// `POST /retry` (key): the operator confirmed.
async fn retry(State(app): State<Shared>, headers: HeaderMap, Form(form): Form<KeyQuery>) -> Page {
    same_site(&headers)?;
    let key = parse_key(&form.key)?;
    let outcome = app
        .store
        .ledger_client()
        .retry(&key)
        .await
        .map_err(|err| Problem::store(&err))?;
    let body = html! {
        p.outcome { (retry_text(&key, outcome)) }
        p { a href={ "/run?key=" (encode(key.as_str())) } { "Back to the record" } }
    };
    Ok(Html(
        layout("Retried", None, with_nav(&app, body)).into_string(),
    ))
}

#[derive(Debug, Deserialize)]
struct PurgeQuery {
    older_than: Option<String>,
}

fn parse_age(text: &str) -> Result<Duration, Problem> {
    duration::parse(text).map_err(Problem::input)
}

/// `GET /purge`: the age to purge past, then its confirmation.
async fn purge_confirm(State(app): State<Shared>, Query(query): Query<PurgeQuery>) -> Page {
    let body = match query.older_than.as_deref().filter(|s| !s.trim().is_empty()) {
        None => html! {
            h2 { "Purge finished records" }
            form method="get" action="/purge" {
                label { "Delete succeeded and ignored records not updated for "
                    input type="text" name="older_than" value="30d" size="8"; }
                " "
                button type="submit" { "Review…" }
            }
        },
        Some(text) => {
            let age = parse_age(text)?;
            html! {
                h2 { "Purge finished records not updated for " (human(age)) "?" }
                p { "Succeeded and ignored records last updated more than " (human(age))
                    " ago are deleted; running, pending and failed ones are kept. This cannot be undone." }
                form method="post" action="/purge" {
                    input type="hidden" name="older_than" value=(text);
                    button.confirm type="submit" { "Yes, purge" }
                    " "
                    a href="/purge" { "Cancel" }
                }
            }
        }
    };
    Ok(Html(
        layout("Purge", None, with_nav(&app, body)).into_string(),
    ))
}

/// `POST /purge` (older_than): the operator confirmed.
async fn purge(
    State(app): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<PurgeQuery>,
) -> Page {
    same_site(&headers)?;
    let age = parse_age(form.older_than.as_deref().unwrap_or(""))?;
    let purged = app
        .store
        .ledger_client()
        .purge(age)
        .await
        .map_err(|err| Problem::store(&err))?;
    let body = html! { p.outcome { (purge_text(purged, age)) } };
    Ok(Html(
        layout("Purged", None, with_nav(&app, body)).into_string(),
    ))
}

#[derive(Debug, Deserialize)]
struct LocksQuery {
    key: Option<String>,
}

/// `/locks?key=K`: who holds a key — a lock's holder, an election's
/// leader (candidate, value, term), a semaphore's permits. Stores answer
/// for one key at a time (the `LockStore` trait has no listing), so the
/// page says so and looks one up; live runs are listed under the running
/// tab.
async fn locks(State(app): State<Shared>, Query(query): Query<LocksQuery>) -> Page {
    let key = query.key.as_deref().filter(|s| !s.is_empty());
    let found = match key {
        Some(text) => {
            let key = parse_key(text)?;
            let holder = app
                .store
                .locks()
                .inspect(&key)
                .await
                .map_err(|err| Problem::store(&err))?;
            // A backend without semaphores would have no permits to show.
            let permits = match app.store.semaphores() {
                Ok(semaphores) => semaphores
                    .inspect_permits(&key)
                    .await
                    .map_err(|err| Problem::store(&err))?,
                Err(_) => None,
            };
            Some((key, holder, permits))
        }
        None => None,
    };
    let body = html! {
        h2 { "Locks, leaders and permits" }
        p.note { "The " (app.store.backend_name()) " store cannot list live locks: lockstore's stores answer for one key at a time. "
            "Look one up by its key (a lock's, an election's name, a semaphore's); runs holding a lease are under "
            a href="/runs?status=running" { "running" } "." }
        form method="get" action="/locks" {
            label { "Key " input type="text" name="key" value=(key.unwrap_or("")) size="40"; }
            " " button type="submit" { "Look up" }
        }
        @if let Some((key, holder, permits)) = &found {
            @if let Some(holder) = holder {
                @if let Some(leader) = Leader::from_election_holder(holder) {
                    h3 { "Leader" }
                    table.leader {
                        thead { tr { th { "Election" } th { "Candidate" } th { "Value" } th { "Term" } th { "Time left" } } }
                        tbody { tr.leader {
                            td.key { (key.as_str()) }
                            td.candidate { (leader.candidate()) }
                            td.value { (leader.value()) }
                            td.term { (leader.term().get()) }
                            td { (human(leader.expires_in())) }
                        } }
                    }
                } @else {
                    h3 { "Lock" }
                    table.locks {
                        thead { tr { th { "Key" } th { "Holder" } th { "Fence" } th { "Time left" } } }
                        tbody { tr.lock {
                            td.key { (key.as_str()) }
                            td.holder { (holder.owner()) }
                            td { (holder.fence().get()) }
                            td { (human(holder.expires_in())) }
                        } }
                    }
                }
            }
            @if let Some(permits) = permits {
                h3 { "Permits" }
                p.permits { (permits.holders.len()) " of " (permits.limit) " permits taken, " (permits.free()) " free." }
                table.permits {
                    thead { tr { th { "Holder" } th { "Fence" } th { "Time left" } } }
                    tbody {
                        @for holder in &permits.holders {
                            tr.permit {
                                td.holder { (holder.owner()) }
                                td.fence { (holder.fence().get()) }
                                td { (human(holder.expires_in())) }
                            }
                        }
                    }
                }
            }
            @if holder.is_none() && permits.is_none() {
                p.free { code.key { (key.as_str()) } " is free." }
            }
        }
    };
    Ok(Html(
        layout("Locks", None, with_nav(&app, body)).into_string(),
    ))
}

/// `/metrics`: the ledger's records by status, stuck runs and the oldest
/// running run's age, in the Prometheus text format. Reads every record
/// (one query per thousand), so scrape it every minute or so, not every
/// second.
async fn metrics(State(app): State<Shared>) -> Result<Response, Problem> {
    let ledger = app.store.ledger_client();
    let now = SystemTime::now();
    let mut by_status = Vec::new();
    let (mut stuck, mut oldest_running) = (0u64, Duration::ZERO);
    for status in [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Ignored,
    ] {
        let mut count = 0u64;
        let mut query = RunQuery::new(StatusFilter::Is(status)).limit(RunQuery::MAX_LIMIT);
        loop {
            let page = ledger
                .query(&query)
                .await
                .map_err(|err| Problem::store(&err))?;
            for record in &page.records {
                count += 1;
                if record.status == RunStatus::Running {
                    stuck += u64::from(record.is_stuck());
                    // A renewal does not move `updated_at`: it is when the run started.
                    let age = now.duration_since(record.updated_at).unwrap_or_default();
                    oldest_running = oldest_running.max(age);
                }
            }
            match page.next {
                Some(next) => query = query.after(next),
                None => break,
            }
        }
        by_status.push((status, count));
    }
    let backend = app.store.backend_name();
    let mut text = String::new();
    text.push_str("# HELP lockstore_ledger_records Run-once records by status (running includes stuck runs).\n");
    text.push_str("# TYPE lockstore_ledger_records gauge\n");
    for (status, count) in by_status {
        text.push_str(&format!(
            "lockstore_ledger_records{{backend=\"{backend}\",status=\"{status}\"}} {count}\n"
        ));
    }
    text.push_str("# HELP lockstore_ledger_stuck_runs Running records whose lease expired: their worker died, and the next begin takes them over.\n");
    text.push_str("# TYPE lockstore_ledger_stuck_runs gauge\n");
    text.push_str(&format!(
        "lockstore_ledger_stuck_runs{{backend=\"{backend}\"}} {stuck}\n"
    ));
    text.push_str("# HELP lockstore_ledger_oldest_running_age_seconds How long ago the oldest running record (stuck included) started; 0 when none runs.\n");
    text.push_str("# TYPE lockstore_ledger_oldest_running_age_seconds gauge\n");
    text.push_str(&format!(
        "lockstore_ledger_oldest_running_age_seconds{{backend=\"{backend}\"}} {:.3}\n",
        oldest_running.as_secs_f64()
    ));
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Refuses a POST another site made the operator's browser send: the page
/// has no login of its own, so a cross-site form must not retry or purge.
/// Behind a reverse proxy, pass the public host on (`Host` or
/// `X-Forwarded-Host`).
fn same_site(headers: &HeaderMap) -> Result<(), Problem> {
    let refused = || Problem {
        status: StatusCode::FORBIDDEN,
        message: "refused: this request came from another site's page".into(),
    };
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if text("sec-fetch-site").is_some_and(|site| !matches!(site, "same-origin" | "none")) {
        return Err(refused());
    }
    if let Some(origin) = text("origin") {
        let origin_host = origin.split_once("://").map(|(_, host)| host);
        let hosts = [text("host"), text("x-forwarded-host")];
        if !hosts
            .iter()
            .any(|host| host.is_some() && *host == origin_host)
        {
            return Err(refused());
        }
    }
    Ok(())
}

/// The status a person wants to see: `stuck` for a running record whose
/// lease expired.
fn status_of(record: &RunRecord) -> &'static str {
    if record.is_stuck() {
        "stuck"
    } else {
        record.status.as_str()
    }
}

/// Who runs it and for how long, or who ran it last.
fn holder_of(record: &RunRecord) -> String {
    match (record.holder(), &record.owner) {
        (Some(holder), _) => format!(
            "{} (lease expires in {})",
            holder.owner(),
            human(holder.expires_in())
        ),
        (None, Some(owner)) => format!("{owner} (last)"),
        (None, None) => String::new(),
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_owned()
}

/// A value for a query string.
fn encode(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

fn with_nav(app: &App, body: Markup) -> Markup {
    html! {
        header {
            strong { "lockctl" } " · " (app.store.backend_name())
            @if app.read_only { " · read-only" }
            " · " a href="/runs" { "Runs" }
            " · " a href="/locks" { "Locks" }
            @if !app.read_only { " · " a href="/purge" { "Purge" } }
            " · " a href="/metrics" { "Metrics" }
        }
        main { (body) }
    }
}

fn layout(title: &str, refresh: Option<Duration>, body: Markup) -> Markup {
    let refresh = refresh.filter(|r| !r.is_zero()).map(|r| r.as_secs().max(1));
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if let Some(seconds) = refresh {
                    meta http-equiv="refresh" content=(seconds);
                }
                title { (title) " — lockctl" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
header{margin-bottom:1em}table{border-collapse:collapse}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
td.error,td.key{max-width:28em;overflow-wrap:anywhere}pre{white-space:pre-wrap;margin:0}\
nav.tabs{margin-bottom:.8em}.problem{color:#a00}button.confirm{font-weight:bold}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_links_are_encoded() {
        assert_eq!(encode("a/<b>&c d"), "a%2F%3Cb%3E%26c%20d");
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:7180".parse().unwrap());
        headers.insert("origin", "http://127.0.0.1:7180".parse().unwrap());
        assert!(same_site(&headers).is_ok());
        headers.insert("origin", "http://evil.example".parse().unwrap());
        assert!(same_site(&headers).is_err());
        headers.remove("origin");
        headers.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(same_site(&headers).is_err());
    }
}
