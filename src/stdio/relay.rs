//! The relay, a subscriber of the daemon's event loop, moves the bytes of every stream of every process. A stream is a source fd and a
//! destination fd. Where one side is a pipe (fifos are pipes) bytes move with splice(2), never through
//! userspace; where the kernel cannot splice (a tty on older kernels) the stream falls back to
//! read/write through a small buffer. At EOF on the source the destination is closed: only then, so
//! nothing is cut off.
//!
//! A console (pty master) source answers EIO while no slave fd is open. That is not EOF: the stream
//! goes dormant until it is told to finish (the process exited), then drains what is left and closes.
//!
//! A stream whose writer keeps writing (it delivered again within `HOT` of its last bytes) is not
//! woken for every write: it is pumped `DEFER` later, by timer, and so moves what a millisecond of
//! writes filled in rather than the 4 KiB of one write: one wake-up per millisecond instead of one
//! per write, for at most a millisecond of delay on a busy stream. The pipes are large enough (1 MiB)
//! that the writer does not block meanwhile below about 1 GB/s. A stream that finds its source empty
//! goes back to being woken by the next write. A console is never deferred: a pty master holds about
//! 4 KiB for its reader (n_tty's buffer), so waiting a millisecond stalls the writer; deferring
//! consoles made TTY output 30 % slower than the Go shim's with a fast reader.
// TODO(lints): this file's unsafe blocks still lack SAFETY comments and some have nix/sys
// equivalents (see crate::sys); `Relay::start` serves only the tests, `Relay::event_loop` nothing. The lints are off here only until it is converted.
#![allow(clippy::undocumented_unsafe_blocks, clippy::multiple_unsafe_ops_per_block, dead_code)]

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::EpollFlags;

use crate::event_loop::{EventLoop, Handle, Ops, Subscriber};
use crate::lock::lock;

/// What a stream carries: bytes from `src` to `dst`, both closed when the stream ends.
pub struct Stream {
    pub src: OwnedFd,
    pub dst: OwnedFd,
    /// The source is a pty master: EIO means "no slave now", not EOF.
    pub console_src: bool,
    pub on_done: Option<Box<dyn FnOnce() + Send>>,
    /// Counts the bytes moved, for whoever waits on the stream to see it progress.
    pub progress: Option<Arc<AtomicU64>>,
}

impl Stream {
    pub fn new(src: OwnedFd, dst: OwnedFd) -> Stream {
        Stream {
            src,
            dst,
            console_src: false,
            on_done: None,
            progress: None,
        }
    }
}

enum Cmd {
    Add(u64, Stream),
    Cancel(u64),
    Finish(u64),
}

struct Shared {
    lp: EventLoop,
    handle: OnceLock<Handle>,
    cmds: Mutex<Vec<Cmd>>,
    next: AtomicU64,
    /// Times a stream was deferred to the timer (for tests).
    deferrals: AtomicU64,
}

#[derive(Clone)]
pub struct Relay(Arc<Shared>);

const CHUNK: usize = 1 << 20;
/// What one splice asks of a console. A tty cannot splice by reference: the kernel allocates pages
/// for the whole length asked (up to the room in the pipe) and reads into them, though a pty master
/// has about 4 KiB to give; asking 1 MiB of a 256 KiB fifo cost 64 page allocations per 4 KiB moved
/// (9 % of the relay's CPU on TTY output in a perf profile, 2 % with 16 KiB).
const CONSOLE_CHUNK: usize = 16 << 10;
const COPY_BUF: usize = 32 << 10;
const DEFER: Duration = Duration::from_millis(1);
const HOT: Duration = Duration::from_millis(3);

impl Relay {
    /// The relay as a subscriber of `lp`.
    pub fn on(lp: &EventLoop) -> Relay {
        let shared = Arc::new(Shared {
            lp: lp.clone(),
            handle: OnceLock::new(),
            cmds: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
            deferrals: AtomicU64::new(0),
        });
        let h = lp.add(Box::new(Streams {
            sh: shared.clone(),
            streams: HashMap::new(),
        }));
        let _ = shared.handle.set(h);
        Relay(shared)
    }

    /// A relay on an event loop of its own (tests).
    pub fn start() -> std::io::Result<Relay> {
        let lp = EventLoop::new()?;
        lp.spawn()?;
        Ok(Relay::on(&lp))
    }

    /// Adds a stream; returns its id for [`Relay::cancel`] and [`Relay::finish`].
    pub fn add(&self, stream: Stream) -> u64 {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        self.send(Cmd::Add(id, stream));
        id
    }

