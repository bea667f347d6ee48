//! `keyvault backup`, then `keyvault restore` into a fresh database, gives the store back: a
//! random store — keys made through the REST API with any of their fields, spent, changed,
//! disabled, rotated and deleted; dashboard users, some disabled; API tokens, some revoked;
//! settings; reported usage — backed up and restored, and the restored database's own full
//! backup lists the source's records one for one (the header, which names the time, aside),
//! while the usage rows the target held stay as they were (usage is not part of a backup:
//! docs/deployment.md). On SQLite → SQLite, PostgreSQL → PostgreSQL and SQLite → PostgreSQL,
//! the migration path; the memory backend has no `RestoreTarget`.
//!
//! Each property states its case count; the table is in `docs/reliability.md`. Seeds are
//! proptest's own, and `PROPTEST_RNG_SEED=<n>` replays a run.

mod common;

use std::path::Path;

use chrono::{TimeDelta, Utc};
use common::{
    PgDb, Server, Settings,
    backup::{Snapshot, keyvault, snapshot, write_usage},
};
use keyvault::deploy::Durable;
use keyvault_core::{Actor, AuditEvent, AuditOutcome, MAX_CREDITS};
use proptest::{prelude::*, sample::subsequence, test_runner::FileFailurePersistence};
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// What a case makes, in this order: tokens, users, settings, keys (each created, spent,
/// then changed), usage reported for the keys; and the usage rows the target holds before
/// the restore.
#[derive(Debug, Clone)]
struct Store {
    tokens: Vec<TokenPlan>,
    users: Vec<UserPlan>,
    settings: Vec<(String, String)>,
    keys: Vec<KeyPlan>,
    usage: Vec<UsagePlan>,
    target_usage: usize,
}

#[derive(Debug, Clone)]
struct TokenPlan {
    name: String,
    role: &'static str,
    expires_in_s: Option<i64>,
    revoked: bool,
}

#[derive(Debug, Clone)]
struct UserPlan {
    name: String,
    role: &'static str,
    enabled: bool,
    reset_password: bool,
}

#[derive(Debug, Clone)]
struct KeyPlan {
    /// The body of `POST /v1/keys`.
    new: Value,
    /// Verifications (their costs) before `then`.
    costs: Vec<u64>,
    then: Then,
    /// Verifications after `then`, with the key that is current by then.
    later: Vec<u64>,
}

#[derive(Debug, Clone)]
enum Then {
    Nothing,
    /// `PATCH /v1/keys/{id}` with this body.
    Patch(Value),
    /// `POST /v1/keys/{id}/rotate`, once or twice (the second time the successor), and
    /// perhaps the old key deleted afterwards.
    Rotate {
        grace_seconds: u64,
        twice: bool,
        delete_old: bool,
    },
    Delete,
}

#[derive(Debug, Clone)]
struct UsagePlan {
    /// Which key (modulo the keys made).
    key: usize,
    status: u16,
    latency_ms: f64,
    /// Seconds before now, with a fraction below the microsecond that stores drop.
    ago_ns: i64,
    request_id: Option<String>,
}

/// Names as people write them: mostly plain, sometimes any characters but U+0000, which
/// PostgreSQL cannot store (docs/reliability.md, "What they found").
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z][a-z0-9 ._-]{0,15}",
        1 => "[^\\x00]{1,24}".prop_filter("not blank", |s| !s.trim().is_empty()),
        1 => proptest::sample::select(vec![
            "é中文 🚀".to_owned(),
            "\u{202e}txet".to_owned(),
            "a\u{301}\u{200d}".to_owned(),
            "quote \" back \\ slash".to_owned(),
            "tab\there".to_owned(),
            "line\nbreak \u{1b}[0m\u{7f}".to_owned(),
        ]),
    ]
}

/// A time in the future, given to the nanosecond (stores keep microseconds).
fn future() -> impl Strategy<Value = String> {
    (60i64..86_400 * 400, 0i64..1_000_000_000).prop_map(|(s, ns)| {
        (Utc::now() + TimeDelta::seconds(s) + TimeDelta::nanoseconds(ns))
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    })
}

