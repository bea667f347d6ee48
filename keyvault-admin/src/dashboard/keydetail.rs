//! `/admin/keys/{id}`: one key — every field, its charts over a range, credits and
//! rate-limit state, its rotation chain and audit trail — and the operator's rotate and
//! delete. A key just made (or rotated into) is shown here once.

use std::collections::HashMap;

use askama::Template;
use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use chrono::Utc;
use keyvault_core::{AuditQuery, HumanDuration, KeyRecord, LimitState};
use serde::Deserialize;

use super::{
    flash,
    keyform::load,
    keys::Status,
    page::{Shell, failure, render},
    range::{PRESETS, Range},
    session::{Change, Empty, Visitor},
};
use crate::{
    api::{AppState, Ctx},
    auth::Need,
    error::{Error, Result},
    views::KeyView,
};

/// Audit records shown on the page (the audit page has them all).
const TRAIL: usize = 20;
/// How far the rotation chain is followed each way.
const CHAIN: usize = 10;

/// A line of the key's audit trail.
#[derive(Debug, Clone)]
pub(crate) struct TrailLine {
    pub(crate) at: String,
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) outcome: String,
}

/// A key of the rotation chain.
#[derive(Debug, Clone)]
pub(crate) struct ChainLink {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) start: String,
    pub(crate) status_label: &'static str,
    pub(crate) current: bool,
}

/// A rate limit's live state, as shown.
#[derive(Debug, Clone)]
pub(crate) struct LimitLine {
    pub(crate) name: String,
    pub(crate) limit: String,
    pub(crate) period: String,
    pub(crate) remaining: String,
    /// Percentage of the bucket left, for the bar.
    pub(crate) percent: u64,
    pub(crate) reset_at: String,
}

#[derive(Template)]
#[template(path = "key_detail.html")]
struct DetailPage {
    shell: Shell,
    key: KeyView,
    status: Status,
    status_label: &'static str,
    secret: Option<String>,
    limits: Vec<LimitLine>,
    chain: Vec<ChainLink>,
    trail: Vec<TrailLine>,
    metadata: String,
    range: Range,
    presets: Vec<(&'static str, String, bool)>,
    data_url: String,
    rotate_error: Option<String>,
    grace: String,
}

/// `GET /admin/keys/{id}?range=…`.
pub(crate) async fn page(
    State(st): State<AppState>,
    v: Visitor,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let record = match load(&st, &id).await {
        Ok(r) => r,
        Err(e) => return failure(&v, false, e),
    };
    // The one view of a key just made: opened here, and the cookie gone either way.
    let secret = flash::open(&headers, st.app.secret_key(), &v, &id);
    let mut res = match show(&st, &v, &record, &q, secret, None, "24h".into()).await {
        Ok(r) => r,
        Err(e) => return failure(&v, false, e),
    };
    if flash::present(&headers) {
        flash::clear(&mut res, &v);
    }
    res
}

async fn show(
    st: &AppState,
    v: &Visitor,
    record: &KeyRecord,
    q: &HashMap<String, String>,
    secret: Option<String>,
    rotate_error: Option<String>,
    grace: String,
) -> Result<Response> {
    let now = Utc::now();
    let key = KeyView::load(&st.app.kv, record).await?;
    let status = Status::of(record, now);
    let limits = st
        .app
        .kv
        .limit_states(record)
        .await?
        .into_iter()
        .zip(&record.ratelimits)
        .map(|(s, l): (LimitState, _)| LimitLine {
            percent: (s.remaining.min(u64::from(s.limit)) * 100)
                .checked_div(u64::from(s.limit))
                .unwrap_or(0),
            name: s.name,
            limit: v.lang.num(u64::from(s.limit)),
            period: HumanDuration::new(std::time::Duration::from_millis(l.period_ms())).to_string(),
            remaining: v.lang.num(s.remaining),
            reset_at: s.reset_at.to_rfc3339(),
        })
        .collect();
    let chain = chain(st, record, v).await?;
    let trail = st
        .app
        .backends
        .audit
        .list(&AuditQuery {
            target_id: Some(record.id.to_string()),
            limit: TRAIL,
            ..AuditQuery::default()
        })
        .await?
        .items
        .into_iter()
        .map(|r| TrailLine {
            at: r.event.at.to_rfc3339(),
            actor: r.event.actor.clone(),
            action: r.event.action.clone(),
            outcome: r.event.outcome.as_str().to_owned(),
        })
        .collect();
    let range = Range::from_query(q, now);
    let base = v.mount.path(&format!("/admin/keys/{}", record.id));
    let presets = PRESETS
        .iter()
        .map(|(name, _)| {
            (
                *name,
                format!("{base}?range={name}"),
                range.preset == Some(*name),
            )
        })
        .collect();
    let metadata = if record.metadata.is_empty() {
        String::new()
    } else {
        serde_json::to_string_pretty(&record.metadata).unwrap_or_default()
    };
    let page = DetailPage {
        shell: Shell::new(
            v,
            "keys",
            "key.title",
            format!("{base}?{}", range.query_string()),
        ),
        data_url: format!(
            "{}?key={}&{}",
            v.mount.path("/admin/api/overview"),
            record.id,
            range.query_string()
        ),
        status_label: status.label(v.lang),
        status,
        key,
        secret,
        limits,
        chain,
        trail,
        metadata,
        range,
        presets,
        rotate_error,
        grace,
    };
    Ok(render(StatusCode::OK, &page))
}

/// The keys this one was rotated from and into, oldest first.
async fn chain(st: &AppState, record: &KeyRecord, v: &Visitor) -> Result<Vec<ChainLink>> {
    let now = Utc::now();
    let link = |r: &KeyRecord, current: bool| ChainLink {
        id: r.id.to_string(),
        name: r.name.clone(),
        start: r.start.clone(),
        status_label: Status::of(r, now).label(v.lang),
        current,
    };
    let mut before = Vec::new();
    let mut at = record.rotated_from;
    while let Some(id) = at.filter(|_| before.len() < CHAIN) {
        match st.app.kv.get_key(id).await {
            Ok(r) => {
                at = r.rotated_from;
                before.push(link(&r, false));
            }
            Err(_) => break,
        }
    }
    before.reverse();
    let mut out = before;
    out.push(link(record, true));
    let mut at = record.superseded_by;
    let mut after = 0;
    while let Some(id) = at.filter(|_| after < CHAIN) {
        match st.app.kv.get_key(id).await {
            Ok(r) => {
                at = r.superseded_by;
                out.push(link(&r, false));
                after += 1;
            }
            Err(_) => break,
        }
    }
    Ok(if out.len() == 1 { Vec::new() } else { out })
}

/// The rotate form: how long the old key keeps working.
#[derive(Debug, Deserialize)]
pub(crate) struct RotateForm {
    #[serde(default)]
    grace: String,
}

/// `POST /admin/keys/{id}/rotate`: a new key (shown once, on its page); the old one works
/// for the grace.
pub(crate) async fn rotate(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    change: Change<RotateForm>,
) -> Response {
    let Change { v, body, script } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Operator, "key.rotate", script)
        .await
    {
        return r;
    }
    let record = match load(&st, &id).await {
        Ok(r) => r,
        Err(e) => return failure(&v, script, e),
    };
    let grace_text = body.grace.trim().chars().take(100).collect::<String>();
    let refuse = |message: String| async {
        show(
            &st,
            &v,
            &record,
            &HashMap::new(),
            None,
            Some(message),
            grace_text.clone(),
        )
        .await
        .map(|mut r| {
            *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            r
        })
        .unwrap_or_else(|e| failure(&v, false, e))
    };
    let grace = if grace_text.is_empty() {
        None
    } else {
        match HumanDuration::parse(&grace_text, "grace") {
            Ok(d) => Some(d.get()),
            Err(_) => return refuse(v.lang.t("form.duration").to_owned()).await,
        }
    };
    match st.app.rotate_key(record.id, grace, &v.actor(&ctx)).await {
        Ok(rotated) => {
            let new_id = rotated.record.id.to_string();
            let mut res =
                Redirect::to(&v.mount.path(&format!("/admin/keys/{new_id}"))).into_response();
            match flash::seal(
                &mut res,
                st.app.secret_key(),
                &v,
                &new_id,
                rotated.key.expose(),
            ) {
                Ok(()) => res,
                Err(e) => failure(&v, false, e),
            }
        }
        Err(e) => {
            let code = crate::error::Problem::from(&e).code();
            if e.field().is_some() || code == "conflict" {
                refuse(v.lang.t(&format!("problem.{code}")).to_owned()).await
            } else {
                failure(&v, false, e)
            }
        }
    }
}

