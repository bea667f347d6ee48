//! [`Admin`]: the server's HTTP side as a value a host can mount, with what it runs beside the
//! router (the usage recorder) and what it hands out instead of installing (the metrics
//! recorder).

use std::sync::{Arc, Mutex};

use axum::Router;
use keyvault_core::{RecorderConfig, UsageRecorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::{
    api::{self, AppState},
    app::App,
};

/// A job running beside the router, and the leases it runs under.
type Job = (tokio::task::JoinHandle<()>, &'static [&'static str]);

/// The buckets of `keyvault_http_request_duration_seconds`, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The admin API, dashboard, metrics and API documentation over one [`App`].
///
/// [`router`](Self::router) answers at `/v1/…`, `/admin…`, `/metrics`, `/docs`, `/openapi.json`,
/// `/healthz` and `/readyz`; nest it under a prefix with `Router::nest` and every redirect,
/// cookie path and link it makes follows that prefix. Create it inside a Tokio runtime (it
/// starts the usage recorder that `POST /v1/usage` feeds), and call
/// [`shutdown`](Self::shutdown) after the server has stopped so that queued usage is written.
#[derive(Debug, Clone)]
pub struct Admin {
    state: AppState,
    recorder: Arc<Mutex<Option<PrometheusRecorder>>>,
    /// The jobs running beside the router (alert evaluation, notification delivery, the
    /// rotation, clean-up and retention jobs), each
    /// with the lease it runs under, and the lease holder they run as.
    background: Arc<Mutex<Vec<Job>>>,
    holder: Arc<str>,
}

impl Admin {
    /// The admin side of `app`. Nothing process-wide is installed.
    pub fn new(app: App) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("keyvault_http_request_duration_seconds".into()),
                LATENCY_BUCKETS,
            )
            // Only an empty bucket list is refused, and this one is not empty.
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let usage = UsageRecorder::spawn(app.backends.usage.clone(), RecorderConfig::default());
        let holder: Arc<str> = format!("instance-{}", uuid::Uuid::now_v7()).into();
        // Deliveries are polled every second, or as often as the shortest retry wait.
        let poll = app
            .config
            .retry_delays
            .iter()
            .copied()
            .min()
            .unwrap_or(std::time::Duration::from_secs(1))
            .clamp(
                std::time::Duration::from_millis(50),
                std::time::Duration::from_secs(1),
            );
        let rejections: Arc<crate::api::live::Rejections> = Arc::default();
        let mut background = vec![
            (
                tokio::spawn(evaluate_every(app.clone(), holder.clone())),
                &[crate::alerts::LEASE][..],
            ),
            (
                tokio::spawn(crate::notify::deliver_every(
                    app.clone(),
                    holder.clone(),
                    poll,
                )),
                &[crate::notify::LEASE][..],
            ),
            (
                tokio::spawn(crate::jobs::run_every(app.clone(), holder.clone())),
                &crate::jobs::LEASES[..],
            ),
        ];
        if let Some(live) = app.backends.live() {
            let send = crate::api::live::send_rejections(Arc::downgrade(&rejections), live.clone());
            background.push((tokio::spawn(send), &[][..]));
        }
        let state = AppState {
            metrics: recorder.handle(),
            recorder: usage,
            guard: Default::default(),
            rejections,
            in_flight: Arc::new(tokio::sync::Semaphore::new(app.config.max_concurrency)),
            app,
        };
        Self {
            state,
            recorder: Arc::new(Mutex::new(Some(recorder))),
            background: Arc::new(Mutex::new(background)),
            holder,
        }
    }

    /// The shared application state.
    pub fn app(&self) -> &App {
        &self.state.app
    }

    /// The usage recorder `POST /v1/usage` feeds; a host's own `KeyvaultLayer` may record into
    /// it too (`with_recorder`), so that its calls show in the admin's statistics.
    pub fn usage_recorder(&self) -> UsageRecorder {
        self.state.recorder.clone()
    }

    /// The routes, ready to serve or to nest in a host's router. Serve them with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so that peers are known
    /// (`/metrics` is open to loopback peers only, and audit records name the client).
    pub fn router(&self) -> Router {
        api::router(self.state.clone())
    }

    /// The Prometheus recorder whose text `/metrics` serves; install it with
    /// `metrics::set_global_recorder` (once per process: the first caller gets it). Until it
    /// is installed, `/metrics` shows no keyvault figures.
    pub fn metrics_recorder(&self) -> Option<PrometheusRecorder> {
        self.recorder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Runs the jobs of `serve` once now, as this instance (what it does every
    /// `KEYVAULT_JOB_INTERVAL`): a job whose lease another instance holds is left to it.
    pub async fn run_jobs(&self) -> crate::Result<crate::JobRun> {
        self.state.app.run_jobs(&self.holder).await
    }

    /// Writes the usage events still queued and the credit spends cached in Redis. Call it
    /// once requests have stopped.
    pub async fn shutdown(&self) {
        let background = std::mem::take(
            &mut *self
                .background
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (task, leases) in background {
            task.abort();
            // Another instance takes the job over at once instead of after a lapse.
            for lease in leases {
                let _ = self
                    .state
                    .app
                    .backends
                    .leases
                    .release_lease(lease, &self.holder)
                    .await;
            }
        }
        self.state.recorder.shutdown().await;
        if let Err(e) = self.state.app.backends.flush().await {
            tracing::error!(error = %e.cli_line(), "credit spends cached in Redis not written back");
        }
    }
}

/// Evaluates the alert rules every `KEYVAULT_ALERT_INTERVAL` while this instance holds the
/// evaluation's lease (taken when free or lapsed, renewed by each run).
async fn evaluate_every(app: crate::App, holder: Arc<str>) {
    let interval = app.config.alert_interval;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = crate::alerts::evaluate_leased(&app, &holder, interval).await {
            tracing::warn!(target: "keyvault::alerts", error = %e.cli_line(), "alert evaluation failed; retried next interval");
        }
    }
}
