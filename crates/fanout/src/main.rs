//! herald-fanout: reads its configuration, then fans events out until
//! SIGINT or SIGTERM. See the crate docs in `lib.rs`.

fn main() -> std::process::ExitCode {
    herald_core::service::main(
        "herald-fanout",
        herald_core::service::Threads::One,
        herald_fanout::run,
    )
}
