//! `/admin/alerts`: the alerts (firing, acknowledged, resolved) newest first, filtered by
//! state; operators acknowledge them and create, change, enable, disable and delete rules;
//! admins manage the notification channels ([`super::channels`]).

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use keyvault_core::{Alert, AlertQuery, AlertRule, AlertState};
use serde::Deserialize;
use serde_json::Value;

use super::{
    channels::{self, ChannelLine, Panel},
    flash,
    i18n::Lang,
    page::{Shell, failure, render},
    session::{Change, Empty, Visitor},
};
use crate::{
    alerts::{KINDS, NewRule, RulePatch},
    api::{AppState, Ctx},
    auth::Need,
    error::{Error, Problem, Result},
};

/// Alerts on the page.
const SHOWN: usize = 100;

/// One alert as shown.
#[derive(Debug, Clone)]
pub(crate) struct AlertLine {
    pub(crate) id: String,
    pub(crate) state: &'static str,
    pub(crate) kind: String,
    pub(crate) summary: String,
    pub(crate) key_id: String,
    pub(crate) ip: String,
    pub(crate) value: String,
    pub(crate) threshold: String,
    pub(crate) started_at: String,
    pub(crate) ended_at: String,
}

impl AlertLine {
    /// `a` as shown in `lang`: an `expiring` alert's value and threshold (seconds) as
    /// lengths of time.
    pub(crate) fn of(a: Alert, lang: Lang) -> Self {
        let expiring = a.kind == "expiring";
        let figure = |v: f64| {
            if expiring {
                super::format::span(v, lang)
            } else if v.fract() == 0.0 && v.abs() < 1e15 {
                format!("{v:.0}")
            } else {
                format!("{v:.3}")
            }
        };
        Self {
            id: a.id.to_string(),
            state: a.state.as_str(),
            kind: a.kind,
            summary: a.summary,
            key_id: a.key_id.map(|k| k.to_string()).unwrap_or_default(),
            ip: a.ip.unwrap_or_default(),
            value: figure(a.value),
            threshold: figure(a.threshold),
            started_at: a.started_at.to_rfc3339(),
            ended_at: a
                .resolved_at
                .or(a.acknowledged_at)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
        }
    }

    pub(crate) fn badge(&self) -> &'static str {
        match self.state {
            "firing" => "text-bg-danger",
            "acknowledged" => "text-bg-warning",
            _ => "text-bg-success",
        }
    }
}

/// One rule as shown.
#[derive(Debug, Clone)]
pub(crate) struct RuleLine {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) params: String,
    pub(crate) scope: String,
    pub(crate) enabled: bool,
}

impl From<AlertRule> for RuleLine {
    fn from(r: AlertRule) -> Self {
        Self {
            id: r.id.to_string(),
            scope: match (&r.key_id, &r.owner_id) {
                (Some(k), _) => format!("key {k}"),
                (None, Some(o)) => format!("owner {o}"),
                (None, None) => String::new(),
            },
            name: r.name,
            kind: r.kind,
            params: r.params.to_string(),
            enabled: r.enabled,
        }
    }
}

