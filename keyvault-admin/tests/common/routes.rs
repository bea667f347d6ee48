//! The walk through every row of CONTRACT §4, run on each backend against the router.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Server, assert_no_secrets, eventually, logs};

async fn create_key(s: &Server, token: &str, body: Value) -> Value {
    let r = s
        .req("POST", "/v1/keys")
        .token(token)
        .json(&body)
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

async fn verify(s: &Server, token: &str, body: Value) -> Value {
    let r = s
        .req("POST", "/v1/keys/verify")
        .token(token)
        .json(&body)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Walks every row of CONTRACT §4 against a fresh deployment.
pub async fn walk_every_route(s: &Server) {
    let admin = s.token("admin").await;
    let mut secrets = vec![admin.clone()];

    // Open routes.
    assert_eq!(s.req("GET", "/healthz").send().await.json()["status"], "ok");
    assert_eq!(
        s.req("GET", "/readyz").send().await.json()["status"],
        "ready"
    );
    let doc = s.req("GET", "/openapi.json").send().await.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/v1/keys",
        "/v1/keys/{id}",
        "/v1/keys/verify",
        "/v1/usage",
        "/v1/tokens",
        "/v1/audit",
        "/v1/stats/overview",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    let docs = s.req("GET", "/docs/").send().await;
    assert_eq!(docs.status, 200);
    assert!(
        docs.text().contains("swagger"),
        "the UI is served from the binary"
    );
    let docs = s.req("GET", "/docs").send().await;
    assert!(docs.status == 200 || (300..400).contains(&docs.status));
    let admin_page = s.req("GET", "/admin").send().await;
    assert_eq!(admin_page.status, 303);
    assert_eq!(admin_page.header("location"), Some("/admin/login"));
    let login_page = s.req("GET", "/admin/login").send().await;
    assert_eq!(login_page.status, 200);
    assert!(login_page.text().contains("<form"));

    // Tokens: admin creates one per role; shown once; listed without secrets.
    let mut tokens = std::collections::HashMap::new();
    for role in ["operator", "viewer", "verifier", "admin"] {
        let r = s
            .req("POST", "/v1/tokens")
            .token(&admin)
            .json(&json!({"name": format!("{role} bot"), "role": role}))
            .send()
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json();
        for f in [
            "id",
            "token",
            "name",
            "role",
            "start",
            "created_at",
            "expires_at",
        ] {
            assert!(v.get(f).is_some(), "{f} missing: {v}");
        }
        let t = v["token"].as_str().unwrap().to_owned();
        assert!(t.starts_with("kvt_"));
        assert_eq!(v["start"], &t[..8]);
        secrets.push(t.clone());
        tokens.insert(role, (v["id"].as_str().unwrap().to_owned(), t));
    }
    let (op, viewer, verifier) = (
        tokens["operator"].1.clone(),
        tokens["viewer"].1.clone(),
        tokens["verifier"].1.clone(),
    );
    let list = s.req("GET", "/v1/tokens").token(&admin).send().await;
    assert_eq!(list.status, 200);
    let text = list.text();
    assert_no_secrets(&text, &secrets);
    assert!(list.json()["items"].as_array().unwrap().len() >= 5);
    assert!(list.json().get("next_cursor").is_some());
    // Only admins manage tokens.
    s.req("GET", "/v1/tokens")
        .token(&op)
        .send()
        .await
        .problem(403, "forbidden");
    s.req("POST", "/v1/tokens")
        .token(&op)
        .json(&json!({"name": "x", "role": "admin"}))
        .send()
        .await
        .problem(403, "forbidden");

    // Keys: operator creates, viewer reads, verifier verifies.
    let k = create_key(
        s,
        &op,
        json!({
            "name": "billing", "owner_id": "acme", "prefix": "acme",
            "credits": {"remaining": 3}, "ratelimits": [{"name": "burst", "limit": 10, "period_ms": 60000}],
            "scopes": ["read"], "metadata": {"team": "a"}
        }),
    ).await;
    let key = k["key"].as_str().unwrap().to_owned();
    secrets.push(key.clone());
    let id = k["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("acme_"));
    assert_eq!(k["start"], &key[..9]);
    assert_eq!(k["name"], "billing");
    s.req("POST", "/v1/keys")
        .token(&viewer)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .problem(403, "forbidden");
    s.req("POST", "/v1/keys")
        .token(&verifier)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .problem(403, "forbidden");
    s.req("POST", "/v1/keys")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .problem(401, "unauthorized");

    // GET one: never the key or its digest.
    let got = s
        .req("GET", &format!("/v1/keys/{id}"))
        .token(&viewer)
        .send()
        .await;
    assert_eq!(got.status, 200);
    let g = got.json();
    assert_eq!(g["id"], id.as_str());
    assert_eq!(g["credits"]["remaining"], 3);
    assert!(g.get("key").is_none() && g.get("digest").is_none());
    assert_no_secrets(&got.text(), &secrets);
    s.req("GET", &format!("/v1/keys/{id}"))
        .token(&verifier)
        .send()
        .await
        .problem(403, "forbidden");

    // Verify: codes, credits and limits as they stand after the verification.
    let v = verify(s, &verifier, json!({"key": key, "scopes": ["read"]})).await;
    assert_eq!(v["valid"], true);
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["key_id"], id.as_str());
    assert_eq!(v["owner_id"], "acme");
    assert_eq!(v["credits"]["remaining"], 2);
    assert_eq!(v["ratelimits"][0]["remaining"], 9);
    assert!(v["ratelimits"][0]["reset_at"].is_string());
    let v = verify(s, &op, json!({"key": key, "scopes": ["write"]})).await;
    assert_eq!(v["code"], "INSUFFICIENT_PERMISSIONS");
    assert_eq!(
        v["credits"]["remaining"], 2,
        "a rejected verification consumes nothing"
    );
    let v = verify(s, &verifier, json!({"key": key, "cost": 5})).await;
    assert_eq!(v["code"], "USAGE_EXCEEDED");
    let v = verify(s, &verifier, json!({"key": key, "cost": 0})).await;
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["credits"]["remaining"], 2);
    for bogus in [
        "nope",
        "",
        "kv_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA3vFAOz",
    ] {
        let v = verify(s, &verifier, json!({"key": bogus})).await;
        assert_eq!(v["code"], "NOT_FOUND", "{bogus}");
        assert_eq!(v["valid"], false);
        assert!(v.get("key_id").is_none());
    }
    // API tokens are never keys.
    assert_eq!(
        verify(s, &verifier, json!({"key": admin})).await["code"],
        "NOT_FOUND"
    );
    s.req("POST", "/v1/keys/verify")
        .token(&viewer)
        .json(&json!({"key": key}))
        .send()
        .await
        .problem(403, "forbidden");
    // An allow-list needs the caller's IP.
    let ipk = create_key(
        s,
        &op,
        json!({"name": "net", "ip_allowlist": ["10.0.0.0/8", "2001:db8::/32"]}),
    )
    .await;
    let ipkey = ipk["key"].as_str().unwrap().to_owned();
    secrets.push(ipkey.clone());
    assert_eq!(
        verify(s, &verifier, json!({"key": ipkey})).await["code"],
        "FORBIDDEN"
    );
    assert_eq!(
        verify(s, &verifier, json!({"key": ipkey, "ip": "10.1.2.3"})).await["code"],
        "VALID"
    );
    assert_eq!(
        verify(s, &verifier, json!({"key": ipkey, "ip": "2001:db8::1"})).await["code"],
        "VALID"
    );
    assert_eq!(
        verify(s, &verifier, json!({"key": ipkey, "ip": "192.168.0.1"})).await["code"],
        "FORBIDDEN"
    );

    // PATCH replaces fields; null clears nullable ones; disable → DISABLED.
    let p = s
        .req("PATCH", &format!("/v1/keys/{id}"))
        .token(&op)
        .json(&json!({"name": "billing-2", "credits": {"remaining": 50}, "scopes": [], "expires_at": null}))
        .send().await;
    assert_eq!(p.status, 200, "{}", p.text());
    let p = p.json();
    assert_eq!(p["name"], "billing-2");
    assert_eq!(p["credits"]["remaining"], 50);
    assert_eq!(p["scopes"], json!([]));
    s.req("PATCH", &format!("/v1/keys/{id}"))
        .token(&op)
        .json(&json!({"name": null}))
        .send()
        .await
        .problem(400, "invalid_field");
    s.req("PATCH", &format!("/v1/keys/{id}"))
        .token(&viewer)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .problem(403, "forbidden");
    let p = s
        .req("PATCH", &format!("/v1/keys/{id}"))
        .token(&op)
        .json(&json!({"enabled": false}))
        .send()
        .await;
    assert_eq!(p.status, 200);
    assert_eq!(
        verify(s, &verifier, json!({"key": key})).await["code"],
        "DISABLED"
    );
    s.req("PATCH", &format!("/v1/keys/{id}"))
        .token(&op)
        .json(&json!({"enabled": true}))
        .send()
        .await;

    // List: newest first, filters, opaque cursor, limit bounds.
    for i in 0..5 {
        let k = create_key(
            s,
            &op,
            json!({"name": format!("page-{i}"), "owner_id": "pager"}),
        )
        .await;
        secrets.push(k["key"].as_str().unwrap().to_owned());
    }
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            None => "/v1/keys?owner_id=pager&limit=2".to_owned(),
            Some(c) => format!("/v1/keys?owner_id=pager&limit=2&cursor={c}"),
        };
        let page = s.req("GET", &q).token(&viewer).send().await;
        assert_eq!(page.status, 200, "{}", page.text());
        assert_no_secrets(&page.text(), &secrets);
        let page = page.json();
        for it in page["items"].as_array().unwrap() {
            names.push(it["name"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(names, ["page-4", "page-3", "page-2", "page-1", "page-0"]);
    let found = s
        .req("GET", "/v1/keys?search=BILLING")
        .token(&viewer)
        .send()
        .await
        .json();
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
    let disabled = s
        .req("GET", "/v1/keys?enabled=false")
        .token(&viewer)
        .send()
        .await
        .json();
    assert_eq!(disabled["items"].as_array().unwrap().len(), 0);
    s.req("GET", "/v1/keys?limit=0")
        .token(&viewer)
        .send()
        .await
        .problem(400, "invalid_request");
    s.req("GET", "/v1/keys?limit=101")
        .token(&viewer)
        .send()
        .await
        .problem(400, "invalid_request");
    s.req("GET", "/v1/keys?enabled=maybe")
        .token(&viewer)
        .send()
        .await
        .problem(400, "invalid_request");
    s.req("GET", "/v1/keys?cursor=garbage")
        .token(&viewer)
        .send()
        .await
        .problem(400, "invalid_request");
    s.req("GET", "/v1/keys?limt=5")
        .token(&viewer)
        .send()
        .await
        .problem(400, "invalid_request");

    // Rotate: a new key, the old one keeps working through the grace, sharing credits.
    let r = s
        .req("POST", &format!("/v1/keys/{id}/rotate"))
        .token(&op)
        .json(&json!({"grace_seconds": 3600}))
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = r.json();
    let new_key = r["key"].as_str().unwrap().to_owned();
    secrets.push(new_key.clone());
    assert_ne!(r["id"], id.as_str());
    assert!(r["old_key_expires_at"].is_string());
    let a = verify(s, &verifier, json!({"key": key})).await;
    let b = verify(s, &verifier, json!({"key": new_key})).await;
    assert_eq!(
        (a["code"].as_str(), b["code"].as_str()),
        (Some("VALID"), Some("VALID"))
    );
    assert_eq!(
        b["credits"]["remaining"].as_u64().unwrap() + 1,
        a["credits"]["remaining"].as_u64().unwrap()
    );
    s.req("POST", &format!("/v1/keys/{id}/rotate"))
        .token(&op)
        .send()
        .await
        .problem(409, "conflict");
    s.req(
        "POST",
        "/v1/keys/01a22121-829c-725b-8039-33e816e31bea/rotate",
    )
    .token(&op)
    .send()
    .await
    .problem(404, "not_found");

    // Batch: per-id results, even when some fail.
    let ids: Vec<String> = s
        .req("GET", "/v1/keys?owner_id=pager")
        .token(&viewer)
        .send()
        .await
        .json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    let b = s
        .req("POST", "/v1/keys/batch")
        .token(&op)
        .json(&json!({"action": "disable", "ids": [ids[0], "not-an-id", ids[1]]}))
        .send()
        .await;
    assert_eq!(b.status, 200, "{}", b.text());
    let b = b.json();
    let res = b["results"].as_array().unwrap();
    assert_eq!(res.len(), 3);
    assert_eq!(res[0]["ok"], true);
    assert_eq!(res[1]["ok"], false);
    assert_eq!(res[1]["error"], "not_found");
    assert_eq!(res[2]["ok"], true);
    let d = s
        .req("GET", "/v1/keys?owner_id=pager&enabled=false")
        .token(&viewer)
        .send()
        .await
        .json();
    assert_eq!(d["items"].as_array().unwrap().len(), 2);

    // Delete: 204, then the key is NOT_FOUND and the id 404.
    let kd = create_key(s, &op, json!({"name": "doomed"})).await;
    let kd_key = kd["key"].as_str().unwrap().to_owned();
    secrets.push(kd_key.clone());
    let kd_id = kd["id"].as_str().unwrap();
    assert_eq!(
        s.req("DELETE", &format!("/v1/keys/{kd_id}"))
            .token(&op)
            .send()
            .await
            .status,
        204
    );
    assert_eq!(
        verify(s, &verifier, json!({"key": kd_key})).await["code"],
        "NOT_FOUND"
    );
    s.req("GET", &format!("/v1/keys/{kd_id}"))
        .token(&viewer)
        .send()
        .await
        .problem(404, "not_found");
    s.req("DELETE", &format!("/v1/keys/{kd_id}"))
        .token(&op)
        .send()
        .await
        .problem(404, "not_found");

    // Usage: 202, counted once per request_id, visible in statistics within 5 s.
    let events = json!({"events": [
        {"key_id": id, "provider": "openai", "status": 200, "latency_ms": 12.5, "request_id": "u-1"},
        {"key_id": id, "provider": "openai", "status": 500, "latency_ms": 40, "request_id": "u-2"},
        {"key_id": id, "provider": "anthropic", "status": 200, "latency_ms": 7}
    ]});
    let u = s
        .req("POST", "/v1/usage")
        .token(&verifier)
        .json(&events)
        .send()
        .await;
    assert_eq!(u.status, 202, "{}", u.text());
    assert_eq!(u.json()["accepted"], 3);
    let again = json!({"events": [{"key_id": id, "provider": "openai", "status": 200, "latency_ms": 1, "request_id": "u-1"}]});
    assert_eq!(
        s.req("POST", "/v1/usage")
            .token(&verifier)
            .json(&again)
            .send()
            .await
            .status,
        202
    );
    s.req("POST", "/v1/usage")
        .token(&viewer)
        .json(&events)
        .send()
        .await
        .problem(403, "forbidden");
    let seen = eventually(Duration::from_secs(5), async || {
        s.req("GET", "/v1/stats/overview")
            .token(&viewer)
            .send()
            .await
            .json()["calls"]
            == 3
    })
    .await;
    assert!(seen.is_some(), "usage not in statistics within 5 s");
    let st = s
        .req(
            "GET",
            &format!("/v1/stats/overview?key_id={id}&provider=openai"),
        )
        .token(&viewer)
        .send()
        .await
        .json();
    assert_eq!(st["calls"], 2);
    assert_eq!(st["success_rate"], 0.5);
    assert!(st["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert_eq!(st["by_provider"][0]["provider"], "openai");
    assert!(st["timeseries"].as_array().is_some());
    let empty = s
        .req(
            "GET",
            "/v1/stats/overview?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z",
        )
        .token(&viewer)
        .send()
        .await
        .json();
    assert_eq!(empty["calls"], 0);
    assert_eq!(empty["success_rate"], Value::Null);
    s.req("GET", "/v1/stats/overview?from=yesterday")
        .token(&viewer)
        .send()
        .await
        .problem(400, "invalid_request");
    s.req("GET", "/v1/stats/overview")
        .token(&verifier)
        .send()
        .await
        .problem(403, "forbidden");

    // Audit: operators read it, newest first, with a cursor; every mutation and refusal is in it.
    s.req("GET", "/v1/audit")
        .token(&viewer)
        .send()
        .await
        .problem(403, "forbidden");
    let a = s
        .req("GET", &format!("/v1/audit?target_id={id}"))
        .token(&op)
        .send()
        .await;
    assert_eq!(a.status, 200);
    assert_no_secrets(&a.text(), &secrets);
    let a = a.json();
    let actions: Vec<&str> = a["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"key.create")
            && actions.contains(&"key.update")
            && actions.contains(&"key.rotate"),
        "{actions:?}"
    );
    let first = &a["items"][0];
    assert!(first["at"].is_string() && first["actor"].as_str().unwrap().starts_with("token:"));
    assert_eq!(first["source_ip"], "127.0.0.1");
    assert!(first["request_id"].is_string());
    let refused = s
        .req("GET", "/v1/audit?action=key.create&limit=100")
        .token(&op)
        .send()
        .await
        .json();
    assert!(
        refused["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["outcome"] == "refused"),
        "refused attempts are audited"
    );
    let page = s
        .req("GET", "/v1/audit?limit=1")
        .token(&op)
        .send()
        .await
        .json();
    let c = page["next_cursor"].as_str().unwrap();
    let next = s
        .req("GET", &format!("/v1/audit?limit=1&cursor={c}"))
        .token(&op)
        .send()
        .await
        .json();
    assert!(next["items"][0]["seq"].as_u64().unwrap() < page["items"][0]["seq"].as_u64().unwrap());

    // Token revocation: 204, refused at once, a second time 404.
    let (vid, _) = &tokens["viewer"];
    assert_eq!(
        s.req("DELETE", &format!("/v1/tokens/{vid}"))
            .token(&admin)
            .send()
            .await
            .status,
        204
    );
    let gone = eventually(Duration::from_secs(1), async || {
        s.req("GET", "/v1/keys").token(&viewer).send().await.status == 401
    })
    .await;
    assert!(gone.is_some(), "a revoked token still works after 1 s");
    s.req("DELETE", &format!("/v1/tokens/{vid}"))
        .token(&admin)
        .send()
        .await
        .problem(404, "not_found");

    // Metrics: open to loopback peers; with a forwarding header a token is needed.
    let m = s.req("GET", "/metrics").send().await;
    assert_eq!(m.status, 200);
    let text = m.text();
    for name in [
        "keyvault_http_requests_total",
        "keyvault_http_request_duration_seconds",
        "keyvault_verifications_total",
        "keyvault_usage_events_dropped_total",
        "keyvault_key_cache_hit_ratio",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(text.contains(r#"code="NOT_FOUND""#));
    assert!(
        text.contains(r#"route="/v1/keys/{id}""#),
        "routes are labelled by template"
    );
    s.req("GET", "/metrics")
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .problem(401, "unauthorized");
    assert_eq!(
        s.req("GET", "/metrics")
            .header("X-Forwarded-For", "203.0.113.9")
            .token(&op)
            .send()
            .await
            .status,
        200
    );

    // Request ids are echoed.
    let r = s
        .req("GET", "/healthz")
        .header("X-Request-Id", "abc-123")
        .send()
        .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));

    assert_no_secrets(&logs(), &secrets);
}
