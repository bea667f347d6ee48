//! Alert rules, their evaluation and the alerts' life (CONTRACT §7) against the router on
//! SQLite, and the live statistics. Evaluations are run at chosen times, so no test waits
//! for an interval.

mod common;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::{Server, eventually};
use keyvault_core::{Outcome, UsageEvent};
use serde_json::{Value, json};

const INTERVAL: Duration = Duration::from_secs(30);

async fn key(s: &Server, token: &str, body: Value) -> (String, String) {
    let r = s
        .req("POST", "/v1/keys")
        .token(token)
        .json(&body)
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

async fn rule(s: &Server, token: &str, body: Value) -> String {
    let r = s
        .req("POST", "/v1/alert-rules")
        .token(token)
        .json(&body)
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

async fn alerts(s: &Server, token: &str, query: &str) -> Vec<Value> {
    let r = s
        .req("GET", &format!("/v1/alerts?{query}"))
        .token(token)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["items"].as_array().unwrap().clone()
}

/// Records `events` through the server's own usage recorder (the middleware's path) and
/// waits until they are stored.
async fn record(s: &Server, token: &str, events: Vec<UsageEvent>) {
    let from = events.iter().map(|e| e.ts).min().unwrap() - TimeDelta::seconds(1);
    let to = events.iter().map(|e| e.ts).max().unwrap() + TimeDelta::seconds(1);
    let n = events.len() as u64;
    let rec = s.admin.usage_recorder();
    for e in events {
        assert!(rec.record(e));
    }
    let stored = eventually(Duration::from_secs(10), async || {
        let q = format!(
            "/v1/stats/overview?from={}&to={}",
            from.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
        let r = s.req("GET", &q).token(token).send().await.json();
        r["calls"].as_u64().unwrap_or(0) >= n
    })
    .await;
    assert!(stored.is_some(), "events not stored");
}

fn event(
    key_id: &str,
    at: DateTime<Utc>,
    status: u16,
    ms: u64,
    outcome: Option<Outcome>,
) -> UsageEvent {
    UsageEvent {
        request_id: uuid::Uuid::now_v7().to_string().into(),
        key_id: Some(key_id.parse().unwrap()),
        owner_id: None,
        ts: at,
        provider: Some("demo".into()),
        route: Some("/v1/chat".into()),
        method: Some("POST".into()),
        status,
        latency_us: ms * 1_000,
        outcome,
        cost: 1,
    }
}

/// One evaluation at `at`; the ids of the alerts that fired and resolved.
async fn evaluate(s: &Server, at: DateTime<Utc>) -> (Vec<String>, Vec<String>) {
    let t = s.app.evaluate_alerts(at, INTERVAL).await.unwrap();
    (
        t.fired.iter().map(|a| a.id.to_string()).collect(),
        t.resolved.iter().map(|a| a.id.to_string()).collect(),
    )
}

#[tokio::test]
async fn rules_are_managed_by_operators_with_every_param_checked() {
    let s = Server::sqlite().await;
    let op = s.token("operator").await;
    let viewer = s.token("viewer").await;
    let (kid, _) = key(&s, &op, json!({"name": "watched"})).await;
    let r = s
        .req("POST", "/v1/alert-rules")
        .token(&op)
        .json(
            &json!({"name": "errors", "kind": "error_rate", "key_id": kid,
            "params": {"above": 0.2, "window": "5m", "min_calls": 10}}),
        )
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["kind"], "error_rate");
    assert_eq!(created["key_id"], kid.as_str());
    assert_eq!(created["enabled"], true);
    assert_eq!(created["params"]["window"], "5m");

    for (body, status, field) in [
        (json!({"name": "x", "kind": "nope"}), 422, "kind"),
        (
            json!({"name": "x", "kind": "error_rate", "params": {"above": 2, "window": "5m"}}),
            422,
            "params.above",
        ),
        (
            json!({"name": "x", "kind": "error_rate", "params": {"above": 0.5, "window": "2d"}}),
            422,
            "params.window",
        ),
        (
            json!({"name": "x", "kind": "latency_p95", "params": {"above_ms": 10, "window": "1m", "typo": 1}}),
            422,
            "params.typo",
        ),
        (
            json!({"name": "x", "kind": "rejections", "params": {"codes": ["BOGUS"], "above": 1, "window": "1m"}}),
            422,
            "params.codes[0]",
        ),
        (
            json!({"name": "x", "kind": "traffic_spike", "params": {"factor": 0.5, "window": "1m"}}),
            422,
            "params.factor",
        ),
        (
            json!({"name": "x", "kind": "credits_low", "params": {"below_percent": 150}}),
            422,
            "params.below_percent",
        ),
        (
            json!({"name": "x", "kind": "new_network", "params": {"v6_prefix": 200}}),
            422,
            "params.v6_prefix",
        ),
        (
            json!({"name": "x", "kind": "expiring", "params": {"within": "7d"}, "key_id": uuid::Uuid::now_v7()}),
            422,
            "key_id",
        ),
        (
            json!({"name": "  ", "kind": "expiring", "params": {"within": "7d"}}),
            422,
            "name",
        ),
        (
            json!({"kind": "expiring", "params": {"within": "7d"}}),
            400,
            "name",
        ),
        (
            json!({"name": "x", "kind": "expiring", "params": {"within": "7d"}, "extra": true}),
            400,
            "extra",
        ),
    ] {
        let r = s
            .req("POST", "/v1/alert-rules")
            .token(&op)
            .json(&body)
            .send()
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert_eq!(r.json()["field"], field, "{body}: {}", r.text());
    }

    s.req("POST", "/v1/alert-rules")
        .token(&viewer)
        .json(&json!({"name": "x", "kind": "expiring", "params": {"within": "7d"}}))
        .send()
        .await
        .problem(403, "forbidden");
    s.req("GET", "/v1/alert-rules")
        .token(&viewer)
        .send()
        .await
        .problem(403, "forbidden");

    let listed = s
        .req("GET", "/v1/alert-rules")
        .token(&op)
        .send()
        .await
        .json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let patched = s
        .req("PATCH", &format!("/v1/alert-rules/{id}"))
        .token(&op)
        .json(&json!({"enabled": false, "key_id": null, "params": {"above": 0.5, "window": "1m"}}))
        .send()
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    let p = patched.json();
    assert_eq!(
        (p["enabled"].clone(), p["key_id"].clone()),
        (json!(false), Value::Null)
    );
    assert_eq!(p["params"]["above"], 0.5);
    let bad = s
        .req("PATCH", &format!("/v1/alert-rules/{id}"))
        .token(&op)
        .json(&json!({"params": {"above": -1, "window": "1m"}}))
        .send()
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.json()["field"], "params.above");
    let got = s
        .req("GET", &format!("/v1/alert-rules/{id}"))
        .token(&op)
        .send()
        .await
        .json();
    assert_eq!(
        got["params"]["above"], 0.5,
        "a refused change changes nothing"
    );

    let gone = s
        .req("DELETE", &format!("/v1/alert-rules/{id}"))
        .token(&op)
        .send()
        .await;
    assert_eq!(gone.status, 204);
    s.req("GET", &format!("/v1/alert-rules/{id}"))
        .token(&op)
        .send()
        .await
        .problem(404, "not_found");
    s.req("DELETE", "/v1/alert-rules/not-an-id")
        .token(&op)
        .send()
        .await
        .problem(404, "not_found");
    let audit = s
        .req("GET", "/v1/audit?action=alert_rule.create")
        .token(&op)
        .send()
        .await
        .json();
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["outcome"] == "success")
            && audit["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["outcome"] == "refused"),
        "creations and refusals are audited: {audit}"
    );
}

