//! A process's stdio: shim-owned pipes between the container and containerd's fifos (the Go model).
//! The container only ever sees the pipes. The shim holds a reader on each output fifo (no SIGPIPE when
//! the client or containerd goes away) and a writer on the stdin fifo (reattach; CloseIO drops it).
//!
//! The held readers stay open until Delete, well past the end of the output: a fifo keeps its buffered
//! bytes only while one of its ends is open, so a client that opens its reader late (ctr does, from a
//! goroutine) still finds the last output there, followed by EOF once the relay closed its writer.
//!
//! Output streams (pipe or terminal to fifo, and to a `binary://` logger) buffer while their
//! destination does not read, within the container's `backlog::Settings` and the shim's pool.

pub mod backlog;
mod console;
pub mod logger;
pub mod relay;

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use backlog::Buffering;
use logger::Logger;
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

/// The shim's ends, relayed once runc has created the process.
pub struct PendingIo {
    stdin: Option<Stream>,
    outputs: Vec<Stream>,
    stdin_writer: Option<OwnedFd>,
    /// The shim's readers on the output fifos (see the module doc).
    held_readers: Vec<OwnedFd>,
    console: Option<PendingConsole>,
    logger: Option<Logger>,
    /// How the output streams buffer (None: they do not).
    buffering: Option<(String, backlog::Settings)>,
}

/// Who the output belongs to, for a logging binary's environment and the shim's log.
#[derive(Clone, Copy)]
pub struct LogIds<'a> {
    pub container_id: &'a str,
    pub namespace: &'a str,
    /// An exec's id (None for the init process).
    pub exec_id: Option<&'a str>,
}

impl PendingIo {
    /// The buffering of one output stream (`which`: stdout, stderr, tty).
    fn buffer(&self, which: &str) -> Option<Buffering> {
        self.buffering.as_ref().map(|(name, settings)| Buffering {
            name: format!("{name} {which}"),
            settings: *settings,
            pool: backlog::shim_pool().clone(),
        })
    }
}

/// A terminal: runc sends the pty master over `socket`; the fifos are relayed to and from it.
struct PendingConsole {
    socket: console::ConsoleSocket,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
}

/// TIOCSWINSZ on a terminal.
fn set_winsize(tty: &OwnedFd, width: u32, height: u32) -> Result<()> {
    crate::sys::set_winsize(tty.as_fd(), width as u16, height as u16)
        .map_err(|e| Error::Other(format!("resizing the terminal: {e}")))
}

/// Counts output streams still copying; Delete waits for zero.
#[derive(Default)]
struct Drain {
    left: Mutex<usize>,
    cv: Condvar,
}

