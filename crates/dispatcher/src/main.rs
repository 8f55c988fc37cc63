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
    herald_core::telemetry::init_logging(&config.log);
    let shutdown = herald_core::shutdown::on_signal();
    match herald_dispatcher::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "herald-dispatcher stopped with an error");
            ExitCode::FAILURE
        }
    }
}
