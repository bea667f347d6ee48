//! Sign-in, sign-out and the language switch.
//!
//! The sign-in form carries a CSRF token too: before a session exists, it is bound to a
//! random nonce in a `kv_login` cookie (HMAC under the secret key), so a form posted from
//! another site, or without having loaded ours, is refused.

use std::time::Instant;

use askama::Template;
use axum::{
    Form,
    extract::{FromRequestParts, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{SubsecRound, Utc};
use keyvault_core::{AuditEvent, AuditOutcome, SessionRecord};
use serde::Deserialize;
use serde_json::json;

use super::{
    guard::Verdict,
    i18n::{LANG_COOKIE, Lang},
    page::{Shell, render, with_headers},
    session::{
        self, SESSION_COOKIE, active_session, cookie, is_https, mac, random_hex, same, same_origin,
        session_digest, set_cookie,
    },
};
use crate::{
    api::{AppState, Ctx, mount::Mount},
    error::Result,
};

const LOGIN_COOKIE: &str = "kv_login";

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    shell: Shell,
    username: String,
    error: Option<String>,
}

/// What a request to the sign-in routes brings: language, prefix, HTTPS or not.
#[derive(Debug)]
pub(crate) struct Visit {
    lang: Lang,
    mount: Mount,
    https: bool,
    same_origin: bool,
    headers: HeaderMap,
}

impl FromRequestParts<AppState> for Visit {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Visit {
            lang: Lang::negotiate(&parts.headers),
            mount: Mount::from_request_parts(parts, st).await?,
            https: is_https(parts, st),
            same_origin: same_origin(parts, st),
            headers: parts.headers.clone(),
        })
    }
}

/// The form, with a fresh nonce (and its cookie) behind its CSRF token.
fn login_form(
    st: &AppState,
    v: &Visit,
    status: StatusCode,
    username: &str,
    error: Option<String>,
) -> Result<Response> {
    let nonce = random_hex()?;
    let csrf = mac(st.app.secret_key(), &["login", &nonce])?;
    let page = LoginPage {
        shell: Shell::anonymous(v.lang, v.mount.clone(), csrf),
        username: username.to_owned(),
        error,
    };
    let mut res = render(status, &page);
    set_cookie(&mut res, &v.mount, v.https, LOGIN_COOKIE, &nonce, 3600);
    Ok(res)
}

