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
use utoipa::ToSchema;

use super::{
    AppState, Caller,
    extract::{IdPath, JsonBody, Required, accept, redact},
    openapi::ProblemDoc,
    pagination::{self, Pagination},
    shapes,
};
use crate::{
    auth::{Need, Role},
    error::{Error, Problem, Result},
    views::{RoleName, TokenView},
};

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewToken)]
pub(crate) struct CreateTokenBody {
    #[schema(schema_with = shapes::name)]
    name: String,
    #[schema(value_type = RoleName)]
    role: Role,
    /// Must be in the future; null or absent: never expires.
    #[serde(default)]
    #[schema(schema_with = shapes::date_time_or_null)]
    expires_at: Option<DateTime<Utc>>,
}

/// A token just created: its fields and, once, the token.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedToken)]
pub(crate) struct CreatedTokenView {
    #[schema(schema_with = shapes::uuid)]
    id: String,
    /// The token: shown here once.
    token: String,
    name: String,
    #[schema(value_type = RoleName)]
    role: String,
    start: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

/// A token's id in a path (a malformed one is unknown: 404).
#[derive(utoipa::IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct TokenIdParam(#[param(schema_with = shapes::uuid)] String);

impl Required for CreateTokenBody {
    const REQUIRED: &'static [&'static str] = &["name", "role"];
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", operation_id = "createToken",
    request_body = CreateTokenBody,
    responses(
        (status = 201, description = "Created; `token` is shown only here", body = CreatedTokenView),
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
    let body = CreatedTokenView {
        id: view.id,
        token: created.token.expose().to_owned(),
        name: view.name,
        role: view.role,
        start: view.start,
        created_at: view.created_at,
        expires_at: view.expires_at,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// One page of tokens, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenPage {
    items: Vec<TokenView>,
    /// Opaque; null on the last page.
    next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", operation_id = "listTokens",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, pattern = r"^t1\.[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$",
            description = "`next_cursor` of the previous page (opaque; its shape is given so that a client can tell a damaged one)")),
    responses(
        (status = 200, description = "A page of tokens", body = TokenPage),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(st): State<AppState>,
    caller: Caller,
    pagination: Result<Pagination<pagination::Tokens>, Error>,
) -> Result<Json<TokenPage>> {
    caller.require(&st, Need::Admin, "token.list").await?;
    let p = pagination?;
    p.query.finish()?;
    let page = st.app.backends.tokens.list_tokens(p.after, p.limit).await?;
    let next_cursor = Pagination::<pagination::Tokens>::next_cursor(&page, |t| t.id);
    Ok(Json(TokenPage {
        items: page.items.iter().map(TokenView::from).collect(),
        next_cursor,
    }))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", operation_id = "revokeToken",
    params(TokenIdParam),
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
