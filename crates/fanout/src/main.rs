//! herald-fanout: reads its configuration, then fans events out until
//! SIGINT or SIGTERM. See the crate docs in `lib.rs`.

use std::process::ExitCode;

use herald_core::config::Env;
use herald_fanout::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env(&Env::from_process()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("herald-fanout: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match herald_core::telemetry::init(&config.log, "herald-fanout") {
        Ok(telemetry) => telemetry,
        Err(problem) => {
            eprintln!("herald-fanout: configuration error: {problem}");
            return ExitCode::from(2);
        }
    };
    let shutdown = herald_core::shutdown::on_signal();
    let code = match herald_fanout::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "herald-fanout stopped with an error");
            ExitCode::FAILURE
        }
    };
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}
