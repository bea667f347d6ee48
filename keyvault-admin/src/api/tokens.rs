//! `/v1/tokens`: API tokens for automation (admin only).

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use keyvault_core::TokenStore;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    AppState, Caller,
    extract::{IdPath, JsonBody, QueryParams, Required, accept, redact},
    openapi::ProblemDoc,
};
use crate::{
    auth::{Need, Role},
    error::{Error, Problem, Result},
    views::TokenView,
};

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTokenBody {
    name: String,
    role: Role,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

impl Required for CreateTokenBody {
    const REQUIRED: &'static [&'static str] = &["name", "role"];
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens",
    request_body = super::openapi::NewTokenDoc,
    responses(
        (status = 201, description = "Created; `token` is shown only here", body = super::openapi::CreatedTokenDoc),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<JsonBody<CreateTokenBody>, Problem>,
) -> Result<Response> {
    caller.require(&st, Need::Admin, "token.create").await?;
    let body = accept(&st, &caller, "token.create", None, body).await?;
    let created = st
        .app
        .create_token(&body.name, body.role, body.expires_at, &caller.actor())
        .await?;
    let view = TokenView::from(&created.record);
    let body = json!({
        "id": view.id,
        "token": created.token.expose(),
        "name": view.name,
        "role": view.role,
        "start": view.start,
        "created_at": view.created_at,
        "expires_at": view.expires_at,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// One page of tokens.
#[derive(Debug, Serialize)]
pub(crate) struct TokenPage {
    items: Vec<TokenView>,
    next_cursor: Option<String>,
}

const TOKEN_CURSOR: &str = "t1.";

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses(
        (status = 200, body = super::openapi::TokenPageDoc),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(st): State<AppState>,
    caller: Caller,
    mut q: QueryParams,
) -> Result<Json<TokenPage>> {
    caller.require(&st, Need::Admin, "token.list").await?;
    let limit: usize = q
        .parse(
            "limit",
            |v| v.parse().ok().filter(|n| (1..=100).contains(n)),
            "a whole number from 1 to 100",
        )?
        .unwrap_or(50);
    let before = q.parse(
        "cursor",
        |v| uuid::Uuid::parse_str(v.strip_prefix(TOKEN_CURSOR)?).ok(),
        "a next_cursor from a previous page",
    )?;
    q.finish()?;
    let page = st.app.backends.tokens.list_tokens(before, limit).await?;
    let next_cursor = page
        .has_more
        .then(|| page.items.last().map(|t| format!("{TOKEN_CURSOR}{}", t.id)))
        .flatten();
    Ok(Json(TokenPage {
        items: page.items.iter().map(TokenView::from).collect(),
        next_cursor,
    }))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked: refused by every instance within a second"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "Unknown or already revoked", body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn revoke(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode> {
    caller.require(&st, Need::Admin, "token.revoke").await?;
    st.app
        .revoke_token(&redact(&id), &caller.actor())
        .await
        .map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound("token".into()),
            other => other,
        })?;
    Ok(StatusCode::NO_CONTENT)
}
