//! Fail modes: what a component answers when Redis is unreachable or past its time budget.

use std::sync::atomic::{AtomicU64, Ordering};

pub use keyvault_core::FailMode;

/// How often a component met an unavailable Redis, and what it answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FallbackStats {
    /// Calls that found Redis unreachable or past the time budget.
    pub unavailable: u64,
    /// Limits (or spends) answered with an error (`closed`).
    pub closed: u64,
    /// Limits (or spends) admitted without counting (`open`).
    pub open: u64,
    /// Limits (or spends) counted in process or on the durable store (`local`).
    pub local: u64,
}

/// The counters behind [`FallbackStats`], mirrored to the `metrics` crate as
/// `keyvault_redis_unavailable_total{component}` and
/// `keyvault_redis_fallback_total{component, mode}`.
#[derive(Debug, Default)]
pub(crate) struct FailCounters {
    component: &'static str,
    unavailable: AtomicU64,
    closed: AtomicU64,
    open: AtomicU64,
    local: AtomicU64,
}

impl FailCounters {
    pub(crate) fn new(component: &'static str) -> Self {
        Self {
            component,
            ..Self::default()
        }
    }

    pub(crate) fn unavailable(&self, error: &crate::Error) {
        self.unavailable.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("keyvault_redis_unavailable_total", "component" => self.component)
            .increment(1);
        tracing::warn!(component = self.component, error = %error, "redis unavailable; applying the fail mode");
    }

    pub(crate) fn fallback(&self, mode: FailMode) {
        let c = match mode {
            FailMode::Closed => &self.closed,
            FailMode::Open => &self.open,
            FailMode::Local => &self.local,
        };
        c.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("keyvault_redis_fallback_total", "component" => self.component, "mode" => mode.as_str())
            .increment(1);
    }

    pub(crate) fn snapshot(&self) -> FallbackStats {
        FallbackStats {
            unavailable: self.unavailable.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            local: self.local.load(Ordering::Relaxed),
        }
    }
}
