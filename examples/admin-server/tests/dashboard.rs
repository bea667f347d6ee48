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

    // Without a session, /admin sends the browser to the sign-in form.
    let page = s.req("GET", "/admin").send();
    assert_eq!(page.status, 303);
    assert_eq!(page.header("location"), Some("/admin/login"));
    let form_page = s.req("GET", "/admin/login").send();
    assert_eq!(form_page.status, 200);
    assert!(form_page.text().contains(r#"action="/admin/login""#));
    // The form's CSRF token is bound to a nonce cookie the page sets.
    let nonce = form_page
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let text = form_page.text();
    let at = text.find(r#"name="csrf" value=""#).unwrap() + r#"name="csrf" value=""#.len();
    let csrf = text[at..at + text[at..].find('"').unwrap()].to_owned();

    let form =
        |u: &str, p: &str| format!("username={u}&password={}&csrf={csrf}", p.replace(' ', "+"));
    let post = |body: String, cookie: &str| {
        s.req("POST", "/admin/login")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Cookie", cookie)
            .raw(body.as_bytes())
            .send()
    };
    // Without the token (or its cookie), even the right password is refused.
    let no_token = post(
        format!("username=alice&password={}", pw.replace(' ', "+")),
        &nonce,
    );
    assert_eq!(no_token.status, 403);
    assert!(
        no_token
            .header("set-cookie")
            .is_none_or(|c| !c.starts_with("kv_session="))
    );
    assert_eq!(post(form("alice", pw), "").status, 403);

    let bad = post(form("alice", "wrong horse battery staple"), &nonce);
    assert_eq!(bad.status, 401);
    assert!(bad.text().contains(r#"data-testid="login-error""#));
    assert!(
        bad.header("set-cookie")
            .is_none_or(|c| !c.starts_with("kv_session="))
    );
    let unknown = post(form("mallory", pw), &nonce);
    assert_eq!(unknown.status, 401);
    let garbage = s
        .req("POST", "/admin/login")
        .header("Cookie", &nonce)
        .raw(b"{}")
        .send();
    assert_eq!(garbage.status, 400);

    let ok = post(form("alice", pw), &nonce);
    assert_eq!(ok.status, 303, "{}", ok.text());
    assert_eq!(ok.header("location"), Some("/admin"));
    let cookie = ok.header("set-cookie").unwrap().to_owned();
    assert!(cookie.starts_with("kv_session="), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(cookie.contains("Path=/admin;"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();
    let home = s.req("GET", "/admin").header("Cookie", &session).send();
    assert_eq!(home.status, 200);
    assert!(
        home.text().contains(r#"data-testid="signout""#) && home.text().contains("alice"),
        "{}",
        home.text()
    );
    // A session cookie never authenticates /v1.
    assert_eq!(
        s.req("GET", "/v1/keys")
            .header("Cookie", &session)
            .send()
            .status,
        401
    );
    // A forged session is a sign-in page.
    let forged = session.replace("kv_session=", "kv_session=00");
    assert_eq!(
        s.req("GET", "/admin")
            .header("Cookie", &forged)
            .send()
            .status,
        303
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
    assert_eq!(
        s.req("GET", "/admin")
            .header("Cookie", &session)
            .send()
            .status,
        303
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
