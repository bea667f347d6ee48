//! In-memory backends: the reference semantics of every trait, for tests and for
//! single-process applications (nothing survives a restart).

mod bus;
mod limiter;
mod store;

pub use bus::MemoryChangeBus;
pub use limiter::MemoryRateLimiter;
pub use store::MemoryStore;
