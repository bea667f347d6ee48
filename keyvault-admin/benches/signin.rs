//! Sign-in time for a wrong password against an unknown username (CONTRACT §6: the answer
//! never tells whether a user exists, so neither may its time): the real router's
//! `POST /admin/login` on SQLite, timed from the request to the body's last byte, the two
//! kinds interleaved so that both see the same machine.
//!
//! ```sh
//! cargo bench -p keyvault-admin --bench signin
//! ```
//!
//! `KV_BENCH_ATTEMPTS` (default 200) attempts of each kind. The lockout (10 failures for one
//! username in 15 minutes) and the per-address throttle (30 a minute) would change what is
//! measured, so every wrong password goes to one of `attempts / 5` real users, every unknown
//! name is new, and each attempt comes from its own address. Run as a test (no `--bench`
//! argument) it makes a few attempts of each.
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Server;
use keyvault_admin::Role;
use keyvault_core::Actor;

fn full() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1_000.0
}

/// One refused sign-in of `username` from the address `peer`, as a browser sends it (the
/// form first, for its CSRF token and nonce); the time of the form's `POST` alone.
async fn refused(s: &Server, username: &str, peer: &str) -> Duration {
    let form = s.req("GET", "/admin/login").send().await;
    let nonce = form.cookie("kv_login").unwrap();
    let body = serde_html_form::to_string([
        ("username", username),
        ("password", "not the password"),
        ("csrf", &form.csrf()),
    ])
    .unwrap();
    let post = s
        .req("POST", "/admin/login")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Cookie", &format!("kv_login={nonce}"))
        .peer(peer)
        .raw(body.as_bytes());
    let started = Instant::now();
    let r = post.send().await;
    let took = started.elapsed();
    // Refused alike: the form again, with its message (a 429 or a lockout would be a
    // different answer, and would mean the bench measured something else).
    assert_eq!(r.status, 401, "{username}: {}", r.text());
    took
}

fn main() {
    // Test runners list a binary's tests first: this one has none to name.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let attempts: usize = if full() {
        std::env::var("KV_BENCH_ATTEMPTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200)
    } else {
        4
    };
    let s = Server::sqlite().await;
    let users = attempts.div_ceil(5);
    for u in 0..users {
        s.app
            .create_admin(
                &format!("user-{u}"),
                Role::Viewer,
                "correct horse battery".into(),
                &Actor::library(),
            )
            .await
            .unwrap();
    }
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..attempts {
        let peer = |kind: u32| format!("10.{kind}.{}.{}:40000", i / 250, i % 250 + 1);
        // Alternate which kind goes first, so neither always follows the other.
        let w = format!("user-{}", i % users);
        let n = format!("nobody-{i}");
        if i % 2 == 0 {
            wrong.push(refused(&s, &w, &peer(1)).await);
            unknown.push(refused(&s, &n, &peer(2)).await);
        } else {
            unknown.push(refused(&s, &n, &peer(2)).await);
            wrong.push(refused(&s, &w, &peer(1)).await);
        }
    }
    wrong.sort();
    unknown.sort();
    println!("sign-in refused, {attempts} attempts each   p50 ms    p95 ms");
    for (name, t) in [("wrong password", &wrong), ("unknown username", &unknown)] {
        println!(
            "{name:<38} {:>7.2}   {:>7.2}",
            percentile(t, 0.5),
            percentile(t, 0.95)
        );
    }
    println!(
        "unknown / wrong, at the median: {:.3}",
        percentile(&unknown, 0.5) / percentile(&wrong, 0.5)
    );
}
