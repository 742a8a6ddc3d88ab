//! The console socket: runc creates the pty inside the container and sends its master over this unix
//! socket (SCM_RIGHTS, one fd). The shim receives it after runc returned and is its only owner.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::error::{Error, Result};

pub struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket> {
        let base = std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into());
        let dir = nix::unistd::mkdtemp(&Path::new(&base).join("pty.XXXXXX"))
            .map_err(|e| Error::Other(format!("creating the console socket directory in {base}: {e}")))?;
        let path = dir.join("pty.sock");
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Error::Other(format!("listening on {}: {e}", path.display())));
            }
        };
        Ok(ConsoleSocket { dir, path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the master runc sent. runc has exited by now, so its connection waits in the backlog:
    /// nothing there means runc never sent one.
    pub fn receive_master(&self) -> Result<OwnedFd> {
        self.listener.set_nonblocking(true)?;
        let (conn, _) = self
            .listener
            .accept()
            .map_err(|e| Error::Other(format!("runc did not send the console master: {e}")))?;
        conn.set_nonblocking(false)?;
        let mut name = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| Error::Other(format!("receiving the console master: {e}")))?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for c in msg
            .cmsgs()
            .map_err(|e| Error::Other(format!("reading the console message: {e}")))?
        {
            if let ControlMessageOwned::ScmRights(list) = c {
                // Own every fd received, so extra ones are closed, not leaked.
                // SAFETY: the kernel installed these fds in our table for this message; nothing
                // else knows them, so each gets exactly one owner.
                fds.extend(list.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if fds.len() != 1 {
            return Err(Error::Other(format!(
                "console socket: expected one fd, got {}",
                fds.len()
            )));
        }
        let master = fds.pop().expect("one fd");
        if !nix::unistd::isatty(master.as_raw_fd()).unwrap_or(false) {
            return Err(Error::Other("console socket: the fd received is not a terminal".into()));
        }
        Ok(master)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