#[tokio::test]
async fn credits_and_expiry_fire_once_and_resolve_once() {
    let s = Server::sqlite().await;
    let op = s.token("operator").await;
    let (low, low_key) = key(
        &s,
        &op,
        json!({"name": "low", "credits": {"remaining": 10}}),
    )
    .await;
    let (_full, _) = key(
        &s,
        &op,
        json!({"name": "full", "credits": {"remaining": 1000}}),
    )
    .await;
    let soon = (Utc::now() + TimeDelta::hours(1)).to_rfc3339();
    let (ending, _) = key(&s, &op, json!({"name": "ending", "expires_at": soon})).await;
    let credits_rule = rule(
        &s,
        &op,
        json!({"name": "credits", "kind": "credits_low", "params": {"below": 5}}),
    )
    .await;
    let expiry_rule = rule(
        &s,
        &op,
        json!({"name": "expiry", "kind": "expiring", "params": {"within": "2h"}}),
    )
    .await;

    // Spend 6 of 10 credits: 4 left, below 5.
    let verifier = s.token("verifier").await;
    let v = s
        .req("POST", "/v1/keys/verify")
        .token(&verifier)
        .json(&json!({"key": low_key, "cost": 6}))
        .send()
        .await;
    assert_eq!(v.json()["valid"], true, "{}", v.text());

    let t0 = Utc::now();
    let (fired, resolved) = evaluate(&s, t0).await;
    assert_eq!(fired.len(), 2, "one alert per rule and key");
    assert!(resolved.is_empty());
    let firing = alerts(&s, &op, "state=firing").await;
    assert_eq!(firing.len(), 2);
    let credit = firing
        .iter()
        .find(|a| a["rule_id"] == credits_rule.as_str())
        .unwrap();
    assert_eq!(credit["key_id"], low.as_str());
    assert_eq!(credit["kind"], "credits_low");
    assert_eq!(
        (credit["value"].as_f64(), credit["threshold"].as_f64()),
        (Some(4.0), Some(5.0))
    );
    assert!(
        credit["summary"].as_str().unwrap().contains("low"),
        "{credit}"
    );
    let expiry = firing
        .iter()
        .find(|a| a["rule_id"] == expiry_rule.as_str())
        .unwrap();
    assert_eq!(expiry["key_id"], ending.as_str());
    assert!(expiry["value"].as_f64().unwrap() <= 3600.0);
    assert_eq!(expiry["threshold"].as_f64(), Some(7200.0));

    // Still holding: nothing new.
    let (fired, resolved) = evaluate(&s, t0 + TimeDelta::seconds(30)).await;
    assert!(fired.is_empty() && resolved.is_empty());
    assert_eq!(alerts(&s, &op, "").await.len(), 2);

    // The conditions end: the credits are topped up, the expiry is lifted.
    let r = s
        .req("PATCH", &format!("/v1/keys/{low}"))
        .token(&op)
        .json(&json!({"credits": {"remaining": 500}}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s
        .req("PATCH", &format!("/v1/keys/{ending}"))
        .token(&op)
        .json(&json!({"expires_at": null}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // False for less than a whole interval: still open.
    let (_, resolved) = evaluate(&s, t0 + TimeDelta::seconds(45)).await;
    assert!(resolved.is_empty(), "resolved before a whole interval");
    let (fired, resolved) = evaluate(&s, t0 + TimeDelta::seconds(61)).await;
    assert!(fired.is_empty());
    assert_eq!(resolved.len(), 2);
    assert!(alerts(&s, &op, "state=firing").await.is_empty());
    let done = alerts(&s, &op, "state=resolved").await;
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|a| a["resolved_at"].is_string()));
    let (fired, resolved) = evaluate(&s, t0 + TimeDelta::seconds(120)).await;
    assert!(fired.is_empty() && resolved.is_empty(), "resolved once");
}

#[tokio::test]
async fn an_expiring_alerts_seconds_left_count_down_between_evaluations_and_follow_a_moved_expiry()
{
    let s = Server::sqlite().await;
    let op = s.token("operator").await;
    let now = Utc::now();
    let expires = now + TimeDelta::hours(1);
    let (ending, _) = key(
        &s,
        &op,
        json!({"name": "ending", "expires_at": expires.to_rfc3339()}),
    )
    .await;
    rule(
        &s,
        &op,
        json!({"name": "expiry", "kind": "expiring", "params": {"within": "2h"}}),
    )
    .await;
    let left = |a: &Value| a["value"].as_f64().unwrap();
    let near = |a: f64, b: f64| (a - b).abs() <= 5.0;

    // Evaluated two minutes ago, read now: two minutes less left than it found then.
    let t0 = now - TimeDelta::minutes(2);
    let (fired, _) = evaluate(&s, t0).await;
    assert_eq!(fired.len(), 1);
    let a = &alerts(&s, &op, "state=firing").await[0];
    assert!(near(left(a), 3_600.0), "{a}");
    // A later evaluation with the expiry unchanged: the same count, still going down.
    let (fired, resolved) = evaluate(&s, t0 + TimeDelta::seconds(30)).await;
    assert!(fired.is_empty() && resolved.is_empty());
    let a = &alerts(&s, &op, "state=firing").await[0];
    assert!(near(left(a), 3_600.0), "{a}");

    // The expiry moves half an hour closer: the next evaluation (sooner than the periodic
    // refresh of a holding alert) writes the new figure.
    let r = s
        .req("PATCH", &format!("/v1/keys/{ending}"))
        .token(&op)
        .json(&json!({"expires_at": (expires - TimeDelta::minutes(30)).to_rfc3339()}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (fired, _) = evaluate(&s, Utc::now()).await;
    assert!(fired.is_empty(), "the same alert, not a new one");
    let a = &alerts(&s, &op, "state=firing").await[0];
    assert!(near(left(a), 1_800.0), "{a}");
}

#[tokio::test]
async fn error_rate_latency_and_rejections_fire_per_key_and_resolve_when_the_window_passes() {
    let s = Server::sqlite().await;
    let op = s.token("operator").await;
    let (bad, _) = key(&s, &op, json!({"name": "bad"})).await;
    let (good, _) = key(&s, &op, json!({"name": "good"})).await;
    let errors = rule(
        &s,
        &op,
        json!({"name": "errors", "kind": "error_rate",
        "params": {"above": 0.3, "window": "5m", "min_calls": 10}}),
    )
    .await;
    let slow = rule(
        &s,
        &op,
        json!({"name": "slow", "kind": "latency_p95",
        "params": {"above_ms": 200, "window": "5m", "min_calls": 10}}),
    )
    .await;
    let limited = rule(
        &s,
        &op,
        json!({"name": "limited", "kind": "rejections",
        "params": {"codes": ["RATE_LIMITED"], "above": 3, "window": "5m"}}),
    )
    .await;
    let now = Utc::now();
    let mut events = Vec::new();
    for i in 0..20 {
        let at = now - TimeDelta::seconds(60) + TimeDelta::milliseconds(i * 100);
        // `bad`: half its calls fail, slowly; five of them rate limited.
        let (status, outcome) = match i {
            0..5 => (429, Some(Outcome::RateLimited)),
            5..10 => (500, Some(Outcome::Valid)),
            _ => (200, Some(Outcome::Valid)),
        };
        events.push(event(&bad, at, status, 400, outcome));
        events.push(event(&good, at, 200, 20, Some(Outcome::Valid)));
    }
    record(&s, &op, events).await;
    let (fired, _) = evaluate(&s, now).await;
    assert_eq!(fired.len(), 3, "one per rule, for the bad key only");
    let firing = alerts(&s, &op, &format!("key_id={bad}")).await;
    assert_eq!(firing.len(), 3);
    assert!(alerts(&s, &op, &format!("key_id={good}")).await.is_empty());
    let by = |rule: &str| {
        firing
            .iter()
            .find(|a| a["rule_id"] == rule)
            .unwrap()
            .clone()
    };
    assert_eq!(by(&errors)["value"].as_f64(), Some(0.5));
    assert!(by(&slow)["value"].as_f64().unwrap() > 200.0);
    assert_eq!(by(&limited)["value"].as_f64(), Some(5.0));
    // Paging: newest first, then the rest.
    let page = s
        .req("GET", "/v1/alerts?limit=2")
        .token(&op)
        .send()
        .await
        .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = s
        .req("GET", &format!("/v1/alerts?limit=2&cursor={cursor}"))
        .token(&op)
        .send()
        .await
        .json();
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());
    s.req("GET", "/v1/alerts?state=loud")
        .token(&op)
        .send()
        .await
        .problem(400, "invalid_request");

    // Five minutes on, the window holds none of those calls.
    let (fired, resolved) = evaluate(&s, now + TimeDelta::minutes(5)).await;
    assert!(fired.is_empty());
    assert_eq!(resolved.len(), 3);
}

#[tokio::test]
async fn a_traffic_spike_is_measured_against_the_keys_own_baseline() {
    let s = Server::sqlite().await;
    let op = s.token("operator").await;
    let (busy, _) = key(&s, &op, json!({"name": "busy"})).await;
    let (steady, _) = key(&s, &op, json!({"name": "steady"})).await;
    let r = s
        .req("POST", "/v1/alert-rules")
        .token(&op)
        .json(&json!({"name": "spike", "kind": "traffic_spike",
            "params": {"factor": 3, "window": "1m", "min_calls": 10}}))
        .send()
        .await
        .json();
    let created: DateTime<Utc> = r["created_at"].as_str().unwrap().parse().unwrap();
    let window = |n: i32| created + TimeDelta::minutes(1) * n;
    let mut events = Vec::new();
    // Three windows of 10 calls each for both keys, then 60 for `busy` and 12 for `steady`.
    for n in 0..4 {
        let busy_calls = if n == 3 { 60 } else { 10 };
        let steady_calls = if n == 3 { 12 } else { 10 };
        for i in 0..busy_calls {
            events.push(event(
                &busy,
                window(n) + TimeDelta::milliseconds(500 + i * 10),
                200,
                5,
                None,
            ));
        }
        for i in 0..steady_calls {
            events.push(event(
                &steady,
                window(n) + TimeDelta::milliseconds(500 + i * 10),
                200,
                5,
                None,
            ));
        }
    }
    record(&s, &op, events).await;
    // Inside window 3: only windows 0–2 are complete, and 2 is the last: no baseline yet.
    let (fired, _) = evaluate(&s, window(3) + TimeDelta::seconds(5)).await;
    assert!(fired.is_empty(), "fewer than three earlier windows");
    let (fired, _) = evaluate(&s, window(4) + TimeDelta::seconds(5)).await;
    assert_eq!(fired.len(), 1, "busy only");
    let a = &alerts(&s, &op, "state=firing").await[0];
    assert_eq!(a["key_id"], busy.as_str());
    assert_eq!(a["value"].as_f64(), Some(60.0));
    assert!(
        (a["threshold"].as_f64().unwrap() - 30.0).abs() < 1e-6,
        "{a}"
    );
    // The next window is quiet: resolved.
    let (fired, resolved) = evaluate(&s, window(5) + TimeDelta::seconds(40)).await;
    assert!(fired.is_empty());
    assert_eq!(resolved.len(), 1);
}

#[tokio::test]
async fn operators_acknowledge_viewers_read_and_a_deleted_rule_resolves_its_alerts() {
    let s = Server::sqlite().await;
    let op = s.token("operator").await;
    let viewer = s.token("viewer").await;
    key(
        &s,
        &op,
        json!({"name": "ending", "expires_at": (Utc::now() + TimeDelta::hours(1)).to_rfc3339()}),
    )
    .await;
    let id = rule(
        &s,
        &op,
        json!({"name": "expiry", "kind": "expiring", "params": {"within": "1d"}}),
    )
    .await;
    let now = Utc::now();
    evaluate(&s, now).await;
    let a = alerts(&s, &viewer, "").await;
    assert_eq!(a.len(), 1, "viewers read alerts");
    let alert = a[0]["id"].as_str().unwrap().to_owned();
    s.req("POST", &format!("/v1/alerts/{alert}/ack"))
        .token(&viewer)
        .send()
        .await
        .problem(403, "forbidden");
    let acked = s
        .req("POST", &format!("/v1/alerts/{alert}/ack"))
        .token(&op)
        .send()
        .await;
    assert_eq!(acked.status, 200, "{}", acked.text());
    assert_eq!(acked.json()["state"], "acknowledged");
    assert!(acked.json()["acknowledged_at"].is_string());
    // Still holding, it stays acknowledged: no second alert.
    let (fired, _) = evaluate(&s, now + TimeDelta::seconds(30)).await;
    assert!(fired.is_empty());
    assert_eq!(alerts(&s, &op, "state=acknowledged").await.len(), 1);
    s.req("POST", &format!("/v1/alerts/{}/ack", uuid::Uuid::now_v7()))
        .token(&op)
        .send()
        .await
        .problem(404, "not_found");
    let r = s
        .req("DELETE", &format!("/v1/alert-rules/{id}"))
        .token(&op)
        .send()
        .await;
    assert_eq!(r.status, 204);
    let kept = alerts(&s, &op, &format!("rule_id={id}")).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["state"], "resolved");
}

/// Three calls of `key` for the live statistics: a success and a server error a second
/// before `at`, and a verification refused as `DISABLED` at `at`.
fn live_calls(key: &str, at: DateTime<Utc>) -> Vec<UsageEvent> {
    let before = at - TimeDelta::seconds(1);
    vec![
        event(key, before, 200, 5, Some(Outcome::Valid)),
        event(key, before, 500, 5, Some(Outcome::Valid)),
        event(key, at, 401, 1, Some(Outcome::Disabled)),
    ]
}

/// A `/v1/keys/verify` of a key that does not exist: refused.
async fn refuse_unknown_key(s: &Server, token: &str) {
    let r = s
        .req("POST", "/v1/keys/verify")
        .token(token)
        .json(&json!({"key": "kv_not_a_real_key"}))
        .send()
        .await;
    assert_eq!(r.json()["valid"], false);
}

/// `/v1/stats/live` read until `done` holds of its body (asserted, within `within`): the
/// last body read.
async fn live_until(
    s: &Server,
    token: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let counted = eventually(within, async || {
        let live = s.req("GET", "/v1/stats/live").token(token).send().await;
        assert_eq!(live.status, 200, "{}", live.text());
        let body = live.json();
        let ok = done(&body);
        *last.lock().unwrap() = body;
        ok
    })
    .await;
    let v = last.into_inner().unwrap();
    assert!(counted.is_some(), "{v}");
    v
}

#[tokio::test]
async fn live_statistics_count_the_last_minute_and_stream_them() {
    let s = Server::sqlite().await;
    let op = s.token("operator").await;
    let viewer = s.token("viewer").await;
    let (k, _) = key(&s, &op, json!({"name": "live"})).await;
    record(&s, &op, live_calls(&k, Utc::now() - TimeDelta::seconds(2))).await;
    // A refusal by `/v1/keys/verify` counts as rejected too.
    refuse_unknown_key(&s, &op).await;
    // The window is of whole seconds: the refusal counts once its second has ended.
    let v = live_until(&s, &viewer, Duration::from_secs(3), |b| b["rejected"] == 2).await;
    assert_eq!(v["window_s"], 60);
    let per_s: Vec<u64> = v["calls_per_s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(per_s.len(), 60);
    assert_eq!(per_s.iter().sum::<u64>(), v["calls"].as_u64().unwrap());
    assert_eq!(v["calls"], 3);
    assert_eq!(v["errors"], 2);
    let ts: DateTime<Utc> = v["ts"].as_str().unwrap().parse().unwrap();
    assert_eq!(ts.timestamp_subsec_nanos(), 0, "a whole second");

    // The stream: an event at once, then at least every 2 seconds, each the live body.
    let (status, headers, body) = s.req("GET", "/v1/stats/stream").token(&viewer).open().await;
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")),
        "{headers:?}"
    );
    let mut body = body.into_data_stream();
    let mut text = String::new();
    let started = std::time::Instant::now();
    while text.matches("data:").count() < 2 {
        use futures::StreamExt;
        let chunk = tokio::time::timeout(Duration::from_secs(3), body.next())
            .await
            .expect("an event within 2 seconds")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let first = text.lines().find_map(|l| l.strip_prefix("data:")).unwrap();
    let event: Value = serde_json::from_str(first.trim()).unwrap();
    assert_eq!(event["window_s"], 60);
    assert_eq!(event["calls_per_s"].as_array().unwrap().len(), 60);
    s.req("GET", "/v1/stats/live")
        .token(&s.token("verifier").await)
        .send()
        .await
        .problem(403, "forbidden");
}

#[tokio::test]
async fn with_redis_the_live_statistics_count_every_instances_calls_and_refusals() {
    let db = common::PgDb::create();
    let mut settings = common::Settings::postgres(&db);
    // Its own live counters: other tests' calls share this Redis.
    settings.redis_namespace = Some(format!("kv-live-{}", uuid::Uuid::now_v7().simple()));
    let a = Server::start(&settings).await;
    let b = Server::start(&settings).await;
    let op = a.token("operator").await;
    let (k, _) = key(&a, &op, json!({"name": "live"})).await;
    // Calls recorded through one instance, a refusal answered by the other: each instance's
    // view holds both, which neither database events nor one instance's count could give.
    record(&a, &op, live_calls(&k, Utc::now() - TimeDelta::seconds(1))).await;
    refuse_unknown_key(&b, &op).await;
    for s in [&a, &b] {
        let v = live_until(s, &op, Duration::from_secs(4), |b| {
            b["calls"] == 3 && b["rejected"] == 2
        })
        .await;
        assert_eq!(v["errors"], 2, "{v}");
        let per_s = v["calls_per_s"].as_array().unwrap();
        assert_eq!(per_s.len(), 60);
        assert_eq!(per_s.iter().filter_map(Value::as_u64).sum::<u64>(), 3);
    }
}

async fn verify_from(s: &Server, verifier: &str, key: &str, ip: &str) -> Value {
    let r = s
        .req("POST", "/v1/keys/verify")
        .token(verifier)
        .json(&json!({"key": key, "ip": ip}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test]
async fn unknown_keys_from_one_address_fire_an_alert_on_that_address() {
    let s = Server::sqlite().await;
    let op = s.token("operator").await;
    let verifier = s.token("verifier").await;
    let rule_id = rule(
        &s,
        &op,
        json!({"name": "guessing", "kind": "invalid_keys", "params": {"above": 3, "window": "5m"}}),
    )
    .await;
    for _ in 0..5 {
        let v = verify_from(&s, &verifier, "kv_guess_0000000000000000", "198.51.100.7").await;
        assert_eq!(v["code"], "NOT_FOUND");
    }
    for _ in 0..2 {
        verify_from(&s, &verifier, "not even a key", "198.51.100.8").await;
    }
    s.app.flush_signals().await.unwrap();
    let now = Utc::now();
    let (fired, _) = evaluate(&s, now).await;
    assert_eq!(fired.len(), 1);
    let a = &alerts(&s, &op, &format!("rule_id={rule_id}")).await[0];
    assert_eq!(a["ip"], "198.51.100.7");
    assert!(a["key_id"].is_null());
    assert_eq!(
        (a["value"].as_f64(), a["threshold"].as_f64()),
        (Some(5.0), Some(3.0))
    );
    // Once and only once while it holds; resolved when the window has passed.
    let (again, resolved) = evaluate(&s, now + TimeDelta::seconds(30)).await;
    assert!(again.is_empty() && resolved.is_empty());
    let (_, resolved) = evaluate(&s, now + TimeDelta::minutes(10)).await;
    assert_eq!(resolved, [a["id"].as_str().unwrap().to_owned()]);
}

#[tokio::test]
async fn a_key_used_from_a_new_network_fires_once_until_acknowledged() {
    let s = Server::sqlite().await;
    let op = s.token("operator").await;
    let verifier = s.token("verifier").await;
    let (kid, key) = key(&s, &op, json!({"name": "roaming"})).await;
    rule(
        &s,
        &op,
        json!({"name": "networks", "kind": "new_network", "params": {"v4_prefix": 24}}),
    )
    .await;
    let step = async |ip: &str| {
        let v = verify_from(&s, &verifier, &key, ip).await;
        assert_eq!(v["valid"], true);
        s.app.flush_signals().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        evaluate(&s, Utc::now()).await
    };
    // Its first network is not new (nothing to compare with); a neighbour in it is known.
    assert!(step("203.0.113.5").await.0.is_empty());
    assert!(step("203.0.113.77").await.0.is_empty());
    // Another network is.
    let (fired, _) = step("198.51.100.20").await;
    assert_eq!(fired.len(), 1);
    let a = &alerts(&s, &op, "state=firing").await[0];
    assert_eq!(a["key_id"], kid.as_str());
    assert_eq!(a["ip"], "198.51.100.20");
    assert_eq!(a["kind"], "new_network");
    assert!(
        a["summary"].as_str().unwrap().contains("198.51.100.0/24"),
        "{a}"
    );
    // Seen again from there: still the one alert.
    assert!(step("198.51.100.21").await.0.is_empty());
    assert_eq!(alerts(&s, &op, "").await.len(), 1);
    // Acknowledged, it resolves at the next evaluation.
    let id = a["id"].as_str().unwrap();
    let r = s
        .req("POST", &format!("/v1/alerts/{id}/ack"))
        .token(&op)
        .send()
        .await;
    assert_eq!(r.status, 200);
    let (_, resolved) = evaluate(&s, Utc::now()).await;
    assert_eq!(resolved, [id.to_owned()]);
}

#[tokio::test]
async fn metrics_report_alerts_and_the_process() {
    let s = Server::sqlite().await;
    let text = s.req("GET", "/metrics").send().await.text();
    for series in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("{series} missing"));
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        // CPU seconds are whole seconds, 0 in a short test; the others cannot be 0.
        assert!(v > 0.0 || series == "process_cpu_seconds_total", "{line}");
    }
    s.app.evaluate_alerts(Utc::now(), INTERVAL).await.unwrap();
    let text = s.req("GET", "/metrics").send().await.text();
    assert!(
        text.lines().any(|l| l == "keyvault_alerts_firing 0"),
        "{text}"
    );
}

#[tokio::test]
async fn the_overview_series_follows_the_granularity_asked_for() {
    let s = Server::sqlite().await;
    let op = s.token("operator").await;
    let (kid, _) = key(&s, &op, json!({"name": "steady"})).await;
    let base = Utc::now() - TimeDelta::hours(3);
    let base = DateTime::from_timestamp(base.timestamp() / 3_600 * 3_600, 0).unwrap();
    record(
        &s,
        &op,
        (0..3)
            .map(|h| {
                event(
                    &kid,
                    base + TimeDelta::hours(h) + TimeDelta::minutes(7),
                    200,
                    5,
                    None,
                )
            })
            .collect(),
    )
    .await;
    let q = |g: &str| {
        format!(
            "/v1/stats/overview?from={}&to={}&granularity={g}",
            base.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            (base + TimeDelta::hours(3)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    };
    let points = async |g: &str| {
        let r = s.req("GET", &q(g)).token(&op).send().await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["timeseries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["calls"].as_u64() > Some(0))
            .map(|p| p["ts"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap())
            .collect::<Vec<_>>()
    };
    let minutes = points("minute").await;
    assert_eq!(minutes.len(), 3);
    assert!(
        minutes.iter().all(|t| t.timestamp() % 3_600 == 7 * 60),
        "{minutes:?}"
    );
    let hours = points("hour").await;
    assert_eq!(
        hours,
        (0..3)
            .map(|h| base + TimeDelta::hours(h))
            .collect::<Vec<_>>()
    );
    let mut days: Vec<_> = hours.iter().map(|t| t.date_naive()).collect();
    days.dedup();
    let by_day = points("day").await;
    assert_eq!(by_day.len(), days.len());
    assert!(by_day.iter().all(|t| t.timestamp() % 86_400 == 0));
    s.req("GET", &q("week"))
        .token(&op)
        .send()
        .await
        .problem(400, "invalid_request");
    let long = format!(
        "/v1/stats/overview?from={}&granularity=minute",
        (Utc::now() - TimeDelta::days(60)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let p = s.req("GET", &long).token(&op).send().await.json();
    assert_eq!(p["field"], "granularity", "{p}");
}
