//! herald-dispatcher: reads its configuration, then delivers webhooks until
//! SIGINT or SIGTERM. See the crate docs in `lib.rs`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    herald_core::service::main("herald-dispatcher", herald_dispatcher::run).await
}
