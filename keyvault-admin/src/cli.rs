//! The command line: every flag has an environment variable; `.env` is read before parsing.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::{
    admin::Admin,
    app::App,
    backup, commands,
    config::Config,
    error::{Error, Result},
    out::stderr_line,
    serve::{serve, shutdown_signal},
};

/// The standalone keyvault server and its administration commands.
#[derive(Debug, Parser)]
#[command(name = "keyvault", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings shared by every command.
#[derive(Debug, Args)]
pub struct Global {
    /// Where keys, tokens and the audit log live: sqlite://PATH or postgres://…
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://keyvault.db",
        global = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Redis for limits, credit caching and change propagation across instances.
    #[arg(long, env = "REDIS_URL", global = true, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Signs admin sessions; generated once and kept in the database when unset.
    #[arg(long, env = "SECRET_KEY", global = true, hide_env_values = true)]
    pub secret_key: Option<String>,
    /// HMAC pepper for key digests; every process sharing a database must use the same.
    #[arg(long, env = "KEYVAULT_PEPPER", global = true, hide_env_values = true)]
    pub pepper: Option<String>,
    /// Comma-separated CIDRs whose X-Forwarded-For header is believed.
    #[arg(long, env = "KEYVAULT_TRUSTED_PROXIES", global = true)]
    pub trusted_proxies: Option<String>,
    /// Instances sharing one Redis: with Redis down, each admits ⌈limit ÷ this⌉ locally.
    #[arg(long, env = "KEYVAULT_INSTANCES", default_value = "1", global = true)]
    pub instances: String,
    /// With Redis down, credits are refused (`closed`) or spent without counting (`open`).
    #[arg(
        long,
        env = "KEYVAULT_CREDITS_FAIL_MODE",
        default_value = "closed",
        global = true
    )]
    pub credits_fail_mode: String,
    /// How often `serve` evaluates the alert rules (`30s`, `1m`; at least 100ms).
    #[arg(
        long,
        env = "KEYVAULT_ALERT_INTERVAL",
        default_value = "30s",
        global = true
    )]
    pub alert_interval: String,
    /// Lets webhooks and Slack channels reach loopback, private, link-local and unique-local
    /// addresses (receivers on this machine or network).
    #[arg(
        long,
        env = "KEYVAULT_ALLOW_PRIVATE_WEBHOOKS",
        default_value = "false",
        global = true
    )]
    pub allow_private_webhooks: String,
    /// The waits between a failed delivery's attempts, comma-separated (each up to 24h);
    /// one more attempt than waits is made, then the delivery is given up.
    #[arg(
        long,
        env = "KEYVAULT_NOTIFY_RETRY_DELAYS",
        default_value = "10s,30s,5m,30m,2h",
        global = true
    )]
    pub notify_retry_delays: String,
    /// The language of Slack messages: `en` or `zh-CN`.
    #[arg(long, env = "KEYVAULT_LANG", default_value = "en", global = true)]
    pub lang: String,
    /// How often `serve` runs its jobs: due rotations, clean-up of expired keys, usage
    /// retention (from 100ms to 24h).
    #[arg(
        long,
        env = "KEYVAULT_JOB_INTERVAL",
        default_value = "60s",
        global = true
    )]
    pub job_interval: String,
    /// `on`: `serve` rotates keys whose policy is due and seals each new key for the holder
    /// of the old one; `off`: leave rotations to `keyvault rotate-due`.
    #[arg(
        long,
        env = "KEYVAULT_AUTO_ROTATE",
        default_value = "on",
        global = true
    )]
    pub auto_rotate: String,
    /// `serve` deletes keys expired for longer than this (`off` keeps them).
    #[arg(
        long,
        env = "KEYVAULT_CLEANUP_AFTER",
        default_value = "30d",
        global = true
    )]
    pub cleanup_after: String,
    /// `serve` deletes raw usage events and minute rollups older than this (`off` keeps
    /// them); hourly rollups stay.
    #[arg(
        long,
        env = "KEYVAULT_USAGE_RETENTION",
        default_value = "90d",
        global = true
    )]
    pub usage_retention: String,
}

