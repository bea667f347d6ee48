//! The connection every Redis component shares, its settings and its time budget.

use std::{future::Future, sync::Arc, time::Duration};

use keyvault_core::{InvalidInput, KeyId};
use redis::{
    Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
};

use crate::error::Error;

/// Settings shared by every Redis component.
///
/// ```
/// use std::time::Duration;
/// use keyvault_redis::RedisConfig;
///
/// let config = RedisConfig::new("billing-prod")?.timeout(Duration::from_millis(100));
/// assert_eq!(config.namespace(), "billing-prod");
/// assert!(RedisConfig::new("bad{tag}").is_err());
/// # Ok::<(), keyvault_core::InvalidInput>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedisConfig {
    namespace: String,
    timeout: Duration,
    idempotency_ttl: Duration,
    cache_ttl: Duration,
}

/// Longest accepted namespace.
pub const MAX_NAMESPACE_LEN: usize = 64;

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            namespace: "keyvault".to_owned(),
            timeout: Duration::from_millis(250),
            idempotency_ttl: Duration::from_secs(120),
            cache_ttl: Duration::from_secs(86_400),
        }
    }
}

impl RedisConfig {
    /// Settings with every key under `namespace` (so several deployments can share one Redis):
    /// 1–64 characters, no whitespace, control characters or braces (braces mark Redis
    /// Cluster hash tags).
    pub fn new(namespace: impl Into<String>) -> Result<Self, InvalidInput> {
        let namespace = namespace.into();
        if namespace.is_empty()
            || namespace.chars().count() > MAX_NAMESPACE_LEN
            || namespace
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
        {
            return Err(InvalidInput::new(
                "namespace",
                "must be 1 to 64 characters without whitespace, control characters or braces",
            ));
        }
        Ok(Self {
            namespace,
            ..Self::default()
        })
    }

    /// The time budget of every Redis call (default 250 ms): past it the call counts as failed
    /// and the component's fail mode answers.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long a request id is remembered so that a retried check or spend, or its refund, is
    /// applied once (default 2 minutes).
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// How long an idle credit balance stays cached in Redis (default a day).
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The time budget of a call.
    pub fn call_timeout(&self) -> Duration {
        self.timeout
    }
}

/// A multiplexed, self-reconnecting connection to Redis with its settings. Cheap to clone;
/// every component built from one handle shares its connection.
///
/// Several node URLs, comma-separated (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`), name
/// a Redis Cluster (CONTRACT §4): commands follow the cluster's slots, every script touches
/// the keys of one quota only (one hash tag, one slot), and change notifications go through
/// the cluster's pub/sub, heard on any node.
///
/// ```no_run
/// use keyvault_redis::{RedisBackend, RedisConfig};
/// # async fn demo() -> Result<(), keyvault_redis::Error> {
/// let redis = RedisBackend::connect("redis://127.0.0.1:6379", RedisConfig::new("prod")?).await?;
/// redis.ping().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// One client per node URL: what pub/sub subscribes through (any node hears every
    /// message of a cluster).
    clients: Vec<redis::Client>,
    conn: Conn,
    config: RedisConfig,
}

/// The shared connection: to one server, or to a cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl std::fmt::Debug for RedisBackend {
    // The client holds the URL, which may carry a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("namespace", &self.inner.config.namespace)
            .field("timeout", &self.inner.config.timeout)
            .finish_non_exhaustive()
    }
}

/// One client per comma-separated node URL (one URL: a single server).
fn clients(urls: &str) -> Result<Vec<redis::Client>, Error> {
    let invalid = |why| Error::Invalid(InvalidInput::new("redis_url", why));
    let clients = urls
        .split(',')
        .map(str::trim)
        // The parse error may quote the URL (and its password): replace it.
        .map(|url| redis::Client::open(url).map_err(|_| invalid("not a valid Redis URL")))
        .collect::<Result<Vec<_>, _>>()?;
    if clients.is_empty() {
        return Err(invalid("names no Redis server"));
    }
    Ok(clients)
}

