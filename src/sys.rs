//! The raw system calls that neither std nor nix offers in the form the shim needs, each behind a
//! safe function with its one `// SAFETY:` argument.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// kill(2) with any signal number, real-time ones included (nix's `Signal` refuses those).
pub(crate) fn kill(pid: u32, signal: i32) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| Errno::ESRCH)?;
    if pid <= 0 {
        // 0 and negative pids name process groups: never what a caller of this means.
        return Err(Errno::ESRCH);
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    Errno::result(rc).map(drop)
}

/// _exit(2): ends the process at once, without atexit handlers or flushing stdio. The only way out of
/// a child that shares or copied a multithreaded parent's memory (nix has no `_exit`).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe, takes an integer and never returns.
    unsafe { libc::_exit(code) }
}

/// Bytes waiting to be read in a pipe, socket or terminal (FIONREAD).
pub(crate) fn fionread(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer, which points to `n`, alive for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    Errno::result(rc)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// TIOCSWINSZ: sets a terminal's size (columns, rows); the foreground process group gets SIGWINCH.
pub(crate) fn set_winsize(tty: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points to `ws`, alive for the call.
    let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    Errno::result(rc)?;
    Ok(())
}

/// TIOCGWINSZ: a terminal's size (columns, rows).
#[cfg(test)]
pub(crate) fn winsize(tty: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize to the pointer, which points to `ws`, alive for the call.
    let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    Errno::result(rc)?;
    Ok((ws.ws_col, ws.ws_row))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn fionread_counts_what_waits_in_a_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        assert_eq!(fionread(r.as_fd()).unwrap(), 0);
        std::fs::File::from(w).write_all(b"hello").unwrap();
        assert_eq!(fionread(r.as_fd()).unwrap(), 5);
    }

    #[test]
    fn winsize_reaches_the_slave() {
        let pty = nix::pty::openpty(None, None).unwrap();
        set_winsize(pty.master.as_fd(), 34, 12).unwrap();
        assert_eq!(winsize(pty.slave.as_fd()).unwrap(), (34, 12));
    }

    #[test]
    fn kill_refuses_process_groups() {
        assert_eq!(kill(0, 0), Err(Errno::ESRCH));
        assert_eq!(kill(u32::MAX, 0), Err(Errno::ESRCH));
        assert_eq!(kill(std::process::id(), 0), Ok(()));
    }
}
