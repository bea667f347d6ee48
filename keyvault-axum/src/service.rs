//! [`KeyvaultService`]: the per-request work.

use std::{
    cell::Cell,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::extract::MatchedPath;
use axum_core::response::Response;
use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, Timelike, Utc};
use http::Request;
use keyvault_core::{
    Error, KeyRecord, Label, Outcome, RequestId, UsageEvent, VerifyRequest, check_credit_amount,
};
use tower::Service;

use crate::{
    extract::{Provider, VerifiedKey},
    layer::Shared,
    problem,
    source::{Presented, client_ip, presented_key},
};

/// The service [`crate::KeyvaultLayer`] wraps around a handler or router.
#[derive(Clone)]
pub struct KeyvaultService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> KeyvaultService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S: fmt::Debug> fmt::Debug for KeyvaultService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyvaultService")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// The boxed future of [`KeyvaultService`].
pub type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send + 'static>>;

impl<S, B> Service<Request<B>> for KeyvaultService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Latency is only measured for usage events; a clock read is not free.
        let started = self.shared.recorder.as_ref().map(|_| Instant::now());
        // The service that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        // Split here rather than in `handle`: an argument and a local made from it would
        // both take room in the boxed future.
        let (parts, body) = req.into_parts();
        Box::pin(handle(shared, inner, parts, body, started))
    }
}

/// What the usage event of a request needs besides the response.
struct Usage {
    started: Instant,
    ts: DateTime<Utc>,
    request_id: RequestId,
    route: Option<Label>,
    method: Label,
}

