//! `/v1/alert-rules` (operator) and `/v1/alerts` (viewer; acknowledging: operator), CONTRACT §7.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use keyvault_core::{Alert, AlertQuery, AlertRule, AlertState, KeyId, Page};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{
    AppState, Caller,
    extract::{IdPath, JsonBody, Required, accept},
    openapi::ProblemDoc,
    pagination::{self, Pagination},
    shapes,
    wire::present,
};
use crate::{
    alerts::{KINDS, NewRule, RulePatch},
    auth::Need,
    error::{Error, Problem, Result},
};

/// An alert rule.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AlertRule)]
pub(crate) struct RuleView {
    #[schema(schema_with = shapes::uuid)]
    id: String,
    name: String,
    #[schema(schema_with = kind_schema)]
    kind: String,
    /// The kind's params (CONTRACT §7's table).
    #[schema(value_type = Object)]
    params: Value,
    #[schema(schema_with = shapes::uuid_or_null)]
    key_id: Option<String>,
    owner_id: Option<String>,
    enabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<AlertRule> for RuleView {
    fn from(r: AlertRule) -> Self {
        Self {
            id: r.id.to_string(),
            name: r.name,
            kind: r.kind,
            params: r.params,
            key_id: r.key_id.map(|k| k.to_string()),
            owner_id: r.owner_id,
            enabled: r.enabled,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

fn kind_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(KINDS))
        .build()
}

/// An alert: a rule's condition holding (or having held) for one key or client IP.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Alert)]
pub(crate) struct AlertView {
    #[schema(schema_with = shapes::uuid)]
    pub(crate) id: String,
    #[schema(schema_with = shapes::uuid)]
    pub(crate) rule_id: String,
    #[schema(schema_with = kind_schema)]
    pub(crate) kind: String,
    #[schema(schema_with = shapes::uuid_or_null)]
    pub(crate) key_id: Option<String>,
    pub(crate) ip: Option<String>,
    #[schema(value_type = AlertStateDoc)]
    pub(crate) state: AlertState,
    /// The measured value (credits left, seconds left, a fraction, ms, calls…).
    pub(crate) value: f64,
    pub(crate) threshold: f64,
    pub(crate) summary: String,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) acknowledged_at: Option<DateTime<Utc>>,
    pub(crate) resolved_at: Option<DateTime<Utc>>,
}

impl From<Alert> for AlertView {
    fn from(a: Alert) -> Self {
        Self {
            id: a.id.to_string(),
            rule_id: a.rule_id.to_string(),
            kind: a.kind,
            key_id: a.key_id.map(|k| k.to_string()),
            ip: a.ip,
            state: a.state,
            value: a.value,
            threshold: a.threshold,
            summary: a.summary,
            started_at: a.started_at,
            acknowledged_at: a.acknowledged_at,
            resolved_at: a.resolved_at,
        }
    }
}

/// Where an alert is in its life.
#[derive(ToSchema)]
#[schema(as = AlertState, rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum AlertStateDoc {
    Firing,
    Acknowledged,
    Resolved,
}

/// `POST /v1/alert-rules`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewAlertRule)]
pub(crate) struct NewRuleBody {
    #[schema(schema_with = shapes::name)]
    name: String,
    #[schema(schema_with = kind_schema)]
    kind: String,
    /// The kind's params (CONTRACT §7's table); `{}` when absent.
    #[serde(default)]
    #[schema(value_type = Object)]
    params: Value,
    /// Only this key.
    #[serde(default)]
    #[schema(schema_with = shapes::uuid_or_null)]
    key_id: Option<KeyId>,
    /// Only this owner's keys.
    #[serde(default)]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 200)]
    owner_id: Option<String>,
    /// Default true.
    #[serde(default)]
    enabled: Option<bool>,
}

impl Required for NewRuleBody {
    const REQUIRED: &'static [&'static str] = &["name", "kind"];
}

/// `PATCH /v1/alert-rules/{id}`: the fields given change; `null` clears `key_id` or `owner_id`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AlertRulePatch)]
pub(crate) struct RulePatchBody {
    #[serde(default)]
    #[schema(schema_with = shapes::name)]
    name: Option<String>,
    #[serde(default)]
    #[schema(schema_with = kind_schema)]
    kind: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = shapes::uuid_or_null)]
    key_id: Option<Option<KeyId>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 200)]
    owner_id: Option<Option<String>>,
    #[serde(default)]
    enabled: Option<bool>,
}

impl Required for RulePatchBody {}

/// A rule's or an alert's id in a path (a malformed one is unknown: 404).
#[derive(utoipa::IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct IdParam(#[param(schema_with = shapes::uuid)] String);

/// Every alert rule, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RuleList {
    items: Vec<RuleView>,
}

