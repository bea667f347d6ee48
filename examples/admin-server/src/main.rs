//! `keyvault`: the standalone keyvault server and its administration commands.
//!
//! Configuration comes from flags, each with an environment variable; a `.env` file in the
//! working directory is read first and never overrides the environment.

mod api;
mod app;
mod auth;
mod backends;
mod backup;
mod cli;
mod commands;
mod config;
mod db;
mod error;
mod out;
mod serve;
mod views;

use std::{io::IsTerminal, process::ExitCode};

use clap::{Parser, error::ErrorKind};

use crate::{
    app::App,
    cli::{AuditCommand, Cli, Command},
    config::Config,
    error::{Error, Result},
    out::stderr_line,
};

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
    init_tracing(matches!(cli.command, Command::Serve(_)));
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            stderr_line(&format!("error: {}", e.cli_line()));
            ExitCode::FAILURE
        }
    }
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

fn init_tracing(serving: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if serving {
        "info,sqlx=warn"
    } else {
        "warn,sqlx=error"
    };
    let filter =
        EnvFilter::try_from_env("KEYVAULT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Result<()> {
    let config = Config::from_args(&cli.global)?;
    let app = App::open(config).await?;
    match cli.command {
        Command::Serve(args) => serve::serve(app, args.bind).await,
        Command::Migrate => {
            stderr_line(&format!("Database ({}) is migrated.", app.config.db.kind()));
            Ok(())
        }
        Command::CreateAdmin(a) => {
            commands::create_admin(&app, &a.username, &a.role, a.password_stdin).await
        }
        Command::ResetAdminPassword(a) => {
            commands::reset_password(&app, &a.username, a.password_stdin).await
        }
        Command::Token(cmd) => commands::token(&app, cmd).await,
        Command::Keys(cmd) => commands::keys(&app, cmd).await,
        Command::RotateDue(a) => commands::rotate_due(&app, a.out.as_deref()).await,
        Command::CleanupExpired(a) => commands::cleanup_expired(&app, &a.older_than).await,
        Command::Backup(a) => backup::backup(&app, &a.out).await,
        Command::Restore(a) => backup::restore(&app, &a.input).await,
        Command::Audit(AuditCommand::Verify) => commands::audit_verify(&app).await,
    }
    .map_err(|e: Error| e)
}
