//! The admin nested under `/kv` in a host's router: every path, redirect, cookie path and
//! documentation URL follows the prefix, and a key made through the admin verifies on the
//! host's own route in the same process.

use std::net::SocketAddr;

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{Request, header},
};
use http_body_util::BodyExt;
use keyvault_admin::{Admin, App, Config, Role, cli::Global};
use keyvault_core::Actor;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Answer {
    status: u16,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

async fn send(router: &Router, req: Request<Body>) -> Answer {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn request(method: &str, path: &str) -> axum::http::request::Builder {
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    Request::builder()
        .method(method)
        .uri(path)
        .extension(ConnectInfo(peer))
}

async fn open(dir: &std::path::Path) -> Admin {
    let config = Config::from_args(&Global {
        database_url: format!("sqlite://{}", dir.join("kv.db").display()),
        redis_url: None,
        secret_key: None,
        pepper: None,
        trusted_proxies: None,
        instances: "1".into(),
        credits_fail_mode: "closed".into(),
        alert_interval: "30s".into(),
        allow_private_webhooks: "false".into(),
        notify_retry_delays: "10s,30s,5m,30m,2h".into(),
        lang: "en".into(),
        ..Global::default()
    })
    .unwrap();
    Admin::new(App::open(config).await.unwrap())
}

#[tokio::test]
async fn the_admin_answers_under_the_prefix_and_its_keys_verify_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let admin = open(dir.path()).await;
    let router = embedded_admin::router(&admin);
    let token = admin
        .app()
        .create_token("ops", Role::Operator, None, &Actor::library())
        .await
        .unwrap();
    let bearer = format!("Bearer {}", token.token.expose());

    // The host's own routes stay its own; the admin's exist only under the prefix.
    assert_eq!(
        send(&router, request("GET", "/").body(Body::empty()).unwrap())
            .await
            .status,
        200
    );
    let bare = send(
        &router,
        request("GET", "/v1/keys")
            .header(header::AUTHORIZATION, &bearer)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(bare.status, 404);

    // A key made through the admin verifies on the host's route, in the same process.
    let made = send(
        &router,
        request("POST", "/kv/v1/keys")
            .header(header::AUTHORIZATION, &bearer)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"name": "mounted"}).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let key = made.json()["key"].as_str().unwrap().to_owned();
    let id = made.json()["id"].as_str().unwrap().to_owned();
    let hello = send(
        &router,
        request("GET", "/api/hello")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(hello.status, 200);
    assert_eq!(hello.json()["key_id"], id);
    let refused = send(
        &router,
        request("GET", "/api/hello").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(refused.status, 401);

    // The host's calls reach the admin's statistics through the shared recorder.
    let mut calls = 0;
    for _ in 0..200 {
        let st = send(
            &router,
            request("GET", &format!("/kv/v1/stats/overview?key_id={id}"))
                .header(header::AUTHORIZATION, &bearer)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        calls = st.json()["calls"].as_u64().unwrap();
        if calls == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        calls, 1,
        "the host's call is in the admin's statistics within 5 s"
    );

    // Documentation: the UI redirect stays under the prefix, and the document names it.
    let docs = send(
        &router,
        request("GET", "/kv/docs").body(Body::empty()).unwrap(),
    )
    .await;
    assert!((300..400).contains(&docs.status));
    assert_eq!(docs.header("location"), "docs/");
    let ui = send(
        &router,
        request("GET", "/kv/docs/").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(ui.status, 200);
    let init = send(
        &router,
        request("GET", "/kv/docs/swagger-initializer.js")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(init.text().contains("../openapi.json"), "{}", init.text());
    let doc = send(
        &router,
        request("GET", "/kv/openapi.json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(doc.json()["servers"][0]["url"], "/kv");
    admin.shutdown().await;
}

#[tokio::test]
async fn sign_in_redirects_and_cookies_carry_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let admin = open(dir.path()).await;
    let router = embedded_admin::router(&admin);
    admin
        .app()
        .create_admin(
            "ada",
            Role::Admin,
            "correct horse battery".into(),
            &Actor::library(),
        )
        .await
        .unwrap();

    let page = send(
        &router,
        request("GET", "/kv/admin").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(page.status, 303);
    assert_eq!(page.header("location"), "/kv/admin/login");
    let page = send(
        &router,
        request("GET", "/kv/admin/login")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains(r#"action="/kv/admin/login""#),
        "{}",
        page.text()
    );
    let nonce_cookie = page.header("set-cookie").to_owned();
    assert!(nonce_cookie.contains("Path=/kv/admin;"), "{nonce_cookie}");
    let nonce = nonce_cookie.split(';').next().unwrap().to_owned();
    let csrf = hidden_csrf(&page.text());

    let login = send(
        &router,
        request("POST", "/kv/admin/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, &nonce)
            .body(Body::from(format!(
                "username=ada&password=correct+horse+battery&csrf={csrf}"
            )))
            .unwrap(),
    )
    .await;
    assert!((300..400).contains(&login.status), "{}", login.text());
    assert_eq!(login.header("location"), "/kv/admin");
    let cookie = login.header("set-cookie").to_owned();
    assert!(cookie.contains("Path=/kv/admin;"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();

    let signed_in = send(
        &router,
        request("GET", "/kv/admin")
            .header(header::COOKIE, &session)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(signed_in.text().contains("ada"));
    assert!(signed_in.text().contains(r#"href="/kv/docs/""#));
    assert!(signed_in.text().contains(r#"action="/kv/admin/logout""#));

    let csrf = hidden_csrf(&signed_in.text());
    let out = send(
        &router,
        request("POST", "/kv/admin/logout")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, &session)
            .body(Body::from(format!("csrf={csrf}")))
            .unwrap(),
    )
    .await;
    assert_eq!(out.header("location"), "/kv/admin/login");
    assert!(out.header("set-cookie").contains("Path=/kv/admin;"));
    // The session has ended: the overview sends the browser to the sign-in form again.
    let after = send(
        &router,
        request("GET", "/kv/admin")
            .header(header::COOKIE, &session)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(after.status, 303);
    admin.shutdown().await;
}

/// The CSRF token of a page's first form.
fn hidden_csrf(page: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let at = page.find(marker).expect("a form with a CSRF token") + marker.len();
    page[at..at + page[at..].find('"').unwrap()].to_owned()
}
