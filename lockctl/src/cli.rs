//! The command line, as clap derives it (also the source of the shell
//! completions and the man page).

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::duration;
use crate::exit::{self, Codes};

const STORES: &str = "\
Stores (--store URL, or LOCKSTORE_URL):
  sqlite:PATH                    one file shared by the processes of one host
                                 (default: $XDG_DATA_HOME/lockstore/lockstore.db,
                                 else ~/.local/share/lockstore/lockstore.db)
  postgres://user@host/db        PostgreSQL (?schema=S&table=T; run `lockctl setup` once)
  redis://host:6379/0, rediss://  Redis (?prefix=P)
  dynamodb://TABLE?region=R      DynamoDB (&endpoint=http://host:port&profile=P;
                                 credentials from the AWS chain; `lockctl setup` creates the table)
  memory:                        in-process only (tests)";

/// Run a command under a leased lock, or at most once successfully, on
/// SQLite, PostgreSQL, Redis or DynamoDB.
#[derive(Debug, Parser)]
#[command(
    name = "lockctl",
    version,
    about,
    long_about = "Run a command under a leased lock — renewed while it runs, with a fencing \
                  token in its environment — or at most once successfully (--once), on SQLite, \
                  PostgreSQL, Redis or DynamoDB.",
    after_help = help_footer(),
    propagate_version = true
)]
pub struct Cli {
    /// The store URL (default: an SQLite file in your data directory).
    #[arg(
        long,
        global = true,
        env = "LOCKSTORE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub store: Option<String>,

    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// Log what lockctl does (acquire, renewals, release) to stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    #[command(flatten)]
    pub codes: CodeArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// The text after `--help`: the exit codes and the store URLs.
pub fn help_footer() -> String {
    format!("{}\n\n{STORES}", exit::TABLE)
}

/// Overrides of the reserved exit codes (like flock's `-E`).
#[derive(Debug, Args)]
pub struct CodeArgs {
    /// Exit code when the lock is held elsewhere [default: 200].
    #[arg(long, short = 'E', global = true, value_name = "N")]
    pub conflict_exit_code: Option<u8>,
    /// Exit code when the lease is lost while the command runs [default: 201].
    #[arg(long, global = true, value_name = "N")]
    pub lost_exit_code: Option<u8>,
    /// Exit code when --once skips a key that already succeeded [default: 202].
    #[arg(long, global = true, value_name = "N")]
    pub skip_exit_code: Option<u8>,
    /// Exit code when --once skips an ignored key [default: 203].
    #[arg(long, global = true, value_name = "N")]
    pub ignored_exit_code: Option<u8>,
    /// Exit code for lockctl's own errors [default: 204].
    #[arg(long, global = true, value_name = "N")]
    pub error_exit_code: Option<u8>,
}

impl CodeArgs {
    /// The codes in force.
    pub fn resolve(&self) -> Codes {
        let d = Codes::default();
        Codes {
            not_acquired: self.conflict_exit_code.unwrap_or(d.not_acquired),
            lost: self.lost_exit_code.unwrap_or(d.lost),
            already_succeeded: self.skip_exit_code.unwrap_or(d.already_succeeded),
            ignored: self.ignored_exit_code.unwrap_or(d.ignored),
            error: self.error_exit_code.unwrap_or(d.error),
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CMD while holding KEY's lock (with --once: at most once successfully).
    ///
    /// The lease is renewed in the background while CMD runs. CMD runs in
    /// a process group of its own and gets LOCKSTORE_KEY, LOCKSTORE_FENCE
    /// and LOCKSTORE_LEASE_ID in its environment (and LOCKSTORE_ATTEMPT
    /// with --once; not LOCKSTORE_URL, which may hold a password),
    /// lockctl's stdin, stdout and stderr (and the terminal's foreground,
    /// if lockctl has it), and the SIGINT, SIGTERM and SIGHUP lockctl gets,
    /// sent to its whole group. If the lease is lost, CMD's group is sent
    /// SIGTERM, then SIGKILL after --kill-grace, and lockctl exits 201; if
    /// lockctl is killed, a watchdog does the same. Otherwise lockctl
    /// exits with CMD's exit code, once nothing of CMD's group is left.
    #[command(after_help = help_footer())]
    Run(RunArgs),
    /// Wait until this process leads election NAME, then run CMD as leader.
    ///
    /// Campaigns (with other `lockctl elect` or library candidates on the
    /// same store and NAME), then runs CMD as `run` does — its own process
    /// group, signals forwarded, a watchdog — with LOCKSTORE_ELECTION,
    /// LOCKSTORE_TERM and LOCKSTORE_FENCE (both the term: a fencing token
    /// that rises with every new leader) and LOCKSTORE_LEADER_VALUE. If the
    /// leadership is lost, CMD's group is stopped and lockctl exits 201;
    /// when CMD exits, lockctl resigns at once (the next candidate takes
    /// over without waiting for --ttl) and exits with CMD's code.
    #[command(after_help = help_footer())]
    Elect(ElectArgs),
    /// Print election NAME's leader (candidate, value, term), or that none leads.
    ///
    /// With --watch, print the leader now and again at each change (a new
    /// term, a new value, no leader) until interrupted; one JSON object per
    /// line with --json.
    Leader(LeaderArgs),
    /// Take KEY's lock and print its lease id and fencing token.
    ///
    /// For scripts that manage the lease themselves: renew it with
    /// `lockctl renew KEY LEASE_ID` before --ttl passes, and end it with
    /// `lockctl release KEY LEASE_ID`. The TTL counts from when the lock is
    /// granted, not from when the wait began. Prints `LEASE_ID FENCE`.
    Acquire(AcquireArgs),
    /// Extend a lease taken with `acquire` for --ttl from now.
    Renew(RenewArgs),
    /// End a lease taken with `acquire` (or an operator's forced release,
    /// with the LOCKSTORE_LEASE_ID of a running `lockctl run`).
    Release(LeaseArgs),
    /// Show KEY's lock holder and its run-once record.
    Status(KeyArgs),
    /// List run-once records, oldest update first.
    List(ListArgs),
    /// Put a failed, ignored or stuck run-once record back to pending, so
    /// the next `run --once` runs it.
    Retry(KeyArgs),
    /// Delete finished run-once records (succeeded, ignored) not updated
    /// for --older-than.
    Purge(PurgeArgs),
    /// Create the tables (SQLite, PostgreSQL) or the DynamoDB table; idempotent.
    Setup,
    /// Serve a web page for operators: run-once records by status, a
    /// record's detail, a lock's holder, retry and purge (behind a
    /// confirmation; not with --read-only), and /metrics for Prometheus.
    ///
    /// Listens on loopback by default and has no authentication of its
    /// own: to reach it from elsewhere, put it behind a reverse proxy that
    /// authenticates (see the README).
    Serve(ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout.
    Man,
}

/// How long to wait for a held key.
#[derive(Debug, Args, Clone, Copy)]
pub struct WaitArgs {
    /// Wait at most this long for the lock (e.g. 30s, 5m). Default: `run`
    /// and `acquire` wait as long as it takes; `run --once` does not wait
    /// for a run live elsewhere (waiting, it takes over a crashed run once
    /// its lease runs out).
    #[arg(long, short = 'w', value_name = "DURATION", value_parser = duration::parse, conflicts_with = "no_wait")]
    pub wait: Option<Duration>,
    /// Do not wait: exit 200 at once if the key is held.
    #[arg(long, short = 'n')]
    pub no_wait: bool,
}

/// `lockctl run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lock's key (e.g. nightly-etl/2026-11-24). With --once it may
    /// hold {date}, {hour} or {minute}, the current UTC time
    /// (2026-12-07, 2026-12-07T14, 2026-12-07T14:05): `etl/{date}` runs
    /// once a day. Write {{ and }} for literal braces.
    pub key: String,

    /// Run at most once successfully: skip (exit 202) if KEY already
    /// succeeded; record success, or failure with the exit code and the
    /// tail of stderr.
    #[arg(long)]
    pub once: bool,

    #[command(flatten)]
    pub wait: WaitArgs,

    /// Run under one of N permits of KEY, a semaphore: at most N commands
    /// hold KEY at once, each with its own fence in LOCKSTORE_FENCE. Every
    /// run of KEY must use the same N while any holds it. 1 (the default)
    /// is the lock.
    #[arg(long, default_value_t = 1, value_name = "N", conflicts_with = "once", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub permits: u32,

    /// The lease's time to live; renewed every third of it while CMD runs.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = duration::parse)]
    pub ttl: Duration,

    /// After a lost lease, how long CMD has between SIGTERM and SIGKILL.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = duration::parse)]
    pub kill_grace: Duration,

    /// With --once: how many runs KEY gets before it is ignored.
    #[arg(long, default_value_t = 3, value_name = "N", requires = "once", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,

    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `lockctl elect`.
#[derive(Debug, Args)]
pub struct ElectArgs {
    /// The election's name (a lock key: the leader holds it).
    pub name: String,

    /// The value the leader publishes while it leads (e.g. its address),
    /// shown by `lockctl leader`.
    #[arg(long, default_value = "", value_name = "TEXT")]
    pub value: String,

    /// The term's time to live, renewed every third of it: a leader whose
    /// process dies is replaced within about this long.
    #[arg(long, default_value = "15s", value_name = "DURATION", value_parser = duration::parse)]
    pub ttl: Duration,

    /// After a lost leadership, how long CMD has between SIGTERM and SIGKILL.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = duration::parse)]
    pub kill_grace: Duration,

    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `lockctl leader`.
#[derive(Debug, Args)]
pub struct LeaderArgs {
    /// The election's name.
    pub name: String,

    /// Keep printing the leader at each change, until interrupted.
    #[arg(long)]
    pub watch: bool,

    /// With --watch: how often to ask the store.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = duration::parse, requires = "watch")]
    pub every: Duration,
}

/// `lockctl acquire`.
#[derive(Debug, Args)]
pub struct AcquireArgs {
    /// The lock's key.
    pub key: String,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// The lease's time to live (renew before it passes).
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = duration::parse)]
    pub ttl: Duration,
}

/// `lockctl renew`.
#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The lock's key.
    pub key: String,
    /// The lease id printed by `acquire`.
    pub lease_id: String,
    /// The new time to live, from now.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = duration::parse)]
    pub ttl: Duration,
}

/// `lockctl release`.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// The lock's key.
    pub key: String,
    /// The lease id printed by `acquire` (or a run's LOCKSTORE_LEASE_ID).
    pub lease_id: String,
}

/// A command on one key.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The key.
    pub key: String,
}

