//! `host-app`: serves the example API until SIGTERM or SIGINT, then flushes usage.

use std::process::ExitCode;

use clap::Parser;
use host_app::{Config, Error, run};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // `.env` first; it never overrides the real environment, which flags override in turn.
    let _ = dotenvy::dotenv();
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(&Error::Io {
                context: "starting the runtime".into(),
                source: e,
            });
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

#[allow(clippy::print_stderr)]
fn fail(e: &Error) -> ExitCode {
    eprintln!("host-app: {e}");
    ExitCode::FAILURE
}
