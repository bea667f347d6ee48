//! `/v1/keys/verify` and `/v1/usage`: for services that verify over HTTP.

use std::net::IpAddr;

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use chrono::{DateTime, Utc};
use keyvault_core::{
    KeyId, LimitState, Outcome, RequestId, UsageEvent, VerifyRequest, check_credit_amount,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    AppState, Caller,
    extract::{JsonBody, Required, accept},
    openapi::ProblemDoc,
    shapes,
    wire::whole,
};
use crate::{
    auth::Need,
    error::{Error, Problem, Result},
};

/// `POST /v1/keys/verify`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VerifyRequest)]
pub(crate) struct VerifyBody {
    /// The presented key; anything that does not parse answers NOT_FOUND.
    key: String,
    /// Credits to spend (default 1; 0 is a pure check).
    #[serde(default, deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 9007199254740991_i64)]
    cost: Option<u64>,
    /// Scopes the key must hold.
    #[serde(default)]
    #[schema(max_items = 100)]
    scopes: Option<Vec<String>>,
    /// The caller's IP address, for keys with an allow-list.
    #[serde(default)]
    #[schema(schema_with = shapes::ip_or_null)]
    ip: Option<String>,
    /// Who the call is for (a label for statistics).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    provider: Option<String>,
}

/// A verification's answer. The fields after `code` are there when a key was found
/// (whatever the code), and absent for NOT_FOUND.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Verification)]
pub(crate) struct VerificationView {
    /// True only for VALID.
    valid: bool,
    #[schema(value_type = OutcomeCode)]
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = shapes::uuid)]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    owner_id: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<String>)]
    scopes: Option<Vec<String>>,
    /// The earlier of the key's expiry and the end of its grace.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    expires_at: Option<Option<DateTime<Utc>>>,
    /// The balance after this verification; null: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Remaining>)]
    credits: Option<Option<Remaining>>,
    /// Every rate limit of the key, after this verification.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<LimitView>)]
    ratelimits: Option<Vec<LimitView>>,
}

/// A credit balance.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Remaining {
    remaining: u64,
}

/// One rate limit's state after a verification.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = LimitState)]
pub(crate) struct LimitView {
    name: String,
    limit: u32,
    /// Whole tokens left.
    remaining: u64,
    /// When the bucket is full again.
    reset_at: DateTime<Utc>,
    /// For an exhausted limit: milliseconds until the next token.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl From<&LimitState> for LimitView {
    fn from(l: &LimitState) -> Self {
        Self {
            name: l.name.clone(),
            limit: l.limit,
            remaining: l.remaining,
            reset_at: l.reset_at,
            retry_after_ms: l.retry_after_ms,
        }
    }
}

/// The codes of CONTRACT §2 that a verification over HTTP answers.
#[derive(ToSchema)]
#[schema(as = Outcome, rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(dead_code)]
pub(crate) enum OutcomeCode {
    NotFound,
    Disabled,
    Expired,
    Forbidden,
    InsufficientPermissions,
    RateLimited,
    UsageExceeded,
    Valid,
}

impl Required for VerifyBody {
    const REQUIRED: &'static [&'static str] = &["key"];
}

const MAX_LABEL: usize = 64;

#[utoipa::path(post, path = "/v1/keys/verify", tag = "verification", operation_id = "verifyKey",
    request_body = VerifyBody,
    responses(
        (status = 200, description = "The outcome; `valid` is true only for VALID", body = VerificationView),
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
) -> Result<Json<VerificationView>> {
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
    st.app.kv.note_client(&v, ip);
    metrics::counter!("keyvault_verifications_total", "code" => v.outcome.as_str()).increment(1);
    if v.outcome != Outcome::Valid {
        st.rejections.record(chrono::Utc::now());
    }
    let key = v.key.as_deref();
    Ok(Json(VerificationView {
        valid: v.outcome == Outcome::Valid,
        code: v.outcome.as_str(),
        key_id: key.map(|k| k.id.to_string()),
        owner_id: key.map(|k| k.owner_id.clone()),
        name: key.map(|k| k.name.clone()),
        scopes: key.map(|k| k.scopes.clone()),
        expires_at: key.map(|k| k.effective_expiry()),
        credits: key.map(|_| v.credits_remaining.map(|remaining| Remaining { remaining })),
        ratelimits: key.map(|_| v.ratelimits.iter().map(LimitView::from).collect()),
    }))
}

/// One reported call. Members a client must give are checked after reading the batch, so
/// that a missing one is named with its event's index.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UsageEvent)]
pub(crate) struct UsageItem {
    /// The key the call was made with.
    #[schema(schema_with = shapes::uuid, required = true)]
    key_id: Option<String>,
    #[schema(value_type = String, required = true, min_length = 1, max_length = 64)]
    provider: Option<String>,
    /// The call's HTTP status.
    #[serde(default, deserialize_with = "whole")]
    #[schema(value_type = u16, required = true, minimum = 100, maximum = 599)]
    status: Option<u64>,
    #[schema(value_type = f64, required = true, minimum = 0, maximum = 86400000)]
    latency_ms: Option<f64>,
    /// When the call was made (default: now); at most 5 minutes ahead of the server's clock.
    #[serde(default)]
    #[schema(schema_with = shapes::date_time_or_null)]
    ts: Option<DateTime<Utc>>,
    /// Counted once, however often it is reported.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    request_id: Option<String>,
}

/// `POST /v1/usage`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UsageBatch)]
pub(crate) struct UsageBody {
    #[schema(max_items = 10000)]
    events: Vec<UsageItem>,
}

/// How many events were queued.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Accepted {
    accepted: usize,
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
    keyvault_core::refuse_nul(|| field("provider"), &provider)
        .map_err(keyvault_core::Error::from)?;
    let status = item
        .status
        .ok_or_else(|| Error::input(field("status"), "is required"))?;
    let Some(status) = u16::try_from(status)
        .ok()
        .filter(|s| (100..=599).contains(s))
    else {
        return Err(Error::input(
            field("status"),
            "must be an HTTP status (100–599)",
        ));
    };
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
        // Characters, as the message (and the document) says.
        Some(r) if r.is_empty() || r.chars().count() > 128 => {
            return Err(Error::input(
                field("request_id"),
                "must be 1 to 128 characters",
            ));
        }
        Some(r) => {
            keyvault_core::refuse_nul(|| field("request_id"), &r)
                .map_err(keyvault_core::Error::from)?;
            r.into()
        }
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

#[utoipa::path(post, path = "/v1/usage", tag = "verification", operation_id = "reportUsage",
    request_body = UsageBody,
    responses(
        (status = 202, description = "Accepted for statistics", body = Accepted),
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
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted })))
}
