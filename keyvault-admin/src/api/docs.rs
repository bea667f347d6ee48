//! `/openapi.json` and its browsable UI at `/docs/` (Swagger UI's files are compiled into the
//! binary: no CDN). Both follow the router's mount prefix: the document names it as its
//! server, and the UI fetches the document by a relative URL.

use std::sync::{Arc, LazyLock};

use axum::{
    Json, Router,
    body::Bytes,
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use utoipa::{
    OpenApi,
    openapi::{OpenApi as Document, server::Server},
};
use utoipa_swagger_ui::Config;

use super::{mount::Mount, openapi::ApiDoc};
use crate::error::Code;

static DOCUMENT: LazyLock<Document> = LazyLock::new(ApiDoc::openapi);

/// The document served at the root, serialised once.
static ROOT_JSON: LazyLock<Bytes> = LazyLock::new(|| {
    // A document of strings, maps and numbers always serialises.
    Bytes::from(serde_json::to_vec(&*DOCUMENT).unwrap_or_default())
});

/// Swagger UI's page lives at `<prefix>/docs/`, so `../openapi.json` is the document
/// under any prefix. No validator: it would send the document's address to swagger.io
/// (and its badge is an image from another origin, which the page's CSP refuses).
static UI_CONFIG: LazyLock<Arc<Config<'static>>> =
    LazyLock::new(|| Arc::new(Config::new(["../openapi.json"]).validator_url("none")));

pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/openapi.json", get(document))
        // Relative, so that it stays under the prefix: `<prefix>/docs` → `<prefix>/docs/`.
        .route("/docs", get(|| async { Redirect::permanent("docs/") }))
        .route("/docs/", get(|| ui(String::new())))
        .route("/docs/{*file}", get(|Path(file): Path<String>| ui(file)))
}

async fn document(mount: Mount) -> Response {
    let prefix = mount.path("");
    if prefix.is_empty() {
        let json = HeaderValue::from_static("application/json");
        return ([(header::CONTENT_TYPE, json)], ROOT_JSON.clone()).into_response();
    }
    // Under a prefix the document names it as its server.
    let mut doc = DOCUMENT.clone();
    doc.servers = Some(vec![Server::new(prefix)]);
    Json(doc).into_response()
}

async fn ui(file: String) -> Response {
    match utoipa_swagger_ui::serve(&file, UI_CONFIG.clone()) {
        Ok(Some(f)) => {
            let mut res = (StatusCode::OK, f.bytes.into_owned()).into_response();
            if let Ok(v) = HeaderValue::from_str(&f.content_type) {
                res.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            res
        }
        Ok(None) => Code::NotFound.problem("no such file").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the API documentation page failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