impl Drain {
    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        while *left > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            left = self
                .cv
                .wait_timeout(left, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Waits for a process's output to drain without holding the process's IO.
pub struct DrainWaiter {
    drain: Arc<Drain>,
    /// Bytes the relay moved for the process's output streams.
    moved: Arc<AtomicU64>,
    /// Our readers on the output fifos (dups), to see what the client has not read yet.
    fifos: Vec<OwnedFd>,
}

/// How a [`DrainWaiter::wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The streams ended and the client read everything.
    Yes,
    /// Nothing moved for `DRAIN_STALL`: the client is not reading, or a process that outlived this
    /// one holds the pipe open without writing.
    Stalled,
    TimedOut,
}

/// A drain that moves nothing for this long is given up, so that exits of processes whose client is
/// not reading (containerd down, say) do not each cost the whole bound, one after another.
const DRAIN_STALL: Duration = Duration::from_millis(100);

impl DrainWaiter {
    /// Waits until every output stream reached EOF and was flushed, and the client has read what is
    /// in the fifos, at most `timeout`, and only while something moves.
    pub fn wait(&self, timeout: Duration) -> Drained {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut last = (self.unread(), self.moved.load(Ordering::Relaxed));
        let mut last_change = start;
        loop {
            // Nothing tells when a fifo becomes empty: look every few milliseconds.
            let left = deadline.saturating_duration_since(Instant::now());
            let streams_done = self.drain.wait(left.min(Duration::from_millis(5)));
            let unread = self.unread();
            if streams_done && unread == 0 {
                return Drained::Yes;
            }
            let now = Instant::now();
            // Progress is the relay moving bytes or the client reading them (a full fifo that the
            // client reads and the relay refills looks the same from its FIONREAD alone).
            let seen = (unread, self.moved.load(Ordering::Relaxed));
            if seen != last {
                (last, last_change) = (seen, now);
            }
            if now >= deadline {
                return Drained::TimedOut;
            }
            if now.duration_since(last_change) >= DRAIN_STALL {
                return Drained::Stalled;
            }
            if streams_done {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Bytes waiting in the fifos; a fifo whose count is unknown counts 0.
    fn unread(&self) -> usize {
        self.fifos
            .iter()
            .map(|f| crate::sys::fionread(f.as_fd()).unwrap_or(0))
            .sum()
    }
}

pub struct ProcessIo {
    relay: Relay,
    stdin_writer: Mutex<Option<OwnedFd>>,
    held_readers: Mutex<Vec<OwnedFd>>,
    stdin_stream: Option<u64>,
    outputs: Vec<u64>,
    drain: Arc<Drain>,
    /// Bytes the relay moved for the output streams.
    moved: Arc<AtomicU64>,
    /// The pty master (one owner; the relay streams hold dups). Taken when stdin ends: hangs up the tty.
    console: Arc<Mutex<Option<OwnedFd>>>,
    console_out: Option<u64>,
    logger: Option<Logger>,
}

/// open(2) with `flags` as given (std adds O_CLOEXEC); `mode` applies when O_CREAT creates the file.
fn open(path: &Path, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
    let access = flags & libc::O_ACCMODE;
    let f = OpenOptions::new()
        .read(access == libc::O_RDONLY || access == libc::O_RDWR)
        .write(access == libc::O_WRONLY || access == libc::O_RDWR)
        // std takes the access mode from read/write and every other flag (O_CREAT, O_APPEND,
        // O_NONBLOCK) from here.
        .custom_flags(flags & !libc::O_ACCMODE)
        .mode(mode)
        .open(path)?;
    Ok(f.into())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    grow(&r, PIPE_SIZE);
    Ok((r, w))
}

/// Bigger pipe buffers mean fewer wakeups per MiB for the container, the relay and the client.
/// Pages are allocated only as data arrives; failure (over the unprivileged limit) is harmless.
fn grow(fd: &OwnedFd, size: libc::c_int) {
    let _ = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(size));
}

/// The client's fifos stay smaller: what is in one when the process exits is what the exit waits
/// for the client to read (see `DrainWaiter`).
const FIFO_SIZE: libc::c_int = 256 << 10;

// 1 MiB: a busy stream is pumped once a millisecond (see relay.rs), so its writer never blocks below 1 GB/s.
const PIPE_SIZE: libc::c_int = 1 << 20;

fn chown(fd: &OwnedFd, uid: u32, gid: u32) -> Result<()> {
    if uid == 0 && gid == 0 {
        return Ok(());
    }
    use nix::unistd::{Gid, Uid};
    nix::unistd::fchown(fd.as_raw_fd(), Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| Error::Other(format!("chown of io pipe to {uid}:{gid}: {}", std::io::Error::from(e))))
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
            grow(&w, FIFO_SIZE);
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

/// Opens the stdin fifo: (read end for the relay, write end the shim holds so the relay never sees
/// EOF when a client detaches; CloseIO drops it).
fn open_stdin_fifo(uri: &str) -> Result<(OwnedFd, OwnedFd)> {
    let p = match target(uri)? {
        Target::Fifo(p) => p,
        Target::File(_) => return Err(Error::InvalidArgument(format!("stdin {uri:?} must be a fifo"))),
    };
    let err = |e: std::io::Error| Error::InvalidArgument(format!("opening stdin fifo {}: {e}", p.display()));
    let r = open(p, libc::O_RDONLY | libc::O_NONBLOCK, 0).map_err(err)?;
    let w = open(p, libc::O_WRONLY | libc::O_NONBLOCK, 0).map_err(err)?;
    Ok((r, w))
}

/// Opens the client side and makes the pipes (or, for a terminal, the console socket). Nothing runs
/// yet; dropping the results closes everything.
pub fn prepare(
    paths: &StdioPaths,
    uid: u32,
    gid: u32,
    ids: LogIds,
    output: backlog::Settings,
) -> Result<(ChildStdio, PendingIo)> {
    let mut child = ChildStdio {
        stdin: None,
        stdout: None,
        stderr: None,
    };
    let mut pending = PendingIo {
        stdin: None,
        outputs: Vec::new(),
        stdin_writer: None,
        held_readers: Vec::new(),
        console: None,
        logger: None,
        buffering: (output.cap > 0).then(|| {
            let name = match ids.exec_id {
                Some(e) => format!("{}/{}/{e}", ids.namespace, ids.container_id),
                None => format!("{}/{}", ids.namespace, ids.container_id),
            };
            (name, output)
        }),
    };
    // A logging binary gets the container's output directly (stdout's URI names it for both streams).
    let binary = match logger::parse(&paths.stdout) {
        Some(b) => {
            let (l, out, err) = Logger::start(&b?, ids.container_id, ids.namespace)?;
            pending.logger = Some(l);
            Some((out, err))
        }
        None => None,
    };
    if paths.terminal {
        let mut c = PendingConsole {
            socket: console::ConsoleSocket::new()?,
            stdin: None,
            stdout: None,
        };
        if !paths.stdin.is_empty() {
            let (r, w) = open_stdin_fifo(&paths.stdin)?;
            c.stdin = Some(r);
            pending.stdin_writer = Some(w);
        }
        if let Some((out, _)) = binary {
            c.stdout = Some(out);
        } else if !paths.stdout.is_empty() {
            let (dst, hold) = open_output(&paths.stdout)?;
            pending.held_readers.extend(hold);
            c.stdout = Some(dst);
        }
        pending.console = Some(c);
        return Ok((child, pending));
    }
    if !paths.stdin.is_empty() {
        let (fifo_r, fifo_w) = open_stdin_fifo(&paths.stdin)?;
        let (r, w) = pipe()?;
        chown(&r, uid, gid)?;
        child.stdin = Some(r);
        pending.stdin = Some(Stream::new(fifo_r, w));
        pending.stdin_writer = Some(fifo_w);
    }
    if let Some((out, err)) = binary {
        if pending.buffering.is_none() {
            // The logger reads the container's output itself, as with the Go shim.
            chown(&out, uid, gid)?;
            chown(&err, uid, gid)?;
            child.stdout = Some(out);
            child.stderr = Some(err);
            return Ok((child, pending));
        }
        // Relayed, so that a logger that falls behind or stops reading does not stall the container.
        for (dst, slot, which) in [(out, &mut child.stdout, "stdout"), (err, &mut child.stderr, "stderr")] {
            let (r, w) = pipe()?;
            chown(&w, uid, gid)?;
            *slot = Some(w);
            pending.outputs.push(Stream {
                buffer: pending.buffer(which),
                ..Stream::new(r, dst)
            });
        }
        return Ok((child, pending));
    }
    for (uri, slot, which) in [
        (&paths.stdout, &mut child.stdout, "stdout"),
        (&paths.stderr, &mut child.stderr, "stderr"),
    ] {
        if uri.is_empty() {
            continue;
        }
        let (dst, hold) = open_output(uri)?;
        pending.held_readers.extend(hold);
        let (r, w) = pipe()?;
        chown(&w, uid, gid)?;
        *slot = Some(w);
        pending.outputs.push(Stream {
            buffer: pending.buffer(which),
            ..Stream::new(r, dst)
        });
    }
    Ok((child, pending))
}

impl PendingIo {
    /// The console socket to hand runc (`--console-socket`), for a terminal.
    pub fn console_socket(&self) -> Option<&Path> {
        self.console.as_ref().map(|c| c.socket.path())
    }

    /// Starts relaying; for a terminal, first receives the pty master runc sent.
    pub fn start(self, relay: &Relay) -> Result<ProcessIo> {
        let drain = Arc::new(Drain::default());
        let moved = Arc::new(AtomicU64::new(0));
        let tty_buffer = self.buffer("tty");
        let mut outputs = self.outputs;
        let mut console = None;
        let mut console_in = None;
        if let Some(c) = self.console {
            let master = c.socket.receive_master()?;
            let (dst, buffer) = match c.stdout {
                Some(o) => (o, tty_buffer),
                // Nobody reads the terminal: drain it anyway, or the process blocks once the tty buffer is full.
                None => (open(Path::new("/dev/null"), libc::O_WRONLY, 0)?, None),
            };
            outputs.push(Stream {
                console_src: true,
                buffer,
                ..Stream::new(master.try_clone()?, dst)
            });
            if let Some(r) = c.stdin {
                console_in = Some(Stream::new(r, master.try_clone()?));
            }
            console = Some(master);
        }
        *drain.left.lock().unwrap() = outputs.len();
        let is_console = console.is_some();
        let outputs: Vec<u64> = outputs
            .into_iter()
            .map(|mut s| {
                let d = drain.clone();
                s.progress = Some(moved.clone());
                s.on_done = Some(Box::new(move || {
                    let mut left = d.left.lock().unwrap_or_else(|e| e.into_inner());
                    *left = left.saturating_sub(1);
                    d.cv.notify_all();
                }));
                relay.add(s)
            })
            .collect();
        let console = Arc::new(Mutex::new(console));
        let console_out = is_console.then(|| *outputs.last().expect("console output stream"));
        let stdin_stream = match (self.stdin, console_in) {
            (Some(s), _) => Some(relay.add(s)),
            (None, Some(mut s)) => {
                // Stdin ended (CloseIO and the client closed): hang up the terminal, as the Go shim does.
                let (r, c, out) = (relay.clone(), console.clone(), console_out);
                s.on_done = Some(Box::new(move || {
                    c.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(id) = out {
                        r.finish(id);
                    }
                }));
                Some(relay.add(s))
            }
            (None, None) => None,
        };
        Ok(ProcessIo {
            relay: relay.clone(),
            stdin_writer: Mutex::new(self.stdin_writer),
            held_readers: Mutex::new(self.held_readers),
            stdin_stream,
            outputs,
            drain,
            moved,
            console,
            console_out,
            logger: self.logger,
        })
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
        self.drain.wait(timeout)
    }

    pub fn drain_waiter(&self) -> DrainWaiter {
        let held = self.held_readers.lock().unwrap_or_else(|e| e.into_inner());
        DrainWaiter {
            drain: self.drain.clone(),
            moved: self.moved.clone(),
            fifos: held.iter().filter_map(|f| f.try_clone().ok()).collect(),
        }
    }

    /// The process exited: a console has no EOF of its own, so drain what it holds and close it.
    pub fn process_exited(&self) {
        if let Some(id) = self.console_out {
            self.relay.finish(id);
        }
    }

    /// ResizePty: sets the terminal's window size (no terminal: nothing to do).
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let g = self.console.lock().unwrap_or_else(|e| e.into_inner());
        let Some(master) = g.as_ref() else { return Ok(()) };
        set_winsize(master, width, height)
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
        self.console.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.held_readers.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if let Some(l) = &self.logger {
            l.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_waits_for_a_reading_client_and_gives_up_on_one_that_is_not() {
        let dir = std::env::temp_dir().join(format!("rr-drain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stdout");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let held = open(&path, libc::O_RDONLY | libc::O_NONBLOCK, 0).unwrap();
        let w = open(&path, libc::O_WRONLY | libc::O_NONBLOCK, 0).unwrap();
        let waiter = || DrainWaiter {
            drain: Arc::new(Drain::default()),
            moved: Arc::new(AtomicU64::new(0)),
            fifos: vec![held.try_clone().unwrap()],
        };
        // Output nobody reads: given up as stalled, long before the bound.
        assert_eq!(nix::unistd::write(&w, &[1u8; 4096]).unwrap(), 4096);
        assert_eq!(waiter().wait(Duration::from_secs(30)), Drained::Stalled);
        // A client that reads, slowly: waited for.
        let mut client = std::fs::File::from(open(&path, libc::O_RDONLY | libc::O_NONBLOCK, 0).unwrap());
        let reader = std::thread::spawn(move || {
            let mut b = [0u8; 512];
            for _ in 0..8 {
                std::thread::sleep(Duration::from_millis(20));
                let _ = std::io::Read::read(&mut client, &mut b);
            }
        });
        assert_eq!(waiter().wait(Duration::from_secs(30)), Drained::Yes);
        reader.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn winsize_reaches_the_slave() {
        let pty = nix::pty::openpty(None, None).unwrap();
        set_winsize(&pty.master, 34, 12).unwrap();
        assert_eq!(crate::sys::winsize(pty.slave.as_fd()).unwrap(), (34, 12));
    }
}
