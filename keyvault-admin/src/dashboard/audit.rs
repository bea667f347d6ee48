//! `/admin/audit`: the audit log newest first, filtered and paged by the store, the CSV of
//! the filtered records, and the hash chain's last verification — kept in the settings and
//! run again only when someone asks, never per page load.

use std::collections::HashMap;

use askama::Template;
use axum::{
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use keyvault_core::{AuditEvent, AuditOutcome, AuditQuery, AuditRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    page::{Shell, failure, render, with_headers},
    range::{local_time, tz_offset},
    session::{Change, Empty, Visitor},
};
use crate::{
    api::{AppState, Ctx},
    auth::Need,
    error::Result,
};

/// Records per page.
const PAGE: usize = 50;
/// The most records one CSV holds (a narrower filter gets the rest).
const CSV_MAX: usize = 100_000;
/// Where the last verification is kept.
const CHECK_SETTING: &str = "audit_chain_check";

/// The audit filters, as they appear in the URL.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filters {
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) target: String,
    pub(crate) outcome: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) tz: String,
    /// What was wrong with a time, as a message key.
    pub(crate) error: Option<&'static str>,
}

impl Filters {
    fn from_query(q: &HashMap<String, String>) -> Self {
        let get = |k: &str| {
            q.get(k)
                .map(|s| s.trim().chars().take(200).collect::<String>())
                .unwrap_or_default()
        };
        let outcome = match get("outcome").as_str() {
            o @ ("success" | "refused") => o.to_owned(),
            _ => String::new(),
        };
        Self {
            actor: get("actor"),
            action: get("action"),
            target: get("target"),
            outcome,
            from: get("from"),
            to: get("to"),
            tz: get("tz"),
            error: None,
        }
    }

    /// The store's query for these filters.
    fn query(&mut self, limit: usize, before_seq: Option<u64>) -> AuditQuery {
        let tz = tz_offset(Some(&self.tz));
        let mut time = |s: &str| -> Option<DateTime<Utc>> {
            if s.is_empty() {
                return None;
            }
            let t = local_time(s, tz);
            if t.is_none() {
                self.error = Some("audit.error_time");
            }
            t
        };
        let (from, to) = (time(&self.from.clone()), time(&self.to.clone()));
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        AuditQuery {
            from,
            to,
            actor: opt(&self.actor),
            action: opt(&self.action),
            target_id: opt(&self.target),
            outcome: match self.outcome.as_str() {
                "success" => Some(AuditOutcome::Success),
                "refused" => Some(AuditOutcome::Refused),
                _ => None,
            },
            limit,
            before_seq,
        }
    }

    fn query_string(&self) -> String {
        let pairs: Vec<(&str, &str)> = [
            ("actor", &self.actor),
            ("action", &self.action),
            ("target", &self.target),
            ("outcome", &self.outcome),
            ("from", &self.from),
            ("to", &self.to),
            ("tz", &self.tz),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.as_str()))
        .collect();
        serde_html_form::to_string(pairs).unwrap_or_default()
    }
}

/// One record as shown.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) seq: u64,
    pub(crate) at: String,
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) target: String,
    pub(crate) outcome: &'static str,
    pub(crate) ip: String,
    pub(crate) details: String,
}

impl From<&AuditRecord> for Row {
    fn from(r: &AuditRecord) -> Self {
        let e = &r.event;
        Self {
            seq: r.seq,
            at: e.at.to_rfc3339(),
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target_id.clone().unwrap_or_default(),
            outcome: e.outcome.as_str(),
            ip: e.source_ip.map(|i| i.to_string()).unwrap_or_default(),
            details: if e.details.as_object().is_some_and(|o| o.is_empty()) {
                String::new()
            } else {
                e.details.to_string()
            },
        }
    }
}

/// The last verification of the chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Check {
    pub(crate) at: DateTime<Utc>,
    pub(crate) checked: u64,
    pub(crate) first_broken: Option<u64>,
    pub(crate) by: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    shell: Shell,
    filters: Filters,
    rows: Vec<Row>,
    next: Option<String>,
    first: Option<String>,
    csv: String,
    check: Option<Check>,
}

/// `GET /admin/audit?actor=&action=&target=&outcome=&from=&to=&cursor=`.
pub(crate) async fn page(
    State(st): State<AppState>,
    v: Visitor,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = v.require(Need::Operator) {
        return r;
    }
    show(&st, &v, &q)
        .await
        .unwrap_or_else(|e| failure(&v, false, e))
}

