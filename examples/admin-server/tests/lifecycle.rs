//! End-to-end: graceful shutdown, backup and restore on SQLite.

mod common;

use std::{os::unix::fs::PermissionsExt, time::Duration};

use common::{Env, assert_no_secrets, eventually};
use serde_json::{Value, json};

#[test]
fn sigterm_finishes_and_flushes_usage() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    let admin = env.token("admin");
    let s = env.serve();
    let k = s
        .req("POST", "/v1/keys")
        .token(&admin)
        .json(&json!({"name": "k"}))
        .send()
        .json();
    let id = k["id"].as_str().unwrap();
    let events: Vec<Value> = (0..50)
        .map(|i| json!({"key_id": id, "provider": "demo", "status": 200, "latency_ms": i}))
        .collect();
    let r = s
        .req("POST", "/v1/usage")
        .token(&admin)
        .json(&json!({"events": events}))
        .send();
    assert_eq!(r.status, 202);
    // Stop at once: the events may still be buffered; shutdown must write them.
    assert_eq!(s.terminate(), 0, "exit status after SIGTERM");
    let s = env.serve();
    let stats = s
        .req("GET", "/v1/stats/overview")
        .token(&admin)
        .send()
        .json();
    assert_eq!(stats["calls"], 50, "usage lost on shutdown: {stats}");
    drop(s);
    let k = k["key"].as_str().unwrap().to_owned();
    assert_no_secrets(&env.transcript.lock().unwrap(), &[admin, k]);
}

