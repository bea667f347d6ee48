//! End-to-end: the commands that give the command line what the REST API has (CONTRACT §8
//! "More commands"): `keys create`'s other limits, `keys update`, `keys batch`, `users`.

mod common;

use std::time::Duration;

use common::{Env, Out, assert_no_secrets, eventually};
use serde_json::{Value, json};

const UNKNOWN: &str = "01a22121-829c-725b-8039-33e816e31bea";

fn json_of(o: &Out) -> Value {
    assert_eq!(o.code, 0, "stdout {:?} stderr {:?}", o.stdout, o.stderr);
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", o.stdout))
}

/// A refused command line: exit status `code`, one line on stderr, naming `field`.
fn refused(o: &Out, code: i32, field: &str) {
    o.assert_one_line_error(field);
    assert_eq!(o.code, code, "{field}: {o:?}");
    assert!(
        o.stderr.contains(field),
        "{field} not named: {:?}",
        o.stderr
    );
}

/// An input error from keyvault itself (not clap): `error: <field>: …` (or a member of
/// it, `<field>.limit: …`), status 1.
fn bad_field(o: &Out, field: &str) {
    refused(o, 1, field);
    let rest = o.stderr.strip_prefix(&format!("error: {field}"));
    assert!(
        rest.is_some_and(|r| r.starts_with(": ") || r.starts_with('.')),
        "{field}: {:?}",
        o.stderr
    );
}

fn show(env: &Env, id: &str) -> Value {
    json_of(&env.run(&["keys", "show", id]))
}

/// `v` without the fields every successful update changes.
fn unstamped(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("updated_at");
    v
}

#[test]
fn create_takes_every_limit_the_api_takes() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    let o = env.run_secret(&[
        "keys",
        "create",
        "--name",
        "partner",
        "--owner",
        "acme",
        "--credits",
        "10",
        "--refill",
        "daily:100",
        "--ip",
        "10.1.2.3/8",
        "--ip",
        "192.168.1.7",
        "--ip",
        "2001:db8::/32",
        "--metadata",
        "tier=gold",
        "--metadata",
        "n=5",
        "--rotate-every",
        "30d",
        "--rotation-grace",
        "1h",
        "--json",
    ]);
    let k = json_of(&o);
    assert_eq!(k["owner_id"], "acme");
    assert_eq!(
        k["credits"],
        json!({"remaining": 10, "refill": {"interval": "daily", "amount": 100}})
    );
    assert_eq!(
        k["ip_allowlist"],
        json!(["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"])
    );
    assert_eq!(k["metadata"], json!({"tier": "gold", "n": "5"}));
    assert_eq!(k["rotation"], json!({"every": "30d", "grace": "1h"}));
    assert!(k["next_rotation_at"].is_string(), "{k}");

    // A refill alone starts at its amount; the grace defaults to 24 hours.
    let o = env.run_secret(&[
        "keys",
        "create",
        "--name",
        "r",
        "--refill",
        "monthly:50",
        "--rotate-every",
        "7d",
        "--json",
    ]);
    let k = json_of(&o);
    assert_eq!(
        k["credits"],
        json!({"remaining": 50, "refill": {"interval": "monthly", "amount": 50}})
    );
    assert_eq!(k["rotation"], json!({"every": "7d", "grace": "1d"}));

    let create = |extra: &[&str]| {
        let mut args = vec!["keys", "create", "--name", "x"];
        args.extend_from_slice(extra);
        env.run_secret(&args)
    };
    bad_field(&create(&["--refill", "hourly:5"]), "refill");
    bad_field(&create(&["--refill", "monthly"]), "refill");
    bad_field(&create(&["--refill", "daily:-1"]), "refill");
    bad_field(&create(&["--refill", "daily:9007199254740992"]), "refill");
    bad_field(&create(&["--credits", "9007199254740992"]), "credits");
    bad_field(&create(&["--ip", "10.0.0.0/8", "--ip", "nope"]), "ip");
    bad_field(&create(&["--ip", "10.0.0.0/33"]), "ip");
    bad_field(&create(&["--metadata", "novalue"]), "metadata");
    bad_field(&create(&["--metadata", "=x"]), "metadata");
    bad_field(
        &create(&["--metadata", "a=1", "--metadata", "a=2"]),
        "metadata",
    );
    bad_field(&create(&["--rotate-every", "500ms"]), "rotate-every");
    bad_field(&create(&["--rotate-every", "soon"]), "rotate-every");
    bad_field(
        &create(&["--rotate-every", "1d", "--rotation-grace", "1x"]),
        "rotation-grace",
    );
    // A grace without a policy is a usage error (clap's status 2).
    refused(&create(&["--rotation-grace", "1h"]), 2, "--rotate-every");
    // None of the refused ones was created.
    let all = json_of(&env.run(&["keys", "list", "--json"]));
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
}

