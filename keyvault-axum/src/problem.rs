//! Outcomes as HTTP answers (CONTRACT §2): statuses, `application/problem+json` bodies and
//! the `WWW-Authenticate`, `Retry-After` and `RateLimit-*` headers.

use axum_core::{body::Body, response::Response};
use chrono::{DateTime, Utc};
use http::{
    HeaderMap, HeaderName, HeaderValue, StatusCode,
    header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE},
};
use keyvault_core::{Outcome, Verification};

/// `application/problem+json` (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// A problem response `{"type","title","status","code"}`.
pub(crate) fn problem(status: StatusCode, code: &str, title: &str) -> Response {
    let body = serde_json::json!({
        "type": format!("urn:keyvault:problem:{}", code.to_ascii_lowercase().replace('_', "-")),
        "title": title,
        "status": status.as_u16(),
        "code": code,
    });
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    res
}

fn title(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Missing => "An API key is required",
        Outcome::NotFound => "The API key is not valid",
        Outcome::Disabled => "The API key is disabled",
        Outcome::Expired => "The API key has expired",
        Outcome::Forbidden => "The caller's address is not allowed for this API key",
        Outcome::InsufficientPermissions => "The API key lacks a required scope",
        Outcome::RateLimited => "Rate limit exceeded",
        Outcome::UsageExceeded => "Not enough credits left",
        Outcome::Valid => "Accepted",
    }
}

/// The answer to a rejected verification.
pub(crate) fn rejection(
    outcome: Outcome,
    v: Option<&Verification>,
    now: DateTime<Utc>,
) -> Response {
    let status = StatusCode::from_u16(outcome.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut res = problem(status, outcome.as_str(), title(outcome));
    let headers = res.headers_mut();
    match outcome {
        Outcome::Missing => {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        Outcome::NotFound | Outcome::Disabled | Outcome::Expired => {
            // RFC 6750 §3: a presented but unusable bearer token.
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        Outcome::RateLimited => {
            let ms = v.and_then(Verification::retry_after_ms).unwrap_or(1_000);
            headers.insert(RETRY_AFTER, HeaderValue::from(whole_seconds_up(ms).max(1)));
        }
        _ => {}
    }
    if let Some(h) = v.and_then(|v| RateLimitHeaders::of(v, now)) {
        h.apply(headers);
    }
    res
}

/// The backend failed: fail closed, never 401 and never allow.
pub(crate) fn unavailable() -> Response {
    let mut res = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "BACKEND_UNAVAILABLE",
        "Key verification is unavailable; try again shortly",
    );
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

/// A computed cost outside 0–2⁵³−1.
pub(crate) fn invalid_cost() -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "INVALID_COST",
        "The request's cost is out of range",
    )
}

/// The `RateLimit-*` values of the tightest limit, computed once per request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimitHeaders {
    limit: u32,
    remaining: u64,
    reset: u64,
}

impl RateLimitHeaders {
    /// None for a key without rate limits (or a rejection that did not read them).
    pub(crate) fn of(v: &Verification, now: DateTime<Utc>) -> Option<Self> {
        let tight = v.tightest_limit()?;
        let until_ms = (tight.reset_at - now).num_milliseconds().max(0);
        let mut reset = whole_seconds_up(until_ms as u64);
        // CONTRACT §2: at least 1 on every 429, credits exhausted included (its limits may
        // well be full again by now).
        if matches!(v.outcome, Outcome::RateLimited | Outcome::UsageExceeded) {
            reset = reset.max(1);
        }
        Some(Self {
            limit: tight.limit,
            remaining: tight.remaining,
            reset,
        })
    }

    /// Sets the headers; a handler's own values are left alone.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        if headers.contains_key(RATELIMIT_LIMIT) {
            return;
        }
        headers.insert(RATELIMIT_LIMIT, HeaderValue::from(self.limit));
        headers.insert(RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
        headers.insert(RATELIMIT_RESET, HeaderValue::from(self.reset));
    }
}

fn whole_seconds_up(ms: u64) -> u64 {
    ms.div_ceil(1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(whole_seconds_up(0), 0);
        assert_eq!(whole_seconds_up(1), 1);
        assert_eq!(whole_seconds_up(1_000), 1);
        assert_eq!(whole_seconds_up(1_001), 2);
        assert_eq!(whole_seconds_up(u64::MAX), u64::MAX / 1_000 + 1);
    }
}
