//! Dashboard sessions (CONTRACT §6): a random cookie whose digest names a session stored in
//! the backends' `kv_sessions`, read on every request (so a sign-out, a password or role
//! change or a disabled user ends it on every instance at once); CSRF tokens derived from
//! the session; the same-origin check of every change; the cookie attributes per request.

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, TimeDelta, Utc};
use hmac::{KeyInit, Mac};
use keyvault_core::{KeyDigest, KeyHasher, UserRecord};
use rand::{TryRng, rngs::SysRng};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{i18n::Lang, page};
use crate::{
    api::{AppState, mount::Mount},
    auth::Need,
    error::{Error, Result},
};

/// The session cookie.
pub(crate) const SESSION_COOKIE: &str = "kv_session";
/// How long a session lasts.
pub(crate) const SESSION_HOURS: i64 = 8;

/// The value of cookie `name`, if the request carries it.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// 32 random bytes, hex: session cookies and sign-in nonces.
pub(crate) fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 32];
    SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(KeyDigest::from_bytes(bytes).to_hex())
}

/// HMAC-SHA-256 of `parts` under the server's secret key, hex.
pub(crate) fn mac(secret: &str, parts: &[&str]) -> Result<String> {
    let mut m = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .map_err(|e| Error::Internal(format!("hmac: {e}")))?;
    for p in parts {
        m.update(p.as_bytes());
        m.update(&[0]);
    }
    let bytes: [u8; 32] = m.finalize().into_bytes().into();
    Ok(KeyDigest::from_bytes(bytes).to_hex())
}

/// Whether `a` and `b` are equal, in constant time.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether the request came over HTTPS: directly, or as a trusted proxy says.
pub(crate) fn is_https(parts: &Parts, st: &AppState) -> bool {
    if parts.uri.scheme_str() == Some("https") {
        return true;
    }
    trusted_peer(parts, st)
        && parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| {
                p.split(',')
                    .next()
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
            })
}

fn trusted_peer(parts: &Parts, st: &AppState) -> bool {
    match (
        st.app.config.trusted_proxies.as_ref(),
        keyvault_axum::peer_ip(parts),
    ) {
        (Some(t), Some(ip)) => t.contains(&ip),
        _ => false,
    }
}

/// The server's own origin (`http://host:port`) as the browser sees it.
fn own_origin(parts: &Parts, st: &AppState) -> Option<String> {
    let forwarded_host = trusted_peer(parts, st)
        .then(|| parts.headers.get("x-forwarded-host"))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.split(',').next())
        .map(str::trim);
    let host = forwarded_host
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))?;
    let scheme = if is_https(parts, st) { "https" } else { "http" };
    Some(format!("{scheme}://{}", host.to_ascii_lowercase()))
}

/// Whether a change request names no other origin than the server's own: its `Origin`,
/// else its `Referer`. A request carrying neither (not a browser's) passes; its CSRF token
/// still has to be right.
pub(crate) fn same_origin(parts: &Parts, st: &AppState) -> bool {
    let claimed = match parts.headers.get(header::ORIGIN) {
        Some(o) => o.to_str().ok().map(str::to_owned),
        None => match parts.headers.get(header::REFERER) {
            None => return true,
            Some(r) => r.to_str().ok().and_then(|r| {
                let (scheme, rest) = r.split_once("://")?;
                let host = rest.split(['/', '?', '#']).next()?;
                Some(format!("{scheme}://{host}"))
            }),
        },
    };
    match (claimed, own_origin(parts, st)) {
        (Some(c), Some(own)) => c.to_ascii_lowercase() == own,
        _ => false,
    }
}

