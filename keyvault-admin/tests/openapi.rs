//! `/openapi.json` describes what the server answers: in a walk through every operation, each
//! answer (the 2xx and the problem documents alike) has a documented status and content
//! type, and its body validates against the schema documented for that status, formats
//! included. And the document names the routes the router serves: each documented
//! operation reaches a handler, and a documented path answers no other method.

mod common;

use std::collections::BTreeSet;

use common::{Resp, Server};
use serde_json::{Value, json};

/// The document and the (method, route, status) answers seen so far.
struct Walk<'a> {
    s: &'a Server,
    doc: Value,
    seen: BTreeSet<(String, String, u16)>,
}

impl<'a> Walk<'a> {
    async fn new(s: &'a Server) -> Self {
        let r = s.req("GET", "/openapi.json").send().await;
        assert_eq!(r.status, 200);
        Self {
            s,
            doc: r.json(),
            seen: BTreeSet::new(),
        }
    }

    /// Sends `method path` (whose route template is `route`) and checks the answer against
    /// the document.
    async fn call(
        &mut self,
        method: &str,
        route: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = self.s.req(method, path);
        if let Some(t) = token {
            req = req.token(t);
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let r = req.send().await;
        self.check(method, route, &r);
        r
    }

    fn check(&mut self, method: &str, route: &str, r: &Resp) {
        let what = format!("{method} {route} → {}", r.status);
        let op = &self.doc["paths"][route][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {route} is not in the document");
        let documented = &op["responses"][r.status.to_string()];
        assert!(
            documented.is_object(),
            "{what} is not documented: {}",
            r.text()
        );
        match documented.get("content") {
            None => assert!(r.body.is_empty(), "{what}: a body where none is documented"),
            Some(content) => {
                let ct = r.header("content-type").unwrap_or_default();
                let media = ct.split(';').next().unwrap_or_default().trim();
                let entry = &content[media];
                assert!(
                    entry.is_object(),
                    "{what}: content type {ct} is not documented"
                );
                if media.ends_with("json") {
                    self.validate(&what, &entry["schema"], &r.json());
                }
            }
        }
        self.seen
            .insert((method.to_owned(), route.to_owned(), r.status));
    }

    /// Validates `body` against `schema`, its `#/components/...` references resolved in the
    /// document.
    fn validate(&self, what: &str, schema: &Value, body: &Value) {
        let errors = self.errors(what, schema, body);
        assert!(
            errors.is_empty(),
            "{what}: the body does not match its schema:\n{}\n{body:#}",
            errors.join("\n")
        );
    }

    fn errors(&self, what: &str, schema: &Value, body: &Value) -> Vec<String> {
        let mut root = schema.clone();
        root["components"] = self.doc["components"].clone();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{what}: the schema does not compile: {e}"));
        validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    /// The schema documented for a JSON answer.
    fn schema(&self, method: &str, route: &str, status: u16) -> Value {
        self.doc["paths"][route][method.to_ascii_lowercase()]["responses"][status.to_string()]
            ["content"]["application/json"]["schema"]
            .clone()
    }

    /// Every documented operation, as (method, route).
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (route, item) in self.doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                ops.insert((method.to_ascii_uppercase(), route.clone()));
            }
        }
        ops
    }
}

