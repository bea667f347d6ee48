//! keyvault-core's account suite on SQLite: one database file per test.

mod common;

use std::sync::Arc;

use keyvault_core::testing::Accounts;

async fn sqlite() -> Accounts {
    let db = common::TestDb::new();
    let store = db.store().await;
    Accounts::of(Arc::new(store)).keeping(db)
}

keyvault_core::accounts_suite!(#[tokio::test(flavor = "multi_thread")], setup = sqlite);
