//! `/admin/keys`: the key list — search, filters and pages run by the store, one page at
//! a time (never every key) — the one-click toggle and the batch actions.

use std::collections::HashMap;

use askama::Template;
use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, TimeDelta, Utc};
use keyvault_core::{BatchAction, KeyId, KeyQuery, KeyRecord, StatsQuery};
use serde::{Deserialize, Serialize};

use super::{
    i18n::Lang,
    page::{Shell, failure, render},
    session::{Change, Visitor},
};
use crate::{
    api::{AppState, Ctx},
    auth::Need,
    error::{Error, Problem, Result},
};

/// Keys per page.
const PAGE: usize = 50;
/// The most keys one batch acts on (as `/v1/keys/batch`).
const MAX_BATCH: usize = 1_000;

/// What a key is now, as the list and the detail page show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Enabled,
    Disabled,
    Expired,
    /// Rotated: the old key still verifies until its grace ends.
    Grace,
}

impl Status {
    pub(crate) fn of(r: &KeyRecord, now: DateTime<Utc>) -> Self {
        if !r.enabled {
            Status::Disabled
        } else if r.is_expired(now) {
            Status::Expired
        } else if r.grace_until.is_some() {
            Status::Grace
        } else {
            Status::Enabled
        }
    }

    pub(crate) fn code(self) -> &'static str {
        match self {
            Status::Enabled => "enabled",
            Status::Disabled => "disabled",
            Status::Expired => "expired",
            Status::Grace => "grace",
        }
    }

    pub(crate) fn label(self, lang: Lang) -> &'static str {
        lang.t(&format!("status.{}", self.code()))
    }

    /// Bootstrap's badge colours.
    pub(crate) fn badge(self) -> &'static str {
        match self {
            Status::Enabled => "text-bg-success",
            Status::Disabled => "text-bg-secondary",
            Status::Expired => "text-bg-danger",
            Status::Grace => "text-bg-warning",
        }
    }
}

/// One row of the list.
#[derive(Debug, Clone)]
pub(crate) struct KeyRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) start: String,
    pub(crate) owner: String,
    pub(crate) enabled: bool,
    pub(crate) status: Status,
    pub(crate) status_label: &'static str,
    pub(crate) credits: String,
    pub(crate) last_used: Option<String>,
    pub(crate) expires: Option<String>,
    pub(crate) calls_24h: String,
}

/// The list's filters, as they appear in the URL.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filters {
    pub(crate) q: String,
    pub(crate) owner: String,
    /// `""`, `enabled` or `disabled`.
    pub(crate) state: String,
}

impl Filters {
    fn from_query(q: &HashMap<String, String>) -> Self {
        let clip = |s: Option<&String>| {
            s.map(|s| s.trim().chars().take(200).collect::<String>())
                .unwrap_or_default()
        };
        let state = match q.get("state").map(String::as_str) {
            Some("enabled") => "enabled",
            Some("disabled") => "disabled",
            _ => "",
        };
        Self {
            q: clip(q.get("q")),
            owner: clip(q.get("owner")),
            state: state.to_owned(),
        }
    }

    /// The query string of these filters (without a cursor).
    pub(crate) fn query_string(&self) -> String {
        let pairs: Vec<(&str, &str)> = [
            ("q", &self.q),
            ("owner", &self.owner),
            ("state", &self.state),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.as_str()))
        .collect();
        serde_html_form::to_string(pairs).unwrap_or_default()
    }

    pub(crate) fn any(&self) -> bool {
        !(self.q.is_empty() && self.owner.is_empty() && self.state.is_empty())
    }
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysPage {
    shell: Shell,
    filters: Filters,
    rows: Vec<KeyRow>,
    next: Option<String>,
    first: Option<String>,
    batch_url: String,
    results: Vec<BatchLine>,
}

/// `GET /admin/keys?q=&owner=&state=&cursor=`.
pub(crate) async fn list(
    State(st): State<AppState>,
    v: Visitor,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    page(&st, &v, &q, Vec::new()).await
}