fn credit_amount() -> impl Strategy<Value = u64> {
    prop_oneof![6 => 0..=30u64, 1 => 0..=MAX_CREDITS, 1 => Just(MAX_CREDITS)]
}

fn credits() -> impl Strategy<Value = Value> {
    let refill = prop_oneof![
        1 => Just(Value::Null),
        2 => (prop_oneof![Just("daily"), Just("monthly")], credit_amount())
            .prop_map(|(interval, amount)| json!({"interval": interval, "amount": amount})),
    ];
    (credit_amount(), refill)
        .prop_map(|(remaining, refill)| json!({"remaining": remaining, "refill": refill}))
}

fn ratelimits() -> impl Strategy<Value = Value> {
    let names = vec!["burst", "minute", "día", "每日", "a b"];
    let limit = (
        1..=100u64,
        1_000..=86_400_000u64,
        proptest::option::of(proptest::sample::select(vec!["local", "open", "closed"])),
    );
    (
        subsequence(names, 0..=3),
        proptest::collection::vec(limit, 3),
    )
        .prop_map(|(names, limits)| {
            let all = names
                .into_iter()
                .zip(limits)
                .map(|(n, (limit, period, mode))| {
                    let mut l = json!({"name": n, "limit": limit, "period_ms": period});
                    if let Some(m) = mode {
                        l["fail_mode"] = json!(m);
                    }
                    l
                });
            Value::Array(all.collect())
        })
}

fn scopes() -> impl Strategy<Value = Value> {
    proptest::collection::vec("[a-z:]{1,8}|[^\\s\\p{C}]{1,6}", 0..3).prop_map(|s| json!(s))
}

/// Networks, some with host bits set (stored truncated) and one IPv4-mapped.
fn allowlist() -> impl Strategy<Value = Value> {
    let nets = vec![
        "10.0.0.0/8",
        "192.0.2.1",
        "192.0.2.77/24",
        "2001:db8::/32",
        "2001:db8::1",
        "::ffff:10.0.0.1/128",
        "0.0.0.0/0",
    ];
    subsequence(nets, 0..=3).prop_map(|n| json!(n))
}

/// Any JSON: every number kind serde_json has, any string but one holding U+0000, nested two
/// deep.
fn metadata() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[^\\x00]{0,12}".prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    proptest::collection::btree_map("[^\\x00]{1,8}", value, 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Never due while a case runs: the rotation job would make keys of its own.
fn rotation() -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(vec!["1h", "36h", "7d", "30d"]),
        proptest::option::of(proptest::sample::select(vec!["0s", "90s", "10m", "24h"])),
    )
        .prop_map(|(every, grace)| match grace {
            Some(g) => json!({"every": every, "grace": g}),
            None => json!({"every": every}),
        })
}

fn new_key() -> impl Strategy<Value = Value> {
    let prefix = proptest::option::of(proptest::sample::select(vec![
        "kv",
        "sk",
        "test_live",
        "a1",
    ]));
    (
        (
            name(),
            prefix,
            proptest::option::of("[a-z0-9]{1,8}|[^\\x00]{1,10}"),
            proptest::option::of(any::<bool>()),
            proptest::option::of(future()),
        ),
        (
            proptest::option::of(credits()),
            ratelimits(),
            scopes(),
            allowlist(),
            metadata(),
            proptest::option::of(rotation()),
        ),
    )
        .prop_map(
            |(
                (name, prefix, owner, enabled, expires),
                (credits, limits, scopes, allow, meta, rotation),
            )| {
                let mut body = json!({"name": name});
                let given = [
                    ("prefix", prefix.map(Value::from)),
                    ("owner_id", owner.map(Value::from)),
                    ("enabled", enabled.map(Value::from)),
                    ("expires_at", expires.map(Value::from)),
                    ("credits", credits),
                    ("ratelimits", Some(limits)),
                    ("scopes", Some(scopes)),
                    ("ip_allowlist", Some(allow)),
                    ("metadata", Some(meta)),
                    ("rotation", rotation),
                ];
                for (field, value) in given {
                    if let Some(v) = value {
                        body[field] = v;
                    }
                }
                body
            },
        )
}

