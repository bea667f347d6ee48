//! The administration commands (everything but `serve`, `backup` and `restore`).

use std::{
    fs::OpenOptions,
    io::{BufRead, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use keyvault_core::{
    Actor, AlertQuery, AlertState, HumanDuration, KeyQuery, RotatedKey, TokenStore, every_page,
};
use serde_json::json;

use crate::{
    api::{alerts::AlertView, notifiers::NotifierView},
    app::App,
    auth::Role,
    cli::{AlertsCommand, KeysCommand, NotifiersCommand, TokenCommand},
    error::{Error, Result},
    out::{stderr_line, stdout_line},
    views::{KeyView, TokenView},
};

mod batch;
mod keyflags;
mod users;

pub(crate) use users::users;

/// The actor for commands: the command line, with an id per invocation.
pub(crate) fn cli_actor() -> Actor {
    Actor {
        name: "cli".into(),
        source_ip: None,
        request_id: Some(uuid::Uuid::now_v7().to_string()),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::Internal(format!("json: {e}")))
}

/// Reads a password from one line of standard input, or from a hidden prompt (twice).
pub(crate) fn read_password(from_stdin: bool, confirm: bool) -> Result<String> {
    let pw = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::io("standard input", e))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        let no_tty = |_| {
            Error::input(
                "password",
                "cannot prompt without a terminal; pipe it with --password-stdin",
            )
        };
        let pw = rpassword::prompt_password("Password: ").map_err(no_tty)?;
        if confirm {
            crate::auth::check_password(&pw)?;
            let again = rpassword::prompt_password("Repeat password: ").map_err(no_tty)?;
            if again != pw {
                return Err(Error::input("password", "the two entries differ"));
            }
        }
        pw
    };
    crate::auth::check_password(&pw)?;
    Ok(pw)
}

pub(crate) async fn create_admin(app: &App, username: &str, role: &str, stdin: bool) -> Result<()> {
    let role: Role = parse_role(role)?;
    if role == Role::Verifier {
        return Err(Error::input(
            "role",
            "must be one of admin, operator, viewer",
        ));
    }
    let password = read_password(stdin, true)?;
    app.create_admin(username, role, password, &cli_actor())
        .await?;
    stderr_line(&format!("Created admin user {username:?} ({role})."));
    Ok(())
}

pub(crate) async fn reset_password(app: &App, username: &str, stdin: bool) -> Result<()> {
    // Fail before asking for a password when the user does not exist.
    if app.backends.users.user(username).await?.is_none() {
        let e = Error::NotFound(format!("admin user {username:?}"));
        return Err(app
            .refused(
                &cli_actor(),
                "user.reset_password",
                Some(username.to_owned()),
                e,
            )
            .await);
    }
    let password = read_password(stdin, true)?;
    app.reset_password(username, password, &cli_actor()).await?;
    stderr_line(&format!("Password of {username:?} changed."));
    Ok(())
}

fn parse_role(text: &str) -> Result<Role> {
    text.parse()
        .map_err(|e: keyvault_core::InvalidInput| Error::input(e.field, e.message))
}

fn duration(text: &str, field: &str) -> Result<HumanDuration> {
    HumanDuration::parse(text, field).map_err(|e| Error::input(e.field, e.message))
}