/// Which records `list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// Every record.
    All,
    /// Pending, running (live or stuck) and failed.
    Unfinished,
    /// Running with an expired lease (its worker died).
    Stuck,
    /// Queued or put back by `retry`.
    Pending,
    /// Running now.
    Running,
    /// Succeeded.
    Succeeded,
    /// Failed, with attempts left.
    Failed,
    /// Given up (out of attempts).
    Ignored,
}

/// `lockctl list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only records with this status.
    #[arg(long, short, value_enum, default_value_t = StatusArg::All)]
    pub status: StatusArg,
    /// At most this many records.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Most recently updated first.
    #[arg(long)]
    pub newest_first: bool,
}

/// `lockctl serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on (port 0: any free port, printed at start).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:7180")]
    pub listen: std::net::SocketAddr,
    /// Show the records and locks only: no retry, no purge.
    #[arg(long)]
    pub read_only: bool,
    /// Reload list pages this often (0: never).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, default_value = "10s")]
    pub refresh: Duration,
    /// Records per page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
}

/// `lockctl purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Delete finished records not updated for this long (e.g. 30d).
    #[arg(long, required = true, value_name = "DURATION", value_parser = duration::parse)]
    pub older_than: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_lists_the_reserved_codes_as_defined() {
        for code in [
            exit::NOT_ACQUIRED,
            exit::LEASE_LOST,
            exit::ALREADY_SUCCEEDED,
            exit::IGNORED,
            exit::ERROR,
        ] {
            assert!(help_footer().contains(&format!("  {code}    ")), "{code}");
        }
    }

    #[test]
    fn run_needs_a_command_after_the_separator() {
        assert!(Cli::try_parse_from(["lockctl", "run", "k"]).is_err());
        let cli = Cli::try_parse_from(["lockctl", "run", "k", "--", "echo", "-n", "x"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.command, ["echo", "-n", "x"]);
    }
}
