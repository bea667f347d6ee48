//! # keyvault-axum
//!
//! A tower [`Layer`](tower::Layer) that puts [keyvault](https://crates.io/crates/keyvault) in
//! front of an axum application: it reads the API key of each request, verifies it in-process
//! (a digest and a cache lookup; limits and credits from the configured backends), answers
//! rejections exactly as CONTRACT §2 says, hands the verified key to handlers, and records a
//! usage event for every request — route template, method, status, latency, provider,
//! outcome — off the response path.
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use keyvault_axum::{KeyvaultLayer, RouteConfig, VerifiedKey};
//! use keyvault_core::{
//!     Keyvault, RecorderConfig, UsageRecorder,
//!     memory::{MemoryStore, MemoryUsage},
//! };
//!
//! async fn hello(key: VerifiedKey) -> String {
//!     format!("hello, key {}", key.id())
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let vault = Keyvault::builder().backend(Arc::new(MemoryStore::new())).build().unwrap();
//! // Usage as per-minute rollups, whose memory does not grow with traffic; a database
//! // backend's store is a sink too.
//! let usage = Arc::new(MemoryUsage::new());
//! let recorder = UsageRecorder::spawn(usage, RecorderConfig::default());
//!
//! let app: Router = Router::new()
//!     .route("/v1/hello", get(hello))
//!     .layer(
//!         KeyvaultLayer::new(vault)
//!             .with_recorder(recorder.clone())
//!             .with_route("/v1/hello", RouteConfig::new().with_provider("demo")),
//!     );
//! // Serve `app.into_make_service_with_connect_info::<std::net::SocketAddr>()` so that
//! // IP allow-lists see the caller; on shutdown, `recorder.shutdown().await` flushes usage.
//! # let _ = app;
//! # recorder.shutdown().await;
//! # });
//! ```
//!
//! ## Answers
//! | outcome | status | headers |
//! |---|---|---|
//! | `MISSING` | 401 | `WWW-Authenticate: Bearer` |
//! | `NOT_FOUND`, `DISABLED`, `EXPIRED` | 401 | `WWW-Authenticate: Bearer error="invalid_token"` |
//! | `FORBIDDEN`, `INSUFFICIENT_PERMISSIONS` | 403 | |
//! | `RATE_LIMITED` | 429 | `Retry-After` (the longest wait of the exhausted limits) |
//! | `USAGE_EXCEEDED` | 429 | |
//! | backend failure | 503 | `Retry-After: 1` (never 401, never let through) |
//!
//! Bodies are `application/problem+json` `{"type","title","status","code"}`. Responses for
//! keys with rate limits carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
//! for the tightest limit. Keys are read from `Authorization: Bearer` (any case of the scheme)
//! or `X-API-Key`, never from the URL query.
//!
//! ## Feature flags
//! None: the crate depends on `tower`, `http` and axum (without default features) for
//! `MatchedPath` and `ConnectInfo`, and on no backend.

mod extract;
mod layer;
mod problem;
mod route;
mod service;
mod source;

pub use extract::{MissingKeyvaultLayer, Provider, VerifiedKey};
pub use layer::{DEFAULT_API_KEY_HEADER, KeyvaultLayer, X_FORWARDED_FOR};
pub use problem::{PROBLEM_JSON, Problem};
pub use route::{Cost, RouteConfig};
pub use service::{KeyvaultService, ResponseFuture};
pub use source::{Presented, TrustedProxies, bearer_token, client_ip, peer_ip, presented_key};
