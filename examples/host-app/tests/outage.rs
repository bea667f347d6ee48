//! The real binary's middleware on a PostgreSQL of the test's own that is killed (SIGKILL, then
//! restarted) and later hung (SIGSTOP, then SIGCONT) under load: a key verified before keeps
//! verifying throughout (from the cache, whatever the database does), keys never seen answer
//! 503 while it is away (after at most the cache's 3 s load timeout when it hangs), nothing
//! answers 500, every usage event of every answer is stored once it is back (0 lost), and
//! keys never seen verify again within 5 s of the restart and of the resume. The tally
//! printed is the table of docs/reliability.md's "Faults" section.

mod common;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../keyvault-admin/tests/common/ownpg.rs"]
mod ownpg;

use std::{
    collections::BTreeMap,
    io::BufReader,
    net::TcpStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use keyvault_core::{Actor, Keyvault, NewKey, StatsQuery, UsageQuery};
use keyvault_postgres::PgStore;
use ownpg::OwnPg;

const PHASES: [&str; 6] = [
    "up",
    "killed",
    "restarting",
    "after restart",
    "hung",
    "resuming",
];
const UP: u8 = 0;
const KILLED: u8 = 1;
const RESTARTING: u8 = 2;
const AFTER: u8 = 3;
const HUNG: u8 = 4;
const RESUMING: u8 = 5;

/// (phase, request kind, status) → count; "error" for an I/O failure.
type Tally = Arc<Mutex<BTreeMap<(u8, &'static str, String), u64>>>;

struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    tally: Tally,
    /// Requests answered (whatever the status), in every phase or across two.
    answered: Arc<AtomicU64>,
    /// When a key never seen first verified in the current recovery phase.
    recovered: Arc<Mutex<Option<Instant>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Four clients verifying the key verified before, and three verifying a key never used
/// before on every request, each on its own kept-alive connection.
fn load(addr: &str, cached: &str, fresh: Arc<Vec<String>>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicU8::new(UP));
    let tally: Tally = Arc::default();
    let recovered: Arc<Mutex<Option<Instant>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for c in 0..7 {
        let (stop, phase, tally, recovered) = (
            stop.clone(),
            phase.clone(),
            tally.clone(),
            recovered.clone(),
        );
        let (addr, cached, fresh, next, answered) = (
            addr.to_owned(),
            cached.to_owned(),
            fresh.clone(),
            next.clone(),
            answered.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let connect = || {
                let s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                BufReader::new(s)
            };
            let mut conn = connect();
            while !stop.load(Ordering::Relaxed) {
                let p = phase.load(Ordering::Relaxed);
                let (kind, key) = if c < 4 {
                    ("key verified before", cached.as_str())
                } else {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let key = fresh.get(i).expect("more keys never seen than requests");
                    ("key never seen", key.as_str())
                };
                let status = match common::try_request(&mut conn, "GET", "/v1/hello", key, "") {
                    Ok((s, _)) => s.to_string(),
                    Err(_) => {
                        conn = connect();
                        "error".to_owned()
                    }
                };
                if kind == "key never seen" && status == "200" && (p == RESTARTING || p == RESUMING)
                {
                    recovered.lock().unwrap().get_or_insert_with(Instant::now);
                }
                answered.fetch_add(1, Ordering::Relaxed);
                // A request that began in one phase and ended in another counts in neither.
                if phase.load(Ordering::Relaxed) == p {
                    *tally.lock().unwrap().entry((p, kind, status)).or_default() += 1;
                }
                std::thread::sleep(Duration::from_millis(if c < 4 { 2 } else { 50 }));
            }
        }));
    }
    Load {
        stop,
        phase,
        tally,
        answered,
        recovered,
        threads,
    }
}

