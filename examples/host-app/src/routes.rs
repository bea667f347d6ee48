//! The routes of CONTRACT §5.

use axum::{
    Json, Router,
    body::Bytes,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use keyvault_axum::{KeyvaultLayer, Problem, RouteConfig, VerifiedKey};
use serde_json::{Value, json};

/// The application: three protected routes and an unprotected health check. `layer` is the
/// keyvault layer with the host's settings (recorder, proxies); the per-route providers and
/// costs are added here.
pub fn router(layer: KeyvaultLayer) -> Router {
    Router::new()
        .route("/v1/hello", get(hello))
        .route("/v1/chat", post(echo))
        .route("/v1/embed", post(echo))
        .layer(
            layer
                .with_route("/v1/hello", RouteConfig::new().with_provider("demo"))
                .with_route("/v1/chat", RouteConfig::new().with_provider("openai"))
                .with_route("/v1/embed", RouteConfig::new().with_provider("anthropic")),
        )
        // Added after the layer, so it is not behind it.
        .route("/healthz", get(healthz))
}

async fn hello(key: VerifiedKey) -> Json<Value> {
    Json(json!({ "message": "hello", "key_id": key.id() }))
}

/// Echoes the JSON body back byte for byte (key order and number formatting included).
/// Any body that parses as JSON is accepted whatever its `Content-Type`, so that a client
/// such as `curl -d '{…}'`, which labels it as a form, is answered too.
async fn echo(body: Bytes) -> Response {
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return Problem::new(StatusCode::BAD_REQUEST, "INVALID_JSON")
            .title("The request body is not JSON")
            .into_response();
    }
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}
