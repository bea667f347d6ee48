//! The dashboard's static files under `/admin/assets/` (CONTRACT §6): hashed names only,
//! cached for good, gzipped when the client allows it. The hashes are computed here from the
//! files on disk, independently of the server's own code.

mod common;

use std::io::Read as _;

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Request, StatusCode},
};
use common::{Resp, Server};
use http_body_util::BodyExt as _;
use sha2::{Digest as _, Sha256};
use tower::ServiceExt as _;

const CSS: &str = "vendor/bootstrap.min.css";
const BUNDLE: &str = "vendor/bootstrap.bundle.min.js";
const CHART: &str = "vendor/chart.umd.min.js";

fn file(logical: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("static")
        .join(logical);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn hash(logical: &str) -> String {
    Sha256::digest(file(logical))[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `/admin/assets/vendor/bootstrap.min.<hash>.css`.
fn url(logical: &str) -> String {
    let (stem, ext) = logical.rsplit_once('.').unwrap();
    format!("/admin/assets/{stem}.{}.{ext}", hash(logical))
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

fn gzip_len(data: &[u8]) -> usize {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap().len()
}

fn assert_cacheable(r: &Resp, logical: &str) {
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(
        r.header("etag"),
        Some(format!("\"{}\"", hash(logical)).as_str())
    );
    assert!(
        r.header("vary")
            .is_some_and(|v| v.eq_ignore_ascii_case("accept-encoding")),
        "{:?}",
        r.header("vary")
    );
}

#[tokio::test]
async fn a_hashed_name_is_served_with_its_type_and_cached_for_good() {
    let s = Server::sqlite().await;
    for (logical, ty) in [
        (CSS, "text/css; charset=utf-8"),
        (BUNDLE, "text/javascript; charset=utf-8"),
        (CHART, "text/javascript; charset=utf-8"),
        ("vendor/VERSIONS.md", "text/markdown; charset=utf-8"),
    ] {
        let r = s.req("GET", &url(logical)).send().await;
        assert_eq!(r.status, 200, "{logical}: {}", r.text());
        assert_eq!(r.header("content-type"), Some(ty), "{logical}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        // No Accept-Encoding: the plain body.
        assert_eq!(r.header("content-encoding"), None, "{logical}");
        assert_cacheable(&r, logical);
        assert!(r.body == file(logical), "{logical}: the body is the file");
    }
}

#[tokio::test]
async fn gzip_is_sent_only_when_accepted() {
    let s = Server::sqlite().await;
    for ae in ["gzip", "gzip, deflate, br, zstd", "br;q=1, *;q=0.5"] {
        let r = s
            .req("GET", &url(CHART))
            .header("Accept-Encoding", ae)
            .send()
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{ae}");
        assert_eq!(
            r.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_cacheable(&r, CHART);
        assert!(r.body.len() < file(CHART).len() / 2, "{ae}: compressed");
        assert!(gunzip(&r.body) == file(CHART), "{ae}: decodes to the file");
    }
    for ae in ["identity", "br", "gzip;q=0", "gzip;q=0, *", "*;q=0"] {
        let r = s
            .req("GET", &url(CHART))
            .header("Accept-Encoding", ae)
            .send()
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), None, "{ae}");
        assert_cacheable(&r, CHART);
        assert!(r.body == file(CHART), "{ae}: the plain file");
    }
}

#[tokio::test]
async fn a_matching_if_none_match_answers_304_without_a_body() {
    let s = Server::sqlite().await;
    let tag = format!("\"{}\"", hash(CSS));
    for inm in [
        tag.clone(),
        format!("W/{tag}"),
        format!("\"x\", {tag}"),
        "*".into(),
    ] {
        let r = s
            .req("GET", &url(CSS))
            .header("If-None-Match", &inm)
            .header("Accept-Encoding", "gzip")
            .send()
            .await;
        assert_eq!(r.status, 304, "{inm}");
        assert!(r.body.is_empty());
        assert_cacheable(&r, CSS);
    }
    let r = s
        .req("GET", &url(CSS))
        .header("If-None-Match", "\"0000000000\"")
        .send()
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body == file(CSS));
}

#[tokio::test]
async fn head_answers_the_headers_of_get_without_the_body() {
    let s = Server::sqlite().await;
    let r = s
        .req("HEAD", &url(BUNDLE))
        .header("Accept-Encoding", "gzip")
        .send()
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_cacheable(&r, BUNDLE);
}

#[tokio::test]
async fn unknown_unhashed_and_stale_names_are_404() {
    let s = Server::sqlite().await;
    let stale = format!("/admin/assets/vendor/bootstrap.min.{}.css", "0123456789");
    let swapped = format!("/admin/assets/vendor/bootstrap.min.{}.css", hash(CHART));
    for path in [
        "/admin/assets/vendor/bootstrap.min.css",
        "/admin/assets/vendor/chart.umd.min.js",
        "/admin/assets/vendor/VERSIONS.md",
        "/admin/assets/nope.0123456789.js",
        "/admin/assets/",
        "/admin/assets/missing-asset",
        stale.as_str(),
        swapped.as_str(),
        "/admin/assets/../Cargo.toml",
        "/admin/assets/%2e%2e/Cargo.toml",
    ] {
        let r = s.req("GET", path).send().await;
        r.problem(404, "not_found");
        assert_eq!(
            r.header("cache-control"),
            None,
            "{path}: a 404 is not cached for good"
        );
    }
    // Only reads are served.
    let r = s.req("POST", &url(CSS)).send().await;
    r.problem(405, "method_not_allowed");
}

#[tokio::test]
async fn under_a_mount_prefix_the_assets_follow_it() {
    let s = Server::sqlite().await;
    let host = axum::Router::new().nest("/kv", s.admin.router());
    let get = |path: String| {
        let host = host.clone();
        async move {
            let req = Request::builder()
                .uri(path)
                .header("host", "127.0.0.1:8080")
                .header("accept-encoding", "gzip")
                .extension(ConnectInfo(
                    "127.0.0.1:40000".parse::<std::net::SocketAddr>().unwrap(),
                ))
                .body(Body::empty())
                .unwrap();
            let res = host.oneshot(req).await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    };
    let (status, body) = get(format!("/kv{}", url(CSS))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(gunzip(&body) == file(CSS));
    let (status, _) = get(url(CSS)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not outside the prefix");
}

/// The overview page's budget is 300 KB compressed for everything it loads; the vendored
/// libraries must leave room for our own files and the page itself.
#[tokio::test]
#[allow(
    clippy::print_stdout,
    reason = "the figures are the point of this test"
)]
async fn the_vendored_libraries_fit_the_page_weight_budget() {
    let s = Server::sqlite().await;
    let mut total = 0;
    let mut total_plain = 0;
    for logical in [CSS, BUNDLE, CHART] {
        let r = s
            .req("GET", &url(logical))
            .header("Accept-Encoding", "gzip")
            .send()
            .await;
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        let plain = file(logical).len();
        // What is sent is what the best gzip gives, not a weaker setting.
        assert!(r.body.len() <= gzip_len(&file(logical)), "{logical}");
        println!(
            "{logical}: {plain} bytes, {} gzipped ({:.0}%)",
            r.body.len(),
            100.0 * r.body.len() as f64 / plain as f64
        );
        total += r.body.len();
        total_plain += plain;
    }
    println!("total: {total_plain} bytes, {total} gzipped (budget 200 KB of the page's 300 KB)");
    assert!(total < 200 * 1024, "{total} bytes compressed");
}
