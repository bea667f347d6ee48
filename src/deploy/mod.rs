//! Backends wired from a deployment's settings: `DATABASE_URL` picks PostgreSQL or SQLite for
//! keys, balances, audit and usage; `REDIS_URL`, when set, adds exact limits across instances,
//! a credit cache in front of the database and change propagation over pub/sub.
//!
//! Every process on the same database and Redis (the standalone server, an application that
//! embeds keyvault, a batch job) wires them the same way, so keys created by one verify in the
//! others and changes made by one reach the others.
//!
//! ```no_run
//! use keyvault::deploy::{self, Deployment, Durable};
//!
//! # async fn demo() -> keyvault::Result<()> {
//! let durable = Durable::open("postgres://localhost/keyvault").await?;
//! let deployment = Deployment::connect(durable, Some("redis://localhost:6379")).await?;
//! let vault = deployment
//!     .builder()
//!     .hasher(deploy::hasher(std::env::var("KEYVAULT_PEPPER").ok().as_deref())?)
//!     .build()?;
//! // … serve requests with `vault` …
//! deployment.flush().await?; // on shutdown: balances cached in Redis go back to the database
//! # drop(vault);
//! # Ok(()) }
//! ```

mod settings;

use std::{sync::Arc, time::Duration};

pub use settings::{DatabaseUrl, RedisSettings};

use keyvault_core::{
    AlertStore, AuditLog, CacheConfig, ChangeBus, ClientSignals, CreditStore, Error, FanOutBus,
    KeyHasher, KeyStore, KeyvaultBuilder, LeaseStore, NotifierStore, RateLimiter, RestoreTarget,
    Result, SessionStore, SettingStore, SignalStore, TokenStore, UsageQuery, UsageSink, UserStore,
};
use keyvault_postgres::{PgChangeBus, PgStore};
use keyvault_redis::{
    LiveCounters, LiveSink, RedisBackend, RedisChangeBus, RedisConfig, RedisCreditStore,
    RedisRateLimiter,
};
use keyvault_sqlite::{SqliteChangeBus, SqliteStore};

/// The digest function for `KEYVAULT_PEPPER`: peppered when set, plain SHA-256 otherwise.
///
/// # Errors
/// [`Error::Invalid`] naming `KEYVAULT_PEPPER` when the pepper is unusable (empty).
pub fn hasher(pepper: Option<&str>) -> Result<KeyHasher> {
    match pepper {
        Some(p) => KeyHasher::with_pepper(p.as_bytes())
            .map_err(|e| Error::invalid("KEYVAULT_PEPPER", e.message)),
        None => Ok(KeyHasher::sha256()),
    }
}

/// The database behind a [`Durable`], kept concrete for what only it offers (its pool for an
/// application's own tables, readiness checks).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Database {
    /// PostgreSQL.
    Postgres(PgStore),
    /// SQLite.
    Sqlite(SqliteStore),
}

impl Database {
    /// Checks the database answers.
    ///
    /// # Errors
    /// The backend's error when it does not.
    pub async fn ping(&self) -> Result<()> {
        match self {
            Database::Postgres(s) => s.ping().await,
            Database::Sqlite(s) => s.ping().await,
        }
    }
}

/// Every role of the database, played by one migrated store, and its change bus.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Durable {
    /// Where keys live.
    pub store: Arc<dyn KeyStore>,
    /// Credit balances.
    pub credits: Arc<dyn CreditStore>,
    /// The audit log.
    pub audit: Arc<dyn AuditLog>,
    /// Where usage events go.
    pub usage: Arc<dyn UsageSink>,
    /// Statistics over them.
    pub stats: Arc<dyn UsageQuery>,
    /// The server's dashboard users.
    pub users: Arc<dyn UserStore>,
    /// The server's API tokens.
    pub tokens: Arc<dyn TokenStore>,
    /// Dashboard sessions.
    pub sessions: Arc<dyn SessionStore>,
    /// Settings shared by every instance (the generated session secret).
    pub settings: Arc<dyn SettingStore>,
    /// Leases that let one instance at a time run a background job.
    pub leases: Arc<dyn LeaseStore>,
    /// Alert rules, alerts and their baselines.
    pub alerts: Arc<dyn AlertStore>,
    /// Notification channels and the outbox of their deliveries.
    pub notifiers: Arc<dyn NotifierStore>,
    /// Client signals: `NOT_FOUND` counts per IP and minute, and where each key is used from.
    pub signals: Arc<dyn SignalStore>,
    /// Changes announced through the database (the only bus without Redis).
    pub bus: Arc<dyn ChangeBus>,
    /// Where a backup is restored, in one transaction.
    pub restore: Arc<dyn RestoreTarget>,
    database: Database,
}

