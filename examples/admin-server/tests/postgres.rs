//! End-to-end on PostgreSQL + Redis: two instances sharing one database and one Redis, and the
//! SQLite → PostgreSQL migration path through backup and restore. (Every route is walked
//! in-process by keyvault-admin's tests.)

mod common;

use std::{sync::Arc, thread, time::Duration};

use common::{Env, PgDb, assert_no_secrets, eventually};
use serde_json::json;

#[test]
fn two_instances_spend_exactly_and_hear_each_others_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let env = Env::postgres(dir.path(), &db);
    let admin = env.token("admin");
    let a = Arc::new(env.serve());
    let b = Arc::new(env.serve());
    let mut secrets = vec![admin.clone()];
    let k = a
        .req("POST", "/v1/keys")
        .token(&admin)
        .json(&json!({"name": "shared", "credits": {"remaining": 20}}))
        .send()
        .json();
    let key = k["key"].as_str().unwrap().to_owned();
    let id = k["id"].as_str().unwrap().to_owned();
    secrets.push(key.clone());
    let l = a
        .req("POST", "/v1/keys")
        .token(&admin)
        .json(&json!({"name": "limited", "ratelimits": [{"name": "m", "limit": 10, "period_ms": 3600000}]}))
        .send()
        .json();
    let limited = l["key"].as_str().unwrap().to_owned();
    secrets.push(limited.clone());

    // 2 instances × 2 threads × 15 verifications: exactly 20 credits and 10 tokens are given.
    let run = |key: String| {
        let mut handles = Vec::new();
        for (i, server) in [a.clone(), b.clone(), a.clone(), b.clone()]
            .into_iter()
            .enumerate()
        {
            let (key, admin) = (key.clone(), admin.clone());
            handles.push(thread::spawn(move || {
                let _ = i;
                (0..15)
                    .filter(|_| {
                        let v = server
                            .req("POST", "/v1/keys/verify")
                            .token(&admin)
                            .json(&json!({"key": key}))
                            .send();
                        assert_eq!(v.status, 200, "{}", v.text());
                        v.json()["valid"] == true
                    })
                    .count()
            }));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum::<usize>()
    };
    assert_eq!(
        run(key.clone()),
        20,
        "credits over- or under-admitted across instances"
    );
    assert_eq!(
        run(limited.clone()),
        10,
        "rate limit over- or under-admitted across instances"
    );
    let v = b
        .req("POST", "/v1/keys/verify")
        .token(&admin)
        .json(&json!({"key": key, "cost": 0}))
        .send()
        .json();
    assert_eq!(v["credits"]["remaining"], 0);

    // A disable through one instance is honoured by the other within a second.
    let p = a
        .req("PATCH", &format!("/v1/keys/{id}"))
        .token(&admin)
        .json(&json!({"enabled": false, "credits": {"remaining": 5}}))
        .send();
    assert_eq!(p.status, 200, "{}", p.text());
    let seen = eventually(Duration::from_secs(1), || {
        b.req("POST", "/v1/keys/verify")
            .token(&admin)
            .json(&json!({"key": key, "cost": 0}))
            .send()
            .json()["code"]
            == "DISABLED"
    });
    assert!(
        seen.is_some(),
        "instance B still accepts a key disabled on A after 1 s"
    );
    // A credit reset on one instance is seen by the other.
    a.req("PATCH", &format!("/v1/keys/{id}"))
        .token(&admin)
        .json(&json!({"enabled": true}))
        .send();
    let seen = eventually(Duration::from_secs(1), || {
        let v = b
            .req("POST", "/v1/keys/verify")
            .token(&admin)
            .json(&json!({"key": key, "cost": 0}))
            .send()
            .json();
        v["code"] == "VALID" && v["credits"]["remaining"] == 5
    });
    assert!(seen.is_some(), "instance B did not see the new balance");

    // A token revoked on one instance is refused by the other within a second.
    let t = a
        .req("POST", "/v1/tokens")
        .token(&admin)
        .json(&json!({"name": "v", "role": "viewer"}))
        .send()
        .json();
    let viewer = t["token"].as_str().unwrap().to_owned();
    secrets.push(viewer.clone());
    assert_eq!(b.req("GET", "/v1/keys").token(&viewer).send().status, 200);
    assert_eq!(
        a.req(
            "DELETE",
            &format!("/v1/tokens/{}", t["id"].as_str().unwrap())
        )
        .token(&admin)
        .send()
        .status,
        204
    );
    let gone = eventually(Duration::from_secs(1), || {
        b.req("GET", "/v1/keys").token(&viewer).send().status == 401
    });
    assert!(
        gone.is_some(),
        "instance B accepts a revoked token after 1 s"
    );

    // Usage reported to both, with a shared request id, is counted once.
    for s in [&a, &b] {
        let r = s.req("POST", "/v1/usage").token(&admin).json(&json!({"events": [
            {"key_id": id, "provider": "openai", "status": 200, "latency_ms": 3, "request_id": "same"}
        ]})).send();
        assert_eq!(r.status, 202);
    }
    let counted = eventually(Duration::from_secs(5), || {
        a.req("GET", "/v1/stats/overview")
            .token(&admin)
            .send()
            .json()["calls"]
            == 1
    });
    assert!(counted.is_some());
    thread::sleep(Duration::from_millis(700));
    assert_eq!(
        b.req("GET", "/v1/stats/overview")
            .token(&admin)
            .send()
            .json()["calls"],
        1
    );

    assert_eq!(env.run(&["audit", "verify"]).code, 0);
    drop(a);
    drop(b);
    assert_no_secrets(&env.transcript.lock().unwrap(), &secrets);
}

