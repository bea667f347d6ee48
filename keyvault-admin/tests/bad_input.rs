//! In-process, against the router: what clients get wrong gets the documented 4xx, never a 5xx, and nothing
//! secret comes back or reaches the server's output.

mod common;

use common::{Server, assert_no_secrets, logs};
use serde_json::{Value, json};

#[tokio::test]
async fn bad_requests_get_documented_client_errors() {
    let s = Server::sqlite().await;
    let admin = s.token("admin").await;
    let op = s.token("operator").await;
    let verifier = s.token("verifier").await;
    let mut secrets = vec![admin.clone(), op.clone(), verifier.clone()];
    let k = s
        .req("POST", "/v1/keys")
        .token(&op)
        .json(&json!({"name": "k"}))
        .send()
        .await
        .json();
    let id = k["id"].as_str().unwrap().to_owned();
    secrets.push(k["key"].as_str().unwrap().to_owned());

    // (method, path, body, expected status, expected code, expected field)
    type Case<'a> = (
        &'a str,
        String,
        Option<String>,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(2 << 20));
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            "/v1/keys".into(),
            Some("{not json".into()),
            400,
            "invalid_json",
            None,
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some("[1,2]".into()),
            400,
            "invalid_json",
            None,
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some("".into()),
            400,
            "invalid_json",
            None,
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some("{}".into()),
            400,
            "missing_field",
            Some("name"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(r#"{"name": 5}"#.into()),
            400,
            "invalid_field",
            Some("name"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(r#"{"name": "a", "nmae": "b"}"#.into()),
            400,
            "invalid_field",
            Some("nmae"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(
                r#"{"name": "a", "ratelimits": [{"name": "m", "limit": 0, "period_ms": 1000}]}"#
                    .into(),
            ),
            400,
            "invalid_field",
            Some("ratelimits[0].limit"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(
                r#"{"name": "a", "ratelimits": [{"name": "m", "limit": -1, "period_ms": 1000}]}"#
                    .into(),
            ),
            400,
            "invalid_field",
            Some("ratelimits[0].limit"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(
                r#"{"name": "a", "ratelimits": [{"name": "m", "limit": 5, "period_ms": 0}]}"#
                    .into(),
            ),
            400,
            "invalid_field",
            Some("ratelimits[0].period_ms"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(
                r#"{"name": "a", "ratelimits": [{"name": "m", "limit": 5, "period_ms": 1000}, {"name": "n", "limit": 5}]}"#
                    .into(),
            ),
            400,
            "invalid_field",
            Some("ratelimits[1].period_ms"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(
                r#"{"name": "a", "ratelimits": [{"name": "m", "limit": 2000001, "period_ms": 2}]}"#
                    .into(),
            ),
            400,
            "invalid_field",
            Some("ratelimits[0].limit"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(r#"{"name": "a", "credits": {"refill": {"interval": "daily", "amount": 1}}}"#.into()),
            400,
            "invalid_field",
            Some("credits.remaining"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(r#"{"name": "a", "credits": {"remaining": 9007199254740992}}"#.into()),
            422,
            "invalid_value",
            Some("credits.remaining"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(r#"{"name": "a", "credits": {"remaining": -5}}"#.into()),
            400,
            "invalid_field",
            Some("credits.remaining"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(r#"{"name": "a", "prefix": "Bad"}"#.into()),
            400,
            "invalid_field",
            Some("prefix"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(r#"{"name": "a", "prefix": "kvt"}"#.into()),
            422,
            "invalid_value",
            Some("prefix"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(r#"{"name": "a", "expires_at": "tomorrow"}"#.into()),
            400,
            "invalid_field",
            Some("expires_at"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(r#"{"name": "a", "expires_at": "2001-01-01T00:00:00Z"}"#.into()),
            422,
            "invalid_value",
            Some("expires_at"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(r#"{"name": "a", "ip_allowlist": ["10.0.0.0/8", "10.0.0.0/33"]}"#.into()),
            400,
            "invalid_field",
            Some("ip_allowlist[1]"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(r#"{"name": "a", "rotation": {"every": "soon"}}"#.into()),
            400,
            "invalid_field",
            Some("rotation.every"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(r#"{"name": "   "}"#.into()),
            422,
            "invalid_value",
            Some("name"),
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(big),
            413,
            "payload_too_large",
            None,
        ),
        (
            "GET",
            "/v1/keys/not-a-uuid".into(),
            None,
            404,
            "not_found",
            None,
        ),
        (
            "GET",
            "/v1/keys/01a22121-829c-725b-8039-33e816e31bea".into(),
            None,
            404,
            "not_found",
            None,
        ),
        (
            "PATCH",
            format!("/v1/keys/{id}"),
            Some(r#"{"enabled": "yes"}"#.into()),
            400,
            "invalid_field",
            Some("enabled"),
        ),
        (
            "PATCH",
            format!("/v1/keys/{id}"),
            Some(r#"{"enabled": null}"#.into()),
            400,
            "invalid_field",
            Some("enabled"),
        ),
        (
            "PATCH",
            format!("/v1/keys/{id}"),
            Some(
                r#"{"credits": {"remaining": 1, "refill": {"interval": "hourly", "amount": 1}}}"#
                    .into(),
            ),
            400,
            "invalid_field",
            Some("credits.refill.interval"),
        ),
        (
            "PATCH",
            "/v1/keys/01a22121-829c-725b-8039-33e816e31bea".into(),
            Some("{}".into()),
            404,
            "not_found",
            None,
        ),
        (
            "DELETE",
            "/v1/keys/%ZZ".into(),
            None,
            404,
            "not_found",
            None,
        ),
        (
            "POST",
            format!("/v1/keys/{id}/rotate"),
            Some(r#"{"grace_seconds": -1}"#.into()),
            400,
            "invalid_field",
            Some("grace_seconds"),
        ),
        (
            "POST",
            format!("/v1/keys/{id}/rotate"),
            Some(r#"{"grace_seconds": 99999999999}"#.into()),
            422,
            "invalid_value",
            Some("grace_seconds"),
        ),
        (
            "POST",
            "/v1/keys/batch".into(),
            Some(r#"{"action": "explode", "ids": []}"#.into()),
            400,
            "invalid_field",
            Some("action"),
        ),
        (
            "POST",
            "/v1/keys/batch".into(),
            Some(r#"{"action": "enable"}"#.into()),
            400,
            "missing_field",
            Some("ids"),
        ),
        (
            "POST",
            "/v1/keys/verify".into(),
            Some("{}".into()),
            400,
            "missing_field",
            Some("key"),
        ),
        (
            "POST",
            "/v1/keys/verify".into(),
            Some(r#"{"key": 42}"#.into()),
            400,
            "invalid_field",
            Some("key"),
        ),
        (
            "POST",
            "/v1/keys/verify".into(),
            Some(r#"{"key": "x", "cost": -1}"#.into()),
            400,
            "invalid_field",
            Some("cost"),
        ),
        (
            "POST",
            "/v1/keys/verify".into(),
            Some(r#"{"key": "x", "cost": 9007199254740992}"#.into()),
            422,
            "invalid_value",
            Some("cost"),
        ),
        (
            "POST",
            "/v1/keys/verify".into(),
            Some(r#"{"key": "x", "ip": "999.1.1.1"}"#.into()),
            400,
            "invalid_request",
            Some("ip"),
        ),
        (
            "POST",
            "/v1/keys/verify".into(),
            Some(r#"{"key": "x", "extra": true}"#.into()),
            400,
            "invalid_field",
            Some("extra"),
        ),
        (
            "POST",
            "/v1/usage".into(),
            Some(
                r#"{"events": [{"key_id": "x", "provider": "p", "status": 200, "latency_ms": 1}]}"#
                    .into(),
            ),
            400,
            "invalid_request",
            Some("events[0].key_id"),
        ),
        (
            "POST",
            "/v1/usage".into(),
            Some(format!(
                r#"{{"events": [{{"key_id": "{id}", "provider": "p", "status": 200, "latency_ms": 1}}, {{"key_id": "{id}", "provider": "p", "status": 999, "latency_ms": 1}}]}}"#
            )),
            400,
            "invalid_request",
            Some("events[1].status"),
        ),
        (
            "POST",
            "/v1/usage".into(),
            Some(format!(
                r#"{{"events": [{{"key_id": "{id}", "status": 200, "latency_ms": 1}}]}}"#
            )),
            400,
            "invalid_request",
            Some("events[0].provider"),
        ),
        (
            "POST",
            "/v1/usage".into(),
            Some(format!(
                r#"{{"events": [{{"key_id": "{id}", "provider": "p", "status": 200, "latency_ms": -3}}]}}"#
            )),
            400,
            "invalid_request",
            Some("events[0].latency_ms"),
        ),
        (
            "POST",
            "/v1/usage".into(),
            Some(r#"{"events": "many"}"#.into()),
            400,
            "invalid_field",
            Some("events"),
        ),
        (
            "POST",
            "/v1/tokens".into(),
            Some(r#"{"name": "t", "role": "root"}"#.into()),
            400,
            "invalid_field",
            Some("role"),
        ),
        (
            "POST",
            "/v1/tokens".into(),
            Some(r#"{"name": "t"}"#.into()),
            400,
            "missing_field",
            Some("role"),
        ),
        (
            "POST",
            "/v1/tokens".into(),
            Some(r#"{"name": "t", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}"#.into()),
            400,
            "invalid_request",
            Some("expires_at"),
        ),
        (
            "DELETE",
            "/v1/tokens/nope".into(),
            None,
            404,
            "not_found",
            None,
        ),
        (
            "DELETE",
            "/v1/tokens/01a22121-829c-725b-8039-33e816e31bea".into(),
            None,
            404,
            "not_found",
            None,
        ),
        (
            "GET",
            "/v1/stats/overview?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z".into(),
            None,
            422,
            "invalid_value",
            Some("from"),
        ),
        (
            "GET",
            "/v1/stats/overview?key_id=zzz".into(),
            None,
            400,
            "invalid_request",
            Some("key_id"),
        ),
        (
            "GET",
            "/v1/audit?cursor=a1.x".into(),
            None,
            400,
            "invalid_request",
            Some("cursor"),
        ),
        (
            "GET",
            "/v1/audit?from=never".into(),
            None,
            400,
            "invalid_request",
            Some("from"),
        ),
        (
            "GET",
            "/v1/nothing-here".into(),
            None,
            404,
            "not_found",
            None,
        ),
        (
            "PUT",
            "/v1/keys".into(),
            Some("{}".into()),
            405,
            "method_not_allowed",
            None,
        ),
    ];
    for (method, path, body, status, code, field) in cases {
        let mut r = s.req(method, &path).token(&admin);
        if let Some(b) = &body {
            r = r.raw(b.as_bytes());
        }
        let resp = r.send().await;
        assert!(
            resp.status < 500,
            "{method} {path}: {} {}",
            resp.status,
            resp.text()
        );
        let p = resp.problem(status, code);
        assert_eq!(p["field"].as_str(), field, "{method} {path}: {p}");
        assert!(p["type"].is_string() && p["title"].is_string() && p["detail"].is_string());
    }

    // Credentials: missing, malformed, unknown, a key instead of a token, wrong scheme.
    let key = secrets.last().unwrap().clone();
    for auth in [
        None,
        Some("Bearer"),
        Some("Bearer nope"),
        Some("Basic Zm9vOmJhcg=="),
        Some(&*format!("Bearer {key}")),
        Some("Bearer kvt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ] {
        let mut r = s.req("GET", "/v1/keys");
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        let resp = r.send().await;
        resp.problem(401, "unauthorized");
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    }
    // Scheme is case-insensitive.
    assert_eq!(
        s.req("GET", "/v1/keys")
            .header("Authorization", &format!("bearer {admin}"))
            .send()
            .await
            .status,
        200
    );

    // A secret sent where it does not belong is never echoed back.
    let leak = s
        .req("POST", "/v1/keys")
        .token(&admin)
        .raw(format!(r#"{{"name": "a", "{admin}": 1}}"#).as_bytes())
        .send()
        .await;
    leak.problem(400, "invalid_field");
    assert_no_secrets(&leak.text(), &secrets);
    let leak = s
        .req("GET", &format!("/v1/keys?{key}=1"))
        .token(&admin)
        .send()
        .await;
    leak.problem(400, "invalid_request");
    assert_no_secrets(&leak.text(), &secrets);
    let leak = s
        .req("GET", &format!("/v1/keys/{key}"))
        .token(&admin)
        .send()
        .await;
    leak.problem(404, "not_found");
    assert_no_secrets(&leak.text(), &secrets);
    let leak = s
        .req("POST", "/v1/keys/verify")
        .token(&verifier)
        .raw(format!(r#"{{"key": "x", "cost": "{key}"}}"#).as_bytes())
        .send()
        .await;
    leak.problem(400, "invalid_field");
    assert_no_secrets(&leak.text(), &secrets);
    // …and a key in a query string is not accepted as credentials.
    s.req("GET", &format!("/v1/keys?api_key={admin}"))
        .send()
        .await
        .problem(401, "unauthorized");

    // Unauthenticated mutation attempts are audited.
    let audit: Value = s
        .req("GET", "/v1/audit?action=token.use")
        .token(&admin)
        .send()
        .await
        .json();
    assert!(!audit["items"].as_array().unwrap().is_empty());

    drop(s);
    assert_no_secrets(&logs(), &secrets);
}

/// U+0000, which PostgreSQL stores in no text or JSON column, is refused on every backend in
/// every field of a key (422 naming the field, never PostgreSQL's 503), so that what one
/// database holds another can restore; a whole float that JSON writes with an exponent comes
/// back as the integer PostgreSQL's `jsonb` makes of it, on both databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_refused_and_big_whole_floats_read_alike_on_both_databases() {
    let db = common::PgDb::create();
    for s in [
        Server::sqlite().await,
        Server::start(&common::Settings::postgres(&db)).await,
    ] {
        let op = s.token("operator").await;
        let cases = [
            (json!({"name": "a\u{0}b"}), "name"),
            (json!({"name": "a", "owner_id": "\u{0}"}), "owner_id"),
            (json!({"name": "a", "scopes": ["x", "y\u{0}"]}), "scopes[1]"),
            (
                json!({"name": "a", "metadata": {"k": {"deep": ["ok", "\u{0}"]}}}),
                "metadata.k.deep[1]",
            ),
            (
                json!({"name": "a", "metadata": {"a\u{0}": 1}}),
                "metadata.a\\0",
            ),
        ];
        for (body, field) in &cases {
            let r = s.req("POST", "/v1/keys").token(&op).json(body).send().await;
            let p = r.problem(422, "invalid_value");
            assert_eq!(p["field"], *field, "{p}");
            assert!(p["detail"].as_str().unwrap().contains("U+0000"), "{p}");
        }
        let created = s
            .req("POST", "/v1/keys")
            .token(&op)
            .raw(br#"{"name": "n", "metadata": {"big": 1e16, "neg": -2e17, "one": 1.0, "huge": 1e300}}"#)
            .send()
            .await;
        assert_eq!(created.status, 201, "{}", created.text());
        let id = created.json()["id"].as_str().unwrap().to_owned();
        let patch = s
            .req("PATCH", &format!("/v1/keys/{id}"))
            .token(&op)
            .json(&json!({"name": "\u{0}"}))
            .send()
            .await;
        assert_eq!(patch.problem(422, "invalid_value")["field"], "name");
        let got = s
            .req("GET", &format!("/v1/keys/{id}"))
            .token(&op)
            .send()
            .await
            .json();
        let m = &got["metadata"];
        assert_eq!(m["big"].as_u64(), Some(10_000_000_000_000_000), "{m}");
        assert_eq!(m["neg"].as_i64(), Some(-200_000_000_000_000_000), "{m}");
        assert!(m["one"].is_f64() && m["one"].as_f64() == Some(1.0), "{m}");
        assert_eq!(m["huge"].as_f64(), Some(1e300), "{m}");
        // Usage reports too, before anything is queued: an event PostgreSQL refuses would
        // otherwise be found only by the writer.
        let usage = s
            .req("POST", "/v1/usage")
            .token(&op)
            .json(&json!({"events": [
                {"key_id": id, "provider": "p", "status": 200, "latency_ms": 1},
                {"key_id": id, "provider": "p\u{0}", "status": 200, "latency_ms": 1}]}))
            .send()
            .await;
        assert_eq!(
            usage.problem(422, "invalid_value")["field"],
            "events[1].provider"
        );
    }
}