    /// Stops a stream now, closing its fds without draining (its on_done still runs).
    pub fn cancel(&self, id: u64) {
        self.send(Cmd::Cancel(id));
    }

    /// Moves what the source holds now, then closes the stream: no more data is expected (the
    /// process behind a console exited). Unknown or finished ids are ignored.
    pub fn finish(&self, id: u64) {
        self.send(Cmd::Finish(id));
    }

    /// Calls `on_ready` on the loop thread whenever `fd` is readable, for as long as the loop runs
    /// (signals, OOM notifications). `on_ready` must consume what made `fd` readable, must not
    /// block, and keeps `fd` open.
    pub fn watch(&self, fd: RawFd, on_ready: Box<dyn FnMut() + Send>) {
        self.0.lp.add(crate::event_loop::Watch::new("watch", fd, on_ready));
    }

    /// The event loop the relay runs on.
    pub fn event_loop(&self) -> &EventLoop {
        &self.0.lp
    }

    fn send(&self, c: Cmd) {
        lock(&self.0.cmds).push(c);
        if let Some(h) = self.0.handle.get() {
            h.kick();
        }
    }
}

/// The relay's state on the loop thread: every stream being moved.
struct Streams {
    sh: Arc<Shared>,
    streams: HashMap<u64, Active>,
}

