//! `/admin`: the dashboard's sign-in. Admin users sign in with their password (argon2id,
//! checked off the runtime); a session is a cookie signed with `SECRET_KEY` (HMAC-SHA-256)
//! that names the user and expires after 8 hours. Changing the password ends every session.

use axum::{
    Form,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use chrono::Utc;
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{AppState, Ctx, mount::Mount};
use keyvault_core::UserRecord;

use crate::error::Result;

const COOKIE: &str = "kv_session";
const SESSION_SECS: i64 = 8 * 3600;

fn page(body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>keyvault</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}}
label{{display:block;margin:.8rem 0 .2rem}}input{{width:100%;padding:.4rem;box-sizing:border-box}}
button{{margin-top:1rem;padding:.5rem 1rem}}.error{{color:#b00020}}</style></head>
<body><h1>keyvault</h1>{body}</body></html>"#
    )
}

fn login_page(mount: &Mount, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!(r#"<p class="error" role="alert">{e}</p>"#))
        .unwrap_or_default();
    page(&format!(
        r#"<p>Sign in to manage keys.</p>{error}
<form method="post" action="{action}">
<label for="username">Username</label><input id="username" name="username" autocomplete="username" required>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required minlength="12">
<button type="submit">Sign in</button></form>
<p><small>No account yet? Run <code>keyvault create-admin --username you</code> on the server.</small></p>"#,
        action = escape(&mount.path("/admin/login")),
    ))
}

fn html(status: StatusCode, body: String) -> Response {
    let mut res = (status, Html(body)).into_response();
    let h = res.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn sign(secret: &str, payload: &str) -> Option<Vec<u8>> {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(payload.as_bytes());
    Some(mac.finalize().into_bytes().to_vec())
}

/// `<hex(username)>.<expiry>.<password stamp>.<hex(hmac)>`.
fn session_value(secret: &str, user: &UserRecord) -> Option<String> {
    let exp = Utc::now().timestamp() + SESSION_SECS;
    let payload = format!(
        "{}.{exp}.{}",
        hex(user.username.as_bytes()),
        user.updated_at.timestamp_micros()
    );
    Some(format!("{payload}.{}", hex(&sign(secret, &payload)?)))
}

/// The user a session cookie names, if it is authentic, unexpired and not outdated by a
/// password change.
async fn session_user(st: &AppState, headers: &HeaderMap) -> Result<Option<UserRecord>> {
    let Some(value) = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
    else {
        return Ok(None);
    };
    let Some((payload, sig)) = value.rsplit_once('.') else {
        return Ok(None);
    };
    let secret = st.app.secret_key();
    let (Some(expected), Some(sig)) = (sign(secret, payload), unhex(sig)) else {
        return Ok(None);
    };
    if !bool::from(expected.ct_eq(&sig)) {
        return Ok(None);
    }
    let mut parts = payload.split('.');
    let (Some(name), Some(exp), Some(stamp)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (Some(name), Ok(exp), Ok(stamp)) = (
        unhex(name).and_then(|n| String::from_utf8(n).ok()),
        exp.parse::<i64>(),
        stamp.parse::<i64>(),
    ) else {
        return Ok(None);
    };
    if exp < Utc::now().timestamp() {
        return Ok(None);
    }
    Ok(st
        .app
        .backends
        .users
        .user(&name)
        .await?
        .filter(|u| u.enabled && u.updated_at.timestamp_micros() == stamp))
}

#[utoipa::path(get, path = "/admin", tag = "dashboard", operation_id = "adminPage",
    responses((status = 200, description = "The dashboard, or its sign-in page without a session", body = String, content_type = "text/html")))]
pub(crate) async fn index(
    State(st): State<AppState>,
    mount: Mount,
    headers: HeaderMap,
) -> Result<Response> {
    Ok(match session_user(&st, &headers).await? {
        Some(u) => html(
            StatusCode::OK,
            page(&format!(
                r#"<p>Signed in as <strong>{}</strong> ({}).</p>
<p>Manage keys with the <a href="{docs}">API</a> or the <code>keyvault</code> command.</p>
<form method="post" action="{logout}"><button type="submit">Sign out</button></form>"#,
                escape(&u.username),
                u.role,
                docs = escape(&mount.path("/docs/")),
                logout = escape(&mount.path("/admin/logout")),
            )),
        ),
        None => html(StatusCode::OK, login_page(&mount, None)),
    })
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    username: String,
    password: String,
}

pub(crate) async fn login(
    State(st): State<AppState>,
    ctx: Ctx,
    mount: Mount,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response> {
    let Ok(Form(form)) = form else {
        return Ok(html(
            StatusCode::BAD_REQUEST,
            login_page(&mount, Some("Enter a username and a password.")),
        ));
    };
    let actor = ctx.actor("anonymous");
    let Some(user) = st.app.login(&form.username, form.password, &actor).await? else {
        return Ok(html(
            StatusCode::UNAUTHORIZED,
            login_page(&mount, Some("Wrong username or password.")),
        ));
    };
    let Some(value) = session_value(st.app.secret_key(), &user) else {
        return Err(crate::error::Error::Internal(
            "session signing failed".into(),
        ));
    };
    let cookie = format!(
        "{COOKIE}={value}; Path={}; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}",
        mount.path("/admin")
    );
    let mut res = Redirect::to(&mount.path("/admin")).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}

pub(crate) async fn logout(mount: Mount) -> Response {
    let admin = mount.path("/admin");
    let mut res = Redirect::to(&admin).into_response();
    let cookie = format!("{COOKIE}=; Path={admin}; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}
