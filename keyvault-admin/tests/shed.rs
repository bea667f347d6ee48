//! Load shedding (`KEYVAULT_MAX_CONCURRENCY`): beyond the limit a request is answered at once
//! with 503 `overloaded` and `Retry-After`, health checks still answer, and the place is free
//! again once a request is done. The requests held in flight send bodies that have not ended,
//! so they stay inside the router for as long as the test decides.

mod common;

use std::{net::SocketAddr, time::Duration};

use axum::{body::Body, extract::ConnectInfo, http::Request};
use common::{Server, Settings};
use tower::ServiceExt;

/// A `POST /v1/keys` whose body arrives only when the returned sender sends it.
fn held(
    s: &Server,
    token: &str,
) -> (
    futures::channel::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    tokio::task::JoinHandle<u16>,
) {
    let (tx, rx) = futures::channel::mpsc::channel(1);
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let req = Request::builder()
        .method("POST")
        .uri("/v1/keys")
        .header("host", "127.0.0.1:8080")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .extension(ConnectInfo(peer))
        .body(Body::from_stream(rx))
        .unwrap();
    let router = s.router();
    let task = tokio::spawn(async move { router.oneshot(req).await.unwrap().status().as_u16() });
    (tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_limit_requests_are_shed_with_retry_after_and_health_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::sqlite(dir.path());
    settings.max_concurrency = Some("2".into());
    let s = Server::start(&settings).await;
    let token = s.token("admin").await;
    let (mut a, first) = held(&s, &token);
    let (mut b, second) = held(&s, &token);
    // Both are inside, reading their bodies.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = s.req("GET", "/v1/keys").token(&token).send().await;
    let p = r.problem(503, "overloaded");
    assert!(p["detail"].as_str().unwrap().contains("concurrency"), "{p}");
    assert_eq!(r.header("retry-after"), Some("1"));
    for path in ["/healthz", "/readyz"] {
        assert_eq!(s.req("GET", path).send().await.status, 200, "{path}");
    }
    // One finishes: its place is free again.
    use futures::SinkExt;
    a.send(Ok(br#"{"name": "held a"}"#.to_vec())).await.unwrap();
    drop(a);
    assert_eq!(first.await.unwrap(), 201);
    assert_eq!(
        s.req("GET", "/v1/keys").token(&token).send().await.status,
        200
    );
    b.send(Ok(br#"{"name": "held b"}"#.to_vec())).await.unwrap();
    drop(b);
    assert_eq!(second.await.unwrap(), 201);
    let metrics = s.req("GET", "/metrics").send().await.text();
    assert!(metrics.contains("keyvault_http_shed_total"), "{metrics}");
}

#[test]
fn the_limit_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["0", "-1", "many", "1000001"] {
        let mut settings = Settings::sqlite(dir.path());
        settings.max_concurrency = Some(bad.into());
        let global = keyvault_admin::cli::Global {
            max_concurrency: bad.into(),
            database_url: settings.database_url.clone(),
            ..Default::default()
        };
        let e = keyvault_admin::Config::from_args(&global).unwrap_err();
        assert!(
            e.to_string().contains("KEYVAULT_MAX_CONCURRENCY"),
            "{bad}: {e}"
        );
    }
}
