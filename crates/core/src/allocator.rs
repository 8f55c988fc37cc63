//! The heap allocator of every process that links this crate: Herald's
//! three services, the benchmark and the tests all allocate through
//! jemalloc rather than glibc's malloc, and so does the C code linked into
//! them (librdkafka): the build replaces `malloc` and `free` themselves
//! (tikv-jemallocator's `unprefixed_malloc_on_supported_platforms`).
//!
//! Why: Herald's hot paths allocate on one thread and free on another. The
//! dispatcher's poll thread copies each record out of librdkafka and spawns
//! its task, and its worker frees both; librdkafka allocates a produced
//! record on the caller's thread and frees it on its own once the broker
//! acknowledged it. glibc serves that with locked arenas and consolidation
//! (a profile put 14 % of the dispatcher in its allocator and 6 % in the
//! futex behind its locks); jemalloc's thread caches take such frees
//! without that. The README's "Cost per webhook" has the runs; in short,
//! Herald's CPU per webhook at fan-out 10 fell from about 35 to 27 µs in
//! the benchmark's short phases and from 31.9 to 26.8 µs over 200,000
//! deliveries, with every process still inside its 64 MiB.
//!
//! Herald's own options for it are compiled in ([`OPTIONS`]); jemalloc
//! reads `MALLOC_CONF` after them, so an option named there wins.
//!
//! With the feature `count-allocations` the global allocator is
//! `alloc_count`'s counting wrapper around this same allocator.

use std::ffi::{CStr, c_char};

/// The allocator every allocation goes to.
#[cfg_attr(not(feature = "count-allocations"), global_allocator)]
pub(crate) static BACKEND: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options in every Herald process. `dirty_decay_ms:1000`:
/// freed pages go back to the system over about a second rather than
/// jemalloc's ten, which kept a dispatcher under a long backlog at 57 MiB
/// instead of 63, at a CPU cost within the runs' spread (one run each).
pub const OPTIONS: &CStr = c"dirty_decay_ms:1000";

/// jemalloc's `const char *malloc_conf`, the options compiled into a
/// program (a weak symbol of jemalloc's, which this one replaces). A
/// reference to the first character is the C string's pointer.
///
/// SAFETY (of the export): nothing else in the program defines
/// `malloc_conf` but jemalloc's own weak default; the value is a valid,
/// NUL-terminated, immutable string for the whole run.
#[allow(unsafe_code)] // Exporting a symbol by name is `unsafe` to declare.
#[unsafe(export_name = "malloc_conf")]
static MALLOC_CONF: Option<&c_char> = Some(first_char(OPTIONS));

#[allow(unsafe_code)]
const fn first_char(options: &'static CStr) -> &'static c_char {
    // SAFETY: a `CStr` is never empty (it holds its NUL at least), so its
    // pointer names a character that lives as long as the string.
    unsafe { &*options.as_ptr() }
}

#[cfg(test)]
mod tests {
    /// Runs this test binary again, asking jemalloc to print its statistics
    /// (its options among them) at exit.
    fn jemalloc_statistics(malloc_conf: &str) -> String {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "allocator::tests::nothing", "--test-threads=1"])
            .env("MALLOC_CONF", malloc_conf)
            .output()
            .expect("run the test binary again");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// What [`jemalloc_statistics`] runs.
    #[test]
    fn nothing() {}

    #[test]
    fn herald_options_hold_and_malloc_conf_adds_to_them() {
        let stats = jemalloc_statistics("stats_print:true");
        assert!(stats.contains("Begin jemalloc statistics"), "{stats}");
        assert!(
            stats.contains("opt.dirty_decay_ms: 1000"),
            "Herald's compiled-in decay: {stats}"
        );
        let stats = jemalloc_statistics("stats_print:true,dirty_decay_ms:2500");
        assert!(
            stats.contains("opt.dirty_decay_ms: 2500"),
            "MALLOC_CONF overrides it: {stats}"
        );
    }
}
