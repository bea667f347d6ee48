//! [`serve`]: the HTTP server over an [`Admin`], with graceful shutdown.
//!
//! hyper is driven here rather than through `axum::serve`, which sets no timer on its
//! connections and so has no header-read timeout: a client that opens connections and sends
//! a request line a byte at a time (slowloris) would hold each one for ever.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo, http::Request, response::Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, task::JoinSet};

use crate::{
    admin::Admin,
    config::MIN_SECRET_KEY_BYTES,
    error::{Error, Result},
};

/// Serves `admin`'s router on `listener` until `shutdown` completes, lets requests in flight
/// finish, then writes the usage they queued ([`Admin::shutdown`]).
///
/// Each connection must send a request's line and headers within `KEYVAULT_HEADER_TIMEOUT`
/// (and, kept alive, its next request within as long), or it is closed. After `shutdown`,
/// connections get `KEYVAULT_REQUEST_TIMEOUT` to finish what they are answering (no request
/// takes longer to start its response); those still open then (live streams) are closed.
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
    let (header_timeout, drain) = (app.config.header_timeout, app.config.request_timeout);
    let router = admin.router();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                // Out of file descriptors, most likely: wait instead of spinning.
                Err(e) => {
                    tracing::error!(error = %e, "accepting a connection failed; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Reap finished connections so that the set holds only open ones.
        while connections.try_join_next().is_some() {}
        let service = TowerToHyperService::new(WithPeer {
            router: router.clone(),
            peer,
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            // A client that timed out or went away: nothing to answer, nothing to log above
            // debug (hyper's own text, which never holds a header value).
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection closed");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::info!(
                open = connections.len(),
                "closing the connections still open (live streams)"
            );
        }
    }
    connections.shutdown().await;
    // Requests have finished: write every usage event they queued.
    admin.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Errors of one connection being accepted, not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// The router, with the connection's peer in every request's extensions (as
/// `into_make_service_with_connect_info` does): `/metrics` is open to loopback peers only,
/// audit records name the client, and the sign-in throttle counts per address.
#[derive(Clone)]
struct WithPeer {
    router: Router,
    peer: SocketAddr,
}

impl tower::Service<Request<Incoming>> for WithPeer {
    type Response = Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.router.call(req)
    }
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