/// The new-rule form (and, for an existing rule, its edit form).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RuleForm {
    pub(crate) name: String,
    pub(crate) kind: String,
    /// The params as JSON text.
    pub(crate) params: String,
    pub(crate) key_id: String,
    pub(crate) owner_id: String,
    /// A checkbox: present when on.
    pub(crate) enabled: Option<String>,
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    shell: Shell,
    state: &'static str,
    alerts: Vec<AlertLine>,
    rules: Vec<RuleLine>,
    kinds: [&'static str; 8],
    form: RuleForm,
    /// The rule the errors concern (empty: the new-rule form).
    form_rule: String,
    /// By the input they are shown beside: the field as the REST API names it, and the message.
    errors: BTreeMap<String, (String, String)>,
    /// Admins: the notification channels, the kinds they may have, the events they may get.
    channels: Vec<ChannelLine>,
    channel_kinds: Vec<&'static str>,
    events: [&'static str; 4],
    channel: Panel,
}

impl AlertsPage {
    fn error(&self, input: &str) -> Option<&String> {
        self.errors.get(input).map(|(_, m)| m)
    }

    /// The field the error beside `input` names (`params.window` beside `params`).
    fn error_field<'a>(&'a self, input: &'a str) -> &'a str {
        self.errors.get(input).map_or(input, |(f, _)| f.as_str())
    }

    /// A channel kind in words (a kind a Rust host registered shows as its name).
    fn kind_label(&self, kind: &str) -> String {
        match self.shell.lang.lookup(&format!("notifiers.kind_{kind}")) {
            Some(words) => format!("{kind} — {words}"),
            None => kind.to_owned(),
        }
    }
}

fn state_of(q: &HashMap<String, String>) -> (&'static str, Option<AlertState>) {
    match q
        .get("state")
        .map(String::as_str)
        .and_then(AlertState::parse)
    {
        Some(s) => (s.as_str(), Some(s)),
        None if q.get("state").is_some_and(|s| s == "all") => ("all", None),
        None => ("open", None),
    }
}

#[allow(clippy::too_many_arguments, reason = "one page's parts")]
pub(super) async fn show(
    st: &AppState,
    v: &Visitor,
    status: StatusCode,
    q: &HashMap<String, String>,
    form: RuleForm,
    form_rule: String,
    errors: BTreeMap<String, (String, String)>,
    channel: Panel,
) -> Result<Response> {
    let (state, filter) = state_of(q);
    let mut alerts = if state == "open" {
        // The newest of each open state, through the state index: never every open alert.
        let mut open = Vec::with_capacity(2 * SHOWN);
        for state in [AlertState::Firing, AlertState::Acknowledged] {
            let q = AlertQuery {
                state: Some(state),
                limit: SHOWN,
                ..AlertQuery::default()
            };
            open.extend(st.app.alerts(&q).await?);
        }
        open.sort_by_key(|a| std::cmp::Reverse(a.id));
        open
    } else {
        st.app
            .alerts(&AlertQuery {
                state: filter,
                limit: SHOWN,
                ..AlertQuery::default()
            })
            .await?
    };
    alerts.truncate(SHOWN);
    let rules = if v.may(Need::Operator) {
        st.app.alert_rules().await?
    } else {
        Vec::new()
    };
    let channels = if v.may(Need::Admin) {
        st.app.notifier_channels().await?
    } else {
        Vec::new()
    };
    let here = v.mount.path(&format!("/admin/alerts?state={state}"));
    let page = AlertsPage {
        shell: Shell::new(v, "alerts", "alerts.title", here),
        state,
        alerts: alerts
            .into_iter()
            .map(|a| AlertLine::of(a, v.lang))
            .collect(),
        rules: rules.into_iter().map(RuleLine::from).collect(),
        kinds: KINDS,
        form,
        form_rule,
        errors,
        channels: channels.iter().map(ChannelLine::from).collect(),
        channel_kinds: st.app.notifiers.kinds(),
        events: channels::events(),
        channel,
    };
    Ok(render(status, &page))
}

pub(super) fn blank_form() -> RuleForm {
    RuleForm {
        kind: "error_rate".into(),
        params: r#"{"above": 0.1, "window": "5m", "min_calls": 20}"#.into(),
        enabled: Some("on".into()),
        ..RuleForm::default()
    }
}

/// `GET /admin/alerts?state=open|firing|acknowledged|resolved|all` (a channel just made
/// shows its secret here once).
pub(crate) async fn page(
    State(st): State<AppState>,
    v: Visitor,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let channel = Panel {
        secret: flash::open(&headers, st.app.secret_key(), &v, channels::NEW_NOTIFIER)
            .filter(|_| v.may(Need::Admin)),
        ..Panel::blank()
    };
    let mut res = show(
        &st,
        &v,
        StatusCode::OK,
        &q,
        blank_form(),
        String::new(),
        BTreeMap::new(),
        channel,
    )
    .await
    .unwrap_or_else(|e| failure(&v, false, e));
    if flash::present(&headers) {
        flash::clear(&mut res, &v);
    }
    res
}

/// `POST /admin/alerts/{id}/ack`.
pub(crate) async fn acknowledge(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    change: Change<Empty>,
) -> Response {
    let Change { v, script, .. } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Operator, "alert.ack", script)
        .await
    {
        return r;
    }
    match st.app.acknowledge_alert(&id, &v.actor(&ctx)).await {
        Ok(_) => Redirect::to(&v.mount.path("/admin/alerts")).into_response(),
        Err(e) => failure(&v, script, e),
    }
}

