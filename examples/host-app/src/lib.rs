//! The example host application (CONTRACT §5): a small axum API protected by the keyvault
//! layer, showing how an application embeds keyvault.
//!
//! | route | provider label | cost |
//! |---|---|---|
//! | `GET /v1/hello` | `demo` | 1 |
//! | `POST /v1/chat` | `openai` | 1 |
//! | `POST /v1/embed` | `anthropic` | 1 |
//! | `GET /healthz` | (unprotected) | |
//! | `GET /metrics` | (loopback callers only) | |

mod backend;
mod config;
mod error;
mod metrics;
mod routes;
mod serve;

pub use backend::{Backends, connect};
pub use config::Config;
pub use error::Error;
pub use metrics::metrics_router;
pub use routes::router;
pub use serve::{run, run_until, shutdown_signal};