/// `Set-Cookie` for a dashboard cookie: `HttpOnly`, `SameSite=Strict`, under the mount's
/// `/admin`, `Secure` over HTTPS. `max_age` 0 deletes it.
pub(crate) fn set_cookie(
    res: &mut Response,
    mount: &Mount,
    https: bool,
    name: &str,
    value: &str,
    max_age: i64,
) {
    let secure = if https { "; Secure" } else { "" };
    let c = format!(
        "{name}={value}; Path={}; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        mount.path("/admin")
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The digest a session is stored under.
pub(crate) fn session_digest(cookie: &str) -> KeyDigest {
    KeyHasher::sha256().digest(cookie)
}

/// A signed-in visitor of the dashboard. Extracting it reads the session and its user;
/// without a valid one, a page request is sent to the sign-in form.
#[derive(Debug, Clone)]
pub(crate) struct Visitor {
    pub(crate) user: UserRecord,
    pub(crate) digest: KeyDigest,
    /// The token every change of this session carries.
    pub(crate) csrf: String,
    pub(crate) lang: Lang,
    pub(crate) mount: Mount,
    pub(crate) https: bool,
}

impl Visitor {
    /// Whether the visitor's role grants `need`.
    pub(crate) fn may(&self, need: Need) -> bool {
        self.user.role.allows(need)
    }

    /// `Forbidden` unless the role grants `need`.
    #[allow(
        clippy::result_large_err,
        reason = "the refusal is the page, answered at once"
    )]
    pub(crate) fn require(&self, need: Need) -> std::result::Result<(), Response> {
        if self.may(need) {
            Ok(())
        } else {
            Err(page::forbidden(self))
        }
    }

    /// Whether the role grants `need` for the change `action`: a refusal is audited (as the
    /// API audits its refused attempts) and answered — a problem document to a script, a
    /// page to a form.
    #[allow(
        clippy::result_large_err,
        reason = "the refusal is the answer, sent at once"
    )]
    pub(crate) async fn permit(
        &self,
        st: &AppState,
        ctx: &crate::api::Ctx,
        need: Need,
        action: &str,
        script: bool,
    ) -> std::result::Result<(), Response> {
        if self.may(need) {
            return Ok(());
        }
        let e = Error::Forbidden("the role does not allow this change");
        let _ = st.app.refused(&self.actor(ctx), action, None, e).await;
        Err(refuse(self, script, "error.forbidden"))
    }

    /// The actor audit records name.
    pub(crate) fn actor(&self, ctx: &crate::api::Ctx) -> keyvault_core::Actor {
        ctx.actor(format!("user:{}", self.user.username))
    }
}

/// Why no [`Visitor`] could be extracted.
#[derive(Debug)]
pub(crate) enum NoVisitor {
    /// No session: to the sign-in form.
    SignIn(Mount),
    /// The backends failed.
    Failed(Error),
}

impl IntoResponse for NoVisitor {
    fn into_response(self) -> Response {
        match self {
            NoVisitor::SignIn(mount) => Redirect::to(&mount.path("/admin/login")).into_response(),
            NoVisitor::Failed(e) => e.into_response(),
        }
    }
}

/// The session the request's cookie names, when it is active and its user enabled.
pub(crate) async fn active_session(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(String, UserRecord, DateTime<Utc>)>> {
    let Some(value) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let Some(session) = st
        .app
        .backends
        .sessions
        .session(&session_digest(value))
        .await?
    else {
        return Ok(None);
    };
    if !session.is_active(Utc::now()) {
        return Ok(None);
    }
    let user = st.app.backends.users.user(&session.username).await?;
    Ok(user
        .filter(|u| u.enabled)
        .map(|u| (value.to_owned(), u, session.expires_at)))
}

impl FromRequestParts<AppState> for Visitor {
    type Rejection = NoVisitor;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, NoVisitor> {
        let mount = Mount::from_request_parts(parts, st)
            .await
            .unwrap_or_default();
        let Some((value, user, _)) = active_session(st, &parts.headers)
            .await
            .map_err(NoVisitor::Failed)?
        else {
            return Err(NoVisitor::SignIn(mount));
        };
        Ok(Visitor {
            csrf: mac(st.app.secret_key(), &["csrf", &value]).map_err(NoVisitor::Failed)?,
            digest: session_digest(&value),
            user,
            lang: Lang::negotiate(&parts.headers),
            https: is_https(parts, st),
            mount,
        })
    }
}

/// A session's end.
pub(crate) fn session_expiry(now: DateTime<Utc>) -> DateTime<Utc> {
    now + TimeDelta::hours(SESSION_HOURS)
}

/// A [`Visitor`] of the dashboard's JSON endpoints: without a session, 401 (a script asks,
/// not a person).
#[derive(Debug, Clone)]
pub(crate) struct ApiVisitor(pub(crate) Visitor);

impl FromRequestParts<AppState> for ApiVisitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        match Visitor::from_request_parts(parts, st).await {
            Ok(v) => Ok(ApiVisitor(v)),
            Err(NoVisitor::SignIn(_)) => Err(crate::error::Code::Unauthorized
                .problem("sign in to the dashboard first")
                .into_response()),
            Err(NoVisitor::Failed(e)) => Err(e.into_response()),
        }
    }
}

