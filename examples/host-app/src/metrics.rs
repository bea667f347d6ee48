//! `GET /metrics`: the usage recorder's counters (events dropped when its buffer was full
//! included) and the key cache's, in Prometheus text, for loopback callers only.

use std::{fmt::Write, net::SocketAddr};

use axum::{
    Router,
    extract::{ConnectInfo, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use keyvault_core::{Keyvault, UsageRecorder};

#[derive(Clone)]
struct Sources {
    recorder: UsageRecorder,
    vault: Keyvault,
}

/// The `/metrics` route.
pub fn metrics_router(recorder: UsageRecorder, vault: Keyvault) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(Sources { recorder, vault })
}

async fn metrics(State(s): State<Sources>, req: Request) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>();
    // Counters say how busy the service is: not for the open internet.
    if !peer.is_some_and(|ConnectInfo(a)| a.ip().to_canonical().is_loopback()) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let r = s.recorder.stats();
    let c = s.vault.cache_stats();
    let mut body = String::new();
    for (name, help, value) in [
        (
            "keyvault_usage_recorded_total",
            "Usage events queued.",
            r.recorded,
        ),
        (
            "keyvault_usage_dropped_total",
            "Usage events dropped: the buffer was full.",
            r.dropped,
        ),
        (
            "keyvault_usage_written_total",
            "Usage events written to the sink.",
            r.written,
        ),
        (
            "keyvault_usage_failed_total",
            "Usage events lost: the sink kept failing.",
            r.failed,
        ),
        (
            "keyvault_key_cache_hits_total",
            "Key lookups answered from the cache.",
            c.hits,
        ),
        (
            "keyvault_key_cache_misses_total",
            "Key lookups that read the store.",
            c.misses,
        ),
    ] {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
