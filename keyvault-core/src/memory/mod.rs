//! In-memory backends: the reference semantics of every trait, for tests and for
//! single-process applications (nothing survives a restart). A long-running process records
//! usage into [`MemoryUsage`], whose size does not grow with traffic.

mod accounts;
mod bus;
mod limiter;
mod signals;
mod store;
mod usage;

pub use bus::MemoryChangeBus;
pub use limiter::MemoryRateLimiter;
pub use store::MemoryStore;
pub use usage::{DEFAULT_DEDUP_WINDOW, MemoryUsage};
