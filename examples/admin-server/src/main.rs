//! `keyvault`: the standalone keyvault server and its administration commands, a thin
//! command line over the `keyvault-admin` library.
//!
//! Configuration comes from flags, each with an environment variable; a `.env` file in the
//! working directory is read first and never overrides the environment.

use std::{io::Write, process::ExitCode};

use clap::{Parser, error::ErrorKind};
use keyvault_admin::cli::{Cli, Command};

fn main() -> ExitCode {
    // `.env` first: dotenvy never replaces a variable already set, so the environment wins
    // over the file, and clap's flags win over both.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        stderr_line(&format!("error: .env: {e}"));
        return ExitCode::from(2);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return clap_exit(&e),
    };
    if let Err(e) = keyvault_admin::logs::init(matches!(cli.command, Command::Serve(_))) {
        stderr_line(&format!("error: {e}"));
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            stderr_line(&format!("error: cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(keyvault_admin::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            stderr_line(&format!("error: {}", e.cli_line()));
            ExitCode::FAILURE
        }
    }
}

fn stderr_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Help and version go out as clap writes them; a usage error becomes one line.
fn clap_exit(e: &clap::Error) -> ExitCode {
    match e.kind() {
        // `keyvault keys` alone is bad input like any other: one line naming the fix.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let text = e.render().to_string();
            let usage = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("Usage:"))
                .map_or("keyvault <COMMAND>", str::trim);
            stderr_line(&format!(
                "error: a subcommand is required: {usage} (add --help to list them)"
            ));
            ExitCode::from(2)
        }
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let text = e.render().to_string();
            let line = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            stderr_line(&line);
            ExitCode::from(2)
        }
    }
}
