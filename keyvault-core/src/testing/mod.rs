//! The backend conformance suite: every backend crate runs it, so every backend proves the
//! behaviour the in-memory reference defines.
//!
//! A backend provides a setup function that returns fresh, isolated [`Backends`] and invokes
//! [`conformance_suite!`](crate::conformance_suite) with the test attribute it needs:
//!
//! ```text
//! async fn backends() -> keyvault_core::testing::Backends { /* … */ }
//! keyvault_core::conformance_suite!(#[tokio::test(flavor = "multi_thread")], setup = backends);
//!
//! // PostgreSQL: a fresh database per test.
//! async fn pg(pool: sqlx::PgPool) -> Backends { /* … */ }
//! keyvault_core::conformance_suite!(#[sqlx::test(migrations = false)], setup = pg, args = (pool: sqlx::PgPool));
//! ```
//!
//! The account traits ([`UserStore`], [`TokenStore`], [`SessionStore`], [`SettingStore`],
//! [`LeaseStore`], [`AlertStore`](crate::AlertStore), [`NotifierStore`](crate::NotifierStore))
//! have a suite of their own, [`accounts_suite!`](crate::accounts_suite), whose setup returns
//! fresh [`Accounts`]:
//!
//! ```text
//! async fn accounts() -> keyvault_core::testing::Accounts { Accounts::of(Arc::new(store)) }
//! keyvault_core::accounts_suite!(#[tokio::test], setup = accounts);
//! ```

pub mod accounts;
pub mod cases;

use std::sync::Arc;

use crate::{
    AuditLog, ChangeBus, CreditStore, FakeClock, KeyStore, Keyvault, KeyvaultBuilder, LeaseStore,
    RateLimiter, SessionStore, SettingStore, SignalStore, TokenStore, UsageQuery, UsageSink,
    UserStore,
};

/// One isolated set of backends under test.
#[derive(Clone)]
pub struct Backends {
    /// Keys.
    pub store: Arc<dyn KeyStore>,
    /// Credit balances.
    pub credits: Arc<dyn CreditStore>,
    /// Rate limits.
    pub limiter: Arc<dyn RateLimiter>,
    /// The audit log (where key mutations land).
    pub audit: Arc<dyn AuditLog>,
    /// Usage in and statistics out, if the backend keeps usage.
    pub usage: Option<(Arc<dyn UsageSink>, Arc<dyn UsageQuery>)>,
    /// Client signals (`NOT_FOUND` counts per IP, key sightings): every durable store keeps
    /// them.
    pub signals: Arc<dyn SignalStore>,
    /// Change propagation, if the backend has it.
    pub bus: Option<Arc<dyn ChangeBus>>,
    /// A fake clock that *every* backend above honours; `None` for backends that keep their
    /// own time (Redis `TIME`). Cases that need to move time are skipped without one.
    pub clock: Option<FakeClock>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("store", &self.store)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl Backends {
    /// All in memory, on a fake clock.
    pub fn memory() -> Self {
        let clock = FakeClock::new(chrono::Utc::now());
        let store = Arc::new(crate::memory::MemoryStore::new());
        Self {
            store: store.clone(),
            credits: store.clone(),
            limiter: Arc::new(crate::memory::MemoryRateLimiter::with_clock(Arc::new(
                clock.clone(),
            ))),
            audit: store.clone(),
            signals: store.clone(),
            usage: Some((store.clone(), store)),
            bus: Some(Arc::new(crate::memory::MemoryChangeBus::new())),
            clock: Some(clock),
        }
    }

    /// A builder over these backends (each call is a separate instance with its own cache).
    pub fn builder(&self) -> KeyvaultBuilder {
        let mut b = Keyvault::builder()
            .key_store(self.store.clone())
            .credits(self.credits.clone())
            .limiter(self.limiter.clone())
            .audit_log(self.audit.clone());
        if let Some(bus) = &self.bus {
            b = b.change_bus(bus.clone());
        }
        if let Some(c) = &self.clock {
            b = b.clock(Arc::new(c.clone()));
        }
        b
    }

    /// A new instance over these backends.
    pub fn keyvault(&self) -> Keyvault {
        self.builder()
            .build()
            .unwrap_or_else(|e| panic!("conformance backends must build: {e}"))
    }
}

/// The account stores under test, and the audit log their mutations land in. Every field
/// may be the same store.
#[derive(Clone)]
pub struct Accounts {
    /// Dashboard users.
    pub users: Arc<dyn UserStore>,
    /// API tokens.
    pub tokens: Arc<dyn TokenStore>,
    /// Dashboard sessions.
    pub sessions: Arc<dyn SessionStore>,
    /// Settings.
    pub settings: Arc<dyn SettingStore>,
    /// Leases.
    pub leases: Arc<dyn LeaseStore>,
    /// Alert rules, alerts and baselines.
    pub alerts: Arc<dyn crate::AlertStore>,
    /// Notification channels and their outbox.
    pub notifiers: Arc<dyn crate::NotifierStore>,
    /// Where the account mutations' audit events land.
    pub audit: Arc<dyn AuditLog>,
    /// Whatever the stores need alive while the suite runs (a temporary directory).
    guard: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("users", &self.users)
            .finish_non_exhaustive()
    }
}

