//! PostgreSQL backend for keyvault (in progress: see the keyvault-core traits it will implement).