async fn page(
    st: &AppState,
    v: &Visitor,
    q: &HashMap<String, String>,
    results: Vec<BatchLine>,
) -> Result<Response> {
    let filters = Filters::from_query(q);
    let before = q.get("cursor").and_then(|c| c.parse::<KeyId>().ok());
    let query = KeyQuery {
        owner_id: (!filters.owner.is_empty()).then(|| filters.owner.clone()),
        enabled: match filters.state.as_str() {
            "enabled" => Some(true),
            "disabled" => Some(false),
            _ => None,
        },
        search: (!filters.q.is_empty()).then(|| filters.q.clone()),
        limit: PAGE,
        before,
    };
    let found = st.app.kv.list_keys(&query).await?;
    let rows = rows(st, &found.items, v.lang).await?;
    let base = v.mount.path("/admin/keys");
    let fq = filters.query_string();
    let join = |extra: &str| {
        let q = [fq.as_str(), extra]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("&");
        if q.is_empty() {
            base.clone()
        } else {
            format!("{base}?{q}")
        }
    };
    let next = (found.has_more)
        .then(|| {
            found
                .items
                .last()
                .map(|k| join(&format!("cursor={}", k.id)))
        })
        .flatten();
    let first = before.map(|_| join(""));
    let here = join(
        &q.get("cursor")
            .and_then(|c| c.parse::<KeyId>().ok())
            .map(|c| format!("cursor={c}"))
            .unwrap_or_default(),
    );
    let page = KeysPage {
        shell: Shell::new(v, "keys", "keys.title", here),
        filters,
        rows,
        next,
        first,
        batch_url: v.mount.path("/admin/keys/batch"),
        results,
    };
    Ok(render(StatusCode::OK, &page))
}

/// The rows of `keys`: live credits, calls in the last 24 hours.
pub(crate) async fn rows(st: &AppState, keys: &[KeyRecord], lang: Lang) -> Result<Vec<KeyRow>> {
    let now = Utc::now();
    let day = StatsQuery {
        from: now - TimeDelta::hours(24),
        to: now,
        key_id: None,
        provider: None,
        granularity: None,
    };
    let ids: Vec<KeyId> = keys.iter().map(|k| k.id).collect();
    let calls = st.app.backends.stats.calls_by_key(&day, &ids).await?;
    let mut out = Vec::with_capacity(keys.len());
    for r in keys {
        let credits = match st.app.kv.credits_remaining(r).await? {
            Some(n) => lang.num(n),
            None if r.credits.is_some() => lang.num(r.credits.map_or(0, |c| c.remaining)),
            None => lang.t("keys.unlimited").to_owned(),
        };
        let status = Status::of(r, now);
        out.push(KeyRow {
            id: r.id.to_string(),
            name: r.name.clone(),
            start: r.start.clone(),
            owner: r.owner_id.clone().unwrap_or_default(),
            enabled: r.enabled,
            status,
            status_label: status.label(lang),
            credits,
            last_used: r.last_used_at.map(|t| t.to_rfc3339()),
            expires: r.expires_at.map(|t| t.to_rfc3339()),
            calls_24h: lang.num(calls.get(&r.id).copied().unwrap_or(0)),
        });
    }
    Ok(out)
}

/// The toggle's body: the state asked for.
#[derive(Debug, Deserialize)]
pub(crate) struct ToggleBody {
    enabled: BoolField,
    /// Where a form (not a script) returns to.
    #[serde(default)]
    next: String,
}

/// `true`/`false` from JSON, `"true"`/`"false"` from a form.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum BoolField {
    Bool(bool),
    Text(String),
}

impl BoolField {
    fn value(&self) -> Option<bool> {
        match self {
            BoolField::Bool(b) => Some(*b),
            BoolField::Text(t) => t.parse().ok(),
        }
    }
}

/// The toggle's answer to a script.
#[derive(Debug, Serialize)]
pub(crate) struct Toggled {
    id: String,
    enabled: bool,
    status: &'static str,
    status_label: &'static str,
    badge: &'static str,
    /// The toggle's label now (what the next click does).
    action_label: &'static str,
}

/// `POST /admin/keys/{id}/toggle`: enables or disables one key.
pub(crate) async fn toggle(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    change: Change<ToggleBody>,
) -> Response {
    let Change { v, body, script } = change;
    let action = match body.enabled.value() {
        Some(false) => "key.disable",
        _ => "key.enable",
    };
    if let Err(refused) = v.permit(&st, &ctx, Need::Operator, action, script).await {
        return refused;
    }
    toggle_one(&st, &ctx, &id, &v, body, script)
        .await
        .unwrap_or_else(|e| failure(&v, script, e))
}

async fn toggle_one(
    st: &AppState,
    ctx: &Ctx,
    id: &str,
    v: &Visitor,
    body: ToggleBody,
    script: bool,
) -> Result<Response> {
    let Some(enabled) = body.enabled.value() else {
        return Err(Error::input("enabled", "true or false"));
    };
    let id: KeyId = id
        .parse()
        .map_err(|_| Error::NotFound(format!("key {:?}", crate::api::redact(id))))?;
    let record = st.app.kv.set_enabled(id, enabled, &v.actor(ctx)).await?;
    if !script {
        let back = safe_next(v, &body.next, "/admin/keys");
        return Ok(Redirect::to(&back).into_response());
    }
    let status = Status::of(&record, Utc::now());
    Ok(Json(Toggled {
        id: record.id.to_string(),
        enabled: record.enabled,
        status: status.code(),
        status_label: status.label(v.lang),
        badge: status.badge(),
        action_label: v.lang.t(if record.enabled {
            "keys.disable"
        } else {
            "keys.enable"
        }),
    })
    .into_response())
}

