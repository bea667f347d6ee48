//! The REST API (CONTRACT §4).

pub(crate) mod alerts;
mod docs;
mod extract;
mod headers;
mod keys;
pub(crate) mod live;
pub(crate) mod mount;
pub(crate) mod notifiers;
mod openapi;
mod pagination;
mod reports;
pub(crate) mod shapes;
mod successor;
mod timeout;
mod tokens;
mod verify;
pub(crate) mod wire;

use std::time::Instant;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderValue, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use keyvault_core::UsageRecorder;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tracing::Instrument;

pub(crate) use extract::{Caller, Ctx, RequestId, redact};

use crate::{
    app::App,
    auth::Need,
    error::{Code, Error, Problem},
};

/// Largest request body accepted.
pub(crate) const BODY_LIMIT: usize = 1 << 20;

/// What every handler sees.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) app: App,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) recorder: UsageRecorder,
    /// The dashboard's sign-in lockout and throttle.
    pub(crate) guard: std::sync::Arc<crate::dashboard::SignInGuard>,
    /// Verifications `/v1/keys/verify` refused, for the live statistics.
    pub(crate) rejections: std::sync::Arc<live::Rejections>,
    /// Requests being handled, at most `KEYVAULT_MAX_CONCURRENCY` ([`shed`]).
    pub(crate) in_flight: std::sync::Arc<tokio::sync::Semaphore>,
}

/// The whole application.
pub(crate) fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/batch", post(keys::batch))
        .route("/v1/keys/verify", post(verify::verify))
        .route(
            "/v1/keys/{id}",
            get(keys::get).patch(keys::update).delete(keys::delete),
        )
        .route("/v1/keys/{id}/rotate", post(keys::rotate))
        .route("/v1/keys/successor", post(successor::claim))
        .route("/v1/keys/{id}/end-grace", post(successor::end_grace))
        .route("/v1/usage", post(verify::usage))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/v1/stats/overview", get(reports::stats))
        .route("/v1/stats/live", get(live::live))
        .route("/v1/stats/stream", get(live::stream))
        .route(
            "/v1/alert-rules",
            get(alerts::list_rules).post(alerts::create_rule),
        )
        .route(
            "/v1/alert-rules/{id}",
            get(alerts::get_rule)
                .patch(alerts::update_rule)
                .delete(alerts::delete_rule),
        )
        .route("/v1/alerts", get(alerts::list_alerts))
        .route("/v1/alerts/{id}/ack", post(alerts::acknowledge))
        .route(
            "/v1/notifiers",
            get(notifiers::list).post(notifiers::create),
        )
        .route(
            "/v1/notifiers/{id}",
            axum::routing::delete(notifiers::delete),
        )
        .route("/v1/notifiers/{id}/test", post(notifiers::test))
        .route("/v1/audit", get(reports::audit))
        .route("/v1/logs", get(reports::logs))
        .merge(crate::dashboard::routes())
        .route_layer(middleware::from_fn(note_route))
        .with_state(state.clone());
    Router::new()
        .merge(api)
        .merge(docs::routes())
        .merge(crate::assets::routes().route_layer(middleware::from_fn(note_route)))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), shed))
        .layer(middleware::from_fn_with_state(state, timeout::limit))
        .layer(middleware::from_fn(headers::secure))
        .layer(middleware::from_fn(observe))
}

/// Routes never shed: health checks must answer under load (a balancer that sees 503 there
/// takes the instance out), and a live stream holds its connection for as long as it is open.
const NEVER_SHED: [&str; 3] = ["/healthz", "/readyz", "/v1/stats/stream"];

/// Load shedding: beyond `KEYVAULT_MAX_CONCURRENCY` requests in flight, a request is answered
/// at once with 503 `overloaded` and `Retry-After: 1` instead of queueing behind the others
/// (the seed's "control concurrency"). A request holds its place until its response is ready.
async fn shed(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if NEVER_SHED.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    match st.in_flight.clone().try_acquire_owned() {
        Ok(permit) => {
            let res = next.run(req).await;
            drop(permit);
            res
        }
        Err(_) => {
            metrics::counter!("keyvault_http_shed_total").increment(1);
            let mut res = Error::from(
                Code::Overloaded.problem("the server is at its concurrency limit; retry shortly"),
            )
            .into_response();
            res.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("1"),
            );
            res
        }
    }
}

