//! herald-ingest: reads its configuration, then serves the HTTP API until
//! SIGINT or SIGTERM. See the crate docs in `lib.rs`.

use std::process::ExitCode;

use herald_core::config::Env;
use herald_ingest::{Application, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env(&Env::from_process()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("herald-ingest: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    herald_core::telemetry::init_logging(&config.log);
    let shutdown = herald_core::shutdown::on_signal();
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = %err, "herald-ingest cannot start");
            return ExitCode::FAILURE;
        }
    };
    match app.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "herald-ingest stopped with an error");
            ExitCode::FAILURE
        }
    }
}
