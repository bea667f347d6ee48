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
    /// The prefix of every Redis key, so that several deployments can share one Redis; every
    /// process of one deployment must use the same.
    #[arg(
        long,
        env = "KEYVAULT_REDIS_NAMESPACE",
        default_value = "keyvault",
        global = true
    )]
    pub redis_namespace: String,
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
    /// Requests handled at once; beyond it, 503 `overloaded` with `Retry-After: 1` (health
    /// checks and the live stream exempt).
    #[arg(
        long,
        env = "KEYVAULT_MAX_CONCURRENCY",
        default_value = "1024",
        global = true
    )]
    pub max_concurrency: String,
    /// How long `serve` waits for a request's line and headers (100ms–1h); a connection
    /// that has not sent them by then, or stays idle that long between requests, is closed.
    #[arg(
        long,
        env = "KEYVAULT_HEADER_TIMEOUT",
        default_value = "10s",
        global = true
    )]
    pub header_timeout: String,
    /// How long a request may take until its response starts (100ms–1h): beyond it, 408
    /// `request_timeout` while its body is still arriving, else 503 `response_timeout`
    /// (`/v1/stats/stream` exempt; a response already streaming is never cut).
    #[arg(
        long,
        env = "KEYVAULT_REQUEST_TIMEOUT",
        default_value = "30s",
        global = true
    )]
    pub request_timeout: String,
}

impl Default for Global {
    /// The `keyvault` command's defaults, with nothing read from the environment.
    fn default() -> Self {
        Self {
            database_url: "sqlite://keyvault.db".into(),
            redis_url: None,
            redis_namespace: "keyvault".into(),
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
            max_concurrency: "1024".into(),
            header_timeout: "10s".into(),
            request_timeout: "30s".into(),
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
    /// Dashboard users: list them, change a role, disable or enable one.
    #[command(subcommand, after_help = USERS_EXAMPLES)]
    Users(UsersCommand),
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
    Create(Box<KeysCreateArgs>),
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
    /// Change a key: only the fields its flags name.
    #[command(
        long_about = "Change a key: only the fields its flags name; everything else stays as it \
                      is. A list flag given (--rate-limit, --scope, --ip, --metadata) replaces \
                      that list whole; its --no-… form empties it. --credits sets the balance \
                      and keeps the refill; --refill sets the refill and keeps the balance (a \
                      key without credits starts at the refill's amount). --rotate-every or \
                      --rotation-grace alone keeps the other half of the key's policy; a \
                      policy changed counts its period again from now.",
        after_help = UPDATE_EXAMPLES
    )]
    Update(Box<KeysUpdateArgs>),
    /// Enable, disable or delete many keys: a result per id; exit status 0 only when every
    /// id succeeded.
    #[command(after_help = BATCH_EXAMPLES)]
    Batch(KeysBatchArgs),
    /// Rotate a key: prints the new key once; the old one works for the grace period.
    Rotate {
        /// The key's id.
        id: String,
        /// How long the old key keeps working (default 24h).
        #[arg(long)]
        grace: Option<String>,
    },
}

const CREATE_EXAMPLES: &str = "\
Examples:
  keyvault keys create --name ci --credits 1000 --refill monthly:1000 --rate-limit 100/60s
  keyvault keys create --name partner --owner acme --ip 10.0.0.0/8 --ip 2001:db8::/32 \\
      --metadata tier=gold --rotate-every 30d --rotation-grace 24h --json";

const UPDATE_EXAMPLES: &str = "\
Examples:
  keyvault keys update 0190c0de-0000-7000-8000-000000000000 --name ci-2 --json
  keyvault keys update ID --refill daily:500          # keeps the remaining balance
  keyvault keys update ID --credits 1000 --no-expiry
  keyvault keys update ID --rate-limit 10/1s --rate-limit 1000/1d --no-ip
  keyvault keys update ID --rotate-every 7d --rotation-grace 1h
  keyvault keys update ID --no-owner --no-scopes --no-metadata --no-rotation";

