//! The security headers of every answer, not only of the dashboard's pages: the REST API,
//! its errors and the router's own 404 and 405, `/metrics`, `/openapi.json`, the API
//! documentation and the dashboard's assets and redirects. A header a handler set itself
//! (the dashboard pages' CSP and referrer policy, the assets' caching) is kept.
//!
//! - `X-Content-Type-Options: nosniff`: a JSON answer that echoes client text is never
//!   sniffed into HTML or script.
//! - `X-Frame-Options: DENY` and CSP `frame-ancestors 'none'`: nothing is framed (click-jacking
//!   of the dashboard or of the documentation's "try it out").
//! - `Content-Security-Policy`: `default-src 'none'` for answers that are data (a JSON body
//!   opened as a page runs and loads nothing); the dashboard's policy under `/admin`; for the
//!   Swagger UI its own, which adds the inline styles its scripts set.
//! - `Referrer-Policy: no-referrer`, except under `/admin`, whose pages send their own origin
//!   (`same-origin`, the fallback of the CSRF origin check).
//! - `Cache-Control: no-store` on `/v1` answers: they carry keys, tokens and secrets once,
//!   and no shared cache may keep them.

use axum::{
    extract::Request,
    http::{HeaderName, HeaderValue, header},
    middleware::Next,
    response::Response,
};

use crate::dashboard::CSP as DASHBOARD_CSP;

/// Answers that are data: nothing runs, nothing loads, nothing frames them.
pub(crate) const DATA_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The Swagger UI at `/docs/`: its files are served by the binary (`'self'`), it fetches the
/// document and sends "try it out" requests to this origin, and its scripts set inline
/// styles; no inline script (its start-up is `swagger-initializer.js`).
pub(crate) const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the headers an answer lacks.
pub(crate) async fn secure(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let area = if path == "/docs" || path.starts_with("/docs/") {
        Area::Docs
    } else if path == "/admin" || path.starts_with("/admin/") {
        Area::Dashboard
    } else if path.starts_with("/v1/") {
        Area::Api
    } else {
        Area::Other
    };
    let mut res = next.run(req).await;
    let (csp, referrer) = match area {
        Area::Docs => (DOCS_CSP, "no-referrer"),
        Area::Dashboard => (DASHBOARD_CSP, "same-origin"),
        Area::Api | Area::Other => (DATA_CSP, "no-referrer"),
    };
    let h = res.headers_mut();
    let mut keep = |name: HeaderName, value: &'static str| {
        h.entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    };
    keep(header::CONTENT_SECURITY_POLICY, csp);
    keep(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    keep(header::X_FRAME_OPTIONS, "DENY");
    keep(header::REFERRER_POLICY, referrer);
    if area == Area::Api {
        keep(header::CACHE_CONTROL, "no-store");
    }
    res
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Area {
    Docs,
    Dashboard,
    Api,
    Other,
}