/// `POST /admin/keys/{id}/end-grace`: the old key answers `EXPIRED` from now on.
pub(crate) async fn end_grace(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    change: Change<Empty>,
) -> Response {
    let Change { v, script, .. } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Operator, "key.end_grace", script)
        .await
    {
        return r;
    }
    let record = match load(&st, &id).await {
        Ok(r) => r,
        Err(e) => return failure(&v, script, e),
    };
    match st.app.kv.end_grace(record.id, &v.actor(&ctx)).await {
        Ok(_) => Redirect::to(&v.mount.path(&format!("/admin/keys/{}", record.id))).into_response(),
        Err(e) => failure(&v, script, e.into()),
    }
}

#[derive(Template)]
#[template(path = "key_delete.html")]
struct DeletePage {
    shell: Shell,
    id: String,
    name: String,
    start: String,
}

/// `GET /admin/keys/{id}/delete`: the confirmation.
pub(crate) async fn confirm_delete(
    State(st): State<AppState>,
    v: Visitor,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = v.require(Need::Operator) {
        return r;
    }
    match load(&st, &id).await {
        Ok(r) => {
            let here = v.mount.path(&format!("/admin/keys/{}/delete", r.id));
            render(
                StatusCode::OK,
                &DeletePage {
                    shell: Shell::new(&v, "keys", "key.delete_title", here),
                    id: r.id.to_string(),
                    name: r.name,
                    start: r.start,
                },
            )
        }
        Err(e) => failure(&v, false, e),
    }
}

/// `POST /admin/keys/{id}/delete`.
pub(crate) async fn delete(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    change: Change<Empty>,
) -> Response {
    let Change { v, script, .. } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Operator, "key.delete", script)
        .await
    {
        return r;
    }
    let done = async {
        let record = load(&st, &id).await?;
        st.app.kv.delete_key(record.id, &v.actor(&ctx)).await?;
        Ok::<_, Error>(())
    };
    match done.await {
        Ok(()) => Redirect::to(&v.mount.path("/admin/keys")).into_response(),
        Err(e) => failure(&v, script, e),
    }
}
