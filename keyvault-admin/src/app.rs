//! What every command and the server share: configuration, backends, the `Keyvault`, the
//! server's tables, and the audited operations on API tokens and admin users.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, SubsecRound, Utc};
use keyvault_core::{Actor, AuditEvent, AuditOutcome, KeyDigest, Keyvault};
use rand::{TryRng, rngs::SysRng};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    auth::{self, NewToken, Role},
    backends::Backends,
    config::Config,
    db::{SECRET_KEY_SETTING, ServerDb, TokenRow, UserRow},
    error::{Error, Result},
};

/// How long a token lookup is trusted: a revocation made anywhere is honoured within it.
const TOKEN_CACHE_TTL: Duration = Duration::from_millis(500);
const TOKEN_CACHE_MAX: usize = 10_000;
const MAX_TOKEN_NAME: usize = 200;

/// Token lookups by digest, with when they were made.
type TokenCache = Mutex<HashMap<[u8; 32], (Option<TokenRow>, Instant)>>;

/// The process's shared state.
#[derive(Debug, Clone)]
pub struct App {
    pub(crate) config: Arc<Config>,
    pub(crate) backends: Backends,
    pub(crate) kv: Keyvault,
    pub(crate) db: ServerDb,
    token_cache: Arc<TokenCache>,
    /// The session-signing secret, settled once at open.
    secret: Arc<str>,
}

/// A token just created: the only time its plaintext exists.
#[derive(Debug)]
pub struct CreatedToken {
    /// The token as stored (no secret).
    pub row: TokenRow,
    /// The token itself: hand it to its holder once.
    pub token: keyvault_core::ApiKey,
}

impl App {
    /// Opens the backends and the server's tables, applying every migration.
    pub async fn open(config: Config) -> Result<Self> {
        let backends = Backends::open(&config).await?;
        let db = ServerDb::connect(&config.db).await?;
        db.migrate().await?;
        let kv = backends.keyvault(&config)?;
        let secret = settle_secret(&config, &db).await?.into();
        Ok(Self {
            config: Arc::new(config),
            backends,
            kv,
            db,
            token_cache: Arc::default(),
            secret,
        })
    }

    /// The keyvault this server manages: verify keys with it in the same process (a host's
    /// `KeyvaultLayer`), and changes made through the admin API are seen at once.
    pub fn keyvault(&self) -> &Keyvault {
        &self.kv
    }

    /// Whether neither an API token nor an admin user exists (a fresh deployment).
    pub(crate) async fn no_credentials_yet(&self) -> Result<bool> {
        Ok(self.db.tokens(None, 1).await?.is_empty() && self.db.users().await?.is_empty())
    }