#[test]
fn a_sqlite_backup_restores_into_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let src = Env::sqlite(dir.path());
    let admin = src.token("admin");
    let mut secrets = vec![admin.clone()];
    let s = src.serve();
    let k = s
        .req("POST", "/v1/keys")
        .token(&admin)
        .json(&json!({"name": "m", "credits": {"remaining": 9}}))
        .send()
        .json();
    let key = k["key"].as_str().unwrap().to_owned();
    secrets.push(key.clone());
    let v = s
        .req("POST", "/v1/keys/verify")
        .token(&admin)
        .json(&json!({"key": key, "cost": 4}))
        .send()
        .json();
    assert_eq!(v["credits"]["remaining"], 5);
    drop(s);
    let file = dir.path().join("b.ndjson");
    assert_eq!(
        src.run(&["backup", "--out", file.to_str().unwrap()]).code,
        0
    );

    let db = PgDb::create();
    let dst = Env::postgres(dir.path(), &db);
    assert_eq!(dst.run(&["migrate"]).code, 0);
    let o = dst.run(&["restore", "--in", file.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    dst.run(&["restore", "--in", file.to_str().unwrap()])
        .assert_one_line_error("second restore");
    assert_eq!(dst.run(&["audit", "verify"]).code, 0);
    let v = verify_once(&dst, &admin, &key);
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["credits"]["remaining"], 4);
    let mut all = src.transcript.lock().unwrap().clone();
    all.push_str(&dst.transcript.lock().unwrap());
    assert_no_secrets(&all, &secrets);
}

/// A redis-server of the test's own whose default user may not run `DEL`, so that clearing a
/// cached balance fails while everything else works.
struct RedisWithoutDel {
    child: std::process::Child,
    url: String,
}

impl RedisWithoutDel {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args([
                "--user", "default", "on", "nopass", "~*", "&*", "+@all", "-del",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let up = eventually(Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up.is_some(), "the test's redis-server did not start");
        Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        }
    }
}

impl Drop for RedisWithoutDel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A restore that cannot clear a cached balance in Redis fails before it writes anything, so
/// that once Redis works the same backup restores into the same, still empty, database.
#[test]
fn a_restore_that_redis_refuses_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = Env::sqlite(dir.path());
    let admin = src.token("admin");
    let s = src.serve();
    let k = s
        .req("POST", "/v1/keys")
        .token(&admin)
        .json(&json!({"name": "c", "credits": {"remaining": 3}}))
        .send()
        .json();
    let key = k["key"].as_str().unwrap().to_owned();
    drop(s);
    let file = dir.path().join("b.ndjson");
    let file = file.to_str().unwrap();
    assert_eq!(src.run(&["backup", "--out", file]).code, 0);

    let db = PgDb::create();
    let redis = RedisWithoutDel::start();
    let refused = Env::postgres(dir.path(), &db).with("REDIS_URL", &redis.url);
    assert_eq!(refused.run(&["migrate"]).code, 0);
    let o = refused.run(&["restore", "--in", file]);
    o.assert_one_line_error("restore while Redis refuses DEL");
    assert!(o.stderr.contains("redis"), "{}", o.stderr);
    assert_eq!(
        o.stderr.matches("no permissions").count(),
        1,
        "{}",
        o.stderr
    );

    let dst = Env::postgres(dir.path(), &db);
    let o = dst.run(&["restore", "--in", file]);
    assert_eq!(o.code, 0, "the database was left non-empty: {}", o.stderr);
    let v = verify_once(&dst, &admin, &key);
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["credits"]["remaining"], 2);
}

/// Verifies `key` once (cost 1) on a server started on `env`, and returns its answer.
fn verify_once(env: &Env, token: &str, key: &str) -> serde_json::Value {
    let s = env.serve();
    s.req("POST", "/v1/keys/verify")
        .token(token)
        .json(&json!({"key": key}))
        .send()
        .json()
}
