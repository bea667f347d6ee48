//! The admin's pages: `/admin/tokens` (API tokens: create, shown once; list; revoke) and
//! `/admin/users` (dashboard users: create, change role, disable or enable, set a new
//! password). Every change here needs the admin role, whatever the browser sends.

use std::{collections::BTreeMap, str::FromStr};

use keyvault_core::TokenStore as _;

use askama::Template;
use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use chrono::Utc;
use serde::Deserialize;

use super::{
    flash,
    page::{Shell, failure, render},
    range::{local_time, tz_offset},
    session::{Change, Empty, Visitor},
};
use crate::{
    api::{AppState, Ctx},
    auth::{Need, Role},
    error::{Error, Problem, Result},
};

/// Tokens listed (the page shows the newest; the CLI and API page through all).
const TOKENS: usize = 100;
/// The one view's id for a new token (one token is made per POST).
const NEW_TOKEN: &str = "token";

/// A token as listed.
#[derive(Debug, Clone)]
pub(crate) struct TokenLine {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) role: &'static str,
    pub(crate) start: String,
    pub(crate) created_at: String,
    pub(crate) expires_at: Option<String>,
    pub(crate) created_by: String,
    pub(crate) active: bool,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    shell: Shell,
    tokens: Vec<TokenLine>,
    secret: Option<String>,
    form: TokenForm,
    errors: BTreeMap<String, String>,
}

impl TokensPage {
    fn error(&self, field: &str) -> Option<&str> {
        self.errors.get(field).map(String::as_str)
    }
}

/// The new-token form.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct TokenForm {
    name: String,
    role: String,
    expires_at: String,
    tz: String,
}

async fn tokens_page(
    st: &AppState,
    v: &Visitor,
    status: StatusCode,
    secret: Option<String>,
    form: TokenForm,
    errors: BTreeMap<String, String>,
) -> Result<Response> {
    let now = Utc::now();
    let page = st.app.backends.tokens.list_tokens(None, TOKENS).await?;
    let tokens = page
        .items
        .iter()
        .map(|t| TokenLine {
            id: t.id.to_string(),
            name: t.name.clone(),
            role: v.lang.t(&format!("role.{}", t.role.as_str())),
            start: t.start.clone(),
            created_at: t.created_at.to_rfc3339(),
            expires_at: t.expires_at.map(|e| e.to_rfc3339()),
            created_by: t.created_by.clone(),
            active: t.is_active(now),
        })
        .collect();
    let shell = Shell::new(v, "tokens", "tokens.title", v.mount.path("/admin/tokens"));
    let page = TokensPage {
        shell,
        tokens,
        secret,
        form,
        errors,
    };
    Ok(render(status, &page))
}

/// `GET /admin/tokens` (a token just made is shown here once).
pub(crate) async fn tokens(State(st): State<AppState>, v: Visitor, headers: HeaderMap) -> Response {
    if let Err(r) = v.require(Need::Admin) {
        return r;
    }
    let secret = flash::open(&headers, st.app.secret_key(), &v, NEW_TOKEN);
    let form = TokenForm {
        role: "verifier".into(),
        ..TokenForm::default()
    };
    let mut res = tokens_page(&st, &v, StatusCode::OK, secret, form, BTreeMap::new())
        .await
        .unwrap_or_else(|e| failure(&v, false, e));
    if flash::present(&headers) {
        flash::clear(&mut res, &v);
    }
    res
}

