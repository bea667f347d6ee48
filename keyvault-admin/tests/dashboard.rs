//! The dashboard over the real router (CONTRACT §6): sign-in, lockout and throttle; roles
//! enforced by the server whatever the browser sends; CSRF and origin checks; the key
//! pages — list, toggle, batch, the new-key form and its one view of the key, errors beside
//! their fields in the visitor's language; and no 500 for anything a form can send.

mod common;

use common::Server;
use keyvault_admin::Role;
use keyvault_core::Actor;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

const PW: &str = "correct horse battery";

async fn user(s: &Server, name: &str, role: Role) {
    s.app
        .create_admin(name, role, PW.into(), &Actor::library())
        .await
        .unwrap();
}

async fn key(s: &Server, token: &str, name: &str) -> Value {
    let r = s
        .req("POST", "/v1/keys")
        .token(token)
        .json(&json!({ "name": name, "owner_id": "team-a" }))
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

async fn key_enabled(s: &Server, token: &str, id: &str) -> bool {
    let r = s
        .req("GET", &format!("/v1/keys/{id}"))
        .token(token)
        .send()
        .await;
    r.json()["enabled"].as_bool().unwrap()
}

#[tokio::test]
async fn ten_failures_lock_a_username_and_one_address_is_throttled() {
    let s = Server::sqlite().await;
    user(&s, "ada", Role::Admin).await;
    for _ in 0..10 {
        let r = s.sign_in("ada", "wrong password").await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(r.text().contains(r#"data-testid="login-error""#));
    }
    // Locked: even the right password is refused, saying so.
    let r = s.sign_in("ada", PW).await;
    assert_eq!(r.status, 429);
    assert!(r.text().contains("locked"), "{}", r.text());
    assert!(r.cookie("kv_session").is_none());
    // An unknown name locks alike (the answer never tells whether a user exists).
    for _ in 0..10 {
        assert_eq!(s.sign_in("nobody", "wrong password").await.status, 401);
    }
    let r = s.sign_in("nobody", "wrong password").await;
    assert_eq!(r.status, 429);
    assert!(r.text().contains("locked"));

    // Lockouts and failures are audited, never with a password.
    let token = s.token("admin").await;
    let audit = s
        .req("GET", "/v1/audit?limit=100")
        .token(&token)
        .send()
        .await;
    let text = audit.text();
    assert!(text.contains("login.lockout"), "{text}");
    assert!(!text.contains("wrong password") && !text.contains(PW));
    assert!(!text.contains("nobody"), "an unknown name is not recorded");
}

#[tokio::test]
async fn more_than_thirty_attempts_a_minute_from_one_address_are_refused() {
    let s = Server::sqlite().await;
    let mut statuses = Vec::new();
    for i in 0..32 {
        statuses.push(s.sign_in(&format!("user{i}"), "wrong").await.status);
    }
    assert!(statuses[..30].iter().all(|&st| st == 401), "{statuses:?}");
    assert_eq!(statuses[31], 429, "{statuses:?}");
}

#[tokio::test]
async fn a_viewer_sees_no_controls_and_the_server_refuses_its_forged_changes() {
    let s = Server::sqlite().await;
    let admin = s.token("admin").await;
    let k = key(&s, &admin, "viewer-visible").await;
    let id = k["id"].as_str().unwrap();
    user(&s, "vic", Role::Viewer).await;
    let vic = s.session("vic", PW).await;

    let page = vic.req("GET", "/admin/keys").send().await;
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains(&format!(r#"data-key-id="{id}""#)));
    for control in [
        "key-toggle",
        "key-select",
        "batch-action",
        "batch-apply",
        "key-new",
    ] {
        assert!(
            !html.contains(&format!(r#"data-testid="{control}""#)),
            "{control}"
        );
    }
    for nav in ["nav-overview", "nav-keys"] {
        assert!(html.contains(&format!(r#"data-testid="{nav}""#)), "{nav}");
    }
    for nav in ["nav-audit", "nav-logs", "nav-tokens", "nav-users"] {
        assert!(!html.contains(&format!(r#"data-testid="{nav}""#)), "{nav}");
    }
    assert_eq!(vic.req("GET", "/admin/logs").send().await.status, 403);
    assert_eq!(vic.req("GET", "/admin/api/logs").send().await.status, 403);
    let detail = vic.req("GET", &format!("/admin/keys/{id}")).send().await;
    assert_eq!(detail.status, 200);
    for control in ["key-edit", "key-rotate", "key-delete", "key-toggle"] {
        assert!(
            !detail
                .text()
                .contains(&format!(r#"data-testid="{control}""#))
        );
    }
    assert_eq!(vic.req("GET", "/admin/keys/new").send().await.status, 403);

    // Forged changes, with the session's own CSRF token, are refused and change nothing.
    let toggle = vic
        .script(
            "POST",
            &format!("/admin/keys/{id}/toggle"),
            &json!({"enabled": false}),
        )
        .await;
    assert_eq!(toggle.status, 403, "{}", toggle.text());
    let form = vic
        .post_form(&format!("/admin/keys/{id}/toggle"), &[("enabled", "false")])
        .await;
    assert_eq!(form.status, 403);
    let batch = vic
        .script(
            "POST",
            "/admin/keys/batch",
            &json!({"action": "delete", "ids": [id]}),
        )
        .await;
    assert_eq!(batch.status, 403);
    let made = vic
        .post_form("/admin/keys/new", &[("name", "forged")])
        .await;
    assert_eq!(made.status, 403);
    let del = vic
        .post_form(&format!("/admin/keys/{id}/delete"), &[])
        .await;
    assert_eq!(del.status, 403);
    assert!(key_enabled(&s, &admin, id).await);
    let list = s.req("GET", "/v1/keys").token(&admin).send().await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    // Each refused attempt is audited, as the API's are.
    let refused = s
        .req("GET", "/v1/audit?actor=user:vic&outcome=refused")
        .token(&admin)
        .send()
        .await
        .json();
    let actions: Vec<_> = refused["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect();
    for a in ["key.disable", "key.batch", "key.create", "key.delete"] {
        assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
    }
}

#[tokio::test]
async fn a_change_without_its_csrf_token_or_from_another_origin_is_refused() {
    let s = Server::sqlite().await;
    let admin = s.token("admin").await;
    let k = key(&s, &admin, "guarded").await;
    let id = k["id"].as_str().unwrap();
    user(&s, "olga", Role::Operator).await;
    let olga = s.session("olga", PW).await;
    let path = format!("/admin/keys/{id}/toggle");

    let no_token = olga
        .req("POST", &path)
        .json(&json!({"enabled": false}))
        .send()
        .await;
    assert_eq!(no_token.status, 403);
    let wrong = olga
        .req("POST", &path)
        .header("X-CSRF-Token", &"0".repeat(64))
        .json(&json!({"enabled": false}))
        .send()
        .await;
    assert_eq!(wrong.status, 403);
    let form_without = olga
        .req("POST", &path)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .raw(b"enabled=false")
        .send()
        .await;
    assert_eq!(form_without.status, 403);
    let elsewhere = olga
        .req("POST", &path)
        .header("X-CSRF-Token", &olga.csrf)
        .header("Origin", "https://evil.example")
        .json(&json!({"enabled": false}))
        .send()
        .await;
    assert_eq!(elsewhere.status, 403);
    let referer = olga
        .req("POST", &path)
        .header("Referer", "http://evil.example/page")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .raw(format!("csrf={}&enabled=false", olga.csrf).as_bytes())
        .send()
        .await;
    assert_eq!(referer.status, 403);
    assert!(key_enabled(&s, &admin, id).await, "nothing changed");

    // Another session's token is not this one's.
    let other = s.session("olga", PW).await;
    assert_ne!(other.csrf, olga.csrf);
    let crossed = olga
        .req("POST", &path)
        .header("X-CSRF-Token", &other.csrf)
        .json(&json!({"enabled": false}))
        .send()
        .await;
    assert_eq!(crossed.status, 403);

    // The genuine change, from this origin, works; a session cookie never opens /v1.
    let ok = olga
        .req("POST", &path)
        .header("X-CSRF-Token", &olga.csrf)
        .header("Origin", "http://127.0.0.1:8080")
        .json(&json!({"enabled": false}))
        .send()
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["status"], "disabled");
    assert!(!key_enabled(&s, &admin, id).await);
    assert_eq!(
        olga.req("GET", "/v1/keys").send().await.status,
        401,
        "a session cookie never authenticates /v1"
    );
}

/// The secret shown on a page: the text of `new-key-secret`.
fn shown_secret(html: &str) -> Option<String> {
    let marker = r#"data-testid="new-key-secret">"#;
    let at = html.find(marker)? + marker.len();
    Some(html[at..at + html[at..].find('<')?].to_owned())
}

#[tokio::test]
async fn a_new_key_is_shown_once_on_the_page_after_the_post() {
    let s = Server::sqlite().await;
    let admin = s.token("admin").await;
    user(&s, "olga", Role::Operator).await;
    let olga = s.session("olga", PW).await;
    let made = olga
        .post_form(
            "/admin/keys/new",
            &[
                ("name", "billing service"),
                ("owner_id", "team-b"),
                ("credits", "1000"),
                ("rl_name", "per_minute"),
                ("rl_limit", "60"),
                ("rl_period", "1m"),
                ("scopes", "read write"),
                ("metadata", r#"{"plan": "pro"}"#),
                ("enabled", "on"),
            ],
        )
        .await;
    assert_eq!(made.status, 303, "{}", made.text());
    let location = made.header("location").unwrap().to_owned();
    assert!(location.starts_with("/admin/keys/"), "{location}");
    let flash = made
        .cookie("kv_flash")
        .expect("the one view travels in a cookie");
    assert!(
        !made.text().contains("kv_"),
        "the redirect carries no secret in its body"
    );

    let landed = olga
        .req("GET", &location)
        .header("Cookie", &format!("{}; kv_flash={flash}", olga.cookie))
        .send()
        .await;
    assert_eq!(landed.status, 200);
    assert_eq!(landed.header("cache-control"), Some("no-store"));
    assert_eq!(
        landed.cookie("kv_flash").as_deref(),
        Some(""),
        "the view is used up"
    );
    let secret = shown_secret(&landed.text()).expect("the key is shown");
    assert!(landed.text().contains(r#"data-testid="copy-key""#));
    let verified = s
        .req("POST", "/v1/keys/verify")
        .token(&admin)
        .json(&json!({"key": secret}))
        .send()
        .await
        .json();
    assert_eq!(verified["valid"], true, "{verified}");
    assert_eq!(verified["owner_id"], "team-b");

    // A reload (the browser no longer has the cookie) shows the key's page without it;
    // another session cannot open the cookie either.
    let reload = olga.req("GET", &location).send().await;
    assert_eq!(reload.status, 200);
    assert!(shown_secret(&reload.text()).is_none());
    assert!(!reload.text().contains(&secret));
    let other = s.session("olga", PW).await;
    let stolen = other
        .req("GET", &location)
        .header("Cookie", &format!("{}; kv_flash={flash}", other.cookie))
        .send()
        .await;
    assert!(!stolen.text().contains(&secret));
    // Exactly one key was made.
    let list = s.req("GET", "/v1/keys").token(&admin).send().await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn form_errors_are_shown_beside_their_fields_in_the_visitors_language() {
    let s = Server::sqlite().await;
    let admin = s.token("admin").await;
    user(&s, "olga", Role::Operator).await;
    let olga = s.session("olga", PW).await;
    let field_error = |html: &str, field: &str| {
        html.contains(&format!(
            r#"data-testid="field-error" data-field="{field}""#
        ))
    };
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("name", "")], "name"),
        (&[("name", "k"), ("credits", "abc")], "credits.remaining"),
        (&[("name", "k"), ("credits", "-5")], "credits.remaining"),
        (
            &[
                ("name", "k"),
                ("rl_name", "m"),
                ("rl_limit", "0"),
                ("rl_period", "1m"),
            ],
            "ratelimits[0].limit",
        ),
        (&[("name", "k"), ("metadata", "[1, 2]")], "metadata"),
        (
            &[("name", "k"), ("expires_at", "2001-01-01T00:00")],
            "expires_at",
        ),
    ];
    for (fields, field) in cases {
        let r = olga.post_form("/admin/keys/new", fields).await;
        assert_eq!(r.status, 422, "{fields:?}: {}", r.text());
        assert!(field_error(&r.text(), field), "{fields:?}: {}", r.text());
    }
    // The form keeps what was typed.
    let r = olga
        .post_form(
            "/admin/keys/new",
            &[("name", "kept name"), ("credits", "abc")],
        )
        .await;
    assert!(r.text().contains(r#"value="kept name""#));

    // In Chinese.
    let zh = olga
        .req("POST", "/admin/keys/new")
        .header("Cookie", &format!("{}; kv_lang=zh-CN", olga.cookie))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .raw(format!("csrf={}&name=k&credits=abc", olga.csrf).as_bytes())
        .send()
        .await;
    assert_eq!(zh.status, 422);
    assert!(zh.text().contains(r#"<html lang="zh-CN""#));
    assert!(zh.text().contains("请输入不小于 0 的整数"), "{}", zh.text());
    let list = s.req("GET", "/v1/keys").token(&admin).send().await.json();
    assert!(
        list["items"].as_array().unwrap().is_empty(),
        "nothing was made"
    );
}

#[tokio::test]
async fn the_key_list_searches_and_pages_on_the_server_and_batches_report_per_key() {
    let s = Server::sqlite().await;
    let admin = s.token("admin").await;
    let mut ids = Vec::new();
    for i in 0..55 {
        let name = if i % 10 == 0 {
            format!("search-me {i}")
        } else {
            format!("other {i}")
        };
        ids.push(
            key(&s, &admin, &name).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    user(&s, "olga", Role::Operator).await;
    let olga = s.session("olga", PW).await;
    let rows = |html: &str| html.matches(r#"data-testid="key-row""#).count();

    let first = olga.req("GET", "/admin/keys").send().await.text();
    assert_eq!(rows(&first), 50, "one page, never every key");
    let marker = r#"href=""#;
    let next_at = first
        .find(r#"data-testid="page-next""#)
        .expect("a next page");
    let href_start = first[..next_at].rfind(marker).unwrap() + marker.len();
    let next = first[href_start..href_start + first[href_start..].find('"').unwrap()]
        .replace("&amp;", "&");
    let second = olga.req("GET", &next).send().await.text();
    assert_eq!(rows(&second), 5);

    let found = olga
        .req("GET", "/admin/keys?q=search-me")
        .send()
        .await
        .text();
    assert_eq!(rows(&found), 6);
    assert!(!found.contains(">other "));

    // Batch: two keys and an id nobody has; a result each.
    let batch = olga
        .script(
            "POST",
            "/admin/keys/batch",
            &json!({"action": "disable", "ids": [ids[0], ids[1], "not-an-id"]}),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.text());
    let results = batch.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["ok"], true);
    assert_eq!(results[0]["status"], "disabled");
    assert_eq!(results[2]["ok"], false);
    assert!(!key_enabled(&s, &admin, &ids[0]).await);
    let disabled = olga
        .req("GET", "/admin/keys?state=disabled")
        .send()
        .await
        .text();
    assert_eq!(rows(&disabled), 2);

    // The same batch as a plain form (no script): a page with a result per key.
    let form = olga
        .post_form(
            "/admin/keys/batch",
            &[("action", "enable"), ("ids", &ids[0]), ("ids", &ids[1])],
        )
        .await;
    assert_eq!(form.status, 200, "{}", form.text());
    assert_eq!(
        form.text().matches(r#"data-testid="batch-result""#).count(),
        2
    );
    assert!(form.text().contains(r#"data-ok="true""#));
    assert!(key_enabled(&s, &admin, &ids[0]).await);
}

#[tokio::test]
async fn no_form_answers_500_to_random_oversized_or_malformed_values() {
    let s = Server::sqlite().await;
    let admin = s.token("admin").await;
    let id = key(&s, &admin, "target").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    user(&s, "ada", Role::Admin).await;
    let ada = s.session("ada", PW).await;
    let mut rng = StdRng::seed_from_u64(7);
    let fields = [
        "name",
        "owner_id",
        "prefix",
        "enabled",
        "expires_at",
        "tz",
        "credits",
        "refill_interval",
        "refill_amount",
        "rl_name",
        "rl_limit",
        "rl_period",
        "scopes",
        "ip_allowlist",
        "metadata",
        "rotation_every",
        "rotation_grace",
        "grace",
        "action",
        "ids",
        "next",
        "lang",
        "username",
        "password",
        "kind",
        "url",
        "events",
    ];
    let forms = [
        "/admin/keys/new".to_owned(),
        format!("/admin/keys/{id}/edit"),
        format!("/admin/keys/{id}/toggle"),
        format!("/admin/keys/{id}/rotate"),
        "/admin/keys/batch".to_owned(),
        "/admin/keys/00000000-0000-0000-0000-000000000000/toggle".to_owned(),
        "/admin/keys/%ZZ/edit".to_owned(),
        "/admin/alerts/notifiers".to_owned(),
    ];
    let value = |rng: &mut StdRng| -> String {
        match rng.random_range(0..8) {
            0 => String::new(),
            1 => "9".repeat(rng.random_range(1..40)),
            2 => "x".repeat(rng.random_range(1000..30_000)),
            3 => "-1".into(),
            4 => "{\"a\":".into(),
            5 => "\u{0}\u{202e}<script>é中文".into(),
            6 => "1e309".into(),
            _ => (0..rng.random_range(1..30))
                .map(|_| rng.random_range(b' '..=b'~') as char)
                .collect(),
        }
    };
    for round in 0..150 {
        let path = &forms[round % forms.len()];
        let mut pairs: Vec<(String, String)> = vec![("csrf".into(), ada.csrf.clone())];
        for _ in 0..rng.random_range(0..10) {
            pairs.push((
                fields[rng.random_range(0..fields.len())].into(),
                value(&mut rng),
            ));
        }
        let body = serde_html_form::to_string(&pairs).unwrap();
        let r = ada
            .req("POST", path)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .raw(body.as_bytes())
            .send()
            .await;
        assert!(
            r.status < 500,
            "{path} {body:.300}: {} {:.500}",
            r.status,
            r.text()
        );
        // A malformed body (not a form at all).
        let raw: Vec<u8> = (0..rng.random_range(0..200))
            .map(|_| rng.random())
            .collect();
        let r = ada
            .req("POST", path)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .raw(&raw)
            .send()
            .await;
        assert!(r.status < 500, "{path} raw: {}", r.status);
    }
    // The sign-in form too.
    for _ in 0..40 {
        let body = format!("username={}&password={}", value(&mut rng), value(&mut rng));
        let r = s
            .req("POST", "/admin/login")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .raw(body.as_bytes())
            .peer(&format!(
                "10.0.{}.{}:1",
                rng.random_range(0..250),
                rng.random_range(1..250)
            ))
            .send()
            .await;
        assert!(r.status < 500, "login: {}", r.status);
    }
}

#[tokio::test]
async fn admins_make_tokens_shown_once_and_manage_users_but_not_the_last_admin() {
    let s = Server::sqlite().await;
    user(&s, "ada", Role::Admin).await;
    user(&s, "olga", Role::Operator).await;
    let ada = s.session("ada", PW).await;
    let olga = s.session("olga", PW).await;
    for page in ["/admin/tokens", "/admin/users"] {
        assert_eq!(olga.req("GET", page).send().await.status, 403, "{page}");
    }
    assert_eq!(
        olga.post_form("/admin/tokens", &[("name", "forged"), ("role", "admin")])
            .await
            .status,
        403
    );

    let made = ada
        .post_form("/admin/tokens", &[("name", "ci bot"), ("role", "viewer")])
        .await;
    assert_eq!(made.status, 303, "{}", made.text());
    let flash = made.cookie("kv_flash").unwrap();
    let page = ada
        .req("GET", "/admin/tokens")
        .header("Cookie", &format!("{}; kv_flash={flash}", ada.cookie))
        .send()
        .await;
    let html = page.text();
    let marker = r#"data-testid="new-token-secret">"#;
    let at = html.find(marker).expect("the token is shown") + marker.len();
    let token = html[at..at + html[at..].find('<').unwrap()].to_owned();
    assert_eq!(
        s.req("GET", "/v1/keys").token(&token).send().await.status,
        200
    );
    let again = ada.req("GET", "/admin/tokens").send().await.text();
    assert!(!again.contains(&token));
    let marker = r#"data-testid="token-row" data-token-id=""#;
    let at = again.find(marker).unwrap() + marker.len();
    let id = &again[at..at + 36];
    let revoked = ada
        .post_form(&format!("/admin/tokens/{id}/revoke"), &[])
        .await;
    assert_eq!(revoked.status, 303);
    assert_eq!(
        s.req("GET", "/v1/keys").token(&token).send().await.status,
        401
    );
    let bad = ada
        .post_form("/admin/tokens", &[("name", " "), ("role", "viewer")])
        .await;
    assert_eq!(bad.status, 422);
    assert!(bad.text().contains(r#"data-field="name""#));

    // Users: a new one; a role change ends their session; the last admin stays.
    let made = ada
        .post_form(
            "/admin/users",
            &[("username", "vic"), ("role", "viewer"), ("password", PW)],
        )
        .await;
    assert_eq!(made.status, 303, "{}", made.text());
    let short = ada
        .post_form(
            "/admin/users",
            &[
                ("username", "pat"),
                ("role", "viewer"),
                ("password", "short"),
            ],
        )
        .await;
    assert_eq!(short.status, 422);
    assert!(short.text().contains(r#"data-field="password""#));
    assert!(
        !short.text().contains("value=\"short\""),
        "a password never goes back"
    );
    let users = ada.req("GET", "/admin/users").send().await.text();
    assert!(users.contains(r#"data-testid="user-row" data-username="vic""#));
    let promoted = ada
        .post_form(
            "/admin/users/olga/access",
            &[("role", "admin"), ("enabled", "on")],
        )
        .await;
    assert_eq!(promoted.status, 303);
    assert_eq!(
        olga.req("GET", "/admin").send().await.status,
        303,
        "her session ended"
    );
    let olga = s.session("olga", PW).await;
    assert_eq!(olga.req("GET", "/admin/users").send().await.status, 200);
    // Two admins: ada may step down; then olga is the last and cannot.
    let down = ada
        .post_form(
            "/admin/users/ada/access",
            &[("role", "viewer"), ("enabled", "on")],
        )
        .await;
    assert_eq!(down.status, 303);
    let last = olga
        .post_form(
            "/admin/users/olga/access",
            &[("role", "operator"), ("enabled", "on")],
        )
        .await;
    assert_eq!(last.status, 422, "{}", last.text());
    assert!(last.text().contains(r#"data-testid="user-error""#));
    let off = olga
        .post_form("/admin/users/olga/access", &[("role", "admin")])
        .await;
    assert_eq!(off.status, 422, "the last admin cannot be disabled");
    assert_eq!(olga.req("GET", "/admin/users").send().await.status, 200);
}

#[tokio::test]
async fn the_audit_page_filters_exports_the_filtered_records_and_keeps_the_last_check() {
    let s = Server::sqlite().await;
    let admin = s.token("admin").await;
    let k = key(&s, &admin, "audited").await;
    let id = k["id"].as_str().unwrap();
    // A refused rotation of a disabled key, and a success.
    s.req("PATCH", &format!("/v1/keys/{id}"))
        .token(&admin)
        .json(&json!({"name": "=cmd|' /C calc'!A0"}))
        .send()
        .await;
    user(&s, "olga", Role::Operator).await;
    user(&s, "vic", Role::Viewer).await;
    let vic = s.session("vic", PW).await;
    assert_eq!(vic.req("GET", "/admin/audit").send().await.status, 403);
    assert_eq!(vic.req("GET", "/admin/audit.csv").send().await.status, 403);
    let olga = s.session("olga", PW).await;

    let all = olga.req("GET", "/admin/audit").send().await.text();
    assert!(
        all.matches(r#"data-testid="audit-row""#).count() >= 4,
        "{all}"
    );
    assert!(all.contains(r#"data-chain="never""#));
    let created = olga
        .req("GET", "/admin/audit?action=key.create")
        .send()
        .await
        .text();
    assert_eq!(created.matches(r#"data-testid="audit-row""#).count(), 1);
    let export_at = created.find(r#"data-testid="audit-export""#).unwrap();
    let href = &created[created[..export_at].rfind("href=\"").unwrap() + 6..];
    let href = href[..href.find('"').unwrap()].replace("&amp;", "&");
    assert_eq!(href, "/admin/audit.csv?action=key.create");
    let csv = olga.req("GET", &href).send().await;
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    assert!(
        csv.header("content-disposition")
            .unwrap()
            .contains("attachment")
    );
    let lines: Vec<_> = csv.text().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("seq,at,actor,action"));
    assert!(lines[1].contains(",key.create,"));
    let everything = olga.req("GET", "/admin/audit.csv").send().await.text();
    assert!(!everything.contains(",=cmd"), "no cell starts a formula");

    let refused = olga
        .req("GET", "/admin/audit?outcome=refused")
        .send()
        .await
        .text();
    assert_eq!(refused.matches(r#"data-testid="audit-row""#).count(), 0);
    let viewer_refused = vic.post_form("/admin/audit/verify", &[]).await;
    assert_eq!(viewer_refused.status, 403);

    let verified = olga.post_form("/admin/audit/verify", &[]).await;
    assert_eq!(verified.status, 303);
    let after = olga.req("GET", "/admin/audit").send().await.text();
    assert!(after.contains(r#"data-chain="intact""#), "{after}");
    // The check is kept, not rerun per page load: it names who ran it.
    assert!(after.contains("olga"));
}

#[tokio::test]
async fn the_overview_lists_enabled_keys_expiring_within_seven_days_soonest_first() {
    let s = Server::sqlite().await;
    let admin = s.token("admin").await;
    let at = |days: i64| (chrono::Utc::now() + chrono::TimeDelta::days(days)).to_rfc3339();
    for (name, days, enabled) in [
        ("in-five", 5, true),
        ("in-two", 2, true),
        ("in-thirty", 30, true),
        ("off-in-one", 1, false),
    ] {
        let r = s
            .req("POST", "/v1/keys")
            .token(&admin)
            .json(&json!({"name": name, "expires_at": at(days), "enabled": enabled}))
            .send()
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    user(&s, "vic", Role::Viewer).await;
    let vic = s.session("vic", PW).await;
    let page = vic.req("GET", "/admin?range=7d").send().await.text();
    let two = page.find(">in-two<").expect("in-two listed");
    let five = page.find(">in-five<").expect("in-five listed");
    assert!(two < five, "soonest first");
    assert!(!page.contains(">in-thirty<") && !page.contains(">off-in-one<"));
    for id in [
        "kpi-calls",
        "kpi-success-rate",
        "kpi-p95",
        "chart-calls",
        "chart-providers",
        "chart-latency",
        "range-1h",
        "range-24h",
        "range-7d",
        "range-30d",
    ] {
        assert!(page.contains(&format!(r#"data-testid="{id}""#)), "{id}");
    }
}

#[tokio::test]
async fn the_cookie_is_secure_when_a_trusted_proxy_says_https_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let settings = common::Settings {
        trusted_proxies: Some("127.0.0.1/32".into()),
        ..common::Settings::sqlite(dir.path())
    };
    let s = Server::start(&settings).await;
    user(&s, "ada", Role::Admin).await;
    let sign_in = |proto: Option<&'static str>, peer: &'static str| {
        let s = &s;
        async move {
            let mut form = s.req("GET", "/admin/login").peer(peer);
            if let Some(p) = proto {
                form = form.header("X-Forwarded-Proto", p);
            }
            let form = form.send().await;
            let nonce = form.cookie("kv_login").unwrap();
            let body = serde_html_form::to_string([
                ("username", "ada"),
                ("password", PW),
                ("csrf", &form.csrf()),
            ])
            .unwrap();
            let mut post = s
                .req("POST", "/admin/login")
                .peer(peer)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .header("Cookie", &format!("kv_login={nonce}"))
                .raw(body.as_bytes());
            if let Some(p) = proto {
                post = post.header("X-Forwarded-Proto", p);
            }
            let r = post.send().await;
            assert_eq!(r.status, 303, "{}", r.text());
            r.headers
                .iter()
                .find(|(k, v)| k == "set-cookie" && v.starts_with("kv_session="))
                .unwrap()
                .1
                .clone()
        }
    };
    let behind_proxy = sign_in(Some("https"), "127.0.0.1:40000").await;
    assert!(behind_proxy.contains("; Secure"), "{behind_proxy}");
    assert!(behind_proxy.contains("HttpOnly") && behind_proxy.contains("SameSite=Strict"));
    let plain = sign_in(None, "127.0.0.1:40000").await;
    assert!(!plain.contains("Secure"), "{plain}");
    // An untrusted peer cannot claim HTTPS.
    let untrusted = sign_in(Some("https"), "198.51.100.7:40000").await;
    assert!(!untrusted.contains("Secure"), "{untrusted}");
}

#[tokio::test]
async fn operators_read_the_system_log_newest_first_by_level() {
    let s = Server::sqlite().await;
    let token = s.token("admin").await;
    user(&s, "otto", Role::Operator).await;
    let otto = s.session("otto", PW).await;
    let r = s
        .req("GET", "/v1/keys")
        .token(&token)
        .header("X-Request-Id", "page-log-record")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let page = otto.req("GET", "/admin/logs").send().await;
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains(r#"data-testid="nav-logs""#));
    assert!(html.contains(r#"data-testid="log-row""#));
    assert!(html.contains("request_id=page-log-record"), "{html}");
    common::assert_no_secrets(&html, std::slice::from_ref(&token));
    let errors = otto
        .req("GET", "/admin/logs?level=error")
        .send()
        .await
        .text();
    assert!(!errors.contains("page-log-record"));
    let data = otto.req("GET", "/admin/api/logs?level=info").send().await;
    assert_eq!(data.status, 200);
    let items = data.json()["items"].as_array().unwrap().clone();
    assert!(
        items
            .iter()
            .any(|i| i["fields"].as_str().unwrap().contains("page-log-record"))
    );
    // Without a session the script gets a problem document, not the sign-in page.
    assert_eq!(s.req("GET", "/admin/api/logs").send().await.status, 401);
}

#[tokio::test]
async fn viewers_read_alerts_and_operators_acknowledge_them_and_edit_rules() {
    let s = Server::sqlite().await;
    let token = s.token("operator").await;
    user(&s, "vic", Role::Viewer).await;
    user(&s, "otto", Role::Operator).await;
    let soon = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let r = s
        .req("POST", "/v1/keys")
        .token(&token)
        .json(&json!({"name": "ending", "expires_at": soon}))
        .send()
        .await;
    let kid = r.json()["id"].as_str().unwrap().to_owned();
    let r = s
        .req("POST", "/v1/alert-rules")
        .token(&token)
        .json(&json!({"name": "expiry", "kind": "expiring", "params": {"within": "2h"}, "key_id": kid}))
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let rule_id = r.json()["id"].as_str().unwrap().to_owned();
    let t = s
        .app
        .evaluate_alerts(chrono::Utc::now(), std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let alert = t.fired[0].id.to_string();

    // A viewer sees the alert, on its page and on the overview, and no control.
    let vic = s.session("vic", PW).await;
    let page = vic.req("GET", "/admin/alerts").send().await;
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains(r#"data-testid="nav-alerts""#));
    assert!(html.contains(&format!(r#"data-alert-id="{alert}" data-state="firing""#)));
    // Its time left out of the rule's window, as lengths of time rather than seconds.
    assert!(html.contains("/ 2 h</span>"), "{html}");
    for control in ["alert-ack", "rule-form", "rule-row", "rule-delete"] {
        assert!(
            !html.contains(&format!(r#"data-testid="{control}""#)),
            "{control}"
        );
    }
    let overview = vic.req("GET", "/admin").send().await.text();
    assert!(overview.contains(&format!(
        r#"data-testid="firing-alert" data-alert-id="{alert}""#
    )));
    let refused = vic
        .post_form(&format!("/admin/alerts/{alert}/ack"), &[])
        .await;
    assert_eq!(refused.status, 403);

    // An operator acknowledges it: it leaves the firing filter for the acknowledged one.
    let otto = s.session("otto", PW).await;
    let page = otto.req("GET", "/admin/alerts").send().await.text();
    assert!(page.contains(r#"data-testid="alert-ack""#));
    assert!(page.contains(&format!(r#"data-rule-id="{rule_id}""#)));
    let acked = otto
        .post_form(&format!("/admin/alerts/{alert}/ack"), &[])
        .await;
    assert_eq!(acked.status, 303, "{}", acked.text());
    let firing = otto
        .req("GET", "/admin/alerts?state=firing")
        .send()
        .await
        .text();
    assert!(!firing.contains(&alert));
    let later = otto
        .req("GET", "/admin/alerts?state=acknowledged")
        .send()
        .await
        .text();
    assert!(later.contains(&format!(
        r#"data-alert-id="{alert}" data-state="acknowledged""#
    )));
    let absent = otto
        .post_form(
            "/admin/alerts/01a22121-829c-725b-8039-33e816e31bea/ack",
            &[],
        )
        .await;
    assert_eq!(absent.status, 404);

    // A bad param is named beside the params input, and nothing is created.
    let bad = otto
        .post_form(
            "/admin/alerts/rules",
            &[
                ("name", "low"),
                ("kind", "credits_low"),
                ("params", r#"{"below_percent": 150}"#),
                ("enabled", "on"),
            ],
        )
        .await;
    assert_eq!(bad.status, 422);
    let html = bad.text();
    assert!(
        html.contains(r#"data-testid="field-error" data-field="params.below_percent""#),
        "{html}"
    );
    assert!(html.contains(r#"{&quot;below_percent&quot;: 150}"#) || html.contains("150"));
    let not_json = otto
        .post_form(
            "/admin/alerts/rules",
            &[("name", "low"), ("kind", "credits_low"), ("params", "{")],
        )
        .await;
    assert_eq!(not_json.status, 422);
    assert!(not_json.text().contains(r#"data-field="params""#));
    assert_eq!(rules(&s, &token).await.len(), 1);

    // A good one is created; its row edits name and switch and keeps the key it watches.
    let made = otto
        .post_form(
            "/admin/alerts/rules",
            &[
                ("name", "low"),
                ("kind", "credits_low"),
                ("params", r#"{"below": 5}"#),
                ("enabled", "on"),
            ],
        )
        .await;
    assert_eq!(made.status, 303, "{}", made.text());
    assert_eq!(rules(&s, &token).await.len(), 2);
    let edited = otto
        .post_form(
            &format!("/admin/alerts/rules/{rule_id}"),
            &[
                ("name", "expiry, renamed"),
                ("params", r#"{"within": "3h"}"#),
            ],
        )
        .await;
    assert_eq!(edited.status, 303, "{}", edited.text());
    let rule = s
        .req("GET", &format!("/v1/alert-rules/{rule_id}"))
        .token(&token)
        .send()
        .await
        .json();
    assert_eq!(rule["name"], "expiry, renamed");
    assert_eq!(rule["enabled"], false);
    assert_eq!(rule["params"]["within"], "3h");
    assert_eq!(rule["key_id"], kid.as_str());
    let gone = otto
        .post_form(&format!("/admin/alerts/rules/{rule_id}/delete"), &[])
        .await;
    assert_eq!(gone.status, 303);
    assert_eq!(rules(&s, &token).await.len(), 1);
}

async fn rules(s: &Server, token: &str) -> Vec<Value> {
    let r = s.req("GET", "/v1/alert-rules").token(token).send().await;
    r.json()["items"].as_array().unwrap().clone()
}

/// The text of the element with this `data-testid`, up to its first tag.
fn testid_text(html: &str, testid: &str) -> Option<String> {
    let marker = format!(r#"data-testid="{testid}">"#);
    let at = html.find(&marker)? + marker.len();
    Some(html[at..at + html[at..].find('<')?].to_owned())
}

async fn channels(s: &Server, token: &str) -> Vec<Value> {
    let r = s.req("GET", "/v1/notifiers").token(token).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn admins_make_channels_see_a_webhook_secret_once_send_a_test_and_delete_them() {
    // hooks.test resolves inside: its test is refused without reaching any network.
    let resolver = keyvault_admin::notify::guard::StaticResolver(vec![(
        "hooks.test".into(),
        "10.0.0.9".parse().unwrap(),
    )]);
    let s = Server::sqlite_with(|app| {
        app.with_resolver(std::sync::Arc::new(resolver))
            .expect("a resolver")
    })
    .await;
    let token = s.token("admin").await;
    user(&s, "ada", Role::Admin).await;
    user(&s, "otto", Role::Operator).await;
    let ada = s.session("ada", PW).await;
    let otto = s.session("otto", PW).await;

    let page = ada.req("GET", "/admin/alerts").send().await.text();
    assert!(page.contains(r#"data-testid="notifier-form""#));
    assert!(page.contains(r#"data-testid="notifiers-none""#));

    // A URL naming a loopback address is refused beside the url input; the form keeps
    // what was typed, and nothing is made.
    let bad = ada
        .post_form(
            "/admin/alerts/notifiers",
            &[
                ("name", "ops"),
                ("kind", "webhook"),
                ("url", "http://127.0.0.1/"),
            ],
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.text());
    let html = bad.text();
    assert!(
        html.contains(r#"data-testid="field-error" data-field="url""#),
        "{html}"
    );
    assert!(html.contains(r#"value="ops""#));
    // In the visitor's language; a forged event is named as the API names it.
    let form = serde_html_form::to_string([
        ("csrf", ada.csrf.as_str()),
        ("name", " "),
        ("kind", "webhook"),
        ("url", "https://hooks.example.com/x"),
    ])
    .unwrap();
    let zh = ada
        .req("POST", "/admin/alerts/notifiers")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Accept-Language", "zh-CN")
        .raw(form.as_bytes())
        .send()
        .await;
    assert_eq!(zh.status, 422);
    assert!(zh.text().contains(r#"data-field="name""#));
    assert!(zh.text().contains("请为渠道命名"), "{}", zh.text());
    let forged = ada
        .post_form(
            "/admin/alerts/notifiers",
            &[
                ("name", "ops"),
                ("kind", "webhook"),
                ("url", "https://hooks.example.com/x"),
                ("events", "alert.bogus"),
            ],
        )
        .await;
    assert_eq!(forged.status, 422);
    assert!(forged.text().contains(r#"data-field="events[0]""#));
    assert!(channels(&s, &token).await.is_empty());

    // An operator sees no channel control, and the server refuses its forged changes.
    let good = [
        ("name", "ops hook"),
        ("kind", "webhook"),
        ("url", "https://hooks.example.com/x/private-path"),
        ("events", "alert.firing"),
        ("events", "test"),
    ];
    let page = otto.req("GET", "/admin/alerts").send().await.text();
    for control in [
        "notifier-form",
        "notifier-row",
        "notifier-test",
        "notifier-delete",
    ] {
        assert!(
            !page.contains(&format!(r#"data-testid="{control}""#)),
            "{control}"
        );
    }
    let refused = otto.post_form("/admin/alerts/notifiers", &good).await;
    assert_eq!(refused.status, 403);
    assert!(channels(&s, &token).await.is_empty());

    // A webhook: its signing secret is shown on the page after the redirect, once.
    let made = ada.post_form("/admin/alerts/notifiers", &good).await;
    assert_eq!(made.status, 303, "{}", made.text());
    let location = made.header("location").unwrap().to_owned();
    assert_eq!(location, "/admin/alerts");
    let flash = made
        .cookie("kv_flash")
        .expect("the one view travels in a cookie");
    assert!(!made.text().contains("whsec_"));
    let landed = ada
        .req("GET", &location)
        .header("Cookie", &format!("{}; kv_flash={flash}", ada.cookie))
        .send()
        .await;
    assert_eq!(landed.status, 200);
    assert_eq!(landed.header("cache-control"), Some("no-store"));
    assert_eq!(landed.cookie("kv_flash").as_deref(), Some(""));
    let secret = testid_text(&landed.text(), "new-notifier-secret").expect("the secret is shown");
    assert!(secret.starts_with("whsec_"), "{secret}");
    let listed = channels(&s, &token).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["url"], "https://hooks.example.com");
    assert_eq!(listed[0]["events"], json!(["alert.firing", "test"]));
    let hook = listed[0]["id"].as_str().unwrap().to_owned();
    // A reload, or another session with the same cookie, never shows it again.
    let reload = ada.req("GET", "/admin/alerts").send().await.text();
    assert!(testid_text(&reload, "new-notifier-secret").is_none());
    assert!(!reload.contains(&secret));
    let other = s.session("ada", PW).await;
    let stolen = other
        .req("GET", "/admin/alerts")
        .header("Cookie", &format!("{}; kv_flash={flash}", other.cookie))
        .send()
        .await;
    assert!(!stolen.text().contains(&secret));
    // The listing shows the scheme and host only.
    assert!(reload.contains(&format!(
        r#"data-testid="notifier-row" data-notifier-id="{hook}""#
    )));
    assert_eq!(
        testid_text(&reload, "notifier-url").as_deref(),
        Some("https://hooks.example.com")
    );
    assert!(!reload.contains("private-path"));

    // An operator may neither test nor delete it.
    for action in ["test", "delete"] {
        let r = otto
            .post_form(&format!("/admin/alerts/notifiers/{hook}/{action}"), &[])
            .await;
        assert_eq!(r.status, 403, "{action}");
    }

    // A Slack channel (no secret) whose host resolves inside: its test is refused, and the
    // page says why.
    let made = ada
        .post_form(
            "/admin/alerts/notifiers",
            &[
                ("name", "team room"),
                ("kind", "slack"),
                ("url", "https://hooks.test/x"),
            ],
        )
        .await;
    assert_eq!(made.status, 303, "{}", made.text());
    assert!(made.cookie("kv_flash").is_none(), "nothing to show once");
    let slack = channels(&s, &token).await[1]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tested = ada
        .post_form(&format!("/admin/alerts/notifiers/{slack}/test"), &[])
        .await;
    assert_eq!(tested.status, 200, "{}", tested.text());
    let html = tested.text();
    assert!(
        html.contains(r#"data-testid="notifier-test-result" data-delivered="false""#),
        "{html}"
    );
    assert!(html.contains("hooks.test resolves to"), "{html}");
    assert!(html.contains("team room"));
    let audit = s
        .req("GET", "/v1/audit?action=notifier.test")
        .token(&token)
        .send()
        .await
        .json();
    let outcomes: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap(),
                r["target_id"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        outcomes.contains(&("success", slack.as_str())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|(o, _)| *o == "refused"),
        "the operator's try"
    );
    let unknown = ada
        .post_form(
            "/admin/alerts/notifiers/01a22121-829c-725b-8039-33e816e31bea/test",
            &[],
        )
        .await;
    assert_eq!(unknown.status, 404);

    // Deleting removes it.
    let gone = ada
        .post_form(&format!("/admin/alerts/notifiers/{slack}/delete"), &[])
        .await;
    assert_eq!(gone.status, 303);
    let left = channels(&s, &token).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], hook.as_str());
    let page = ada.req("GET", "/admin/alerts").send().await.text();
    assert!(!page.contains(&slack));
}