pub(crate) async fn token(app: &App, cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create {
            name,
            role,
            expires_in,
        } => {
            let parsed = parse_role(&role).and_then(|role| {
                let at = expires_in
                    .as_deref()
                    .map(|d| duration(d, "expires-in").map(|d| App::now() + d.as_delta()))
                    .transpose()?;
                Ok((role, at))
            });
            let (role, expires_at) = refuse(app, "token.create", None, parsed).await?;
            let created = app
                .create_token(&name, role, expires_at, &cli_actor())
                .await?;
            stdout_line(created.token.expose());
            stderr_line(&format!(
                "Created API token {} ({}, role {role}). It is shown once: store it now.",
                created.record.id, created.record.start
            ));
        }
        TokenCommand::List { json } => {
            let all = every_page(
                |before| app.backends.tokens.list_tokens(before, 500),
                |t| t.id,
            )
            .await?;
            if json {
                let views: Vec<TokenView> = all.iter().map(TokenView::from).collect();
                stdout_line(&to_json(&views)?);
            } else {
                stdout_line("ID                                    START     ROLE      NAME");
                for t in &all {
                    stdout_line(&format!(
                        "{}  {:<8}  {:<8}  {}",
                        t.id, t.start, t.role, t.name
                    ));
                }
            }
        }
        TokenCommand::Revoke { id } => {
            app.revoke_token(&id, &cli_actor()).await?;
            stderr_line(&format!("Revoked API token {id}."));
        }
    }
    Ok(())
}

fn key_id(text: &str) -> Result<keyvault_core::KeyId> {
    text.parse()
        .map_err(|_| Error::input("ID", format!("{text:?} is not a key id")))
}

/// Audits a refused attempt made from the command line and returns the error.
async fn refuse<T>(app: &App, action: &str, target: Option<&str>, r: Result<T>) -> Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => Err(app
            .refused(&cli_actor(), action, target.map(str::to_owned), e)
            .await),
    }
}

pub(crate) async fn keys(app: &App, cmd: KeysCommand) -> Result<()> {
    let kv = &app.kv;
    match cmd {
        KeysCommand::Create(args) => {
            let new = refuse(app, "key.create", None, keyflags::new_key(&args)).await?;
            let created = kv.create_key(new, &cli_actor()).await?;
            let view = KeyView::load(kv, &created.record).await?;
            if args.json {
                let mut doc = serde_json::to_value(&view)
                    .map_err(|e| Error::Internal(format!("json: {e}")))?;
                doc["key"] = json!(created.key.expose());
                stdout_line(&to_json(&doc)?);
            } else {
                stdout_line(created.key.expose());
                stderr_line(&format!(
                    "Created key {} ({}). It is shown once: store it now.",
                    view.id, view.start
                ));
            }
        }
        KeysCommand::List { json } => {
            let records = every_page(
                |before| {
                    let query = KeyQuery {
                        limit: 100,
                        before,
                        ..KeyQuery::default()
                    };
                    async move { kv.list_keys(&query).await }
                },
                |r| r.id,
            )
            .await?;
            let mut views = Vec::with_capacity(records.len());
            for r in &records {
                views.push(KeyView::load(kv, r).await?);
            }
            if json {
                stdout_line(&to_json(&views)?);
            } else {
                stdout_line(
                    "ID                                    START        ENABLED  CREDITS       NAME",
                );
                for v in &views {
                    let credits = v
                        .credits
                        .as_ref()
                        .map_or_else(|| "unlimited".to_owned(), |c| c.remaining.to_string());
                    stdout_line(&format!(
                        "{}  {:<11}  {:<7}  {:<12}  {}",
                        v.id, v.start, v.enabled, credits, v.name
                    ));
                }
            }
        }
        KeysCommand::Show { id } => {
            let r = kv.get_key(key_id(&id)?).await?;
            stdout_line(&to_json(&KeyView::load(kv, &r).await?)?);
        }
        KeysCommand::Enable { id } => {
            let kid = refuse(app, "key.enable", None, key_id(&id)).await?;
            kv.set_enabled(kid, true, &cli_actor()).await?;
            stderr_line(&format!("Enabled key {id}."));
        }
        KeysCommand::Disable { id } => {
            let kid = refuse(app, "key.disable", None, key_id(&id)).await?;
            kv.set_enabled(kid, false, &cli_actor()).await?;
            stderr_line(&format!("Disabled key {id}."));
        }
        KeysCommand::Delete { id } => {
            let kid = refuse(app, "key.delete", None, key_id(&id)).await?;
            kv.delete_key(kid, &cli_actor()).await?;
            stderr_line(&format!("Deleted key {id}."));
        }
        KeysCommand::Update(args) => keyflags::update(app, &args).await?,
        KeysCommand::Batch(args) => batch::batch(app, args).await?,
        KeysCommand::Rotate { id, grace } => {
            let grace = grace.as_deref().map(|g| duration(g, "grace")).transpose()?;
            let r = app
                .rotate_key(key_id(&id)?, grace.map(HumanDuration::get), &cli_actor())
                .await?;
            stdout_line(r.key.expose());
            stderr_line(&format!(
                "Rotated key {id}: the new key is {} ({}), shown once; the old key works until {}.",
                r.record.id,
                r.record.start,
                r.old_key_expires_at.to_rfc3339()
            ));
        }
    }
    Ok(())
}

