//! The real binary on a database shared with other processes: keys created elsewhere verify,
//! and SIGTERM after 300 requests leaves exactly 300 usage events stored.

mod common;

use std::sync::Arc;

use keyvault_core::{Actor, Keyvault, NewKey, StatsQuery, UsageQuery};
use keyvault_postgres::PgStore;
use keyvault_sqlite::SqliteStore;

/// Creates a key through the library, as the standalone server or a batch job would.
async fn create_key<S>(store: Arc<S>) -> String
where
    S: keyvault_core::KeyStore + keyvault_core::CreditStore + keyvault_core::AuditLog + 'static,
{
    let vault = Keyvault::builder().backend(store).build().unwrap();
    vault
        .create_key(NewKey::new("elsewhere"), &Actor::library())
        .await
        .unwrap()
        .key
        .expose()
        .to_owned()
}

fn run_300(url: &str, key: &str, dir: &std::path::Path) {
    let mut server = common::start(&[("DATABASE_URL", url.as_ref())], dir);
    let _conn = common::send_300(&server.addr, key);
    let status = common::sigterm(&mut server);
    assert!(
        status.success(),
        "{status}: {:?}",
        common::output(&mut server).1
    );
}

async fn assert_300(stats: &dyn UsageQuery) {
    let o = stats.overview(&StatsQuery::last_24h()).await.unwrap();
    assert_eq!(o.calls, 300, "{o:?}");
    let calls = |p: &str| {
        o.by_provider
            .iter()
            .find(|x| x.provider == p)
            .map(|x| x.calls)
    };
    assert_eq!(calls("demo"), Some(200));
    assert_eq!(calls("openai"), Some(50));
    assert_eq!(calls("anthropic"), Some(50));
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_keeps_all_300_usage_events_after_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kv.db").display());
    let store = Arc::new(SqliteStore::connect(&url).await.unwrap());
    store.migrate().await.unwrap();
    let key = create_key(store.clone()).await;
    let (u, k, d) = (url.clone(), key.clone(), dir.path().to_owned());
    tokio::task::spawn_blocking(move || run_300(&u, &k, &d))
        .await
        .unwrap();
    assert_300(&*store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_keeps_all_300_usage_events_after_sigterm() {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/keyvault_test".to_owned());
    // A database of its own, so that nothing else's usage is counted.
    let admin = PgStore::connect(&base).await.unwrap();
    let name = format!("host_app_{}", uuid_like());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(admin.pool())
        .await
        .unwrap();
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("DATABASE_URL has no database name: {base}"),
    };
    let store = Arc::new(PgStore::connect(&url).await.unwrap());
    store.migrate().await.unwrap();
    let key = create_key(store.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (u, k, d) = (url.clone(), key.clone(), dir.path().to_owned());
    tokio::task::spawn_blocking(move || run_300(&u, &k, &d))
        .await
        .unwrap();
    assert_300(&*store).await;
    store.pool().close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(admin.pool())
    .await;
}

fn uuid_like() -> String {
    keyvault_core::uuid::Uuid::now_v7().simple().to_string()
}
