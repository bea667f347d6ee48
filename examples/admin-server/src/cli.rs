//! The command line: every flag has an environment variable; `.env` is read before parsing.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

/// The standalone keyvault server and its administration commands.
#[derive(Debug, Parser)]
#[command(name = "keyvault", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Settings shared by every command.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Where keys, tokens and the audit log live: sqlite://PATH or postgres://…
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://keyvault.db",
        global = true,
        hide_env_values = true
    )]
    pub(crate) database_url: String,
    /// Redis for limits, credit caching and change propagation across instances.
    #[arg(long, env = "REDIS_URL", global = true, hide_env_values = true)]
    pub(crate) redis_url: Option<String>,
    /// Signs admin sessions; generated once and kept in the database when unset.
    #[arg(long, env = "SECRET_KEY", global = true, hide_env_values = true)]
    pub(crate) secret_key: Option<String>,
    /// HMAC pepper for key digests; every process sharing a database must use the same.
    #[arg(long, env = "KEYVAULT_PEPPER", global = true, hide_env_values = true)]
    pub(crate) pepper: Option<String>,
    /// Comma-separated CIDRs whose X-Forwarded-For header is believed.
    #[arg(long, env = "KEYVAULT_TRUSTED_PROXIES", global = true)]
    pub(crate) trusted_proxies: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "KEYVAULT_BIND", default_value = "127.0.0.1:8080")]
    pub(crate) bind: SocketAddr,
}

#[derive(Debug, Args)]
pub(crate) struct CreateAdminArgs {
    /// The login name.
    #[arg(long)]
    pub(crate) username: String,
    /// admin, operator or viewer.
    #[arg(long, default_value = "admin")]
    pub(crate) role: String,
    /// Read the password from one line of standard input instead of a prompt.
    #[arg(long)]
    pub(crate) password_stdin: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ResetPasswordArgs {
    /// The login name.
    #[arg(long)]
    pub(crate) username: String,
    /// Read the password from one line of standard input instead of a prompt.
    #[arg(long)]
    pub(crate) password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
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
pub(crate) enum KeysCommand {
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
pub(crate) struct KeysCreateArgs {
    /// A name for the key.
    #[arg(long)]
    pub(crate) name: String,
    /// The key's prefix (default kv).
    #[arg(long)]
    pub(crate) prefix: Option<String>,
    /// Whoever the key belongs to.
    #[arg(long)]
    pub(crate) owner: Option<String>,
    /// Expire the key after this long (e.g. 30d).
    #[arg(long)]
    pub(crate) expires_in: Option<String>,
    /// A credit balance (unlimited when absent).
    #[arg(long)]
    pub(crate) credits: Option<String>,
    /// A rate limit such as 100/60s (repeatable).
    #[arg(long = "rate-limit")]
    pub(crate) rate_limits: Vec<String>,
    /// A scope (repeatable).
    #[arg(long = "scope")]
    pub(crate) scopes: Vec<String>,
    /// Print the created key as a JSON document.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RotateDueArgs {
    /// Append the new keys to this file (created with mode 0600) instead of standard output.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// Only keys that expired at least this long ago.
    #[arg(long, default_value = "30d")]
    pub(crate) older_than: String,
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The file to write (mode 0600); refused if it exists and is not empty.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup to read.
    #[arg(long = "in")]
    pub(crate) input: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the audit log's hash chain.
    Verify,
}
