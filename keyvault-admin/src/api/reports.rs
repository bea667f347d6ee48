//! `/v1/stats/overview` and `/v1/audit`.

use axum::{Json, extract::State};
use chrono::{DateTime, TimeDelta, Utc};
use keyvault_core::{AuditQuery, AuditRecord, StatsOverview, StatsQuery};
use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState, Caller,
    extract::QueryParams,
    openapi::ProblemDoc,
    pagination::{self, Pagination},
    shapes,
};
use crate::{
    auth::Need,
    error::{Error, Result},
};

// keyvault-core's `StatsOverview` and `AuditRecord` know nothing of OpenAPI (and the core
// crate has no utoipa): these types are their schemas only. The response test checks every
// answer against them.

/// Latency percentiles in milliseconds; null without calls.
#[derive(ToSchema)]
#[schema(as = Percentiles)]
#[allow(dead_code)]
pub(crate) struct PercentilesDoc {
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
}

/// One provider's calls.
#[derive(ToSchema)]
#[schema(as = ProviderStats)]
#[allow(dead_code)]
pub(crate) struct ProviderDoc {
    provider: String,
    calls: u64,
    /// A fraction in [0, 1]; null without calls.
    #[schema(minimum = 0, maximum = 1)]
    success_rate: Option<f64>,
}

/// One step of the time series.
#[derive(ToSchema)]
#[schema(as = TimePoint)]
#[allow(dead_code)]
pub(crate) struct TimePointDoc {
    ts: DateTime<Utc>,
    calls: u64,
    /// Calls without success.
    errors: u64,
}

/// Calls, success and latency over a range.
#[derive(ToSchema)]
#[schema(as = StatsOverview)]
#[allow(dead_code)]
pub(crate) struct StatsDoc {
    calls: u64,
    /// A fraction in [0, 1]; null without calls.
    #[schema(minimum = 0, maximum = 1)]
    success_rate: Option<f64>,
    latency_ms: PercentilesDoc,
    /// Most calls first.
    by_provider: Vec<ProviderDoc>,
    timeseries: Vec<TimePointDoc>,
}

/// Whether an audited action was made or refused.
#[derive(ToSchema)]
#[schema(as = AuditOutcome, rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum OutcomeDoc {
    Success,
    Refused,
}

/// One record of the audit log, chained to the one before by its hash.
#[derive(ToSchema)]
#[schema(as = AuditRecord)]
#[allow(dead_code)]
pub(crate) struct AuditDoc {
    /// Position in the log, from 1, without gaps.
    seq: u64,
    at: DateTime<Utc>,
    /// `token:<id>`, `cli`, `user:<name>`, `anonymous`, …
    actor: String,
    /// `key.create`, `token.revoke`, …
    action: String,
    target_id: Option<String>,
    source_ip: Option<String>,
    request_id: Option<String>,
    outcome: OutcomeDoc,
    /// Non-secret details.
    details: Value,
    /// The previous record's hash (hex; zeros for the first).
    prev_hash: String,
    hash: String,
}

/// The query of `GET /v1/stats/overview` (read by [`QueryParams`]; this is its schema).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct StatsParams {
    /// RFC 3339 start (default: 24 hours before `to`).
    #[param(schema_with = shapes::date_time)]
    from: Option<String>,
    /// RFC 3339 end (default: now); not before `from`, at most a year after it.
    #[param(schema_with = shapes::date_time)]
    to: Option<String>,
    /// Only this key.
    #[param(schema_with = shapes::uuid)]
    key_id: Option<String>,
    /// Only this provider.
    provider: Option<String>,
    /// The time series' step (default: chosen from the range, at most 300 points); at most
    /// 50,000 points. Past the usage retention a `minute` series has no points.
    #[param(pattern = "^(minute|hour|day)$")]
    granularity: Option<String>,
}

/// The query of `GET /v1/audit` (read by [`QueryParams`]; this is its schema).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct AuditParams {
    /// RFC 3339 start (inclusive).
    #[param(schema_with = shapes::date_time)]
    from: Option<String>,
    /// RFC 3339 end (exclusive).
    #[param(schema_with = shapes::date_time)]
    to: Option<String>,
    /// Only this actor (`token:<id>`, `cli`, `user:<name>`).
    actor: Option<String>,
    /// Only this action (`key.create`, …).
    action: Option<String>,
    /// Only this target.
    target_id: Option<String>,
    /// Only this outcome.
    #[param(pattern = "^(success|refused)$")]
    outcome: Option<String>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page (opaque; its shape is given so that a client can
    /// tell a damaged one).
    #[param(pattern = r"^a1\.[0-9]{1,19}$")]
    cursor: Option<String>,
}

