//! [`Keyvault`]: the verifier and the key manager over a set of backends.

use std::{net::IpAddr, sync::Arc};

use tokio::task::JoinHandle;

use crate::{
    audit::AuditLog,
    cache::{CacheConfig, CacheStats, CachedKeyStore},
    changes::ChangeBus,
    clock::{Clock, SharedClock, SystemClock},
    digest::KeyHasher,
    error::{InvalidInput, Result},
    key::{self, TOKEN_PREFIX},
    limits::{CreditDecision, CreditRequest, CreditStore, LimitRequest, RateLimiter},
    memory::{MemoryRateLimiter, MemoryStore},
    model::{KeyRecord, check_credit_amount},
    outcome::{Outcome, Verification},
    store::KeyStore,
};

/// What to verify.
#[derive(Debug, Clone, Copy)]
pub struct VerifyRequest<'a> {
    key: &'a str,
    cost: u64,
    scopes: &'a [String],
    ip: Option<IpAddr>,
    report_state: bool,
    request_id: Option<&'a str>,
    /// The id was made for this verification alone and is never retried.
    unique_id: bool,
}

impl<'a> VerifyRequest<'a> {
    /// Verifies the presented text `key` at cost 1, with no scopes and no caller IP.
    pub fn new(key: &'a str) -> Self {
        Self {
            key,
            cost: 1,
            scopes: &[],
            ip: None,
            report_state: true,
            request_id: None,
            unique_id: false,
        }
    }

    /// Credits to spend (0 is a pure check). At most 2⁵³−1.
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    /// Scopes the key must hold.
    pub fn scopes(mut self, scopes: &'a [String]) -> Self {
        self.scopes = scopes;
        self
    }

    /// The caller's address (needed for keys with an allow-list).
    pub fn ip(mut self, ip: Option<IpAddr>) -> Self {
        self.ip = ip;
        self
    }

    /// Whether a key rejected before its limits are checked (disabled, expired, forbidden,
    /// missing scope) still reports its credits and rate limits — at the price of reading
    /// them. On by default; middleware turns it off.
    pub fn report_state(mut self, report: bool) -> Self {
        self.report_state = report;
        self
    }

    /// An id for this verification, carried to limiters and credit stores so that a retry is
    /// applied once (on every instance: such checks are never admitted from a lease).
    pub fn request_id(mut self, id: &'a str) -> Self {
        self.request_id = Some(id);
        self.unique_id = false;
        self
    }

    /// An id made for this verification alone, never sent again (middleware's id for the
    /// request's usage event): with no retry to recognise, rate limits and credits are
    /// checked without it, and may be admitted from tokens or credits leased in advance.
    pub fn unique_request_id(mut self, id: &'a str) -> Self {
        self.request_id = Some(id);
        self.unique_id = true;
        self
    }
}

pub(crate) struct Inner {
    pub(crate) keys: Arc<CachedKeyStore<Arc<dyn KeyStore>>>,
    pub(crate) limiter: Arc<dyn RateLimiter>,
    pub(crate) credits: Arc<dyn CreditStore>,
    pub(crate) audit: Option<Arc<dyn AuditLog>>,
    pub(crate) bus: Option<Arc<dyn ChangeBus>>,
    pub(crate) clock: SharedClock,
    pub(crate) hasher: KeyHasher,
    signals: Option<crate::ClientSignals>,
    listener: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
    }
}

