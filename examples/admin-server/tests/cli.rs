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
