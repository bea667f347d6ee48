//! SQLite backend for keyvault (in progress).