#[utoipa::path(post, path = "/v1/alert-rules", tag = "alerts", operation_id = "createAlertRule",
    request_body = NewRuleBody,
    responses(
        (status = 201, description = "Created", body = RuleView),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "A bad kind, param, name or key, named in `field`", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn create_rule(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<JsonBody<NewRuleBody>, Problem>,
) -> Result<Response> {
    caller
        .require(&st, Need::Operator, "alert_rule.create")
        .await?;
    let b = accept(&st, &caller, "alert_rule.create", None, body).await?;
    let rule = st
        .app
        .create_alert_rule(
            NewRule {
                name: b.name,
                kind: b.kind,
                params: b.params,
                key_id: b.key_id,
                owner_id: b.owner_id,
                enabled: b.enabled.unwrap_or(true),
            },
            &caller.actor(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(RuleView::from(rule))).into_response())
}

#[utoipa::path(get, path = "/v1/alert-rules", tag = "alerts", operation_id = "listAlertRules",
    responses(
        (status = 200, description = "Every rule, oldest first", body = RuleList),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn list_rules(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<RuleList>> {
    caller
        .require(&st, Need::Operator, "alert_rule.list")
        .await?;
    let items = st.app.alert_rules().await?;
    Ok(Json(RuleList {
        items: items.into_iter().map(RuleView::from).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/alert-rules/{id}", tag = "alerts", operation_id = "getAlertRule",
    params(IdParam),
    responses(
        (status = 200, description = "The rule", body = RuleView),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn get_rule(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<RuleView>> {
    caller
        .require(&st, Need::Operator, "alert_rule.read")
        .await?;
    Ok(Json(st.app.alert_rule(&id).await?.into()))
}

#[utoipa::path(patch, path = "/v1/alert-rules/{id}", tag = "alerts", operation_id = "updateAlertRule",
    params(IdParam),
    request_body = RulePatchBody,
    responses(
        (status = 200, description = "The rule as changed", body = RuleView),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn update_rule(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    body: Result<JsonBody<RulePatchBody>, Problem>,
) -> Result<Json<RuleView>> {
    caller
        .require(&st, Need::Operator, "alert_rule.update")
        .await?;
    let b = accept(&st, &caller, "alert_rule.update", None, body).await?;
    let rule = st
        .app
        .update_alert_rule(
            &id,
            RulePatch {
                name: b.name,
                kind: b.kind,
                params: b.params,
                key_id: b.key_id,
                owner_id: b.owner_id,
                enabled: b.enabled,
            },
            &caller.actor(),
        )
        .await?;
    Ok(Json(rule.into()))
}

#[utoipa::path(delete, path = "/v1/alert-rules/{id}", tag = "alerts", operation_id = "deleteAlertRule",
    params(IdParam),
    responses(
        (status = 204, description = "Deleted; its open alerts resolved"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn delete_rule(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode> {
    caller
        .require(&st, Need::Operator, "alert_rule.delete")
        .await?;
    st.app.delete_alert_rule(&id, &caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One page of alerts, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AlertPage {
    items: Vec<AlertView>,
    /// Opaque; null on the last page.
    next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/alerts", tag = "alerts", operation_id = "listAlerts",
    params(
        ("state" = Option<String>, Query, pattern = "^(firing|acknowledged|resolved)$", description = "Only alerts in this state"),
        ("rule_id" = Option<String>, Query, format = Uuid, description = "Only this rule's alerts"),
        ("key_id" = Option<String>, Query, format = Uuid, description = "Only this key's alerts"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, pattern = r"^al1\.[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$",
            description = "`next_cursor` of the previous page")),
    responses(
        (status = 200, description = "A page of alerts", body = AlertPage),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn list_alerts(
    State(st): State<AppState>,
    caller: Caller,
    pagination: Result<Pagination<pagination::Alerts>, Error>,
) -> Result<Json<AlertPage>> {
    caller.require(&st, Need::Viewer, "alert.list").await?;
    let Pagination {
        limit,
        after,
        query: mut q,
        ..
    } = pagination?;
    let state = q.parse(
        "state",
        AlertState::parse,
        "firing, acknowledged or resolved",
    )?;
    let rule_id = q.parse("rule_id", |v| uuid::Uuid::parse_str(v).ok(), "a rule id")?;
    let key_id = q.parse("key_id", |v| v.parse().ok(), "a key id")?;
    q.finish()?;
    let mut items = st
        .app
        .alerts(&AlertQuery {
            state,
            rule_id,
            key_id,
            before: after,
            limit: limit + 1,
        })
        .await?;
    let page = Page::over_fetched(std::mem::take(&mut items), limit);
    let next_cursor = Pagination::<pagination::Alerts>::next_cursor(&page, |a| a.id);
    Ok(Json(AlertPage {
        items: page.items.into_iter().map(AlertView::from).collect(),
        next_cursor,
    }))
}

#[utoipa::path(post, path = "/v1/alerts/{id}/ack", tag = "alerts", operation_id = "acknowledgeAlert",
    params(IdParam),
    responses(
        (status = 200, description = "The alert, acknowledged (one already acknowledged or resolved is returned as it is)", body = AlertView),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn acknowledge(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<AlertView>> {
    caller.require(&st, Need::Operator, "alert.ack").await?;
    Ok(Json(
        st.app.acknowledge_alert(&id, &caller.actor()).await?.into(),
    ))
}
