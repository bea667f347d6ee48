//! Handing rotations over: `POST /v1/keys/successor` (the holder of an automatically rotated
//! key claims its successor, once) and `POST /v1/keys/{id}/end-grace` (an operator ends an old
//! key's grace once its traffic has moved).

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use keyvault_core::ClaimRefusal;
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    AppState, Caller,
    extract::{Ctx, IdPath},
    keys::{KeyIdParam, key_id},
    openapi::ProblemDoc,
    shapes,
};
use crate::{
    auth::Need,
    error::{Code, Error, Result},
    views::KeyView,
};

/// A successor handed to the holder of the old key: shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ClaimedSuccessor)]
pub(crate) struct ClaimedView {
    /// The new key's id.
    #[schema(schema_with = shapes::uuid)]
    id: String,
    /// The new key: shown here once.
    key: String,
    /// When the presented old key stops verifying.
    old_key_expires_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/v1/keys/successor", tag = "keys", operation_id = "claimSuccessor",
    description = "The holder of a key that `serve` rotated automatically takes the new key, \
        once, with `Authorization: Bearer <old key>` (no API token) during the old key's grace. \
        The server cannot open the sealed successor itself: only the old key can.",
    responses(
        (status = 200, description = "The new key, shown only here", body = ClaimedView),
        (status = 401, description = "No key presented", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The caller's IP is outside the old key's allow-list", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "Not an enabled key in its grace with an unclaimed successor", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 410, description = "Already claimed (`successor_claimed`)", body = ProblemDoc, content_type = "application/problem+json")),
    security(("old_key" = [])))]
pub(crate) async fn claim(
    State(st): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
) -> Result<Response> {
    let Some(old_key) = keyvault_axum::bearer_token(&headers) else {
        return Err(Error::Unauthorized(
            "present the old key as Authorization: Bearer <key>",
        ));
    };
    let actor = ctx.actor("key-holder");
    match st.app.kv.claim_successor(old_key, ctx.ip, &actor).await? {
        Ok(claimed) => {
            let body = ClaimedView {
                id: claimed.id.to_string(),
                key: claimed.key.expose().to_owned(),
                old_key_expires_at: claimed.old_key_expires_at,
            };
            Ok((StatusCode::OK, Json(body)).into_response())
        }
        Err(ClaimRefusal::Claimed) => Err(Code::SuccessorClaimed
            .problem("this key's successor was already handed out")
            .into()),
        Err(ClaimRefusal::Forbidden) => Err(Error::Forbidden(
            "this address is not in the key's IP allow-list",
        )),
        Err(ClaimRefusal::NoSuccessor) => Err(Error::NotFound(
            "a successor for this key (it must be an enabled key in its grace after an \
             automatic rotation)"
                .into(),
        )),
    }
}

#[utoipa::path(post, path = "/v1/keys/{id}/end-grace", tag = "keys", operation_id = "endGrace",
    description = "Ends a rotated (old) key's grace now: it answers `EXPIRED` from then on, on \
        every instance within a second.",
    params(KeyIdParam),
    responses(
        (status = 200, description = "The old key, its grace over", body = KeyView),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Not an old key in its grace", body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn end_grace(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<KeyView>> {
    let action = "key.end_grace";
    caller.require(&st, Need::Operator, action).await?;
    let id = match key_id(&id) {
        Ok(id) => id,
        Err(e) => return Err(st.app.refused(&caller.actor(), action, None, e).await),
    };
    let record = st.app.kv.end_grace(id, &caller.actor()).await?;
    Ok(Json(KeyView::load(&st.app.kv, &record).await?))
}