/// Verifies keys and manages them. Cheap to clone; clones share caches and backends.
///
/// ```
/// use keyvault_core::{Keyvault, NewKey, Credits, Outcome, VerifyRequest, Actor};
///
/// # async fn demo() -> keyvault_core::Result<()> {
/// let kv = Keyvault::in_memory();
/// let created = kv.create_key(NewKey::new("ci").credits(Credits::new(2)), &Actor::library()).await?;
/// let key = created.key.expose();
/// assert_eq!(kv.verify(&VerifyRequest::new(key)).await?.outcome, Outcome::Valid);
/// assert_eq!(kv.verify(&VerifyRequest::new(key)).await?.outcome, Outcome::Valid);
/// assert_eq!(kv.verify(&VerifyRequest::new(key)).await?.outcome, Outcome::UsageExceeded);
/// assert_eq!(kv.verify(&VerifyRequest::new("kv_nope")).await?.outcome, Outcome::NotFound);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Clone)]
pub struct Keyvault {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Keyvault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyvault")
            .field("store", self.inner.keys.inner())
            .field("limiter", &self.inner.limiter)
            .field("credits", &self.inner.credits)
            .field("hasher", &self.inner.hasher)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Keyvault`]. Every backend defaults to in-memory.
#[derive(Default)]
pub struct KeyvaultBuilder {
    store: Option<Arc<dyn KeyStore>>,
    limiter: Option<Arc<dyn RateLimiter>>,
    credits: Option<Arc<dyn CreditStore>>,
    audit: Option<Arc<dyn AuditLog>>,
    bus: Option<Arc<dyn ChangeBus>>,
    clock: Option<SharedClock>,
    hasher: KeyHasher,
    cache: CacheConfig,
    signals: Option<crate::ClientSignals>,
}

impl std::fmt::Debug for KeyvaultBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyvaultBuilder").finish_non_exhaustive()
    }
}

impl KeyvaultBuilder {
    /// Where keys live.
    pub fn key_store(mut self, store: Arc<dyn KeyStore>) -> Self {
        self.store = Some(store);
        self
    }
    /// The rate limiter.
    pub fn limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }
    /// Where credit balances live (usually the key store's backend).
    pub fn credits(mut self, credits: Arc<dyn CreditStore>) -> Self {
        self.credits = Some(credits);
        self
    }
    /// A backend that keeps keys, balances and the audit log together (one transaction).
    pub fn backend<B: KeyStore + CreditStore + AuditLog + 'static>(self, backend: Arc<B>) -> Self {
        self.key_store(backend.clone())
            .credits(backend.clone())
            .audit_log(backend)
    }
    /// The audit log, for refused attempts (accepted mutations are audited by the key store).
    pub fn audit_log(mut self, audit: Arc<dyn AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }
    /// Change propagation between instances.
    pub fn change_bus(mut self, bus: Arc<dyn ChangeBus>) -> Self {
        self.bus = Some(bus);
        self
    }
    /// The clock (tests use [`crate::FakeClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }
    /// The digest function (a pepper: [`KeyHasher::with_pepper`]).
    pub fn hasher(mut self, hasher: KeyHasher) -> Self {
        self.hasher = hasher;
        self
    }
    /// Cache settings.
    pub fn cache(mut self, config: CacheConfig) -> Self {
        self.cache = config;
        self
    }

    /// Where [`Keyvault::note_client`] gathers client signals (the IPs of unknown keys, the
    /// networks keys are used from); without it, nothing is gathered.
    pub fn client_signals(mut self, signals: crate::ClientSignals) -> Self {
        self.signals = Some(signals);
        self
    }

    /// Builds it. With a change bus it must run inside a Tokio runtime (a listener task
    /// evicts changed keys).
    pub fn build(self) -> Result<Keyvault, InvalidInput> {
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let (store, credits, audit) = match (self.store, self.credits) {
            (Some(s), Some(c)) => (s, c, self.audit),
            (None, None) => {
                let m = Arc::new(MemoryStore::new());
                (
                    m.clone() as Arc<dyn KeyStore>,
                    m.clone() as Arc<dyn CreditStore>,
                    self.audit.or(Some(m as Arc<dyn AuditLog>)),
                )
            }
            (Some(_), None) => {
                return Err(InvalidInput::new(
                    "credits",
                    "a key store needs a credit store beside it",
                ));
            }
            (None, Some(_)) => {
                return Err(InvalidInput::new(
                    "key_store",
                    "a credit store needs a key store beside it",
                ));
            }
        };
        let limiter = self
            .limiter
            .unwrap_or_else(|| Arc::new(MemoryRateLimiter::with_clock(clock.clone())));
        let keys = Arc::new(CachedKeyStore::new(store, self.cache));
        let listener = match &self.bus {
            Some(bus) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(InvalidInput::new(
                        "change_bus",
                        "listening for changes needs a Tokio runtime",
                    ));
                }
                Some(keys.listen(bus.as_ref()))
            }
            None => None,
        };
        Ok(Keyvault {
            inner: Arc::new(Inner {
                keys,
                limiter,
                credits,
                audit,
                bus: self.bus,
                clock,
                hasher: self.hasher,
                signals: self.signals,
                listener,
            }),
        })
    }
}

impl Keyvault {
    /// Notes a verification from `ip` as a client signal, when the keyvault gathers them
    /// ([`KeyvaultBuilder::client_signals`]): the middleware and `/v1/keys/verify` call it.
    #[inline]
    pub fn note_client(&self, v: &Verification, ip: Option<std::net::IpAddr>) {
        if let (Some(signals), Some(ip)) = (&self.inner.signals, ip) {
            let key = v.key.as_ref().map(|k| k.id);
            signals.note(key, ip, v.outcome, self.inner.clock.now());
        }
    }

