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

pub mod cases;

use std::sync::Arc;

use crate::{
    AuditLog, ChangeBus, CreditStore, FakeClock, KeyStore, Keyvault, KeyvaultBuilder, RateLimiter,
    UsageQuery, UsageSink,
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

/// Runs every conformance case as a test. See the [module docs](crate::testing).
#[macro_export]
macro_rules! conformance_suite {
    (#[$attr:meta] $(#[$more:meta])*, setup = $setup:path $(, args = ($($arg:ident : $ty:ty),* $(,)?))? $(,)?) => {
        $crate::__conformance_cases! {
            [#[$attr] $(#[$more])*] $setup [$($($arg : $ty),*)?]
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
            mutations_are_audited_in_a_valid_chain,
            usage_is_idempotent_and_summarised,
            refills_set_the_balance_once_per_interval,
            rate_limit_math_on_a_fake_clock,
            a_disable_reaches_another_instance_within_a_second,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($attrs:tt $setup:path [$($args:tt)*] $(,)?) => {};
    ($attrs:tt $setup:path [$($args:tt)*] $case:ident $(, $rest:ident)* $(,)?) => {
        $crate::__conformance_case!($attrs $setup [$($args)*] $case);
        $crate::__conformance_cases!($attrs $setup [$($args)*] $($rest),*);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_case {
    ([$($attr:tt)*] $setup:path [$($arg:ident : $ty:ty),*] $case:ident) => {
        $($attr)*
        async fn $case($($arg: $ty),*) {
            $crate::testing::cases::$case($setup($($arg),*).await).await;
        }
    };
}
