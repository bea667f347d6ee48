//! The conformance suite on the in-memory backends: the reference every backend matches.

use keyvault_core::testing::Backends;

async fn memory() -> Backends {
    Backends::memory()
}

keyvault_core::conformance_suite!(#[tokio::test(flavor = "multi_thread", worker_threads = 2)], setup = memory);