async fn handle<S, B>(
    shared: Arc<Shared>,
    mut inner: S,
    mut parts: http::request::Parts,
    body: B,
    started: Option<Instant>,
) -> Result<Response, S::Error>
where
    S: Service<Request<B>, Response = Response>,
{
    let config = &shared.config;
    let template = parts.extensions.get::<MatchedPath>().cloned();
    let route = config.route(template.as_ref().map(MatchedPath::as_str), &parts.method);
    let usage = started.map(|started| Usage {
        started,
        ts: wall_time(started),
        request_id: RequestId::generate(),
        // A configured route's label is shared; others' templates are copied.
        route: route
            .template
            .clone()
            .or_else(|| template.as_ref().map(|t| Label::from(t.as_str()))),
        method: method_label(&parts.method),
    });
    let provider = route.provider.as_ref();

    let key = match presented_key(
        &parts.headers,
        config.bearer,
        config.api_key_header.as_ref(),
    ) {
        Presented::Key(key) => key,
        Presented::Missing if config.optional => {
            let res = Box::pin(inner.call(Request::from_parts(parts, body))).await;
            record(&shared, usage, res.as_ref().ok(), None, None, provider, 0);
            return res;
        }
        Presented::Missing => {
            let res = problem::rejection(Outcome::Missing, None, shared.vault.clock().now());
            record(
                &shared,
                usage,
                Some(&res),
                None,
                Some(Outcome::Missing),
                provider,
                0,
            );
            return Ok(res);
        }
    };
    let cost = route.cost.of(&parts);
    if check_credit_amount(cost, "cost").is_err() {
        let res = problem::invalid_cost();
        record(&shared, usage, Some(&res), None, None, provider, 0);
        return Ok(res);
    }
    let ip = client_ip(&parts, config.proxies.as_ref());
    let mut verify = VerifyRequest::new(key)
        .cost(cost)
        .scopes(&route.scopes)
        .ip(ip)
        // CONTRACT §2: every response for a key with rate limits carries `RateLimit-*`,
        // rejections before the limits are checked (disabled, expired, forbidden, missing
        // scope) included, so their state is read (without taking anything) for those too.
        .report_state(true);
    if let Some(u) = &usage {
        verify = verify.unique_request_id(&u.request_id);
    }
    // Boxed on its own, as is the inner service's future: inline, the largest of them sets the
    // size of this future, which then exceeds what the allocator keeps in its per-thread cache
    // (about 1 KiB), so that every request's allocation and free take the slow path. Small
    // cached allocations cost less than one slow one.
    // Keys without limits or credits whose cache entry is fresh are answered without a
    // future; the rest go to the backends.
    let now = usage.as_ref().map_or_else(Instant::now, |u| u.started);
    let verified = match shared.vault.verify_cached(&verify, now) {
        Some(v) => v,
        None => Box::pin(shared.vault.verify(&verify)).await,
    };
    let mut v = match verified {
        Ok(v) => v,
        Err(e) => {
            let res = match e {
                Error::Invalid(_) => problem::invalid_cost(),
                e => {
                    tracing::error!(error = %e, "key verification failed; answering 503");
                    problem::unavailable()
                }
            };
            record(&shared, usage, Some(&res), None, None, provider, 0);
            return Ok(res);
        }
    };
    shared.vault.note_client(&v, ip);
    if !v.is_valid() {
        let res = problem::rejection(v.outcome, Some(&v), shared.vault.clock().now());
        record(
            &shared,
            usage,
            Some(&res),
            v.key.as_deref(),
            Some(v.outcome),
            provider,
            0,
        );
        return Ok(res);
    }
    let Some(record_arc) = v.key.clone() else {
        // A valid verification always names its key; answer as for an unknown one otherwise.
        let res = problem::rejection(Outcome::NotFound, None, shared.vault.clock().now());
        record(
            &shared,
            usage,
            Some(&res),
            None,
            Some(Outcome::NotFound),
            provider,
            0,
        );
        return Ok(res);
    };
    let (headers, ratelimits) = if v.ratelimits.is_empty() {
        (None, None)
    } else {
        let h = problem::RateLimitHeaders::of(&v, shared.vault.clock().now());
        (h, Some(Arc::from(std::mem::take(&mut v.ratelimits))))
    };
    let verified_key = VerifiedKey {
        record: record_arc.clone(),
        credits_remaining: v.credits_remaining,
        ratelimits,
        cost,
    };
    parts.extensions.insert(verified_key);
    let mut result = Box::pin(inner.call(Request::from_parts(parts, body))).await;
    if let (Ok(res), Some(h)) = (&mut result, headers) {
        h.apply(res.headers_mut());
    }
    record(
        &shared,
        usage,
        result.as_ref().ok(),
        Some(&record_arc),
        Some(Outcome::Valid),
        provider,
        cost,
    );
    result
}

