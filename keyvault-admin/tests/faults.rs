//! PostgreSQL failing under the server: each test runs its own `postgres` (common::ownpg),
//! drives keyvault-admin's router in-process with 50 concurrent clients, and crashes
//! (SIGKILL, then a restart) or hangs (SIGSTOP, then SIGCONT) the database while they run.
//! Every answer is counted by phase; the tallies printed are the table of
//! docs/reliability.md's "Faults" section.

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Server, Settings, backup, ownpg::OwnPg};
use serde_json::json;

const UP: u8 = 0;
const DOWN: u8 = 1;
const AFTER: u8 = 2;
const RESTARTING: u8 = 3;
/// The first second of a hang: what was cached (an API token for half a second, keys)
/// still answers.
const STOPPING: u8 = 4;
/// Requests that began in one phase and ended in another.
const CROSSED: u8 = 5;

/// (phase, request kind, status or "timeout") → count.
type Tally = Arc<Mutex<BTreeMap<(u8, &'static str, String), u64>>>;

struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    tally: Tally,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// 50 clients, each in turn: verifying a key verified before (cached), verifying a key no
/// one verified yet, creating a key, and asking `/readyz`; to the router, or over TCP to
/// `tcp` (the server's own connection handling, its request timeout included). A request
/// not answered within 5 s counts as a timeout.
fn load(
    s: &Arc<Server>,
    token: &str,
    cached: &str,
    uncached: &[String],
    tcp: Option<std::net::SocketAddr>,
) -> Load {
    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicU8::new(UP));
    let tally: Tally = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..50usize {
        let (s, stop, phase, tally) = (s.clone(), stop.clone(), phase.clone(), tally.clone());
        let client = client.clone();
        let (token, cached) = (token.to_owned(), cached.to_owned());
        let uncached = uncached[c % uncached.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let p = phase.load(Ordering::Relaxed);
                let (kind, req) = match i % 4 {
                    0 => (
                        "verify cached key",
                        s.req("POST", "/v1/keys/verify")
                            .token(&token)
                            .json(&json!({"key": cached})),
                    ),
                    1 => (
                        "verify uncached key",
                        s.req("POST", "/v1/keys/verify")
                            .token(&token)
                            .json(&json!({"key": uncached})),
                    ),
                    2 => (
                        "create key",
                        s.req("POST", "/v1/keys")
                            .token(&token)
                            .json(&json!({"name": format!("load-{c}-{i}")})),
                    ),
                    _ => ("readyz", s.req("GET", "/readyz")),
                };
                let send = async {
                    match tcp {
                        Some(addr) => req.send_to(&client, addr).await,
                        None => req.send().await,
                    }
                };
                let status = match tokio::time::timeout(Duration::from_secs(5), send).await {
                    Ok(r) => r.status.to_string(),
                    Err(_) => "timeout".into(),
                };
                // A request that began in one phase and ended in another counts in neither.
                let p = if phase.load(Ordering::Relaxed) == p {
                    p
                } else {
                    CROSSED
                };
                *tally.lock().unwrap().entry((p, kind, status)).or_default() += 1;
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    Load {
        stop,
        phase,
        tally,
        tasks,
    }
}

async fn setup(
    pg: &OwnPg,
    request_timeout: Option<&str>,
) -> (Arc<Server>, String, String, Vec<String>) {
    let mut settings = Settings::sqlite(std::path::Path::new("/nonexistent"));
    settings.database_url = pg.url("kv");
    settings.request_timeout = request_timeout.map(str::to_owned);
    let s = Arc::new(Server::start(&settings).await);
    let token = s.token("admin").await;
    let mut keys = Vec::new();
    for i in 0..11 {
        let r = s
            .req("POST", "/v1/keys")
            .token(&token)
            .json(&json!({"name": format!("k{i}")}))
            .send()
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        keys.push(r.json()["key"].as_str().unwrap().to_owned());
    }
    let cached = keys.remove(0);
    let v = s
        .req("POST", "/v1/keys/verify")
        .token(&token)
        .json(&json!({"key": cached}))
        .send()
        .await;
    assert_eq!(v.json()["code"], "VALID");
    (s, token, cached, keys)
}

// The tallies are the evidence docs/reliability.md quotes: printed for `--no-capture`.
#[allow(clippy::print_stderr)]
fn report(name: &str, tally: &Tally, recovered: Duration) {
    let t = tally.lock().unwrap();
    let phases = ["up", "down", "after", "restarting", "stopping", "crossed"];
    let mut out = format!(
        "FAULT TABLE {name} (recovered {} ms)\n",
        recovered.as_millis()
    );
    for ((p, kind, status), n) in t.iter() {
        out.push_str(&format!(
            "  {} | {kind} | {status} | {n}\n",
            phases[*p as usize]
        ));
    }
    eprintln!("{out}");
    for ((_, kind, status), _) in t.iter() {
        assert_ne!(status, "500", "{kind} answered 500:\n{out}");
    }
    let down = |kind: &str, status: &str| t.get(&(DOWN, kind, status.to_owned())).copied();
    assert!(
        down("readyz", "503").is_some(),
        "/readyz never 503 while down:\n{out}"
    );
    assert!(
        down("readyz", "200").is_none(),
        "/readyz 200 while down:\n{out}"
    );
    assert!(
        down("create key", "201").is_none(),
        "a key created while down:\n{out}"
    );
    assert!(
        down("verify uncached key", "200").is_none(),
        "an uncached key verified while down:\n{out}"
    );
    let after = |kind: &str, status: &str| t.get(&(AFTER, kind, status.to_owned())).copied();
    assert!(
        after("create key", "201").is_some(),
        "no key created after recovery:\n{out}"
    );
}

/// Waits until a key can be created and `/readyz` answers 200 again: the recovery time.
async fn recovered(s: &Server, token: &str, since: Instant) -> Duration {
    loop {
        let ok = s.req("GET", "/readyz").send().await.status == 200
            && s.req("POST", "/v1/keys")
                .token(token)
                .json(&json!({"name": "probe"}))
                .send()
                .await
                .status
                == 201;
        if ok {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "not recovered within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_under_load_answers_503_and_recovers() {
    let pg = OwnPg::start().await;
    let (s, token, cached, uncached) = setup(&pg, None).await;
    let l = load(&s, &token, &cached, &uncached, None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.kill().await;
    l.phase.store(DOWN, Ordering::Relaxed);
    // Longer than the pool's acquire timeout (3 s), so that requests made while down end.
    tokio::time::sleep(Duration::from_secs(6)).await;
    l.phase.store(RESTARTING, Ordering::Relaxed);
    let restarted = Instant::now();
    pg.restart().await;
    let back = recovered(&s, &token, restarted).await;
    l.phase.store(AFTER, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    l.stop.store(true, Ordering::Relaxed);
    for t in l.tasks {
        t.await.expect("no panic under load");
    }
    report("killed", &l.tally, back);
    assert!(back < Duration::from_secs(5), "recovered in {back:?}");
}

/// PostgreSQL hung (SIGSTOP: connections stay open, nothing answers) under load, the server
/// reached over TCP with a 2 s request timeout: every request is answered while it hangs,
/// 503 (`response_timeout`, or a backend failure after the pool's or the key cache's 3 s)
/// and never by the client's own 5 s timeout; nothing is created; after SIGCONT the server
/// serves again within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hung_under_load_answers_503_by_the_request_timeout_and_recovers() {
    let pg = OwnPg::start().await;
    let (s, token, cached, uncached) = setup(&pg, Some("2s")).await;
    let served = s.serve_tcp().await;
    let l = load(&s, &token, &cached, &uncached, Some(served.addr));
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.stop();
    l.phase.store(STOPPING, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    l.phase.store(DOWN, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(6)).await;
    l.phase.store(RESTARTING, Ordering::Relaxed);
    let resumed = Instant::now();
    pg.resume();
    let back = recovered(&s, &token, resumed).await;
    l.phase.store(AFTER, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    l.stop.store(true, Ordering::Relaxed);
    for t in l.tasks {
        t.await.expect("no panic under load");
    }
    report("hung", &l.tally, back);
    let t = l.tally.lock().unwrap().clone();
    for ((p, kind, status), n) in &t {
        if *p == DOWN {
            assert!(
                status == "503",
                "{kind} answered {status} ×{n} while hung: {t:?}"
            );
        }
    }
    assert!(back < Duration::from_secs(5), "recovered in {back:?}");
    assert!(served.stop(Duration::from_secs(10)).await.is_some());
}

/// A restore held at its audit records (another session locks `kv_audit`) when the server
/// is killed: after the restart the database is as it was, and the backup restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_a_postgres_that_crashes_leaves_it_as_it_was() {
    let pg = OwnPg::start().await;
    let dir = tempfile::tempdir().unwrap();
    let src = Settings::sqlite(dir.path());
    let s = Server::start(&src).await;
    backup::fill(&s, 10).await;
    let good = backup::backup(&src.database_url, dir.path(), "good.ndjson").await;
    let url = pg.url("kv");
    backup::keyvault(&url, &["migrate"]).await.expect("migrate");
    backup::write_usage(&url, 5).await;
    let before = backup::snapshot(&url, dir.path(), "before.ndjson").await;
    let mut blocker = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE kv_audit IN EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let (u, g) = (url.clone(), good.clone());
    let restore = tokio::spawn(async move {
        backup::keyvault(&u, &["restore", "--in", g.to_str().unwrap()]).await
    });
    let mut watcher = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let waiting: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO kv_audit%' LIMIT 1",
        )
        .fetch_optional(&mut watcher)
        .await
        .unwrap();
        if waiting.is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the restore never reached kv_audit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.kill().await;
    restore
        .await
        .unwrap()
        .expect_err("a restore whose server dies fails");
    drop((blocker, watcher));
    pg.restart().await;
    let after = backup::snapshot(&url, dir.path(), "after.ndjson").await;
    assert_eq!(after, before, "the crashed restore left something behind");
    backup::keyvault(&url, &["restore", "--in", good.to_str().unwrap()])
        .await
        .expect("the backup restores after the crash");
}
