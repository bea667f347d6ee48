//! The command-line program against a real (SQLite) database shared with the library: what
//! one run writes, another process reads.

use std::{path::Path, process::Command, sync::Arc};

use chrono::{TimeDelta, Utc};
use keyvault_core::{
    Actor, FakeClock, HumanDuration, Keyvault, NewKey, Outcome, RotationPolicy, UsageEvent,
    UsageSink, VerifyRequest,
};
use keyvault_sqlite::SqliteStore;
use serde_json::Value;

fn batch_job(dir: &Path, url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_batch-job"))
        .current_dir(dir)
        .env("DATABASE_URL", url)
        .env_remove("REDIS_URL")
        .env_remove("KEYVAULT_PEPPER")
        .args(args)
        .output()
        .unwrap()
}

async fn open(url: &str) -> Arc<SqliteStore> {
    let s = Arc::new(SqliteStore::connect(url).await.unwrap());
    s.migrate().await.unwrap();
    s
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn created_keys_verify_with_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kv.db").display());
    let csv = dir.path().join("keys.csv");
    std::fs::write(
        &csv,
        "name,owner,credits,limits\nbilling,team-a,2,5/60s;1000/1d\nbroken,,x,\n",
    )
    .unwrap();
    let out = dir.path().join("keys.jsonl");
    let res = batch_job(
        dir.path(),
        &url,
        &[
            "create-keys",
            "--csv",
            csv.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3: credits"), "{stderr}");
    let keys = lines(&out);
    assert_eq!(keys.len(), 1);
    let key = keys[0]["key"].as_str().unwrap();

    let vault = Keyvault::builder()
        .backend(open(&url).await)
        .build()
        .unwrap();
    let v = vault.verify(&VerifyRequest::new(key)).await.unwrap();
    assert_eq!(v.outcome, Outcome::Valid);
    assert_eq!(v.key.as_ref().unwrap().owner_id.as_deref(), Some("team-a"));
    assert_eq!(v.credits_remaining, Some(1));
    assert_eq!(v.ratelimits.len(), 2);
    assert_eq!(
        v.key.unwrap().id.to_string(),
        keys[0]["id"].as_str().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_due_hands_each_new_key_out_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kv.db").display());
    let store = open(&url).await;
    // Created "two minutes ago" with a one-minute policy: due now.
    let past = Keyvault::builder()
        .backend(store.clone())
        .clock(Arc::new(FakeClock::new(Utc::now() - TimeDelta::minutes(2))))
        .build()
        .unwrap();
    let policy = RotationPolicy {
        every: HumanDuration::parse("1m", "every").unwrap(),
        grace: HumanDuration::parse("1h", "grace").unwrap(),
    };
    let old = past
        .create_key(NewKey::new("rotating").rotation(policy), &Actor::library())
        .await
        .unwrap();
    let out = dir.path().join("rotated.jsonl");
    let res = batch_job(
        dir.path(),
        &url,
        &["rotate-due", "--out", out.to_str().unwrap()],
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let rotated = lines(&out);
    assert_eq!(rotated.len(), 1);
    assert_eq!(rotated[0]["old_id"], old.record.id.to_string());
    let new_key = rotated[0]["key"].as_str().unwrap();
    // Not due again: a second run hands nothing out.
    let res = batch_job(
        dir.path(),
        &url,
        &["rotate-due", "--out", out.to_str().unwrap()],
    );
    assert!(res.status.success());
    assert_eq!(lines(&out).len(), 1);

    let vault = Keyvault::builder().backend(store).build().unwrap();
    let v = vault.verify(&VerifyRequest::new(new_key)).await.unwrap();
    assert_eq!(v.outcome, Outcome::Valid);
    assert_eq!(v.key.unwrap().rotated_from, Some(old.record.id));
    // The old key still verifies during its grace.
    let v = vault
        .verify(&VerifyRequest::new(old.key.expose()))
        .await
        .unwrap();
    assert_eq!(v.outcome, Outcome::Valid);
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_report_sums_what_was_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kv.db").display());
    let store = open(&url).await;
    let now = Utc::now();
    let ev = |i: u32, provider: &str, status: u16| UsageEvent {
        request_id: format!("r{i}").into(),
        key_id: None,
        owner_id: None,
        ts: now - TimeDelta::minutes(10),
        provider: Some(provider.into()),
        route: Some("/v1/chat".into()),
        method: Some("POST".into()),
        status,
        latency_us: 2_000,
        outcome: None,
        cost: 1,
    };
    let mut events: Vec<UsageEvent> = (0..6).map(|i| ev(i, "openai", 200)).collect();
    events.push(ev(6, "openai", 500));
    events.push(ev(7, "anthropic", 200));
    store.write(&events).await.unwrap();
    let out = dir.path().join("usage.csv");
    let from = (now - TimeDelta::hours(1)).to_rfc3339();
    let to = now.to_rfc3339();
    let res = batch_job(
        dir.path(),
        &url,
        &[
            "usage-report",
            "--from",
            &from,
            "--to",
            &to,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let mut rdr = csv::Reader::from_path(&out).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    let total = |provider: &str| {
        rows.iter()
            .find(|r| &r[2] == provider && !r[6].is_empty())
            .unwrap_or_else(|| panic!("no total row for {provider}: {rows:?}"))
            .clone()
    };
    let all = total("*");
    assert_eq!((&all[3], &all[4]), ("8", "1"));
    assert_eq!(&all[5], "0.875");
    let p50: f64 = all[6].parse().unwrap();
    assert!((p50 - 2.0).abs() < 0.2, "{p50}");
    let openai = total("openai");
    assert_eq!((&openai[3], &openai[4]), ("7", "1"));
    assert_eq!(&total("anthropic")[3], "1");
    // Step rows add up to the totals.
    let steps: u64 = rows
        .iter()
        .filter(|r| &r[2] == "openai" && r[6].is_empty())
        .map(|r| r[3].parse::<u64>().unwrap())
        .sum();
    assert_eq!(steps, 7);
}