/// A PATCH of a few fields; the nullable ones sometimes `null`.
fn patch() -> impl Strategy<Value = Value> {
    fn nullable(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
        proptest::option::weighted(0.3, prop_oneof![3 => v, 1 => Just(Value::Null)])
    }
    let field = |v| proptest::option::weighted(0.3, v);
    (
        (
            field(name().prop_map(Value::from).boxed()),
            nullable("[a-z0-9]{1,8}".prop_map(Value::from)),
            field(any::<bool>().prop_map(Value::from).boxed()),
            nullable(future().prop_map(Value::from)),
            nullable(credits()),
        ),
        (
            nullable(ratelimits()),
            nullable(scopes()),
            nullable(allowlist()),
            nullable(metadata()),
            nullable(rotation()),
        ),
    )
        .prop_map(
            |(
                (name, owner, enabled, expires, credits),
                (limits, scopes, allow, meta, rotation),
            )| {
                let fields = [
                    ("name", name),
                    ("owner_id", owner),
                    ("enabled", enabled),
                    ("expires_at", expires),
                    ("credits", credits),
                    ("ratelimits", limits),
                    ("scopes", scopes),
                    ("ip_allowlist", allow),
                    ("metadata", meta),
                    ("rotation", rotation),
                ];
                let body: Map<String, Value> = fields
                    .into_iter()
                    .filter_map(|(f, v)| v.map(|v| (f.to_owned(), v)))
                    .collect();
                Value::Object(body)
            },
        )
}

fn then() -> impl Strategy<Value = Then> {
    prop_oneof![
        3 => Just(Then::Nothing),
        3 => patch().prop_map(Then::Patch),
        2 => (0..=200_000u64, any::<bool>(), any::<bool>()).prop_map(
            |(grace_seconds, twice, delete_old)| Then::Rotate { grace_seconds, twice, delete_old }
        ),
        1 => Just(Then::Delete),
    ]
}

fn costs() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::vec(prop_oneof![4 => 0..=5u64, 1 => 0..=40u64], 0..3)
}

fn key_plan() -> impl Strategy<Value = KeyPlan> {
    (new_key(), costs(), then(), costs()).prop_map(|(new, costs, then, later)| KeyPlan {
        new,
        costs,
        then,
        later,
    })
}

fn role() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec!["admin", "operator", "viewer"])
}

fn store(max_keys: usize) -> impl Strategy<Value = Store> {
    let token = (
        name(),
        prop_oneof![role(), Just("verifier")],
        proptest::option::of(60i64..86_400 * 400),
        any::<bool>(),
    )
        .prop_map(|(name, role, expires_in_s, revoked)| TokenPlan {
            name,
            role,
            expires_in_s,
            revoked,
        });
    // Argon2 makes each user cost tens of milliseconds: few of them, fewer password resets.
    let user = (
        "[a-zA-Z0-9._@-]{1,10}|[\\p{L}\\p{N}]{1,6}",
        role(),
        prop::bool::weighted(0.7),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(name, role, enabled, reset_password)| UserPlan {
            name,
            role,
            enabled,
            reset_password,
        });
    let usage = (
        any::<usize>(),
        100..=599u16,
        0.0..10_000.0f64,
        0i64..3_600_000_000_000,
        proptest::option::of("[a-z0-9-]{1,16}"),
    )
        .prop_map(|(key, status, latency_ms, ago_ns, request_id)| UsagePlan {
            key,
            status,
            latency_ms,
            ago_ns,
            request_id,
        });
    (
        proptest::collection::vec(token, 0..3),
        proptest::collection::vec(user, 0..3),
        proptest::collection::vec(("[a-z][a-z_.]{0,11}", "[^\\x00]{0,30}"), 0..3),
        proptest::collection::vec(key_plan(), 0..=max_keys),
        proptest::collection::vec(usage, 0..6),
        0..3usize,
    )
        .prop_map(
            |(tokens, users, settings, keys, usage, target_usage)| Store {
                tokens,
                users,
                settings,
                keys,
                usage,
                target_usage,
            },
        )
}

/// A fresh database of this backend: a file in `dir/sub`, or a PostgreSQL database of its
/// own (with Redis), dropped with the returned guard.
fn database(backend: Backend, dir: &Path, sub: &str) -> (Settings, Option<PgDb>) {
    match backend {
        Backend::Sqlite => {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).unwrap();
            (Settings::sqlite(&d), None)
        }
        Backend::Postgres => {
            let db = PgDb::create();
            (Settings::postgres(&db), Some(db))
        }
    }
}