/// Queues the request's usage event; never waits (a full buffer drops and counts it).
fn record(
    shared: &Shared,
    usage: Option<Usage>,
    res: Option<&Response>,
    key: Option<&KeyRecord>,
    outcome: Option<Outcome>,
    route_provider: Option<&Label>,
    cost: u64,
) {
    let (Some(recorder), Some(usage)) = (&shared.recorder, usage) else {
        return;
    };
    // A handler's label for this response wins over the route's.
    let provider = res
        .and_then(|r| r.extensions().get::<Provider>())
        .map(|p| Label::from(p.as_str()))
        .or_else(|| route_provider.cloned());
    recorder.record(UsageEvent {
        request_id: usage.request_id,
        key_id: key.map(|k| k.id),
        owner_id: key.and_then(|k| k.owner_id.clone()),
        ts: usage.ts,
        provider,
        route: usage.route,
        method: Some(usage.method),
        // The inner service failed without a response: the server answers 500.
        status: res.map_or(500, |r| r.status().as_u16()),
        latency_us: u64::try_from(usage.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        outcome,
        cost,
    });
}

/// The wall-clock time of `at`, from a pair of readings of both clocks taken at most a second
/// earlier on this thread: a request then reads one clock, not two, and the date is not
/// recomputed from the epoch. The monotonic and wall clocks drift apart by at most a few
/// hundred microseconds a second (NTP slews by 500 ppm at most), and a step of the wall clock
/// shows within a second; usage timestamps need no better.
fn wall_time(at: Instant) -> DateTime<Utc> {
    /// Both clocks read together, the wall clock split into its date and time of day.
    #[derive(Clone, Copy)]
    struct Base {
        since: Instant,
        date: NaiveDate,
        nanos_of_day: u64,
    }
    const NANOS_PER_SEC: u64 = 1_000_000_000;
    const NANOS_PER_DAY: u64 = 86_400 * NANOS_PER_SEC;
    thread_local! {
        static BASE: Cell<Option<Base>> = const { Cell::new(None) };
    }
    BASE.with(|cell| {
        if let Some(b) = cell.get()
            && let Some(d) = at.checked_duration_since(b.since)
            && d < REBASE_AFTER
        {
            // Under a second later: at most a day boundary away, which the checks below catch.
            let nanos = b.nanos_of_day + d.as_nanos() as u64;
            if nanos < NANOS_PER_DAY
                && let Some(time) = NaiveTime::from_num_seconds_from_midnight_opt(
                    (nanos / NANOS_PER_SEC) as u32,
                    (nanos % NANOS_PER_SEC) as u32,
                )
            {
                return b.date.and_time(time).and_utc();
            }
        }
        let (since, wall) = (Instant::now(), Utc::now());
        let time = wall.time();
        cell.set(Some(Base {
            since,
            date: wall.date_naive(),
            nanos_of_day: u64::from(time.num_seconds_from_midnight()) * NANOS_PER_SEC
                + u64::from(time.nanosecond().min(999_999_999)),
        }));
        // `at` is usually a moment before `since` (the request's own reading).
        let moved = match at.checked_duration_since(since) {
            Some(d) => TimeDelta::from_std(d)
                .ok()
                .and_then(|d| wall.checked_add_signed(d)),
            None => TimeDelta::from_std(since.duration_since(at))
                .ok()
                .and_then(|d| wall.checked_sub_signed(d)),
        };
        moved.unwrap_or(wall)
    })
}

const REBASE_AFTER: Duration = Duration::from_secs(1);

/// The method's label: shared for the standard methods, copied for extension methods.
fn method_label(method: &http::Method) -> Label {
    static STANDARD: OnceLock<[(http::Method, Label); 9]> = OnceLock::new();
    let standard = STANDARD.get_or_init(|| {
        [
            http::Method::GET,
            http::Method::POST,
            http::Method::PUT,
            http::Method::DELETE,
            http::Method::PATCH,
            http::Method::HEAD,
            http::Method::OPTIONS,
            http::Method::CONNECT,
            http::Method::TRACE,
        ]
        .map(|m| {
            let label = Label::from(m.as_str());
            (m, label)
        })
    });
    standard
        .iter()
        .find(|(m, _)| m == method)
        .map_or_else(|| Label::from(method.as_str()), |(_, l)| l.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_follows_the_wall_clock() {
        let close =
            |a: DateTime<Utc>, b: DateTime<Utc>| (a - b).abs() < TimeDelta::milliseconds(50);
        for _ in 0..10_000 {
            let at = Instant::now();
            let t = wall_time(at);
            assert!(close(t, Utc::now()), "{t} vs {}", Utc::now());
        }
        // Readings away from the base are placed by their distance from it, either way.
        let later = Instant::now() + Duration::from_secs(3);
        assert!(close(wall_time(later), Utc::now() + TimeDelta::seconds(3)));
        if let Some(earlier) = Instant::now().checked_sub(Duration::from_secs(2)) {
            assert!(close(
                wall_time(earlier),
                Utc::now() - TimeDelta::seconds(2)
            ));
        }
    }

    #[test]
    fn method_labels_name_the_method() {
        for m in ["GET", "POST", "DELETE", "TRACE", "PURGE"] {
            let method = http::Method::from_bytes(m.as_bytes()).unwrap();
            assert_eq!(method_label(&method), m);
        }
    }
}
