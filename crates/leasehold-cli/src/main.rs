//! `leasehold`: see and break locks on any leasehold store, for the on-call
//! engineer (instead of hand-written `redis-cli --scan` and `zkCli.sh ls`
//! loops).
//!
//! ```text
//! leasehold --url redis://127.0.0.1:6379 list --prefix payment: --older-than 30m
//! leasehold inspect payment:user:123
//! leasehold release --force payment:user:123 --reason "stuck since 03:00, INC-42"
//! leasehold health
//! leasehold watch payment:user:123
//! leasehold top
//! leasehold deadlocks
//! ```
//!
//! The store comes from `--url` or `LEASEHOLD_URL` (every scheme this build
//! has; the URL is never printed unredacted). `--json` prints JSON lines for
//! scripts. Errors go to stderr on one line.
//!
//! Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (for `health`: healthy) |
//! | 1 | the store failed or did not answer in time |
//! | 2 | usage or configuration error (bad URL, option, missing reason) |
//! | 3 | `health`: unhealthy (unreachable, paused, or a safety finding) |
//! | 4 | `release --force` was not confirmed |
//! | 5 | `deadlocks`: at least one cycle of waiting tasks was found |

mod commands;
mod render;
mod waits;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use leasehold::LockError;

/// See and break locks on any leasehold store.
#[derive(Debug, Parser)]
#[command(name = "leasehold", version, about, long_about = None)]
pub(crate) struct Cli {
    /// The store, e.g. redis://127.0.0.1:6379 or postgres://u:p@db/app?mode=table.
    #[arg(long, env = "LEASEHOLD_URL", global = true, hide_env_values = true)]
    url: Option<String>,
    /// Print JSON lines instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Give up on the store after this long (250ms, 2s, 1m).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List held locks (a table, or JSON lines with --json).
    List(ListArgs),
    /// Show who holds KEY.
    Inspect {
        /// The lock key.
        key: String,
    },
    /// Force a lock free: evicts its holder and advances its fencing token.
    Release {
        /// Required: a force release evicts whoever holds the key.
        #[arg(long)]
        force: bool,
        /// Who and why, for the audit record (required).
        #[arg(long)]
        reason: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// The lock key.
        key: String,
    },
    /// Check the store: round trip, capabilities, safety warnings.
    Health,
    /// Print each change of KEY's holder until interrupted.
    Watch {
        /// The lock key.
        key: String,
        /// How often to look.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        every: Duration,
    },
    /// Key classes ranked by waiting tasks and wait time, across every
    /// process that records its waits in this store, refreshed live.
    Top {
        /// How often to refresh.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        every: Duration,
        /// Print once and exit.
        #[arg(long)]
        once: bool,
        /// Show at most this many classes.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Find tasks waiting for each other in a cycle (deadlocks) across
    /// processes; prints each cycle with its keys' tokens. Exit 5 if any.
    Deadlocks,
}

/// `leasehold list` options.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Only locks held for at least this long (30m, 2h).
    #[arg(long, value_parser = parse_duration)]
    older_than: Option<Duration>,
    /// Only locks whose holder label contains this.
    #[arg(long)]
    holder: Option<String>,
    /// Print only how many locks match.
    #[arg(long, conflicts_with = "by_pattern")]
    count: bool,
    /// Count matching locks by key pattern (the key up to its first ':').
    #[arg(long)]
    by_pattern: bool,
    /// Keys read per store call.
    #[arg(long, default_value_t = 1000)]
    page: usize,
}

/// Durations in the configuration grammar: `250ms`, `2s`, `1m`, `1h`.
fn parse_duration(value: &str) -> Result<Duration, String> {
    leasehold::config::duration("duration", value).map_err(|e| e.to_string())
}

/// How a command ended, as an exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The store failed (1).
    Store(LockError),
    /// Usage or configuration (2).
    Usage(String),
    /// `health` found the store unhealthy (3).
    Unhealthy,
    /// A force release was not confirmed (4).
    NotConfirmed,
    /// `deadlocks` found a cycle (5).
    Deadlocked,
}

impl From<LockError> for Failure {
    fn from(error: LockError) -> Self {
        match error {
            LockError::Config(_) | LockError::InvalidKey(_) | LockError::InvalidTtl { .. } => {
                Failure::Usage(error.to_string())
            }
            other => Failure::Store(other),
        }
    }
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Store(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Unhealthy => 3,
            Failure::NotConfirmed => 4,
            Failure::Deadlocked => 5,
        }
    }

    fn message(&self) -> Option<String> {
        match self {
            Failure::Store(error) => Some(error.to_string()),
            Failure::Usage(message) => Some(message.clone()),
            Failure::Unhealthy | Failure::Deadlocked => None,
            Failure::NotConfirmed => Some("not confirmed: nothing was released".into()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("leasehold: error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if let Some(message) = failure.message() {
                // One line, whatever the store's error looked like.
                eprintln!("leasehold: error: {}", message.replace('\n', " "));
            }
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let url = cli.url.clone().ok_or_else(|| {
        Failure::Usage(
            "no store: give --url or set LEASEHOLD_URL (e.g. redis://127.0.0.1:6379)".into(),
        )
    })?;
    let out = render::Out::new(cli.json);
    match cli.command {
        Command::List(args) => commands::list(&url, cli.timeout, &args, &out).await,
        Command::Inspect { key } => commands::inspect(&url, cli.timeout, &key, &out).await,
        Command::Release {
            force,
            reason,
            yes,
            key,
        } => {
            if !force {
                return Err(Failure::Usage(
                    "release needs --force: it evicts whoever holds the key".into(),
                ));
            }
            let reason = reason.filter(|r| !r.trim().is_empty()).ok_or_else(|| {
                Failure::Usage(
                    "release --force needs --reason (who and why, for the audit record)".into(),
                )
            })?;
            commands::force_release(&url, cli.timeout, &key, &reason, yes, &out).await
        }
        Command::Health => commands::health(&url, cli.timeout, &out).await,
        Command::Watch { key, every } => {
            commands::watch(&url, cli.timeout, &key, every, &out).await
        }
        Command::Top { every, once, limit } => {
            waits::top(&url, cli.timeout, every, once, limit, &out).await
        }
        Command::Deadlocks => waits::deadlocks(&url, cli.timeout, &out).await,
    }
}