async fn show(st: &AppState, v: &Visitor, q: &HashMap<String, String>) -> Result<Response> {
    let mut filters = Filters::from_query(q);
    let before = q.get("cursor").and_then(|c| c.parse::<u64>().ok());
    let query = filters.query(PAGE, before);
    let found = st.app.backends.audit.list(&query).await?;
    let base = v.mount.path("/admin/audit");
    let fq = filters.query_string();
    let with = |extra: String| {
        let q: Vec<String> = [fq.clone(), extra]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        if q.is_empty() {
            base.clone()
        } else {
            format!("{base}?{}", q.join("&"))
        }
    };
    let next = found
        .has_more
        .then(|| {
            found
                .items
                .last()
                .map(|r| with(format!("cursor={}", r.seq)))
        })
        .flatten();
    let first = before.map(|_| with(String::new()));
    let csv = if fq.is_empty() {
        v.mount.path("/admin/audit.csv")
    } else {
        format!("{}?{fq}", v.mount.path("/admin/audit.csv"))
    };
    let check = st
        .app
        .backends
        .settings
        .setting(CHECK_SETTING)
        .await?
        .and_then(|s| serde_json::from_str(&s).ok());
    let page = AuditPage {
        shell: Shell::new(v, "audit", "audit.title", with(String::new())),
        rows: found.items.iter().map(Row::from).collect(),
        filters,
        next,
        first,
        csv,
        check,
    };
    Ok(render(StatusCode::OK, &page))
}

/// `GET /admin/audit.csv?…`: the filtered records as CSV, newest first.
pub(crate) async fn csv(
    State(st): State<AppState>,
    v: Visitor,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = v.require(Need::Operator) {
        return r;
    }
    let mut filters = Filters::from_query(&q);
    let mut out =
        String::from("seq,at,actor,action,target_id,outcome,source_ip,request_id,details\r\n");
    let mut before = None;
    let mut rows = 0;
    loop {
        let query = filters.query(500, before);
        let page = match st.app.backends.audit.list(&query).await {
            Ok(p) => p,
            Err(e) => return failure(&v, false, e.into()),
        };
        for r in &page.items {
            let e = &r.event;
            let fields = [
                r.seq.to_string(),
                e.at.to_rfc3339(),
                e.actor.clone(),
                e.action.clone(),
                e.target_id.clone().unwrap_or_default(),
                e.outcome.as_str().to_owned(),
                e.source_ip.map(|i| i.to_string()).unwrap_or_default(),
                e.request_id.clone().unwrap_or_default(),
                e.details.to_string(),
            ];
            let line: Vec<String> = fields.iter().map(|f| cell(f)).collect();
            out.push_str(&line.join(","));
            out.push_str("\r\n");
        }
        rows += page.items.len();
        before = page.items.last().map(|r| r.seq);
        if !page.has_more || rows >= CSV_MAX {
            break;
        }
    }
    let mut res = with_headers(out.into_response());
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    let name = format!(
        "attachment; filename=\"keyvault-audit-{}.csv\"",
        Utc::now().format("%Y%m%d-%H%M%S")
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

/// One CSV cell: quoted when it must be, and never read as a formula by a spreadsheet.
fn cell(text: &str) -> String {
    let guarded = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// `POST /admin/audit/verify`: verifies the whole chain now and keeps the result.
pub(crate) async fn verify(
    State(st): State<AppState>,
    ctx: Ctx,
    change: Change<Empty>,
) -> Response {
    let Change { v, script, .. } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Operator, "audit.verify", script)
        .await
    {
        return r;
    }
    let run = async {
        let report = st.app.backends.audit.verify_chain().await?;
        let check = Check {
            at: Utc::now(),
            checked: report.checked,
            first_broken: report.first_broken,
            by: v.user.username.clone(),
        };
        let outcome = if check.first_broken.is_none() {
            AuditOutcome::Success
        } else {
            AuditOutcome::Refused
        };
        let event = AuditEvent::new(
            check.at,
            &v.actor(&ctx),
            "audit.verify",
            None,
            outcome,
            json!({ "checked": check.checked, "first_broken": check.first_broken }),
        );
        let text = serde_json::to_string(&check)
            .map_err(|e| crate::error::Error::Internal(format!("audit check: {e}")))?;
        st.app
            .backends
            .settings
            .put_setting(CHECK_SETTING, &text, &[event])
            .await?;
        Ok::<_, crate::error::Error>(())
    };
    match run.await {
        Ok(()) => Redirect::to(&v.mount.path("/admin/audit")).into_response(),
        Err(e) => failure(&v, script, e),
    }
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("-1"), "'-1");
        assert_eq!(cell("line\nbreak"), "\"line\nbreak\"");
    }
}
