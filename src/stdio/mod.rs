//! A process's stdio: shim-owned pipes between the container and containerd's fifos (the Go model).
//! The container only ever sees the pipes. The shim holds a reader on each output fifo (no SIGPIPE when
//! the client or containerd goes away) and a writer on the stdin fifo (reattach; CloseIO drops it).

pub mod relay;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use relay::{Relay, Stream};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The container's ends, handed to runc and closed once runc has returned.
pub struct ChildStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl ChildStdio {
    pub fn into_stdio(self) -> [Stdio; 3] {
        let conv = |f: Option<OwnedFd>| f.map(Stdio::from).unwrap_or_else(Stdio::null);
        [conv(self.stdin), conv(self.stdout), conv(self.stderr)]
    }
}

/// The shim's ends, relayed once runc has created the process.
pub struct PendingIo {
    stdin: Option<Stream>,
    outputs: Vec<Stream>,
    stdin_writer: Option<OwnedFd>,
}

/// Counts output streams still copying; Delete waits for zero.
#[derive(Default)]
struct Drain {
    left: Mutex<usize>,
    cv: Condvar,
}

pub struct ProcessIo {
    relay: Relay,
    stdin_writer: Mutex<Option<OwnedFd>>,
    stdin_stream: Option<u64>,
    outputs: Vec<u64>,
    drain: Arc<Drain>,
}

fn open(path: &Path, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

fn chown(fd: &OwnedFd, uid: u32, gid: u32) -> Result<()> {
    if uid == 0 && gid == 0 {
        return Ok(());
    }
    if unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) } != 0 {
        return Err(Error::Other(format!(
            "chown of io pipe to {uid}:{gid}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

enum Target<'a> {
    Fifo(&'a Path),
    File(&'a Path),
}

fn target(uri: &str) -> Result<Target<'_>> {
    match uri.split_once("://") {
        None => Ok(Target::Fifo(Path::new(uri))),
        Some(("fifo", p)) => Ok(Target::Fifo(Path::new(p))),
        Some(("file", p)) => Ok(Target::File(Path::new(p))),
        Some((scheme, _)) => Err(Error::Unimplemented(format!(
            "io uri scheme {scheme:?} of {uri:?} is not supported"
        ))),
    }
}

/// Opens the destination of one output stream: (fd written by the relay, fd held open alongside).
fn open_output(uri: &str) -> Result<(OwnedFd, Option<OwnedFd>)> {
    match target(uri)? {
        Target::Fifo(p) => {
            // Reader first: it never blocks, and with it present the writer opens without blocking.
            let held = open(p, libc::O_RDONLY | libc::O_NONBLOCK, 0)
                .map_err(|e| Error::InvalidArgument(format!("opening output fifo {}: {e}", p.display())))?;
            let w = open(p, libc::O_WRONLY | libc::O_NONBLOCK, 0)
                .map_err(|e| Error::InvalidArgument(format!("opening output fifo {}: {e}", p.display())))?;
            Ok((w, Some(held)))
        }
        Target::File(p) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::InvalidArgument(format!("creating {}: {e}", dir.display())))?;
            }
            let f = open(p, libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT, 0o644)
                .map_err(|e| Error::InvalidArgument(format!("opening log file {}: {e}", p.display())))?;
            Ok((f, None))
        }
    }
}

/// Opens the client side and makes the pipes. Nothing runs yet; dropping the results closes everything.
pub fn prepare(paths: &StdioPaths, uid: u32, gid: u32) -> Result<(ChildStdio, PendingIo)> {
    if paths.terminal {
        return Err(Error::Unimplemented(
            "terminal (TTY) io is not supported by this shim yet".into(),
        ));
    }
    let mut child = ChildStdio {
        stdin: None,
        stdout: None,
        stderr: None,
    };
    let mut pending = PendingIo {
        stdin: None,
        outputs: Vec::new(),
        stdin_writer: None,
    };
    if !paths.stdin.is_empty() {
        let p = match target(&paths.stdin)? {
            Target::Fifo(p) => p,
            Target::File(_) => {
                return Err(Error::InvalidArgument(format!(
                    "stdin {:?} must be a fifo",
                    paths.stdin
                )))
            }
        };
        let err = |e: std::io::Error| Error::InvalidArgument(format!("opening stdin fifo {}: {e}", p.display()));
        let fifo_r = open(p, libc::O_RDONLY | libc::O_NONBLOCK, 0).map_err(err)?;
        // Held so the relay never sees EOF when a client detaches; CloseIO drops it.
        let fifo_w = open(p, libc::O_WRONLY | libc::O_NONBLOCK, 0).map_err(err)?;
        let (r, w) = pipe()?;
        chown(&r, uid, gid)?;
        child.stdin = Some(r);
        pending.stdin = Some(Stream {
            src: fifo_r,
            dst: w,
            hold: None,
            on_done: None,
        });
        pending.stdin_writer = Some(fifo_w);
    }
    for (uri, slot) in [(&paths.stdout, &mut child.stdout), (&paths.stderr, &mut child.stderr)] {
        if uri.is_empty() {
            continue;
        }
        let (dst, hold) = open_output(uri)?;
        let (r, w) = pipe()?;
        chown(&w, uid, gid)?;
        *slot = Some(w);
        pending.outputs.push(Stream {
            src: r,
            dst,
            hold,
            on_done: None,
        });
    }
    Ok((child, pending))
}

impl PendingIo {
    pub fn start(self, relay: &Relay) -> ProcessIo {
        let drain = Arc::new(Drain::default());
        *drain.left.lock().unwrap() = self.outputs.len();
        let outputs = self
            .outputs
            .into_iter()
            .map(|mut s| {
                let d = drain.clone();
                s.on_done = Some(Box::new(move || {
                    let mut left = d.left.lock().unwrap_or_else(|e| e.into_inner());
                    *left = left.saturating_sub(1);
                    d.cv.notify_all();
                }));
                relay.add(s)
            })
            .collect();
        ProcessIo {
            relay: relay.clone(),
            stdin_writer: Mutex::new(self.stdin_writer),
            stdin_stream: self.stdin.map(|s| relay.add(s)),
            outputs,
            drain,
        }
    }
}

impl ProcessIo {
    /// CloseIO: drop the shim's writer on the stdin fifo; the container sees EOF once the client's
    /// writer is closed too.
    pub fn close_stdin(&self) {
        self.stdin_writer.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Waits until every output stream reached EOF and was flushed to its destination.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut left = self.drain.left.lock().unwrap_or_else(|e| e.into_inner());
        while *left > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            left = self
                .drain
                .cv
                .wait_timeout(left, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Closes everything still open (after the drain, or when it timed out).
    pub fn close(&self) {
        self.close_stdin();
        if let Some(id) = self.stdin_stream {
            self.relay.cancel(id);
        }
        for id in &self.outputs {
            self.relay.cancel(*id);
        }
    }
}