#[test]
fn backup_then_restore_into_a_fresh_database_keeps_keys_tokens_and_balances() {
    let dir = tempfile::tempdir().unwrap();
    let src = Env::sqlite(&dir.path().join("src"));
    std::fs::create_dir_all(&src.dir).unwrap();
    let admin = src.token("admin");
    let verifier = src.token("verifier");
    let pw = "a long admin passphrase";
    assert_eq!(
        src.run_with(
            &["create-admin", "--username", "root", "--password-stdin"],
            Some(pw),
            false
        )
        .code,
        0
    );
    let s = src.serve();
    let mut secrets = vec![admin.clone(), verifier.clone(), pw.to_owned()];
    let mut keys = Vec::new();
    for (i, credits) in [Some(10u64), Some(3), None].into_iter().enumerate() {
        let mut body = json!({"name": format!("k{i}"), "ratelimits": [{"name": "m", "limit": 100, "period_ms": 60000}]});
        if let Some(c) = credits {
            body["credits"] =
                json!({"remaining": c, "refill": {"interval": "monthly", "amount": c}});
        }
        let k = s
            .req("POST", "/v1/keys")
            .token(&admin)
            .json(&body)
            .send()
            .json();
        let key = k["key"].as_str().unwrap().to_owned();
        secrets.push(key.clone());
        keys.push((k["id"].as_str().unwrap().to_owned(), key));
    }
    let verify = |s: &common::Server, key: &str, cost: u64| {
        s.req("POST", "/v1/keys/verify")
            .token(&verifier)
            .json(&json!({"key": key, "cost": cost}))
            .send()
            .json()
    };
    // Spend some: k0 10 → 6, k1 3 → 0.
    assert_eq!(verify(&s, &keys[0].1, 4)["credits"]["remaining"], 6);
    assert_eq!(verify(&s, &keys[1].1, 3)["credits"]["remaining"], 0);
    // A rotated key shares its predecessor's balance.
    let rot = s
        .req("POST", &format!("/v1/keys/{}/rotate", keys[0].0))
        .token(&admin)
        .send()
        .json();
    let rotated = rot["key"].as_str().unwrap().to_owned();
    secrets.push(rotated.clone());
    assert_eq!(verify(&s, &rotated, 1)["credits"]["remaining"], 5);
    let revoked = s
        .req("POST", "/v1/tokens")
        .token(&admin)
        .json(&json!({"name": "old", "role": "viewer"}))
        .send()
        .json();
    secrets.push(revoked["token"].as_str().unwrap().to_owned());
    assert_eq!(
        s.req(
            "DELETE",
            &format!("/v1/tokens/{}", revoked["id"].as_str().unwrap())
        )
        .token(&admin)
        .send()
        .status,
        204
    );
    let src_audit = s
        .req("GET", "/v1/audit?limit=1")
        .token(&admin)
        .send()
        .json();

    let file = dir.path().join("backup.ndjson");
    let o = src.run(&["backup", "--out", file.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert_no_secrets(&text, &secrets);
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "header");
    // Version 2: users carry `enabled` (version 1 files are still restored, below).
    assert_eq!(first["version"], 2);
    assert!(
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .any(|l| l["type"] == "user" && l["enabled"] == true),
        "users are backed up with whether they are enabled"
    );
    src.run(&["backup", "--out", file.to_str().unwrap()])
        .assert_one_line_error("backup over an existing file");
    // A database holding data refuses a restore.
    src.run(&["restore", "--in", file.to_str().unwrap()])
        .assert_one_line_error("restore into a used database");
    // A truncated backup is refused.
    let cut = dir.path().join("cut.ndjson");
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&cut, lines[..lines.len() - 2].join("\n")).unwrap();
    drop(s);

    let dst = Env::sqlite(&dir.path().join("dst"));
    std::fs::create_dir_all(&dst.dir).unwrap();
    dst.run(&["restore", "--in", cut.to_str().unwrap()])
        .assert_one_line_error("truncated backup");
    // Backups altered after their keys' lines are refused before anything is written: the
    // good backup still restores below, into a database that must be empty.
    let altered = |name: &str, edit: &dyn Fn(&mut Vec<Value>)| {
        let mut lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        edit(&mut lines);
        let path = dir.path().join(name);
        let body: Vec<String> = lines.iter().map(Value::to_string).collect();
        std::fs::write(&path, body.join("\n") + "\n").unwrap();
        path
    };
    let edited_audit = altered("edited.ndjson", &|lines| {
        let last = lines.iter().rposition(|l| l["type"] == "audit").unwrap();
        lines[last]["actor"] = json!("someone else");
    });
    let o = dst.run(&["restore", "--in", edited_audit.to_str().unwrap()]);
    o.assert_one_line_error("altered audit chain");
    assert!(o.stderr.contains("audit chain"), "{}", o.stderr);
    let bad_digest = altered("digest.ndjson", &|lines| {
        let last = lines.iter().rposition(|l| l["type"] == "key").unwrap();
        lines[last]["digest"] = json!("not a digest");
    });
    let o = dst.run(&["restore", "--in", bad_digest.to_str().unwrap()]);
    o.assert_one_line_error("malformed key digest");
    assert!(o.stderr.contains("key digest"), "{}", o.stderr);
    let o = dst.run(&["restore", "--in", file.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(dst.run(&["audit", "verify"]).code, 0);
    let s = dst.serve();
    // Every key verifies with its remaining credits; tokens work; revoked ones do not.
    assert_eq!(verify(&s, &keys[0].1, 1)["credits"]["remaining"], 4);
    assert_eq!(verify(&s, &rotated, 1)["credits"]["remaining"], 3);
    assert_eq!(verify(&s, &keys[1].1, 1)["code"], "USAGE_EXCEEDED");
    let v = verify(&s, &keys[2].1, 1);
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["ratelimits"][0]["name"], "m");
    let g = s
        .req("GET", &format!("/v1/keys/{}", keys[1].0))
        .token(&admin)
        .send()
        .json();
    assert_eq!(g["credits"]["remaining"], 0);
    assert_eq!(
        g["credits"]["refill"]["amount"], 3,
        "the configuration is restored, not the balance"
    );
    s.req("GET", "/v1/keys")
        .token(&secrets[secrets.len() - 1])
        .send()
        .problem(401, "unauthorized");
    // The audit chain is the same chain.
    let a = s
        .req("GET", "/v1/audit?action=token.revoke")
        .token(&admin)
        .send()
        .json();
    assert_eq!(a["items"][0]["hash"], src_audit["items"][0]["hash"]);
    // The restored admin user exists: creating it again fails.
    dst.run_with(
        &["create-admin", "--username", "root", "--password-stdin"],
        Some(pw),
        false,
    )
    .assert_one_line_error("restored user exists");
    drop(s);

    // A version 1 backup (users without `enabled`) restores too: its users are enabled.
    let v1 = altered("v1.ndjson", &|lines| {
        lines[0]["version"] = json!(1);
        for l in lines.iter_mut().filter(|l| l["type"] == "user") {
            l.as_object_mut().unwrap().remove("enabled");
        }
    });
    let old = Env::sqlite(&dir.path().join("old"));
    std::fs::create_dir_all(&old.dir).unwrap();
    let o = old.run(&["restore", "--in", v1.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let s = old.serve();
    assert_eq!(verify(&s, &keys[2].1, 1)["code"], "VALID");
    drop(s);
    old.run_with(
        &["create-admin", "--username", "root", "--password-stdin"],
        Some(pw),
        false,
    )
    .assert_one_line_error("the user of a version 1 backup is restored");
    let unknown = altered("v9.ndjson", &|lines| lines[0]["version"] = json!(9));
    let fresh = Env::sqlite(&dir.path().join("fresh"));
    std::fs::create_dir_all(&fresh.dir).unwrap();
    let o = fresh.run(&["restore", "--in", unknown.to_str().unwrap()]);
    o.assert_one_line_error("an unknown version");
    assert!(o.stderr.contains("version 9"), "{}", o.stderr);

    let mut all = src.transcript.lock().unwrap().clone();
    all.push_str(&dst.transcript.lock().unwrap());
    all.push_str(&old.transcript.lock().unwrap());
    assert_no_secrets(&all, &secrets);
    let _ = eventually(Duration::ZERO, || true);
}

#[test]
fn rotate_due_hands_each_new_key_out_once() {
    // A key whose rotation is due: made through a backup whose `next_rotation_at` is moved
    // into the past (the policy's shortest period is a minute).
    let dir = tempfile::tempdir().unwrap();
    let src = Env::sqlite(&dir.path().join("src"));
    std::fs::create_dir_all(&src.dir).unwrap();
    let o = src.run_secret(&[
        "keys",
        "create",
        "--name",
        "auto",
        "--credits",
        "5",
        "--json",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let created: Value = serde_json::from_str(&o.stdout).unwrap();
    let old_key = created["key"].as_str().unwrap().to_owned();
    let old_id = created["id"].as_str().unwrap().to_owned();
    let file = dir.path().join("b.ndjson");
    assert_eq!(
        src.run(&["backup", "--out", file.to_str().unwrap()]).code,
        0
    );
    let text: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            if v["type"] == "key" {
                v["record"]["rotation"] = json!({"every": "30d", "grace": "1h"});
                v["record"]["next_rotation_at"] = json!("2020-01-01T00:00:00Z");
            }
            v.to_string()
        })
        .collect();
    let due = dir.path().join("due.ndjson");
    std::fs::write(&due, text.join("\n")).unwrap();

    let dst = Env::sqlite(&dir.path().join("dst"));
    std::fs::create_dir_all(&dst.dir).unwrap();
    assert_eq!(dst.run(&["restore", "--in", due.to_str().unwrap()]).code, 0);
    let out = dir.path().join("rotated.ndjson");
    let o = dst.run(&["rotate-due", "--out", out.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["old_id"], old_id.as_str());
    let new_key = lines[0]["key"].as_str().unwrap().to_owned();
    // Nothing is due any more: a second run hands out nothing, on standard output too.
    let again = dst.run(&["rotate-due"]);
    assert_eq!(again.code, 0);
    assert!(again.stdout.trim().is_empty(), "{}", again.stdout);

    let admin = dst.token("admin");
    let s = dst.serve();
    let verify = |k: &str| {
        s.req("POST", "/v1/keys/verify")
            .token(&admin)
            .json(&json!({"key": k}))
            .send()
            .json()
    };
    let v = verify(&new_key);
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["credits"]["remaining"], 4);
    assert_eq!(
        verify(&old_key)["credits"]["remaining"],
        3,
        "old and new share one balance"
    );
    drop(s);
    let mut all = src.transcript.lock().unwrap().clone();
    all.push_str(&dst.transcript.lock().unwrap());
    assert_no_secrets(&all, &[old_key, new_key, admin]);
}

#[test]
fn json_logs_are_one_object_per_line_with_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    let admin = env.token("admin");
    // Only the server's lines are read below.
    env.transcript.lock().unwrap().clear();
    let env = env.with("KEYVAULT_LOG_FORMAT", "json");
    let s = env.serve();
    let k = s
        .req("POST", "/v1/keys")
        .token(&admin)
        .header("X-Request-Id", "json-log-1")
        .json(&json!({"name": "k"}))
        .send();
    assert_eq!(k.status, 201);
    let key = k.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(s.terminate(), 0);
    let transcript = env.transcript.lock().unwrap().clone();
    let lines: Vec<Value> = transcript
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        for f in ["ts", "level", "target", "message"] {
            assert!(l[f].is_string(), "{f} missing: {l}");
        }
    }
    let access = lines
        .iter()
        .find(|l| l["message"] == "request" && l["request_id"] == "json-log-1")
        .unwrap_or_else(|| panic!("no access record with the request id: {transcript}"));
    assert_eq!(access["route"], "/v1/keys");
    assert_eq!(access["status"], 201);
    assert_no_secrets(&transcript, &[key]);
}

#[test]
fn a_bad_log_format_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path()).with("KEYVAULT_LOG_FORMAT", "yaml");
    let o = env.run(&["migrate"]);
    o.assert_one_line_error("a bad KEYVAULT_LOG_FORMAT");
    assert!(o.stderr.contains("KEYVAULT_LOG_FORMAT"), "{}", o.stderr);
}