fn rotated_line(r: &RotatedKey) -> String {
    json!({ "id": r.record.id.to_string(), "old_id": r.old_id.to_string(), "key": r.key.expose() })
        .to_string()
}

/// Opens (creating, mode 0600) a file that receives secrets.
pub(crate) fn open_secret_file(path: &Path, append: bool) -> Result<std::fs::File> {
    let ctx = || path.display().to_string();
    let mut opts = OpenOptions::new();
    opts.mode(0o600);
    if append {
        opts.append(true).create(true);
    } else {
        opts.write(true).create_new(true);
    }
    let file = opts.open(path).map_err(|e| Error::io(ctx(), e))?;
    // An existing file keeps its mode on open: tighten it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(ctx(), e))?;
    Ok(file)
}

pub(crate) async fn rotate_due(app: &App, out: Option<&Path>) -> Result<()> {
    let mut file = out.map(|p| open_secret_file(p, true)).transpose()?;
    let done = app
        .kv
        .rotate_due_with(&cli_actor(), |r| {
            let line = rotated_line(r);
            match &mut file {
                // Written and synced before the rotation commits: a crash afterwards cannot
                // lose a key that is already in force.
                Some(f) => {
                    writeln!(f, "{line}")?;
                    f.sync_all()
                }
                None => {
                    let mut o = std::io::stdout().lock();
                    writeln!(o, "{line}")?;
                    o.flush()
                }
            }
        })
        .await?;
    stderr_line(&format!("Rotated {} key(s).", done.len()));
    Ok(())
}

pub(crate) async fn cleanup_expired(app: &App, older_than: &str) -> Result<()> {
    let d = duration(older_than, "older-than")?;
    let deleted = app.kv.cleanup_expired(d.get(), &cli_actor()).await?;
    for id in &deleted {
        stdout_line(&id.to_string());
    }
    stderr_line(&format!("Deleted {} expired key(s).", deleted.len()));
    Ok(())
}

pub(crate) async fn usage_purge(app: &App, older_than: &str) -> Result<()> {
    let keep = duration(older_than, "older-than")?.get();
    if keep < std::time::Duration::from_secs(1) {
        return Err(Error::input("older-than", "must be at least 1s"));
    }
    let purged = app.purge_usage(keep).await?;
    app.audit(
        &cli_actor(),
        "usage.purge",
        None,
        keyvault_core::AuditOutcome::Success,
        json!({ "older_than": older_than.trim(), "events": purged.events,
                "minute_rollups": purged.minute_rollups }),
    )
    .await?;
    stderr_line(&format!(
        "Deleted {} usage event(s) and {} minute rollup(s) older than {}; hourly rollups kept.",
        purged.events,
        purged.minute_rollups,
        older_than.trim()
    ));
    Ok(())
}

/// Alerts fetched per page by `alerts list`.
const ALERT_PAGE: usize = 500;