impl Default for Global {
    /// The `keyvault` command's defaults, with nothing read from the environment.
    fn default() -> Self {
        Self {
            database_url: "sqlite://keyvault.db".into(),
            redis_url: None,
            secret_key: None,
            pepper: None,
            trusted_proxies: None,
            instances: "1".into(),
            credits_fail_mode: "closed".into(),
            alert_interval: "30s".into(),
            allow_private_webhooks: "false".into(),
            notify_retry_delays: "10s,30s,5m,30m,2h".into(),
            lang: "en".into(),
            job_interval: "60s".into(),
            auto_rotate: "on".into(),
            cleanup_after: "30d".into(),
            usage_retention: "90d".into(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate, then serve the API, the dashboard and metrics.
    Serve(ServeArgs),
    /// Apply database migrations.
    Migrate,
    /// Create an admin user (fails if the username exists).
    CreateAdmin(CreateAdminArgs),
    /// Set a new password for an admin user (fails if the username is unknown).
    ResetAdminPassword(ResetPasswordArgs),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Rotate keys whose rotation policy is due; prints each new key once as a JSON line.
    RotateDue(RotateDueArgs),
    /// Delete keys that expired some time ago.
    CleanupExpired(CleanupArgs),
    /// Write everything needed to restore to a versioned NDJSON file (mode 0600).
    Backup(BackupArgs),
    /// Restore a backup into an empty or freshly migrated database.
    Restore(RestoreArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Alerts: list them, acknowledge one.
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// Notification channels: list them, send one a test message.
    #[command(subcommand)]
    Notifiers(NotifiersCommand),
    /// Stored usage.
    #[command(subcommand)]
    Usage(UsageCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "KEYVAULT_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
}

#[derive(Debug, Args)]
pub struct CreateAdminArgs {
    /// The login name.
    #[arg(long)]
    pub username: String,
    /// admin, operator or viewer.
    #[arg(long, default_value = "admin")]
    pub role: String,
    /// Read the password from one line of standard input instead of a prompt.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct ResetPasswordArgs {
    /// The login name.
    #[arg(long)]
    pub username: String,
    /// Read the password from one line of standard input instead of a prompt.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; it is printed once, on standard output.
    Create {
        /// What the token is for.
        #[arg(long)]
        name: String,
        /// admin, operator, viewer or verifier.
        #[arg(long)]
        role: String,
        /// Expire the token after this long (e.g. 90d).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List active tokens (never the tokens themselves).
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token.
    Revoke {
        /// The token's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once, on standard output.
    Create(KeysCreateArgs),
    /// List keys, newest first.
    List {
        /// Print a JSON array of key objects.
        #[arg(long)]
        json: bool,
    },
    /// Show one key as JSON.
    Show {
        /// The key's id.
        id: String,
    },
    /// Enable a key.
    Enable {
        /// The key's id.
        id: String,
    },
    /// Disable a key.
    Disable {
        /// The key's id.
        id: String,
    },
    /// Delete a key for good.
    Delete {
        /// The key's id.
        id: String,
    },
    /// Rotate a key: prints the new key once; the old one works for the grace period.
    Rotate {
        /// The key's id.
        id: String,
        /// How long the old key keeps working (default 24h).
        #[arg(long)]
        grace: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct KeysCreateArgs {
    /// A name for the key.
    #[arg(long)]
    pub name: String,
    /// The key's prefix (default kv).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Whoever the key belongs to.
    #[arg(long)]
    pub owner: Option<String>,
    /// Expire the key after this long (e.g. 30d).
    #[arg(long)]
    pub expires_in: Option<String>,
    /// A credit balance (unlimited when absent).
    #[arg(long)]
    pub credits: Option<String>,
    /// A rate limit such as 100/60s (repeatable).
    #[arg(long = "rate-limit")]
    pub rate_limits: Vec<String>,
    /// A scope (repeatable).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Print the created key as a JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RotateDueArgs {
    /// Append the new keys to this file (created with mode 0600) instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Only keys that expired at least this long ago.
    #[arg(long, default_value = "30d")]
    pub older_than: String,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The file to write (mode 0600); refused if it exists and is not empty.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup to read.
    #[arg(long = "in")]
    pub input: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// List alerts, newest first (every state unless --state names one).
    List {
        /// Only alerts in this state.
        #[arg(long, value_parser = ["firing", "acknowledged", "resolved"])]
        state: Option<String>,
        /// Print a JSON array of alert objects (as `GET /v1/alerts` shows them).
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge a firing alert (one already acknowledged or resolved stays as it is).
    Ack {
        /// The alert's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotifiersCommand {
    /// List notification channels, oldest first: their URLs as scheme and host only, never
    /// a secret.
    List {
        /// Print a JSON array of channel objects (as `GET /v1/notifiers` shows them).
        #[arg(long)]
        json: bool,
    },
    /// Send a channel a test message now, once; the exit status is 0 only when it was
    /// delivered.
    Test {
        /// The channel's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Delete raw usage events and minute rollups older than a duration, now (what `serve`
    /// does every KEYVAULT_JOB_INTERVAL with KEYVAULT_USAGE_RETENTION); hourly rollups stay,
    /// so statistics over whole hours do not change.
    #[command(after_help = "Examples:\n  keyvault usage purge --older-than 90d\n  \
                            keyvault usage purge --older-than 36h")]
    Purge {
        /// What to keep: usage younger than this (e.g. 90d; at least 1s).
        #[arg(long)]
        older_than: String,
    },
}

/// Runs one parsed command line: the whole `keyvault` binary but for its `main`.
pub async fn run(cli: Cli) -> Result<()> {
    let config = Config::from_args(&cli.global)?;
    let app = App::open(config).await?;
    match cli.command {
        Command::Serve(args) => serve_command(app, args.bind).await,
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
        Command::Alerts(cmd) => commands::alerts(&app, cmd).await,
        Command::Notifiers(cmd) => commands::notifiers(&app, cmd).await,
        Command::Usage(UsageCommand::Purge { older_than }) => {
            commands::usage_purge(&app, &older_than).await
        }
    }
}

/// `keyvault serve`: the standalone server owns its process, so it installs the metrics
/// recorder that a mounting host would install itself.
async fn serve_command(app: App, bind: std::net::SocketAddr) -> Result<()> {
    if app.no_credentials_yet().await? {
        crate::logs::announce(
            "No API token or admin user exists yet. Create an admin token with:\n  \
             keyvault token create --name admin --role admin\n\
             (it is printed once; send it as `Authorization: Bearer <token>`).",
        );
    }
    let admin = Admin::new(app);
    if let Some(recorder) = admin.metrics_recorder()
        && let Err(e) = metrics::set_global_recorder(recorder)
    {
        tracing::warn!(error = %e, "another metrics recorder is installed: /metrics shows none of keyvault's figures");
    }
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| Error::io(format!("binding {bind}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    // Whatever `KEYVAULT_LOG` says, for people and for scripts that started the server on
    // port 0 (a JSON line in the JSON format).
    crate::logs::announce(&format!("keyvault listening on http://{addr}"));
    serve(admin, listener, shutdown_signal()).await
}
