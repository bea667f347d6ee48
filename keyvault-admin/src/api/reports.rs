//! `/v1/stats/overview` and `/v1/audit`.

use axum::{Json, extract::State};
use chrono::{DateTime, TimeDelta, Utc};
use keyvault_core::{AuditQuery, AuditRecord, StatsOverview, StatsQuery};
use serde::Serialize;

use super::{AppState, Caller, extract::QueryParams, openapi::ProblemDoc};
use crate::{auth::Need, error::Result};

fn rfc3339(v: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[utoipa::path(get, path = "/v1/stats/overview", tag = "statistics",
    params(
        ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339 start (default: 24 hours before `to`)"),
        ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339 end (default: now)"),
        ("key_id" = Option<String>, Query, description = "Only this key"),
        ("provider" = Option<String>, Query, description = "Only this provider")),
    responses(
        (status = 200, body = super::openapi::StatsDoc),
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
    q.finish()?;
    let to = to.unwrap_or_else(Utc::now);
    let from = from.unwrap_or(to - TimeDelta::hours(24));
    let query = StatsQuery {
        from,
        to,
        key_id,
        provider,
    };
    query.validate().map_err(keyvault_core::Error::from)?;
    Ok(Json(st.app.backends.stats.overview(&query).await?))
}

/// One page of audit records.
#[derive(Debug, Serialize)]
pub(crate) struct AuditPage {
    items: Vec<AuditRecord>,
    next_cursor: Option<String>,
}

const AUDIT_CURSOR: &str = "a1.";

#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(
        ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339 start (inclusive)"),
        ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339 end (exclusive)"),
        ("actor" = Option<String>, Query, description = "Only this actor (`token:<id>`, `cli`, `user:<name>`)"),
        ("action" = Option<String>, Query, description = "Only this action (`key.create`, …)"),
        ("target_id" = Option<String>, Query, description = "Only this target"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses(
        (status = 200, body = super::openapi::AuditPageDoc),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn audit(
    State(st): State<AppState>,
    caller: Caller,
    mut q: QueryParams,
) -> Result<Json<AuditPage>> {
    caller.require(&st, Need::Operator, "audit.read").await?;
    let query = AuditQuery {
        from: q.parse("from", rfc3339, "an RFC 3339 time")?,
        to: q.parse("to", rfc3339, "an RFC 3339 time")?,
        actor: q.take("actor"),
        action: q.take("action"),
        target_id: q.take("target_id"),
        limit: q
            .parse(
                "limit",
                |v| v.parse().ok().filter(|n| (1..=100).contains(n)),
                "a whole number from 1 to 100",
            )?
            .unwrap_or(50),
        before_seq: q.parse(
            "cursor",
            |v| v.strip_prefix(AUDIT_CURSOR)?.parse().ok(),
            "a next_cursor from a previous page",
        )?,
    };
    q.finish()?;
    let page = st.app.backends.audit.list(&query).await?;
    let next_cursor = page
        .has_more
        .then(|| {
            page.items
                .last()
                .map(|r| format!("{AUDIT_CURSOR}{}", r.seq))
        })
        .flatten();
    Ok(Json(AuditPage {
        items: page.items,
        next_cursor,
    }))
}
