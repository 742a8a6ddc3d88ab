//! Memory settings of the long-running daemon: it is one per pod on every node, so its resident set
//! is the product (design: idle RSS budget 2 MiB).

/// Called first thing in the daemon, before any thread exists.
pub fn tune_daemon() {
    // One malloc arena: glibc gives each thread that allocates an arena of its own, whose touched pages
    // stay resident; the shim's threads allocate little and rarely.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Gives the heap's free pages back to the kernel (the shim went idle).
pub fn trim() {
    unsafe { libc::malloc_trim(0) };
}