impl Accounts {
    /// Every role played by one store (what each backend offers).
    pub fn of<S>(store: Arc<S>) -> Self
    where
        S: UserStore
            + TokenStore
            + SessionStore
            + SettingStore
            + LeaseStore
            + crate::AlertStore
            + crate::NotifierStore
            + AuditLog
            + 'static,
    {
        Self {
            users: store.clone(),
            tokens: store.clone(),
            sessions: store.clone(),
            settings: store.clone(),
            leases: store.clone(),
            alerts: store.clone(),
            notifiers: store.clone(),
            audit: store,
            guard: None,
        }
    }

    /// Keeps `guard` (a temporary directory holding the database) alive as long as these
    /// stores.
    pub fn keeping(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self.guard = Some(Arc::new(guard));
        self
    }

    /// A fresh in-memory store.
    pub fn memory() -> Self {
        Self::of(Arc::new(crate::memory::MemoryStore::new()))
    }
}

/// Runs every conformance case as a test. See the [module docs](crate::testing).
#[macro_export]
macro_rules! conformance_suite {
    (#[$attr:meta] $(#[$more:meta])*, setup = $setup:path $(, args = ($($arg:ident : $ty:ty),* $(,)?))? $(,)?) => {
        $crate::__conformance_cases! {
            cases [#[$attr] $(#[$more])*] $setup [$($($arg : $ty),*)?]
            verifies_created_keys_and_rejects_unknown_ones,
            disabled_keys_answer_disabled_until_enabled,
            expired_keys_answer_expired,
            ip_allowlists_are_enforced,
            scopes_are_enforced,
            checks_run_in_contract_order,
            credits_are_exact_under_concurrency,
            costs_are_spent_and_cost_zero_is_a_pure_check,
            rejected_requests_consume_nothing,
            rate_limits_are_exact_under_concurrency,
            rate_limited_answers_carry_retry_after,
            rotation_shares_credits_and_buckets,
            rotation_refuses_bad_targets,
            rotation_grace_ends_in_expired,
            updates_replace_fields_and_reset_credits,
            changed_rate_limits_start_full,
            deleted_keys_are_not_found,
            batch_reports_each_id,
            listing_pages_newest_first_with_filters,
            rotate_due_hands_out_each_key_once,
            cleanup_removes_long_expired_keys,
            watched_keys_hold_credits_or_expire_by_the_horizon,
            mutations_are_audited_in_a_valid_chain,
            usage_is_idempotent_and_summarised,
            refills_set_the_balance_once_per_interval,
            a_stale_refill_never_raises_a_changed_balance,
            rate_limit_math_on_a_fake_clock,
            a_disable_reaches_another_instance_within_a_second,
            usage_windows_count_by_key_and_by_second,
            client_signals_roll_up_and_are_read_by_window,
        }
    };
}

/// Runs every account conformance case ([`accounts`]) as a test, with a setup that returns
/// fresh [`Accounts`]. See the [module docs](crate::testing).
#[macro_export]
macro_rules! accounts_suite {
    (#[$attr:meta] $(#[$more:meta])*, setup = $setup:path $(, args = ($($arg:ident : $ty:ty),* $(,)?))? $(,)?) => {
        $crate::__conformance_cases! {
            accounts [#[$attr] $(#[$more])*] $setup [$($($arg : $ty),*)?]
            users_are_created_once_and_listed_by_name,
            updates_replace_the_mutable_fields_only,
            the_last_enabled_admin_is_neither_disabled_nor_demoted,
            credential_changes_end_that_users_sessions_only,
            tokens_are_unique_and_found_by_id_and_digest,
            revoking_twice_writes_one_record,
            token_listing_pages_newest_first_without_revoked,
            sessions_are_found_ended_and_purged,
            sessions_need_an_enabled_user,
            the_first_setting_written_wins,
            leases_are_exclusive_renewable_and_lapse,
            account_mutations_are_audited_in_a_valid_chain,
            alerts_keep_one_open_alert_per_rule_and_subject,
            alert_rules_are_replaced_and_deleted_with_their_alerts_resolved,
            notifiers_are_created_listed_and_deleted_with_their_deliveries,
            the_outbox_hands_out_due_deliveries_in_order_and_keeps_their_attempts,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($module:ident $attrs:tt $setup:path [$($args:tt)*] $(,)?) => {};
    ($module:ident $attrs:tt $setup:path [$($args:tt)*] $case:ident $(, $rest:ident)* $(,)?) => {
        $crate::__conformance_case!($module $attrs $setup [$($args)*] $case);
        $crate::__conformance_cases!($module $attrs $setup [$($args)*] $($rest),*);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_case {
    ($module:ident [$($attr:tt)*] $setup:path [$($arg:ident : $ty:ty),*] $case:ident) => {
        $($attr)*
        async fn $case($($arg: $ty),*) {
            $crate::testing::$module::$case($setup($($arg),*).await).await;
        }
    };
}