impl Subscriber for Streams {
    fn name(&self) -> &'static str {
        "relay"
    }

    fn init(&mut self, ops: &mut Ops) {
        // Streams added before the loop knew the relay.
        self.kicked(ops);
    }

    fn ready(&mut self, key: u64, _events: EpollFlags, ops: &mut Ops) {
        if let Some(a) = self.streams.remove(&(key >> 1)) {
            step(&self.sh, ops, key >> 1, a, &mut self.streams);
        }
    }

    fn timer(&mut self, id: u64, ops: &mut Ops) {
        if let Some(mut a) = self.streams.remove(&id) {
            if a.deferred {
                a.deferred = false;
                step(&self.sh, ops, id, a, &mut self.streams);
            } else {
                self.streams.insert(id, a);
            }
        }
    }

    fn kicked(&mut self, ops: &mut Ops) {
        let cmds = std::mem::take(&mut *lock(&self.sh.cmds));
        for c in cmds {
            match c {
                Cmd::Add(id, s) => {
                    set_nonblocking(s.src.as_raw_fd());
                    set_nonblocking(s.dst.as_raw_fd());
                    // Data may already be waiting: pump once, then watch.
                    let a = Active {
                        s,
                        reg: Reg::None,
                        finishing: false,
                        copy: None,
                        moved: 0,
                        last_moved: None,
                        deferred: false,
                    };
                    step(&self.sh, ops, id, a, &mut self.streams);
                }
                Cmd::Cancel(id) => {
                    if let Some(a) = self.streams.remove(&id) {
                        finish(ops, a);
                    }
                }
                Cmd::Finish(id) => {
                    if let Some(mut a) = self.streams.remove(&id) {
                        a.finishing = true;
                        a.deferred = false;
                        step(&self.sh, ops, id, a, &mut self.streams);
                    }
                }
            }
        }
    }

    fn dump(&self, out: &mut String) {
        let waiting_dst = self.streams.values().filter(|a| a.reg == Reg::Dst).count();
        out.push_str(&format!(
            "  relay: {} streams, {waiting_dst} waiting for their reader\n",
            self.streams.len()
        ));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reg {
    None,
    Src,
    Dst,
}

struct Active {
    s: Stream,
    reg: Reg,
    finishing: bool,
    /// Copy mode (splice unsupported): bytes read but not yet written.
    copy: Option<Vec<u8>>,
    /// Bytes moved by the current pump.
    moved: usize,
    /// When the stream last moved bytes.
    last_moved: Option<Instant>,
    /// Waiting for its timer, not for epoll.
    deferred: bool,
}

fn set_nonblocking(fd: RawFd) {
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn readable_bytes(fd: RawFd) -> i32 {
    let mut n: libc::c_int = 0;
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } < 0 {
        return 1; // unknown: assume data, so we wait on the destination rather than spin
    }
    n
}

enum Pump {
    WaitSrc,
    WaitDst,
    /// Console without a slave: stop watching until finish.
    Dormant,
    Done,
}

/// What an error reading the source means.
fn src_error(a: &Active, e: Errno) -> Pump {
    match e {
        // A console's last bytes may still be on their way from the closed slave: only EIO says all
        // of them were read.
        Errno::EAGAIN if a.finishing && !a.s.console_src => Pump::Done,
        Errno::EAGAIN => Pump::WaitSrc,
        Errno::EIO if a.s.console_src && !a.finishing => Pump::Dormant,
        Errno::EIO if a.s.console_src => Pump::Done,
        e => {
            log::warn!("io relay: reading fd {}: {e}", a.s.src.as_raw_fd());
            Pump::Done
        }
    }
}

fn pump(a: &mut Active) -> Pump {
    let (src, dst) = (a.s.src.as_raw_fd(), a.s.dst.as_raw_fd());
    loop {
        if a.copy.is_some() {
            return pump_copy(a);
        }
        let n = unsafe {
            libc::splice(
                src,
                std::ptr::null_mut(),
                dst,
                std::ptr::null_mut(),
                if a.s.console_src { CONSOLE_CHUNK } else { CHUNK },
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        if n > 0 {
            a.moved += n as usize;
            continue;
        }
        if n == 0 {
            return Pump::Done;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            // splice cannot tell which side would block: bytes waiting in the source mean the destination is full.
            Errno::EAGAIN if readable_bytes(src) > 0 => return Pump::WaitDst,
            // Neither side is a pipe that splice supports (a tty on older kernels): copy instead.
            Errno::EINVAL => a.copy = Some(Vec::with_capacity(COPY_BUF)),
            // The reader of the destination is gone (the container closed its stdin): nothing more to do.
            Errno::EPIPE => return Pump::Done,
            e => return src_error(a, e),
        }
    }
}

fn pump_copy(a: &mut Active) -> Pump {
    let (src, dst) = (a.s.src.as_raw_fd(), a.s.dst.as_raw_fd());
    let buf = a.copy.as_mut().expect("copy mode");
    loop {
        while !buf.is_empty() {
            let n = unsafe { libc::write(dst, buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                buf.drain(..n as usize);
                if let Some(p) = &a.s.progress {
                    p.fetch_add(n as u64, Ordering::Relaxed);
                }
                continue;
            }
            match Errno::last() {
                Errno::EINTR => continue,
                Errno::EAGAIN => return Pump::WaitDst,
                e => {
                    if e != Errno::EPIPE && e != Errno::EIO {
                        log::warn!("io relay: writing fd {dst}: {e}");
                    }
                    return Pump::Done;
                }
            }
        }
        buf.resize(COPY_BUF, 0);
        let n = unsafe { libc::read(src, buf.as_mut_ptr().cast(), COPY_BUF) };
        if n > 0 {
            buf.truncate(n as usize);
            continue;
        }
        buf.clear();
        if n == 0 {
            return Pump::Done;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => {
                let a2 = &*a;
                return src_error(a2, e);
            }
        }
    }
}

fn token(id: u64, dst: bool) -> u64 {
    id << 1 | dst as u64
}

/// Pumps a stream and (re)arms its epoll interest, or its timer when it is hot.
fn step(sh: &Shared, ops: &mut Ops, id: u64, mut a: Active, streams: &mut HashMap<u64, Active>) {
    let result = pump(&mut a);
    let now = Instant::now();
    let moved_bytes = std::mem::take(&mut a.moved);
    if let (Some(p), true) = (&a.s.progress, moved_bytes > 0) {
        p.fetch_add(moved_bytes as u64, Ordering::Relaxed);
    }
    let moved = moved_bytes > 0;
    let hot = moved && !a.finishing && !a.s.console_src && a.last_moved.is_some_and(|t| now.duration_since(t) < HOT);
    if moved {
        a.last_moved = Some(now);
    }
    let want = match result {
        Pump::Done => return finish(ops, a),
        Pump::WaitSrc if hot => {
            deregister(ops, &a);
            a.reg = Reg::None;
            a.deferred = true;
            sh.deferrals.fetch_add(1, Ordering::Relaxed);
            ops.timer(now + DEFER, id);
            streams.insert(id, a);
            return;
        }
        Pump::WaitSrc => Reg::Src,
        Pump::WaitDst => Reg::Dst,
        Pump::Dormant => Reg::None,
    };
    if want != a.reg {
        deregister(ops, &a);
        a.reg = want;
        let r = match want {
            Reg::Src => ops.add(a.s.src.as_fd(), EpollFlags::EPOLLIN, token(id, false)),
            Reg::Dst => ops.add(a.s.dst.as_fd(), EpollFlags::EPOLLOUT, token(id, true)),
            Reg::None => Ok(()),
        };
        if let Err(e) = r {
            log::warn!("io relay: epoll add: {e}");
            a.reg = Reg::None;
            return finish(ops, a);
        }
    }
    streams.insert(id, a);
}

fn deregister(ops: &mut Ops, a: &Active) {
    match a.reg {
        Reg::Src => ops.delete(a.s.src.as_fd()),
        Reg::Dst => ops.delete(a.s.dst.as_fd()),
        Reg::None => {}
    }
}

fn finish(ops: &mut Ops, mut a: Active) {
    deregister(ops, &a);
    let done = a.s.on_done.take();
    drop(a); // closes src and dst
    if let Some(f) = done {
        f();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::mpsc::channel;
    use std::time::Duration;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (r.into(), w.into())
    }

    /// A stream from `src` to `dst` and what says it ended.
    fn watched(src: OwnedFd, dst: OwnedFd, console: bool) -> (Stream, std::sync::mpsc::Receiver<()>) {
        let (tx, rx) = channel();
        let mut s = Stream::new(src, dst);
        s.console_src = console;
        s.on_done = Some(Box::new(move || tx.send(()).unwrap()));
        (s, rx)
    }

    #[test]
    fn pipe_to_pipe_moves_everything_then_closes() {
        let relay = Relay::start().unwrap();
        let (src_r, mut src_w) = pipe();
        let (mut dst_r, dst_w) = pipe();
        let (s, rx) = watched(src_r.into(), dst_w.into(), false);
        relay.add(s);
        let data: Vec<u8> = (0..3 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let expect = data.clone();
        let writer = std::thread::spawn(move || src_w.write_all(&data));
        let mut got = Vec::new();
        dst_r.read_to_end(&mut got).unwrap();
        writer.join().unwrap().unwrap();
        assert!(got == expect, "{} bytes of {}", got.len(), expect.len());
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_busy_stream_is_moved_in_batches_not_per_write() {
        let relay = Relay::start().unwrap();
        let (src_r, mut src_w) = pipe();
        unsafe { libc::fcntl(src_r.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        let (mut dst_r, dst_w) = pipe();
        let (s, rx) = watched(src_r.into(), dst_w.into(), false);
        relay.add(s);
        // 16 MiB in 4 KiB writes a little apart, as a process writes; the reader takes 1 MiB at a time.
        let total = 16 << 20;
        let writer = std::thread::spawn(move || {
            let chunk = [7u8; 4096];
            for _ in 0..total / chunk.len() {
                src_w.write_all(&chunk).unwrap();
                std::thread::sleep(Duration::from_micros(20));
            }
        });
        let before = relay.0.lp.wakeups();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        loop {
            match dst_r.read(&mut buf).unwrap() {
                0 => break,
                n => got += n,
            }
        }
        writer.join().unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let wakeups = relay.0.lp.wakeups() - before;
        assert_eq!(got, total);
        // One wake-up per write would be 4,096.
        assert!(wakeups < 1024, "{wakeups} wake-ups for {} writes", total / 4096);
        assert!(relay.0.deferrals.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn a_busy_console_is_read_as_it_fills_never_deferred() {
        let pty = nix::pty::openpty(None, None).unwrap();
        // Raw, so that the bytes arrive as written (no CR added, no echo).
        let mut t = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
        let relay = Relay::start().unwrap();
        let (mut dst_r, dst_w) = pipe();
        let (s, rx) = watched(pty.master, dst_w.into(), true);
        let id = relay.add(s);
        let total = 4 << 20;
        let mut slave = std::fs::File::from(pty.slave);
        let writer = std::thread::spawn(move || {
            let chunk = [b'x'; 16 << 10];
            for _ in 0..total / chunk.len() {
                slave.write_all(&chunk).unwrap();
            }
        });
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < total {
            got += dst_r.read(&mut buf).unwrap();
        }
        writer.join().unwrap();
        relay.finish(id);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got, total);
        assert_eq!(
            relay.0.deferrals.load(Ordering::Relaxed),
            0,
            "a console stream was deferred"
        );
    }

    #[test]
    fn console_eio_is_not_eof_until_finish() {
        // A pty: the master answers EIO once the slave is closed.
        let pty = nix::pty::openpty(None, None).unwrap();
        let relay = Relay::start().unwrap();
        let (mut dst_r, dst_w) = pipe();
        let (s, rx) = watched(pty.master, dst_w.into(), true);
        let mut slave = std::fs::File::from(pty.slave);
        slave.write_all(b"before hangup\n").unwrap();
        let id = relay.add(s);
        drop(slave);
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "EIO ended the stream"
        );
        relay.finish(id);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let mut got = String::new();
        dst_r.read_to_string(&mut got).unwrap();
        assert!(got.contains("before hangup"), "{got:?}");
    }
}