/// Sends `body` (none for `null`) and asserts the status; the answer's JSON.
async fn call(s: &Server, token: &str, method: &str, path: &str, body: &Value, want: u16) -> Value {
    let mut req = s.req(method, path).token(token);
    if !body.is_null() {
        req = req.json(body);
    }
    let r = req.send().await;
    assert_eq!(r.status, want, "{method} {path} {body}: {}", r.text());
    if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

async fn spend(s: &Server, token: &str, key: &str, costs: &[u64]) {
    for cost in costs {
        call(
            s,
            token,
            "POST",
            "/v1/keys/verify",
            &json!({"key": key, "cost": cost}),
            200,
        )
        .await;
    }
}

/// Makes `store` on a running deployment through its REST API and its public methods.
async fn fill(s: &Server, url: &str, store: &Store) {
    let admin = s.token("admin").await;
    for t in &store.tokens {
        let expires = t
            .expires_in_s
            .map(|secs| (Utc::now() + TimeDelta::seconds(secs)).to_rfc3339());
        let body = json!({"name": t.name, "role": t.role, "expires_at": expires});
        let made = call(s, &admin, "POST", "/v1/tokens", &body, 201).await;
        if t.revoked {
            let id = made["id"].as_str().unwrap();
            call(
                s,
                &admin,
                "DELETE",
                &format!("/v1/tokens/{id}"),
                &Value::Null,
                204,
            )
            .await;
        }
    }
    let actor = Actor::library();
    for u in &store.users {
        let role = u.role.parse().unwrap();
        match s
            .app
            .create_admin(&u.name, role, "correct horse battery".into(), &actor)
            .await
        {
            Ok(()) => {}
            // A name generated twice: refused, and audited as refused.
            Err(keyvault_admin::Error::Conflict(_)) => continue,
            Err(e) => panic!("create {:?}: {e}", u.name),
        }
        if !u.enabled {
            match s.app.set_user_access(&u.name, role, false, &actor).await {
                // The last enabled admin stays enabled.
                Ok(()) | Err(keyvault_admin::Error::Conflict(_)) => {}
                Err(e) => panic!("disable {:?}: {e}", u.name),
            }
        }
        if u.reset_password {
            s.app
                .reset_password(&u.name, "another correct horse".into(), &actor)
                .await
                .expect("reset a password");
        }
    }
    // Settings as the server's own are written (the audit check's, the alert evaluator's):
    // through the settings store, with an audit record.
    let durable = Durable::open(url).await.expect("open the database");
    for (name, value) in &store.settings {
        let name = format!("test.{name}");
        let event = AuditEvent::new(
            Utc::now(),
            &actor,
            "setting.put",
            Some(name.clone()),
            AuditOutcome::Success,
            json!({"value": value}),
        );
        durable
            .settings
            .put_setting(&name, value, &[event])
            .await
            .expect("put a setting");
    }
    let mut ids = Vec::new();
    for k in &store.keys {
        let made = call(s, &admin, "POST", "/v1/keys", &k.new, 201).await;
        let (mut id, mut key) = (
            made["id"].as_str().unwrap().to_owned(),
            made["key"].as_str().unwrap().to_owned(),
        );
        ids.push(id.clone());
        spend(s, &admin, &key, &k.costs).await;
        match &k.then {
            Then::Nothing => {}
            Then::Patch(body) => {
                call(s, &admin, "PATCH", &format!("/v1/keys/{id}"), body, 200).await;
            }
            Then::Rotate {
                grace_seconds,
                twice,
                delete_old,
            } => {
                let first = id.clone();
                // A disabled key is not rotated: refused (and audited as refused).
                let enabled = k.new["enabled"] != json!(false);
                for _ in 0..(1 + usize::from(*twice)) {
                    let body = json!({"grace_seconds": grace_seconds});
                    let path = format!("/v1/keys/{id}/rotate");
                    if !enabled {
                        call(s, &admin, "POST", &path, &body, 409).await;
                        continue;
                    }
                    let r = call(s, &admin, "POST", &path, &body, 201).await;
                    id = r["id"].as_str().unwrap().to_owned();
                    key = r["key"].as_str().unwrap().to_owned();
                }
                if *delete_old {
                    call(
                        s,
                        &admin,
                        "DELETE",
                        &format!("/v1/keys/{first}"),
                        &Value::Null,
                        204,
                    )
                    .await;
                }
            }
            Then::Delete => {
                call(
                    s,
                    &admin,
                    "DELETE",
                    &format!("/v1/keys/{id}"),
                    &Value::Null,
                    204,
                )
                .await;
                continue;
            }
        }
        spend(s, &admin, &key, &k.later).await;
    }
    if !ids.is_empty() && !store.usage.is_empty() {
        let events: Vec<Value> = store
            .usage
            .iter()
            .map(|u| {
                let ts = Utc::now() - TimeDelta::nanoseconds(u.ago_ns);
                let mut e = json!({
                    "key_id": ids[u.key % ids.len()],
                    "provider": "probe",
                    "status": u.status,
                    "latency_ms": u.latency_ms,
                    "ts": ts.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                });
                if let Some(r) = &u.request_id {
                    e["request_id"] = json!(r);
                }
                e
            })
            .collect();
        call(
            s,
            &admin,
            "POST",
            "/v1/usage",
            &json!({"events": events}),
            202,
        )
        .await;
    }
}

/// Fills a source of backend `from`, backs it up, restores the backup into a fresh target of
/// backend `to` holding `store.target_usage` usage rows, and compares.
async fn round_trip(from: Backend, to: Backend, store: &Store) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (src, _src_db) = database(from, dir.path(), "src");
    let (dst, _dst_db) = database(to, dir.path(), "dst");
    let s = Server::start(&src).await;
    fill(&s, &src.database_url, store).await;
    // Queued usage written, Redis's cached spends written back, the jobs stopped: nothing
    // writes to the source after this.
    s.admin.shutdown().await;
    drop(s);
    let source = snapshot(&src.database_url, dir.path(), "source.ndjson").await;
    let backup = dir.path().join("source.ndjson");
    // Migrated by the command line: a server's background jobs would go on writing to it.
    keyvault(&dst.database_url, &["migrate"])
        .await
        .expect("migrate");
    write_usage(&dst.database_url, store.target_usage).await;
    keyvault(
        &dst.database_url,
        &["restore", "--in", backup.to_str().unwrap()],
    )
    .await
    .expect("restore");
    let restored = snapshot(&dst.database_url, dir.path(), "restored.ndjson").await;
    let expected = Snapshot {
        lines: source.lines,
        calls: store.target_usage as u64,
    };
    prop_assert_eq!(restored, expected);
    keyvault(&dst.database_url, &["audit", "verify"])
        .await
        .expect("the restored chain verifies");
    Ok(())
}

