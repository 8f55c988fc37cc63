//! herald-dispatcher: reads its configuration, then delivers webhooks until
//! SIGINT or SIGTERM. See the crate docs in `lib.rs`.

fn main() -> std::process::ExitCode {
    herald_core::service::main(
        "herald-dispatcher",
        herald_core::service::Threads::One,
        herald_dispatcher::run,
    )
}
