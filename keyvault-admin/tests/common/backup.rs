//! Backups and restores run as the `keyvault` command runs them (in process), and what a
//! restore must leave alone: a database's full backup and its usage rows.

use std::path::{Path, PathBuf};

use clap::Parser;
use keyvault::deploy::Durable;
use keyvault_admin::cli::{Cli, run};
use keyvault_core::{StatsQuery, UsageEvent};
use serde_json::{Value, json};

use super::Server;

/// `keyvault --database-url URL ARGS…`, in this process.
pub async fn keyvault(url: &str, args: &[&str]) -> keyvault_admin::Result<()> {
    let mut argv = vec!["keyvault", "--database-url", url];
    argv.extend_from_slice(args);
    run(Cli::try_parse_from(argv).expect("a valid command line")).await
}

/// `keyvault backup` of `url` into `dir/name`.
pub async fn backup(url: &str, dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(name);
    keyvault(url, &["backup", "--out", file.to_str().unwrap()])
        .await
        .expect("backup");
    file
}

/// Fills a deployment with what a backup holds: an admin user, tokens, keys
/// with spent credit balances and rate limits, and their audit records.
pub async fn fill(s: &Server, keys: usize) {
    let admin = s.token("admin").await;
    s.app
        .create_admin(
            "root",
            "admin".parse().unwrap(),
            "correct horse battery".into(),
            &keyvault_core::Actor::library(),
        )
        .await
        .expect("create a user");
    s.token("viewer").await;
    for i in 0..keys {
        let k = s
            .req("POST", "/v1/keys")
            .token(&admin)
            .json(&json!({
                "name": format!("k{i}"),
                "credits": {"remaining": 100 + i},
                "ratelimits": [{"name": "m", "limit": 50, "period_ms": 60_000}],
                "scopes": ["read"],
            }))
            .send()
            .await;
        assert_eq!(k.status, 201, "{}", k.text());
        let key = k.json()["key"].as_str().unwrap().to_owned();
        let v = s
            .req("POST", "/v1/keys/verify")
            .token(&admin)
            .json(&json!({"key": key, "cost": 1 + i % 7}))
            .send()
            .await;
        assert_eq!(v.json()["code"], "VALID", "{}", v.text());
    }
}

/// Usage events written straight to the database (a restore must keep them).
pub async fn write_usage(url: &str, n: usize) {
    let d = Durable::open(url).await.expect("open the database");
    let events: Vec<UsageEvent> = (0..n)
        .map(|i| UsageEvent {
            request_id: format!("before-restore-{i}").into(),
            key_id: None,
            owner_id: None,
            ts: chrono::Utc::now(),
            provider: Some("probe".into()),
            route: Some("/x".into()),
            method: Some("GET".into()),
            status: 200,
            latency_us: 100,
            outcome: None,
            cost: 1,
        })
        .collect();
    d.usage.write(&events).await.expect("write usage");
}

/// Every record of a database as its full backup lists them (the header, which names the
/// time of the backup, left out), and its calls in the last day.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub lines: Vec<Value>,
    pub calls: u64,
}

pub async fn snapshot(url: &str, dir: &Path, name: &str) -> Snapshot {
    let file = backup(url, dir, name).await;
    let lines = std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] != "header")
        .collect();
    let d = Durable::open(url).await.expect("open the database");
    let calls = d
        .stats
        .overview(&StatsQuery::last_24h())
        .await
        .expect("statistics")
        .calls;
    Snapshot { lines, calls }
}

/// The backup at `good` with `line` put just before its footer, the footer's counts
/// adjusted: a file that passes every check made before writing.
pub fn with_line_before_footer(good: &Path, line: &Value, out: &Path) {
    let text = std::fs::read_to_string(good).unwrap();
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut footer = lines.pop().unwrap();
    assert_eq!(footer["type"], "footer");
    let kind = line["type"].as_str().unwrap().to_owned();
    let n = footer["counts"][&kind].as_u64().unwrap_or(0);
    footer["counts"][&kind] = json!(n + 1);
    lines.push(line.clone());
    lines.push(footer);
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(out, body).unwrap();
}

/// The first line of this type in a backup.
pub fn first_line(file: &Path, kind: &str) -> Value {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} line"))
}
