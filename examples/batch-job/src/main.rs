//! `batch-job`: bulk key creation, usage reports and due rotations, through the keyvault
//! library only.

mod backend;
mod create;
mod error;
mod report;
mod rotate;
mod secret_file;

use std::{path::PathBuf, process::ExitCode};

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use keyvault_core::KeyId;

use crate::error::Error;

/// Bulk key operations on a keyvault database.
///
/// The database comes from DATABASE_URL (postgres://… or sqlite://PATH), as for the host
/// application and the standalone server; a `.env` file in the working directory is read
/// first. Without DATABASE_URL the job runs on an in-memory database that disappears when
/// it exits — useless for real work (keys created there can never be verified anywhere), so
/// set DATABASE_URL.
#[derive(Debug, Parser)]
#[command(name = "batch-job", version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Global {
    /// postgres://… or sqlite://PATH. Unset: in-memory, gone at exit (see above).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// redis://…: rotations are also announced there, for instances that listen on Redis.
    #[arg(long, env = "REDIS_URL", global = true, hide_env_values = true)]
    redis_url: Option<String>,
    /// Digest pepper; must equal the one of every process sharing the database.
    #[arg(long, env = "KEYVAULT_PEPPER", global = true, hide_env_values = true)]
    pepper: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates a key per CSV row.
    ///
    /// Columns: name, owner, credits, limits (limits like `100/60s;1000/1d`). New keys are appended once to --out (mode 0600) as JSON lines
    /// {line, id, name, owner_id, key}; bad rows are reported with their line number on
    /// stderr and the good rows are still created (exit status 1 if any row was bad).
    CreateKeys {
        /// The CSV file, with a header row.
        #[arg(long)]
        csv: PathBuf,
        /// Where the new keys go (appended; mode 0600). They are shown nowhere else.
        #[arg(long)]
        out: PathBuf,
    },
    /// Writes the usage statistics of a time range as CSV.
    ///
    /// Covers [--from, --to): per provider (and `*` for all), a row for the whole range with latency percentiles, then a row per step.
    UsageReport {
        /// Start, RFC 3339 (2026-01-01T00:00:00Z).
        #[arg(long)]
        from: DateTime<Utc>,
        /// End (exclusive), RFC 3339.
        #[arg(long)]
        to: DateTime<Utc>,
        /// Only this key.
        #[arg(long)]
        key_id: Option<KeyId>,
        /// The CSV file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Rotates every key whose rotation policy is due.
    ///
    /// Each new key is appended to --out
    /// (mode 0600, synced before its rotation commits) as a JSON line {id, old_id, key,
    /// old_key_expires_at}: the only time it is ever shown.
    RotateDue {
        /// Where the new keys go (appended; mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&Error::io("starting the runtime", e)),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let backend = backend::connect(&cli.global).await?;
    match cli.command {
        Command::CreateKeys { csv, out } => create::run(&backend.vault, &csv, &out).await,
        Command::UsageReport {
            from,
            to,
            key_id,
            out,
        } => report::run(&*backend.stats, from, to, key_id, &out).await,
        Command::RotateDue { out } => rotate::run(&backend.vault, &out).await,
    }
}

fn fail(e: &Error) -> ExitCode {
    warn(&format!("error: {e}"));
    ExitCode::FAILURE
}

/// A line for the operator on stderr (stdout stays free for nothing but data).
#[allow(clippy::print_stderr)]
pub(crate) fn warn(message: &str) {
    eprintln!("batch-job: {message}");
}

/// Progress and summaries, on stderr too.
pub(crate) fn info(message: &str) {
    warn(message);
}
