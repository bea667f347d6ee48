//! `/v1/keys/verify` and `/v1/usage`: for services that verify over HTTP.

use std::net::IpAddr;

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use chrono::{DateTime, Utc};
use keyvault_core::{KeyId, Outcome, RequestId, UsageEvent, VerifyRequest, check_credit_amount};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState, Caller,
    extract::{JsonBody, Required, accept},
    openapi::ProblemDoc,
};
use crate::{
    auth::Need,
    error::{Error, Problem, Result},
};

/// `POST /v1/keys/verify`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyBody {
    key: String,
    #[serde(default)]
    cost: Option<u64>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    provider: Option<String>,
}

impl Required for VerifyBody {
    const REQUIRED: &'static [&'static str] = &["key"];
}

const MAX_LABEL: usize = 64;

#[utoipa::path(post, path = "/v1/keys/verify", tag = "verification",
    request_body = super::openapi::VerifyDoc,
    responses(
        (status = 200, description = "The outcome; `valid` is true only for VALID", body = super::openapi::VerificationDoc),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn verify(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<JsonBody<VerifyBody>, Problem>,
) -> Result<Json<Value>> {
    caller.require(&st, Need::Verify, "key.verify").await?;
    // Verification is not a mutation: a malformed body is refused without an audit record.
    let JsonBody(body) = body?;
    let cost = body.cost.unwrap_or(1);
    check_credit_amount(cost, "cost").map_err(keyvault_core::Error::from)?;
    let ip = body
        .ip
        .as_deref()
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| Error::input("ip", "must be an IPv4 or IPv6 address"))
        })
        .transpose()?;
    let scopes = body.scopes.unwrap_or_default();
    if scopes.len() > 100 {
        return Err(Error::input("scopes", "at most 100"));
    }
    if let Some(p) = &body.provider
        && (p.is_empty() || p.chars().count() > MAX_LABEL)
    {
        return Err(Error::input("provider", "must be 1 to 64 characters"));
    }
    let req = VerifyRequest::new(&body.key)
        .cost(cost)
        .scopes(&scopes)
        .ip(ip);
    let v = st.app.kv.verify(&req).await?;
    metrics::counter!("keyvault_verifications_total", "code" => v.outcome.as_str()).increment(1);
    let mut out = json!({ "valid": v.outcome == Outcome::Valid, "code": v.outcome.as_str() });
    if let Some(k) = &v.key {
        out["key_id"] = json!(k.id.to_string());
        out["owner_id"] = json!(k.owner_id);
        out["name"] = json!(k.name);
        out["scopes"] = json!(k.scopes);
        out["expires_at"] = json!(k.effective_expiry());
        out["credits"] = match v.credits_remaining {
            Some(r) => json!({ "remaining": r }),
            None => Value::Null,
        };
        out["ratelimits"] = json!(v.ratelimits);
    }
    Ok(Json(out))
}

/// One reported call.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageItem {
    key_id: Option<String>,
    provider: Option<String>,
    status: Option<u16>,
    latency_ms: Option<f64>,
    #[serde(default)]
    ts: Option<DateTime<Utc>>,
    #[serde(default)]
    request_id: Option<String>,
}

/// `POST /v1/usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageBody {
    events: Vec<UsageItem>,
}

impl Required for UsageBody {
    const REQUIRED: &'static [&'static str] = &["events"];
}

const MAX_EVENTS: usize = 10_000;

fn usage_event(i: usize, item: UsageItem, now: DateTime<Utc>) -> Result<UsageEvent> {
    let field = |f: &str| format!("events[{i}].{f}");
    let key_id: KeyId = item
        .key_id
        .ok_or_else(|| Error::input(field("key_id"), "is required"))?
        .parse()
        .map_err(|_| Error::input(field("key_id"), "must be a key id"))?;
    let provider = item
        .provider
        .ok_or_else(|| Error::input(field("provider"), "is required"))?;
    if provider.is_empty() || provider.chars().count() > MAX_LABEL {
        return Err(Error::input(
            field("provider"),
            "must be 1 to 64 characters",
        ));
    }
    let status = item
        .status
        .ok_or_else(|| Error::input(field("status"), "is required"))?;
    if !(100..=599).contains(&status) {
        return Err(Error::input(
            field("status"),
            "must be an HTTP status (100–599)",
        ));
    }
    let latency_ms = item
        .latency_ms
        .ok_or_else(|| Error::input(field("latency_ms"), "is required"))?;
    if !latency_ms.is_finite() || !(0.0..=86_400_000.0).contains(&latency_ms) {
        return Err(Error::input(
            field("latency_ms"),
            "must be a number of milliseconds from 0 to 86400000",
        ));
    }
    let ts = item.ts.unwrap_or(now);
    if ts > now + chrono::TimeDelta::minutes(5) {
        return Err(Error::input(field("ts"), "must not be in the future"));
    }
    let request_id = match item.request_id {
        Some(r) if r.is_empty() || r.len() > 128 => {
            return Err(Error::input(
                field("request_id"),
                "must be 1 to 128 characters",
            ));
        }
        Some(r) => r.into(),
        None => RequestId::generate(),
    };
    Ok(UsageEvent {
        request_id,
        key_id: Some(key_id),
        owner_id: None,
        ts,
        provider: Some(provider.into()),
        route: None,
        method: None,
        status,
        latency_us: (latency_ms * 1_000.0).round() as u64,
        outcome: None,
        cost: 0,
    })
}

#[utoipa::path(post, path = "/v1/usage", tag = "verification",
    request_body = super::openapi::UsageDoc,
    responses(
        (status = 202, description = "Accepted for statistics", body = super::openapi::AcceptedDoc),
        (status = 400, description = "A bad event, named by its index", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn usage(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<JsonBody<UsageBody>, Problem>,
) -> Result<impl IntoResponse> {
    caller.require(&st, Need::Verify, "usage.report").await?;
    let body = accept(&st, &caller, "usage.report", None, body).await?;
    if body.events.len() > MAX_EVENTS {
        return Err(Error::input(
            "events",
            format!("at most {MAX_EVENTS} per batch"),
        ));
    }
    let now = Utc::now();
    // Validate the whole batch before queuing any of it.
    let events = body
        .events
        .into_iter()
        .enumerate()
        .map(|(i, item)| usage_event(i, item, now))
        .collect::<Result<Vec<_>>>()?;
    let accepted = events.len();
    for ev in events {
        st.recorder.record(ev);
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": accepted }))))
}
