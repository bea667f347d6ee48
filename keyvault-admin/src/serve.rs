//! [`serve`]: the HTTP server over an [`Admin`], with graceful shutdown.

use std::{future::Future, net::SocketAddr};

use tokio::net::TcpListener;

use crate::{
    admin::Admin,
    config::MIN_SECRET_KEY_BYTES,
    error::{Error, Result},
};

/// Serves `admin`'s router on `listener` until `shutdown` completes, lets requests in flight
/// finish, then writes the usage they queued ([`Admin::shutdown`]).
pub async fn serve(
    admin: Admin,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = admin.app();
    if app
        .config
        .secret_key
        .as_ref()
        .is_some_and(|s| s.len() < MIN_SECRET_KEY_BYTES)
    {
        tracing::warn!(
            "SECRET_KEY is shorter than {MIN_SECRET_KEY_BYTES} characters: sessions are only \
             as safe as it is long (leave it unset to have one generated)"
        );
    }
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    tracing::info!(%addr, database = app.config.db.kind(), "serving");
    let service = admin
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("serving", e));
    // Requests have finished: write every usage event they queued.
    admin.shutdown().await;
    tracing::info!("stopped");
    served
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests");
}
