//! `bare-axum`: the host application's `GET /v1/hello` with no key check, the baseline that
//! `scripts/bench-http.sh` compares the keyvault layer against. Listens on the address in
//! `KEYVAULT_BIND` (default `127.0.0.1:8082`).

use std::net::SocketAddr;

use axum::{Json, Router, routing::get};
use serde_json::{Value, json};

async fn hello() -> Json<Value> {
    // The same body shape and size as host-app's answer.
    Json(json!({ "message": "hello", "key_id": "01900000-0000-7000-8000-000000000000" }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let bind: SocketAddr = std::env::var("KEYVAULT_BIND")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8082)));
    let app = Router::new().route("/v1/hello", get(hello));
    let listener = tokio::net::TcpListener::bind(bind).await?;
    // Plain `serve`, without the peer address host-app records: the strictest baseline.
    axum::serve(listener, app).await
}