/// A change request of the dashboard: a signed-in visitor, from this origin, with the
/// session's CSRF token (the form's `csrf` field, or `X-CSRF-Token` from a script), and its
/// body (a form, or JSON from a script). Anything else is refused (403) before the handler
/// runs, so it changes nothing.
#[derive(Debug)]
pub(crate) struct Change<T> {
    pub(crate) v: Visitor,
    pub(crate) body: T,
    /// Whether a script sent it (JSON in, JSON out).
    pub(crate) script: bool,
}

/// Why a change was refused before it reached its handler.
fn refuse(v: &Visitor, script: bool, message: &'static str) -> Response {
    if script {
        crate::error::Code::Forbidden
            .problem(v.lang.t(message))
            .into_response()
    } else {
        let mut res = page::message(v, StatusCode::FORBIDDEN, message);
        res.headers_mut().remove(header::LOCATION);
        res
    }
}

/// A form that carries nothing but its token (a button: acknowledge, revoke, delete, verify).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Empty {}

impl<T: serde::de::DeserializeOwned + Send> axum::extract::FromRequest<AppState> for Change<T> {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, st: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let v = Visitor::from_request_parts(&mut parts, st)
            .await
            .map_err(IntoResponse::into_response)?;
        let script = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .is_some_and(|c| c.starts_with("application/json"));
        if !same_origin(&parts, st) {
            return Err(refuse(&v, script, "error.origin"));
        }
        let header_token = parts
            .headers
            .get("x-csrf-token")
            .and_then(|t| t.to_str().ok())
            .map(str::to_owned);
        let req = axum::extract::Request::from_parts(parts, body);
        let Ok(bytes) = axum::body::Bytes::from_request(req, st).await else {
            return Err(refuse(&v, script, "error.body"));
        };
        let (token, body) = if script {
            (header_token, serde_json::from_slice::<T>(&bytes).ok())
        } else {
            let pairs: Vec<(String, String)> =
                serde_html_form::from_bytes(&bytes).unwrap_or_default();
            let token = pairs
                .iter()
                .find(|(k, _)| k == "csrf")
                .map(|(_, t)| t.clone())
                .or(header_token);
            (token, serde_html_form::from_bytes::<T>(&bytes).ok())
        };
        if !token.is_some_and(|t| same(&t, &v.csrf)) {
            return Err(refuse(&v, script, "error.csrf"));
        }
        let Some(body) = body else {
            return Err(refuse(&v, script, "error.body"));
        };
        Ok(Change { v, body, script })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_equal_only_when_every_byte_is() {
        let csrf = mac("a secret key of thirty-two bytes", &["csrf", "cookie"]).unwrap();
        assert!(same(&csrf, &csrf.clone()));
        // The last byte, the first byte, a prefix, an extension, the empty string.
        let mut last = csrf.clone();
        let flipped = if last.ends_with('0') { "1" } else { "0" };
        last.replace_range(63.., flipped);
        let mut first = csrf.clone();
        let flipped = if first.starts_with('0') { "1" } else { "0" };
        first.replace_range(..1, flipped);
        for other in [
            last,
            first,
            csrf[..63].to_owned(),
            format!("{csrf}0"),
            String::new(),
        ] {
            assert!(!same(&csrf, &other), "{other}");
            assert!(!same(&other, &csrf), "{other}");
        }
        // A token of another session, or of the sign-in form, is another value.
        let other = mac("a secret key of thirty-two bytes", &["csrf", "cookie2"]).unwrap();
        let login = mac("a secret key of thirty-two bytes", &["login", "cookie"]).unwrap();
        assert!(!same(&csrf, &other) && !same(&csrf, &login));
    }
}
