//! Every row of CONTRACT §4 against the router on SQLite, in-process.

mod common;

use common::{Server, Settings};

#[tokio::test]
async fn every_route_answers_as_the_contract_says_on_sqlite() {
    let s = Server::sqlite().await;
    common::routes::walk_every_route(&s).await;
}

#[tokio::test]
async fn a_trusted_proxy_forwards_the_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        trusted_proxies: Some("127.0.0.0/8".into()),
        ..Settings::sqlite(dir.path())
    };
    let s = Server::start(&settings).await;
    let admin = s.token("admin").await;
    let r = s
        .req("POST", "/v1/keys")
        .token(&admin)
        .header("X-Forwarded-For", "203.0.113.9")
        .json(&serde_json::json!({"name": "via proxy"}))
        .send()
        .await;
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let a = s
        .req("GET", &format!("/v1/audit?target_id={id}"))
        .token(&admin)
        .send()
        .await
        .json();
    assert_eq!(a["items"][0]["source_ip"], "203.0.113.9");
    // From a peer that is not a trusted proxy the header means nothing.
    let r = s
        .req("POST", "/v1/keys")
        .token(&admin)
        .peer("198.51.100.7:5000")
        .header("X-Forwarded-For", "203.0.113.9")
        .json(&serde_json::json!({"name": "direct"}))
        .send()
        .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let a = s
        .req("GET", &format!("/v1/audit?target_id={id}"))
        .token(&admin)
        .send()
        .await
        .json();
    assert_eq!(a["items"][0]["source_ip"], "198.51.100.7");
}

#[tokio::test]
async fn patch_sets_and_clears_the_owner_and_listings_follow() {
    let s = Server::sqlite().await;
    let op = s.token("operator").await;
    let id = s
        .req("POST", "/v1/keys")
        .token(&op)
        .json(&serde_json::json!({"name": "k", "owner_id": "acme"}))
        .send()
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let owned = |owner: &'static str| {
        let s = &s;
        let op = op.clone();
        async move {
            s.req("GET", &format!("/v1/keys?owner_id={owner}"))
                .token(&op)
                .send()
                .await
                .json()["items"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(owned("acme").await, 1);
    let patch = |body: serde_json::Value| {
        s.req("PATCH", &format!("/v1/keys/{id}"))
            .token(&op)
            .json(&body)
            .send()
    };
    let changed = patch(serde_json::json!({"owner_id": "globex"})).await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    assert_eq!(changed.json()["owner_id"], "globex");
    assert_eq!((owned("acme").await, owned("globex").await), (0, 1));
    let cleared = patch(serde_json::json!({"owner_id": null})).await.json();
    assert_eq!(cleared["owner_id"], serde_json::Value::Null);
    assert_eq!(owned("globex").await, 0);
    let p = patch(serde_json::json!({"owner_id": ""}))
        .await
        .problem(422, "invalid_value");
    assert_eq!(p["field"], "owner_id");
}

#[tokio::test]
async fn the_system_log_shows_recent_records_newest_first_without_secrets() {
    let s = Server::sqlite().await;
    let op = s.token("operator").await;
    let r = s
        .req("POST", "/v1/keys")
        .token(&op)
        .header("X-Request-Id", "log-test-1")
        .json(&serde_json::json!({"name": "logged"}))
        .send()
        .await;
    assert_eq!(r.status, 201);
    let key = r.json()["key"].as_str().unwrap().to_owned();
    // A verification with the key in its body: neither the key nor the token may show.
    let r = s
        .req("POST", "/v1/keys/verify")
        .token(&op)
        .header("X-Request-Id", "log-test-2")
        .json(&serde_json::json!({"key": key}))
        .send()
        .await;
    assert!(r.status < 500);
    let r = s.req("GET", "/v1/logs?limit=500").token(&op).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    common::assert_no_secrets(&r.text(), &[key, op.clone()]);
    let items = r.json()["items"].as_array().unwrap().clone();
    let pos = |rid: &str| {
        items
            .iter()
            .position(|i| i["message"] == "request" && i["fields"]["request_id"] == rid)
            .unwrap_or_else(|| panic!("no access record of {rid}: {items:?}"))
    };
    // Newest first: the verification's record comes before the creation's.
    assert!(pos("log-test-2") < pos("log-test-1"));
    let created = &items[pos("log-test-1")];
    assert_eq!(created["level"], "info");
    assert_eq!(created["target"], "keyvault::http");
    assert_eq!(created["fields"]["route"], "/v1/keys");
    assert!(
        chrono::DateTime::parse_from_rfc3339(created["ts"].as_str().unwrap()).is_ok(),
        "{created}"
    );
    // `warn` shows warnings and errors only; the limit holds.
    let w = s
        .req("GET", "/v1/logs?level=warn")
        .token(&op)
        .send()
        .await
        .json();
    assert!(
        w["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["level"] == "warn" || i["level"] == "error"),
        "{w}"
    );
    let one = s
        .req("GET", "/v1/logs?limit=1")
        .token(&op)
        .send()
        .await
        .json();
    assert_eq!(one["items"].as_array().unwrap().len(), 1);
    let bad = s.req("GET", "/v1/logs?level=loud").token(&op).send().await;
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("level"), "{}", bad.text());
}
