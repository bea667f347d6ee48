//! CONTRACT §5's routes, through the router with `oneshot`.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
    response::Response,
};
use http_body_util::BodyExt;
use keyvault_axum::KeyvaultLayer;
use keyvault_core::{
    Actor, Keyvault, NewKey, RecorderConfig, StatsQuery, UsageQuery, UsageRecorder,
    memory::MemoryStore,
};
use serde_json::{Value, json};
use tower::ServiceExt;

struct App {
    router: Router,
    key: String,
    key_id: String,
    store: Arc<MemoryStore>,
    recorder: UsageRecorder,
}

async fn app() -> App {
    let store = Arc::new(MemoryStore::new());
    let vault = Keyvault::builder().backend(store.clone()).build().unwrap();
    let created = vault
        .create_key(NewKey::new("demo"), &Actor::library())
        .await
        .unwrap();
    let recorder = UsageRecorder::spawn(store.clone(), RecorderConfig::default());
    let router = host_app::router(KeyvaultLayer::new(vault).with_recorder(recorder.clone()));
    App {
        router,
        key: created.key.expose().to_owned(),
        key_id: created.record.id.to_string(),
        store,
        recorder,
    }
}

async fn call(
    app: &App,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Response {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    app.router
        .clone()
        .oneshot(b.body(body).unwrap())
        .await
        .unwrap()
}

async fn json_of(res: Response) -> Value {
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn routes_answer_as_the_contract_says() {
    let app = app().await;
    let res = call(&app, "GET", "/v1/hello", Some(&app.key), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        json_of(res).await,
        json!({ "message": "hello", "key_id": app.key_id })
    );
    let payload = json!({ "messages": [{ "role": "user", "content": "hi" }], "n": 2 });
    for route in ["/v1/chat", "/v1/embed"] {
        let res = call(&app, "POST", route, Some(&app.key), Some(payload.clone())).await;
        assert_eq!(res.status(), StatusCode::OK, "{route}");
        assert_eq!(json_of(res).await, payload, "{route} echoes its body");
    }
    let res = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    for route in ["/v1/hello", "/v1/chat", "/v1/embed"] {
        let method = if route == "/v1/hello" { "GET" } else { "POST" };
        let res = call(&app, method, route, None, Some(json!({}))).await;
        assert_eq!(
            res.status(),
            StatusCode::UNAUTHORIZED,
            "{route} is protected"
        );
    }
}

#[tokio::test]
async fn usage_is_counted_per_provider() {
    let app = app().await;
    for _ in 0..3 {
        call(&app, "GET", "/v1/hello", Some(&app.key), None).await;
    }
    call(
        &app,
        "POST",
        "/v1/chat",
        Some(&app.key),
        Some(json!({"a": 1})),
    )
    .await;
    call(
        &app,
        "POST",
        "/v1/embed",
        Some(&app.key),
        Some(json!({"a": 1})),
    )
    .await;
    call(
        &app,
        "POST",
        "/v1/embed",
        Some("kv_wrong"),
        Some(json!({"a": 1})),
    )
    .await;
    call(&app, "GET", "/healthz", None, None).await;
    app.recorder.shutdown().await;
    let stats = app.store.overview(&StatsQuery::last_24h()).await.unwrap();
    assert_eq!(stats.calls, 6, "every protected request, none for /healthz");
    let by: Vec<(String, u64)> = stats
        .by_provider
        .iter()
        .map(|p| (p.provider.clone(), p.calls))
        .collect();
    assert_eq!(
        by,
        vec![
            ("demo".to_owned(), 3),
            ("anthropic".to_owned(), 2),
            ("openai".to_owned(), 1)
        ]
    );
    let anthropic = stats
        .by_provider
        .iter()
        .find(|p| p.provider == "anthropic")
        .unwrap();
    assert_eq!(anthropic.success_rate, Some(0.5));
}

/// The echo routes return the body as sent (key order and number formatting kept), whatever
/// `Content-Type` labels it; a body that is not JSON is a 400 problem.
#[tokio::test]
async fn echo_routes_return_the_body_as_sent() {
    let app = app().await;
    let raw = r#"{"z": 1, "a": [1.50, "x"], "m": {"b": null, "a": true}}"#;
    for route in ["/v1/chat", "/v1/embed"] {
        for content_type in [
            Some("application/json"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let mut b = Request::post(route).header("x-api-key", &app.key);
            if let Some(ct) = content_type {
                b = b.header("content-type", ct);
            }
            let res = app
                .router
                .clone()
                .oneshot(b.body(Body::from(raw)).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{route} {content_type:?}");
            assert_eq!(
                res.headers()["content-type"],
                "application/json",
                "{route} {content_type:?}"
            );
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(bytes, raw.as_bytes(), "{route} {content_type:?}");
        }
        for bad in ["", "{", "{} {}", "not json"] {
            let res = app
                .router
                .clone()
                .oneshot(
                    Request::post(route)
                        .header("x-api-key", &app.key)
                        .header("content-type", "application/json")
                        .body(Body::from(bad))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{route} {bad:?}");
            assert_eq!(
                res.headers()["content-type"],
                "application/problem+json",
                "{route} {bad:?}"
            );
            let body = json_of(res).await;
            assert_eq!(body["status"], 400);
            assert_eq!(body["code"], "INVALID_JSON");
        }
    }
}
