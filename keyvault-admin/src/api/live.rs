//! `/v1/stats/live` and `/v1/stats/stream` (CONTRACT §7): the last 60 whole seconds of calls,
//! errors and rejected verifications, across every instance.
//!
//! With Redis configured they come from its live counters, which every process recording
//! usage feeds (`Deployment::usage`); without it, from the raw events through their time
//! index. Either way events arrive within the recorder's flush interval, well inside the 5
//! seconds allowed. `/v1/keys/verify` records no event, so its refusals are counted per
//! second by the instance that answered, and sent on to Redis twice a second when it is
//! there.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Mutex, Weak},
    time::Duration,
};

use axum::{
    Json,
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use chrono::{DateTime, TimeDelta, Utc};
use futures::Stream;
use serde::Serialize;
use utoipa::ToSchema;

use keyvault::redis::{LiveCounters, LiveScope};
use keyvault_core::SecondCounts;

use super::{AppState, Caller, openapi::ProblemDoc};
use crate::{auth::Need, error::Result};

/// Seconds in the live window.
const WINDOW_S: usize = 60;
/// How often the stream sends.
const STREAM_EVERY: Duration = Duration::from_secs(1);
/// How often refusals go on to Redis.
const SEND_EVERY: Duration = Duration::from_millis(500);
/// Seconds of refusals held for Redis at most (while it is unreachable).
const MAX_UNSENT: usize = 120;

/// Verifications `/v1/keys/verify` refused, per second, for the last minutes.
#[derive(Debug, Default)]
pub(crate) struct Rejections {
    /// (Unix second, count), oldest first, at most two windows.
    seconds: Mutex<std::collections::VecDeque<(i64, u64)>>,
    /// Counts not yet sent to Redis, by Unix second.
    unsent: Mutex<BTreeMap<i64, u64>>,
}

impl Rejections {
    /// Counts one refusal at `at`.
    pub(crate) fn record(&self, at: DateTime<Utc>) {
        let s = at.timestamp();
        {
            let mut unsent = self.unsent.lock().unwrap_or_else(|e| e.into_inner());
            *unsent.entry(s).or_default() += 1;
            while unsent.len() > MAX_UNSENT {
                unsent.pop_first();
            }
        }
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

/// Sends `rejections`' counts to Redis's live counters every [`SEND_EVERY`], until the
/// state holding them is gone.
pub(crate) async fn send_rejections(rejections: Weak<Rejections>, live: LiveCounters) {
    loop {
        tokio::time::sleep(SEND_EVERY).await;
        let Some(r) = rejections.upgrade() else {
            return;
        };
        let batch = std::mem::take(&mut *r.unsent.lock().unwrap_or_else(|e| e.into_inner()));
        drop(r);
        for (s, n) in batch {
            let at = DateTime::from_timestamp(s, 0).unwrap_or_default();
            if let Err(e) = live.incr_rejected(at, n).await {
                tracing::warn!(target: "keyvault::live", error = %e, "refused verifications not counted live");
                break;
            }
        }
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
    let start = end - WINDOW_S as i64;
    // Per second: from Redis, every process's calls and every instance's refusals; from the
    // database, the calls, with this instance's refusals of `/v1/keys/verify` beside them.
    let (seconds, refused_here): (Vec<(i64, SecondCounts)>, u64) = match st.app.backends.live() {
        Some(live) => {
            let view = live
                .read(&LiveScope::All, ts - TimeDelta::seconds(1))
                .await?;
            let seconds = view.per_second.into_iter().map(|p| {
                let counts = SecondCounts {
                    calls: p.calls,
                    errors: p.errors,
                    rejected: p.rejected,
                };
                (p.ts.timestamp(), counts)
            });
            (seconds.collect(), 0)
        }
        None => {
            let seconds = st.app.backends.stats.per_second(from, ts).await?;
            (
                seconds.into_iter().collect(),
                st.rejections.between(start, end),
            )
        }
    };
    let mut per_s = vec![0u64; WINDOW_S];
    let (mut calls, mut errors, mut rejected) = (0, 0, refused_here);
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

/// One server-sent event of `/v1/stats/stream`, as a client's event source parses it.
#[derive(ToSchema)]
#[schema(as = LiveEvent)]
#[allow(dead_code)] // the document's shape only: the stream writes events with axum's `Event`
pub(crate) struct LiveEventDoc {
    /// Always `live`.
    #[schema(pattern = "^live$")]
    event: String,
    /// The body of `GET /v1/stats/live`, as JSON text.
    #[schema(content_media_type = "application/json")]
    data: String,
}

#[utoipa::path(get, path = "/v1/stats/stream", tag = "statistics", operation_id = "statsStream",
    responses(
        (status = 200, description = "Server-sent events, one a second: each `data` is the body of `/v1/stats/live`", body = LiveEventDoc, content_type = "text/event-stream"),
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
