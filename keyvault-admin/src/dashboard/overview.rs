//! `/admin`: the overview — KPIs, charts, keys expiring soon — and the JSON the
//! charts and live KPIs read (`/admin/api/overview`).

use std::collections::HashMap;

use askama::Template;
use axum::{
    Json,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use chrono::{TimeDelta, Utc};
use keyvault_core::StatsOverview;

use super::{
    format,
    page::{Shell, render},
    range::{PRESETS, Range},
    session::Visitor,
};
use crate::{api::AppState, error::Result};

/// A key in the overview's lists.
#[derive(Debug, Clone)]
pub(crate) struct KeyLine {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) start: String,
    /// The expiry, as shown before the script puts it in local time.
    pub(crate) figure: String,
    /// RFC 3339, for the browser to show in its time zone.
    pub(crate) at: Option<String>,
}

/// Firing alerts the overview lists, newest first.
const FIRING_SHOWN: usize = 10;

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    shell: Shell,
    range: Range,
    presets: Vec<(&'static str, String, bool)>,
    data_url: String,
    kpi: format::Kpis,
    expiring: Vec<KeyLine>,
    firing: Vec<super::alerts::AlertLine>,
    custom_from: String,
    custom_to: String,
}

/// `GET /admin`.
pub(crate) async fn page(
    State(st): State<AppState>,
    v: Visitor,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let range = Range::from_query(&q, Utc::now());
    // The statistics and the expiring keys are independent reads: side by side.
    let query = range.query(None);
    let stats =
        async { Ok::<_, crate::error::Error>(st.app.backends.stats.overview(&query).await?) };
    let firing = async {
        let q = keyvault_core::AlertQuery {
            state: Some(keyvault_core::AlertState::Firing),
            limit: FIRING_SHOWN,
            ..Default::default()
        };
        st.app.alerts(&q).await
    };
    let (stats, expiring, firing) = tokio::try_join!(
        stats,
        st.app.dashboard_expiring(Utc::now() + TimeDelta::days(7)),
        firing,
    )?;
    let here = format!("{}?{}", v.mount.path("/admin"), range.query_string());
    let shell = Shell::new(&v, "overview", "overview.title", here);
    let presets = PRESETS
        .iter()
        .map(|(name, _)| {
            (
                *name,
                format!("{}?range={name}", v.mount.path("/admin")),
                range.preset == Some(*name),
            )
        })
        .collect();
    let page = OverviewPage {
        kpi: format::Kpis::of(&stats, v.lang),
        data_url: format!(
            "{}?{}",
            v.mount.path("/admin/api/overview"),
            range.query_string()
        ),
        custom_from: range.from.format("%Y-%m-%dT%H:%M").to_string(),
        custom_to: range.to.format("%Y-%m-%dT%H:%M").to_string(),
        shell,
        range,
        presets,
        expiring,
        firing: firing
            .into_iter()
            .map(|a| super::alerts::AlertLine::of(a, v.lang))
            .collect(),
    };
    Ok(render(StatusCode::OK, &page))
}

/// `GET /admin/api/overview?range=…`: the statistics the overview's charts draw, as the
/// REST API's `/v1/stats/overview` gives them.
pub(crate) async fn data(
    State(st): State<AppState>,
    super::session::ApiVisitor(v): super::session::ApiVisitor,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<StatsOverview>> {
    if !v.may(crate::auth::Need::Viewer) {
        return Err(crate::error::Error::Forbidden(
            "the statistics need the viewer role",
        ));
    }
    let range = Range::from_query(&q, Utc::now());
    let key = match q.get("key") {
        None => None,
        Some(k) => Some(
            k.parse::<keyvault_core::KeyId>()
                .map_err(|_| crate::error::Error::input("key", "a key id"))?,
        ),
    };
    Ok(Json(
        st.app.backends.stats.overview(&range.query(key)).await?,
    ))
}
