//! Property tests: keyvault-core's parsers, limiters and credit balances against reference
//! models written here from the contract's words (CONTRACT §1 and §3), not from the code.
//!
//! Each property states its case count. Seeds are proptest's own (a new exploration each
//! run); a failure prints the minimal case, and `PROPTEST_RNG_SEED=<n>` replays a run. The
//! table of properties is in `docs/reliability.md`.

mod credits;
mod key_format;
mod limiter;
mod model;
mod parsers;
mod patch;