impl Durable {
    /// Connects to `database_url` (`postgres://`, `postgresql://` or `sqlite:`) and applies
    /// the backend's migrations. Must run inside a Tokio runtime (the change bus listens in a
    /// task).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `DATABASE_URL` for another scheme; the backend's error when
    /// it cannot connect or migrate.
    pub async fn open(database_url: &str) -> Result<Self> {
        match DatabaseUrl::parse(database_url)? {
            DatabaseUrl::Postgres(url) => Self::postgres(PgStore::connect(&url).await?).await,
            DatabaseUrl::Sqlite { url, .. } => {
                let store = SqliteStore::connect(&url).await?;
                Self::sqlite(store, keyvault_sqlite::DEFAULT_POLL_INTERVAL).await
            }
        }
    }

    /// Migrates a connected PostgreSQL store and listens for its changes.
    ///
    /// # Errors
    /// The backend's error when it cannot migrate or listen.
    pub async fn postgres(store: PgStore) -> Result<Self> {
        store.migrate().await?;
        let bus = PgChangeBus::connect(store.pool()).await?;
        Ok(Self::over(
            Arc::new(store.clone()),
            Database::Postgres(store),
            Arc::new(bus),
        ))
    }

    /// Migrates a connected SQLite store and polls its change log every `poll` (other
    /// processes on the same file are heard within that interval).
    ///
    /// # Errors
    /// The backend's error when it cannot migrate or read the change log.
    pub async fn sqlite(store: SqliteStore, poll: Duration) -> Result<Self> {
        store.migrate().await?;
        let bus = SqliteChangeBus::with_interval(store.clone(), poll).await?;
        Ok(Self::over(
            Arc::new(store.clone()),
            Database::Sqlite(store),
            Arc::new(bus),
        ))
    }

    fn over<S>(s: Arc<S>, database: Database, bus: Arc<dyn ChangeBus>) -> Self
    where
        S: KeyStore
            + CreditStore
            + AuditLog
            + UsageSink
            + UsageQuery
            + UserStore
            + TokenStore
            + SessionStore
            + SettingStore
            + LeaseStore
            + AlertStore
            + NotifierStore
            + SignalStore
            + RestoreTarget
            + 'static,
    {
        Self {
            store: s.clone(),
            credits: s.clone(),
            audit: s.clone(),
            usage: s.clone(),
            stats: s.clone(),
            users: s.clone(),
            tokens: s.clone(),
            sessions: s.clone(),
            settings: s.clone(),
            leases: s.clone(),
            alerts: s.clone(),
            notifiers: s.clone(),
            signals: s.clone(),
            restore: s,
            bus,
            database,
        }
    }

    /// The concrete database.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Also announces and hears changes on Redis at `redis_url`, and nothing else from Redis:
    /// for a process that changes keys but does not verify them (a batch job), so that its
    /// changes reach verifying processes listening on either bus. [`Deployment::connect`]
    /// does this itself: do not combine the two.
    ///
    /// # Errors
    /// The Redis error when it cannot connect.
    pub async fn announce_on_redis(mut self, redis_url: &str) -> Result<Self> {
        let redis = RedisBackend::connect(redis_url, RedisConfig::default()).await?;
        self.bus = Arc::new(FanOutBus::new(vec![
            Arc::new(RedisChangeBus::new(&redis)),
            self.bus,
        ]));
        Ok(self)
    }

    /// A [`keyvault_core::Keyvault`] builder over the database's roles and its change bus;
    /// the rate limiter stays in memory.
    pub fn builder(&self) -> KeyvaultBuilder {
        keyvault_core::Keyvault::builder()
            .key_store(self.store.clone())
            .credits(self.credits.clone())
            .audit_log(self.audit.clone())
            .change_bus(self.bus.clone())
    }
}