#[test]
fn update_changes_only_what_its_flags_name() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    let o = env.run_secret(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--owner",
        "team-a",
        "--expires-in",
        "30d",
        "--credits",
        "10",
        "--refill",
        "daily:100",
        "--rate-limit",
        "100/60s",
        "--rate-limit",
        "5/1s",
        "--scope",
        "read",
        "--ip",
        "10.0.0.0/8",
        "--metadata",
        "tier=gold",
        "--rotate-every",
        "30d",
        "--rotation-grace",
        "1h",
        "--json",
    ]);
    let created = json_of(&o);
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let before = show(&env, &id);
    let update = |extra: &[&str]| {
        let mut args = vec!["keys", "update", id.as_str()];
        args.extend_from_slice(extra);
        env.run(&args)
    };

    // --name: the name and nothing else.
    let after = json_of(&update(&["--name", "ci-2", "--json"]));
    assert_eq!(
        after,
        show(&env, &id),
        "--json prints what keys show prints"
    );
    let mut expected = unstamped(before.clone());
    expected["name"] = json!("ci-2");
    assert_eq!(unstamped(after), expected);

    // Spend 3 of the 10 credits through the server, then change the refill alone.
    let admin = env.token("admin");
    let s = env.serve();
    let v = s
        .req("POST", "/v1/keys/verify")
        .token(&admin)
        .json(&json!({"key": key, "cost": 3, "ip": "10.0.0.1"}))
        .send()
        .json();
    assert_eq!(v["code"], "VALID", "{v}");
    assert_eq!(v["credits"]["remaining"], 7, "{v}");
    assert!(
        eventually(
            Duration::from_secs(2),
            || show(&env, &id)["credits"]["remaining"] == 7
        )
        .is_some(),
        "the spend is not seen: {}",
        show(&env, &id)
    );
    // The server goes first: within the propagation second it would still spend by the
    // old refill.
    drop(s);
    let after = json_of(&update(&["--refill", "monthly:50", "--json"]));
    assert_eq!(
        after["credits"],
        json!({"remaining": 7, "refill": {"interval": "monthly", "amount": 50}}),
        "--refill keeps the remaining balance"
    );
    assert_eq!(show(&env, &id)["credits"], after["credits"]);

    // --credits alone keeps the refill.
    let after = json_of(&update(&["--credits", "3", "--json"]));
    assert_eq!(
        after["credits"],
        json!({"remaining": 3, "refill": {"interval": "monthly", "amount": 50}})
    );
    // One half of the rotation policy keeps the other.
    let after = json_of(&update(&["--rotation-grace", "2h", "--json"]));
    assert_eq!(after["rotation"], json!({"every": "30d", "grace": "2h"}));
    let after = json_of(&update(&["--rotate-every", "7d", "--json"]));
    assert_eq!(after["rotation"], json!({"every": "7d", "grace": "2h"}));
    // Lists are replaced whole.
    let after = json_of(&update(&[
        "--rate-limit",
        "10/1s",
        "--scope",
        "write",
        "--scope",
        "admin",
        "--ip",
        "192.168.0.0/16",
        "--metadata",
        "tier=silver",
        "--owner",
        "team-b",
        "--json",
    ]));
    assert_eq!(
        after["ratelimits"],
        json!([{"name": "1s", "limit": 10, "period_ms": 1000, "fail_mode": "local"}])
    );
    assert_eq!(after["scopes"], json!(["write", "admin"]));
    assert_eq!(after["ip_allowlist"], json!(["192.168.0.0/16"]));
    assert_eq!(after["metadata"], json!({"tier": "silver"}));
    assert_eq!(after["owner_id"], "team-b");
    assert_eq!(after["name"], "ci-2");
    assert_eq!(after["expires_at"], before["expires_at"]);

    // Text output: the key, a field a line.
    let o = update(&["--expires-in", "1d"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("name:        ci-2"), "{}", o.stdout);
    assert!(o.stdout.contains("rate limits: 10/1s"), "{}", o.stdout);
    assert!(o.stderr.contains("expires_at"), "{}", o.stderr);
    assert_ne!(show(&env, &id)["expires_at"], before["expires_at"]);

    // Bad input: status 1, one line naming the flag, and nothing changed.
    let unchanged = show(&env, &id);
    for (args, field) in [
        (&["--refill", "hourly:5"][..], "refill"),
        (&["--refill", "daily:x"], "refill"),
        (&["--credits=-1"], "credits"),
        (&["--credits", "9007199254740992"], "credits"),
        (&["--ip", "nope"], "ip"),
        (&["--metadata", "novalue"], "metadata"),
        (&["--rate-limit", "0/1s"], "rate-limit"),
        (&["--rate-limit", "5"], "rate-limit"),
        (&["--expires-in", "soon"], "expires-in"),
        (&["--rotate-every", "500ms"], "rotate-every"),
        (&["--rotation-grace", "x"], "rotation-grace"),
        // A valid flag beside a bad one changes nothing either.
        (&["--name", "zzz", "--ip", "10.0.0.0/99"], "ip"),
    ] {
        bad_field(&update(args), field);
    }
    refused(&update(&[]), 1, "nothing to change");
    refused(&update(&["--name", ""]), 1, "name");
    assert_eq!(show(&env, &id), unchanged);
    // Conflicting pairs are usage errors (status 2).
    for args in [
        &["--owner", "a", "--no-owner"][..],
        &["--expires-in", "1d", "--no-expiry"],
        &["--credits", "1", "--no-credits"],
        &["--refill", "daily:1", "--no-credits"],
        &["--rate-limit", "1/1s", "--no-rate-limits"],
        &["--scope", "a", "--no-scopes"],
        &["--ip", "10.0.0.0/8", "--no-ip"],
        &["--metadata", "a=b", "--no-metadata"],
        &["--rotate-every", "1d", "--no-rotation"],
        &["--rotation-grace", "1h", "--no-rotation"],
    ] {
        let o = update(args);
        o.assert_one_line_error(&format!("{args:?}"));
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert!(o.stderr.contains("cannot be used with"), "{o:?}");
    }
    assert_eq!(show(&env, &id), unchanged);
    refused(
        &env.run(&["keys", "update", UNKNOWN, "--name", "x"]),
        1,
        "not found",
    );
    refused(
        &env.run(&["keys", "update", UNKNOWN, "--refill", "daily:5"]),
        1,
        "not found",
    );
    refused(
        &env.run(&["keys", "update", "nope", "--name", "x"]),
        1,
        "ID",
    );

    // The --no-… flags clear each field.
    let after = json_of(&update(&[
        "--no-owner",
        "--no-expiry",
        "--no-credits",
        "--no-rate-limits",
        "--no-scopes",
        "--no-ip",
        "--no-metadata",
        "--no-rotation",
        "--json",
    ]));
    for (field, empty) in [
        ("owner_id", json!(null)),
        ("expires_at", json!(null)),
        ("credits", json!(null)),
        ("ratelimits", json!([])),
        ("scopes", json!([])),
        ("ip_allowlist", json!([])),
        ("metadata", json!({})),
        ("rotation", json!(null)),
        ("next_rotation_at", json!(null)),
    ] {
        assert_eq!(after[field], empty, "{field}: {after}");
    }
    assert_eq!(after["name"], "ci-2");
    // Unlimited until now: --refill alone starts the balance at its amount; a grace
    // without a policy to keep has no `every`.
    let after = json_of(&update(&["--refill", "daily:9", "--json"]));
    assert_eq!(
        after["credits"],
        json!({"remaining": 9, "refill": {"interval": "daily", "amount": 9}})
    );
    bad_field(&update(&["--rotation-grace", "1h"]), "rotation-grace");
    assert_no_secrets(&env.transcript.lock().unwrap(), &[key, admin]);
}

