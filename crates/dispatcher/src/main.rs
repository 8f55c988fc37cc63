//! herald-dispatcher: reads its configuration, then delivers webhooks until
//! SIGINT or SIGTERM. See the crate docs in `lib.rs`.

use std::process::ExitCode;

use herald_core::config::Env;
use herald_dispatcher::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env(&Env::from_process()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("herald-dispatcher: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match herald_core::telemetry::init(&config.log, "herald-dispatcher") {
        Ok(telemetry) => telemetry,
        Err(problem) => {
            eprintln!("herald-dispatcher: configuration error: {problem}");
            return ExitCode::from(2);
        }
    };
    let shutdown = herald_core::shutdown::on_signal();
    let code = match herald_dispatcher::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "herald-dispatcher stopped with an error");
            ExitCode::FAILURE
        }
    };
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}