/// What Redis adds in front of a [`Durable`], kept concrete for flushing, invalidation and
/// statistics.
#[derive(Debug, Clone)]
pub struct Redis {
    backend: RedisBackend,
    credits: Arc<RedisCreditStore>,
    limiter: Arc<RedisRateLimiter>,
    bus: Arc<dyn ChangeBus>,
    live: LiveCounters,
}

impl Redis {
    /// Connects to `redis_url`: a rate limiter, a credit cache over `durable`'s balances, and
    /// a bus over Redis pub/sub and `durable`'s bus. Redis reaches every instance at once; the
    /// database's bus stays for processes that run without Redis.
    ///
    /// # Errors
    /// The Redis error when it cannot connect.
    pub async fn connect(redis_url: &str, durable: &Durable) -> Result<Self> {
        Self::connect_with(&RedisSettings::new(redis_url), durable).await
    }

    /// [`connect`](Self::connect) with the limiter's and credit cache's settings.
    ///
    /// # Errors
    /// The Redis error when it cannot connect.
    pub async fn connect_with(settings: &RedisSettings, durable: &Durable) -> Result<Self> {
        let backend = RedisBackend::connect(&settings.url, settings.config.clone()).await?;
        let credits = Arc::new(RedisCreditStore::new(
            &backend,
            durable.credits.clone(),
            settings.credits.clone(),
        ));
        let limiter = Arc::new(RedisRateLimiter::new(&backend, settings.limiter.clone()));
        let bus = Arc::new(FanOutBus::new(vec![
            Arc::new(RedisChangeBus::new(&backend)),
            durable.bus.clone(),
        ]));
        let live = LiveCounters::new(&backend);
        Ok(Self {
            backend,
            credits,
            limiter,
            bus,
            live,
        })
    }

    /// The connection.
    pub fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    /// The credit cache (flush it on shutdown; invalidate a balance set behind its back).
    pub fn credits(&self) -> &Arc<RedisCreditStore> {
        &self.credits
    }

    /// The rate limiter.
    pub fn limiter(&self) -> &Arc<RedisRateLimiter> {
        &self.limiter
    }

    /// Redis's bus and the database's, as one.
    pub fn bus(&self) -> &Arc<dyn ChangeBus> {
        &self.bus
    }

    /// Calls, errors and refusals per second and minute, fed by [`Deployment::usage`].
    pub fn live(&self) -> &LiveCounters {
        &self.live
    }
}

/// A [`Durable`] database and, when configured, [`Redis`] in front of it: what a verifying
/// process runs on. Its keyvaults gather client signals (the addresses of unknown keys, the
/// networks keys are used from), written to the database every second.
#[derive(Debug, Clone)]
pub struct Deployment {
    durable: Durable,
    redis: Option<Redis>,
    signals: ClientSignals,
    _flusher: Arc<Flusher>,
}

/// The task writing client signals, stopped when the last clone of its deployment goes.
#[derive(Debug)]
struct Flusher(tokio::task::JoinHandle<()>);

impl Drop for Flusher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Deployment {
    /// Puts Redis at `redis_url` (when given) in front of `durable`.
    ///
    /// # Errors
    /// The Redis error when it cannot connect.
    pub async fn connect(durable: Durable, redis_url: Option<&str>) -> Result<Self> {
        Self::connect_with(durable, redis_url.map(RedisSettings::new).as_ref()).await
    }

    /// [`connect`](Self::connect) with Redis's limiter and credit settings.
    ///
    /// # Errors
    /// The Redis error when it cannot connect.
    pub async fn connect_with(durable: Durable, redis: Option<&RedisSettings>) -> Result<Self> {
        let redis = match redis {
            Some(settings) => Some(Redis::connect_with(settings, &durable).await?),
            None => None,
        };
        let signals = ClientSignals::new();
        let flusher = tokio::spawn(
            signals
                .clone()
                .flush_every(durable.signals.clone(), Duration::from_secs(1)),
        );
        Ok(Self {
            durable,
            redis,
            signals,
            _flusher: Arc::new(Flusher(flusher)),
        })
    }

    /// Writes the client signals gathered so far (the flusher does every second).
    ///
    /// # Errors
    /// The database's error; the signals are kept for the next write.
    pub async fn flush_signals(&self) -> Result<()> {
        self.signals.flush(self.durable.signals.as_ref()).await
    }

