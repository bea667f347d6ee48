//! End-to-end: the commands, their errors, and what they print.

mod common;

use std::{os::unix::fs::PermissionsExt, time::Duration};

use common::{Env, assert_no_secrets, eventually};
use serde_json::{Value, json};

#[test]
fn help_and_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    let help = env.run(&["--help"]);
    assert_eq!(help.code, 0);
    for cmd in [
        "serve",
        "migrate",
        "create-admin",
        "reset-admin-password",
        "token",
        "keys",
        "rotate-due",
        "cleanup-expired",
        "backup",
        "restore",
        "audit",
        "alerts",
        "notifiers",
    ] {
        assert!(help.stdout.contains(cmd), "{cmd} missing from --help");
    }
    for sub in [
        &["keys", "create", "--help"][..],
        &["token", "--help"],
        &["backup", "--help"],
        &["serve", "--help"],
    ] {
        let o = env.run(sub);
        assert_eq!(o.code, 0, "{sub:?}");
        assert!(o.stdout.contains("Usage"), "{sub:?}");
    }
    let serve_help = env.run(&["serve", "--help"]).stdout;
    for var in [
        "KEYVAULT_BIND",
        "DATABASE_URL",
        "REDIS_URL",
        "SECRET_KEY",
        "KEYVAULT_PEPPER",
        "KEYVAULT_TRUSTED_PROXIES",
    ] {
        assert!(serve_help.contains(var), "{var} not documented in --help");
    }

    let bad: Vec<(&[&str], &str)> = vec![
        (&["frobnicate"], "unknown command"),
        (&["keys", "create"], "missing --name"),
        (
            &["keys", "create", "--name", "x", "--rate-limit", "0/1s"],
            "zero limit",
        ),
        (
            &["keys", "create", "--name", "x", "--rate-limit", "5"],
            "bad rate limit",
        ),
        (
            &["keys", "create", "--name", "x", "--prefix", "kvt"],
            "reserved prefix",
        ),
        (
            &["keys", "create", "--name", "x", "--prefix", "Bad"],
            "bad prefix",
        ),
        (
            &["keys", "create", "--name", "x", "--credits", "-1"],
            "negative credits",
        ),
        (
            &[
                "keys",
                "create",
                "--name",
                "x",
                "--credits",
                "9007199254740992",
            ],
            "credits too large",
        ),
        (
            &["keys", "create", "--name", "x", "--expires-in", "soon"],
            "bad duration",
        ),
        (&["keys", "show", "nope"], "bad id"),
        (
            &["keys", "show", "01a22121-829c-725b-8039-33e816e31bea"],
            "unknown id",
        ),
        (
            &["keys", "disable", "01a22121-829c-725b-8039-33e816e31bea"],
            "unknown id",
        ),
        (
            &[
                "keys",
                "rotate",
                "01a22121-829c-725b-8039-33e816e31bea",
                "--grace",
                "1x",
            ],
            "bad grace",
        ),
        (
            &["token", "create", "--name", "x", "--role", "root"],
            "bad role",
        ),
        (&["token", "revoke", "nope"], "unknown token"),
        (&["cleanup-expired", "--older-than", "-1d"], "bad duration"),
        (
            &["--database-url", "mysql://x", "migrate"],
            "bad database url",
        ),
        (&["--trusted-proxies", "10.0.0.0/99", "migrate"], "bad CIDR"),
        (
            &["--redis-url", "redis://127.0.0.1:1", "migrate"],
            "Redis unreachable",
        ),
        (&["--redis-url", "http://x", "migrate"], "not a Redis URL"),
        (&["serve", "--bind", "nowhere"], "bad bind address"),
        (
            &["restore", "--in", "/nonexistent/backup.ndjson"],
            "missing file",
        ),
        (
            &["create-admin", "--username", "al ice", "--password-stdin"],
            "bad username",
        ),
    ];
    for (args, what) in bad {
        let o = env.run_with(args, Some("correct horse battery\n"), false);
        o.assert_one_line_error(what);
    }
    // Passwords: too short, from stdin; never from argv; a prompt needs a terminal.
    let o = env.run_with(
        &["create-admin", "--username", "alice", "--password-stdin"],
        Some("short\n"),
        false,
    );
    o.assert_one_line_error("short password");
    assert!(o.stderr.contains("12"), "{}", o.stderr);
    let o = env.run(&[
        "create-admin",
        "--username",
        "alice",
        "--password",
        "correct horse battery",
    ]);
    o.assert_one_line_error("password in argv");
    let o = env.run(&["create-admin", "--username", "alice"]);
    o.assert_one_line_error("no terminal to prompt on");
    let pw = "correct horse battery staple";
    let o = env.run_with(
        &["create-admin", "--username", "alice", "--password-stdin"],
        Some(&format!("{pw}\n")),
        false,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = env.run_with(
        &["create-admin", "--username", "alice", "--password-stdin"],
        Some(&format!("{pw}\n")),
        false,
    );
    o.assert_one_line_error("existing user");
    let o = env.run_with(
        &[
            "reset-admin-password",
            "--username",
            "bob",
            "--password-stdin",
        ],
        Some(&format!("{pw}\n")),
        false,
    );
    o.assert_one_line_error("unknown user");
    let o = env.run_with(
        &[
            "reset-admin-password",
            "--username",
            "alice",
            "--password-stdin",
        ],
        Some("another long passphrase\n"),
        false,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = env.run_with(
        &[
            "create-admin",
            "--username",
            "carol",
            "--role",
            "verifier",
            "--password-stdin",
        ],
        Some(&format!("{pw}\n")),
        false,
    );
    o.assert_one_line_error("verifier is not an admin role");
    for (var, value) in [
        ("KEYVAULT_INSTANCES", "0"),
        ("KEYVAULT_INSTANCES", "many"),
        ("KEYVAULT_CREDITS_FAIL_MODE", "local"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
    ] {
        let o = env.clone().with(var, value).run(&["keys", "list"]);
        o.assert_one_line_error(&format!("{var}={value}"));
        assert!(o.stderr.contains(var), "{var}={value}: {}", o.stderr);
    }

    let audit = env.run(&["audit", "verify"]);
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_no_secrets(
        &env.transcript.lock().unwrap(),
        &[pw.to_owned(), "another long passphrase".to_owned()],
    );
}

#[test]
fn keys_and_tokens_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    let mut secrets = Vec::new();
    let o = env.run_secret(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--prefix",
        "acme",
        "--credits",
        "2",
        "--rate-limit",
        "100/60s",
        "--rate-limit",
        "5/1s",
        "--scope",
        "read",
        "--expires-in",
        "30d",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let key = o.stdout.trim().to_owned();
    assert!(
        key.starts_with("acme_") && key.len() == "acme_".len() + 46,
        "{key}"
    );
    secrets.push(key.clone());
    let o = env.run_secret(&["keys", "create", "--name", "j", "--json"]);
    assert_eq!(o.code, 0);
    let created: Value = serde_json::from_str(&o.stdout).unwrap();
    secrets.push(created["key"].as_str().unwrap().to_owned());
    let jid = created["id"].as_str().unwrap().to_owned();

    let list = env.run(&["keys", "list", "--json"]);
    assert_eq!(list.code, 0);
    let items: Value = serde_json::from_str(&list.stdout).unwrap();
    let items = items.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1]["name"], "ci");
    assert_eq!(items[1]["credits"]["remaining"], 2);
    assert_eq!(items[1]["ratelimits"].as_array().unwrap().len(), 2);
    assert!(items[1]["expires_at"].is_string());
    let id = items[1]["id"].as_str().unwrap().to_owned();
    assert!(env.run(&["keys", "list"]).stdout.contains("acme_"));
    let show: Value = serde_json::from_str(&env.run(&["keys", "show", &id]).stdout).unwrap();
    assert_eq!(show, items[1]);

    // The server on the same file sees CLI changes within a second.
    let admin = env.token("admin");
    secrets.push(admin.clone());
    let s = env.serve();
    let verify = |k: &str| {
        s.req("POST", "/v1/keys/verify")
            .token(&admin)
            .json(&json!({"key": k, "cost": 0}))
            .send()
            .json()
    };
    assert_eq!(verify(&key)["code"], "VALID");
    assert_eq!(env.run(&["keys", "disable", &id]).code, 0);
    assert!(
        eventually(Duration::from_secs(1), || verify(&key)["code"]
            == "DISABLED")
        .is_some(),
        "disable not seen within 1 s"
    );
    assert_eq!(env.run(&["keys", "enable", &id]).code, 0);
    let mut codes = Vec::new();
    assert!(
        eventually(Duration::from_secs(1), || {
            let c = verify(&key)["code"].as_str().unwrap().to_owned();
            codes.push(c.clone());
            c == "VALID"
        })
        .is_some(),
        "{codes:?}"
    );
    let o = env.run_secret(&["keys", "rotate", &id, "--grace", "1h"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let rotated = o.stdout.trim().to_owned();
    secrets.push(rotated.clone());
    assert_eq!(verify(&rotated)["code"], "VALID");
    assert_eq!(
        verify(&key)["code"],
        "VALID",
        "the old key works through the grace"
    );
    assert_eq!(env.run(&["keys", "delete", &jid]).code, 0);
    assert!(
        eventually(Duration::from_secs(1), || verify(&secrets[1])["code"]
            == "NOT_FOUND")
        .is_some()
    );

    // Tokens: listed without secrets, revoked within a second.
    let viewer = env.token("viewer");
    secrets.push(viewer.clone());
    let tl = env.run(&["token", "list", "--json"]);
    let tokens: Value = serde_json::from_str(&tl.stdout).unwrap();
    let vid = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "viewer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(env.run(&["token", "list"]).stdout.contains("viewer"));
    assert_eq!(s.req("GET", "/v1/keys").token(&viewer).send().status, 200);
    assert_eq!(env.run(&["token", "revoke", &vid]).code, 0);
    assert!(
        eventually(Duration::from_secs(1), || s
            .req("GET", "/v1/keys")
            .token(&viewer)
            .send()
            .status
            == 401)
        .is_some(),
        "revocation not honoured within 1 s"
    );
    env.run(&["token", "revoke", &vid])
        .assert_one_line_error("already revoked");

    // rotate-due: nothing due yet; the output file is private.
    let out = dir.path().join("rotated.ndjson");
    let o = env.run(&["rotate-due", "--out", out.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let o = env.run(&["cleanup-expired", "--older-than", "0s"]);
    assert_eq!(o.code, 0, "{}", o.stderr);

    // Refused attempts from the CLI are audited too.
    env.run(&["keys", "create", "--name", "x", "--prefix", "Bad"])
        .assert_one_line_error("bad prefix");
    env.run(&["keys", "disable", "nope"])
        .assert_one_line_error("bad id");
    // Every change from the CLI is audited with the CLI as actor.
    let audit: Value = s
        .req("GET", "/v1/audit?actor=cli&limit=100")
        .token(&admin)
        .send()
        .json();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for a in [
        "key.create",
        "key.disable",
        "key.enable",
        "key.rotate",
        "key.delete",
        "token.create",
        "token.revoke",
    ] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
    let refused: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "refused")
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["details"]["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        refused.contains(&("key.create", "invalid_request")),
        "{refused:?}"
    );
    assert!(
        refused.contains(&("key.disable", "invalid_request")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|(a, _)| *a == "token.revoke"),
        "{refused:?}"
    );
    assert_eq!(env.run(&["audit", "verify"]).code, 0);
    drop(s);
    assert_no_secrets(&env.transcript.lock().unwrap(), &secrets);
}

#[test]
fn dotenv_is_read_and_the_environment_wins() {
    let dir = tempfile::tempdir().unwrap();
    let from_file = dir.path().join("from-dotenv.db");
    std::fs::write(
        dir.path().join(".env"),
        format!("DATABASE_URL=sqlite://{}\n", from_file.display()),
    )
    .unwrap();
    let mut env = Env::sqlite(dir.path());
    env.vars.clear();
    assert_eq!(env.run(&["migrate"]).code, 0);
    assert!(from_file.exists(), ".env not read");
    // The environment beats .env, and a flag beats both.
    let from_env = dir.path().join("from-env.db");
    let env2 = env
        .clone()
        .with("DATABASE_URL", &format!("sqlite://{}", from_env.display()));
    assert_eq!(env2.run(&["migrate"]).code, 0);
    assert!(from_env.exists());
    let from_flag = dir.path().join("from-flag.db");
    assert_eq!(
        env2.run(&[
            "--database-url",
            &format!("sqlite://{}", from_flag.display()),
            "migrate"
        ])
        .code,
        0
    );
    assert!(from_flag.exists());
    // The zero-config default: ./keyvault.db.
    std::fs::remove_file(dir.path().join(".env")).unwrap();
    assert_eq!(env.run(&["migrate"]).code, 0);
    let db = dir.path().join("keyvault.db");
    assert!(db.exists());
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// A webhook receiver on loopback answering 204 to every request; the requests it got.
fn receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut raw = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = stream.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&raw).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if raw.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&raw).into_owned());
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

#[test]
fn alerts_are_listed_and_acknowledged_and_channels_listed_and_tested() {
    let dir = tempfile::tempdir().unwrap();
    // A receiver on this machine: the address rule is lifted, for the CLI and the server.
    let env = Env::sqlite(dir.path())
        .with("KEYVAULT_ALLOW_PRIVATE_WEBHOOKS", "true")
        .with("KEYVAULT_ALERT_INTERVAL", "200ms");
    let mut secrets = Vec::new();
    for args in [
        &["alerts", "list", "--json"][..],
        &["notifiers", "list", "--json"],
    ] {
        let o = env.run(args);
        assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
        assert_eq!(serde_json::from_str::<Value>(&o.stdout).unwrap(), json!([]));
    }
    let o = env.run(&["alerts", "list", "--state", "open"]);
    o.assert_one_line_error("bad state");
    assert!(o.stderr.contains("--state"), "{}", o.stderr);
    for (args, what) in [
        (&["alerts", "ack", "nope"][..], "bad alert id"),
        (
            &["alerts", "ack", "01a22121-829c-725b-8039-33e816e31bea"],
            "unknown alert",
        ),
        (&["alerts"], "no subcommand"),
        (
            &["notifiers", "test", "01a22121-829c-725b-8039-33e816e31bea"],
            "unknown channel",
        ),
        (&["notifiers", "test"], "no id"),
    ] {
        env.run(args).assert_one_line_error(what);
    }
    for sub in [&["alerts", "--help"][..], &["notifiers", "--help"]] {
        let o = env.run(sub);
        assert_eq!(o.code, 0, "{sub:?}");
        assert!(o.stdout.contains("list"), "{sub:?}: {}", o.stdout);
    }
    let help = env.run(&["--help"]).stdout;
    assert!(
        help.contains("alerts") && help.contains("notifiers"),
        "{help}"
    );

    // A key about to expire and a rule that watches for it: the server fires an alert.
    let admin = env.token("admin");
    secrets.push(admin.clone());
    let o = env.run_secret(&["keys", "create", "--name", "ending", "--expires-in", "1d"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    secrets.push(o.stdout.trim().to_owned());
    let s = env.serve();
    let r = s
        .req("POST", "/v1/alert-rules")
        .token(&admin)
        .json(&json!({"name": "expiry", "kind": "expiring", "params": {"within": "7d"}}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text());
    let firing = || -> Vec<Value> {
        let o = env.run(&["alerts", "list", "--state", "firing", "--json"]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        serde_json::from_str::<Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    assert!(
        eventually(Duration::from_secs(20), || {
            std::thread::sleep(Duration::from_millis(100));
            !firing().is_empty()
        })
        .is_some(),
        "no alert fired"
    );
    let alerts = firing();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = alerts[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(alerts[0]["kind"], "expiring");
    assert_eq!(alerts[0]["state"], "firing");
    let table = env.run(&["alerts", "list"]).stdout;
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains(&alert) && l.contains("firing") && l.contains("expiring")),
        "{table}"
    );
    let o = env.run(&["alerts", "ack", &alert]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("Acknowledged"), "{}", o.stderr);
    assert!(firing().is_empty());
    let o = env.run(&["alerts", "list", "--state", "acknowledged", "--json"]);
    let acked: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(acked[0]["id"], alert.as_str(), "{acked}");
    assert!(acked[0]["acknowledged_at"].is_string(), "{acked}");
    let o = env.run(&["alerts", "ack", &alert]);
    assert_eq!(o.code, 0, "a second ack changes nothing: {}", o.stderr);
    let all: Value = serde_json::from_str(&env.run(&["alerts", "list", "--json"]).stdout).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");

    // Channels: a receiver that answers, and a port where nothing listens.
    let (port, got) = receiver();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut channel = |name: &str, url: String| -> String {
        let r = s
            .req("POST", "/v1/notifiers")
            .token(&admin)
            .json(&json!({"name": name, "kind": "webhook", "url": url, "events": ["test"]}))
            .send();
        assert_eq!(r.status, 201, "{}", r.text());
        let made = r.json();
        secrets.push(made["secret"].as_str().unwrap().to_owned());
        made["id"].as_str().unwrap().to_owned()
    };
    let live = channel(
        "receiver",
        format!("http://127.0.0.1:{port}/hook/private-path"),
    );
    let dead = channel("nobody", format!("http://127.0.0.1:{closed}/x"));
    let listed: Value =
        serde_json::from_str(&env.run(&["notifiers", "list", "--json"]).stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], live.as_str());
    assert_eq!(listed[0]["url"], format!("http://127.0.0.1:{port}"));
    assert!(listed[0].get("secret").is_none(), "{listed:?}");
    let table = env.run(&["notifiers", "list"]).stdout;
    assert!(
        table
            .lines()
            .any(|l| l.contains(&live) && l.contains(&format!("http://127.0.0.1:{port}"))),
        "{table}"
    );
    assert!(
        !table.contains("private-path") && !table.contains("whsec_"),
        "{table}"
    );

    let o = env.run(&["notifiers", "test", &live]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "delivered (HTTP 204)");
    let requests = got.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0].starts_with("POST /hook/private-path"));
    assert!(requests[0].contains(r#""type":"test""#), "{}", requests[0]);
    let o = env.run(&["notifiers", "test", &dead]);
    o.assert_one_line_error("not delivered");
    assert!(o.stdout.starts_with("not delivered: "), "{}", o.stdout);

    // Every acknowledgement and test is audited with the CLI as actor.
    let audit: Value = s
        .req("GET", "/v1/audit?actor=cli&limit=100")
        .token(&admin)
        .send()
        .json();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for a in ["alert.ack", "notifier.test"] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
    drop(s);
    assert_no_secrets(&env.transcript.lock().unwrap(), &secrets);
}