impl Load {
    /// Waits until a key never seen verifies again after `since`; how long that took.
    async fn recovery(&self, since: Instant) -> Duration {
        loop {
            if let Some(at) = *self.recovered.lock().unwrap() {
                return at.saturating_duration_since(since);
            }
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "no key never seen verified within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[allow(clippy::print_stderr)]
    fn enter(&self, phase: u8) {
        *self.recovered.lock().unwrap() = None;
        self.phase.store(phase, Ordering::Relaxed);
        eprintln!("PHASE {} at {}", PHASES[phase as usize], chrono::Utc::now());
    }
}

// The tallies are the evidence docs/reliability.md quotes: printed for `--no-capture`.
#[allow(clippy::print_stderr)]
fn table(tally: &BTreeMap<(u8, &'static str, String), u64>, recoveries: [Duration; 2]) -> String {
    let mut out = format!(
        "FAULT TABLE host-app (restart → verified {} ms, resume → verified {} ms)\n",
        recoveries[0].as_millis(),
        recoveries[1].as_millis()
    );
    for ((p, kind, status), n) in tally {
        out.push_str(&format!(
            "  {} | {kind} | {status} | {n}\n",
            PHASES[*p as usize]
        ));
    }
    eprintln!("{out}");
    out
}

#[allow(clippy::print_stderr)]
fn report_usage(answered: u64, stored: u64) {
    eprintln!("FAULT TABLE host-app usage: {answered} answered, {stored} events stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_then_hung_cached_keys_verify_and_no_usage_is_lost() {
    let pg = OwnPg::start().await;
    let url = pg.url("kv");
    let store = Arc::new(PgStore::connect(&url).await.unwrap());
    store.migrate().await.unwrap();
    let vault = Keyvault::builder().backend(store.clone()).build().unwrap();
    let mut keys = Vec::new();
    for i in 0..1_200 {
        let created = vault
            .create_key(NewKey::new(format!("k{i}")), &Actor::library())
            .await
            .unwrap();
        keys.push(created.key.expose().to_owned());
    }
    let cached = keys.remove(0);
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(&[("DATABASE_URL", url.as_ref())], dir.path());
    let addr = server.addr.clone();
    let warm = cached.clone();
    let (status, _) = tokio::task::spawn_blocking(move || {
        let mut conn = BufReader::new(TcpStream::connect(&addr).unwrap());
        common::request(&mut conn, "GET", "/v1/hello", &warm, "")
    })
    .await
    .unwrap();
    assert_eq!(status, 200);

    let mut l = load(&server.addr, &cached, Arc::new(keys));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = pg.kill_now();
    l.enter(KILLED);
    pg.gone(&killed).await;
    // Longer than the pool's acquire timeout (3 s), so that requests made while down end.
    tokio::time::sleep(Duration::from_secs(5)).await;
    l.enter(RESTARTING);
    let restarted = Instant::now();
    pg.restart().await;
    let after_restart = l.recovery(restarted).await;
    l.enter(AFTER);
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.stop();
    l.enter(HUNG);
    // Longer than the cache's load timeout (3 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    l.enter(RESUMING);
    let resumed = Instant::now();
    pg.resume();
    let after_resume = l.recovery(resumed).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    l.stop.store(true, Ordering::Relaxed);
    for t in std::mem::take(&mut l.threads) {
        t.join().expect("no client panicked");
    }

    let tally = l.tally.lock().unwrap().clone();
    let out = table(&tally, [after_restart, after_resume]);
    let mut server = server;
    let (exit, logs) = tokio::task::spawn_blocking(move || {
        let status = common::sigterm(&mut server);
        (status, common::output(&mut server).1)
    })
    .await
    .unwrap();
    let mut out = out;
    for line in logs
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        out.push_str(line);
        out.push('\n');
    }
    assert!(exit.success(), "{exit}\n{out}");

    let count = |phase: u8, kind: &str, status: &str| {
        tally
            .get(&(phase, kind, status.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    for (p, kind, status) in tally.keys() {
        assert!(
            status != "500" && status != "error",
            "{kind} in {}: {status}\n{out}",
            PHASES[*p as usize]
        );
        if *kind == "key verified before" {
            assert_eq!(status, "200", "the cached key answered otherwise\n{out}");
        }
        if *kind == "key never seen" && (*p == KILLED || *p == HUNG) {
            assert_eq!(status, "503", "a key never seen while away\n{out}");
        }
    }
    for p in [KILLED, HUNG] {
        assert!(count(p, "key verified before", "200") > 100, "{out}");
        assert!(count(p, "key never seen", "503") > 0, "{out}");
    }
    assert!(count(AFTER, "key never seen", "200") > 0, "{out}");
    assert!(after_restart < Duration::from_secs(5), "{out}");
    assert!(after_resume < Duration::from_secs(5), "{out}");

    // Every answer's usage event was written before the process exited at SIGTERM.
    let answered = l.answered.load(Ordering::Relaxed) + 1;
    let o = store.overview(&StatsQuery::last_24h()).await.unwrap();
    report_usage(answered, o.calls);
    assert_eq!(
        o.calls, answered,
        "usage events stored for {answered} answers\n{out}"
    );
}
