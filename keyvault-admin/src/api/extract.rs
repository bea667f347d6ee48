//! Extractors whose rejections are problem documents: JSON bodies (unknown fields refused,
//! bad fields named), query strings, ids in paths, the caller's context and API token.

use std::{collections::BTreeMap, net::IpAddr};

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{Method, StatusCode, request::Parts},
};
use keyvault_core::{Actor, AuditOutcome};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{
    api::AppState,
    auth::Need,
    error::{Code, Error, Problem},
};

/// The request id given to every request (taken from a sane `X-Request-Id`, else new).
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

/// Where a request comes from.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) request_id: String,
    pub(crate) ip: Option<IpAddr>,
    /// The TCP peer (not a forwarded address).
    pub(crate) peer: Option<IpAddr>,
    pub(crate) forwarded: bool,
}

impl Ctx {
    pub(crate) fn actor(&self, name: impl Into<String>) -> Actor {
        Actor {
            name: name.into(),
            source_ip: self.ip,
            request_id: Some(self.request_id.clone()),
        }
    }
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Problem> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let peer = keyvault_axum::peer_ip(parts);
        let ip = keyvault_axum::client_ip(parts, st.app.config.trusted_proxies.as_ref());
        let forwarded = ["x-forwarded-for", "forwarded", "x-real-ip"]
            .iter()
            .any(|h| parts.headers.contains_key(*h));
        Ok(Ctx {
            request_id,
            ip,
            peer,
            forwarded,
        })
    }
}

/// A caller holding a valid API token.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) token: keyvault_core::TokenRecord,
    pub(crate) ctx: Ctx,
}

impl Caller {
    pub(crate) fn actor(&self) -> Actor {
        self.ctx.actor(format!("token:{}", self.token.id))
    }

    /// Checks the token's role; a refusal is audited under `action`.
    pub(crate) async fn require(
        &self,
        st: &AppState,
        need: Need,
        action: &str,
    ) -> Result<(), Error> {
        if self.token.role.allows(need) {
            return Ok(());
        }
        let err = Error::Forbidden("this API token's role does not allow this action");
        Err(st.app.refused(&self.actor(), action, None, err).await)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Error> {
        let ctx = Ctx::from_request_parts(parts, st)
            .await
            .map_err(|_| Error::Unauthorized("no request context"))?;
        let presented = keyvault_axum::bearer_token(&parts.headers).map(str::to_owned);
        let found = match &presented {
            Some(p) => st.app.authenticate(p).await?,
            None => None,
        };
        if let Some(token) = found {
            return Ok(Caller { token, ctx });
        }
        let err = Error::Unauthorized(if presented.is_some() {
            "the API token is unknown, revoked or expired"
        } else {
            "an API token is required: Authorization: Bearer kvt_…"
        });
        // A token that failed, or any attempt at a mutation, is audited; an anonymous read
        // is just refused.
        let mutation = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if presented.is_some() || mutation {
            let actor = ctx.actor("anonymous");
            let route = parts
                .extensions
                .get::<axum::extract::MatchedPath>()
                .map(|m| m.as_str().to_owned());
            let details = json!({ "reason": "unauthorized", "route": route, "method": parts.method.as_str() });
            if let Err(e) = st
                .app
                .audit(&actor, "token.use", None, AuditOutcome::Refused, details)
                .await
            {
                tracing::warn!(error = %e.cli_line(), "refused token use not audited");
            }
        }
        Err(err)
    }
}

/// Replaces anything shaped like a key or token in text echoed back to a client.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if looks_like_secret(word) {
            out.push_str("[redacted]");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    if out.chars().count() > 300 {
        out = out.chars().take(300).collect::<String>() + "…";
    }
    out
}

fn looks_like_secret(word: &str) -> bool {
    match word.rfind('_') {
        Some(i) => word.len() - i > 40,
        None => word.len() >= 40,
    }
}

/// Parses a JSON document into `T`. `required` fields are checked first so that a missing
/// one is named; a bad field is named by its path (`ratelimits[0].limit`).
pub(crate) fn parse_json<T: DeserializeOwned>(
    bytes: &[u8],
    required: &[&str],
) -> Result<T, Problem> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        Code::InvalidJson.problem(format!(
            "the body is not a JSON document: {}",
            redact(&e.to_string())
        ))
    })?;
    let Value::Object(map) = &value else {
        return Err(Code::InvalidJson.problem("the body must be a JSON object"));
    };
    for f in required {
        if !map.contains_key(*f) {
            return Err(Code::MissingField
                .problem(format!("{f} is required"))
                .field(*f));
        }
    }
    // Bodies are plain serde structs that check nothing while deserialising, so the path
    // serde_path_to_error reports is the field at fault (or the unknown one).
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Code::InvalidField
            .problem(redact(&e.into_inner().to_string()))
            .field(redact(&path))
    })
}

