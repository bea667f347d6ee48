//! `keyvault backup` and `keyvault restore`: everything needed to rebuild a server, as
//! versioned NDJSON — one JSON object a line, a header first and a footer with counts last
//! (so that a truncated file is refused).
//!
//! Keys are written with their digests (never plaintexts) and live credit balances; tokens
//! with their digests; dashboard users with their password hashes and whether they are
//! enabled; settings; the audit log record by record, so that the restored chain hashes to
//! the same values. Sessions and job leases are left out on purpose: a restored session would
//! sign someone in again, and a lease belongs to a process that no longer runs.
//!
//! Version 2 adds users' `enabled`; version 1 files (all users enabled) are still read.

use std::{
    collections::{BTreeMap, HashSet},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use keyvault_core::{
    AuditQuery, AuditRecord, ChainVerifier, KeyDigest, KeyQuery, KeyRecord, KeyWrite, Restoration,
    TokenRecord, TokenStore, UserRecord, every_page, link_audit,
};
use serde::{Deserialize, Serialize};

use crate::{
    app::App,
    commands::open_secret_file,
    error::{Error, Result},
    out::stderr_line,
};

/// The format's name and version: a reader refuses versions it does not know.
const FORMAT: &str = "keyvault-backup";
const VERSION: u32 = 2;
/// Versions this keyvault restores.
const READS: [u32; 2] = [1, 2];
/// A fixed text whose digest tells whether two processes hash keys alike (same pepper).
const HASHER_PROBE: &str = "keyvault backup hasher probe";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Header {
        format: String,
        version: u32,
        created_at: DateTime<Utc>,
        source: String,
        hasher_check: String,
    },
    Setting {
        name: String,
        value: String,
    },
    User(UserRecord),
    Token {
        #[serde(flatten)]
        row: TokenRecord,
        digest: String,
    },
    Key {
        record: Box<KeyRecord>,
        digest: String,
        /// The live balance of the key's credits when the backup was taken.
        balance: Option<u64>,
    },
    Audit(AuditRecord),
    Footer {
        counts: BTreeMap<String, u64>,
    },
}

impl Line {
    fn kind(&self) -> &'static str {
        match self {
            Line::Header { .. } => "header",
            Line::Setting { .. } => "setting",
            Line::User(_) => "user",
            Line::Token { .. } => "token",
            Line::Key { .. } => "key",
            Line::Audit(_) => "audit",
            Line::Footer { .. } => "footer",
        }
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    out.with_file_name(name)
}

/// Writes the backup to `out` (mode 0600; refused if `out` exists).
pub(crate) async fn backup(app: &App, out: &Path) -> Result<()> {
    // An earlier backup is never overwritten; an empty file (one made by `mktemp` to
    // reserve the name) is replaced by the new backup, mode 0600.
    if let Ok(meta) = std::fs::symlink_metadata(out)
        && !(meta.is_file() && meta.len() == 0)
    {
        return Err(Error::input(
            "out",
            format!("{} exists already and is not empty", out.display()),
        ));
    }
    let tmp = partial_path(out);
    let _ = std::fs::remove_file(&tmp);
    let file = open_secret_file(&tmp, false)?;
    let mut w = std::io::BufWriter::new(file);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut write = |line: &Line, counts: &mut BTreeMap<String, u64>| -> Result<()> {
        *counts.entry(line.kind().to_owned()).or_default() += 1;
        let text =
            serde_json::to_string(line).map_err(|e| Error::Internal(format!("json: {e}")))?;
        writeln!(w, "{text}").map_err(|e| Error::io(tmp.display().to_string(), e))
    };
    let result = async {
        write(
            &Line::Header {
                format: FORMAT.into(),
                version: VERSION,
                created_at: App::now(),
                source: app.config.db.kind().into(),
                hasher_check: app.config.hasher.digest(HASHER_PROBE).to_hex(),
            },
            &mut counts,
        )?;
        for (name, value) in app.backends.settings.settings().await? {
            write(&Line::Setting { name, value }, &mut counts)?;
        }
        for u in app.backends.users.users().await? {
            write(&Line::User(u), &mut counts)?;
        }
        for row in app.backends.tokens.all_tokens().await? {
            let digest = row.digest.to_hex();
            write(&Line::Token { row, digest }, &mut counts)?;
        }
        let mut keys = every_page(
            |before| {
                let query = KeyQuery {
                    limit: 100,
                    before,
                    ..KeyQuery::default()
                };
                async move { app.kv.list_keys(&query).await }
            },
            |r| r.id,
        )
        .await?;
        // Oldest first: a rotated key's predecessor comes before it, as in a live store.
        keys.reverse();
        for record in keys {
            let balance = app.kv.credits_remaining(&record).await?;
            let digest = record.digest.to_hex();
            write(
                &Line::Key {
                    record: Box::new(record),
                    digest,
                    balance,
                },
                &mut counts,
            )?;
        }
        let mut records = every_page(
            |before_seq| {
                let query = AuditQuery {
                    limit: 500,
                    before_seq,
                    ..AuditQuery::default()
                };
                async move { app.backends.audit.list(&query).await }
            },
            |r| r.seq,
        )
        .await?;
        records.reverse();
        for r in records {
            write(&Line::Audit(r), &mut counts)?;
        }
        let footer = Line::Footer {
            counts: counts.clone(),
        };
        write(&footer, &mut counts)?;
        Ok::<_, Error>(())
    }
    .await;
    let file = w
        .into_inner()
        .map_err(|e| Error::io(tmp.display().to_string(), e.into_error()));
    let finished = result.and_then(|()| {
        let f = file?;
        f.sync_all()
            .map_err(|e| Error::io(tmp.display().to_string(), e))?;
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out.display().to_string(), e))
    });
    if finished.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    finished?;
    stderr_line(&format!(
        "Backup written to {}: {} key(s), {} token(s), {} admin user(s), {} audit record(s).",
        out.display(),
        counts.get("key").unwrap_or(&0),
        counts.get("token").unwrap_or(&0),
        counts.get("user").unwrap_or(&0),
        counts.get("audit").unwrap_or(&0),
    ));
    Ok(())
}

