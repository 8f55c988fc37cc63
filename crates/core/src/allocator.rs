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
//! jemalloc reads `MALLOC_CONF` at start. The image, `scripts/up` and the
//! benchmark (for Herald's processes) set `dirty_decay_ms:1000`, so that
//! freed pages go back to the system over about a second rather than
//! jemalloc's ten.
//!
//! With the feature `count-allocations` the global allocator is
//! `alloc_count`'s counting wrapper around this same allocator.

/// The allocator every allocation goes to.
#[cfg_attr(not(feature = "count-allocations"), global_allocator)]
pub(crate) static BACKEND: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
