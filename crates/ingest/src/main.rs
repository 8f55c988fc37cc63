//! herald-ingest: reads its configuration, then serves the HTTP API until
//! SIGINT or SIGTERM. See the crate docs in `lib.rs`.

fn main() -> std::process::ExitCode {
    herald_core::service::main(
        "herald-ingest",
        herald_core::service::Threads::PerCore,
        herald_ingest::run,
    )
}
