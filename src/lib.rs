//! keyvault facade (filled below).
pub use keyvault_core::*;
