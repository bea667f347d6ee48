//! `embedded-admin`: serves the host router of this example on `KEYVAULT_BIND` (default
//! `127.0.0.1:8082`), with the admin under `/kv`. It reads `DATABASE_URL`, `REDIS_URL`,
//! `KEYVAULT_PEPPER` and the other settings of the `keyvault` server from the environment.

use std::{io::Write, net::SocketAddr, process::ExitCode};

use keyvault_admin::{Admin, App, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .try_init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {}", e.cli_line());
            ExitCode::FAILURE
        }
    }
}

async fn run() -> keyvault_admin::Result<()> {
    let app = App::open(Config::from_env()?).await?;
    let admin = Admin::new(app);
    if let Some(recorder) = admin.metrics_recorder() {
        let _ = metrics::set_global_recorder(recorder);
    }
    let bind = std::env::var("KEYVAULT_BIND").unwrap_or_else(|_| "127.0.0.1:8082".into());
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|e| keyvault_admin::Error::io(format!("binding {bind}"), e))?;
    let service =
        embedded_admin::router(&admin).into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, service)
        .with_graceful_shutdown(keyvault_admin::shutdown_signal())
        .await
        .map_err(|e| keyvault_admin::Error::io("serving", e));
    admin.shutdown().await;
    served
}
