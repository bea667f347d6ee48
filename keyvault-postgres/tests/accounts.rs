//! keyvault-core's account suite against PostgreSQL, a fresh database per test.

use std::sync::Arc;

use keyvault_core::testing::Accounts;
use keyvault_postgres::PgStore;
use sqlx::PgPool;

async fn postgres(pool: PgPool) -> Accounts {
    let store = PgStore::new(pool);
    store.migrate().await.unwrap();
    Accounts::of(Arc::new(store))
}

keyvault_core::accounts_suite!(#[sqlx::test(migrations = false)], setup = postgres, args = (pool: PgPool));