/// The input an error of the rule form belongs beside, the field it names, and its message.
fn form_error(v: &Visitor, e: &Error) -> (String, (String, String)) {
    let field = e.field().unwrap_or("params").to_owned();
    let code = Problem::from(e).code();
    let base = if field.starts_with("params") {
        "params"
    } else {
        field.as_str()
    };
    let label = v
        .lang
        .lookup(&format!("field.rule_{base}"))
        .unwrap_or_else(|| v.lang.t(&format!("problem.{code}")));
    // The detail names the exact param (`params.window`), in the API's words.
    let detail = match e {
        Error::Core(keyvault_core::Error::Invalid(i)) => {
            format!("{label} ({}: {})", i.field, i.message)
        }
        _ => label.to_owned(),
    };
    (base.to_owned(), (field.clone(), detail))
}

impl RuleForm {
    /// The form's params as JSON, or the error beside the params field.
    fn params(&self) -> std::result::Result<Value, Error> {
        let text = self.params.trim();
        if text.is_empty() {
            return Ok(Value::Object(Default::default()));
        }
        serde_json::from_str(text).map_err(|e| {
            Error::Core(keyvault_core::Error::invalid(
                "params",
                format!("is not JSON: {e}"),
            ))
        })
    }

    fn key_id(&self) -> std::result::Result<Option<keyvault_core::KeyId>, Error> {
        match self.key_id.trim() {
            "" => Ok(None),
            k => k.parse().map(Some).map_err(|_| {
                Error::Core(keyvault_core::Error::invalid("key_id", "is not a key id"))
            }),
        }
    }

    fn owner(&self) -> Option<String> {
        Some(self.owner_id.trim().to_owned()).filter(|o| !o.is_empty())
    }
}

async fn refused_form(
    st: &AppState,
    v: &Visitor,
    form: RuleForm,
    form_rule: String,
    e: Error,
) -> Response {
    if !Problem::from(&e).status().is_client_error() {
        return failure(v, false, e);
    }
    let errors = BTreeMap::from([form_error(v, &e)]);
    show(
        st,
        v,
        StatusCode::UNPROCESSABLE_ENTITY,
        &HashMap::new(),
        form,
        form_rule,
        errors,
        Panel::blank(),
    )
    .await
    .unwrap_or_else(|e| failure(v, false, e))
}

/// `POST /admin/alerts/rules`: a new rule.
pub(crate) async fn create_rule(
    State(st): State<AppState>,
    ctx: Ctx,
    change: Change<RuleForm>,
) -> Response {
    let Change {
        v,
        body: form,
        script,
    } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Operator, "alert_rule.create", script)
        .await
    {
        return r;
    }
    let made = async {
        let new = NewRule {
            name: form.name.clone(),
            kind: form.kind.trim().to_owned(),
            params: form.params()?,
            key_id: form.key_id()?,
            owner_id: form.owner(),
            enabled: form.enabled.is_some(),
        };
        st.app.create_alert_rule(new, &v.actor(&ctx)).await
    }
    .await;
    match made {
        Ok(_) => Redirect::to(&v.mount.path("/admin/alerts")).into_response(),
        Err(e) => refused_form(&st, &v, form, String::new(), e).await,
    }
}

/// `POST /admin/alerts/rules/{id}`: the rule's name, params and switch as the form gives
/// them.
pub(crate) async fn update_rule(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    change: Change<RuleForm>,
) -> Response {
    let Change {
        v,
        body: form,
        script,
    } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Operator, "alert_rule.update", script)
        .await
    {
        return r;
    }
    let changed = async {
        let patch = RulePatch {
            name: Some(form.name.clone()),
            kind: None,
            params: Some(form.params()?),
            // The row's form edits neither scope: a rule keeps the key or owner it watches.
            key_id: None,
            owner_id: None,
            enabled: Some(form.enabled.is_some()),
        };
        st.app.update_alert_rule(&id, patch, &v.actor(&ctx)).await
    }
    .await;
    match changed {
        Ok(_) => Redirect::to(&v.mount.path("/admin/alerts")).into_response(),
        Err(e) => refused_form(&st, &v, form, id, e).await,
    }
}

/// `POST /admin/alerts/rules/{id}/delete`.
pub(crate) async fn delete_rule(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    change: Change<Empty>,
) -> Response {
    let Change { v, script, .. } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Operator, "alert_rule.delete", script)
        .await
    {
        return r;
    }
    match st.app.delete_alert_rule(&id, &v.actor(&ctx)).await {
        Ok(()) => Redirect::to(&v.mount.path("/admin/alerts")).into_response(),
        Err(e) => failure(&v, script, e),
    }
}