/// `cases` cases, failures kept beside keyvault-core's (`SourceParallel` looks for a
/// `main.rs` that a test of one file does not have).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/backup_roundtrip.txt",
        ))),
        ..ProptestConfig::with_cases(cases)
    }
}

fn run(from: Backend, to: Backend, store: &Store) -> Result<(), TestCaseError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(round_trip(from, to, store))
}

proptest! {
    #![proptest_config(config(24))]

    /// 24 cases of up to 8 keys: SQLite → SQLite.
    #[test]
    fn a_sqlite_store_restores_into_sqlite_as_it_was(store in store(8)) {
        run(Backend::Sqlite, Backend::Sqlite, &store)?;
    }
}

proptest! {
    #![proptest_config(config(8))]

    /// 8 cases of up to 8 keys: PostgreSQL → PostgreSQL.
    #[test]
    fn a_postgres_store_restores_into_postgres_as_it_was(store in store(8)) {
        run(Backend::Postgres, Backend::Postgres, &store)?;
    }

    /// 8 cases of up to 8 keys: SQLite → PostgreSQL, the migration path.
    #[test]
    fn a_sqlite_store_restores_into_postgres_as_it_was(store in store(8)) {
        run(Backend::Sqlite, Backend::Postgres, &store)?;
    }
}