/// The query of `GET /v1/logs` (read by [`QueryParams`]; this is its schema).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct LogParams {
    /// The least severe level shown, with those above it (default `info`).
    #[param(pattern = "^(error|warn|info)$")]
    level: Option<String>,
    /// Records at most (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// One record of the system log.
#[derive(ToSchema)]
#[schema(as = LogRecord)]
#[allow(dead_code)]
pub(crate) struct LogRecordDoc {
    ts: DateTime<Utc>,
    #[schema(pattern = "^(error|warn|info)$")]
    level: String,
    /// The module that logged it (`keyvault::http`, …).
    target: String,
    message: String,
    /// The record's other fields (`request_id` inside a request), secrets redacted.
    #[schema(value_type = Object)]
    fields: Value,
}

/// This instance's recent log records, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LogPage {
    #[schema(value_type = Vec<LogRecordDoc>)]
    items: Vec<crate::logs::LogRecord>,
}

#[utoipa::path(get, path = "/v1/logs", tag = "operations", operation_id = "listLogs",
    params(LogParams),
    responses(
        (status = 200, description = "Recent records, newest first", body = LogPage),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn logs(
    State(st): State<AppState>,
    caller: Caller,
    mut q: QueryParams,
) -> Result<Json<LogPage>> {
    caller.require(&st, Need::Operator, "logs.read").await?;
    let level = q
        .parse("level", crate::logs::MinLevel::parse, "error, warn or info")?
        .unwrap_or(crate::logs::MinLevel::Info);
    let limit = q
        .parse(
            "limit",
            |v| v.parse::<usize>().ok().filter(|n| (1..=500).contains(n)),
            "a whole number from 1 to 500",
        )?
        .unwrap_or(100);
    q.finish()?;
    Ok(Json(LogPage {
        items: crate::logs::recent(level, limit),
    }))
}

fn rfc3339(v: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[utoipa::path(get, path = "/v1/stats/overview", tag = "statistics", operation_id = "statsOverview",
    params(StatsParams),
    responses(
        (status = 200, description = "The overview", body = StatsDoc),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn stats(
    State(st): State<AppState>,
    caller: Caller,
    mut q: QueryParams,
) -> Result<Json<StatsOverview>> {
    caller.require(&st, Need::Viewer, "stats.read").await?;
    let from = q.parse("from", rfc3339, "an RFC 3339 time")?;
    let to = q.parse("to", rfc3339, "an RFC 3339 time")?;
    let key_id = q.parse("key_id", |v| v.parse().ok(), "a key id")?;
    let provider = q.take("provider");
    let granularity = q.parse(
        "granularity",
        keyvault_core::Granularity::parse,
        "minute, hour or day",
    )?;
    q.finish()?;
    let to = to.unwrap_or_else(Utc::now);
    let from = from.unwrap_or(to - TimeDelta::hours(24));
    let query = StatsQuery {
        from,
        to,
        key_id,
        provider,
        granularity,
    };
    query.validate().map_err(keyvault_core::Error::from)?;
    Ok(Json(st.app.backends.stats.overview(&query).await?))
}

/// One page of audit records, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPage {
    #[schema(value_type = Vec<AuditDoc>)]
    items: Vec<AuditRecord>,
    /// Opaque; null on the last page.
    next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", operation_id = "listAudit",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of records", body = AuditPage),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn audit(
    State(st): State<AppState>,
    caller: Caller,
    pagination: Result<Pagination<pagination::Audit>, Error>,
) -> Result<Json<AuditPage>> {
    caller.require(&st, Need::Operator, "audit.read").await?;
    let Pagination {
        limit,
        after,
        query: mut q,
        ..
    } = pagination?;
    let query = AuditQuery {
        from: q.parse("from", rfc3339, "an RFC 3339 time")?,
        to: q.parse("to", rfc3339, "an RFC 3339 time")?,
        actor: q.take("actor"),
        action: q.take("action"),
        target_id: q.take("target_id"),
        outcome: q.parse(
            "outcome",
            |v| match v {
                "success" => Some(keyvault_core::AuditOutcome::Success),
                "refused" => Some(keyvault_core::AuditOutcome::Refused),
                _ => None,
            },
            "success or refused",
        )?,
        limit,
        before_seq: after,
    };
    q.finish()?;
    let page = st.app.backends.audit.list(&query).await?;
    let next_cursor = Pagination::<pagination::Audit>::next_cursor(&page, |r| r.seq);
    Ok(Json(AuditPage {
        items: page.items,
        next_cursor,
    }))
}