/// A return path a form names, when it is one of the dashboard's own; else `fallback`.
pub(crate) fn safe_next(v: &Visitor, next: &str, fallback: &str) -> String {
    let home = v.mount.path("/admin");
    if next.starts_with(&home)
        && !next.contains("//")
        && !next.contains('\\')
        && !next.bytes().any(|b| b.is_ascii_control())
    {
        next.to_owned()
    } else {
        v.mount.path(fallback)
    }
}

/// The batch's body: the action and the ids (a form repeats `ids`).
#[derive(Debug, Deserialize)]
pub(crate) struct BatchBody {
    #[serde(default)]
    action: String,
    #[serde(default)]
    ids: Vec<String>,
}

/// One key's result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BatchLine {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) ok: bool,
    /// Why not, in the visitor's language.
    pub(crate) message: String,
    /// The key's status afterwards (absent when deleted or unknown).
    pub(crate) status: Option<&'static str>,
    pub(crate) status_label: Option<&'static str>,
    pub(crate) badge: Option<&'static str>,
}

/// `POST /admin/keys/batch`: enable, disable or delete the selected keys, a result each.
pub(crate) async fn batch(
    State(st): State<AppState>,
    ctx: Ctx,
    change: Change<BatchBody>,
) -> Response {
    let Change { v, body, script } = change;
    if let Err(refused) = v
        .permit(&st, &ctx, Need::Operator, "key.batch", script)
        .await
    {
        return refused;
    }
    batch_all(&st, &ctx, &v, body, script)
        .await
        .unwrap_or_else(|e| failure(&v, script, e))
}

async fn batch_all(
    st: &AppState,
    ctx: &Ctx,
    v: &Visitor,
    body: BatchBody,
    script: bool,
) -> Result<Response> {
    let action = match body.action.as_str() {
        "enable" => BatchAction::Enable,
        "disable" => BatchAction::Disable,
        "delete" => BatchAction::Delete,
        _ => return Err(Error::input("action", "enable, disable or delete")),
    };
    if body.ids.is_empty() {
        return Err(Error::input("ids", v.lang.t("keys.batch_none")));
    }
    if body.ids.len() > MAX_BATCH {
        return Err(Error::input("ids", format!("at most {MAX_BATCH} keys")));
    }
    let actor = v.actor(ctx);
    let mut lines: Vec<Option<BatchLine>> = Vec::with_capacity(body.ids.len());
    let mut ids = Vec::new();
    let not_found = |id: String, lang: Lang| BatchLine {
        name: String::new(),
        ok: false,
        message: lang.t("keys.batch_not_found").to_owned(),
        status: None,
        status_label: None,
        badge: None,
        id,
    };
    for text in &body.ids {
        match text.parse::<KeyId>() {
            Ok(id) => {
                ids.push(id);
                lines.push(None);
            }
            Err(_) => lines.push(Some(not_found(crate::api::redact(text), v.lang))),
        }
    }
    let now = Utc::now();
    let mut done = st.app.kv.batch(action, &ids, &actor).await.into_iter();
    let mut results = Vec::with_capacity(lines.len());
    for line in lines {
        if let Some(l) = line {
            results.push(l);
            continue;
        }
        let Some((id, outcome)) = done.next() else {
            break;
        };
        let record = match action {
            BatchAction::Delete => None,
            _ => st.app.kv.get_key(id).await.ok(),
        };
        let status = record.as_ref().map(|r| Status::of(r, now));
        results.push(match outcome {
            Ok(()) => BatchLine {
                id: id.to_string(),
                name: record.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
                ok: true,
                message: v.lang.t("keys.batch_ok").to_owned(),
                status: status.map(Status::code),
                status_label: status.map(|s| s.label(v.lang)),
                badge: status.map(Status::badge),
            },
            Err(e) => {
                let e = Error::from(e);
                let code = Problem::from(&e).code();
                BatchLine {
                    id: id.to_string(),
                    name: record.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
                    ok: false,
                    message: v.lang.t(&format!("problem.{code}")).to_owned(),
                    status: status.map(Status::code),
                    status_label: status.map(|s| s.label(v.lang)),
                    badge: status.map(Status::badge),
                }
            }
        });
    }
    if script {
        return Ok(Json(serde_json::json!({ "results": results })).into_response());
    }
    page(st, v, &HashMap::new(), results).await
}