/// `POST /admin/tokens`: makes a token, shown once on the page the browser lands on.
pub(crate) async fn create_token(
    State(st): State<AppState>,
    ctx: Ctx,
    change: Change<TokenForm>,
) -> Response {
    let Change {
        v,
        body: form,
        script,
    } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Admin, "token.create", script)
        .await
    {
        return r;
    }
    let mut errors = BTreeMap::new();
    let role = Role::from_str(form.role.trim()).ok();
    if role.is_none() {
        errors.insert("role".to_owned(), v.lang.t("form.choose").to_owned());
    }
    let expires = if form.expires_at.trim().is_empty() {
        None
    } else {
        let t = local_time(&form.expires_at, tz_offset(Some(&form.tz)));
        if t.is_none() {
            errors.insert(
                "expires_at".to_owned(),
                v.lang.t("form.datetime").to_owned(),
            );
        }
        t
    };
    let made = match role {
        Some(role) if errors.is_empty() => {
            st.app
                .create_token(form.name.trim(), role, expires, &v.actor(&ctx))
                .await
        }
        _ => Err(Error::input("form", "")),
    };
    match made {
        Ok(created) => {
            let mut res = Redirect::to(&v.mount.path("/admin/tokens")).into_response();
            match flash::seal(
                &mut res,
                st.app.secret_key(),
                &v,
                NEW_TOKEN,
                created.token.expose(),
            ) {
                Ok(()) => res,
                Err(e) => failure(&v, false, e),
            }
        }
        Err(e) => {
            if let Some(field) = e.field().filter(|f| *f != "form") {
                let key = format!("field.token_{field}");
                let message = v
                    .lang
                    .lookup(&key)
                    .unwrap_or_else(|| v.lang.t("field.other"));
                errors.insert(field.to_owned(), message.to_owned());
            } else if errors.is_empty() {
                return failure(&v, false, e);
            }
            tokens_page(
                &st,
                &v,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                form,
                errors,
            )
            .await
            .unwrap_or_else(|e| failure(&v, false, e))
        }
    }
}

/// `POST /admin/tokens/{id}/revoke`.
pub(crate) async fn revoke_token(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    change: Change<Empty>,
) -> Response {
    let Change { v, script, .. } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Admin, "token.revoke", script)
        .await
    {
        return r;
    }
    match st.app.revoke_token(&id, &v.actor(&ctx)).await {
        Ok(()) => Redirect::to(&v.mount.path("/admin/tokens")).into_response(),
        Err(e) => failure(&v, script, e),
    }
}

/// A user as listed.
#[derive(Debug, Clone)]
pub(crate) struct UserLine {
    pub(crate) username: String,
    pub(crate) role: &'static str,
    pub(crate) enabled: bool,
    pub(crate) updated_at: String,
    pub(crate) me: bool,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    shell: Shell,
    users: Vec<UserLine>,
    form: UserForm,
    errors: BTreeMap<String, String>,
    /// A message about the last change (the user it concerned, the message).
    notice: Option<(String, String)>,
}

impl UsersPage {
    fn error(&self, field: &str) -> Option<&str> {
        self.errors.get(field).map(String::as_str)
    }
}

/// The new-user form.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct UserForm {
    username: String,
    role: String,
    password: String,
}

async fn users_page(
    st: &AppState,
    v: &Visitor,
    status: StatusCode,
    form: UserForm,
    errors: BTreeMap<String, String>,
    notice: Option<(String, String)>,
) -> Result<Response> {
    let mut users = st.app.backends.users.users().await?;
    users.sort_by(|a, b| a.username.cmp(&b.username));
    let users = users
        .into_iter()
        .map(|u| UserLine {
            role: u.role.as_str(),
            enabled: u.enabled,
            updated_at: u.updated_at.to_rfc3339(),
            me: u.username == v.user.username,
            username: u.username,
        })
        .collect();
    let shell = Shell::new(v, "users", "users.title", v.mount.path("/admin/users"));
    // The password is never sent back to the page.
    let form = UserForm {
        password: String::new(),
        ..form
    };
    let page = UsersPage {
        shell,
        users,
        form,
        errors,
        notice,
    };
    Ok(render(status, &page))
}

/// `GET /admin/users`.
pub(crate) async fn users(State(st): State<AppState>, v: Visitor) -> Response {
    if let Err(r) = v.require(Need::Admin) {
        return r;
    }
    let form = UserForm {
        role: "viewer".into(),
        ..UserForm::default()
    };
    users_page(&st, &v, StatusCode::OK, form, BTreeMap::new(), None)
        .await
        .unwrap_or_else(|e| failure(&v, false, e))
}

