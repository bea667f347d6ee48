//! `keyvault serve`: the HTTP server, with graceful shutdown.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::{
    api::{self, AppState},
    app::App,
    config::MIN_SECRET_KEY_BYTES,
    error::{Error, Result},
    out::stderr_line,
};

pub(crate) async fn serve(app: App, bind: SocketAddr) -> Result<()> {
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
    let metrics = api::metrics_handle()?;
    let recorder = api::recorder(&app);
    if app.db.tokens(None, 1).await?.is_empty() && app.db.users().await?.is_empty() {
        stderr_line(
            "No API token or admin user exists yet. Create an admin token with:\n  \
             keyvault token create --name admin --role admin\n\
             (it is printed once; send it as `Authorization: Bearer <token>`).",
        );
    }
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| Error::io(format!("binding {bind}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    // A plain line, for people and for scripts that started the server on port 0.
    stderr_line(&format!("keyvault listening on http://{addr}"));
    tracing::info!(%addr, database = app.config.db.kind(), "serving");
    let backends = app.backends.clone();
    let state = AppState {
        app,
        metrics,
        recorder: recorder.clone(),
    };
    let service = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, service)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| Error::io("serving", e));
    // Requests have finished: write every usage event they queued.
    recorder.shutdown().await;
    if let Err(e) = backends.flush().await {
        tracing::error!(error = %e.cli_line(), "credit spends cached in Redis not written back");
    }
    tracing::info!("stopped");
    served
}

async fn shutdown_signal() {
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
