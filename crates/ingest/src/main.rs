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
    let telemetry = match herald_core::telemetry::init(&config.log, "herald-ingest") {
        Ok(telemetry) => telemetry,
        Err(problem) => {
            eprintln!("herald-ingest: configuration error: {problem}");
            return ExitCode::from(2);
        }
    };
    let shutdown = herald_core::shutdown::on_signal();
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = %err, "herald-ingest cannot start");
            return ExitCode::FAILURE;
        }
    };
    let code = match app.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "herald-ingest stopped with an error");
            ExitCode::FAILURE
        }
    };
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}