const BATCH_EXAMPLES: &str = "\
Output: one line per id on standard output, `<id>  ok` or `<id>  error: <why>`; with --json a
JSON array with one object per id, in the order given:
  [{\"id\": \"…\", \"ok\": true},
   {\"id\": \"…\", \"ok\": false, \"error\": \"not_found\", \"message\": \"key … not found\"}]
(`error` is the code the REST API's batch answers with; `message` says why, for people).

Examples:
  keyvault keys batch disable 0190c0de-0000-7000-8000-000000000000 0190c0de-0000-7000-8000-000000000001
  keyvault keys batch delete --ids-file retired.txt --json
The ids file holds one id per line; blank lines and `#` comments are skipped.";

const USERS_EXAMPLES: &str = "\
Examples:
  keyvault users list --json
  keyvault users set-role alice operator
  keyvault users disable bob
  keyvault users enable bob
The last enabled admin can be neither demoted nor disabled.";

#[derive(Debug, Args)]
#[command(after_help = CREATE_EXAMPLES)]
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
    /// Refill the credits daily or monthly (at 00:00 UTC; monthly on the 1st) to N, e.g.
    /// monthly:1000; without --credits the balance starts at N.
    #[arg(long, value_name = "daily:N|monthly:N")]
    pub refill: Option<String>,
    /// A network allowed to use the key, as a CIDR or an address (repeatable; none: any).
    #[arg(long = "ip", value_name = "CIDR")]
    pub ips: Vec<String>,
    /// A metadata entry KEY=VALUE, the value a string (repeatable).
    #[arg(long = "metadata", value_name = "K=V")]
    pub metadata: Vec<String>,
    /// Rotate the key automatically this often (e.g. 30d; at least 1s).
    #[arg(long, value_name = "D")]
    pub rotate_every: Option<String>,
    /// How long the old key keeps working after an automatic rotation (default 24h).
    #[arg(long, value_name = "D", requires = "rotate_every")]
    pub rotation_grace: Option<String>,
    /// Print the created key as a JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KeysUpdateArgs {
    /// The key's id.
    pub id: String,
    /// A new name.
    #[arg(long)]
    pub name: Option<String>,
    /// A new owner.
    #[arg(long, conflicts_with = "no_owner")]
    pub owner: Option<String>,
    /// Remove the owner.
    #[arg(long)]
    pub no_owner: bool,
    /// Expire the key this long from now (e.g. 30d).
    #[arg(long, value_name = "D", conflicts_with = "no_expiry")]
    pub expires_in: Option<String>,
    /// Never expire.
    #[arg(long)]
    pub no_expiry: bool,
    /// Set the credit balance to N (the refill stays).
    #[arg(long, value_name = "N", conflicts_with = "no_credits")]
    pub credits: Option<String>,
    /// Set the refill (the balance stays, unless --credits sets it).
    #[arg(long, value_name = "daily:N|monthly:N", conflicts_with = "no_credits")]
    pub refill: Option<String>,
    /// Unlimited credits: no balance, no refill.
    #[arg(long)]
    pub no_credits: bool,
    /// The key's rate limits become these, such as 100/60s (repeatable; each starts full).
    #[arg(
        long = "rate-limit",
        value_name = "L/P",
        conflicts_with = "no_rate_limits"
    )]
    pub rate_limits: Vec<String>,
    /// Remove every rate limit.
    #[arg(long)]
    pub no_rate_limits: bool,
    /// The key's scopes become these (repeatable).
    #[arg(long = "scope", value_name = "S", conflicts_with = "no_scopes")]
    pub scopes: Vec<String>,
    /// Remove every scope.
    #[arg(long)]
    pub no_scopes: bool,
    /// The key's allowed networks become these CIDRs or addresses (repeatable).
    #[arg(long = "ip", value_name = "CIDR", conflicts_with = "no_ip")]
    pub ips: Vec<String>,
    /// Remove the allow-list: any address may use the key.
    #[arg(long)]
    pub no_ip: bool,
    /// The key's metadata becomes these KEY=VALUE entries, values strings (repeatable).
    #[arg(long = "metadata", value_name = "K=V", conflicts_with = "no_metadata")]
    pub metadata: Vec<String>,
    /// Remove all metadata.
    #[arg(long)]
    pub no_metadata: bool,
    /// Rotate the key automatically this often (e.g. 30d; at least 1s).
    #[arg(long, value_name = "D", conflicts_with = "no_rotation")]
    pub rotate_every: Option<String>,
    /// How long the old key keeps working after an automatic rotation.
    #[arg(long, value_name = "D", conflicts_with = "no_rotation")]
    pub rotation_grace: Option<String>,
    /// Stop rotating the key automatically.
    #[arg(long)]
    pub no_rotation: bool,
    /// Print the changed key as a JSON document (as `keys show` prints it).
    #[arg(long)]
    pub json: bool,
}

/// What `keys batch` does to every key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BatchActionArg {
    /// Enable every key.
    Enable,
    /// Disable every key.
    Disable,
    /// Delete every key for good.
    Delete,
}

#[derive(Debug, Args)]
pub struct KeysBatchArgs {
    /// What to do to every key.
    #[arg(value_enum)]
    pub action: BatchActionArg,
    /// The keys' ids.
    #[arg(
        value_name = "ID",
        required_unless_present = "ids_file",
        conflicts_with = "ids_file"
    )]
    pub ids: Vec<String>,
    /// Read the ids from this file: one a line, blank lines and `#` comments skipped.
    #[arg(long, value_name = "FILE")]
    pub ids_file: Option<PathBuf>,
    /// Print a JSON array of results, one per id: {id, ok, error?, message?}.
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

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List dashboard users by username (never a password or its hash).
    #[command(after_help = USERS_EXAMPLES)]
    List {
        /// Print a JSON array of users: {username, role, enabled, created_at, updated_at}.
        #[arg(long)]
        json: bool,
    },
    /// Give a user another role: admin, operator or viewer (their sessions end).
    #[command(after_help = USERS_EXAMPLES)]
    SetRole {
        /// The login name.
        username: String,
        /// admin, operator or viewer.
        role: String,
    },
    /// Stop a user from signing in (their sessions end).
    #[command(after_help = USERS_EXAMPLES)]
    Disable {
        /// The login name.
        username: String,
    },
    /// Let a disabled user sign in again.
    #[command(after_help = USERS_EXAMPLES)]
    Enable {
        /// The login name.
        username: String,
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
        Command::Users(cmd) => commands::users(&app, cmd).await,
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