    /// The database.
    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// Redis, when configured.
    pub fn redis(&self) -> Option<&Redis> {
        self.redis.as_ref()
    }

    /// Where usage events go: the database, and with Redis configured also Redis's live
    /// counters (what `/v1/stats/live` reads across instances).
    pub fn usage(&self) -> Arc<dyn UsageSink> {
        match &self.redis {
            Some(r) => Arc::new(LiveSink::new(self.durable.usage.clone(), r.live.clone())),
            None => self.durable.usage.clone(),
        }
    }

    /// Credit balances: Redis's cache when configured, else the database.
    pub fn credits(&self) -> Arc<dyn CreditStore> {
        match &self.redis {
            Some(r) => r.credits.clone(),
            None => self.durable.credits.clone(),
        }
    }

    /// The rate limiter shared across instances, when Redis is configured.
    pub fn limiter(&self) -> Option<Arc<dyn RateLimiter>> {
        self.redis
            .as_ref()
            .map(|r| r.limiter.clone() as Arc<dyn RateLimiter>)
    }

    /// The change bus: Redis's and the database's together, or the database's alone.
    pub fn bus(&self) -> Arc<dyn ChangeBus> {
        match &self.redis {
            Some(r) => r.bus.clone(),
            None => self.durable.bus.clone(),
        }
    }

    /// A [`keyvault_core::Keyvault`] builder over these backends. Cached keys live 30
    /// seconds: changes reach every process through the bus within a second, so the TTL only
    /// bounds staleness if a message is lost.
    pub fn builder(&self) -> KeyvaultBuilder {
        let cache = CacheConfig {
            ttl: Duration::from_secs(30),
            ..CacheConfig::default()
        };
        let builder = keyvault_core::Keyvault::builder()
            .key_store(self.durable.store.clone())
            .credits(self.credits())
            .audit_log(self.durable.audit.clone())
            .change_bus(self.bus())
            .cache(cache)
            .client_signals(self.signals.clone());
        match self.limiter() {
            Some(l) => builder.limiter(l),
            None => builder,
        }
    }

    /// Checks the database and Redis answer (for readiness probes).
    ///
    /// # Errors
    /// The first backend's error.
    pub async fn ping(&self) -> Result<()> {
        self.durable.database.ping().await?;
        if let Some(r) = &self.redis {
            r.backend.ping().await?;
        }
        Ok(())
    }

    /// Gives back the rate-limit tokens leased and unused, writes back credit spends cached
    /// in Redis and the client signals gathered (on shutdown).
    ///
    /// # Errors
    /// The backend's error when a balance or the signals could not be written.
    pub async fn flush(&self) -> Result<()> {
        if let Some(r) = &self.redis {
            r.limiter.end_leases().await;
            r.credits.flush().await?;
        }
        self.flush_signals().await
    }
}

#[cfg(test)]
mod tests {
    use keyvault_core::{Actor, Credits, NewKey, Outcome, RateLimit, VerifyRequest};

    use super::*;

    #[test]
    fn bad_settings_are_named() {
        assert!(!hasher(None).unwrap().is_peppered());
        assert!(hasher(Some("pepper")).unwrap().is_peppered());
        match hasher(Some("")) {
            Err(Error::Invalid(e)) => assert_eq!(e.field, "KEYVAULT_PEPPER"),
            other => panic!("expected an invalid pepper, got {other:?}"),
        }
    }

