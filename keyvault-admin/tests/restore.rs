//! `keyvault restore` is all or nothing on both backends: a restore that fails part-way — a
//! record the database refuses, a connection cut while it runs — leaves every key, balance,
//! token, user, setting, audit record and usage row as it was (the database's full backup
//! and its statistics compared before and after), and the same database then takes the
//! good backup.

mod common;

use std::time::Duration;

use common::{
    PgDb, Server, Settings,
    backup::{
        Snapshot, fill, first_line, keyvault, snapshot, with_line_before_footer, write_usage,
    },
};
use keyvault_core::{AuditRecord, KeyDigest, chain_hash, hash_hex};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

/// A source deployment filled with `keys` keys, backed up; a fresh target (migrated, its
/// session secret generated, a few usage rows); and the target's snapshot.
struct Case {
    dir: tempfile::TempDir,
    good: std::path::PathBuf,
    target: String,
    before: Snapshot,
    _dbs: Vec<PgDb>,
}

async fn case(postgres: bool, keys: usize) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let mut dbs = Vec::new();
    let mut settings = |sub: &str| {
        if postgres {
            let db = PgDb::create();
            let s = Settings::postgres(&db);
            dbs.push(db);
            s
        } else {
            let d = dir.path().join(sub);
            std::fs::create_dir_all(&d).unwrap();
            Settings::sqlite(&d)
        }
    };
    let (src, dst) = (settings("src"), settings("dst"));
    let s = Server::start(&src).await;
    fill(&s, keys).await;
    drop(s);
    let good = common::backup::backup(&src.database_url, dir.path(), "good.ndjson").await;
    // Migrated by the command line: a server's background jobs would go on writing to it.
    keyvault(&dst.database_url, &["migrate"])
        .await
        .expect("migrate");
    write_usage(&dst.database_url, 7).await;
    let before = snapshot(&dst.database_url, dir.path(), "before.ndjson").await;
    assert!(before.calls == 7, "{before:?}");
    Case {
        dir,
        good,
        target: dst.database_url,
        before,
        _dbs: dbs,
    }
}

impl Case {
    async fn assert_untouched(&self, name: &str) {
        let after = snapshot(&self.target, self.dir.path(), name).await;
        assert_eq!(
            after, self.before,
            "the failed restore changed the database"
        );
    }

    /// The good backup restores into the database the failed restore left.
    async fn assert_good_restores(&self, keys: usize) {
        let good = self.good.to_str().unwrap();
        keyvault(&self.target, &["restore", "--in", good])
            .await
            .expect("the good backup restores after the failed one");
        let after = snapshot(&self.target, self.dir.path(), "restored.ndjson").await;
        let n = |kind: &str| after.lines.iter().filter(|l| l["type"] == kind).count();
        assert_eq!(n("key"), keys);
        assert_eq!(n("user"), 1);
        assert_eq!(n("token"), 2);
        assert!(n("audit") > keys, "{}", n("audit"));
        assert_eq!(after.calls, self.before.calls, "usage rows kept");
        keyvault(&self.target, &["audit", "verify"])
            .await
            .expect("the restored chain verifies");
    }
}

/// A token line after every other record (so that a restore written record by record has
/// written everything else by then) whose digest another token has: the database refuses it.
fn duplicate_token(good: &std::path::Path) -> Value {
    let mut t = first_line(good, "token");
    t["id"] = json!("00000000-0000-4000-8000-000000000001");
    t
}

async fn a_refused_last_record_changes_nothing(postgres: bool) {
    let c = case(postgres, 20).await;
    let bad = c.dir.path().join("bad.ndjson");
    with_line_before_footer(&c.good, &duplicate_token(&c.good), &bad);
    let e = keyvault(&c.target, &["restore", "--in", bad.to_str().unwrap()])
        .await
        .expect_err("a token twice is refused");
    assert!(e.to_string().contains("already exists"), "{e}");
    c.assert_untouched("after.ndjson").await;
    c.assert_good_restores(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_refused_at_its_last_record_leaves_sqlite_as_it_was() {
    a_refused_last_record_changes_nothing(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_refused_at_its_last_record_leaves_postgres_as_it_was() {
    a_refused_last_record_changes_nothing(true).await;
}

/// The last audit record given a NUL character, its hash computed again so that the file's
/// chain verifies: PostgreSQL's `jsonb` refuses it at the very last statement of a restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_refused_at_its_last_audit_record_leaves_postgres_as_it_was() {
    let c = case(true, 10).await;
    let text = std::fs::read_to_string(&c.good).unwrap();
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.iter().rposition(|l| l["type"] == "audit").unwrap();
    let mut rec: AuditRecord = serde_json::from_value(lines[last].clone()).unwrap();
    rec.event.details = json!({"note": "nul \u{0} here"});
    let prev = *KeyDigest::from_hex(&rec.prev_hash).unwrap().as_bytes();
    rec.hash = hash_hex(&chain_hash(&prev, rec.seq, &rec.event));
    let mut line = serde_json::to_value(&rec).unwrap();
    line["type"] = json!("audit");
    lines[last] = line;
    let bad = c.dir.path().join("bad.ndjson");
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&bad, body).unwrap();
    keyvault(&c.target, &["restore", "--in", bad.to_str().unwrap()])
        .await
        .expect_err("PostgreSQL refuses a NUL in jsonb");
    c.assert_untouched("after.ndjson").await;
    c.assert_good_restores(10).await;
}

/// Another session holds `kv_audit` so that the restore waits at its audit records, after
/// writing everything else; its connection is then terminated (`pg_terminate_backend`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_whose_connection_is_cut_leaves_postgres_as_it_was() {
    let c = case(true, 20).await;
    let mut blocker = PgConnection::connect(&c.target).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE kv_audit IN EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let (target, good) = (c.target.clone(), c.good.clone());
    let restore = tokio::spawn(async move {
        keyvault(&target, &["restore", "--in", good.to_str().unwrap()]).await
    });
    // Watched from a connection of its own: inside a transaction, pg_stat_activity answers
    // from the snapshot its first read took.
    let mut watcher = PgConnection::connect(&c.target).await.unwrap();
    let pid = wait_for_lock_waiter(&mut watcher).await;
    let cut: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut blocker)
        .await
        .unwrap();
    assert!(cut);
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    restore
        .await
        .unwrap()
        .expect_err("a restore whose connection is cut fails");
    c.assert_untouched("after.ndjson").await;
    c.assert_good_restores(20).await;
}

/// The session waiting to insert into `kv_audit` in this database (the restore, its other
/// records written), within 30 s.
pub async fn wait_for_lock_waiter(conn: &mut PgConnection) -> i32 {
    let start = std::time::Instant::now();
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() \
             AND query LIKE 'INSERT INTO kv_audit%' LIMIT 1",
        )
        .fetch_optional(&mut *conn)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the restore never reached the audit log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
