//! The attacker's view of `keyvault serve`: slow clients against the real server over TCP
//! (the header-read timeout, the whole-request timeout, the live stream exempt from it, a
//! shutdown that does not wait for ever), and the security headers of every answer.

mod common;

use std::time::{Duration, Instant};

use common::{Resp, Server, Settings};
use keyvault_admin::Role;
use keyvault_core::Actor;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Reads until the server closes the connection or `within` passes; `None` on the latter.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn with_timeouts(dir: &std::path::Path, header: &str, request: &str) -> Settings {
    Settings {
        header_timeout: Some(header.into()),
        request_timeout: Some(request.into()),
        ..Settings::sqlite(dir)
    }
}

#[tokio::test]
async fn a_client_that_stalls_in_its_request_line_is_disconnected_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&with_timeouts(dir.path(), "400ms", "30s")).await;
    let served = s.serve_tcp().await;

    // An honest client on another connection is answered meanwhile.
    let mut stalled = TcpStream::connect(served.addr).await.unwrap();
    stalled.write_all(b"GET /heal").await.unwrap();
    let start = Instant::now();
    let mut honest = TcpStream::connect(served.addr).await.unwrap();
    honest
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut honest, Duration::from_secs(5))
        .await
        .expect("the honest request is answered");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // The stalled one is closed once the header timeout has run out, without an answer.
    let got = read_to_close(&mut stalled, Duration::from_secs(5))
        .await
        .expect("the stalled connection is closed");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));

    // A connection that sends nothing at all is closed alike.
    let mut silent = TcpStream::connect(served.addr).await.unwrap();
    assert!(
        read_to_close(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a silent connection stays open"
    );
    assert!(served.stop(Duration::from_secs(10)).await.is_some());
}