    #[test]
    fn database_urls_name_their_backend() {
        let sqlite = |p: &str| DatabaseUrl::parse(p).unwrap();
        assert!(matches!(
            sqlite("sqlite://keyvault.db"),
            DatabaseUrl::Sqlite { path: Some(p), .. } if p == std::path::Path::new("keyvault.db")
        ));
        assert!(matches!(
            sqlite("sqlite:///tmp/x/kv.db?mode=rwc"),
            DatabaseUrl::Sqlite { path: Some(p), .. } if p == std::path::Path::new("/tmp/x/kv.db")
        ));
        assert!(matches!(
            sqlite("sqlite::memory:"),
            DatabaseUrl::Sqlite { path: None, .. }
        ));
        for pg in [
            "postgres://u@h/db",
            "postgresql://u@h/db",
            " postgres://u:pw@h/db ",
        ] {
            let url = DatabaseUrl::parse(pg).unwrap();
            assert_eq!(url.kind(), "postgres");
            assert!(!format!("{url:?}").contains("pw"), "Debug hides the URL");
        }
        for bad in ["mysql://x", "sqlite://", "", "keyvault.db"] {
            match DatabaseUrl::parse(bad) {
                Err(Error::Invalid(e)) => assert_eq!(e.field, "DATABASE_URL"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_unknown_scheme_names_database_url() {
        match Durable::open("mysql://nowhere").await {
            Err(Error::Invalid(e)) => assert_eq!(e.field, "DATABASE_URL"),
            other => panic!("expected an invalid database URL, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sqlite_deployment_verifies_what_it_creates_and_keeps_it() {
        let path = std::env::temp_dir().join(format!("keyvault-deploy-{}.db", uuid_like()));
        let url = format!("sqlite://{}", path.display());
        let deployment = Deployment::connect(Durable::open(&url).await.unwrap(), None)
            .await
            .unwrap();
        assert!(matches!(
            deployment.durable().database(),
            Database::Sqlite(_)
        ));
        assert!(deployment.redis().is_none() && deployment.limiter().is_none());
        deployment.ping().await.unwrap();
        let vault = deployment.builder().build().unwrap();
        let created = vault
            .create_key(
                NewKey::new("deploy").credits(Credits::new(2)),
                &Actor::library(),
            )
            .await
            .unwrap();
        let v = vault
            .verify(&VerifyRequest::new(created.key.expose()))
            .await
            .unwrap();
        assert_eq!(v.outcome, Outcome::Valid);
        assert_eq!(v.credits_remaining, Some(1));
        deployment.flush().await.unwrap();
        drop((vault, deployment));

        // A second process on the same file sees the key and its spent credit.
        let again = Durable::open(&url).await.unwrap();
        let stored = again.store.get(created.record.id).await.unwrap();
        assert_eq!(stored.map(|r| r.name), Some("deploy".to_owned()));
        let vault = again.builder().build().unwrap();
        let v = vault
            .verify(&VerifyRequest::new(created.key.expose()))
            .await
            .unwrap();
        assert_eq!(v.credits_remaining, Some(0));
        drop((vault, again));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    /// `flush` gives back the rate-limit tokens a busy key leased: afterwards Redis holds the
    /// limit less exactly what was admitted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_gives_leased_tokens_back() {
        let path = std::env::temp_dir().join(format!("keyvault-deploy-{}.db", uuid_like()));
        let url = format!("sqlite://{}", path.display());
        let redis_url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let deployment = Deployment::connect(Durable::open(&url).await.unwrap(), Some(&redis_url))
            .await
            .unwrap();
        let vault = deployment.builder().build().unwrap();
        // A year's limit: no refill worth a token within the test.
        let limit = RateLimit::new("y", 100_000, 31_536_000_000).unwrap();
        let created = vault
            .create_key(
                NewKey::new("busy").ratelimit(limit.clone()),
                &Actor::library(),
            )
            .await
            .unwrap();
        let key = created.key.expose().to_owned();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (vault, key) = (vault.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..100 {
                    let v = vault.verify(&VerifyRequest::new(&key)).await.unwrap();
                    assert_eq!(v.outcome, Outcome::Valid);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let redis = deployment.redis().unwrap();
        assert!(
            redis.limiter().lease_stats().leases > 0,
            "no lease was taken"
        );
        deployment.flush().await.unwrap();
        let s = redis.limiter().lease_stats();
        assert_eq!((s.held, s.returning, s.forfeited), (0, 0, 0), "{s:?}");
        let plain = RedisRateLimiter::new(
            redis.backend(),
            keyvault_redis::RedisLimiterConfig::default().lease_lifetime(Duration::ZERO),
        );
        let limits = [limit];
        let left = plain
            .check(&keyvault_core::LimitRequest {
                quota_id: created.record.quota_id,
                limits: &limits,
                since: &[],
                take: false,
                request_id: "",
            })
            .await
            .unwrap();
        let remaining = left.states[0].remaining;
        assert!(
            (96_800..=96_801).contains(&remaining),
            "Redis holds {remaining} after 3,200 admitted of 100,000"
        );
        drop((vault, deployment));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    /// A name no other test run uses at the same time.
    fn uuid_like() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{nanos}", std::process::id())
    }
}