/// The message beside `field` for an error of the user forms.
fn user_error(v: &Visitor, e: &Error) -> (String, String) {
    let field = e.field().unwrap_or("form").to_owned();
    let code = Problem::from(e).code();
    let message = v
        .lang
        .lookup(&format!("field.user_{field}"))
        .filter(|_| code != "conflict")
        .unwrap_or_else(|| v.lang.t(&format!("problem.{code}")));
    (field, message.to_owned())
}

/// `POST /admin/users`: a new dashboard user.
pub(crate) async fn create_user(
    State(st): State<AppState>,
    ctx: Ctx,
    change: Change<UserForm>,
) -> Response {
    let Change {
        v,
        body: form,
        script,
    } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Admin, "user.create", script)
        .await
    {
        return r;
    }
    let Ok(role) = Role::from_str(form.role.trim()) else {
        let errors = BTreeMap::from([("role".to_owned(), v.lang.t("form.choose").to_owned())]);
        return users_page(
            &st,
            &v,
            StatusCode::UNPROCESSABLE_ENTITY,
            form,
            errors,
            None,
        )
        .await
        .unwrap_or_else(|e| failure(&v, false, e));
    };
    let made = st
        .app
        .create_admin(
            form.username.trim(),
            role,
            form.password.clone(),
            &v.actor(&ctx),
        )
        .await;
    match made {
        Ok(()) => Redirect::to(&v.mount.path("/admin/users")).into_response(),
        Err(e) if Problem::from(&e).status().is_client_error() => {
            let (field, message) = user_error(&v, &e);
            let field = if field == "form" {
                "username".to_owned()
            } else {
                field
            };
            let errors = BTreeMap::from([(field, message)]);
            users_page(
                &st,
                &v,
                StatusCode::UNPROCESSABLE_ENTITY,
                form,
                errors,
                None,
            )
            .await
            .unwrap_or_else(|e| failure(&v, false, e))
        }
        Err(e) => failure(&v, false, e),
    }
}

/// A change of one user: role and enabled, or a new password.
#[derive(Debug, Deserialize)]
#[serde(default)]
#[derive(Default)]
pub(crate) struct AccessForm {
    role: String,
    enabled: String,
    password: String,
}

/// `POST /admin/users/{name}/access`: role and enabled.
pub(crate) async fn set_access(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(name): Path<String>,
    change: Change<AccessForm>,
) -> Response {
    let Change { v, body, script } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Admin, "user.update", script)
        .await
    {
        return r;
    }
    let result = match Role::from_str(body.role.trim()) {
        Ok(role) => {
            let enabled = matches!(body.enabled.as_str(), "true" | "on");
            st.app
                .set_user_access(&name, role, enabled, &v.actor(&ctx))
                .await
        }
        Err(_) => Err(Error::input(
            "role",
            "must be one of admin, operator, viewer",
        )),
    };
    after_user_change(&st, &v, &name, result).await
}

/// `POST /admin/users/{name}/password`.
pub(crate) async fn set_password(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(name): Path<String>,
    change: Change<AccessForm>,
) -> Response {
    let Change { v, body, script } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Admin, "user.reset_password", script)
        .await
    {
        return r;
    }
    let result = st
        .app
        .reset_password(&name, body.password, &v.actor(&ctx))
        .await;
    after_user_change(&st, &v, &name, result).await
}

async fn after_user_change(st: &AppState, v: &Visitor, name: &str, result: Result<()>) -> Response {
    match result {
        // A change of one's own account ends one's own session: the sign-in form follows.
        Ok(()) => Redirect::to(&v.mount.path("/admin/users")).into_response(),
        Err(e) if Problem::from(&e).status().is_client_error() => {
            let (_, message) = user_error(v, &e);
            let form = UserForm {
                role: "viewer".into(),
                ..UserForm::default()
            };
            users_page(
                st,
                v,
                StatusCode::UNPROCESSABLE_ENTITY,
                form,
                BTreeMap::new(),
                Some((name.to_owned(), message)),
            )
            .await
            .unwrap_or_else(|e| failure(v, false, e))
        }
        Err(e) => failure(v, false, e),
    }
}
