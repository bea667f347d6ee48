//! End-to-end: details of CONTRACT §3 and §4 that are easy to get subtly wrong — `null` in a
//! PATCH, the exact path of a bad nested field, a short `SECRET_KEY`, a missing subcommand,
//! and a backup into a reserved (empty) file.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Env, assert_no_secrets};
use serde_json::{Value, json};

fn patch(s: &common::Server, token: &str, id: &str, body: Value) -> common::Resp {
    s.req("PATCH", &format!("/v1/keys/{id}"))
        .token(token)
        .json(&body)
        .send()
}

#[test]
fn patch_null_clears_every_clearable_field_and_refuses_it_for_name_and_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    let op = env.token("operator");
    let verifier = env.token("verifier");
    let s = env.serve();
    let created = s
        .req("POST", "/v1/keys")
        .token(&op)
        .json(&json!({
            "name": "full",
            "expires_at": "2999-01-01T00:00:00Z",
            "credits": {"remaining": 5},
            "ratelimits": [{"name": "burst", "limit": 3, "period_ms": 60000}],
            "scopes": ["read"],
            "ip_allowlist": ["10.0.0.0/8"],
            "metadata": {"team": "a"},
            "rotation": {"every": "30d", "grace": "1h"}
        }))
        .send();
    assert_eq!(created.status, 201, "{}", created.text());
    let created = created.json();
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["key"].as_str().unwrap().to_owned();

    // With an allow-list and no caller IP the key is FORBIDDEN: the allow-list is in force.
    let v = s
        .req("POST", "/v1/keys/verify")
        .token(&verifier)
        .json(&json!({"key": key}))
        .send()
        .json();
    assert_eq!(v["code"], "FORBIDDEN", "{v}");

    let r = patch(
        &s,
        &op,
        &id,
        json!({
            "expires_at": null,
            "credits": null,
            "ratelimits": null,
            "scopes": null,
            "ip_allowlist": null,
            "metadata": null,
            "rotation": null
        }),
    );
    assert_eq!(r.status, 200, "null clears a field: {}", r.text());
    let k = r.json();
    assert_eq!(k["expires_at"], Value::Null);
    assert_eq!(k["credits"], Value::Null);
    assert_eq!(k["ratelimits"], json!([]));
    assert_eq!(k["scopes"], json!([]));
    assert_eq!(k["ip_allowlist"], json!([]));
    assert_eq!(k["metadata"], json!({}));
    assert_eq!(k["rotation"], Value::Null);
    assert_eq!(k["name"], "full");
    assert_eq!(k["enabled"], true);
    // The stored key agrees, and verifies now without a caller IP and without limits.
    let got = s
        .req("GET", &format!("/v1/keys/{id}"))
        .token(&op)
        .send()
        .json();
    assert_eq!(got, k);
    let v = s
        .req("POST", "/v1/keys/verify")
        .token(&verifier)
        .json(&json!({"key": key}))
        .send()
        .json();
    assert_eq!(v["code"], "VALID", "{v}");
    assert_eq!(v["ratelimits"], json!([]));
    assert_eq!(v["credits"], Value::Null);

    for field in ["name", "enabled"] {
        let p = patch(&s, &op, &id, json!({ field: null })).problem(400, "invalid_field");
        assert_eq!(p["field"], field, "{p}");
    }
    drop(s);
    assert_no_secrets(&env.transcript.lock().unwrap(), &[op, verifier, key]);
}

#[test]
fn a_bad_nested_field_is_named_by_its_whole_path() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    let op = env.token("operator");
    let s = env.serve();
    let id = s
        .req("POST", "/v1/keys")
        .token(&op)
        .json(&json!({"name": "k"}))
        .send()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cases = [
        (
            json!({"ratelimits": [{"name": "m", "limit": 0, "period_ms": 1000}]}),
            "ratelimits[0].limit",
        ),
        (
            json!({"ratelimits": [
                {"name": "m", "limit": 1, "period_ms": 1000},
                {"name": "n", "limit": 1, "period_ms": 31_536_000_001_u64}
            ]}),
            "ratelimits[1].period_ms",
        ),
        (
            json!({"ratelimits": [{"name": "m", "limit": 1}]}),
            "ratelimits[0].period_ms",
        ),
        (
            json!({"ip_allowlist": ["::1", "10.0.0.0/8", "nope"]}),
            "ip_allowlist[2]",
        ),
        (
            json!({"credits": {"remaining": 1, "refill": {"interval": "daily"}}}),
            "credits.refill.amount",
        ),
        (json!({"rotation": {"grace": "1h"}}), "rotation.every"),
    ];
    for (body, field) in cases {
        let p = patch(&s, &op, &id, body.clone()).problem(400, "invalid_field");
        assert_eq!(p["field"], field, "{body} → {p}");
        // The member named in the field is not repeated in the detail.
        let detail = p["detail"].as_str().unwrap();
        assert!(!detail.starts_with("limit:"), "{detail}");
    }
    // The same paths for a key being created.
    let p = s
        .req("POST", "/v1/keys")
        .token(&op)
        .json(&json!({"name": "x", "ratelimits": [{"name": "m", "limit": 2_000_000_001_u64, "period_ms": 1000}]}))
        .send()
        .problem(400, "invalid_field");
    assert_eq!(p["field"], "ratelimits[0].limit", "{p}");
    // A top-level field keeps its own name.
    let p = s
        .req("POST", "/v1/keys")
        .token(&op)
        .json(&json!({"name": "x", "prefix": "Nope"}))
        .send()
        .problem(400, "invalid_field");
    assert_eq!(p["field"], "prefix", "{p}");
}

#[test]
fn any_secret_key_the_deployment_sets_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path()).with("SECRET_KEY", "test-secret");
    let o = env.run(&["migrate"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let pw = "correct horse battery staple";
    let o = env.run_with(
        &["create-admin", "--username", "alice", "--password-stdin"],
        Some(&format!("{pw}\n")),
        false,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let s = env.serve();
    let r = s.sign_in("alice", pw);
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = r
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let page = s.req("GET", "/admin").header("Cookie", &cookie).send();
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains(r#"data-testid="signout""#) && page.text().contains("alice"),
        "{}",
        page.text()
    );
    drop(s);
    let t = env.transcript.lock().unwrap().clone();
    assert!(t.contains("SECRET_KEY is shorter"), "{t}");
    assert!(!t.contains("test-secret"), "{t}");
    assert!(!t.contains(pw));
}

#[test]
fn a_missing_subcommand_is_a_one_line_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    for args in [&[][..], &["keys"][..], &["token"][..], &["audit"][..]] {
        let o = env.run(args);
        o.assert_one_line_error(&format!("keyvault {args:?}"));
        assert_eq!(o.code, 2, "{o:?}");
        assert!(o.stderr.contains("subcommand"), "{o:?}");
    }
    // Asking for help is not an error.
    let o = env.run(&["keys", "--help"]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("rotate"));
}

#[test]
fn backup_replaces_an_empty_reserved_file_but_never_an_earlier_backup() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    let key = env.run_secret(&["keys", "create", "--name", "k"]);
    assert_eq!(key.code, 0, "{}", key.stderr);
    let file = dir.path().join("reserved.ndjson");
    std::fs::write(&file, "").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = env.run(&["backup", "--out", file.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.lines().count() >= 3, "{text}");
    assert!(!text.contains(key.stdout.trim()));
    env.run(&["backup", "--out", file.to_str().unwrap()])
        .assert_one_line_error("backup over an earlier backup");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}