fn create_keys(env: &Env, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let o = env.run_secret(&["keys", "create", "--name", &format!("k{i}"), "--json"]);
            json_of(&o)["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn batch_reports_each_id_and_fails_when_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    let ids = create_keys(&env, 4);
    let enabled = |id: &str| show(&env, id)["enabled"].as_bool().unwrap();

    // One unknown id among them: each is reported, the others still done, status 1.
    let o = env.run(&["keys", "batch", "disable", &ids[0], UNKNOWN, &ids[1]]);
    o.assert_one_line_error("one unknown id");
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("1 of 3"), "{}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{}  ok", ids[0]),
            format!("{UNKNOWN}  error: key {UNKNOWN} not found"),
            format!("{}  ok", ids[1]),
        ],
        "{}",
        o.stdout
    );
    assert!(!enabled(&ids[0]) && !enabled(&ids[1]));
    assert!(enabled(&ids[2]));

    // --json: an array, one object per id, in order.
    let o = env.run(&[
        "keys", "batch", "enable", &ids[0], "nope", &ids[1], UNKNOWN, "--json",
    ]);
    assert_eq!(o.code, 1, "{o:?}");
    let results: Value = serde_json::from_str(&o.stdout).unwrap();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 4, "{results:?}");
    assert_eq!(results[0], json!({"id": ids[0], "ok": true}));
    assert_eq!(results[2], json!({"id": ids[1], "ok": true}));
    assert_eq!(results[1]["id"], "nope");
    assert_eq!(results[1]["ok"], false);
    assert_eq!(results[1]["error"], "invalid_request");
    assert_eq!(results[3]["error"], "not_found");
    assert!(
        results[3]["message"]
            .as_str()
            .unwrap()
            .contains("not found"),
        "{results:?}"
    );
    assert!(enabled(&ids[0]) && enabled(&ids[1]));

    // Every id succeeding: status 0.
    let o = env.run(&["keys", "batch", "disable", &ids[2], &ids[3], "--json"]);
    let results = json_of(&o);
    assert_eq!(
        results,
        json!([{"id": ids[2], "ok": true}, {"id": ids[3], "ok": true}])
    );
    assert!(!enabled(&ids[2]) && !enabled(&ids[3]));

    // --ids-file: comments and blank lines skipped.
    let file = dir.path().join("ids.txt");
    std::fs::write(
        &file,
        format!(
            "# retired keys\n\n{}\n  {}   # the second\n\n",
            ids[0], ids[2]
        ),
    )
    .unwrap();
    let o = env.run(&[
        "keys",
        "batch",
        "delete",
        "--ids-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout.lines().count(), 2, "{}", o.stdout);
    let left = json_of(&env.run(&["keys", "list", "--json"]));
    let left: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [ids[3].as_str(), ids[1].as_str()]);
    // Deleted ones are now unknown.
    let o = env.run(&["keys", "batch", "enable", &ids[0]]);
    assert_eq!(o.code, 1);
    assert!(o.stdout.contains("not found"), "{}", o.stdout);

    // An unreadable file: one line naming it; an empty one; usage errors.
    let missing = dir.path().join("missing.txt");
    let o = env.run(&[
        "keys",
        "batch",
        "delete",
        "--ids-file",
        missing.to_str().unwrap(),
    ]);
    refused(&o, 1, missing.to_str().unwrap());
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "# nothing\n\n").unwrap();
    let o = env.run(&[
        "keys",
        "batch",
        "delete",
        "--ids-file",
        empty.to_str().unwrap(),
    ]);
    refused(&o, 1, "lists no ids");
    refused(&env.run(&["keys", "batch", "delete"]), 2, "ID");
    refused(
        &env.run(&["keys", "batch", "delete", &ids[1], "--ids-file", "x"]),
        2,
        "cannot be used with",
    );
    refused(&env.run(&["keys", "batch", "purge", &ids[1]]), 2, "purge");
    assert!(enabled(&ids[1]), "nothing changed by refused batches");
}

