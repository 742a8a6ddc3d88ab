//! Memory settings of the long-running daemon: it is one per pod on every node, so its resident set
//! is the product (design: idle RSS budget 2 MiB).

/// Called first thing in the daemon, before any thread exists.
pub fn tune_daemon() {
    // One malloc arena: glibc gives each thread that allocates an arena of its own, whose touched pages
    // stay resident; the shim's threads allocate little and rarely.
    // SAFETY: mallopt takes two integers; called before any other thread exists (see above).
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Gives the heap's free pages back to the kernel (the shim went idle).
pub(crate) fn trim() {
    // SAFETY: malloc_trim takes an integer and takes malloc's own locks; any thread may call it.
    unsafe { libc::malloc_trim(0) };
}
