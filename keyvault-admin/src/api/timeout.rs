//! The whole-request timeout (`KEYVAULT_REQUEST_TIMEOUT`): a request whose response has not
//! started within it is answered with a problem document instead of holding its place (and
//! its connection) for ever. A client still sending its body gets 408 `request_timeout` (it
//! is the slow one, and the connection is closed); a request that had fully arrived gets 503
//! `response_timeout` with `Retry-After` (the server, or a backend, is the slow one).
//!
//! The clock stops once the response's head is ready: a body being streamed (the live
//! statistics, a CSV export) is never cut mid-stream. `/v1/stats/stream` is not timed at
//! all, since it is meant to stay open.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body::{Body as _, Frame, SizeHint};

use super::AppState;
use crate::error::{Code, Error};

/// Routes never timed: the live stream is answered at once and then stays open.
const NEVER_TIMED: [&str; 1] = ["/v1/stats/stream"];

/// Answers for the handler when `KEYVAULT_REQUEST_TIMEOUT` runs out before it does.
pub(crate) async fn limit(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if NEVER_TIMED.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let arrived = Arc::new(AtomicBool::new(false));
    let (watched, mut body) = (arrived.clone(), None);
    let req = req.map(|inner| {
        if http_body::Body::is_end_stream(&inner) {
            watched.store(true, Ordering::Release);
        }
        let inner = Arc::new(Mutex::new(inner));
        body = Some(inner.clone());
        Body::new(Watched {
            inner,
            arrived: watched,
        })
    });
    let Ok(res) = tokio::time::timeout(st.app.config.request_timeout, next.run(req)).await else {
        // A handler that had not read the body yet (waiting for a backend before it does)
        // tells nothing: what the client sent is then read here, for a moment.
        let complete = arrived.load(Ordering::Acquire)
            || match body {
                Some(b) => arrived_meanwhile(&b).await,
                None => false,
            };
        metrics::counter!(
            "keyvault_http_timeouts_total",
            "kind" => if complete { "response" } else { "request" }
        )
        .increment(1);
        return if complete {
            let mut res = Error::from(
                Code::ResponseTimeout.problem("the request took too long to answer; retry shortly"),
            )
            .into_response();
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            res
        } else {
            let mut res =
                Error::from(Code::RequestTimeout.problem("the request did not arrive in time"))
                    .into_response();
            // What is left of the body is never read: the connection cannot carry another
            // request.
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            res
        };
    };
    res
}

/// Whether the rest of a body the handler left unread has arrived: what a client sent is
/// already at hand, so it is read (and dropped) for a few milliseconds, up to the largest
/// body accepted.
async fn arrived_meanwhile(body: &Mutex<Body>) -> bool {
    let mut body = std::mem::take(&mut *body.lock().unwrap_or_else(PoisonError::into_inner));
    let drain = async {
        let mut read = 0usize;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            match frame.map(Frame::into_data) {
                Ok(Ok(data)) => read += data.len(),
                Ok(Err(_)) => {}
                Err(_) => return false,
            }
            if read > super::BODY_LIMIT {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(Duration::from_millis(20), drain)
        .await
        .unwrap_or(false)
}

/// A request body that notes when it has been received whole; shared with [`limit`], which
/// reads what the handler left if the time runs out.
struct Watched {
    inner: Arc<Mutex<Body>>,
    arrived: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => inner.is_end_stream(),
            _ => false,
        };
        drop(inner);
        if ended {
            self.arrived.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .size_hint()
    }
}
