//! # keyvault-admin
//!
//! The keyvault server as a library: its configuration, the shared [`App`], the REST API,
//! dashboard sign-in, metrics and API documentation as one axum [`Router`](axum::Router), the
//! server loop [`serve`], backups, and the administration commands of the `keyvault` binary.
//!
//! The standalone server (`examples/admin-server`, binary `keyvault`) only parses its command
//! line and calls [`cli::run`]. A host application can instead mount the admin API and
//! dashboard inside its own axum app, under a prefix of its choosing:
//!
//! ```no_run
//! use keyvault_admin::{Admin, App, Config};
//!
//! # async fn demo() -> keyvault_admin::Result<()> {
//! let app = App::open(Config::from_env()?).await?;
//! let admin = Admin::new(app);
//! let host = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "the host's own page" }))
//!     .nest("/kv", admin.router());
//! // Paths, redirects, cookie paths and the API docs now sit under `/kv`.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! axum::serve(
//!     listener,
//!     host.into_make_service_with_connect_info::<std::net::SocketAddr>(),
//! )
//! .await
//! .unwrap();
//! admin.shutdown().await; // writes the usage events still queued
//! # Ok(()) }
//! ```
//!
//! Nothing process-wide is installed behind the host's back: the Prometheus recorder is
//! handed out by [`Admin::metrics_recorder`] for the host to install (the standalone server
//! installs it), and so is the tracing subscriber ([`logs::init`] installs the server's own;
//! a host adds [`logs::layer`] to its subscriber for `/v1/logs`).
//!
//! ## Feature flags
//! None: SQLite, PostgreSQL and Redis are all built in and chosen by `DATABASE_URL` and
//! `REDIS_URL` at run time.

mod admin;
mod alerts;
mod api;
mod app;
mod assets;
mod auth;
mod backends;
mod backup;
pub mod cli;
mod commands;
mod config;
mod dashboard;
mod error;
mod jobs;
pub mod logs;
pub mod notify;
mod out;
mod serve;
mod views;

pub use admin::Admin;
pub use alerts::{NewRule, RulePatch, Transitions};
pub use app::{App, CreatedToken};
// Roles are keyvault-core's; named here for hosts that create tokens and users.
pub use config::{Config, DatabaseUrl};
pub use error::{Code, Error, Problem, Result};
pub use jobs::JobRun;
pub use keyvault_core::Role;
pub use notify::manage::{CreatedNotifier, NewNotifier, TestOutcome};
pub use serve::{serve, shutdown_signal};

// The guides' Rust examples are compiled (and, unless marked `no_run`, run) as doctests of
// this crate: it is the one that depends on everything they use (the facade with its
// middleware and deployment wiring, the admin library, the conformance kit). Their Chinese
// twins hold the same blocks, as the docs test (`examples/admin-server/tests/docs.rs`) checks.
#[doc = include_str!("../../docs/library.md")]
#[cfg(doctest)]
pub struct LibraryGuideDoctests;

#[doc = include_str!("../../docs/plugins.md")]
#[cfg(doctest)]
pub struct PluginsGuideDoctests;

#[doc = include_str!("../../docs/server.md")]
#[cfg(doctest)]
pub struct ServerGuideDoctests;