fn read_lines(path: &Path) -> Result<Vec<Line>> {
    let ctx = || path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io(ctx(), e))?;
    let mut lines = Vec::new();
    for (i, text) in BufReader::new(file).lines().enumerate() {
        let text = text.map_err(|e| Error::io(ctx(), e))?;
        if text.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(&text).map_err(|e| {
            Error::input(
                "in",
                format!(
                    "line {} is not a backup record: {}",
                    i + 1,
                    e.classify_text()
                ),
            )
        })?;
        lines.push(line);
    }
    Ok(lines)
}

trait ClassifyText {
    fn classify_text(&self) -> &'static str;
}

impl ClassifyText for serde_json::Error {
    // The message of a JSON error may quote the line, which holds digests and hashes: only
    // its category is shown.
    fn classify_text(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "malformed JSON",
            serde_json::error::Category::Data => "unexpected content",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

/// Restores a backup into an empty (or freshly migrated) database.
pub(crate) async fn restore(app: &App, input: &Path) -> Result<()> {
    let lines = read_lines(input)?;
    let bad = |msg: &str| Error::input("in", msg.to_owned());
    let Some(Line::Header {
        format,
        version,
        created_at,
        hasher_check,
        ..
    }) = lines.first()
    else {
        return Err(bad("not a keyvault backup (no header)"));
    };
    if format != FORMAT {
        return Err(bad("not a keyvault backup"));
    }
    if !READS.contains(version) {
        return Err(bad(&format!(
            "backup format version {version} is not supported (this keyvault reads 1 and 2)"
        )));
    }
    let Some(Line::Footer { counts }) = lines.last() else {
        return Err(bad("the backup is truncated (no footer)"));
    };
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for l in &lines[..lines.len() - 1] {
        *seen.entry(l.kind().to_owned()).or_default() += 1;
    }
    if &seen != counts {
        return Err(bad("the backup's records do not match its footer"));
    }
    // Digests compare in constant time (`KeyDigest`'s `PartialEq`): the probe is public, but
    // what it is digested with is the pepper.
    let same_pepper = keyvault_core::KeyDigest::from_hex(hasher_check)
        .is_ok_and(|check| check == app.config.hasher.digest(HASHER_PROBE));
    if !same_pepper {
        return Err(Error::input(
            "KEYVAULT_PEPPER",
            "differs from the one the backup was made with: its keys would not verify",
        ));
    }
    // Everything that can be wrong with the file is found before anything is written, so
    // that a refused backup leaves the database as it was.
    let mut audit: Vec<AuditRecord> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Audit(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    audit.sort_by_key(|r| r.seq);
    let mut chain = ChainVerifier::default();
    for r in &audit {
        chain.push(r);
    }
    if let Some(at) = chain.finish().first_broken {
        return Err(bad(&format!(
            "the audit chain breaks at record {at}: the backup was altered"
        )));
    }
    // Key digests, parsed here once, in the order of the key lines.
    let (mut key_ids, mut digests) = (HashSet::new(), HashSet::new());
    let (mut key_digests, mut token_digests) = (Vec::new(), Vec::new());
    for line in &lines {
        match line {
            Line::Token { digest, .. } => {
                token_digests.push(
                    KeyDigest::from_hex(digest).map_err(|_| bad("a token digest is malformed"))?,
                );
            }
            Line::Key { record, digest, .. } => {
                let d =
                    KeyDigest::from_hex(digest).map_err(|_| bad("a key digest is malformed"))?;
                if !key_ids.insert(record.id) || !digests.insert(d) {
                    return Err(bad("a key appears twice"));
                }
                key_digests.push(d);
            }
            _ => {}
        }
    }
    // The chain the store will write, linked again from the first record, must be the
    // backup's own record for record: checked here, so that a restore refused for it writes
    // nothing.
    let events: Vec<_> = audit.iter().map(|r| r.event.clone()).collect();
    let relinked = link_audit(None, &events);
    if relinked
        .iter()
        .zip(&audit)
        .any(|(a, b)| a.seq != b.seq || a.hash != b.hash)
    {
        return Err(bad(
            "the backup's audit chain does not start at its first record: the backup was altered",
        ));
    }
    let mut key_digests = key_digests.into_iter();
    let mut token_digests = token_digests.into_iter();
    ensure_empty(app).await?;
    // A balance cached in Redis under a restored quota (by an earlier deployment) would
    // override the restored one. Cleared before anything is written: a Redis that cannot
    // be reached then leaves the database as it was.
    let mut cleared = HashSet::new();
    for line in &lines {
        if let Line::Key { record, .. } = line
            && cleared.insert(record.quota_id)
        {
            app.backends.invalidate_balance(record.quota_id).await?;
        }
    }

    // Everything goes to the store as one `Restoration`, written in one transaction by the
    // backend (`RestoreTarget`): the stores' own writes (`create_user`, `apply`, `append`…)
    // each commit on their own, and a restore made of them, cut short by a bad record, a
    // lost connection or a dead server, left half a database behind that a second restore
    // then refused. Building the whole restoration in memory first costs what reading the
    // file already costs.
    let backup_time = *created_at;
    let mut quotas = HashSet::new();
    let mut restoration = Restoration::new();
    for line in &lines {
        match line {
            Line::Header { .. } | Line::Footer { .. } | Line::Audit(_) => {}
            // The backup's own audit chain is restored as it is: these writes add none of
            // their own.
            Line::Setting { name, value } => {
                restoration.settings.push((name.clone(), value.clone()));
            }
            Line::User(u) => restoration.users.push(u.clone()),
            Line::Token { row, .. } => restoration.tokens.push(TokenRecord {
                digest: token_digests
                    .next()
                    .ok_or_else(|| bad("a token line has no digest"))?,
                ..row.clone()
            }),
            Line::Key {
                record, balance, ..
            } => {
                let mut record = (**record).clone();
                record.digest = key_digests
                    .next()
                    .ok_or_else(|| bad("a key line has no digest"))?;
                restoration
                    .keys
                    .extend(key_writes(record, *balance, backup_time, &mut quotas));
            }
        }
    }
    restoration.audit = events;
    let (n_keys, n_tokens, n_users) = (
        counts.get("key").copied().unwrap_or(0),
        restoration.tokens.len(),
        restoration.users.len(),
    );
    app.backends.restore.restore(&restoration).await?;
    // Again now that the restored balances are stored: a running server spending on one of
    // these quotas meanwhile may have cached a balance read from the empty database.
    for quota in &cleared {
        app.backends.invalidate_balance(*quota).await?;
    }
    stderr_line(&format!(
        "Restored {n_keys} key(s), {n_tokens} token(s), {n_users} admin user(s) and {} audit record(s).",
        audit.len()
    ));
    Ok(())
}

/// The writes that recreate a key with its balance. The first key of a credit balance
/// (its `quota_id`) opens the balance: it is inserted with the backed-up balance as its
/// credits, stamped at the backup's time (so that a refill already applied is not applied
/// again), then set back to its real configuration without touching the balance.
fn key_writes(
    record: KeyRecord,
    balance: Option<u64>,
    backup_time: DateTime<Utc>,
    quotas: &mut HashSet<keyvault_core::KeyId>,
) -> Vec<KeyWrite> {
    let first_of_quota = quotas.insert(record.quota_id);
    match (record.credits, balance) {
        (Some(credits), Some(balance)) if first_of_quota => {
            let mut opening = record.clone();
            opening.credits = Some(keyvault_core::Credits {
                remaining: balance,
                ..credits
            });
            opening.updated_at = backup_time.max(record.updated_at);
            opening.revision = record.revision.saturating_sub(1);
            let revision = opening.revision + 1;
            vec![
                KeyWrite::Insert(opening),
                KeyWrite::Update {
                    record: KeyRecord { revision, ..record },
                    reset_credits: false,
                },
            ]
        }
        _ => vec![KeyWrite::Insert(record)],
    }
}

async fn ensure_empty(app: &App) -> Result<()> {
    let keys = app
        .kv
        .list_keys(&KeyQuery {
            limit: 1,
            ..KeyQuery::default()
        })
        .await?;
    let audit = app
        .backends
        .audit
        .list(&AuditQuery {
            limit: 1,
            ..AuditQuery::default()
        })
        .await?;
    // Revoked tokens count: they are data a restore would collide with.
    let tokens = app.backends.tokens.all_tokens().await?;
    let users = app.backends.users.users().await?;
    let holds = !keys.items.is_empty()
        || !audit.items.is_empty()
        || !tokens.is_empty()
        || !users.is_empty();
    if holds {
        return Err(Error::Conflict(
            "the database holds data; restore only into an empty or freshly migrated one".into(),
        ));
    }
    Ok(())
}