/// `GET /admin/login`: the form; a visitor already signed in goes to the overview.
pub(crate) async fn form(State(st): State<AppState>, v: Visit) -> Result<Response> {
    if active_session(&st, &v.headers).await?.is_some() {
        return Ok(Redirect::to(&v.mount.path("/admin")).into_response());
    }
    login_form(&st, &v, StatusCode::OK, "", None)
}

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /admin/login`.
pub(crate) async fn submit(
    State(st): State<AppState>,
    ctx: Ctx,
    v: Visit,
    form: std::result::Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response> {
    let lang = v.lang;
    let Ok(Form(form)) = form else {
        return login_form(
            &st,
            &v,
            StatusCode::BAD_REQUEST,
            "",
            Some(lang.t("login.error_form").into()),
        );
    };
    let username = form.username.trim().to_owned();
    let nonce_ok = cookie(&v.headers, LOGIN_COOKIE)
        .map(|n| mac(st.app.secret_key(), &["login", n]))
        .transpose()?
        .is_some_and(|expected| same(&expected, &form.csrf));
    if !v.same_origin || !nonce_ok {
        return login_form(
            &st,
            &v,
            StatusCode::FORBIDDEN,
            &username,
            Some(lang.t("login.error_csrf").into()),
        );
    }
    if username.is_empty() || form.password.is_empty() {
        return login_form(
            &st,
            &v,
            StatusCode::BAD_REQUEST,
            &username,
            Some(lang.t("login.error_form").into()),
        );
    }
    let actor = ctx.actor("anonymous");
    let now = Instant::now();
    match st.guard.attempt(ctx.ip, &username, now) {
        Verdict::Proceed => {}
        Verdict::Throttled(retry) => {
            let mut res = login_form(
                &st,
                &v,
                StatusCode::TOO_MANY_REQUESTS,
                &username,
                Some(lang.t("login.error_throttled").into()),
            )?;
            if let Ok(h) = HeaderValue::from_str(&retry.as_secs().max(1).to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, h);
            }
            return Ok(res);
        }
        Verdict::Locked(left) => {
            let target = st
                .app
                .backends
                .users
                .user(&username)
                .await?
                .map(|u| u.username);
            st.app
                .audit(
                    &actor,
                    "login",
                    target,
                    AuditOutcome::Refused,
                    json!({"reason": "locked"}),
                )
                .await?;
            let minutes = left.as_secs().div_ceil(60).max(1).to_string();
            let mut res = login_form(
                &st,
                &v,
                StatusCode::TOO_MANY_REQUESTS,
                &username,
                Some(lang.tf("login.error_locked", &[("minutes", &minutes)])),
            )?;
            if let Ok(h) = HeaderValue::from_str(&left.as_secs().max(1).to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, h);
            }
            return Ok(res);
        }
    }
    let Some(user) = st.app.login(&username, form.password, &actor).await? else {
        if st.guard.failed(&username, now) {
            let target = st
                .app
                .backends
                .users
                .user(&username)
                .await?
                .map(|u| u.username);
            st.app
                .audit(
                    &actor,
                    "login.lockout",
                    target,
                    AuditOutcome::Refused,
                    json!({}),
                )
                .await?;
        }
        return login_form(
            &st,
            &v,
            StatusCode::UNAUTHORIZED,
            &username,
            Some(lang.t("login.error_wrong").into()),
        );
    };
    st.guard.succeeded(&username);
    let value = random_hex()?;
    let now = Utc::now().trunc_subsecs(6);
    let record = SessionRecord {
        digest: session_digest(&value),
        username: user.username.clone(),
        created_at: now,
        expires_at: session::session_expiry(now),
    };
    st.app
        .backends
        .sessions
        .create_session(&record, &[])
        .await?;
    let mut res = Redirect::to(&v.mount.path("/admin")).into_response();
    let max_age = session::SESSION_HOURS * 3600;
    set_cookie(&mut res, &v.mount, v.https, SESSION_COOKIE, &value, max_age);
    set_cookie(&mut res, &v.mount, v.https, LOGIN_COOKIE, "", 0);
    Ok(with_headers(res))
}

/// The sign-out form's field.
#[derive(Debug, Deserialize)]
pub(crate) struct SignOutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /admin/logout`: ends the session (on every instance) when the form is genuine.
pub(crate) async fn sign_out(
    State(st): State<AppState>,
    ctx: Ctx,
    v: Visit,
    form: std::result::Result<Form<SignOutForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response> {
    let to_login = v.mount.path("/admin/login");
    let Some((value, user, _)) = active_session(&st, &v.headers).await? else {
        return Ok(Redirect::to(&to_login).into_response());
    };
    let csrf = mac(st.app.secret_key(), &["csrf", &value])?;
    let genuine = v.same_origin && form.is_ok_and(|Form(f)| same(&csrf, &f.csrf));
    if !genuine {
        return Ok(with_headers(
            (StatusCode::FORBIDDEN, v.lang.t("error.csrf")).into_response(),
        ));
    }
    let actor = ctx.actor(format!("user:{}", user.username));
    let audit = AuditEvent::new(
        Utc::now(),
        &actor,
        "logout",
        Some(user.username.clone()),
        AuditOutcome::Success,
        json!({}),
    );
    st.app
        .backends
        .sessions
        .end_session(&session_digest(&value), &[audit])
        .await?;
    let mut res = Redirect::to(&to_login).into_response();
    set_cookie(&mut res, &v.mount, v.https, SESSION_COOKIE, "", 0);
    Ok(with_headers(res))
}

/// The language switch's query.
#[derive(Debug, Deserialize)]
pub(crate) struct LangQuery {
    lang: String,
    #[serde(default)]
    next: String,
}

/// `GET /admin/lang?lang=zh-CN&next=/admin/keys`: remembers the choice and goes back. Only
/// a path of the dashboard is a place to go back to.
pub(crate) async fn switch(
    v: Visit,
    q: std::result::Result<Query<LangQuery>, QueryRejection>,
) -> Response {
    let home = v.mount.path("/admin");
    let Ok(Query(q)) = q else {
        return Redirect::to(&home).into_response();
    };
    let next = if q.next.starts_with(&home)
        && !q.next.contains("//")
        && !q.next.contains('\\')
        && !q.next.bytes().any(|b| b.is_ascii_control())
    {
        q.next
    } else {
        home
    };
    let mut res = Redirect::to(&next).into_response();
    if let Some(lang) = Lang::from_code(&q.lang) {
        let secure = if v.https { "; Secure" } else { "" };
        let c = format!(
            "{LANG_COOKIE}={}; Path={}; SameSite=Lax; Max-Age=31536000{secure}",
            lang.code(),
            v.mount.path("/admin")
        );
        if let Ok(h) = HeaderValue::from_str(&c) {
            res.headers_mut().insert(header::SET_COOKIE, h);
        }
    }
    res
}