#[test]
fn users_are_listed_and_the_last_admin_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    let pw = "correct horse battery staple";
    for (user, role) in [("alice", "admin"), ("bob", "viewer")] {
        let o = env.run_with(
            &[
                "create-admin",
                "--username",
                user,
                "--role",
                role,
                "--password-stdin",
            ],
            Some(&format!("{pw}\n")),
            false,
        );
        assert_eq!(o.code, 0, "{}", o.stderr);
    }
    let list = |env: &Env| json_of(&env.run(&["users", "list", "--json"]));
    let users = list(&env);
    let arr = users.as_array().expect("a JSON array");
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["username"], "alice");
    assert_eq!(arr[0]["role"], "admin");
    assert_eq!(arr[0]["enabled"], true);
    assert_eq!(arr[1]["role"], "viewer");
    for u in arr {
        let mut fields: Vec<&String> = u.as_object().unwrap().keys().collect();
        fields.sort();
        assert_eq!(
            fields,
            ["created_at", "enabled", "role", "updated_at", "username"],
            "{u}"
        );
    }
    assert!(!users.to_string().contains("argon2"), "{users}");
    let text = env.run(&["users", "list"]);
    assert_eq!(text.code, 0);
    assert!(text.stdout.contains("alice") && text.stdout.contains("viewer"));
    assert!(!text.stdout.contains("argon2"));

    // Alice is the only enabled admin: neither demoted nor disabled.
    let o = env.run(&["users", "set-role", "alice", "operator"]);
    refused(&o, 1, "last enabled admin");
    let o = env.run(&["users", "disable", "alice"]);
    refused(&o, 1, "last enabled admin");
    assert_eq!(list(&env), users, "nothing changed");

    // Bad input.
    refused(&env.run(&["users", "set-role", "bob", "root"]), 1, "role");
    refused(
        &env.run(&["users", "set-role", "bob", "verifier"]),
        1,
        "role",
    );
    refused(&env.run(&["users", "disable", "carol"]), 1, "not found");
    refused(
        &env.run(&["users", "set-role", "carol", "viewer"]),
        1,
        "not found",
    );
    refused(&env.run(&["users", "set-role", "bob"]), 2, "ROLE");

    // Another admin: now alice may go.
    let o = env.run(&["users", "set-role", "bob", "admin"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = env.run(&["users", "disable", "alice"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let now = list(&env);
    assert_eq!(now[0]["enabled"], false);
    assert_eq!(now[0]["role"], "admin");
    assert_eq!(now[1]["role"], "admin");
    // Bob is now the last enabled admin (a disabled admin does not count).
    refused(
        &env.run(&["users", "set-role", "bob", "viewer"]),
        1,
        "last enabled admin",
    );
    let o = env.run(&["users", "enable", "alice"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = env.run(&["users", "set-role", "bob", "viewer"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let now = list(&env);
    assert_eq!(
        (now[0]["enabled"].clone(), now[1]["role"].clone()),
        (json!(true), json!("viewer"))
    );
    assert_no_secrets(&env.transcript.lock().unwrap(), &[pw.to_owned()]);
}

#[test]
fn every_new_command_has_help_with_examples() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    assert!(env.run(&["--help"]).stdout.contains("users"));
    let keys = env.run(&["keys", "--help"]).stdout;
    assert!(keys.contains("update") && keys.contains("batch"), "{keys}");
    for (args, mentions) in [
        (
            &["keys", "create", "--help"][..],
            &[
                "--refill",
                "--ip",
                "--metadata",
                "--rotate-every",
                "--rotation-grace",
            ][..],
        ),
        (
            &["keys", "update", "--help"],
            &[
                "--no-owner",
                "--no-expiry",
                "--no-credits",
                "--no-rate-limits",
                "--no-scopes",
                "--no-ip",
                "--no-metadata",
                "--no-rotation",
                "keeps the remaining balance",
            ],
        ),
        (
            &["keys", "batch", "--help"],
            &["--ids-file", "\"ok\"", "\"error\""],
        ),
        (
            &["users", "--help"],
            &["set-role", "disable", "enable", "list"],
        ),
        (&["users", "list", "--help"], &["--json"]),
        (&["users", "set-role", "--help"], &["ROLE"]),
        (&["users", "disable", "--help"], &["last enabled admin"]),
        (&["users", "enable", "--help"], &["USERNAME"]),
    ] {
        let o = env.run(args);
        assert_eq!(o.code, 0, "{args:?}: {o:?}");
        assert!(o.stdout.contains("Examples:"), "{args:?}: {}", o.stdout);
        for m in mentions {
            assert!(o.stdout.contains(m), "{args:?} lacks {m}: {}", o.stdout);
        }
    }
}

#[test]
fn rate_limits_carry_a_fail_mode_and_usage_purge_keeps_recent_usage() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    let o = env.run_secret(&[
        "keys",
        "create",
        "--name",
        "strict",
        "--rate-limit",
        "5/1s:closed",
        "--rate-limit",
        "100/1m",
        "--json",
    ]);
    let created = json_of(&o);
    let id = created["id"].as_str().unwrap().to_owned();
    let limits = show(&env, &id)["ratelimits"].clone();
    assert_eq!(limits[0]["fail_mode"], "closed", "{limits}");
    assert_eq!(limits[1]["fail_mode"], "local", "{limits}");
    let o = env.run(&["keys", "update", &id, "--rate-limit", "5/1s:open", "--json"]);
    assert_eq!(json_of(&o)["ratelimits"][0]["fail_mode"], "open");
    for bad in ["5/1s:sometimes", "5/1s:", "5:closed"] {
        let o = env.run(&["keys", "update", &id, "--rate-limit", bad]);
        refused(&o, 1, "rate-limit");
    }
    assert_eq!(show(&env, &id)["ratelimits"][0]["fail_mode"], "open");

    let o = env.run(&["usage", "purge", "--older-than", "90d"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("Deleted 0 usage event(s)"), "{o:?}");
    for bad in ["0s", "soon", ""] {
        let o = env.run(&["usage", "purge", "--older-than", bad]);
        refused(&o, 1, "older-than");
    }
    let o = env.run(&["usage", "purge"]);
    assert_eq!(o.code, 2, "--older-than is required: {o:?}");
    let help = env.run(&["usage", "purge", "--help"]);
    assert!(help.stdout.contains("Examples:"), "{help:?}");
}
