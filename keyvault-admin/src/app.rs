//! What every command and the server share: configuration, backends, the `Keyvault`, the
//! server's tables, and the audited operations on API tokens and admin users.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use keyvault_core::{
    Actor, AuditEvent, AuditOutcome, Error as CoreError, KeyDigest, Keyvault, SECRET_KEY_SETTING,
    SettingStore, TokenRecord, TokenStore, UserRecord,
};
use rand::{TryRng, rngs::SysRng};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    auth::{self, NewToken, Role},
    backends::Backends,
    config::Config,
    error::{Error, Result},
};

const MAX_TOKEN_NAME: usize = 200;

/// The process's shared state.
#[derive(Debug, Clone)]
pub struct App {
    pub(crate) config: Arc<Config>,
    pub(crate) backends: Backends,
    pub(crate) kv: Keyvault,
    /// The session-signing secret, settled once at open.
    secret: Arc<str>,
    /// The notifiers channels name by kind.
    pub(crate) notifiers: Arc<crate::notify::Registry>,
    /// The client deliveries go through.
    pub(crate) outbound: Arc<crate::notify::Outbound>,
}

/// A token just created: the only time its plaintext exists.
#[derive(Debug)]
pub struct CreatedToken {
    /// The token as stored (its digest, never its plaintext).
    pub record: TokenRecord,
    /// The token itself: hand it to its holder once.
    pub token: keyvault_core::ApiKey,
}

impl App {
    /// Opens the backends and the server's tables, applying every migration.
    pub async fn open(config: Config) -> Result<Self> {
        let backends = Backends::open(&config).await?;
        let kv = backends.keyvault(&config)?;
        let secret = settle_secret(&config, backends.settings.as_ref())
            .await?
            .into();
        let outbound = crate::notify::Outbound::new(
            Arc::new(crate::notify::guard::SystemResolver),
            config.allow_private_webhooks,
            config.lang,
        )?;
        Ok(Self {
            config: Arc::new(config),
            backends,
            kv,
            secret,
            notifiers: Arc::default(),
            outbound: Arc::new(outbound),
        })
    }

    /// The keyvault this server manages: verify keys with it in the same process (a host's
    /// `KeyvaultLayer`), and changes made through the admin API are seen at once.
    pub fn keyvault(&self) -> &Keyvault {
        &self.kv
    }

