//! Shared test setup: namespaces, two-instance setups and private redis-server processes.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use keyvault_core::{Keyvault, memory::MemoryStore};
use keyvault_redis::{
    RedisBackend, RedisChangeBus, RedisConfig, RedisCreditConfig, RedisCreditStore,
    RedisLimiterConfig, RedisRateLimiter,
};

/// The rate-limit script as the limiter loads it: the shared token arithmetic, then the script.
pub const RATELIMIT_LUA: &str = concat!(
    include_str!("../../lua/tokens.lua"),
    include_str!("../../lua/ratelimit.lua")
);

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A namespace no other test uses.
pub fn namespace() -> String {
    format!("kvtest-{}", keyvault_core::uuid::Uuid::now_v7().simple())
}

/// A generous budget for tests on a shared, busy machine: a slow answer must not be mistaken
/// for an outage in tests that count exactly. The fail-mode tests use the default budget.
pub const TEST_BUDGET: Duration = Duration::from_secs(5);

pub async fn backend(url: &str, ns: &str, budget: Duration) -> RedisBackend {
    RedisBackend::connect(url, RedisConfig::new(ns).unwrap().timeout(budget))
        .await
        .unwrap()
}

/// One instance: its own connection, limiter, credit cache and bus over a shared durable store.
pub struct Instance {
    pub redis: RedisBackend,
    pub kv: Keyvault,
    pub credits: Arc<RedisCreditStore>,
    pub limiter: Arc<RedisRateLimiter>,
    pub bus: Arc<RedisChangeBus>,
}

pub async fn instance(
    redis: RedisBackend,
    durable: &Arc<MemoryStore>,
    credits: RedisCreditConfig,
    limits: RedisLimiterConfig,
) -> Instance {
    let credits = Arc::new(RedisCreditStore::new(&redis, durable.clone(), credits));
    let limiter = Arc::new(RedisRateLimiter::new(&redis, limits));
    let bus = Arc::new(RedisChangeBus::new(&redis));
    let kv = Keyvault::builder()
        .key_store(durable.clone())
        .audit_log(durable.clone())
        .credits(credits.clone())
        .limiter(limiter.clone())
        .change_bus(bus.clone())
        .build()
        .unwrap();
    Instance {
        redis,
        kv,
        credits,
        limiter,
        bus,
    }
}

/// A cluster's node URLs starting from the next node (one server's URL unchanged): an
/// instance connected through it subscribes to changes on another node than the first.
pub fn rotated(url: &str) -> String {
    let mut nodes: Vec<&str> = url.split(',').collect();
    nodes.rotate_left(1);
    nodes.join(",")
}

/// `n` instances on one new namespace and one durable store, with `credits` and the default
/// limiter (leases on); on a Redis Cluster each instance subscribes through another node.
/// Returns the namespace too.
pub async fn instances(
    n: usize,
    credits: RedisCreditConfig,
) -> (String, Arc<MemoryStore>, Vec<Instance>) {
    let ns = namespace();
    let durable = Arc::new(MemoryStore::new());
    let mut all = Vec::new();
    let mut url = redis_url();
    for _ in 0..n {
        all.push(
            instance(
                backend(&url, &ns, TEST_BUDGET).await,
                &durable,
                credits.clone(),
                RedisLimiterConfig::default(),
            )
            .await,
        );
        url = rotated(&url);
    }
    (ns, durable, all)
}

/// Two of [`instances`], with default credits, their subscriptions settled.
pub async fn two_instances() -> (Arc<MemoryStore>, Instance, Instance) {
    let (_, durable, mut all) = instances(2, RedisCreditConfig::default()).await;
    let (b, a) = (all.pop().unwrap(), all.pop().unwrap());
    // Let both subscriptions settle before anything is published.
    wait_subscribed(&a.bus).await;
    wait_subscribed(&b.bus).await;
    (durable, a, b)
}

pub async fn wait_subscribed(bus: &RedisChangeBus) {
    for _ in 0..200 {
        if bus.subscriptions() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the change bus never subscribed");
}

/// One command on `url` (one server, or a cluster's comma-separated nodes), outside keyvault.
pub async fn query<T: keyvault_redis::redis::FromRedisValue>(
    url: &str,
    cmd: &keyvault_redis::redis::Cmd,
) -> T {
    use keyvault_redis::redis;
    if url.contains(',') {
        let client = redis::cluster::ClusterClient::new(url.split(',')).unwrap();
        let mut conn = client.get_async_connection().await.unwrap();
        cmd.query_async(&mut conn).await.unwrap()
    } else {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        cmd.query_async(&mut conn).await.unwrap()
    }
}

/// A redis-server of our own on a free port, so that tests may kill or flush it.
pub struct OwnRedis {
    pub port: u16,
    child: Option<tokio::process::Child>,
}

impl OwnRedis {
    pub async fn start() -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut r = Self { port, child: None };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn restart(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        for _ in 0..500 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && matches!(s.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"+PONG"))
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.as_ref().and_then(tokio::process::Child::id) {
            let _ = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status();
        }
    }

    /// A hang: the server stopped (SIGSTOP); connections stay open, nothing answers.
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    /// The end of a hang (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

/// Asserts one check's reply from `ratelimit.lua` (admitted, now, then remaining, reset and
/// retry in µs) against keyvault-core's reference maths for the same check.
pub fn assert_reply_is_reference(
    reply: &[i64],
    want: &keyvault_core::gcra::BucketState,
    ctx: &str,
) {
    assert_eq!(reply[0] == 1, want.admitted, "{ctx}");
    assert_eq!(reply[2] as u64, want.remaining, "{ctx}");
    assert_eq!(reply[3] as u128, want.reset_in_ns.div_ceil(1_000), "{ctx}");
    assert_eq!(
        (reply[4] >= 0).then_some(reply[4] as u128),
        want.retry_in_ns.map(|ns| ns.div_ceil(1_000)),
        "{ctx}"
    );
}

/// Asserts that the bucket stored at `key` holds exactly the reference's scaled TAT `x`
/// (an absent bucket is full, and says nothing).
pub async fn assert_stored_tat(
    conn: &mut keyvault_redis::redis::aio::MultiplexedConnection,
    key: &str,
    limit: u32,
    x: u128,
    ctx: &str,
) {
    let stored: Option<String> = keyvault_redis::redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap();
    if let Some(s) = stored {
        let (q, r) = s.split_once(':').unwrap();
        let (q, r): (u128, u128) = (q.parse().unwrap(), r.parse().unwrap());
        assert_eq!((q * u128::from(limit) + r) * 1_000, x, "{ctx}");
    }
}
