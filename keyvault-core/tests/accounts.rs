//! The account conformance suite on the in-memory store: the reference every backend matches.

use keyvault_core::testing::Accounts;

async fn memory() -> Accounts {
    Accounts::memory()
}

keyvault_core::accounts_suite!(#[tokio::test(flavor = "multi_thread", worker_threads = 2)], setup = memory);
