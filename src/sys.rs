//! The raw system calls that neither std nor nix offers in the form the shim needs, each behind a
//! safe function with its one `// SAFETY:` argument.

use nix::errno::Errno;

/// kill(2) with any signal number, real-time ones included (nix's `Signal` refuses those).
pub fn kill(pid: u32, signal: i32) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| Errno::ESRCH)?;
    if pid <= 0 {
        // 0 and negative pids name process groups: never what a caller of this means.
        return Err(Errno::ESRCH);
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    Errno::result(rc).map(drop)
}
