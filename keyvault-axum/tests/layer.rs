//! The layer's answers, driven through a router with `oneshot` (no sockets).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{Request, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{TimeDelta, Utc};
use http_body_util::BodyExt;
use keyvault_axum::{Cost, KeyvaultLayer, Provider, RouteConfig, VerifiedKey, X_FORWARDED_FOR};
use keyvault_core::{
    Actor, Credits, FakeClock, KeyId, Keyvault, LimitDecision, LimitRequest, NewKey, Outcome,
    RateLimit, RateLimiter, RecorderConfig, UsageEvent, UsageRecorder, UsageSink, VerifyRequest,
    async_trait, memory::MemoryStore,
};
use serde_json::Value;
use tower::ServiceExt;

/// Keeps every event written, for inspection.
#[derive(Debug, Default)]
struct Captured(Mutex<Vec<UsageEvent>>);

#[async_trait]
impl UsageSink for Captured {
    async fn write(&self, events: &[UsageEvent]) -> keyvault_core::Result<()> {
        self.0.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

struct Fixture {
    vault: Keyvault,
    clock: FakeClock,
    sink: Arc<Captured>,
    recorder: UsageRecorder,
}

impl Fixture {
    fn new() -> Self {
        Self::with_limiter(None)
    }

    fn with_limiter(limiter: Option<Arc<dyn RateLimiter>>) -> Self {
        let clock = FakeClock::new(Utc::now());
        let store = Arc::new(MemoryStore::new());
        let mut b = Keyvault::builder()
            .backend(store)
            .clock(Arc::new(clock.clone()));
        if let Some(l) = limiter {
            b = b.limiter(l);
        }
        let sink = Arc::new(Captured::default());
        let recorder = UsageRecorder::spawn(sink.clone(), RecorderConfig::default());
        Self {
            vault: b.build().unwrap(),
            clock,
            sink,
            recorder,
        }
    }

    async fn key(&self, new: NewKey) -> (String, KeyId) {
        let c = self.vault.create_key(new, &Actor::library()).await.unwrap();
        (c.key.expose().to_owned(), c.record.id)
    }

    fn layer(&self) -> KeyvaultLayer {
        KeyvaultLayer::new(self.vault.clone()).with_recorder(self.recorder.clone())
    }

    fn app(&self) -> Router {
        app(self.layer())
    }

    async fn events(&self) -> Vec<UsageEvent> {
        self.recorder.shutdown().await;
        self.sink.0.lock().unwrap().clone()
    }
}

async fn hello(key: VerifiedKey) -> impl IntoResponse {
    axum::Json(
        serde_json::json!({ "key_id": key.id().to_string(), "credits": key.credits_remaining() }),
    )
}

fn app(layer: KeyvaultLayer) -> Router {
    Router::new()
        .route("/v1/hello", get(hello))
        .route(
            "/v1/items/{id}",
            get(|| async { (Provider::new("upstream-b"), "item") }),
        )
        .route("/v1/teapot", get(|| async { StatusCode::IM_A_TEAPOT }))
        .route(
            "/v1/admin",
            post(|key: VerifiedKey| async move { key.id().to_string() }),
        )
        .layer(
            layer
                .with_provider("demo")
                .with_route(
                    "/v1/admin",
                    RouteConfig::new().with_scope("admin").with_provider("ops"),
                )
                .with_route(
                    "/v1/items/{id}",
                    RouteConfig::new().with_cost(Cost::from_fn(|p| {
                        p.headers
                            .get("x-units")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(1)
                    })),
                ),
        )
        .route("/healthz", get(|| async { "ok" }))
}

fn get_req(uri: &str) -> http::request::Builder {
    Request::builder().uri(uri).method("GET")
}

fn bearer(uri: &str, key: &str) -> Request<Body> {
    get_req(uri)
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> Response {
    app.clone().oneshot(req).await.unwrap()
}

async fn body_json(res: Response) -> Value {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn header<'a>(res: &'a Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

/// Checks status, code and the problem body shape.
async fn assert_problem(res: Response, status: u16, code: &str) {
    assert_eq!(res.status().as_u16(), status, "status for {code}");
    assert_eq!(
        header(&res, "content-type"),
        Some("application/problem+json")
    );
    let body = body_json(res).await;
    let obj = body.as_object().unwrap();
    assert_eq!(obj["code"], code);
    assert_eq!(obj["status"], status);
    assert!(obj["type"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(obj["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(obj.len(), 4, "exactly type, title, status, code: {body}");
}

#[tokio::test]
async fn missing_keys_answer_401_with_a_bearer_challenge() {
    let f = Fixture::new();
    let (key, _) = f.key(NewKey::new("k")).await;
    let app = f.app();
    let cases = [
        get_req("/v1/hello").body(Body::empty()).unwrap(),
        get_req("/v1/hello")
            .header("authorization", "Bearer ")
            .body(Body::empty())
            .unwrap(),
        get_req("/v1/hello")
            .header("x-api-key", "")
            .body(Body::empty())
            .unwrap(),
        // A key in the URL query is never read.
        get_req(&format!("/v1/hello?api_key={key}&key={key}"))
            .body(Body::empty())
            .unwrap(),
    ];
    for req in cases {
        let res = send(&app, req).await;
        assert_eq!(header(&res, "www-authenticate"), Some("Bearer"));
        assert_problem(res, 401, "MISSING").await;
    }
    let events = f.events().await;
    assert_eq!(events.len(), 4);
    assert!(
        events
            .iter()
            .all(|e| e.outcome == Some(Outcome::Missing) && e.status == 401)
    );
}

#[tokio::test]
async fn bearer_and_api_key_header_are_read_and_authorization_wins() {
    let f = Fixture::new();
    let (key, id) = f.key(NewKey::new("k")).await;
    let app = f.app();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let req = get_req("/v1/hello")
            .header("authorization", format!("{scheme} {key}"))
            .body(Body::empty())
            .unwrap();
        let res = send(&app, req).await;
        assert_eq!(res.status(), 200);
        assert_eq!(body_json(res).await["key_id"], id.to_string());
    }
    let req = get_req("/v1/hello")
        .header("x-api-key", &key)
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.status(), 200);
    // Both present: Authorization decides, whichever is valid.
    let req = get_req("/v1/hello")
        .header("authorization", format!("Bearer {key}"))
        .header("x-api-key", "kv_nonsense")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.status(), 200);
    let req = get_req("/v1/hello")
        .header("authorization", "Bearer kv_nonsense")
        .header("x-api-key", &key)
        .body(Body::empty())
        .unwrap();
    assert_problem(send(&app, req).await, 401, "NOT_FOUND").await;
}

#[tokio::test]
async fn the_api_key_header_is_configurable() {
    let f = Fixture::new();
    let (key, _) = f.key(NewKey::new("k")).await;
    let app = app(f
        .layer()
        .with_api_key_header(http::HeaderName::from_static("x-service-key")));
    let req = |h: &str| {
        get_req("/v1/hello")
            .header(h, &key)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, req("x-service-key")).await.status(), 200);
    assert_problem(send(&app, req("x-api-key")).await, 401, "MISSING").await;
}

#[tokio::test]
async fn unusable_keys_answer_401() {
    let f = Fixture::new();
    let (deleted, deleted_id) = f.key(NewKey::new("gone")).await;
    f.vault
        .delete_key(deleted_id, &Actor::library())
        .await
        .unwrap();
    let (disabled, _) = f.key(NewKey::new("off").disabled()).await;
    let (expiring, _) = f
        .key(NewKey::new("old").expires_at(f.clock.now_plus(TimeDelta::minutes(5))))
        .await;
    f.clock.advance(TimeDelta::minutes(6));
    // A well-formed key of the reserved token prefix is never a key.
    let token = keyvault_core::ApiKey::generate(&keyvault_core::Prefix::any("kvt").unwrap());
    let unknown = keyvault_core::ApiKey::generate(&keyvault_core::Prefix::default());
    let mut bad_checksum = unknown.expose().to_owned();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'a' { 'b' } else { 'a' });
    let app = f.app();
    for (key, code) in [
        ("not a key", "NOT_FOUND"),
        (bad_checksum.as_str(), "NOT_FOUND"),
        (unknown.expose(), "NOT_FOUND"),
        (token.expose(), "NOT_FOUND"),
        (deleted.as_str(), "NOT_FOUND"),
        (disabled.as_str(), "DISABLED"),
        (expiring.as_str(), "EXPIRED"),
    ] {
        let res = send(&app, bearer("/v1/hello", key)).await;
        assert!(
            header(&res, "www-authenticate").is_some_and(|h| h.starts_with("Bearer")),
            "{code}"
        );
        assert_problem(res, 401, code).await;
    }
}

trait NowPlus {
    fn now_plus(&self, d: TimeDelta) -> chrono::DateTime<Utc>;
}

impl NowPlus for FakeClock {
    fn now_plus(&self, d: TimeDelta) -> chrono::DateTime<Utc> {
        keyvault_core::Clock::now(self) + d
    }
}

#[tokio::test]
async fn allow_lists_use_the_peer_or_a_trusted_forwarding_header() {
    let f = Fixture::new();
    let (key, _) = f
        .key(NewKey::new("office").allow("198.51.100.0/24".parse().unwrap()))
        .await;
    let with_peer = |peer: &str, xff: Option<&str>| {
        let mut b = get_req("/v1/hello").header("authorization", format!("Bearer {key}"));
        if let Some(x) = xff {
            b = b.header("x-forwarded-for", x);
        }
        let mut req = b.body(Body::empty()).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        req
    };
    let plain = f.app();
    assert_eq!(
        send(&plain, with_peer("198.51.100.7:4000", None))
            .await
            .status(),
        200
    );
    assert_problem(
        send(&plain, with_peer("203.0.113.1:4000", None)).await,
        403,
        "FORBIDDEN",
    )
    .await;
    // No caller address at all (served without connect info): refused, not admitted.
    assert_problem(
        send(&plain, bearer("/v1/hello", &key)).await,
        403,
        "FORBIDDEN",
    )
    .await;
    // Forwarding headers are ignored unless the peer is a trusted proxy.
    assert_problem(
        send(&plain, with_peer("10.0.0.1:4000", Some("198.51.100.7"))).await,
        403,
        "FORBIDDEN",
    )
    .await;
    let proxied = app(f
        .layer()
        .with_trusted_proxies(["10.0.0.0/8".parse().unwrap()], X_FORWARDED_FOR));
    assert_eq!(
        send(&proxied, with_peer("10.0.0.1:4000", Some("198.51.100.7")))
            .await
            .status(),
        200
    );
    // A client cannot smuggle an address left of the one the proxy saw.
    assert_problem(
        send(
            &proxied,
            with_peer("10.0.0.1:4000", Some("198.51.100.7, 203.0.113.1")),
        )
        .await,
        403,
        "FORBIDDEN",
    )
    .await;
}

#[tokio::test]
async fn missing_scopes_answer_403() {
    let f = Fixture::new();
    let (plain, _) = f.key(NewKey::new("k")).await;
    let (admin, admin_id) = f.key(NewKey::new("a").scope("admin")).await;
    let app = f.app();
    let post_req = |k: &str| {
        Request::post("/v1/admin")
            .header("authorization", format!("Bearer {k}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_problem(
        send(&app, post_req(&plain)).await,
        403,
        "INSUFFICIENT_PERMISSIONS",
    )
    .await;
    let res = send(&app, post_req(&admin)).await;
    assert_eq!(res.status(), 200);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, admin_id.to_string().as_bytes());
    // Other routes keep the default settings: no scope needed.
    assert_eq!(send(&app, bearer("/v1/hello", &plain)).await.status(), 200);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_ratelimit_headers() {
    let f = Fixture::new();
    let (key, _) = f
        .key(
            NewKey::new("k")
                .ratelimit(RateLimit::new("burst", 2, 10_000).unwrap())
                .ratelimit(RateLimit::new("daily", 1_000, 86_400_000).unwrap()),
        )
        .await;
    let app = f.app();
    let res = send(&app, bearer("/v1/hello", &key)).await;
    assert_eq!(res.status(), 200);
    // The tightest limit: "burst" with 1 token left; full again 5 s later.
    assert_eq!(header(&res, "ratelimit-limit"), Some("2"));
    assert_eq!(header(&res, "ratelimit-remaining"), Some("1"));
    assert_eq!(header(&res, "ratelimit-reset"), Some("5"));
    assert_eq!(send(&app, bearer("/v1/hello", &key)).await.status(), 200);
    f.clock.advance(TimeDelta::milliseconds(1_500));
    let res = send(&app, bearer("/v1/hello", &key)).await;
    // The next token comes 5 s after the first one was taken: 3.5 s → 4 s, rounded up.
    assert_eq!(header(&res, "retry-after"), Some("4"));
    assert_eq!(header(&res, "ratelimit-limit"), Some("2"));
    assert_eq!(header(&res, "ratelimit-remaining"), Some("0"));
    assert_eq!(header(&res, "ratelimit-reset"), Some("9"));
    assert_problem(res, 429, "RATE_LIMITED").await;
    // Under a second to wait still says at least 1.
    f.clock.advance(TimeDelta::milliseconds(3_400));
    let res = send(&app, bearer("/v1/hello", &key)).await;
    assert_eq!(header(&res, "retry-after"), Some("1"));
    assert_problem(res, 429, "RATE_LIMITED").await;
}

#[tokio::test]
async fn retry_after_is_the_longest_wait_of_the_exhausted_limits() {
    let f = Fixture::new();
    let (key, _) = f
        .key(
            NewKey::new("k")
                .ratelimit(RateLimit::new("fast", 1, 2_000).unwrap())
                .ratelimit(RateLimit::new("slow", 1, 30_000).unwrap()),
        )
        .await;
    let app = f.app();
    assert_eq!(send(&app, bearer("/v1/hello", &key)).await.status(), 200);
    let res = send(&app, bearer("/v1/hello", &key)).await;
    assert_eq!(header(&res, "retry-after"), Some("30"));
    // Both have 0 left: the tie goes to the shorter period.
    assert_eq!(header(&res, "ratelimit-reset"), Some("2"));
    assert_problem(res, 429, "RATE_LIMITED").await;
}

#[tokio::test]
async fn exhausted_credits_answer_429_without_retry_after() {
    let f = Fixture::new();
    let (key, _) = f.key(NewKey::new("k").credits(Credits::new(1))).await;
    let app = f.app();
    let res = send(&app, bearer("/v1/hello", &key)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body_json(res).await["credits"], 0);
    let res = send(&app, bearer("/v1/hello", &key)).await;
    assert!(header(&res, "retry-after").is_none());
    assert_problem(res, 429, "USAGE_EXCEEDED").await;
}

#[tokio::test]
async fn a_rejected_request_consumes_nothing() {
    let f = Fixture::new();
    let (key, _) = f
        .key(
            NewKey::new("k")
                .credits(Credits::new(3))
                .ratelimit(RateLimit::new("minute", 5, 60_000).unwrap()),
        )
        .await;
    let app = f.app();
    let units = |n: u64| {
        get_req("/v1/items/1")
            .header("authorization", format!("Bearer {key}"))
            .header("x-units", n.to_string())
            .body(Body::empty())
            .unwrap()
    };
    let admin = || {
        Request::post("/v1/admin")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap()
    };
    for _ in 0..3 {
        // Missing scope: refused before any limit.
        assert_problem(send(&app, admin()).await, 403, "INSUFFICIENT_PERMISSIONS").await;
        // Too expensive: the rate-limit token it took is given back.
        let res = send(&app, units(4)).await;
        assert_eq!(header(&res, "ratelimit-remaining"), Some("5"));
        assert_problem(res, 429, "USAGE_EXCEEDED").await;
    }
    let state = f
        .vault
        .verify(&VerifyRequest::new(&key).cost(0))
        .await
        .unwrap();
    assert_eq!(state.outcome, Outcome::Valid);
    assert_eq!(state.credits_remaining, Some(3));
    assert_eq!(state.ratelimits[0].remaining, 5);
    // Rate-limited requests spend no credits either.
    let (other, _) = f
        .key(
            NewKey::new("k2")
                .credits(Credits::new(10))
                .ratelimit(RateLimit::new("minute", 2, 60_000).unwrap()),
        )
        .await;
    for _ in 0..2 {
        assert_eq!(send(&app, bearer("/v1/hello", &other)).await.status(), 200);
    }
    for _ in 0..3 {
        assert_problem(
            send(&app, bearer("/v1/hello", &other)).await,
            429,
            "RATE_LIMITED",
        )
        .await;
    }
    let state = f
        .vault
        .verify(&VerifyRequest::new(&other).cost(0))
        .await
        .unwrap();
    assert_eq!(state.credits_remaining, Some(8));
    let events = f.events().await;
    assert!(
        events
            .iter()
            .filter(|e| e.status != 200)
            .all(|e| e.cost == 0)
    );
}

#[derive(Debug)]
struct DownLimiter;

#[async_trait]
impl RateLimiter for DownLimiter {
    async fn check(&self, _: &LimitRequest<'_>) -> keyvault_core::Result<LimitDecision> {
        Err(keyvault_core::Error::backend(
            "redis",
            std::io::Error::other("connection refused"),
        ))
    }
    async fn release(&self, _: &LimitRequest<'_>) -> keyvault_core::Result<()> {
        Err(keyvault_core::Error::backend(
            "redis",
            std::io::Error::other("connection refused"),
        ))
    }
}

#[tokio::test]
async fn a_backend_failure_answers_503_and_never_lets_through() {
    let f = Fixture::with_limiter(Some(Arc::new(DownLimiter)));
    let (key, id) = f
        .key(NewKey::new("k").ratelimit(RateLimit::new("m", 10, 60_000).unwrap()))
        .await;
    let app = f.app();
    let res = send(&app, bearer("/v1/hello", &key)).await;
    assert_eq!(header(&res, "retry-after"), Some("1"));
    assert!(header(&res, "www-authenticate").is_none());
    assert_problem(res, 503, "BACKEND_UNAVAILABLE").await;
    let events = f.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].status, 503);
    assert_eq!(events[0].outcome, None);
    // The key was found before the limiter failed, but a failed verification names none.
    assert_ne!(events[0].key_id, Some(id));
}

#[tokio::test]
async fn every_request_becomes_one_usage_event() {
    let f = Fixture::new();
    let (key, id) = f
        .key(NewKey::new("k").owner("team-7").credits(Credits::new(100)))
        .await;
    let app = f.app();
    let items = get_req("/v1/items/42?x=1")
        .header("authorization", format!("Bearer {key}"))
        .header("x-units", "3")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, items).await.status(), 200);
    assert_eq!(send(&app, bearer("/v1/hello", &key)).await.status(), 200);
    assert_eq!(send(&app, bearer("/v1/teapot", &key)).await.status(), 418);
    assert_eq!(
        send(&app, bearer("/v1/hello", "kv_bad")).await.status(),
        401
    );
    // Unprotected routes are not the layer's.
    assert_eq!(
        send(&app, get_req("/healthz").body(Body::empty()).unwrap())
            .await
            .status(),
        200
    );
    let events = f.events().await;
    assert_eq!(events.len(), 4, "{events:#?}");
    let items = &events[0];
    // The template, not the raw path, and the handler's provider over the route's.
    assert_eq!(items.route.as_deref(), Some("/v1/items/{id}"));
    assert_eq!(items.provider.as_deref(), Some("upstream-b"));
    assert_eq!(items.method.as_deref(), Some("GET"));
    assert_eq!(items.cost, 3);
    assert_eq!(items.key_id, Some(id));
    assert_eq!(items.owner_id.as_deref(), Some("team-7"));
    assert_eq!(items.outcome, Some(Outcome::Valid));
    assert_eq!(items.status, 200);
    let hello = &events[1];
    assert_eq!(hello.route.as_deref(), Some("/v1/hello"));
    assert_eq!(hello.provider.as_deref(), Some("demo"));
    assert_eq!(hello.cost, 1);
    assert_eq!(events[2].status, 418);
    assert_eq!(events[2].outcome, Some(Outcome::Valid));
    let bad = &events[3];
    assert_eq!((bad.status, bad.outcome), (401, Some(Outcome::NotFound)));
    assert_eq!(bad.key_id, None);
    assert_eq!(bad.cost, 0);
    let mut ids: Vec<&str> = events.iter().map(|e| e.request_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "request ids are unique");
    let state = f
        .vault
        .verify(&VerifyRequest::new(&key).cost(0))
        .await
        .unwrap();
    assert_eq!(state.credits_remaining, Some(100 - 3 - 1 - 1));
}

#[tokio::test]
async fn the_extractor_names_a_missing_layer_and_has_an_optional_form() {
    let bare: Router =
        Router::new().route("/", get(|k: VerifiedKey| async move { k.id().to_string() }));
    let res = send(&bare, get_req("/").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 500);
    let body = body_json(res).await;
    assert_eq!(body["code"], "KEYVAULT_LAYER_MISSING");
    assert!(
        body["title"]
            .as_str()
            .unwrap()
            .contains("keyvault layer installed")
    );

    let f = Fixture::new();
    let (key, id) = f.key(NewKey::new("k")).await;
    let optional: Router = Router::new()
        .route(
            "/",
            get(|k: Option<VerifiedKey>| async move {
                k.map_or("anonymous".to_owned(), |k| k.id().to_string())
            }),
        )
        .layer(f.layer().with_optional_auth(true));
    let text = |res: Response| async move {
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };
    let res = send(&optional, get_req("/").body(Body::empty()).unwrap()).await;
    assert_eq!(text(res).await, "anonymous");
    let res = send(&optional, bearer("/", &key)).await;
    assert_eq!(text(res).await, id.to_string());
    // A presented key is still verified.
    assert_problem(
        send(&optional, bearer("/", "kv_bad")).await,
        401,
        "NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn a_cost_out_of_range_is_refused_with_400() {
    let f = Fixture::new();
    let (key, _) = f.key(NewKey::new("k")).await;
    let app = f.app();
    let req = get_req("/v1/items/1")
        .header("authorization", format!("Bearer {key}"))
        .header("x-units", u64::MAX.to_string())
        .body(Body::empty())
        .unwrap();
    assert_problem(send(&app, req).await, 400, "INVALID_COST").await;
}

/// CONTRACT §2: responses for keys with rate limits carry `RateLimit-*`, including the
/// rejections decided before the limits are checked; reading them takes nothing.
#[tokio::test]
async fn early_rejections_of_rate_limited_keys_carry_ratelimit_headers() {
    let f = Fixture::new();
    let limited = || NewKey::new("k").ratelimit(RateLimit::new("burst", 4, 8_000).unwrap());
    let (disabled, _) = f.key(limited().disabled()).await;
    let (expiring, _) = f
        .key(limited().expires_at(f.clock.now_plus(TimeDelta::minutes(5))))
        .await;
    let (office, _) = f
        .key(limited().allow("198.51.100.0/24".parse().unwrap()))
        .await;
    let (plain, _) = f.key(limited()).await;
    f.clock.advance(TimeDelta::minutes(6));
    let app = f.app();
    let admin = |k: &str| {
        Request::post("/v1/admin")
            .header("authorization", format!("Bearer {k}"))
            .body(Body::empty())
            .unwrap()
    };
    for (req, status, code) in [
        (bearer("/v1/hello", &disabled), 401, "DISABLED"),
        (bearer("/v1/hello", &expiring), 401, "EXPIRED"),
        (bearer("/v1/hello", &office), 403, "FORBIDDEN"),
        (admin(&plain), 403, "INSUFFICIENT_PERMISSIONS"),
        (admin(&plain), 403, "INSUFFICIENT_PERMISSIONS"),
    ] {
        let res = send(&app, req).await;
        assert_eq!(header(&res, "ratelimit-limit"), Some("4"), "{code}");
        // Nothing was taken, by this rejection or the ones before it.
        assert_eq!(header(&res, "ratelimit-remaining"), Some("4"), "{code}");
        assert_eq!(header(&res, "ratelimit-reset"), Some("0"), "{code}");
        assert_problem(res, status, code).await;
    }
    let res = send(&app, bearer("/v1/hello", &plain)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "ratelimit-remaining"), Some("3"));
    assert_eq!(header(&res, "ratelimit-reset"), Some("2"));
}

/// Admits everything and reports every bucket full.
#[derive(Debug)]
struct FullLimiter;

#[async_trait]
impl RateLimiter for FullLimiter {
    async fn check(&self, req: &LimitRequest<'_>) -> keyvault_core::Result<LimitDecision> {
        Ok(LimitDecision {
            admitted: true,
            states: req
                .limits
                .iter()
                .map(|l| keyvault_core::LimitState {
                    name: l.name().to_owned(),
                    limit: l.limit(),
                    remaining: u64::from(l.limit()),
                    reset_at: Utc::now() - TimeDelta::hours(1),
                    retry_after_ms: None,
                })
                .collect(),
        })
    }
    async fn release(&self, _: &LimitRequest<'_>) -> keyvault_core::Result<()> {
        Ok(())
    }
}

/// CONTRACT §2: `RateLimit-Reset` is at least 1 on a 429, also when credits ran out while
/// the key's rate limits are full.
#[tokio::test]
async fn ratelimit_reset_is_at_least_one_on_usage_exceeded() {
    let f = Fixture::with_limiter(Some(Arc::new(FullLimiter)));
    let (key, _) = f
        .key(
            NewKey::new("k")
                .credits(Credits::new(0))
                .ratelimit(RateLimit::new("m", 10, 60_000).unwrap()),
        )
        .await;
    let app = f.app();
    let res = send(&app, bearer("/v1/hello", &key)).await;
    assert_eq!(header(&res, "ratelimit-limit"), Some("10"));
    assert_eq!(header(&res, "ratelimit-remaining"), Some("10"));
    assert_eq!(header(&res, "ratelimit-reset"), Some("1"));
    assert!(header(&res, "retry-after").is_none());
    assert_problem(res, 429, "USAGE_EXCEEDED").await;
}

#[tokio::test]
async fn the_layer_notes_the_callers_address_as_a_client_signal() {
    let clock = FakeClock::new(Utc::now());
    let signals = keyvault_core::ClientSignals::new();
    let vault = Keyvault::builder()
        .backend(Arc::new(MemoryStore::new()))
        .clock(Arc::new(clock.clone()))
        .client_signals(signals.clone())
        .build()
        .unwrap();
    let made = vault
        .create_key(NewKey::new("seen"), &Actor::library())
        .await
        .unwrap();
    let router = app(KeyvaultLayer::new(vault.clone()));
    let from = |key: &str, peer: &str| {
        let mut req = get_req("/v1/hello")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        req
    };
    let key = made.key.expose().to_owned();
    assert_eq!(
        send(&router, from(&key, "198.51.100.7:4000"))
            .await
            .status(),
        200
    );
    for _ in 0..3 {
        let res = send(
            &router,
            from("kv_nope_00000000000000000000", "[2001:db8::5]:4000"),
        )
        .await;
        assert_eq!(res.status(), 401);
    }
    let (not_found, seen) = signals.take();
    assert_eq!(not_found.len(), 1);
    assert_eq!(
        (not_found[0].ip.as_str(), not_found[0].count),
        ("2001:db8::5", 3)
    );
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].key_id, seen[0].ip.as_str()),
        (made.record.id, "198.51.100.7")
    );
}
