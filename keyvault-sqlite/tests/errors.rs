//! A failure of the database reaches callers as keyvault-core's `Backend` error whose source
//! is this crate's `Error`, keeping sqlx's error (and SQLite's code) beneath it.

mod common;

use std::error::Error as _;

use keyvault_core::{AuditLog, AuditQuery, UserStore};
use keyvault_sqlite::{Error, SqliteStore};

/// Each cause in the chain, in order.
fn causes(e: &keyvault_core::Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        out.push(s.to_string());
        src = s.source();
    }
    out
}

/// The line the server prints (keyvault-admin's `cli_line`): the causes joined, a cause
/// whose text already ends the line skipped.
fn one_line(e: &keyvault_core::Error) -> String {
    let mut line = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let segment = format!(": {s}");
        if !line.ends_with(&segment) {
            line.push_str(&segment);
        }
        src = s.source();
    }
    line
}

fn ours(e: &keyvault_core::Error) -> &Error {
    let keyvault_core::Error::Backend(b) = e else {
        panic!("{e:?}")
    };
    assert_eq!(b.backend(), "sqlite");
    b.source().unwrap().downcast_ref::<Error>().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_statement_keeps_sqlx_and_sqlites_code() {
    let db = common::TestDb::new();
    let s = db.store().await;
    sqlx::query("DROP TABLE kv_sessions")
        .execute(s.pool())
        .await
        .unwrap();
    sqlx::query("DROP TABLE kv_users")
        .execute(s.pool())
        .await
        .unwrap();
    let err = s.users().await.unwrap_err();
    let Error::Sqlx(sqlx::Error::Database(e)) = ours(&err) else {
        panic!("{err:?}")
    };
    assert_eq!(
        e.code().as_deref(),
        Some("1"),
        "SQLITE_ERROR: no such table"
    );
    // The server's one-line message says each cause once: sqlx's text already ends with its
    // source's, which the line then skips.
    let line = one_line(&err);
    assert!(
        line.starts_with(
            "sqlite backend failed: database request failed: error returned from database: "
        ),
        "{line}"
    );
    assert_eq!(line.matches("no such table: kv_users").count(), 1, "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undecodable_stored_value_names_its_column() {
    let db = common::TestDb::new();
    let s = db.store().await;
    s.append(&[keyvault_core::AuditEvent::new(
        chrono::Utc::now(),
        &keyvault_core::Actor::library(),
        "x",
        None,
        keyvault_core::AuditOutcome::Success,
        serde_json::json!({}),
    )])
    .await
    .unwrap();
    sqlx::query("UPDATE kv_audit SET outcome = 'maybe'")
        .execute(s.pool())
        .await
        .unwrap();
    let err = s
        .list(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            ours(&err),
            Error::Corrupt {
                column: "kv_audit.outcome",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        causes(&err),
        [
            "sqlite backend failed",
            "stored kv_audit.outcome does not decode",
            "unknown outcome \"maybe\"",
        ]
    );
}

/// A directory that cannot be created names itself, and keeps the I/O error.
#[tokio::test(flavor = "multi_thread")]
async fn an_uncreatable_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let url = format!("sqlite://{}/sub/kv.db", file.display());
    let err = SqliteStore::connect(&url).await.unwrap_err();
    let Error::CreateDir { path, source } = ours(&err) else {
        panic!("{err:?}")
    };
    assert_eq!(path, &file.join("sub"));
    assert!(source.raw_os_error().is_some(), "{source:?}");
}
