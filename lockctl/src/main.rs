//! `lockctl`: run a command under a leased lock — or at most once
//! successfully, or as an election's leader — on SQLite, PostgreSQL, Redis
//! or DynamoDB.
//!
//! See `lockctl --help` and the crate's README for the commands, the store
//! URLs and the exit codes.

#![forbid(unsafe_code)]

mod admin;
mod cli;
mod duration;
mod elect;
mod errout;
mod exit;
mod group;
mod output;
mod run;
mod serve;
mod signals;
mod template;
mod terminal;
mod watch;

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::error::ErrorKind;
use lockstore::{LockError, OpenError, Store};

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(OsStr::new(watch::SUBCOMMAND)) {
        let args: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
        return ExitCode::from(watch::watch(&args));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = match err.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => exit::ERROR,
            };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    init_tracing(cli.verbose);
    let codes = cli.codes.resolve();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lockctl: cannot start the async runtime: {err}");
            return ExitCode::from(codes.error);
        }
    };
    let code = runtime.block_on(dispatch(cli, codes));
    errout::flush(Duration::from_secs(2));
    ExitCode::from(code)
}

fn init_tracing(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = if verbose {
        EnvFilter::new("lockstore=debug,lockstore_api=debug,lockctl=debug,warn")
    } else {
        EnvFilter::try_from_env("LOCKCTL_LOG").unwrap_or_else(|_| EnvFilter::new("error"))
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// An outcome that is not the child's own exit code: a reserved code and
/// what to tell the user.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// The message, printed to stderr after `lockctl: `.
    pub message: String,
}

impl Failure {
    /// lockctl's own error, with the configured error code.
    pub fn error(codes: &exit::Codes, message: impl Into<String>) -> Self {
        Failure {
            code: codes.error,
            message: message.into(),
        }
    }

    /// A store error, with a hint where lockctl knows the fix.
    pub fn store(codes: &exit::Codes, err: &LockError) -> Self {
        Failure::error(codes, describe_store_error(err))
    }
}

/// A store error's message, with the fix lockctl knows.
pub fn describe_store_error(err: &dyn std::fmt::Display) -> String {
    let text = err.to_string();
    let needs_setup = [
        "ensure_schema",
        "create_table",
        "does not exist",
        "no such table",
    ]
    .iter()
    .any(|needle| text.contains(needle));
    if needs_setup {
        format!(
            "{text}\n  hint: create the tables once with `lockctl setup` (same --store / LOCKSTORE_URL)"
        )
    } else {
        text
    }
}

async fn dispatch(cli: Cli, codes: exit::Codes) -> u8 {
    let result = match cli.command {
        Command::Completions { shell } => admin::completions(shell),
        Command::Man => admin::man(&codes),
        command => match open_store(cli.store.as_deref(), &codes).await {
            Ok(store) => match command {
                Command::Run(args) => run::run(&store, args, &codes).await,
                Command::Elect(args) => elect::elect(&store, args, &codes).await,
                Command::Leader(args) => elect::leader(&store, args, cli.json, &codes).await,
                Command::Acquire(args) => admin::acquire(&store, args, cli.json, &codes).await,
                Command::Renew(args) => admin::renew(&store, args, cli.json, &codes).await,
                Command::Release(args) => admin::release(&store, args, cli.json, &codes).await,
                Command::Status(args) => admin::status(&store, args, cli.json, &codes).await,
                Command::List(args) => admin::list(&store, args, cli.json, &codes).await,
                Command::Retry(args) => admin::retry(&store, args, cli.json, &codes).await,
                Command::Purge(args) => admin::purge(&store, args, cli.json, &codes).await,
                Command::Setup => admin::setup(&store, cli.json, &codes).await,
                Command::Serve(args) => serve::serve(store, args, &codes).await,
                Command::Completions { .. } | Command::Man => unreachable!("handled above"),
            },
            Err(failure) => Err(failure),
        },
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            errout::flush(Duration::from_secs(2));
            eprintln!("lockctl: {}", failure.message);
            failure.code
        }
    }
}

/// Opens `--store` / `LOCKSTORE_URL`, or the embedded SQLite file in the
/// user's data directory. SQLite tables are created on the fly (it is one
/// local file, and `CREATE … IF NOT EXISTS` is cheap); other backends need
/// `lockctl setup` once.
async fn open_store(url: Option<&str>, codes: &exit::Codes) -> Result<Store, Failure> {
    let url = match url {
        Some(url) if !url.trim().is_empty() => url.to_owned(),
        _ => default_store_url().map_err(|message| Failure::error(codes, message))?,
    };
    let store = lockstore::open(&url).await.map_err(|err| match err {
        OpenError::Backend(err) => Failure::store(codes, &err),
        other => Failure::error(codes, other.to_string()),
    })?;
    if store.backend_name() == "sqlite" {
        store
            .ensure_schema()
            .await
            .map_err(|err| Failure::store(codes, &err))?;
    }
    Ok(store)
}

/// `sqlite:` + `$XDG_DATA_HOME/lockstore/lockstore.db` (or the platform's
/// data directory), creating the directory.
fn default_store_url() -> Result<String, String> {
    let dir = dirs::data_dir()
        .ok_or_else(|| {
            "no data directory (neither XDG_DATA_HOME nor HOME is set): \
             give a store with --store URL or LOCKSTORE_URL"
                .to_owned()
        })?
        .join("lockstore");
    std::fs::create_dir_all(&dir).map_err(|err| {
        format!(
            "cannot create {}: {err}; give a store with --store URL or LOCKSTORE_URL",
            dir.display()
        )
    })?;
    let path = dir.join("lockstore.db");
    let path = path.to_str().ok_or_else(|| {
        format!(
            "the data directory {} is not valid UTF-8; give a store with --store sqlite:PATH",
            dir.display()
        )
    })?;
    Ok(format!("sqlite:{}", escape_path(path)))
}

/// Escapes what a store URL would read as syntax in a file path.
fn escape_path(path: &str) -> String {
    path.replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_url_syntax_survive() {
        assert_eq!(escape_path("/a%b?c#d"), "/a%25b%3Fc%23d");
    }

    #[test]
    fn missing_tables_point_at_setup() {
        let hint = describe_store_error(&"relation \"lockstore_locks\" does not exist");
        assert!(hint.contains("lockctl setup"), "{hint}");
        assert!(!describe_store_error(&"connection refused").contains("setup"));
    }
}
