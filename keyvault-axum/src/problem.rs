//! Outcomes as HTTP answers (CONTRACT §2): statuses, `application/problem+json` bodies and
//! the `WWW-Authenticate`, `Retry-After` and `RateLimit-*` headers.

use std::borrow::Cow;

use axum_core::{
    body::Body,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use http::{
    HeaderMap, HeaderName, HeaderValue, StatusCode,
    header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE},
};
use keyvault_core::{Outcome, Verification};
use serde::Serialize;

/// `application/problem+json` (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// An RFC 9457 problem document, answered as `application/problem+json`: `{"type", "title",
/// "status", "code"}`, plus `"detail"` and `"field"` when given. Every keyvault edge (this
/// layer, the admin server, host applications) answers refusals with it.
///
/// `type` is `urn:keyvault:problem:<code>` with the code lower-cased and `_` written `-`. A
/// 401 carries `WWW-Authenticate: Bearer` unless the response sets its own.
///
/// ```
/// use axum_core::response::IntoResponse;
/// use http::StatusCode;
/// use keyvault_axum::Problem;
///
/// let res = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value")
///     .detail("must be at least 1")
///     .field("ratelimits[0].limit")
///     .into_response();
/// assert_eq!(res.status(), 422);
/// assert_eq!(res.headers()["content-type"], keyvault_axum::PROBLEM_JSON);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    title: Option<Cow<'static, str>>,
    detail: Option<String>,
    field: Option<String>,
}

impl Problem {
    /// A problem with this status and stable code; the title defaults to the status's reason.
    pub fn new(status: StatusCode, code: &'static str) -> Self {
        Self {
            status,
            code,
            title: None,
            detail: None,
            field: None,
        }
    }

    /// A short human-readable summary, the same for every occurrence of this code.
    #[must_use]
    pub fn title(mut self, title: impl Into<Cow<'static, str>>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// What went wrong this time. It is shown to the client: never put a secret in it.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The input field at fault, as a path (`ratelimits[0].limit`); empty means none.
    #[must_use]
    pub fn field(mut self, field: impl Into<String>) -> Self {
        let f = field.into();
        self.field = (!f.is_empty()).then_some(f);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The detail, if any.
    pub fn detail_text(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The field at fault, if any.
    pub fn field_path(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

#[derive(Serialize)]
struct Document<'a> {
    r#type: String,
    title: &'a str,
    status: u16,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let doc = Document {
            r#type: format!(
                "urn:keyvault:problem:{}",
                self.code.to_ascii_lowercase().replace('_', "-")
            ),
            title: self
                .title
                .as_deref()
                .or_else(|| self.status.canonical_reason())
                .unwrap_or("Error"),
            status: self.status.as_u16(),
            code: self.code,
            detail: self.detail.as_deref(),
            field: self.field.as_deref(),
        };
        // Serialising strings and integers into a Vec cannot fail.
        let body = serde_json::to_vec(&doc).unwrap_or_default();
        let mut res = Response::new(Body::from(body));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// A problem response with a title of its own.
pub(crate) fn problem(status: StatusCode, code: &'static str, title: &'static str) -> Response {
    Problem::new(status, code).title(title).into_response()
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
