//! Serving until a shutdown signal, then flushing usage.

use std::{future::Future, net::SocketAddr};

use keyvault_axum::{KeyvaultLayer, X_FORWARDED_FOR};
use keyvault_core::{RecorderConfig, StatsQuery, UsageRecorder};

use crate::{Config, Error, connect, router};

/// Serves until SIGTERM or SIGINT; then finishes the requests in flight and writes every
/// usage event before returning.
pub async fn run(config: Config) -> Result<(), Error> {
    run_until(config, shutdown_signal()).await
}

/// Serves until `shutdown` completes (see [`run`]).
pub async fn run_until(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let backends = connect(&config).await?;
    let recorder = UsageRecorder::spawn(backends.usage.clone(), recorder_config(&config));
    let mut layer = KeyvaultLayer::new(backends.vault.clone()).with_recorder(recorder.clone());
    if !config.trusted_proxies.is_empty() {
        layer = layer.with_trusted_proxies(config.trusted_proxies.iter().copied(), X_FORWARDED_FOR);
    }
    let app = router(layer).merge(crate::metrics_router(
        recorder.clone(),
        backends.vault.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| Error::io(format!("binding {}", config.bind), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    tracing::info!(%addr, "listening");
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    // Every answered request has queued its event by now; write them all before exiting,
    // even when serving failed.
    recorder.shutdown().await;
    let stats = recorder.stats();
    tracing::info!(
        recorded = stats.recorded,
        written = stats.written,
        dropped = stats.dropped,
        failed = stats.failed,
        "usage flushed"
    );
    backends.close().await?;
    served.map_err(|e| Error::io("serving", e))?;
    if let Some(path) = &config.usage_summary_file {
        let overview = backends.stats.overview(&StatsQuery::last_24h()).await?;
        let summary = serde_json::json!({
            "overview": overview,
            "recorder": {
                "recorded": stats.recorded,
                "written": stats.written,
                "dropped": stats.dropped,
                "failed": stats.failed,
            },
        });
        std::fs::write(path, summary.to_string())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

/// Batches pay off for a database, whose cost is per write. The in-memory rollups cost the
/// same per event however they arrive, so they take small batches: the writer wakes once per
/// batch rather than per request, and holds the only worker for tens of microseconds, not
/// milliseconds.
fn recorder_config(config: &Config) -> RecorderConfig {
    let default = RecorderConfig::default();
    if config.database_url.is_some() {
        return default;
    }
    RecorderConfig {
        batch_size: 128,
        ..default
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