    pub(crate) fn now() -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }

    /// The session-signing secret: `SECRET_KEY`, or the one generated for this database.
    pub(crate) fn secret_key(&self) -> &str {
        &self.secret
    }

    /// Appends one audit record; an error means it was not written.
    pub(crate) async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        target: Option<String>,
        outcome: AuditOutcome,
        details: Value,
    ) -> Result<()> {
        let ev = AuditEvent::new(Self::now(), actor, action, target, outcome, details);
        self.backends.audit.append(&[ev]).await?;
        Ok(())
    }

    /// Records a refused attempt (best effort: it changed nothing) and returns `err`.
    pub(crate) async fn refused(
        &self,
        actor: &Actor,
        action: &str,
        target: Option<String>,
        err: Error,
    ) -> Error {
        let reason = json!({ "reason": crate::error::Problem::from(&err).code() });
        if let Err(e) = self
            .audit(actor, action, target, AuditOutcome::Refused, reason)
            .await
        {
            tracing::warn!(error = %e.cli_line(), action, "refused attempt not audited");
        }
        err
    }

    // ---- API tokens ----

    /// Creates an API token. The token row and its audit record both exist, or neither.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        expires_at: Option<DateTime<Utc>>,
        actor: &Actor,
    ) -> Result<CreatedToken> {
        let action = "token.create";
        let now = Self::now();
        let check = if name.trim().is_empty() || name.chars().count() > MAX_TOKEN_NAME {
            Err(Error::input(
                "name",
                format!("must be 1 to {MAX_TOKEN_NAME} characters, not blank"),
            ))
        } else if expires_at.is_some_and(|t| t <= now) {
            Err(Error::input("expires_at", "must be in the future"))
        } else {
            Ok(())
        };
        if let Err(e) = check {
            return Err(self.refused(actor, action, None, e).await);
        }
        let new = NewToken::generate(&self.config.hasher)?;
        let row = TokenRow {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            role,
            start: new.start.clone(),
            created_at: now,
            expires_at: expires_at.map(|t| t.trunc_subsecs(6)),
            revoked_at: None,
            created_by: actor.name.clone(),
        };
        self.db.insert_token(&row, &new.digest.to_hex()).await?;
        let details = json!({ "name": row.name, "role": role.as_str(), "start": row.start });
        if let Err(e) = self
            .audit(
                actor,
                action,
                Some(row.id.to_string()),
                AuditOutcome::Success,
                details,
            )
            .await
        {
            // No record, no token.
            self.db.delete_token(row.id).await?;
            return Err(e);
        }
        Ok(CreatedToken {
            row,
            token: new.token,
        })
    }

    /// Revokes a token (404 when unknown or already revoked).
    pub(crate) async fn revoke_token(&self, id_text: &str, actor: &Actor) -> Result<()> {
        let action = "token.revoke";
        let Ok(id) = Uuid::parse_str(id_text) else {
            let e = Error::NotFound(format!("token {id_text:?}"));
            return Err(self.refused(actor, action, None, e).await);
        };
        if !self.db.revoke_token(id, Self::now()).await? {
            let e = Error::NotFound(format!("token {id}"));
            return Err(self.refused(actor, action, Some(id.to_string()), e).await);
        }
        if let Err(e) = self
            .audit(
                actor,
                action,
                Some(id.to_string()),
                AuditOutcome::Success,
                json!({}),
            )
            .await
        {
            self.db.unrevoke_token(id).await?;
            return Err(e);
        }
        self.token_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }

    /// The active token presented as `Authorization: Bearer`, if any.
    pub(crate) async fn authenticate(&self, presented: &str) -> Result<Option<TokenRow>> {
        let Some(digest) = auth::token_digest(&self.config.hasher, presented) else {
            return Ok(None);
        };
        let key = *digest.as_bytes();
        let cached = {
            let cache = self.token_cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&key)
                .filter(|(_, at)| at.elapsed() < TOKEN_CACHE_TTL)
                .map(|(row, _)| row.clone())
        };
        let row = match cached {
            Some(row) => row,
            None => {
                let row = self.db.token_by_digest(&digest).await?;
                let mut cache = self.token_cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= TOKEN_CACHE_MAX {
                    cache.retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
                    if cache.len() >= TOKEN_CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(key, (row.clone(), Instant::now()));
                row
            }
        };
        Ok(row.filter(|r| r.is_active(Utc::now())))
    }

    // ---- admin users ----

    /// Creates a dashboard user (`create-admin`); the hash is computed off the runtime.
    pub async fn create_admin(
        &self,
        username: &str,
        role: Role,
        password: String,
        actor: &Actor,
    ) -> Result<()> {
        let action = "user.create";
        let check = check_username(username)
            .and_then(|()| auth::check_password(&password))
            .and_then(|()| {
                if role == Role::Verifier {
                    Err(Error::input(
                        "role",
                        "must be one of admin, operator, viewer",
                    ))
                } else {
                    Ok(())
                }
            });
        if let Err(e) = check {
            return Err(self
                .refused(actor, action, Some(username.to_owned()), e)
                .await);
        }
        if self.db.user(username).await?.is_some() {
            let e = Error::Conflict(format!("admin user {username:?} already exists"));
            return Err(self
                .refused(actor, action, Some(username.to_owned()), e)
                .await);
        }
        let phc = auth::hash_password(password).await?;
        let now = Self::now();
        let row = UserRow {
            username: username.to_owned(),
            role,
            password_hash: phc,
            created_at: now,
            updated_at: now,
        };
        if let Err(e) = self.db.insert_user(&row).await {
            return Err(self
                .refused(actor, action, Some(username.to_owned()), e)
                .await);
        }
        if let Err(e) = self
            .audit(
                actor,
                action,
                Some(username.to_owned()),
                AuditOutcome::Success,
                json!({ "role": role.as_str() }),
            )
            .await
        {
            self.db.delete_user(username).await?;
            return Err(e);
        }
        Ok(())
    }

    /// Sets a new password for a user.
    pub(crate) async fn reset_password(
        &self,
        username: &str,
        password: String,
        actor: &Actor,
    ) -> Result<()> {
        let action = "user.reset_password";
        if let Err(e) = auth::check_password(&password) {
            return Err(self
                .refused(actor, action, Some(username.to_owned()), e)
                .await);
        }
        let Some(old) = self.db.user(username).await? else {
            let e = Error::NotFound(format!("admin user {username:?}"));
            return Err(self
                .refused(actor, action, Some(username.to_owned()), e)
                .await);
        };
        let phc = auth::hash_password(password).await?;
        if !self.db.set_password(username, &phc, Self::now()).await? {
            let e = Error::NotFound(format!("admin user {username:?}"));
            return Err(self
                .refused(actor, action, Some(username.to_owned()), e)
                .await);
        }
        if let Err(e) = self
            .audit(
                actor,
                action,
                Some(username.to_owned()),
                AuditOutcome::Success,
                json!({}),
            )
            .await
        {
            self.db
                .set_password(username, &old.password_hash, old.updated_at)
                .await?;
            return Err(e);
        }
        Ok(())
    }

    /// Checks a login; audits the outcome either way. `actor` is the anonymous caller; a
    /// name that is not a user is not recorded (it may be a password typed in the wrong box).
    pub(crate) async fn login(
        &self,
        username: &str,
        password: String,
        actor: &Actor,
    ) -> Result<Option<UserRow>> {
        let user = self.db.user(username).await?;
        let ok = match &user {
            Some(u) => auth::verify_password(password, u.password_hash.clone()).await?,
            None => {
                // Same work for an unknown name, so timing does not tell which names exist.
                let _ = auth::hash_password(password).await;
                false
            }
        };
        let outcome = if ok {
            AuditOutcome::Success
        } else {
            AuditOutcome::Refused
        };
        let (actor, target) = match &user {
            Some(u) => (
                Actor {
                    name: format!("user:{}", u.username),
                    ..actor.clone()
                },
                Some(u.username.clone()),
            ),
            None => (actor.clone(), None),
        };
        self.audit(&actor, "login", target, outcome, json!({}))
            .await?;
        Ok(user.filter(|_| ok))
    }
}

/// `SECRET_KEY`, or one generated once and kept in the database so that every instance
/// shares it (the first instance to start stores it; the others read it).
async fn settle_secret(config: &Config, db: &ServerDb) -> Result<String> {
    if let Some(s) = &config.secret_key {
        return Ok(s.clone());
    }
    let mut bytes = [0u8; 32];
    SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    let fresh = KeyDigest::from_bytes(bytes).to_hex();
    db.setting_or_insert(SECRET_KEY_SETTING, &fresh).await
}

fn check_username(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(Error::input(
            "username",
            "must be 1 to 64 letters, digits, '.', '_', '-' or '@'",
        ))
    }
}