/// Copies the matched route template into the response, for the outer layer's labels.
async fn note_route(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let mut res = next.run(req).await;
    if let Some(r) = route {
        res.extensions_mut().insert(r);
    }
    res
}

fn sane_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    // A client could send a secret as its request id; ids that look like keys are replaced.
    (ok && extract::redact(s) == s).then(|| s.to_owned())
}

/// Request ids, metrics and the access log. Only the route template is logged: never the
/// raw path or query (a client may put a key there), headers or bodies.
async fn observe(mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(sane_request_id)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = req.method().as_str().to_owned();
    // Every record logged while the request is handled carries its id (CONTRACT §7).
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut res = next.run(req).instrument(span.clone()).await;
    let route = res
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let status = res.status().as_u16();
    let elapsed = start.elapsed();
    let labels = [
        ("method", method.clone()),
        ("route", route.clone()),
        ("status", status.to_string()),
    ];
    metrics::counter!("keyvault_http_requests_total", &labels).increment(1);
    metrics::histogram!("keyvault_http_request_duration_seconds", &labels)
        .record(elapsed.as_secs_f64());
    // Microseconds are enough; the dashboard's own polling and its assets are routine and
    // go to `debug` so that they do not crowd the system log it shows.
    let latency_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
    let routine =
        status < 400 && (route.contains("/admin/api/") || route.contains("/admin/assets/"));
    span.in_scope(|| {
        if routine {
            tracing::debug!(target: "keyvault::http", method, route, status, latency_ms, "request");
        } else {
            tracing::info!(target: "keyvault::http", method, route, status, latency_ms, "request");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

async fn not_found() -> Problem {
    Code::NotFound.problem("no such endpoint")
}

async fn method_not_allowed() -> Problem {
    Code::MethodNotAllowed.problem("this endpoint does not answer this method")
}

#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz",
    responses((status = 200, description = "The process is alive", body = openapi::Status)))]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz",
    responses(
        (status = 200, description = "The database (and Redis) answer", body = openapi::Status),
        (status = 503, description = "A backend is down", body = openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn readyz(State(st): State<AppState>) -> Result<Json<serde_json::Value>, Error> {
    st.app.backends.ping().await?;
    Ok(Json(json!({ "status": "ready" })))
}

#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
        (status = 401, description = "Not a loopback peer and no valid token", body = openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Role too low", body = openapi::ProblemDoc, content_type = "application/problem+json")),
    security((), ("bearer" = [])))]
pub(crate) async fn metrics(
    State(st): State<AppState>,
    ctx: Ctx,
    req: Request,
) -> Result<Response, Error> {
    let local = ctx.peer.is_some_and(|p| p.is_loopback()) && !ctx.forwarded;
    if !local {
        let (mut parts, _) = req.into_parts();
        use axum::extract::FromRequestParts;
        let caller = Caller::from_request_parts(&mut parts, &st).await?;
        caller.require(&st, Need::Viewer, "metrics.read").await?;
    }
    let cache = st.app.kv.cache_stats();
    metrics::counter!("keyvault_key_cache_hits_total").absolute(cache.hits);
    metrics::counter!("keyvault_key_cache_misses_total").absolute(cache.misses);
    let lookups = cache.hits + cache.misses;
    metrics::gauge!("keyvault_key_cache_hit_ratio").set(if lookups == 0 {
        0.0
    } else {
        cache.hits as f64 / lookups as f64
    });
    let usage = st.recorder.stats();
    metrics::counter!("keyvault_usage_events_dropped_total").absolute(usage.dropped);
    metrics::counter!("keyvault_usage_events_failed_total").absolute(usage.failed);
    metrics::counter!("keyvault_usage_events_written_total").absolute(usage.written);
    metrics::counter!("keyvault_limiter_fallbacks_total")
        .absolute(st.app.backends.limiter_fallbacks());
    if let Some(signals) = st.app.kv.client_signals() {
        metrics::counter!("keyvault_client_signals_dropped_total").absolute(signals.dropped());
    }
    metrics_process::Collector::default().collect();
    let mut res = st.metrics.render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(res)
}
