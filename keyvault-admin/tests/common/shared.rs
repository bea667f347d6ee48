//! What both server test harnesses need: the in-process one (keyvault-admin) and the one
//! that drives the `keyvault` binary (examples/admin-server, which includes this file).
#![allow(dead_code, unreachable_pub)]

use std::process::Command;

/// Asserts none of `secrets` appears in `text`.
pub fn assert_no_secrets(text: &str, secrets: &[String]) {
    assert!(!text.is_empty(), "the transcript is empty");
    for s in secrets {
        assert!(!s.is_empty());
        assert!(
            !text.contains(s.as_str()),
            "a secret ({}…) appears in the output",
            &s[..8.min(s.len())]
        );
        // Also the secret's body alone (in case a prefix was stripped).
        if let Some((_, body)) = s.rsplit_once('_') {
            assert!(
                !text.contains(body),
                "a secret's body appears in the output"
            );
        }
    }
}

/// The PostgreSQL server tests use: `DATABASE_URL` when it names PostgreSQL, else the local
/// default the test script sets up.
pub fn pg_base_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/keyvault_test".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database of its own for one test, dropped at the end.
#[derive(Debug)]
pub struct PgDb {
    pub url: String,
    admin_url: String,
    name: String,
}

fn psql(url: &str, sql: &str) {
    let o = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qtAc", sql])
        .output()
        .expect("psql");
    assert!(
        o.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl PgDb {
    pub fn create() -> Self {
        let base = pg_base_url();
        let (root, _) = base.rsplit_once('/').expect("a database URL");
        let admin_url = format!("{root}/postgres");
        let name = format!("kvsrv_{}", uuid_like());
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        Self {
            url: format!("{root}/{name}"),
            admin_url,
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-qtAc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}_{}", nanos, std::process::id())
}
