//! A host application that mounts keyvault's admin API and dashboard under `/kv`, beside its
//! own routes, which the keyvault layer protects. Keys created through `/kv/v1/keys` verify on
//! `/api/hello` in the same process, and the host's calls show in `/kv/v1/stats/overview`.
//!
//! The host decides what is process-wide: it installs the admin's metrics recorder and its
//! own tracing subscriber, serves with `ConnectInfo`, and calls [`Admin::shutdown`] after the
//! server stops.

use axum::{Json, Router, routing::get};
use keyvault_admin::Admin;
use keyvault_axum::{KeyvaultLayer, RouteConfig, VerifiedKey};
use serde_json::{Value, json};

/// Where the admin is mounted.
pub const ADMIN_PREFIX: &str = "/kv";

/// The host's whole router: its own API behind the keyvault layer, the admin under
/// [`ADMIN_PREFIX`], and a page of its own at `/`.
pub fn router(admin: &Admin) -> Router {
    let layer = KeyvaultLayer::new(admin.app().keyvault().clone())
        .with_recorder(admin.usage_recorder())
        .with_route("/api/hello", RouteConfig::new().with_provider("demo"));
    Router::new()
        .route("/api/hello", get(hello))
        // Only the routes above; unknown paths stay 404.
        .route_layer(layer)
        .route("/", get(|| async { "the host's own page" }))
        .nest(ADMIN_PREFIX, admin.router())
}

async fn hello(key: VerifiedKey) -> Json<Value> {
    Json(json!({ "message": "hello", "key_id": key.id() }))
}
