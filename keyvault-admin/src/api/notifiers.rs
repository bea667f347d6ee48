//! `/v1/notifiers` (admin), CONTRACT §7: notification channels, and a test message.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use keyvault_core::NotifierRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    AppState, Caller,
    alerts::IdParam,
    extract::{IdPath, JsonBody, Required, accept},
    openapi::ProblemDoc,
    shapes,
};
use crate::{
    auth::Need,
    error::{Problem, Result},
    notify::{EVENTS, guard},
};

/// A notification channel. Its URL shows as scheme and host only (a Slack URL is a
/// credential), and its secret never.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Notifier)]
pub(crate) struct NotifierView {
    #[schema(schema_with = shapes::uuid)]
    id: String,
    name: String,
    /// `webhook`, `slack`, or a kind a Rust host registered.
    kind: String,
    /// Scheme, host and port.
    url: String,
    /// The event types it receives (all when empty).
    #[schema(schema_with = events_schema)]
    events: Vec<String>,
    created_at: DateTime<Utc>,
}

impl From<&NotifierRecord> for NotifierView {
    fn from(n: &NotifierRecord) -> Self {
        Self {
            id: n.id.to_string(),
            name: n.name.clone(),
            kind: n.kind.clone(),
            url: guard::shown(&n.url),
            events: n.events.clone(),
            created_at: n.created_at,
        }
    }
}

/// A channel just made: a webhook's signing secret is shown here, once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedNotifier)]
pub(crate) struct CreatedView {
    #[serde(flatten)]
    channel: NotifierView,
    /// `whsec_` and the base64 of the key: verify the `webhook-signature` header with it.
    /// Webhooks only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^whsec_[A-Za-z0-9+/]+=*$")]
    secret: Option<String>,
}

fn events_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .enum_values(Some(EVENTS)),
        )
        .build()
}

/// `POST /v1/notifiers`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewNotifier)]
pub(crate) struct NewNotifierBody {
    #[schema(schema_with = shapes::name)]
    name: String,
    /// `webhook` or `slack` (or a kind a Rust host registered).
    kind: String,
    /// `http` or `https`; not a loopback, private, link-local or unique-local address.
    #[schema(max_length = 2000)]
    url: String,
    /// Default: every event.
    #[serde(default)]
    #[schema(schema_with = events_schema)]
    events: Option<Vec<String>>,
}

impl Required for NewNotifierBody {
    const REQUIRED: &'static [&'static str] = &["name", "kind", "url"];
}

/// Every channel, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NotifierList {
    items: Vec<NotifierView>,
}

/// What a test message came to.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TestResult {
    delivered: bool,
    /// The receiver's HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    /// Why it was not delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[utoipa::path(post, path = "/v1/notifiers", tag = "alerts", operation_id = "createNotifier",
    request_body = NewNotifierBody,
    responses(
        (status = 201, description = "Created; a webhook's `secret` is shown this once", body = CreatedView),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "A bad name, kind, URL (with the reason) or event, named in `field`", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<JsonBody<NewNotifierBody>, Problem>,
) -> Result<Response> {
    caller.require(&st, Need::Admin, "notifier.create").await?;
    let b = accept(&st, &caller, "notifier.create", None, body).await?;
    let made = st
        .app
        .create_notifier(
            crate::NewNotifier {
                name: b.name,
                kind: b.kind,
                url: b.url,
                events: b.events,
            },
            &caller.actor(),
        )
        .await?;
    let view = CreatedView {
        channel: NotifierView::from(&made.record),
        secret: made.secret,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[utoipa::path(get, path = "/v1/notifiers", tag = "alerts", operation_id = "listNotifiers",
    responses(
        (status = 200, description = "Every channel, oldest first", body = NotifierList),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn list(State(st): State<AppState>, caller: Caller) -> Result<Json<NotifierList>> {
    caller.require(&st, Need::Admin, "notifier.list").await?;
    let items = st.app.notifier_channels().await?;
    Ok(Json(NotifierList {
        items: items.iter().map(NotifierView::from).collect(),
    }))
}

#[utoipa::path(delete, path = "/v1/notifiers/{id}", tag = "alerts", operation_id = "deleteNotifier",
    params(IdParam),
    responses(
        (status = 204, description = "Deleted, with its pending deliveries"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode> {
    caller.require(&st, Need::Admin, "notifier.delete").await?;
    st.app.delete_notifier(&id, &caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/notifiers/{id}/test", tag = "alerts", operation_id = "testNotifier",
    params(IdParam),
    responses(
        (status = 200, description = "Sent once, never retried: what it came to", body = TestResult),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn test(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<TestResult>> {
    caller.require(&st, Need::Admin, "notifier.test").await?;
    let out = st.app.test_notifier(&id, &caller.actor()).await?;
    Ok(Json(TestResult {
        delivered: out.delivered,
        status: out.status,
        error: out.error,
    }))
}