async fn token(w: &mut Walk<'_>, admin: &str, role: &str) -> (String, String) {
    let r = w
        .call(
            "POST",
            "/v1/tokens",
            "/v1/tokens",
            Some(admin),
            Some(json!({"name": format!("{role} bot"), "role": role, "expires_at": "2999-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn every_answer_of_every_route_matches_its_documented_schema() {
    // Channels' hosts resolve inside, so a test message is refused without a network.
    let s = Server::sqlite_with(|app| {
        let inside = ("hooks.test".to_owned(), "10.0.0.9".parse().unwrap());
        app.with_resolver(std::sync::Arc::new(
            keyvault_admin::notify::guard::StaticResolver(vec![inside]),
        ))
        .unwrap()
    })
    .await;
    let admin = s.token("admin").await;
    let mut w = Walk::new(&s).await;
    let absent = "01a22121-829c-725b-8039-33e816e31bea";

    // Operations.
    w.call("GET", "/healthz", "/healthz", None, None).await;
    w.call("GET", "/readyz", "/readyz", None, None).await;
    let m = w.call("GET", "/metrics", "/metrics", None, None).await;
    assert_eq!(m.status, 200);
    let forwarded = s
        .req("GET", "/metrics")
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await;
    w.check("GET", "/metrics", &forwarded);
    assert_eq!(forwarded.status, 401);

    // Tokens.
    let (_, op) = token(&mut w, &admin, "operator").await;
    let (_, viewer) = token(&mut w, &admin, "viewer").await;
    let (_, verifier) = token(&mut w, &admin, "verifier").await;
    let (doomed, _) = token(&mut w, &admin, "admin").await;
    let forwarded = s
        .req("GET", "/metrics")
        .header("X-Forwarded-For", "203.0.113.9")
        .token(&verifier)
        .send()
        .await;
    w.check("GET", "/metrics", &forwarded);
    assert_eq!(forwarded.status, 403);
    for (body, status) in [
        (json!({"name": "t", "role": "root"}), 400),
        (
            json!({"name": "t", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}),
            400,
        ),
    ] {
        let r = w
            .call("POST", "/v1/tokens", "/v1/tokens", Some(&admin), Some(body))
            .await;
        assert_eq!(r.status, status);
    }
    let r = w
        .call(
            "POST",
            "/v1/tokens",
            "/v1/tokens",
            Some(&op),
            Some(json!({"name": "t", "role": "admin"})),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = w
        .call("POST", "/v1/tokens", "/v1/tokens", None, Some(json!({})))
        .await;
    assert_eq!(r.status, 401);
    let page = w
        .call(
            "GET",
            "/v1/tokens",
            "/v1/tokens?limit=2",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(page.status, 200);
    let cursor = page.json()["next_cursor"].as_str().unwrap().to_owned();
    for (path, token, status) in [
        (format!("/v1/tokens?cursor={cursor}"), &admin, 200),
        ("/v1/tokens?cursor=t1.x".into(), &admin, 400),
        ("/v1/tokens".into(), &op, 403),
    ] {
        let r = w.call("GET", "/v1/tokens", &path, Some(token), None).await;
        assert_eq!(r.status, status, "{path}");
    }
    let r = w.call("GET", "/v1/tokens", "/v1/tokens", None, None).await;
    assert_eq!(r.status, 401);

    // Keys.
    let full = json!({
        "name": "full", "prefix": "acme", "owner_id": "o", "enabled": true,
        "expires_at": "2999-01-01T00:00:00Z",
        "credits": {"remaining": 5, "refill": {"interval": "monthly", "amount": 10}},
        "ratelimits": [{"name": "burst", "limit": 1, "period_ms": 60000}],
        "scopes": ["read"], "ip_allowlist": ["10.0.0.0/8", "2001:db8::/32"],
        "metadata": {"team": "a"}, "rotation": {"every": "30d", "grace": "1h"}
    });
    let r = w
        .call("POST", "/v1/keys", "/v1/keys", Some(&op), Some(full))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["key"].as_str().unwrap().to_owned();
    let r = w
        .call(
            "POST",
            "/v1/keys",
            "/v1/keys",
            Some(&op),
            Some(json!({"name": "plain"})),
        )
        .await;
    // The check can fail: a key whose id is not a UUID, or without its name, is refused.
    let schema = w.schema("POST", "/v1/keys", 201);
    for (member, value) in [("id", json!("not-a-uuid")), ("name", Value::Null)] {
        let mut tampered = created.clone();
        tampered[member] = value;
        assert!(
            !w.errors("tampered", &schema, &tampered).is_empty(),
            "{member}"
        );
    }
    let plain = r.json()["id"].as_str().unwrap().to_owned();
    let plain_key = r.json()["key"].as_str().unwrap().to_owned();
    for (body, token, status) in [
        (
            json!({"name": "x", "ratelimits": [{"name": "m", "limit": 0, "period_ms": 1}]}),
            &op,
            400,
        ),
        (
            json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            &op,
            422,
        ),
        (json!({"name": "x"}), &viewer, 403),
    ] {
        let r = w
            .call("POST", "/v1/keys", "/v1/keys", Some(token), Some(body))
            .await;
        assert_eq!(r.status, status);
    }
    let r = w
        .call(
            "POST",
            "/v1/keys",
            "/v1/keys",
            None,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(r.status, 401);
    let page = w
        .call("GET", "/v1/keys", "/v1/keys?limit=1", Some(&viewer), None)
        .await;
    assert_eq!(page.status, 200);
    let cursor = page.json()["next_cursor"].as_str().unwrap().to_owned();
    for (path, token, status) in [
        (
            format!("/v1/keys?cursor={cursor}&enabled=true"),
            &viewer,
            200,
        ),
        ("/v1/keys?limit=0".into(), &viewer, 400),
        ("/v1/keys".into(), &verifier, 403),
    ] {
        let r = w.call("GET", "/v1/keys", &path, Some(token), None).await;
        assert_eq!(r.status, status, "{path}");
    }
    let r = w.call("GET", "/v1/keys", "/v1/keys", None, None).await;
    assert_eq!(r.status, 401);
    let one = "/v1/keys/{id}";
    for (path, token, status) in [
        (format!("/v1/keys/{id}"), Some(&viewer), 200),
        (format!("/v1/keys/{absent}"), Some(&viewer), 404),
        (format!("/v1/keys/{id}"), Some(&verifier), 403),
        (format!("/v1/keys/{id}"), None, 401),
    ] {
        let r = w
            .call("GET", one, &path, token.map(|t| t.as_str()), None)
            .await;
        assert_eq!(r.status, status, "{path}");
    }
    for (path, body, token, status) in [
        (
            format!("/v1/keys/{id}"),
            json!({"name": "renamed", "credits": null, "expires_at": null, "rotation": null, "metadata": null}),
            Some(&op),
            200,
        ),
        (
            format!("/v1/keys/{id}"),
            json!({"name": null}),
            Some(&op),
            400,
        ),
        (
            format!("/v1/keys/{id}"),
            json!({"name": "  "}),
            Some(&op),
            422,
        ),
        (format!("/v1/keys/{absent}"), json!({}), Some(&op), 404),
        (format!("/v1/keys/{id}"), json!({}), Some(&viewer), 403),
        (format!("/v1/keys/{id}"), json!({}), None, 401),
    ] {
        let r = w
            .call("PATCH", one, &path, token.map(|t| t.as_str()), Some(body))
            .await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }

    // Verification: a valid key, an exhausted limit, an unknown key.
    let verify = "/v1/keys/verify";
    for (body, code) in [
        (
            json!({"key": key, "ip": "10.1.2.3", "scopes": ["read"], "provider": "p"}),
            "VALID",
        ),
        (json!({"key": key, "ip": "10.1.2.3"}), "RATE_LIMITED"),
        (json!({"key": key}), "FORBIDDEN"),
        (json!({"key": "nope"}), "NOT_FOUND"),
        (json!({"key": plain_key, "cost": 0}), "VALID"),
    ] {
        let r = w
            .call("POST", verify, verify, Some(&verifier), Some(body))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["code"], code, "{}", r.text());
    }
    for (body, token, status) in [
        (json!({"key": "x", "ip": "999.1.1.1"}), Some(&verifier), 400),
        (
            json!({"key": "x", "cost": 9_007_199_254_740_992_u64}),
            Some(&verifier),
            422,
        ),
        (json!({"key": "x"}), Some(&viewer), 403),
        (json!({"key": "x"}), None, 401),
    ] {
        let r = w
            .call(
                "POST",
                verify,
                verify,
                token.map(|t| t.as_str()),
                Some(body),
            )
            .await;
        assert_eq!(r.status, status);
    }

    // Usage, statistics, audit.
    let event = json!({"key_id": id, "provider": "p", "status": 200, "latency_ms": 3.5});
    for (body, token, status) in [
        (json!({"events": [event]}), Some(&verifier), 202),
        (json!({"events": [{"key_id": id}]}), Some(&verifier), 400),
        (json!({"events": []}), Some(&viewer), 403),
        (json!({"events": []}), None, 401),
    ] {
        let r = w
            .call(
                "POST",
                "/v1/usage",
                "/v1/usage",
                token.map(|t| t.as_str()),
                Some(body),
            )
            .await;
        assert_eq!(r.status, status);
    }
    let stats = "/v1/stats/overview";
    for (path, token, status) in [
        (
            format!("{stats}?key_id={id}&provider=p"),
            Some(&viewer),
            200,
        ),
        (stats.to_owned(), Some(&viewer), 200),
        (format!("{stats}?from=never"), Some(&viewer), 400),
        (
            format!("{stats}?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"),
            Some(&viewer),
            422,
        ),
        (stats.to_owned(), Some(&verifier), 403),
        (stats.to_owned(), None, 401),
    ] {
        let r = w
            .call("GET", stats, &path, token.map(|t| t.as_str()), None)
            .await;
        assert_eq!(r.status, status, "{path}");
    }
    let page = w
        .call("GET", "/v1/audit", "/v1/audit?limit=2", Some(&op), None)
        .await;
    assert_eq!(page.status, 200);
    let cursor = page.json()["next_cursor"].as_str().unwrap().to_owned();
    for (path, token, status) in [
        (
            format!("/v1/audit?cursor={cursor}&from=2020-01-01T00:00:00Z&actor=cli"),
            Some(&op),
            200,
        ),
        ("/v1/audit?action=key.create".to_owned(), Some(&op), 200),
        ("/v1/audit?cursor=a1.x".to_owned(), Some(&op), 400),
        ("/v1/audit".to_owned(), Some(&viewer), 403),
        ("/v1/audit".to_owned(), None, 401),
    ] {
        let r = w
            .call("GET", "/v1/audit", &path, token.map(|t| t.as_str()), None)
            .await;
        assert_eq!(r.status, status, "{path}");
    }

    // The system log: the requests above are in it, newest first.
    for (path, token, status) in [
        ("/v1/logs?level=info&limit=5", Some(&op), 200),
        ("/v1/logs?level=error", Some(&op), 200),
        ("/v1/logs?level=debug", Some(&op), 400),
        ("/v1/logs?limit=0", Some(&op), 400),
        ("/v1/logs?limit=501", Some(&op), 400),
        ("/v1/logs", Some(&viewer), 403),
        ("/v1/logs", None, 401),
    ] {
        let r = w
            .call("GET", "/v1/logs", path, token.map(|t| t.as_str()), None)
            .await;
        assert_eq!(r.status, status, "{path}");
    }

    // Live statistics.
    for (token, status) in [(Some(&viewer), 200), (None, 401)] {
        let r = w
            .call(
                "GET",
                "/v1/stats/live",
                "/v1/stats/live",
                token.map(|t| t.as_str()),
                None,
            )
            .await;
        assert_eq!(r.status, status);
    }

    // The stream: documented as an event stream whose events carry the live body.
    let (status, headers, body) = s.req("GET", "/v1/stats/stream").token(&viewer).open().await;
    assert_eq!(status, 200);
    let content = &w.doc["paths"]["/v1/stats/stream"]["get"]["responses"]["200"]["content"];
    assert!(content["text/event-stream"].is_object(), "{content}");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream"))
    );
    let mut body = body.into_data_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        use futures::StreamExt;
        let chunk = body.next().await.unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = text.lines().find_map(|l| l.strip_prefix("data:")).unwrap();
    let live = w.schema("GET", "/v1/stats/live", 200);
    w.validate(
        "the stream's event",
        &live,
        &serde_json::from_str(data.trim()).unwrap(),
    );
    w.seen
        .insert(("GET".into(), "/v1/stats/stream".into(), 200));

    // Alert rules, and an alert fired by one of them.
    let soon = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let ending = s
        .req("POST", "/v1/keys")
        .token(&op)
        .json(&json!({"name": "ending", "expires_at": soon}))
        .send()
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rules = "/v1/alert-rules";
    let expiring =
        json!({"name": "expiry", "kind": "expiring", "params": {"within": "2h"}, "key_id": ending});
    for (body, token, status) in [
        (expiring.clone(), Some(&op), 201),
        (
            json!({"name": "x", "kind": "loud", "params": {}}),
            Some(&op),
            422,
        ),
        (
            json!({"name": 5, "kind": "expiring", "params": {}}),
            Some(&op),
            400,
        ),
        (expiring.clone(), Some(&viewer), 403),
        (expiring.clone(), None, 401),
    ] {
        let r = w
            .call("POST", rules, rules, token.map(|t| t.as_str()), Some(body))
            .await;
        assert_eq!(r.status, status, "{}", r.text());
    }
    let list = w.call("GET", rules, rules, Some(&op), None).await;
    let rule_id = list.json()["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        w.call("GET", rules, rules, Some(&viewer), None)
            .await
            .status,
        403
    );
    let one_rule = "/v1/alert-rules/{id}";
    let rule_path = format!("/v1/alert-rules/{rule_id}");
    for (token, path, status) in [
        (Some(&op), rule_path.clone(), 200),
        (Some(&op), format!("/v1/alert-rules/{absent}"), 404),
        (None, rule_path.clone(), 401),
    ] {
        let r = w
            .call("GET", one_rule, &path, token.map(|t| t.as_str()), None)
            .await;
        assert_eq!(r.status, status, "{path}");
    }
    for (body, token, status) in [
        (json!({"name": "expiry soon"}), Some(&op), 200),
        (
            json!({"params": {"within": "2d", "extra": 1}}),
            Some(&op),
            422,
        ),
        (json!({"nmae": "x"}), Some(&op), 400),
        (json!({"name": "x"}), Some(&viewer), 403),
    ] {
        let r = w
            .call(
                "PATCH",
                one_rule,
                &rule_path,
                token.map(|t| t.as_str()),
                Some(body),
            )
            .await;
        assert_eq!(r.status, status, "{}", r.text());
    }
    let fired = s
        .app
        .evaluate_alerts(chrono::Utc::now(), std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(fired.fired.len(), 1);
    let alert_id = fired.fired[0].id.to_string();
    for (path, token, status) in [
        (
            format!("/v1/alerts?rule_id={rule_id}&state=firing"),
            Some(&viewer),
            200,
        ),
        ("/v1/alerts?limit=1".to_owned(), Some(&viewer), 200),
        ("/v1/alerts?state=loud".to_owned(), Some(&viewer), 400),
        ("/v1/alerts?cursor=al1.x".to_owned(), Some(&viewer), 400),
        ("/v1/alerts".to_owned(), None, 401),
    ] {
        let r = w
            .call("GET", "/v1/alerts", &path, token.map(|t| t.as_str()), None)
            .await;
        assert_eq!(r.status, status, "{path}");
    }
    let ack = "/v1/alerts/{id}/ack";
    for (path, token, status) in [
        (format!("/v1/alerts/{alert_id}/ack"), Some(&viewer), 403),
        (format!("/v1/alerts/{alert_id}/ack"), Some(&op), 200),
        (format!("/v1/alerts/{absent}/ack"), Some(&op), 404),
        (format!("/v1/alerts/{alert_id}/ack"), None, 401),
    ] {
        let r = w
            .call("POST", ack, &path, token.map(|t| t.as_str()), None)
            .await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }
    for (path, token, status) in [
        (rule_path.clone(), Some(&viewer), 403),
        (rule_path.clone(), Some(&op), 204),
        (rule_path.clone(), Some(&op), 404),
    ] {
        let r = w
            .call("DELETE", one_rule, &path, token.map(|t| t.as_str()), None)
            .await;
        assert_eq!(r.status, status, "{path}");
    }

    // Notification channels (admin).
    let notifiers = "/v1/notifiers";
    let hook = json!({"name": "ops", "kind": "webhook", "url": "https://hooks.test/h"});
    for (body, token, status) in [
        (hook.clone(), Some(&admin), 201),
        (
            json!({"name": "chat", "kind": "slack", "url": "https://hooks.test/s", "events": ["test"]}),
            Some(&admin),
            201,
        ),
        (
            json!({"name": "x", "kind": "webhook", "url": "http://127.0.0.1/"}),
            Some(&admin),
            422,
        ),
        (json!({"name": "x", "kind": "webhook"}), Some(&admin), 400),
        (hook.clone(), Some(&op), 403),
        (hook.clone(), None, 401),
    ] {
        let r = w
            .call(
                "POST",
                notifiers,
                notifiers,
                token.map(|t| t.as_str()),
                Some(body),
            )
            .await;
        assert_eq!(r.status, status, "{}", r.text());
    }
    let listed = w
        .call("GET", notifiers, notifiers, Some(&admin), None)
        .await;
    let channel = listed.json()["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        w.call("GET", notifiers, notifiers, Some(&op), None)
            .await
            .status,
        403
    );
    let test = "/v1/notifiers/{id}/test";
    for (path, token, status) in [
        (format!("/v1/notifiers/{channel}/test"), Some(&admin), 200),
        (format!("/v1/notifiers/{absent}/test"), Some(&admin), 404),
        (format!("/v1/notifiers/{channel}/test"), Some(&op), 403),
    ] {
        let r = w
            .call("POST", test, &path, token.map(|t| t.as_str()), None)
            .await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }
    let one_channel = "/v1/notifiers/{id}";
    for (path, token, status) in [
        (format!("/v1/notifiers/{channel}"), Some(&op), 403),
        (format!("/v1/notifiers/{channel}"), Some(&admin), 204),
        (format!("/v1/notifiers/{channel}"), Some(&admin), 404),
        (format!("/v1/notifiers/{channel}"), None, 401),
    ] {
        let r = w
            .call(
                "DELETE",
                one_channel,
                &path,
                token.map(|t| t.as_str()),
                None,
            )
            .await;
        assert_eq!(r.status, status, "{path}");
    }

    // Rotation, batch, deletion, revocation.
    let rotate = "/v1/keys/{id}/rotate";
    for (path, body, token, status) in [
        (
            format!("/v1/keys/{plain}/rotate"),
            Some(json!({"grace_seconds": 60})),
            Some(&op),
            201,
        ),
        (format!("/v1/keys/{plain}/rotate"), None, Some(&op), 409),
        (format!("/v1/keys/{absent}/rotate"), None, Some(&op), 404),
        (
            format!("/v1/keys/{id}/rotate"),
            Some(json!({"grace_seconds": -1})),
            Some(&op),
            400,
        ),
        (
            format!("/v1/keys/{id}/rotate"),
            Some(json!({"grace_seconds": 99_999_999_999_u64})),
            Some(&op),
            422,
        ),
        (format!("/v1/keys/{id}/rotate"), None, Some(&viewer), 403),
        (format!("/v1/keys/{id}/rotate"), None, None, 401),
    ] {
        let r = w
            .call("POST", rotate, &path, token.map(|t| t.as_str()), body)
            .await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }
    // Successor delivery: a key the jobs rotated, claimed with the old key (no API token),
    // and its grace ended.
    let r = w
        .call(
            "POST",
            "/v1/keys",
            "/v1/keys",
            Some(&op),
            Some(json!({"name": "auto", "rotation": {"every": "1s", "grace": "1h"}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let (auto, auto_key) = (
        r.json()["id"].as_str().unwrap().to_owned(),
        r.json()["key"].as_str().unwrap().to_owned(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let jobs = s.admin.run_jobs().await.unwrap();
    assert!(jobs.rotated.unwrap_or(0) >= 1, "{jobs:?}");
    let claim = "/v1/keys/successor";
    for (key, status) in [
        (None, 401),
        (Some(plain_key.as_str()), 404),
        (Some(auto_key.as_str()), 200),
        (Some(auto_key.as_str()), 410),
    ] {
        let r = w.call("POST", claim, claim, key, None).await;
        assert_eq!(r.status, status, "{}", r.text());
    }
    let end_grace = "/v1/keys/{id}/end-grace";
    for (path, token, status) in [
        (format!("/v1/keys/{auto}/end-grace"), Some(&viewer), 403),
        (format!("/v1/keys/{auto}/end-grace"), None, 401),
        (format!("/v1/keys/{absent}/end-grace"), Some(&op), 404),
        (format!("/v1/keys/{auto}/end-grace"), Some(&op), 200),
        (format!("/v1/keys/{auto}/end-grace"), Some(&op), 409),
    ] {
        let r = w
            .call("POST", end_grace, &path, token.map(|t| t.as_str()), None)
            .await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }
    let batch = "/v1/keys/batch";
    for (body, token, status) in [
        (
            json!({"action": "disable", "ids": [id, "nope", absent]}),
            Some(&op),
            200,
        ),
        (json!({"action": "explode", "ids": []}), Some(&op), 400),
        (json!({"action": "enable", "ids": []}), Some(&viewer), 403),
        (json!({"action": "enable", "ids": []}), None, 401),
    ] {
        let r = w
            .call("POST", batch, batch, token.map(|t| t.as_str()), Some(body))
            .await;
        assert_eq!(r.status, status);
    }
    for (path, token, status) in [
        (format!("/v1/keys/{id}"), Some(&viewer), 403),
        (format!("/v1/keys/{id}"), Some(&op), 204),
        (format!("/v1/keys/{id}"), Some(&op), 404),
        (format!("/v1/keys/{id}"), None, 401),
    ] {
        let r = w
            .call("DELETE", one, &path, token.map(|t| t.as_str()), None)
            .await;
        assert_eq!(r.status, status, "{path}");
    }
    let revoke = "/v1/tokens/{id}";
    for (path, token, status) in [
        (format!("/v1/tokens/{doomed}"), Some(&op), 403),
        (format!("/v1/tokens/{doomed}"), Some(&admin), 204),
        (format!("/v1/tokens/{doomed}"), Some(&admin), 404),
        (format!("/v1/tokens/{doomed}"), None, 401),
    ] {
        let r = w
            .call("DELETE", revoke, &path, token.map(|t| t.as_str()), None)
            .await;
        assert_eq!(r.status, status, "{path}");
    }

    // Every documented operation was walked, and reached a success.
    for (method, route) in w.operations() {
        assert!(
            w.seen
                .iter()
                .any(|(m, r, st)| (m, r) == (&method, &route) && (200..300).contains(st)),
            "{method} {route} was never answered with a success"
        );
    }
}

#[tokio::test]
async fn the_document_names_the_routes_the_router_serves() {
    let s = Server::sqlite().await;
    let admin = s.token("admin").await;
    let w = Walk::new(&s).await;
    let ops = w.operations();
    let id = "01a22121-829c-725b-8039-33e816e31bea";
    let fallback = |r: &Resp| {
        r.header("content-type") == Some("application/problem+json")
            && ((r.status == 404 && r.json()["detail"] == "no such endpoint")
                || (r.status == 405 && r.json()["code"] == "method_not_allowed"))
    };
    let paths: BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
    for route in paths {
        let path = route.replace("{id}", id);
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if method == "GET" && route == "/v1/stats/stream" {
                // An endless event stream: its handler answers with headers at once.
                let (status, headers, _) = s.req(method, &path).token(&admin).open().await;
                let ct = headers.iter().find(|(k, _)| k == "content-type");
                assert_eq!(status, 200, "{route}");
                assert_eq!(ct.map(|(_, v)| v.as_str()), Some("text/event-stream"));
                continue;
            }
            let r = s
                .req(method, &path)
                .token(&admin)
                .header("Content-Type", "application/json")
                .raw(b"{}")
                .send()
                .await;
            let documented = ops.contains(&(method.to_owned(), route.clone()));
            // A documented operation reaches its handler; any other method on a documented
            // path is the router's 405, so no undocumented operation hides there.
            assert_eq!(
                !fallback(&r),
                documented,
                "{method} {route}: {} {}",
                r.status,
                r.text()
            );
        }
    }
    // Beside the documented API, the router serves the document itself, its UI and the
    // dashboard (HTML pages and forms under /admin, not part of the REST API).
    for (method, path) in [
        ("GET", "/openapi.json"),
        ("GET", "/docs/"),
        ("GET", "/admin"),
        ("GET", "/admin/login"),
        ("POST", "/admin/login"),
        ("POST", "/admin/logout"),
    ] {
        let r = s.req(method, path).send().await;
        assert!(!fallback(&r), "{method} {path}: {}", r.status);
    }
    for (method, path) in [
        ("GET", "/v1"),
        ("GET", "/v1/stats"),
        ("GET", "/v1/usage"),
        ("GET", "/v1/keys/verify"),
        ("POST", "/v1/tokens/x/rotate"),
        ("GET", "/v1/keys/x/rotate"),
    ] {
        let r = s.req(method, path).token(&admin).send().await;
        assert!(
            fallback(&r),
            "{method} {path} is served: {} {}",
            r.status,
            r.text()
        );
    }
}

/// Who may call an operation (CONTRACT §4 "roles: `admin` ⊃ `operator` ⊃ `viewer`;
/// `verifier` may only verify and report usage; `admin` and `operator` may also verify and
/// report usage, `viewer` may not", and the role column of §4, §7 and §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Open,
    Viewer,
    Operator,
    Admin,
    /// Verify and report usage: verifier, operator, admin.
    Verifier,
    /// The old key itself, never an API token (§8's successor claim).
    OldKey,
}

use Needs::*;

/// The role each documented operation needs, from CONTRACT. `/metrics` is open to loopback
/// peers only; the walk calls from another address, where it needs a viewer.
/// `POST /v1/keys/{id}/end-grace` is not in CONTRACT: it changes a key, as rotating does,
/// so it needs an operator.
const NEEDS: &[(&str, &str, Needs)] = &[
    ("GET", "/healthz", Open),
    ("GET", "/readyz", Open),
    ("GET", "/metrics", Viewer),
    ("POST", "/v1/keys", Operator),
    ("GET", "/v1/keys", Viewer),
    ("GET", "/v1/keys/{id}", Viewer),
    ("PATCH", "/v1/keys/{id}", Operator),
    ("DELETE", "/v1/keys/{id}", Operator),
    ("POST", "/v1/keys/{id}/rotate", Operator),
    ("POST", "/v1/keys/{id}/end-grace", Operator),
    ("POST", "/v1/keys/batch", Operator),
    ("POST", "/v1/keys/verify", Verifier),
    ("POST", "/v1/keys/successor", OldKey),
    ("POST", "/v1/usage", Verifier),
    ("POST", "/v1/tokens", Admin),
    ("GET", "/v1/tokens", Admin),
    ("DELETE", "/v1/tokens/{id}", Admin),
    ("GET", "/v1/stats/overview", Viewer),
    ("GET", "/v1/stats/live", Viewer),
    ("GET", "/v1/stats/stream", Viewer),
    ("GET", "/v1/audit", Operator),
    ("GET", "/v1/logs", Operator),
    ("GET", "/v1/alert-rules", Operator),
    ("POST", "/v1/alert-rules", Operator),
    ("GET", "/v1/alert-rules/{id}", Operator),
    ("PATCH", "/v1/alert-rules/{id}", Operator),
    ("DELETE", "/v1/alert-rules/{id}", Operator),
    ("GET", "/v1/alerts", Viewer),
    ("POST", "/v1/alerts/{id}/ack", Operator),
    ("GET", "/v1/notifiers", Admin),
    ("POST", "/v1/notifiers", Admin),
    ("DELETE", "/v1/notifiers/{id}", Admin),
    ("POST", "/v1/notifiers/{id}/test", Admin),
];

/// Whether `role` (`None`: no token) may call an operation that needs `needs`.
fn may(needs: Needs, role: Option<&str>) -> bool {
    match (needs, role) {
        (Open, _) => true,
        (OldKey, _) | (_, None) => false,
        (Viewer, Some(r)) => matches!(r, "viewer" | "operator" | "admin"),
        (Operator, Some(r)) => matches!(r, "operator" | "admin"),
        (Admin, Some(r)) => r == "admin",
        (Verifier, Some(r)) => matches!(r, "verifier" | "operator" | "admin"),
    }
}

#[tokio::test]
async fn every_operation_refuses_the_roles_below_its_own_and_admits_its_own() {
    let s = Server::sqlite().await;
    let w = Walk::new(&s).await;
    let ops = w.operations();
    let table: BTreeSet<(String, String)> = NEEDS
        .iter()
        .map(|(m, r, _)| ((*m).to_owned(), (*r).to_owned()))
        .collect();
    for op in &ops {
        assert!(
            table.contains(op),
            "{} {} is documented but has no role in this test's table: add CONTRACT's",
            op.0,
            op.1
        );
    }
    for op in &table {
        assert!(ops.contains(op), "{} {} is not documented", op.0, op.1);
    }
    let mut tokens = vec![(None, String::new())];
    for role in ["verifier", "viewer", "operator", "admin"] {
        tokens.push((Some(role), s.token(role).await));
    }
    // A random id: an authorised call may well answer 404.
    let id = uuid::Uuid::now_v7().to_string();
    // Not loopback: `/metrics` is open to loopback peers only (checked below).
    let peer = "198.51.100.20:41000";
    for &(method, route, needs) in NEEDS {
        let path = route.replace("{id}", &id);
        for (role, token) in &tokens {
            let what = format!("{method} {route} as {}", role.unwrap_or("nobody"));
            let mut req = s.req(method, &path).peer(peer);
            if role.is_some() {
                req = req.token(token);
            }
            if method == "POST" || method == "PATCH" {
                req = req.json(&json!({}));
            }
            let (status, text) = if route == "/v1/stats/stream" {
                let (status, _, body) = req.open().await;
                // The stream never ends: its head is the answer. A refusal has a body.
                let text = if status == 200 {
                    String::new()
                } else {
                    let bytes = http_body_util::BodyExt::collect(body)
                        .await
                        .unwrap()
                        .to_bytes();
                    String::from_utf8_lossy(&bytes).into_owned()
                };
                (status, text)
            } else {
                let r = req.send().await;
                (r.status, r.text())
            };
            assert!(status < 500, "{what}: {status} {text}");
            if may(needs, *role) {
                assert!(
                    status != 401 && status != 403,
                    "{what} is refused: {status} {text}"
                );
            } else if needs == OldKey {
                // An API token is not a key: refused or unknown, never served.
                assert!(matches!(status, 401 | 403 | 404), "{what}: {status} {text}");
            } else {
                let expected = if role.is_none() { 401 } else { 403 };
                assert_eq!(status, expected, "{what}: {text}");
            }
        }
    }
    // From loopback (no forwarding header) `/metrics` is open.
    let r = s.req("GET", "/metrics").send().await;
    assert_eq!(r.status, 200, "{}", r.text());
}
