//! `/v1/keys`: create, list, read, change, delete, rotate, batch.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use keyvault_core::{BatchAction, KeyId, KeyPatch, KeyQuery, NewKey};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    AppState, Caller,
    extract::{IdPath, JsonBody, QueryParams, Required, accept, redact},
    openapi::ProblemDoc,
};
use crate::{
    auth::Need,
    error::{Error, Problem, Result},
    views::KeyView,
};

impl Required for NewKey {
    const REQUIRED: &'static [&'static str] = &["name"];
}
// CONTRACT §3: in a PATCH, `null` clears a field; `KeyPatch` reads it so.
impl Required for KeyPatch {}

/// The key ids of the API: a malformed one is simply unknown.
pub(super) fn key_id(text: &str) -> Result<KeyId> {
    text.parse()
        .map_err(|_| Error::NotFound(format!("key {:?}", redact(text))))
}

/// A key just created: its fields and, once, the key.
#[derive(Debug, Serialize)]
pub(crate) struct CreatedKeyView {
    #[serde(flatten)]
    view: KeyView,
    key: String,
}

#[utoipa::path(post, path = "/v1/keys", tag = "keys",
    request_body = super::openapi::NewKeyDoc,
    responses(
        (status = 201, description = "Created; `key` is shown only here", body = super::openapi::CreatedKeyDoc),
        (status = 400, description = "Malformed body or field", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "Invalid value", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<JsonBody<NewKey>, Problem>,
) -> Result<Response> {
    caller.require(&st, Need::Operator, "key.create").await?;
    let new = accept(&st, &caller, "key.create", None, body).await?;
    let created = st.app.kv.create_key(new, &caller.actor()).await?;
    let view = KeyView::load(&st.app.kv, &created.record).await?;
    let body = CreatedKeyView {
        view,
        key: created.key.expose().to_owned(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// One page of keys.
#[derive(Debug, Serialize)]
pub(crate) struct KeyPage {
    items: Vec<KeyView>,
    next_cursor: Option<String>,
}

const KEY_CURSOR: &str = "k1.";

#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    params(
        ("owner_id" = Option<String>, Query, description = "Only this owner's keys"),
        ("enabled" = Option<bool>, Query, description = "Only enabled (true) or disabled (false) keys"),
        ("search" = Option<String>, Query, description = "Substring of the name or the key's start"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses(
        (status = 200, body = super::openapi::KeyPageDoc),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(st): State<AppState>,
    caller: Caller,
    mut q: QueryParams,
) -> Result<Json<KeyPage>> {
    caller.require(&st, Need::Viewer, "key.list").await?;
    let query = KeyQuery {
        owner_id: q.take("owner_id"),
        enabled: q.parse("enabled", |v| v.parse().ok(), "true or false")?,
        search: q.take("search"),
        limit: q
            .parse(
                "limit",
                |v| v.parse().ok().filter(|n| (1..=100).contains(n)),
                "a whole number from 1 to 100",
            )?
            .unwrap_or(50),
        before: q.parse(
            "cursor",
            |v| v.strip_prefix(KEY_CURSOR)?.parse().ok(),
            "a next_cursor from a previous page",
        )?,
    };
    q.finish()?;
    let page = st.app.kv.list_keys(&query).await?;
    let next_cursor = page
        .has_more
        .then(|| page.items.last().map(|k| format!("{KEY_CURSOR}{}", k.id)))
        .flatten();
    let mut items = Vec::with_capacity(page.items.len());
    for r in &page.items {
        items.push(KeyView::load(&st.app.kv, r).await?);
    }
    Ok(Json(KeyPage { items, next_cursor }))
}

#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, body = super::openapi::KeyDoc),
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

#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    request_body = super::openapi::KeyPatchDoc,
    responses(
        (status = 200, body = super::openapi::KeyDoc),
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
    body: Result<JsonBody<KeyPatch>, Problem>,
) -> Result<Json<KeyView>> {
    caller.require(&st, Need::Operator, "key.update").await?;
    let patch = accept(&st, &caller, "key.update", Some(redact(&id)), body).await?;
    let id = match key_id(&id) {
        Ok(id) => id,
        Err(e) => return Err(st.app.refused(&caller.actor(), "key.update", None, e).await),
    };
    let record = st.app.kv.update_key(id, patch, &caller.actor()).await?;
    Ok(Json(KeyView::load(&st.app.kv, &record).await?))
}

#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
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

/// `POST /v1/keys/{id}/rotate`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateBody {
    #[serde(default)]
    grace_seconds: Option<u64>,
}

impl Required for RotateBody {
    const EMPTY_IS_OBJECT: bool = true;
}

#[utoipa::path(post, path = "/v1/keys/{id}/rotate", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    request_body(content = super::openapi::RotateDoc, description = "Optional; the default grace is 24 hours"),
    responses(
        (status = 201, description = "The new key, shown only here", body = super::openapi::RotatedDoc),
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
    let rotated = st.app.kv.rotate_key(id, grace, &caller.actor()).await?;
    let view = KeyView::load(&st.app.kv, &rotated.record).await?;
    let body = json!({
        "id": rotated.record.id.to_string(),
        "key": rotated.key.expose(),
        "start": view.start,
        "name": view.name,
        "old_id": rotated.old_id.to_string(),
        "old_key_expires_at": rotated.old_key_expires_at,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /v1/keys/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchBody {
    action: BatchAction,
    ids: Vec<String>,
}

impl Required for BatchBody {
    const REQUIRED: &'static [&'static str] = &["action", "ids"];
}

const MAX_BATCH: usize = 1_000;

#[utoipa::path(post, path = "/v1/keys/batch", tag = "keys",
    request_body = super::openapi::BatchDoc,
    responses(
        (status = 200, description = "One result per id, in order", body = super::openapi::BatchResultDoc),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn batch(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<JsonBody<BatchBody>, Problem>,
) -> Result<Json<serde_json::Value>> {
    caller.require(&st, Need::Operator, "key.batch").await?;
    let body = accept(&st, &caller, "key.batch", None, body).await?;
    if body.ids.len() > MAX_BATCH {
        return Err(Error::input("ids", format!("at most {MAX_BATCH} ids")));
    }
    let actor = caller.actor();
    let mut ids = Vec::new();
    let mut results: Vec<Option<serde_json::Value>> = Vec::with_capacity(body.ids.len());
    for text in &body.ids {
        match key_id(text) {
            Ok(id) => {
                ids.push(id);
                results.push(None);
            }
            Err(e) => {
                let e = st
                    .app
                    .refused(&actor, batch_action(body.action), None, e)
                    .await;
                results.push(Some(json!({
                    "id": redact(text),
                    "ok": false,
                    "error": crate::error::Problem::from(&e).code(),
                })))
            }
        }
    }
    let mut done = st.app.kv.batch(body.action, &ids, &actor).await.into_iter();
    let results: Vec<serde_json::Value> = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| match done.next() {
                Some((id, Ok(()))) => json!({ "id": id.to_string(), "ok": true }),
                Some((id, Err(e))) => json!({
                    "id": id.to_string(),
                    "ok": false,
                    "error": crate::error::Problem::from(&Error::from(e)).code(),
                }),
                None => json!({ "ok": false, "error": "internal" }),
            })
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

fn batch_action(a: BatchAction) -> &'static str {
    match a {
        BatchAction::Enable => "key.enable",
        BatchAction::Disable => "key.disable",
        BatchAction::Delete => "key.delete",
    }
}