pub(crate) async fn alerts(app: &App, cmd: AlertsCommand) -> Result<()> {
    match cmd {
        AlertsCommand::List { state, json } => {
            // clap admits only the three names; parsed again rather than trusted blindly.
            let state = state
                .as_deref()
                .map(|s| {
                    AlertState::parse(s).ok_or_else(|| {
                        Error::input("--state", "must be one of firing, acknowledged, resolved")
                    })
                })
                .transpose()?;
            let mut all = Vec::new();
            let mut before = None;
            loop {
                let page = app
                    .alerts(&AlertQuery {
                        state,
                        before,
                        limit: ALERT_PAGE,
                        ..AlertQuery::default()
                    })
                    .await?;
                let more = page.len() == ALERT_PAGE;
                before = page.last().map(|a| a.id);
                all.extend(page);
                if !more {
                    break;
                }
            }
            if json {
                let views: Vec<AlertView> = all.into_iter().map(AlertView::from).collect();
                stdout_line(&to_json(&views)?);
            } else {
                stdout_line(
                    "ID                                    STATE         KIND            STARTED               SUMMARY",
                );
                for a in &all {
                    stdout_line(&format!(
                        "{}  {:<12}  {:<14}  {}  {}",
                        a.id,
                        a.state.as_str(),
                        a.kind,
                        a.started_at.format("%Y-%m-%dT%H:%M:%SZ"),
                        a.summary.replace('\n', " ")
                    ));
                }
            }
        }
        AlertsCommand::Ack { id } => {
            let alert = app.acknowledge_alert(&id, &cli_actor()).await?;
            if alert.state == AlertState::Acknowledged {
                stderr_line(&format!("Acknowledged alert {}.", alert.id));
            } else {
                stderr_line(&format!(
                    "Alert {} is {}: nothing to acknowledge.",
                    alert.id,
                    alert.state.as_str()
                ));
            }
        }
    }
    Ok(())
}

pub(crate) async fn notifiers(app: &App, cmd: NotifiersCommand) -> Result<()> {
    match cmd {
        NotifiersCommand::List { json } => {
            let channels = app.notifier_channels().await?;
            if json {
                let views: Vec<NotifierView> = channels.iter().map(NotifierView::from).collect();
                stdout_line(&to_json(&views)?);
            } else {
                stdout_line(
                    "ID                                    KIND      URL                             EVENTS  NAME",
                );
                for n in &channels {
                    let events = if n.events.is_empty() {
                        "all".to_owned()
                    } else {
                        n.events.join(",")
                    };
                    stdout_line(&format!(
                        "{}  {:<8}  {:<30}  {}  {}",
                        n.id,
                        n.kind,
                        // Scheme and host only: a Slack URL is a credential.
                        crate::notify::guard::shown(&n.url),
                        events,
                        n.name
                    ));
                }
            }
        }
        NotifiersCommand::Test { id } => {
            let out = app.test_notifier(&id, &cli_actor()).await?;
            if out.delivered {
                let status = out
                    .status
                    .map_or_else(String::new, |s| format!(" (HTTP {s})"));
                stdout_line(&format!("delivered{status}"));
            } else {
                // The error names the answer's status when there was one, never the URL.
                let why = out
                    .error
                    .or_else(|| out.status.map(|s| format!("HTTP {s}")))
                    .unwrap_or_else(|| "no answer".to_owned());
                stdout_line(&format!("not delivered: {why}"));
                return Err(Error::Conflict(format!(
                    "the test message to notifier {id} was not delivered"
                )));
            }
        }
    }
    Ok(())
}

pub(crate) async fn audit_verify(app: &App) -> Result<()> {
    let report = app.backends.audit.verify_chain().await?;
    match report.first_broken {
        None => {
            stdout_line(&format!(
                "audit chain intact: {} record(s) verified",
                report.checked
            ));
            Ok(())
        }
        Some(n) => Err(Error::Conflict(format!(
            "audit chain broken at record {n} of {}: it was edited, moved or follows a deleted record",
            report.checked
        ))),
    }
}