    /// Whether neither an API token nor an admin user exists (a fresh deployment).
    pub(crate) async fn no_credentials_yet(&self) -> Result<bool> {
        let tokens = self.backends.tokens.list_tokens(None, 1).await?;
        Ok(tokens.items.is_empty() && self.backends.users.users().await?.is_empty())
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

    /// The record of a successful mutation, written by the store with the change itself.
    pub(crate) fn success(actor: &Actor, action: &str, target: &str, details: Value) -> AuditEvent {
        AuditEvent::new(
            Self::now(),
            actor,
            action,
            Some(target.to_owned()),
            AuditOutcome::Success,
            details,
        )
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
        let record = TokenRecord {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            role,
            start: new.start.clone(),
            digest: new.digest,
            created_at: now,
            expires_at: expires_at.map(|t| t.trunc_subsecs(6)),
            revoked_at: None,
            created_by: actor.name.clone(),
        };
        let details = json!({ "name": record.name, "role": role.as_str(), "start": record.start });
        let event = Self::success(actor, action, &record.id.to_string(), details);
        self.backends.tokens.create_token(&record, &[event]).await?;
        Ok(CreatedToken {
            record,
            token: new.token,
        })
    }

    /// Revokes a token (404 when unknown or already revoked).
    pub async fn revoke_token(&self, id_text: &str, actor: &Actor) -> Result<()> {
        let action = "token.revoke";
        let Ok(id) = Uuid::parse_str(id_text) else {
            let e = Error::NotFound(format!("token {id_text:?}"));
            return Err(self.refused(actor, action, None, e).await);
        };
        let event = Self::success(actor, action, &id.to_string(), json!({}));
        if !self
            .backends
            .tokens
            .revoke_token(id, Self::now(), &[event])
            .await?
        {
            let e = Error::NotFound(format!("token {id}"));
            return Err(self.refused(actor, action, Some(id.to_string()), e).await);
        }
        Ok(())
    }

    /// The active token presented as `Authorization: Bearer`, if any.
    pub(crate) async fn authenticate(&self, presented: &str) -> Result<Option<TokenRecord>> {
        let Some(digest) = auth::token_digest(&self.config.hasher, presented) else {
            return Ok(None);
        };
        let found = self.backends.tokens.token_by_digest(&digest).await?;
        Ok(found.filter(|t| t.is_active(Utc::now())))
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
        if self.backends.users.user(username).await?.is_some() {
            let e = Error::Conflict(format!("admin user {username:?} already exists"));
            return Err(self
                .refused(actor, action, Some(username.to_owned()), e)
                .await);
        }
        let phc = auth::hash_password(password).await?;
        let now = Self::now();
        let user = UserRecord {
            username: username.to_owned(),
            role,
            password_hash: phc,
            enabled: true,
            created_at: now,
            updated_at: now,
        };
        let event = Self::success(actor, action, username, json!({ "role": role.as_str() }));
        match self.backends.users.create_user(&user, &[event]).await {
            // Another process created the name meanwhile.
            Err(CoreError::Conflict(c)) => {
                let e = Error::Conflict(c);
                Err(self
                    .refused(actor, action, Some(username.to_owned()), e)
                    .await)
            }
            other => Ok(other?),
        }
    }

    /// Sets a new password for a user; their sessions end with it.
    pub async fn reset_password(
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
        let Some(old) = self.backends.users.user(username).await? else {
            let e = Error::NotFound(format!("admin user {username:?}"));
            return Err(self
                .refused(actor, action, Some(username.to_owned()), e)
                .await);
        };
        let phc = auth::hash_password(password).await?;
        let user = UserRecord {
            password_hash: phc,
            updated_at: Self::now(),
            ..old
        };
        // The user's sessions end in the same transaction.
        let event = Self::success(actor, action, username, json!({}));
        match self.backends.users.update_user(&user, &[event]).await {
            Err(CoreError::NotFound { .. }) => {
                let e = Error::NotFound(format!("admin user {username:?}"));
                Err(self
                    .refused(actor, action, Some(username.to_owned()), e)
                    .await)
            }
            other => Ok(other?),
        }
    }

    /// Changes a user's role or turns the user off or on; their sessions end with it. The
    /// last enabled admin can be neither demoted nor disabled (a conflict).
    pub async fn set_user_access(
        &self,
        username: &str,
        role: Role,
        enabled: bool,
        actor: &Actor,
    ) -> Result<()> {
        let action = "user.update";
        let target = Some(username.to_owned());
        if role == Role::Verifier {
            let e = Error::input("role", "must be one of admin, operator, viewer");
            return Err(self.refused(actor, action, target, e).await);
        }
        let Some(old) = self.backends.users.user(username).await? else {
            let e = Error::NotFound(format!("admin user {username:?}"));
            return Err(self.refused(actor, action, target, e).await);
        };
        if old.role == role && old.enabled == enabled {
            return Ok(());
        }
        let details = json!({
            "role": role.as_str(),
            "enabled": enabled,
            "was": { "role": old.role.as_str(), "enabled": old.enabled },
        });
        let user = UserRecord {
            role,
            enabled,
            updated_at: Self::now(),
            ..old
        };
        let event = Self::success(actor, action, username, details);
        match self.backends.users.update_user(&user, &[event]).await {
            Err(CoreError::Conflict(c)) => Err(self
                .refused(actor, action, target, Error::Conflict(c))
                .await),
            Err(CoreError::NotFound { .. }) => {
                let e = Error::NotFound(format!("admin user {username:?}"));
                Err(self.refused(actor, action, target, e).await)
            }
            other => Ok(other?),
        }
    }

    /// Checks a login; audits the outcome either way. `actor` is the anonymous caller; a
    /// name that is not a user is not recorded (it may be a password typed in the wrong box).
    pub(crate) async fn login(
        &self,
        username: &str,
        password: String,
        actor: &Actor,
    ) -> Result<Option<UserRecord>> {
        // Made before the lookup, so that the first sign-in of any kind pays for it.
        let dummy = auth::dummy_hash().await?;
        // A disabled user signs in no more than an unknown one, and is answered alike.
        let user = self
            .backends
            .users
            .user(username)
            .await?
            .filter(|u| u.enabled);
        let ok = match &user {
            Some(u) => auth::verify_password(password, u.password_hash.clone()).await?,
            None => {
                // Same work for an unknown name, so timing does not tell which names exist.
                let _ = auth::verify_password(password, dummy.to_owned()).await;
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
async fn settle_secret(config: &Config, settings: &dyn SettingStore) -> Result<String> {
    if let Some(s) = &config.secret_key {
        return Ok(s.clone());
    }
    let mut bytes = [0u8; 32];
    SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    let fresh = KeyDigest::from_bytes(bytes).to_hex();
    Ok(settings
        .setting_or_insert(SECRET_KEY_SETTING, &fresh)
        .await?)
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