fn cluster_client(clients: &[redis::Client], config: &RedisConfig) -> Result<ClusterClient, Error> {
    ClusterClientBuilder::new(clients.iter().map(|c| c.get_connection_info().clone()))
        .connection_timeout(config.timeout)
        .response_timeout(config.timeout)
        .min_retry_wait(20)
        .max_retry_wait(500)
        .retries(4)
        .build()
        .map_err(|_| {
            Error::Invalid(InvalidInput::new(
                "redis_url",
                "the cluster's node URLs must agree on their settings",
            ))
        })
}

fn manager_config(config: &RedisConfig) -> ConnectionManagerConfig {
    // Reconnect quickly after a restart (enforcement must be back within seconds) without
    // hammering a server that is down; each call still has its own budget.
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout))
        .set_response_timeout(Some(config.timeout))
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(500))
        .set_number_of_retries(4)
}

impl RedisBackend {
    /// Connects, failing if Redis does not answer within the time budget. `url` is one
    /// server's URL, or several node URLs, comma-separated, of a Redis Cluster.
    pub async fn connect(url: &str, config: RedisConfig) -> Result<Self, Error> {
        let clients = clients(url)?;
        let budget = config.timeout;
        let conn = if let [one] = clients.as_slice() {
            let connecting =
                ConnectionManager::new_with_config(one.clone(), manager_config(&config));
            Conn::One(
                tokio::time::timeout(budget, connecting)
                    .await
                    .map_err(|_| Error::Timeout(budget))??,
            )
        } else {
            let cluster = cluster_client(&clients, &config)?;
            Conn::Cluster(
                tokio::time::timeout(budget, cluster.get_async_connection())
                    .await
                    .map_err(|_| Error::Timeout(budget))??,
            )
        };
        Ok(Self {
            inner: Arc::new(Inner {
                clients,
                conn,
                config,
            }),
        })
    }

    /// A handle that connects on first use: an instance can start while Redis is down (its
    /// components answer with their fail modes until it is back). Needs a Tokio runtime. One
    /// server only: a cluster's layout is read when connecting ([`Self::connect`]).
    pub fn connect_lazy(url: &str, config: RedisConfig) -> Result<Self, Error> {
        let clients = clients(url)?;
        if clients.len() > 1 {
            return Err(Error::Invalid(InvalidInput::new(
                "redis_url",
                "a Redis Cluster connects at once, not lazily",
            )));
        }
        let conn = Conn::One(ConnectionManager::new_lazy_with_config(
            clients[0].clone(),
            manager_config(&config),
        )?);
        Ok(Self {
            inner: Arc::new(Inner {
                clients,
                conn,
                config,
            }),
        })
    }

    /// Whether this handle talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.conn, Conn::Cluster(_))
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// Checks that Redis answers within the budget (for readiness probes).
    pub async fn ping(&self) -> Result<(), Error> {
        let mut conn = self.conn();
        self.run(async move { redis::cmd("PING").query_async::<()>(&mut conn).await })
            .await
    }

    pub(crate) fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }

    /// The client to subscribe through on the `attempt`-th try: the nodes in turn, so that a
    /// cluster node that is down does not stop change notifications.
    pub(crate) fn pubsub_client(&self, attempt: usize) -> &redis::Client {
        &self.inner.clients[attempt % self.inner.clients.len()]
    }

    /// A key of one quota: `<namespace>:{<quota id>}:<rest>`. The hash tag keeps every key of
    /// a quota in one Redis Cluster slot, so one script may touch them all.
    pub(crate) fn quota_key(&self, quota: KeyId, rest: &str) -> String {
        format!("{}:{{{quota}}}:{rest}", self.inner.config.namespace)
    }

    /// A key outside any quota: `<namespace>:<rest>`.
    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.inner.config.namespace)
    }

    pub(crate) fn idempotency_ms(&self) -> u64 {
        millis(self.inner.config.idempotency_ttl)
    }

    pub(crate) fn cache_ttl_ms(&self) -> u64 {
        millis(self.inner.config.cache_ttl)
    }

    /// Runs one Redis call within the time budget.
    pub(crate) async fn run<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        let budget = self.inner.config.timeout;
        match tokio::time::timeout(budget, call).await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::Timeout(budget)),
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
