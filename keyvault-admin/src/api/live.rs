//! `/v1/stats/live` and `/v1/stats/stream` (CONTRACT §7): the last 60 whole seconds of calls,
//! errors and rejected verifications, across every instance on the database.
//!
//! Calls, errors and the middleware's rejections are counted from the raw events through
//! their time index (events reach the database within the recorder's flush interval, well
//! inside the 5 seconds allowed). `/v1/keys/verify` records no event, so its rejections are
//! counted here, per second, by the instance that answered.

use std::{convert::Infallible, sync::Mutex, time::Duration};

use axum::{
    Json,
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use chrono::{DateTime, TimeDelta, Utc};
use futures::Stream;
use serde::Serialize;
use utoipa::ToSchema;

use super::{AppState, Caller, openapi::ProblemDoc};
use crate::{auth::Need, error::Result};

/// Seconds in the live window.
const WINDOW_S: usize = 60;
/// How often the stream sends.
const STREAM_EVERY: Duration = Duration::from_secs(1);

/// Verifications `/v1/keys/verify` refused, per second, for the last minutes.
#[derive(Debug, Default)]
pub(crate) struct Rejections {
    /// (Unix second, count), oldest first, at most two windows.
    seconds: Mutex<std::collections::VecDeque<(i64, u64)>>,
}

impl Rejections {
    /// Counts one refusal at `at`.
    pub(crate) fn record(&self, at: DateTime<Utc>) {
        let s = at.timestamp();
        let mut q = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        match q.back_mut() {
            Some((last, n)) if *last == s => *n += 1,
            _ => q.push_back((s, 1)),
        }
        while q.front().is_some_and(|(t, _)| *t < s - 2 * WINDOW_S as i64) {
            q.pop_front();
        }
    }

    /// Refusals in the seconds `[from, to)`.
    fn between(&self, from: i64, to: i64) -> u64 {
        let q = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        q.iter()
            .filter(|(t, _)| (from..to).contains(t))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The last 60 whole seconds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct LiveStats {
    /// The end of the window (a whole second).
    ts: DateTime<Utc>,
    /// Always 60.
    window_s: u64,
    calls: u64,
    /// Calls without success.
    errors: u64,
    /// Verifications refused, by the middleware or `/v1/keys/verify`.
    rejected: u64,
    /// Calls in each second, oldest first.
    #[schema(min_items = 60, max_items = 60)]
    calls_per_s: Vec<u64>,
}

async fn snapshot(st: &AppState) -> Result<LiveStats> {
    let now = Utc::now();
    let end = now.timestamp();
    let ts = DateTime::from_timestamp(end, 0).unwrap_or(now);
    let from = ts - TimeDelta::seconds(WINDOW_S as i64);
    let seconds = st.app.backends.stats.per_second(from, ts).await?;
    let start = end - WINDOW_S as i64;
    let mut per_s = vec![0u64; WINDOW_S];
    let (mut calls, mut errors, mut rejected) = (0, 0, 0);
    for (s, c) in seconds {
        if let Some(slot) = usize::try_from(s - start)
            .ok()
            .and_then(|i| per_s.get_mut(i))
        {
            *slot += c.calls;
            calls += c.calls;
            errors += c.errors;
            rejected += c.rejected;
        }
    }
    rejected += st.rejections.between(start, end);
    Ok(LiveStats {
        ts,
        window_s: WINDOW_S as u64,
        calls,
        errors,
        rejected,
        calls_per_s: per_s,
    })
}

#[utoipa::path(get, path = "/v1/stats/live", tag = "statistics", operation_id = "statsLive",
    responses(
        (status = 200, description = "The last 60 whole seconds", body = LiveStats),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn live(State(st): State<AppState>, caller: Caller) -> Result<Json<LiveStats>> {
    caller.require(&st, Need::Viewer, "stats.read").await?;
    Ok(Json(snapshot(&st).await?))
}

#[utoipa::path(get, path = "/v1/stats/stream", tag = "statistics", operation_id = "statsStream",
    responses(
        (status = 200, description = "Server-sent events, one a second: each `data` is the body of `/v1/stats/live`", body = String, content_type = "text/event-stream"),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn stream(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    caller.require(&st, Need::Viewer, "stats.read").await?;
    let events = futures::stream::unfold((st, true), |(st, first)| async move {
        if !first {
            tokio::time::sleep(STREAM_EVERY).await;
        }
        let event = match snapshot(&st).await {
            Ok(s) => Event::default()
                .event("live")
                .json_data(&s)
                .unwrap_or_default(),
            // A backend hiccup: say so and keep the stream open.
            Err(e) => {
                tracing::warn!(error = %e.cli_line(), "live statistics unavailable");
                Event::default().event("unavailable").data("{}")
            }
        };
        Some((Ok(event), (st, false)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
