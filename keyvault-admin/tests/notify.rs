//! Notification channels (CONTRACT §7) against the router, with a webhook receiver of the
//! test's own on 127.0.0.1 (`KEYVAULT_ALLOW_PRIVATE_WEBHOOKS=true` where it is reached):
//! signatures, retries with one `webhook-id`, giving up, restarts, events, Slack's text, the
//! address rule, and no secret in any log.

mod common;

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use chrono::{TimeDelta, Utc};
use common::{PgDb, Server, Settings, eventually};
use keyvault_admin::{App, notify::guard::StaticResolver};
use serde_json::{Value, json};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    headers: HeaderMap,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A receiver on 127.0.0.1 that answers with the statuses queued (then 200) and keeps what
/// it got.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
    always: Arc<Mutex<Option<u16>>>,
}

impl Receiver {
    async fn start() -> (Self, SocketAddr) {
        let r = Receiver::default();
        let app = Router::new()
            .route("/hook/{*rest}", post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, addr)
    }
    fn fail_next(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend(statuses);
    }
    fn always(&self, status: Option<u16>) {
        *self.always.lock().unwrap() = status;
    }
    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
    async fn wait_for(&self, n: usize) -> Vec<Got> {
        let got = eventually(Duration::from_secs(10), async || self.got().len() >= n).await;
        assert!(got.is_some(), "{} requests, not {n}", self.got().len());
        self.got()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.got.lock().unwrap().push(Got {
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let status = r
        .answers
        .lock()
        .unwrap()
        .pop_front()
        .or(*r.always.lock().unwrap())
        .unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

/// Settings for a receiver on loopback, with retries 30 ms apart.
fn loopback(mut s: Settings, delays: &str) -> Settings {
    s.allow_private_webhooks = true;
    s.retry_delays = Some(delays.into());
    s
}

async fn channel(s: &Server, admin: &str, body: Value) -> Value {
    let r = s
        .req("POST", "/v1/notifiers")
        .token(admin)
        .json(&body)
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

/// A key expiring in an hour and a rule that fires for it: one alert per evaluation.
async fn expiring_rule(s: &Server, token: &str) -> (String, String) {
    let soon = (Utc::now() + TimeDelta::hours(1)).to_rfc3339();
    let k = s
        .req("POST", "/v1/keys")
        .token(token)
        .json(&json!({"name": "ending", "expires_at": soon}))
        .send()
        .await
        .json();
    let kid = k["id"].as_str().unwrap().to_owned();
    let r = s
        .req("POST", "/v1/alert-rules")
        .token(token)
        .json(&json!({"name": "expiry", "kind": "expiring", "params": {"within": "2h"}, "key_id": kid}))
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    (kid, r.json()["id"].as_str().unwrap().to_owned())
}

fn verify(secret: &str, got: &Got) {
    let id = got.header("webhook-id");
    let ts: i64 = got.header("webhook-timestamp").parse().unwrap();
    assert!(
        (Utc::now().timestamp() - ts).abs() < 60,
        "a fresh timestamp"
    );
    let expected = keyvault_admin::notify::sign(secret, &id, ts, got.body.as_bytes()).unwrap();
    assert_eq!(got.header("webhook-signature"), expected);
    assert_eq!(got.header("content-type"), "application/json");
}

async fn metric(s: &Server, outcome: &str) -> u64 {
    let text = s.req("GET", "/metrics").send().await.text();
    let prefix = format!("keyvault_notifications_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_is_delivered_signed_and_retried_with_the_same_webhook_id() {
    let (rx, addr) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&loopback(Settings::sqlite(dir.path()), "30ms,30ms,30ms")).await;
    let admin = s.token("admin").await;
    let made = channel(
        &s,
        &admin,
        json!({"name": "ops", "kind": "webhook", "url": format!("http://{addr}/hook/a?token=x")}),
    )
    .await;
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(made["url"], format!("http://{addr}"));
    assert_eq!(made["events"], json!([]));
    // The listing never shows the secret or the URL's path.
    let list = s.req("GET", "/v1/notifiers").token(&admin).send().await;
    assert!(!list.text().contains("whsec_") && !list.text().contains("token=x"));
    assert_eq!(list.json()["items"][0]["url"], format!("http://{addr}"));

    // Fired: two failures, then delivered, all with one id and each signed afresh.
    rx.fail_next(&[500, 502]);
    let (_, rule) = expiring_rule(&s, &admin).await;
    let t = s
        .app
        .evaluate_alerts(Utc::now(), Duration::from_secs(30))
        .await
        .unwrap();
    let alert = t.fired[0].id.to_string();
    let got = rx.wait_for(3).await;
    let ids: Vec<String> = got.iter().map(|g| g.header("webhook-id")).collect();
    assert!(ids[0].starts_with("msg_"), "{ids:?}");
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    for g in &got {
        verify(&secret, g);
        assert_eq!(g.body, got[0].body, "the same body on every attempt");
    }
    let body = got[0].json();
    assert_eq!(body["type"], "alert.firing");
    assert_eq!(body["data"]["id"], alert.as_str());
    assert_eq!(body["data"]["state"], "firing");
    assert!(
        body["timestamp"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<Utc>>()
            .is_ok()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.got().len(), 3, "delivered once, then no more");
    assert!(metric(&s, "failed").await >= 2);
    assert!(metric(&s, "delivered").await >= 1);

    // Resolved: a new event, a new id, delivered at once.
    let r = s
        .req("DELETE", &format!("/v1/alert-rules/{rule}"))
        .token(&admin)
        .send()
        .await;
    assert_eq!(r.status, 204);
    s.app
        .evaluate_alerts(Utc::now(), Duration::from_secs(30))
        .await
        .unwrap();
    let got = rx.wait_for(4).await;
    let resolved = got[3].json();
    assert_eq!(resolved["type"], "alert.resolved");
    assert_eq!(resolved["data"]["id"], alert.as_str());
    assert_ne!(got[3].header("webhook-id"), ids[0]);
    verify(&secret, &got[3]);

    // No secret, no URL path, in any log line or in /v1/logs.
    let logs = s
        .req("GET", "/v1/logs?limit=500")
        .token(&admin)
        .send()
        .await
        .text();
    for text in [common::logs(), logs] {
        common::assert_no_secrets(&text, std::slice::from_ref(&secret));
        assert!(!text.contains("token=x"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_never_succeeds_is_given_up_after_its_last_attempt() {
    let (rx, addr) = Receiver::start().await;
    rx.always(Some(503));
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&loopback(Settings::sqlite(dir.path()), "20ms,20ms")).await;
    let admin = s.token("admin").await;
    channel(
        &s,
        &admin,
        json!({"name": "down", "kind": "webhook", "url": format!("http://{addr}/hook/down")}),
    )
    .await;
    expiring_rule(&s, &admin).await;
    s.app
        .evaluate_alerts(Utc::now(), Duration::from_secs(30))
        .await
        .unwrap();
    rx.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.got().len(), 3, "one attempt per wait, and one more");
    assert_eq!(metric(&s, "gave_up").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_delivery_survives_a_restart_with_its_webhook_id() {
    let (rx, addr) = Receiver::start().await;
    rx.always(Some(500));
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(&loopback(Settings::sqlite(dir.path()), "400ms,400ms")).await;
    let admin = first.token("admin").await;
    let made = channel(
        &first,
        &admin,
        json!({"name": "ops", "kind": "webhook", "url": format!("http://{addr}/hook/r")}),
    )
    .await;
    expiring_rule(&first, &admin).await;
    first
        .app
        .evaluate_alerts(Utc::now(), Duration::from_secs(30))
        .await
        .unwrap();
    let failed = rx.wait_for(1).await;
    first.admin.shutdown().await;
    drop(first);

    // Another process on the same database: the delivery is still waiting, and succeeds.
    rx.always(None);
    let second = Server::start(&loopback(Settings::sqlite(dir.path()), "400ms,400ms")).await;
    let got = eventually(Duration::from_secs(10), async || {
        rx.got().iter().any(|g| {
            g.headers.get("webhook-id").is_some()
                && g.header("webhook-id") == failed[0].header("webhook-id")
                && rx.got().len() >= 2
        })
    })
    .await;
    assert!(got.is_some(), "{:?}", rx.got());
    let all = rx.got();
    assert!(
        all.iter()
            .all(|g| g.header("webhook-id") == failed[0].header("webhook-id"))
    );
    verify(made["secret"].as_str().unwrap(), all.last().unwrap());
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_get_the_events_they_chose_and_slack_gets_text_in_its_language() {
    let (rx, addr) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = loopback(Settings::sqlite(dir.path()), "30ms");
    settings.lang = Some("zh-CN".into());
    let s = Server::start(&settings).await;
    let admin = s.token("admin").await;
    let slack = channel(
        &s,
        &admin,
        json!({"name": "chat", "kind": "slack", "url": format!("http://{addr}/hook/services/T0/B0/sekrit"), "events": ["alert.resolved", "key.rotated"]}),
    )
    .await;
    assert!(
        slack.get("secret").is_none(),
        "Slack channels are not signed"
    );
    assert_eq!(slack["events"], json!(["alert.resolved", "key.rotated"]));

    // Firing is not among its events; resolving is.
    let (kid, rule) = expiring_rule(&s, &admin).await;
    s.app
        .evaluate_alerts(Utc::now(), Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.got().is_empty());
    s.req("DELETE", &format!("/v1/alert-rules/{rule}"))
        .token(&admin)
        .send()
        .await;
    s.app
        .evaluate_alerts(Utc::now(), Duration::from_secs(30))
        .await
        .unwrap();
    let got = rx.wait_for(1).await;
    let text = got[0].json()["text"].as_str().unwrap().to_owned();
    assert!(text.starts_with("告警已恢复："), "{text}");
    assert!(got[0].headers.get("webhook-signature").is_none());

    // A rotation: the two ids, never a key.
    let r = s
        .req("POST", &format!("/v1/keys/{kid}/rotate"))
        .token(&admin)
        .json(&json!({"grace_seconds": 60}))
        .send()
        .await;
    assert_eq!(r.status, 201);
    let new = r.json();
    let got = rx.wait_for(2).await;
    let text = got[1].json()["text"].as_str().unwrap().to_owned();
    assert!(
        text.contains(&kid) && text.contains(new["id"].as_str().unwrap()),
        "{text}"
    );
    assert!(!got[1].body.contains(new["key"].as_str().unwrap()));

    // The test message: once, its outcome answered, never retried.
    let id = slack["id"].as_str().unwrap();
    rx.fail_next(&[500]);
    let r = s
        .req("POST", &format!("/v1/notifiers/{id}/test"))
        .token(&admin)
        .send()
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"delivered": false, "status": 500, "error": "answered 500 Internal Server Error"})
    );
    let r = s
        .req("POST", &format!("/v1/notifiers/{id}/test"))
        .token(&admin)
        .send()
        .await;
    assert_eq!(r.json(), json!({"delivered": true, "status": 200}));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.got().len(), 4);
    assert!(!common::logs().contains("sekrit"));

    // Admins only; deleting twice is 404.
    let op = s.token("operator").await;
    for (method, path) in [
        ("GET", "/v1/notifiers".to_owned()),
        ("POST", format!("/v1/notifiers/{id}/test")),
        ("DELETE", format!("/v1/notifiers/{id}")),
    ] {
        let r = s.req(method, &path).token(&op).send().await;
        r.problem(403, "forbidden");
    }
    let del = |s: &Server| {
        s.req("DELETE", &format!("/v1/notifiers/{id}"))
            .token(&admin)
            .send()
    };
    assert_eq!(del(&s).await.status, 204);
    assert_eq!(del(&s).await.status, 404);
}

#[tokio::test]
async fn urls_are_refused_with_the_reason_and_names_resolving_inside_are_not_reached() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::open(Settings::sqlite(dir.path()).config())
        .await
        .unwrap()
        .with_resolver(Arc::new(StaticResolver(vec![
            ("inside.test".into(), "10.0.0.7".parse().unwrap()),
            ("link.test".into(), "fe80::1".parse().unwrap()),
            ("ula.test".into(), "fd00::7".parse().unwrap()),
            ("loop.test".into(), "127.0.0.1".parse().unwrap()),
        ])))
        .unwrap();
    let s = Server::of(app);
    let admin = s.token("admin").await;
    for (body, field, why) in [
        (
            json!({"name": "x", "kind": "webhook", "url": "http://127.0.0.1:9/h"}),
            "url",
            "loopback",
        ),
        (
            json!({"name": "x", "kind": "webhook", "url": "http://localhost/h"}),
            "url",
            "loopback",
        ),
        (
            json!({"name": "x", "kind": "webhook", "url": "http://[::1]/h"}),
            "url",
            "loopback",
        ),
        (
            json!({"name": "x", "kind": "webhook", "url": "http://192.168.1.4/h"}),
            "url",
            "private",
        ),
        (
            json!({"name": "x", "kind": "webhook", "url": "http://169.254.169.254/latest"}),
            "url",
            "link-local",
        ),
        (
            json!({"name": "x", "kind": "webhook", "url": "http://[fd12::1]/"}),
            "url",
            "unique-local",
        ),
        (
            json!({"name": "x", "kind": "webhook", "url": "ftp://example.com/"}),
            "url",
            "http or https",
        ),
        (
            json!({"name": "x", "kind": "webhook", "url": "nope"}),
            "url",
            "not a URL",
        ),
        (
            json!({"name": "x", "kind": "pager", "url": "https://example.com/"}),
            "kind",
            "webhook, slack",
        ),
        (
            json!({"name": "x", "kind": "webhook", "url": "https://example.com/", "events": ["alert.firing", "alert.loud"]}),
            "events[1]",
            "alert.resolved",
        ),
        (
            json!({"name": " ", "kind": "webhook", "url": "https://example.com/"}),
            "name",
            "blank",
        ),
    ] {
        let r = s
            .req("POST", "/v1/notifiers")
            .token(&admin)
            .json(&body)
            .send()
            .await;
        let p = r.problem(422, "invalid_value");
        assert_eq!(p["field"], field, "{body}");
        assert!(p["detail"].as_str().unwrap().contains(why), "{body}: {p}");
    }
    let r = s
        .req("POST", "/v1/notifiers")
        .token(&admin)
        .json(&json!({"name": "x", "kind": "webhook", "url": "https://example.com/", "extra": 1}))
        .send()
        .await;
    assert_eq!(r.status, 400);
    assert!(
        s.req("GET", "/v1/notifiers")
            .token(&admin)
            .send()
            .await
            .json()["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A name is resolved when delivering; one that resolves inside is not reached.
    for (host, why) in [
        ("inside.test", "private"),
        ("link.test", "link-local"),
        ("ula.test", "unique-local"),
        ("loop.test", "loopback"),
    ] {
        let made = channel(
            &s,
            &admin,
            json!({"name": host, "kind": "webhook", "url": format!("http://{host}:9/hook")}),
        )
        .await;
        let id = made["id"].as_str().unwrap();
        let r = s
            .req("POST", &format!("/v1/notifiers/{id}/test"))
            .token(&admin)
            .send()
            .await;
        let v = r.json();
        assert_eq!(v["delivered"], false, "{host}");
        assert!(v["error"].as_str().unwrap().contains(why), "{host}: {v}");
        assert!(v.get("status").is_none());
    }
    assert!(metric(&s, "refused").await >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_make_one_alert_and_one_delivery() {
    let (rx, addr) = Receiver::start().await;
    let db = PgDb::create();
    let mut settings = loopback(Settings::postgres(&db), "50ms,50ms");
    settings.alert_interval = Some("100ms".into());
    let a = Server::start(&settings).await;
    let b = Server::start(&settings).await;
    let admin = a.token("admin").await;
    channel(
        &a,
        &admin,
        json!({"name": "ops", "kind": "webhook", "url": format!("http://{addr}/hook/pg")}),
    )
    .await;
    expiring_rule(&b, &admin).await;
    // Both instances evaluate every 100 ms; only the lease holder does.
    let got = rx.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rx.got().len(), 1, "{:?}", rx.got());
    assert_eq!(got[0].json()["type"], "alert.firing");
    let alerts = b.req("GET", "/v1/alerts").token(&admin).send().await.json();
    assert_eq!(alerts["items"].as_array().unwrap().len(), 1);
    a.admin.shutdown().await;
    b.admin.shutdown().await;
}
