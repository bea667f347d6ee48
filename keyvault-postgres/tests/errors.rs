//! A failure of the database reaches callers as keyvault-core's `Backend` error whose source
//! is this crate's `Error`, keeping sqlx's error (and the SQLSTATE) beneath it.

use std::error::Error as _;

use keyvault_core::{AuditLog, AuditQuery, UserStore};
use keyvault_postgres::{Error, PgStore};
use sqlx::PgPool;

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

#[sqlx::test(migrations = false)]
async fn a_failed_statement_keeps_sqlx_and_the_sqlstate(pool: PgPool) {
    let s = PgStore::new(pool.clone());
    s.migrate().await.unwrap();
    sqlx::query("DROP TABLE kv_sessions, kv_users")
        .execute(&pool)
        .await
        .unwrap();
    let err = s.users().await.unwrap_err();
    let keyvault_core::Error::Backend(b) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(b.backend(), "postgres");
    let ours = b.source().unwrap().downcast_ref::<Error>().unwrap();
    let Error::Sqlx(sqlx::Error::Database(db)) = ours else {
        panic!("{ours:?}")
    };
    assert_eq!(db.code().as_deref(), Some("42P01"), "undefined_table");
    // The server's one-line message says each cause once: sqlx's text already ends with its
    // source's, which the line then skips.
    let line = one_line(&err);
    assert!(
        line.starts_with(
            "postgres backend failed: database request failed: error returned from database: "
        ),
        "{line}"
    );
    assert_eq!(
        line.matches("relation \"kv_users\" does not exist").count(),
        1,
        "{line}"
    );
}

#[sqlx::test(migrations = false)]
async fn an_undecodable_stored_value_names_its_column(pool: PgPool) {
    let s = PgStore::new(pool.clone());
    s.migrate().await.unwrap();
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
        .execute(&pool)
        .await
        .unwrap();
    let err = s
        .list(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap_err();
    let keyvault_core::Error::Backend(b) = &err else {
        panic!("{err:?}")
    };
    let ours = b.source().unwrap().downcast_ref::<Error>().unwrap();
    assert!(
        matches!(
            ours,
            Error::Corrupt {
                column: "kv_audit.outcome",
                ..
            }
        ),
        "{ours:?}"
    );
    assert_eq!(
        causes(&err),
        [
            "postgres backend failed",
            "stored kv_audit.outcome does not decode",
            "unknown outcome \"maybe\"",
        ]
    );
}