#[tokio::test]
async fn a_request_whose_body_never_finishes_gets_the_timeout_answer() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&with_timeouts(dir.path(), "10s", "500ms")).await;
    let op = s.token("operator").await;
    let served = s.serve_tcp().await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    let head = format!(
        "POST /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {op}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"name\": "
    );
    let start = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    let got = read_to_close(&mut stream, Duration::from_secs(5))
        .await
        .expect("the server answers and closes the connection");
    let waited = start.elapsed();
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "answered after {waited:?}"
    );
    let lower = text.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{text}"
    );
    assert!(lower.contains("connection: close"), "{text}");
    assert!(lower.contains("x-content-type-options: nosniff"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let problem: serde_json::Value = serde_json::from_str(body).expect("a problem document");
    assert_eq!(problem["code"], "request_timeout", "{problem}");
    assert_eq!(problem["status"], 408, "{problem}");
    // Nothing was created.
    let keys = s.req("GET", "/v1/keys").token(&op).send().await.json();
    assert_eq!(keys["items"].as_array().unwrap().len(), 0, "{keys}");
    assert!(served.stop(Duration::from_secs(10)).await.is_some());
}

#[tokio::test]
async fn the_live_stream_outlives_the_request_timeout_and_shutdown_does_not_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&with_timeouts(dir.path(), "10s", "300ms")).await;
    let viewer = s.token("viewer").await;
    let served = s.serve_tcp().await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    let req = format!(
        "GET /v1/stats/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {viewer}\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Events come once a second: three of them span several request timeouts.
    while String::from_utf8_lossy(&got).matches("event: live").count() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the stream goes on")
            .unwrap();
        assert!(
            n > 0,
            "the stream was closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(start.elapsed() > Duration::from_millis(1500), "{text}");

    // The stream is still open when the server is told to stop; the server closes it once
    // the requests in flight have had a request timeout to finish.
    let stopped = served
        .stop(Duration::from_secs(10))
        .await
        .expect("serve returns though a stream is open");
    assert!(stopped >= Duration::from_millis(250), "{stopped:?}");
    assert!(
        read_to_close(&mut stream, Duration::from_secs(5))
            .await
            .is_some(),
        "the stream is closed at shutdown"
    );
}

const PW: &str = "correct horse battery";
const ABSENT: &str = "01a22121-829c-725b-8039-33e816e31bea";

/// Every answer's security headers, by what it is.
fn assert_secure(what: &str, path: &str, r: &Resp) {
    let h = |name: &str| {
        r.header(name)
            .unwrap_or_else(|| panic!("{what} → {}: no {name}: {:?}", r.status, r.headers))
            .to_owned()
    };
    let what = format!("{what} → {}", r.status);
    assert_eq!(h("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(h("x-frame-options"), "DENY", "{what}");
    let csp = h("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(csp.starts_with("default-src 'none'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-eval"), "{what}: {csp}");
    let referrer = h("referrer-policy");
    if path.starts_with("/admin") {
        // The dashboard's pages name their origin to it (the CSRF check's fallback).
        assert_eq!(referrer, "same-origin", "{what}");
        assert!(csp.contains("script-src 'self'"), "{what}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    } else if path.starts_with("/docs") {
        assert_eq!(referrer, "no-referrer", "{what}");
        assert!(csp.contains("script-src 'self';"), "{what}: {csp}");
        assert!(csp.contains("connect-src 'self'"), "{what}: {csp}");
    } else {
        // Data: nothing in it may run or load.
        assert_eq!(referrer, "no-referrer", "{what}");
        assert!(!csp.contains("'self'"), "{what}: {csp}");
    }
    if path.starts_with("/v1/") {
        let cache = h("cache-control");
        assert!(
            cache == "no-store" || cache == "no-cache",
            "{what}: {cache}"
        );
    }
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let s = Server::sqlite().await;
    let admin = s.token("admin").await;
    let doc = s.req("GET", "/openapi.json").send().await;
    assert_secure("GET /openapi.json", "/openapi.json", &doc);
    let doc = doc.json();
    let mut seen = std::collections::BTreeSet::new();

    // Every documented operation: without a token (401, or the open routes' answers), with
    // an admin's (2xx, 400, 404…), from a peer that is not loopback (`/metrics` asks for a
    // token there) and from loopback.
    for (route, item) in doc["paths"].as_object().unwrap() {
        let path = route.replace("{id}", ABSENT);
        for method in item.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            for (token, peer) in [
                (None, "203.0.113.7:40000"),
                (Some(admin.as_str()), "203.0.113.7:40000"),
                (None, "127.0.0.1:40000"),
            ] {
                let what = format!("{method} {route} (token: {})", token.is_some());
                let mut req = s.req(&method, &path).peer(peer);
                if let Some(t) = token {
                    req = req.token(t);
                }
                if method == "POST" || method == "PATCH" {
                    req = req.json(&serde_json::json!({}));
                }
                let r = if route == "/v1/stats/stream" {
                    // Endless: its head is enough.
                    let (status, headers, _) = req.open().await;
                    Resp {
                        status,
                        headers,
                        body: Vec::new(),
                    }
                } else {
                    req.send().await
                };
                assert!(r.status < 500, "{what}: {}", r.text());
                assert_secure(&what, &path, &r);
                seen.insert(r.status);
            }
        }
    }
    for status in [200, 400, 401, 404] {
        assert!(seen.contains(&status), "no {status} among {seen:?}");
    }
    // Answers that carry a secret once.
    for (path, body) in [
        ("/v1/keys", serde_json::json!({"name": "k"})),
        (
            "/v1/tokens",
            serde_json::json!({"name": "t", "role": "viewer"}),
        ),
    ] {
        let r = s.req("POST", path).token(&admin).json(&body).send().await;
        assert_eq!(r.status, 201, "{}", r.text());
        assert_secure(&format!("POST {path}"), path, &r);
        assert_eq!(r.header("cache-control"), Some("no-store"), "POST {path}");
    }

    // The router's own refusals, and a body over the limit.
    for (method, path, status) in [
        ("GET", "/nope", 404),
        ("GET", "/v1/nope", 404),
        ("DELETE", "/healthz", 405),
        ("PUT", "/v1/keys", 405),
    ] {
        let r = s.req(method, path).token(&admin).send().await;
        assert_eq!(r.status, status, "{method} {path}");
        assert_secure(&format!("{method} {path}"), path, &r);
    }
    let big = vec![b' '; (1 << 20) + 10];
    let r = s
        .req("POST", "/v1/keys")
        .token(&admin)
        .header("Content-Type", "application/json")
        .raw(&big)
        .send()
        .await;
    assert_eq!(r.status, 413);
    assert_secure("POST /v1/keys (too large)", "/v1/keys", &r);

    // The API documentation: its page, its files, a missing file, the redirect.
    for (path, status) in [
        ("/docs", 308),
        ("/docs/", 200),
        ("/docs/swagger-ui.css", 200),
        ("/docs/swagger-ui-bundle.js", 200),
        ("/docs/swagger-initializer.js", 200),
        ("/docs/nope.js", 404),
    ] {
        let r = s.req("GET", path).send().await;
        assert_eq!(r.status, status, "{path}");
        assert_secure(&format!("GET {path}"), path, &r);
    }

    // The dashboard: signed out (the sign-in page, redirects, a script's 401), then every
    // page an admin opens, an unknown key, a refused change, and every asset a page names.
    for path in [
        "/admin",
        "/admin/login",
        "/admin/keys",
        "/admin/users",
        "/admin/api/overview",
        "/admin/lang?lang=zh-CN",
    ] {
        let r = s.req("GET", path).send().await;
        assert!(r.status < 500, "{path}: {}", r.status);
        assert_secure(&format!("GET {path} (signed out)"), path, &r);
    }
    s.app
        .create_admin("ada", Role::Admin, PW.into(), &Actor::library())
        .await
        .unwrap();
    let ada = s.session("ada", PW).await;
    let mut assets = std::collections::BTreeSet::new();
    for path in [
        "/admin".to_owned(),
        "/admin/keys".into(),
        "/admin/keys/new".into(),
        format!("/admin/keys/{ABSENT}"),
        format!("/admin/keys/{ABSENT}/edit"),
        "/admin/audit".into(),
        "/admin/audit.csv".into(),
        "/admin/alerts".into(),
        "/admin/logs".into(),
        "/admin/api/logs".into(),
        "/admin/api/overview".into(),
        "/admin/tokens".into(),
        "/admin/users".into(),
    ] {
        let r = ada.req("GET", &path).send().await;
        assert!(r.status < 500, "{path}: {}", r.status);
        assert_secure(&format!("GET {path} (admin)"), &path, &r);
        let page = r.text();
        for (at, _) in page.match_indices("/admin/assets/") {
            let end = page[at..].find(['"', '\'', ')']).unwrap();
            assets.insert(page[at..at + end].to_owned());
        }
    }
    let r = ada.req("POST", "/admin/logout").send().await;
    assert_eq!(r.status, 403, "a sign-out without its CSRF token");
    assert_secure("POST /admin/logout (no CSRF)", "/admin/logout", &r);
    assert!(assets.len() >= 4, "{assets:?}");
    assets.insert("/admin/assets/nope.css".into());
    for path in &assets {
        let r = s.req("GET", path).send().await;
        assert!(
            r.status == 200 || path.ends_with("nope.css") && r.status == 404,
            "{path}: {}",
            r.status
        );
        assert_secure(&format!("GET {path}"), path, &r);
    }
}

/// Words naming a secret or what is derived from one as text. `KeyDigest` is not among
/// them: its `PartialEq` is constant-time; its hex form (`to_hex`) is a string, whose is not.
const SECRET_WORDS: [&str; 8] = [
    "csrf", "nonce", "secret", "password", "cookie", "hex", "mac", "token",
];

/// Comparisons that touch no secret a client could probe, each with the reason.
const NOT_SECRET: [(&str, &str); 3] = [
    // The audit log's hash chain is unkeyed SHA-256 over records anyone with the database
    // reads: the hashes are public, and verifying them is an operator's job.
    (
        "keyvault-core/src/audit.rs",
        "record.prev_hash != hex(&self.prev)",
    ),
    (
        "keyvault-core/src/audit.rs",
        "record.hash != hex(&expected)",
    ),
    (
        // Two stored records of one user compared to see whether its sessions must end; no
        // client value is on either side.
        "keyvault-core/src/accounts/users.rs",
        "self.password_hash != next.password_hash",
    ),
];

/// The operand of `==`/`!=` next to `at`, as written (identifiers, fields, calls).
fn operand(text: &str, forward: bool) -> String {
    let part = |c: char| c.is_ascii_alphanumeric() || "_.()*&:".contains(c);
    let trimmed = if forward {
        text.trim_start()
    } else {
        text.trim_end()
    };
    if forward {
        trimmed.chars().take_while(|&c| part(c)).collect()
    } else {
        let mut v: Vec<char> = trimmed.chars().rev().take_while(|&c| part(c)).collect();
        v.reverse();
        v.into_iter().collect()
    }
}

/// No source compares a secret with `==` or `!=` (which stop at the first differing byte):
/// presented keys, tokens and session cookies are looked up by their SHA-256 digest (or
/// HMAC), digests compare with `subtle` (`KeyDigest`'s `PartialEq`), and CSRF tokens and the
/// sign-in nonce go through `dashboard::session::same`. This walk fails when a comparison
/// of something named like a secret appears anywhere else.
#[test]
fn secrets_are_compared_in_constant_time_only() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    let mut files = 0;
    for krate in [
        "keyvault-admin",
        "keyvault-core",
        "keyvault-axum",
        "keyvault-sqlite",
        "keyvault-postgres",
        "keyvault-redis",
    ] {
        let mut dirs = vec![root.join(krate).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                files += 1;
                let rel = path.strip_prefix(&root).unwrap().display().to_string();
                let text = std::fs::read_to_string(&path).unwrap();
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or_default();
                    for (at, op) in code.match_indices("==").chain(code.match_indices("!=")) {
                        let (left, right) = (
                            operand(&code[..at], false),
                            operand(&code[at + op.len()..], true),
                        );
                        let secret = [&left, &right]
                            .iter()
                            .any(|side| SECRET_WORDS.iter().any(|w| side.contains(w)));
                        let allowed = NOT_SECRET
                            .iter()
                            .any(|(file, text)| rel.ends_with(file) && code.contains(text));
                        if secret && !allowed {
                            found.push(format!("{rel}:{}: {}", n + 1, line.trim()));
                        }
                    }
                }
            }
        }
    }
    assert!(files > 50, "only {files} source files found under {root:?}");
    assert!(
        found.is_empty(),
        "secrets compared with == or != (use subtle, or dashboard::session::same):\n{}",
        found.join("\n")
    );
}
