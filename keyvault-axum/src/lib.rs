//! axum/tower middleware for keyvault (in progress).
