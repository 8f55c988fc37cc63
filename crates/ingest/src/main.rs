//! herald-ingest: reads its configuration, then serves the HTTP API until
//! SIGINT or SIGTERM. See the crate docs in `lib.rs`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    herald_core::service::main("herald-ingest", herald_ingest::run).await
}