    /// The aggregator client signals are gathered in, if any.
    pub fn client_signals(&self) -> Option<&crate::ClientSignals> {
        self.inner.signals.as_ref()
    }

    /// A builder.
    pub fn builder() -> KeyvaultBuilder {
        KeyvaultBuilder::default()
    }

    /// Everything in memory: for tests and single-process applications.
    pub fn in_memory() -> Self {
        Self::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the in-memory build has no failure"))
    }

    /// The clock in use.
    pub fn clock(&self) -> &dyn Clock {
        &*self.inner.clock
    }

    /// The digest function in use.
    pub fn hasher(&self) -> &KeyHasher {
        &self.inner.hasher
    }

    /// The cached key store (for its statistics, or to invalidate by hand).
    pub fn key_cache(&self) -> &CachedKeyStore<Arc<dyn KeyStore>> {
        &self.inner.keys
    }

    /// Cache hits and misses.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.keys.stats()
    }

    /// Verifies a key: one [`Outcome`] (CONTRACT §2), the key, and its limits after the check.
    /// A rejected request consumes nothing; `Err` means a backend failed.
    pub async fn verify(&self, req: &VerifyRequest<'_>) -> Result<Verification> {
        let Some(digest) = self.digest_of(req)? else {
            return Ok(Verification::not_found());
        };
        let Some(record) = self.inner.keys.lookup(&digest).await? else {
            return Ok(Verification::not_found());
        };
        let early = self.early_outcome(&record, req);
        let mut v = Verification {
            outcome: Outcome::Valid,
            key: None,
            credits_remaining: None,
            ratelimits: Vec::new(),
        };
        // A caller's request id makes a retry count once everywhere. A verification without
        // one (or with an id made for it alone) is never retried, so its limits and credits
        // need no id: a limiter or credit cache may then admit it from a lease.
        let request_id = match req.request_id {
            Some(id) if !req.unique_id => id,
            _ => "",
        };
        if let Some(code) = early {
            v.outcome = code;
            if req.report_state {
                self.peek(&record, request_id, &mut v).await?;
            }
            v.key = Some(record);
            return Ok(v);
        }
        let take = req.cost > 0;
        let limit_req = LimitRequest {
            quota_id: record.quota_id,
            limits: &record.ratelimits,
            since: &record.ratelimits_since,
            take,
            request_id,
        };
        if !record.ratelimits.is_empty() {
            let decision = self.inner.limiter.check(&limit_req).await?;
            v.ratelimits = decision.states;
            if !decision.admitted {
                v.outcome = Outcome::RateLimited;
                if let Some(c) = &record.credits {
                    v.credits_remaining =
                        Some(self.spend(&record, c, 0, request_id).await?.remaining());
                }
                v.key = Some(record);
                return Ok(v);
            }
        }
        if let Some(credits) = &record.credits {
            let spent = self.spend(&record, credits, req.cost, request_id).await;
            let undo = match &spent {
                Err(_) => true,
                Ok(d) => matches!(d, CreditDecision::Insufficient { .. }),
            };
            if undo && take && !record.ratelimits.is_empty() {
                // Reserve-and-refund: the tokens taken above go back, and the answer reports
                // the buckets as they are after it (read, not estimated from the state
                // before: an emission interval need not be a whole number of nanoseconds).
                // A refused spend is rare enough that the extra read costs nothing that
                // matters.
                self.inner.limiter.release(&limit_req).await?;
                let after = LimitRequest {
                    take: false,
                    ..limit_req
                };
                v.ratelimits = self.inner.limiter.check(&after).await?.states;
            }
            let spent = spent?;
            v.credits_remaining = Some(spent.remaining());
            if let CreditDecision::Insufficient { .. } = spent {
                v.outcome = Outcome::UsageExceeded;
            }
        }
        v.key = Some(record);
        Ok(v)
    }

    /// Verifies without waiting when nothing but the key cache is needed: a text that is not
    /// a key, or a key whose cache entry is fresh and that has neither rate limits nor credits
    /// (so no limiter or credit store is asked). The answer is the one [`verify`](Self::verify)
    /// gives. `None`: call `verify`. `now` is the caller's clock reading for the request (for
    /// the cache entry's age), read once per request by middleware that times it anyway.
    ///
    /// ```
    /// # use keyvault_core::{Keyvault, NewKey, Outcome, VerifyRequest, Actor};
    /// # use std::time::Instant;
    /// # async fn demo() -> keyvault_core::Result<()> {
    /// let kv = Keyvault::in_memory();
    /// let created = kv.create_key(NewKey::new("ci"), &Actor::library()).await?;
    /// let req = VerifyRequest::new(created.key.expose());
    /// // Not cached yet: the store must be asked.
    /// assert!(kv.verify_cached(&req, Instant::now()).is_none());
    /// assert_eq!(kv.verify(&req).await?.outcome, Outcome::Valid);
    /// let fast = kv.verify_cached(&req, Instant::now()).expect("cached now")?;
    /// assert_eq!(fast.outcome, Outcome::Valid);
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn verify_cached(
        &self,
        req: &VerifyRequest<'_>,
        now: std::time::Instant,
    ) -> Option<Result<Verification>> {
        let digest = match self.digest_of(req) {
            Ok(Some(d)) => d,
            Ok(None) => return Some(Ok(Verification::not_found())),
            Err(e) => return Some(Err(e)),
        };
        // A key with limits or credits needs its stores: `verify` then looks it up (and
        // counts the cache hit) itself.
        let needs_nothing_else = |r: Option<&KeyRecord>| {
            r.is_none_or(|r| r.ratelimits.is_empty() && r.credits.is_none())
        };
        let Some(record) = self.inner.keys.cached(&digest, now, needs_nothing_else)? else {
            return Some(Ok(Verification::not_found()));
        };
        // With nothing to take or report, `verify` decides on the record alone.
        Some(Ok(Verification {
            outcome: self.early_outcome(&record, req).unwrap_or(Outcome::Valid),
            key: Some(record),
            credits_remaining: None,
            ratelimits: Vec::new(),
        }))
    }

    /// The digest to look up, or `None` for a text that cannot be a key (`NOT_FOUND`).
    fn digest_of(&self, req: &VerifyRequest<'_>) -> Result<Option<crate::KeyDigest>> {
        let Some(parsed) = key::parse(req.key) else {
            return Ok(None);
        };
        // API tokens share the key format but are never keys.
        if parsed.prefix == TOKEN_PREFIX {
            return Ok(None);
        }
        check_credit_amount(req.cost, "cost")?;
        Ok(Some(self.inner.hasher.digest(parsed.full)))
    }

    /// The rejection decided by the record alone, before any limit is checked.
    fn early_outcome(&self, record: &KeyRecord, req: &VerifyRequest<'_>) -> Option<Outcome> {
        if !record.enabled {
            Some(Outcome::Disabled)
        } else if record
            .effective_expiry()
            // The clock is only read for keys that can expire.
            .is_some_and(|_| record.is_expired(self.inner.clock.now()))
        {
            Some(Outcome::Expired)
        } else if !record.admits_ip(req.ip) {
            Some(Outcome::Forbidden)
        } else if !record.has_scopes(req.scopes) {
            Some(Outcome::InsufficientPermissions)
        } else {
            None
        }
    }

    async fn spend(
        &self,
        record: &KeyRecord,
        credits: &crate::Credits,
        cost: u64,
        request_id: &str,
    ) -> Result<CreditDecision> {
        self.inner
            .credits
            .spend(&CreditRequest {
                quota_id: record.quota_id,
                credits,
                cost,
                request_id,
                now: self.inner.clock.now(),
            })
            .await
    }

    async fn peek(&self, record: &KeyRecord, request_id: &str, v: &mut Verification) -> Result<()> {
        if !record.ratelimits.is_empty() {
            let d = self
                .inner
                .limiter
                .check(&LimitRequest {
                    quota_id: record.quota_id,
                    limits: &record.ratelimits,
                    since: &record.ratelimits_since,
                    take: false,
                    request_id,
                })
                .await?;
            v.ratelimits = d.states;
        }
        if let Some(c) = &record.credits {
            v.credits_remaining = Some(self.spend(record, c, 0, request_id).await?.remaining());
        }
        Ok(())
    }

    /// The live state of a key's rate limits, read without taking a token (empty when the
    /// key has none): what a verification now would find, by the key's record alone.
    pub async fn limit_states(&self, record: &KeyRecord) -> Result<Vec<crate::LimitState>> {
        if record.ratelimits.is_empty() {
            return Ok(Vec::new());
        }
        let d = self
            .inner
            .limiter
            .check(&LimitRequest {
                quota_id: record.quota_id,
                limits: &record.ratelimits,
                since: &record.ratelimits_since,
                take: false,
                request_id: "",
            })
            .await?;
        Ok(d.states)
    }

    /// The live credit balance of a key (None: unlimited).
    pub async fn credits_remaining(&self, record: &KeyRecord) -> Result<Option<u64>> {
        match &record.credits {
            None => Ok(None),
            Some(c) => Ok(Some(self.spend(record, c, 0, "").await?.remaining())),
        }
    }
}
