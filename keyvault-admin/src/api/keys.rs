//! `/v1/keys`: create, list, read, change, delete, rotate, batch.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use keyvault_core::{BatchAction, KeyId, KeyQuery};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    AppState, Caller,
    extract::{IdPath, JsonBody, Required, accept, redact},
    openapi::ProblemDoc,
    pagination::{self, Pagination},
    shapes,
    wire::{KeyPatchBody, NewKeyBody},
};
use crate::{
    auth::Need,
    error::{Error, Problem, Result},
    views::KeyView,
};

/// The key ids of the API: a malformed one is simply unknown.
pub(super) fn key_id(text: &str) -> Result<KeyId> {
    text.parse()
        .map_err(|_| Error::NotFound(format!("key {:?}", redact(text))))
}

/// A key just created: its fields and, once, the key.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedKey)]
pub(crate) struct CreatedKeyView {
    #[serde(flatten)]
    view: KeyView,
    /// The key: shown here once, never again.
    key: String,
}

#[utoipa::path(post, path = "/v1/keys", tag = "keys", operation_id = "createKey",
    request_body = NewKeyBody,
    responses(
        (status = 201, description = "Created; `key` is shown only here", body = CreatedKeyView),
        (status = 400, description = "Malformed body or field", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "Invalid value", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<JsonBody<NewKeyBody>, Problem>,
) -> Result<Response> {
    caller.require(&st, Need::Operator, "key.create").await?;
    let body = body.and_then(|b| b.0.into_core().map(JsonBody));
    let new = accept(&st, &caller, "key.create", None, body).await?;
    let created = st.app.kv.create_key(new, &caller.actor()).await?;
    let view = KeyView::load(&st.app.kv, &created.record).await?;
    let body = CreatedKeyView {
        view,
        key: created.key.expose().to_owned(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// One page of keys, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyPage {
    items: Vec<KeyView>,
    /// Opaque; null on the last page.
    next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/keys", tag = "keys", operation_id = "listKeys",
    params(
        ("owner_id" = Option<String>, Query, description = "Only this owner's keys"),
        ("enabled" = Option<bool>, Query, description = "Only enabled (true) or disabled (false) keys"),
        ("search" = Option<String>, Query, description = "Substring of the name or the key's start"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, pattern = r"^k1\.[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$",
            description = "`next_cursor` of the previous page (opaque; its shape is given so that a client can tell a damaged one)")),
    responses(
        (status = 200, description = "A page of keys", body = KeyPage),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(st): State<AppState>,
    caller: Caller,
    pagination: Result<Pagination<pagination::Keys>, Error>,
) -> Result<Json<KeyPage>> {
    caller.require(&st, Need::Viewer, "key.list").await?;
    let Pagination {
        limit,
        after,
        query: mut q,
        ..
    } = pagination?;
    let query = KeyQuery {
        owner_id: q.take("owner_id"),
        enabled: q.parse("enabled", |v| v.parse().ok(), "true or false")?,
        search: q.take("search"),
        limit,
        before: after,
    };
    q.finish()?;
    let page = st.app.kv.list_keys(&query).await?;
    let next_cursor = Pagination::<pagination::Keys>::next_cursor(&page, |k| k.id);
    let mut items = Vec::with_capacity(page.items.len());
    for r in &page.items {
        items.push(KeyView::load(&st.app.kv, r).await?);
    }
    Ok(Json(KeyPage { items, next_cursor }))
}

#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys", operation_id = "getKey",
    params(KeyIdParam),
    responses(
        (status = 200, description = "The key", body = KeyView),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn get(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<KeyView>> {
    caller.require(&st, Need::Viewer, "key.read").await?;
    let record = st.app.kv.get_key(key_id(&id)?).await?;
    Ok(Json(KeyView::load(&st.app.kv, &record).await?))
}

#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys", operation_id = "updateKey",
    params(KeyIdParam),
    request_body = KeyPatchBody,
    responses(
        (status = 200, description = "The key as changed", body = KeyView),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn update(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    body: Result<JsonBody<KeyPatchBody>, Problem>,
) -> Result<Json<KeyView>> {
    caller.require(&st, Need::Operator, "key.update").await?;
    let body = body.and_then(|b| b.0.into_core().map(JsonBody));
    let patch = accept(&st, &caller, "key.update", Some(redact(&id)), body).await?;
    let id = match key_id(&id) {
        Ok(id) => id,
        Err(e) => return Err(st.app.refused(&caller.actor(), "key.update", None, e).await),
    };
    let record = st.app.kv.update_key(id, patch, &caller.actor()).await?;
    Ok(Json(KeyView::load(&st.app.kv, &record).await?))
}

#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", operation_id = "deleteKey",
    params(KeyIdParam),
    responses(
        (status = 204, description = "Deleted: the key answers NOT_FOUND from now on"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode> {
    caller.require(&st, Need::Operator, "key.delete").await?;
    let id = match key_id(&id) {
        Ok(id) => id,
        Err(e) => return Err(st.app.refused(&caller.actor(), "key.delete", None, e).await),
    };
    st.app.kv.delete_key(id, &caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/keys/{id}/rotate` (an empty body is `{}`).
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RotateRequest)]
pub(crate) struct RotateBody {
    /// How long the old key keeps working (default 86400, at most a year; never past the
    /// old key's own expiry).
    #[serde(default, deserialize_with = "super::wire::whole")]
    #[schema(minimum = 0, maximum = 31536000)]
    grace_seconds: Option<u64>,
}

/// A key just rotated: the new key, shown once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RotatedKey)]
pub(crate) struct RotatedKeyView {
    /// The new key's id.
    #[schema(schema_with = shapes::uuid)]
    id: String,
    /// The new key: shown here once.
    key: String,
    start: String,
    name: String,
    #[schema(schema_with = shapes::uuid)]
    old_id: String,
    old_key_expires_at: DateTime<Utc>,
}

/// A key's id in a path. A malformed one is answered as unknown (404), like an id nobody has.
#[derive(utoipa::IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct KeyIdParam(#[param(schema_with = shapes::uuid)] String);

impl Required for RotateBody {
    const EMPTY_IS_OBJECT: bool = true;
}

#[utoipa::path(post, path = "/v1/keys/{id}/rotate", tag = "keys", operation_id = "rotateKey",
    params(KeyIdParam),
    request_body(content = RotateBody, description = "Optional; the default grace is 24 hours"),
    responses(
        (status = 201, description = "The new key, shown only here", body = RotatedKeyView),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Disabled, expired or already rotated", body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn rotate(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    body: Result<JsonBody<RotateBody>, Problem>,
) -> Result<Response> {
    caller.require(&st, Need::Operator, "key.rotate").await?;
    let body = accept(&st, &caller, "key.rotate", Some(redact(&id)), body).await?;
    let id = match key_id(&id) {
        Ok(id) => id,
        Err(e) => return Err(st.app.refused(&caller.actor(), "key.rotate", None, e).await),
    };
    let grace = body.grace_seconds.map(Duration::from_secs);
    let rotated = st.app.rotate_key(id, grace, &caller.actor()).await?;
    let view = KeyView::load(&st.app.kv, &rotated.record).await?;
    let body = RotatedKeyView {
        id: rotated.record.id.to_string(),
        key: rotated.key.expose().to_owned(),
        start: view.start,
        name: view.name,
        old_id: rotated.old_id.to_string(),
        old_key_expires_at: rotated.old_key_expires_at,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /v1/keys/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BatchRequest)]
pub(crate) struct BatchBody {
    action: BatchActionBody,
    /// Key ids; one that is not a key's id gets its own `not_found` result.
    #[schema(max_items = 1000)]
    ids: Vec<String>,
}

impl Required for BatchBody {
    const REQUIRED: &'static [&'static str] = &["action", "ids"];
}

/// What a batch does to every key.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = BatchAction)]
pub(crate) enum BatchActionBody {
    Enable,
    Disable,
    Delete,
}

impl From<BatchActionBody> for BatchAction {
    fn from(a: BatchActionBody) -> Self {
        match a {
            BatchActionBody::Enable => BatchAction::Enable,
            BatchActionBody::Disable => BatchAction::Disable,
            BatchActionBody::Delete => BatchAction::Delete,
        }
    }
}

/// One id's result.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchItem {
    /// The id as given (redacted if it looked like a secret); absent only for an internal
    /// failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    ok: bool,
    /// The problem code when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

/// One result per id, in order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchResult {
    results: Vec<BatchItem>,
}

const MAX_BATCH: usize = 1_000;

#[utoipa::path(post, path = "/v1/keys/batch", tag = "keys", operation_id = "batchKeys",
    request_body = BatchBody,
    responses(
        (status = 200, description = "One result per id, in order", body = BatchResult),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn batch(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<JsonBody<BatchBody>, Problem>,
) -> Result<Json<BatchResult>> {
    caller.require(&st, Need::Operator, "key.batch").await?;
    let body = accept(&st, &caller, "key.batch", None, body).await?;
    if body.ids.len() > MAX_BATCH {
        return Err(Error::input("ids", format!("at most {MAX_BATCH} ids")));
    }
    let action = BatchAction::from(body.action);
    let actor = caller.actor();
    let failed = |id: Option<String>, e: &Error| BatchItem {
        id,
        ok: false,
        error: Some(Problem::from(e).code()),
    };
    let mut ids = Vec::new();
    let mut results: Vec<Option<BatchItem>> = Vec::with_capacity(body.ids.len());
    for text in &body.ids {
        match key_id(text) {
            Ok(id) => {
                ids.push(id);
                results.push(None);
            }
            Err(e) => {
                let e = st.app.refused(&actor, batch_action(action), None, e).await;
                results.push(Some(failed(Some(redact(text)), &e)));
            }
        }
    }
    let mut done = st.app.kv.batch(action, &ids, &actor).await.into_iter();
    let results = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| match done.next() {
                Some((id, Ok(()))) => BatchItem {
                    id: Some(id.to_string()),
                    ok: true,
                    error: None,
                },
                Some((id, Err(e))) => failed(Some(id.to_string()), &Error::from(e)),
                None => failed(None, &Error::Internal("a batch result is missing".into())),
            })
        })
        .collect();
    Ok(Json(BatchResult { results }))
}

fn batch_action(a: BatchAction) -> &'static str {
    match a {
        BatchAction::Enable => "key.enable",
        BatchAction::Disable => "key.disable",
        BatchAction::Delete => "key.delete",
    }
}
