//! `/admin/logs`: this instance's system log (CONTRACT §7) newest first, filtered by level,
//! refreshed live by `logs.js` from `/admin/api/logs` (the records of `GET /v1/logs`).

use std::collections::HashMap;

use askama::Template;
use axum::{
    Json,
    extract::Query,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::{
    page::{Shell, render},
    session::{ApiVisitor, Visitor},
};
use crate::{
    auth::Need,
    logs::{LogRecord, MinLevel},
};

/// Records on the page.
const SHOWN: usize = 200;

/// One record as shown: its fields as `name=value` pairs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) ts: String,
    pub(crate) level: &'static str,
    pub(crate) target: String,
    pub(crate) message: String,
    pub(crate) fields: String,
}

impl From<LogRecord> for Row {
    fn from(r: LogRecord) -> Self {
        let fields = r
            .fields
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            ts: r.ts.to_rfc3339(),
            level: r.level,
            target: r.target,
            message: r.message,
            fields,
        }
    }
}

impl Row {
    /// The Bootstrap colour of the level's badge.
    pub(crate) fn badge(&self) -> &'static str {
        match self.level {
            "error" => "text-bg-danger",
            "warn" => "text-bg-warning",
            _ => "text-bg-secondary",
        }
    }
}

fn level_of(q: &HashMap<String, String>) -> (MinLevel, &'static str) {
    match q.get("level").map(String::as_str) {
        Some("error") => (MinLevel::Error, "error"),
        Some("warn") => (MinLevel::Warn, "warn"),
        _ => (MinLevel::Info, "info"),
    }
}

fn rows(level: MinLevel) -> Vec<Row> {
    crate::logs::recent(level, SHOWN)
        .into_iter()
        .map(Row::from)
        .collect()
}

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage {
    shell: Shell,
    level: &'static str,
    rows: Vec<Row>,
    data_url: String,
}

/// `GET /admin/logs?level=error|warn|info`.
pub(crate) async fn page(v: Visitor, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Err(r) = v.require(Need::Operator) {
        return r;
    }
    let (min, level) = level_of(&q);
    let here = v.mount.path(&format!("/admin/logs?level={level}"));
    let shell = Shell::new(&v, "logs", "logs.title", here);
    let data_url = v.mount.path(&format!("/admin/api/logs?level={level}"));
    render(
        StatusCode::OK,
        &LogsPage {
            shell,
            level,
            rows: rows(min),
            data_url,
        },
    )
}

/// The rows of the page, for its live refresh.
#[derive(Debug, Serialize)]
pub(crate) struct LogRows {
    items: Vec<Row>,
}

/// `GET /admin/api/logs?level=…`: the page's rows as JSON.
pub(crate) async fn data(
    ApiVisitor(v): ApiVisitor,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !v.may(Need::Operator) {
        return crate::error::Error::Forbidden("the system log needs the operator role")
            .into_response();
    }
    let (min, _) = level_of(&q);
    super::page::with_headers(Json(LogRows { items: rows(min) }).into_response())
}