/// A JSON body parsed into `T` (with the fields named in `T`'s [`Required`] checked first).
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

/// Fields a body type must have (checked before deserialising, to name them when missing).
pub(crate) trait Required {
    const REQUIRED: &'static [&'static str] = &[];
    /// Whether an empty body means `{}`.
    const EMPTY_IS_OBJECT: bool = false;
}

impl<T: DeserializeOwned + Required, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        // The content type is not checked: API tokens travel in a header, never in a
        // cookie, so a cross-site form post cannot act, and `curl -d` just works.
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Code::PayloadTooLarge.problem("the body is larger than 1 MiB")
            } else {
                Code::InvalidBody.problem("the body could not be read")
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) && T::EMPTY_IS_OBJECT {
            return parse_json(b"{}", T::REQUIRED).map(JsonBody);
        }
        parse_json(&bytes, T::REQUIRED).map(JsonBody)
    }
}

/// The parsed body, or — when it did not parse — the refusal, audited as an attempt at
/// `action`.
pub(crate) async fn accept<T>(
    st: &AppState,
    caller: &Caller,
    action: &str,
    target: Option<String>,
    body: Result<JsonBody<T>, Problem>,
) -> Result<T, Error> {
    match body {
        Ok(JsonBody(v)) => Ok(v),
        Err(p) => Err(st
            .app
            .refused(&caller.actor(), action, target, p.into())
            .await),
    }
}

/// An id from the path; one that cannot be decoded is simply unknown (404).
#[derive(Debug)]
pub(crate) struct IdPath(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| IdPath(p.0))
            .map_err(|_| Code::NotFound.problem("no such id"))
    }
}

/// Query parameters, each at most once; unknown names are refused when [`finish`]ed.
#[derive(Debug, Default)]
pub(crate) struct QueryParams(BTreeMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let bad = |msg: String, field: Option<String>| {
            Code::InvalidQuery
                .problem(msg)
                .field(field.unwrap_or_default())
        };
        let pairs = axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| bad("the query string could not be decoded".into(), None))?
            .0;
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if map.contains_key(&k) {
                let k = redact(&k);
                return Err(bad(format!("{k} is given twice"), Some(k)));
            }
            map.insert(k, v);
        }
        Ok(QueryParams(map))
    }
}

impl QueryParams {
    /// Takes a parameter (an empty value is a value: `limit=` is refused, not ignored).
    pub(crate) fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    /// Takes and parses a parameter.
    pub(crate) fn parse<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&str) -> Option<T>,
        what: &str,
    ) -> Result<Option<T>, Error> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => f(&v)
                .map(Some)
                .ok_or_else(|| Error::input(name, format!("must be {what}"))),
        }
    }

    /// Refuses parameters nobody took: a typo must not be silently ignored.
    pub(crate) fn finish(self) -> Result<(), Error> {
        match self.0.into_keys().next() {
            None => Ok(()),
            Some(k) => {
                let k = redact(&k);
                Err(Error::input(
                    k.clone(),
                    format!("unknown query parameter {k:?}"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        limits: Option<Vec<Inner>>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        limit: u32,
    }

    #[test]
    fn bad_fields_are_named() {
        let e = parse_json::<Body>(br#"{"limits":[{"limit":"x"}]}"#, &["name"]).unwrap_err();
        assert_eq!(e.field_path(), Some("name"));
        let e =
            parse_json::<Body>(br#"{"name":"a","limits":[{"limit":"x"}]}"#, &["name"]).unwrap_err();
        assert_eq!(e.field_path(), Some("limits[0].limit"));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = parse_json::<Body>(br#"{"name":"a","nmae":1}"#, &["name"]).unwrap_err();
        assert_eq!(e.field_path(), Some("nmae"), "{e:?}");
        let e = parse_json::<Body>(br#"{"name":"a""#, &["name"]).unwrap_err();
        assert_eq!(e.code(), "invalid_json");
        let e = parse_json::<Body>(b"[1]", &["name"]).unwrap_err();
        assert_eq!(e.code(), "invalid_json");
    }

    #[test]
    fn secrets_are_not_echoed() {
        let key = keyvault_core::ApiKey::generate(&keyvault_core::Prefix::default());
        let body = format!(r#"{{"name":"a","{}":1}}"#, key.expose());
        let e = parse_json::<Body>(body.as_bytes(), &["name"]).unwrap_err();
        let shown = format!("{:?} {:?}", e.detail_text(), e.field_path());
        assert!(!shown.contains(key.expose()), "{shown}");
        assert!(shown.contains("[redacted]"));
    }
}