#[test]
fn a_restored_backup_keeps_sealed_successors_claimable_and_fail_modes() {
    let dir = tempfile::tempdir().unwrap();
    let src = Env::sqlite(&dir.path().join("src")).with("KEYVAULT_JOB_INTERVAL", "1s");
    std::fs::create_dir_all(&src.dir).unwrap();
    let admin = src.token("admin");
    let s = src.serve();
    let k = s
        .req("POST", "/v1/keys")
        .token(&admin)
        .json(
            &json!({"name": "auto", "rotation": {"every": "1s", "grace": "1h"},
            "ratelimits": [{"name": "m", "limit": 5, "period_ms": 1000, "fail_mode": "open"}]}),
        )
        .send()
        .json();
    let (id, old_key) = (
        k["id"].as_str().unwrap().to_owned(),
        k["key"].as_str().unwrap().to_owned(),
    );
    let rotated = eventually(Duration::from_secs(5), || {
        s.req("GET", &format!("/v1/keys/{id}"))
            .token(&admin)
            .send()
            .json()["successor"]
            == "sealed"
    });
    assert!(rotated.is_some(), "not rotated by serve");
    assert_eq!(s.terminate(), 0);

    let file = dir.path().join("backup.ndjson");
    let o = src.run(&["backup", "--out", file.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_no_secrets(&text, &[admin.clone(), old_key.clone()]);
    assert!(
        text.contains("\"seal_key\""),
        "no public keys in the backup"
    );
    assert!(
        text.contains("\"state\":\"sealed\""),
        "no sealed successor in the backup"
    );

    // Restored elsewhere with the jobs off: the successor opens with the old key, once.
    let dst = Env::sqlite(&dir.path().join("dst")).with("KEYVAULT_AUTO_ROTATE", "off");
    std::fs::create_dir_all(&dst.dir).unwrap();
    let o = dst.run(&["restore", "--in", file.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let d = dst.serve();
    let claim = || {
        d.req("POST", "/v1/keys/successor")
            .header("authorization", &format!("Bearer {old_key}"))
            .send()
    };
    let r = claim();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["key"].as_str().unwrap().starts_with("kv_"));
    claim().problem(410, "successor_claimed");
    let restored = d
        .req("GET", &format!("/v1/keys/{id}"))
        .token(&admin)
        .send()
        .json();
    assert_eq!(restored["ratelimits"][0]["fail_mode"], "open", "{restored}");
    assert_eq!(d.terminate(), 0);
}
