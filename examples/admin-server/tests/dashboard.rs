//! End-to-end: the dashboard's sign-in.

mod common;

use common::{Env, assert_no_secrets};

#[test]
fn admins_sign_in_and_a_password_change_ends_their_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path());
    let pw = "correct horse battery staple";
    let o = env.run_with(
        &[
            "create-admin",
            "--username",
            "alice",
            "--role",
            "operator",
            "--password-stdin",
        ],
        Some(&format!("{pw}\n")),
        false,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let admin = env.token("admin");
    let s = env.serve();

    let page = s.req("GET", "/admin").send();
    assert_eq!(page.status, 200);
    assert!(page.text().contains(r#"action="/admin/login""#));

    let form = |u: &str, p: &str| format!("username={u}&password={}", p.replace(' ', "+"));
    let bad = s
        .req("POST", "/admin/login")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .raw(form("alice", "wrong horse battery staple").as_bytes())
        .send();
    assert_eq!(bad.status, 401);
    assert!(bad.header("set-cookie").is_none());
    let unknown = s
        .req("POST", "/admin/login")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .raw(form("mallory", pw).as_bytes())
        .send();
    assert_eq!(unknown.status, 401);
    let garbage = s.req("POST", "/admin/login").raw(b"{}").send();
    assert_eq!(garbage.status, 400);

    let ok = s
        .req("POST", "/admin/login")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .raw(form("alice", pw).as_bytes())
        .send();
    assert_eq!(ok.status, 303, "{}", ok.text());
    let cookie = ok.header("set-cookie").unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let session = cookie.split(';').next().unwrap().to_owned();
    let home = s.req("GET", "/admin").header("Cookie", &session).send();
    assert!(
        home.text().contains("Signed in as <strong>alice</strong>"),
        "{}",
        home.text()
    );
    // A forged session is a sign-in page.
    let forged = session.replace("kv_session=", "kv_session=00");
    assert!(
        !s.req("GET", "/admin")
            .header("Cookie", &forged)
            .send()
            .text()
            .contains("Signed in")
    );

    // A new password ends existing sessions.
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
    assert_eq!(o.code, 0);
    assert!(
        !s.req("GET", "/admin")
            .header("Cookie", &session)
            .send()
            .text()
            .contains("Signed in")
    );

    // Logins are audited, successful or not; an unknown name is not recorded.
    let audit = s
        .req("GET", "/v1/audit?action=login")
        .token(&admin)
        .send()
        .json();
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{audit}");
    assert_eq!(
        items.iter().filter(|r| r["outcome"] == "success").count(),
        1
    );
    assert!(items.iter().all(|r| r["target_id"] != "mallory"));
    drop(s);
    let session_value = session.split_once('=').unwrap().1.to_owned();
    assert_no_secrets(
        &env.transcript.lock().unwrap(),
        &[
            pw.to_owned(),
            "another long passphrase".to_owned(),
            admin,
            session_value,
        ],
    );
}
