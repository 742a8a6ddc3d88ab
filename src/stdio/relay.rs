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
//! 4 KiB for its reader (n_tty's buffer), so waiting a millisecond stalls the writer.
//!
//! An output stream given a [`Buffering`] does not pass its destination's back-pressure on to the
//! container: when the destination is full (containerd away, a client or logger not reading), the
//! stream reads its source into a backlog (backlog.rs) and waits for both sides; once the destination
//! takes bytes, the backlog goes first, and the stream splices again when it is empty. Not at the
//! first EAGAIN: only once the destination has taken nothing for `GRACE` (a reader taking a moment,
//! a burst, which the 1 MiB pipe absorbs). A reader that reads, however slowly, keeps the stream on
//! splice with its back-pressure: a bounded backlog helps through a stall, not with a reader that is
//! slower than the writer for good (it would only copy every byte through memory up to the cap).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::EpollFlags;

use crate::event_loop::{EventLoop, Handle, Ops, Subscriber};
use crate::lock::lock;

use super::backlog::{self, Backlog, Buffering, Fill};

/// What a stream carries: bytes from `src` to `dst`, both closed when the stream ends.
pub struct Stream {
    pub src: OwnedFd,
    pub dst: OwnedFd,
    /// The source is a pty master: EIO means "no slave now", not EOF.
    pub console_src: bool,
    pub on_done: Option<Box<dyn FnOnce() + Send>>,
    /// Counts the bytes moved, for whoever waits on the stream to see it progress.
    pub progress: Option<Arc<AtomicU64>>,
    /// Buffer the output while the destination does not take it (None: back-pressure at once).
    pub buffer: Option<Buffering>,
}

impl Stream {
    pub fn new(src: OwnedFd, dst: OwnedFd) -> Stream {
        Stream {
            src,
            dst,
            console_src: false,
            on_done: None,
            progress: None,
            buffer: None,
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
/// How long a destination may take nothing before the stream buffers: 1 MiB of pipe is 20 ms at
/// 50 MB/s, so the writer does not block meanwhile below that.
const GRACE: Duration = Duration::from_millis(20);

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
    #[cfg(test)]
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
                    set_nonblocking(&s.src);
                    set_nonblocking(&s.dst);
                    // Data may already be waiting: pump once, then watch.
                    let a = Active {
                        s,
                        reg: Reg::None,
                        finishing: false,
                        copy: None,
                        moved: 0,
                        last_moved: None,
                        deferred: false,
                        backlog: None,
                        src_end: SrcEnd::Open,
                        behind_since: None,
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
        let pool = super::backlog::shim_pool();
        out.push_str(&format!(
            "  relay: {} streams, {waiting_dst} waiting for their reader; backlogs hold {} bytes ({} mapped, {} dropped so far)\n",
            self.streams.len(),
            pool.used(),
            pool.mapped(),
            pool.dropped()
        ));
        for b in super::backlog::backlogs() {
            out.push_str(&format!(
                "    backlog {}: {} bytes for {:.1?}, {} dropped\n",
                b.stream, b.bytes, b.age, b.dropped
            ));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reg {
    None,
    Src,
    Dst,
    /// Buffering: more output from the source, room in the destination.
    Both,
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
    /// What the destination has not taken yet (only while it does not).
    backlog: Option<Backlog>,
    /// Where the source is, once a backlog outlives its end.
    src_end: SrcEnd,
    /// Since when the destination has taken nothing though the source has bytes.
    behind_since: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SrcEnd {
    Open,
    /// A console without a slave (see `Pump::Dormant`).
    Dormant,
    Eof,
}

fn set_nonblocking(fd: &OwnedFd) {
    let fd = fd.as_raw_fd();
    if let Ok(fl) = nix::fcntl::fcntl(fd, FcntlArg::F_GETFL) {
        let _ = nix::fcntl::fcntl(fd, FcntlArg::F_SETFL(OFlag::from_bits_retain(fl) | OFlag::O_NONBLOCK));
    }
}

/// Whether `fd` has room for a write now.
fn writable(fd: BorrowedFd<'_>) -> bool {
    let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
    nix::poll::poll(&mut p, PollTimeout::ZERO) == Ok(1)
        && p[0].revents().is_some_and(|r| r.contains(PollFlags::POLLOUT))
}

fn readable_bytes(fd: BorrowedFd<'_>) -> usize {
    // Unknown: assume data, so we wait on the destination rather than spin.
    crate::sys::fionread(fd).unwrap_or(1)
}

enum Pump {
    WaitSrc,
    WaitDst,
    /// Buffering and the source is empty: wait for either side.
    WaitBoth,
    /// Console without a slave: stop watching until finish.
    Dormant,
    Done,
    /// (Within `pump`) buffering began or ended: go on in the other mode.
    Again,
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
    loop {
        // Again: the backlog drained (splice or copy again), or copy mode began one.
        if a.backlog.is_some() {
            match pump_backlog(a) {
                Pump::Again => continue,
                r => return r,
            }
        }
        if a.copy.is_some() {
            match pump_copy(a) {
                Pump::Again => continue,
                r => return r,
            }
        }
        let n = nix::fcntl::splice(
            &a.s.src,
            None,
            &a.s.dst,
            None,
            if a.s.console_src { CONSOLE_CHUNK } else { CHUNK },
            SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
        );
        let e = match n {
            Ok(0) => return Pump::Done,
            Ok(n) => {
                a.moved += n;
                a.behind_since = None;
                continue;
            }
            Err(e) => e,
        };
        match e {
            Errno::EINTR => continue,
            // splice cannot tell which side would block: bytes waiting in the source mean the destination is full.
            Errno::EAGAIN if readable_bytes(a.s.src.as_fd()) > 0 => {
                if !start_backlog(a) {
                    return Pump::WaitDst;
                }
            }
            // Neither side is a pipe that splice supports (a tty on older kernels): copy instead.
            Errno::EINVAL => a.copy = Some(Vec::with_capacity(COPY_BUF)),
            // The reader of the destination is gone (the container closed its stdin): nothing more to do.
            Errno::EPIPE => return Pump::Done,
            e => return src_error(a, e),
        }
    }
}

/// Starts a backlog when the stream buffers, its destination has been behind for `GRACE`, and there
/// is room (or it drops at the cap).
fn start_backlog(a: &mut Active) -> bool {
    start_backlog_with(&a.s.buffer, &mut a.backlog, &mut a.behind_since)
}

fn start_backlog_with(
    buffer: &Option<Buffering>,
    backlog: &mut Option<Backlog>,
    behind_since: &mut Option<Instant>,
) -> bool {
    let behind = behind_since.get_or_insert_with(Instant::now).elapsed() >= GRACE;
    match buffer {
        Some(b) if behind && backlog::worth_starting(b) => {
            *backlog = Some(Backlog::start(b));
            true
        }
        _ => false,
    }
}

/// Buffering: the backlog to the destination first, the source into the backlog while there is
/// room. Ends the backlog (Again, or what the source's end means) once it is empty and the
/// destination has room again.
fn pump_backlog(a: &mut Active) -> Pump {
    if a.finishing && a.src_end == SrcEnd::Dormant {
        a.src_end = SrcEnd::Open;
    }
    loop {
        let bl = a.backlog.as_mut().expect("buffering");
        match bl.flush(a.s.dst.as_fd()) {
            Ok(n) => a.moved += n,
            Err(Errno::EAGAIN) => {}
            Err(e) => {
                if e != Errno::EPIPE && e != Errno::EIO {
                    log::warn!("io relay: writing fd {}: {e}", a.s.dst.as_raw_fd());
                }
                return Pump::Done;
            }
        }
        if bl.is_empty() && (a.src_end != SrcEnd::Open || writable(a.s.dst.as_fd())) {
            a.backlog = None;
            // Another backlog only after another grace: no flapping with a reader just keeping up.
            a.behind_since = None;
            return match a.src_end {
                SrcEnd::Open => Pump::Again,
                SrcEnd::Dormant => Pump::Dormant,
                SrcEnd::Eof => Pump::Done,
            };
        }
        if a.src_end != SrcEnd::Open {
            return Pump::WaitDst;
        }
        let e = match bl.fill(a.s.src.as_fd()) {
            Fill::Read => continue,
            Fill::Eof => {
                a.src_end = SrcEnd::Eof;
                continue;
            }
            Fill::Full => return Pump::WaitDst,
            Fill::Empty => Errno::EAGAIN,
            Fill::Err(Errno::EINTR) => continue,
            Fill::Err(e) => e,
        };
        match src_error(a, e) {
            Pump::WaitSrc => return Pump::WaitBoth,
            Pump::Dormant => a.src_end = SrcEnd::Dormant,
            _ => a.src_end = SrcEnd::Eof,
        }
    }
}

fn pump_copy(a: &mut Active) -> Pump {
    let buf = a.copy.as_mut().expect("copy mode");
    loop {
        while !buf.is_empty() {
            let e = match nix::unistd::write(&a.s.dst, buf) {
                Ok(n) => {
                    buf.drain(..n);
                    a.behind_since = None;
                    if let Some(p) = &a.s.progress {
                        p.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    continue;
                }
                Err(e) => e,
            };
            match e {
                Errno::EINTR => continue,
                Errno::EAGAIN if start_backlog_with(&a.s.buffer, &mut a.backlog, &mut a.behind_since) => {
                    let pending = std::mem::take(buf);
                    let bl = a.backlog.as_mut().expect("just started");
                    if let Err(e) = bl.push(&pending) {
                        // Out of memory for even this: keep the bytes and wait as without a backlog.
                        log::warn!("io relay: backlog: {e}");
                        *buf = pending;
                        a.backlog = None;
                        return Pump::WaitDst;
                    }
                    return Pump::Again;
                }
                Errno::EAGAIN => return Pump::WaitDst,
                e => {
                    if e != Errno::EPIPE && e != Errno::EIO {
                        log::warn!("io relay: writing fd {}: {e}", a.s.dst.as_raw_fd());
                    }
                    return Pump::Done;
                }
            }
        }
        buf.resize(COPY_BUF, 0);
        let e = match nix::unistd::read(a.s.src.as_raw_fd(), buf) {
            Ok(0) => {
                buf.clear();
                return Pump::Done;
            }
            Ok(n) => {
                buf.truncate(n);
                continue;
            }
            Err(e) => {
                buf.clear();
                e
            }
        };
        match e {
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
    if matches!(result, Pump::WaitSrc) {
        // The source is drained: the destination keeps up.
        a.behind_since = None;
    }
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
        // Behind, not buffering yet: look again when the grace is over, if the destination is
        // still full then (no wake-up comes from it).
        Pump::WaitDst if a.backlog.is_none() && a.s.buffer.is_some() && !a.deferred => {
            // (Past the grace already: no room in the shim's pool; wait as without a backlog.)
            if let Some(t) = a.behind_since.filter(|t| now.duration_since(*t) < GRACE) {
                a.deferred = true;
                ops.timer(t + GRACE, id);
            }
            Reg::Dst
        }
        Pump::WaitDst => Reg::Dst,
        Pump::WaitBoth => Reg::Both,
        Pump::Dormant | Pump::Again => Reg::None,
    };
    if want != a.reg {
        deregister(ops, &a);
        a.reg = want;
        let r = match want {
            Reg::Src => ops.add(a.s.src.as_fd(), EpollFlags::EPOLLIN, token(id, false)),
            Reg::Dst => ops.add(a.s.dst.as_fd(), EpollFlags::EPOLLOUT, token(id, true)),
            Reg::Both => ops
                .add(a.s.src.as_fd(), EpollFlags::EPOLLIN, token(id, false))
                .and_then(|()| ops.add(a.s.dst.as_fd(), EpollFlags::EPOLLOUT, token(id, true))),
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
        Reg::Both => {
            ops.delete(a.s.src.as_fd());
            ops.delete(a.s.dst.as_fd());
        }
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
        let _ = nix::fcntl::fcntl(src_r.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(1 << 20));
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

    use super::backlog::{Buffering, Policy, Pool, Settings};

    /// 4-byte counters: any byte lost, repeated or reordered shows.
    fn numbered(bytes: usize) -> Vec<u8> {
        (0..bytes / 4).flat_map(|i| (i as u32).to_le_bytes()).collect()
    }

    /// A buffering stream from a fresh pipe to a fresh pipe, both 64 KiB; returns the writer, the
    /// reader, a dup of the source's read end (to see what it holds) and what says the stream ended.
    struct Buffered {
        w: std::fs::File,
        r: std::fs::File,
        src: std::fs::File,
        done: std::sync::mpsc::Receiver<()>,
    }

    fn buffered(relay: &Relay, pool: &Arc<Pool>, cap: usize, policy: Policy) -> Buffered {
        let (src_r, w) = pipe();
        let (r, dst_w) = pipe();
        let src = src_r.try_clone().unwrap();
        let (mut s, done) = watched(src_r.into(), dst_w.into(), false);
        s.buffer = Some(Buffering {
            name: "test stdout".into(),
            settings: Settings { cap, policy },
            pool: pool.clone(),
        });
        relay.add(s);
        Buffered { w, r, src, done }
    }

    /// Writes `data` on a thread; the receiver gets the writer back once every byte is in the pipe.
    fn write_all_async(mut w: std::fs::File, data: Vec<u8>) -> std::sync::mpsc::Receiver<std::fs::File> {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for c in data.chunks(4096) {
                w.write_all(c).unwrap();
            }
            let _ = tx.send(w);
        });
        rx
    }

    fn poll_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_destination_not_reading_does_not_block_the_writer_and_gets_everything_in_order_later() {
        let relay = Relay::start().unwrap();
        let pool = Pool::new(64 << 20);
        let mut b = buffered(&relay, &pool, 16 << 20, Policy::Block);
        // 4 MiB: 32 times what the two pipes hold, well under the cap.
        let data = numbered(4 << 20);
        let writer = write_all_async(b.w, data.clone());
        let w = writer
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer blocked though the backlog had room");
        let held = pool.backlogs();
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0].stream, "test stdout");
        assert!(held[0].bytes > 3 << 20, "{held:?}");
        assert!(pool.mapped() >= held[0].bytes);
        drop(w);
        let mut got = Vec::new();
        b.r.read_to_end(&mut got).unwrap();
        b.done.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes reordered or repeated");
        // Drained: every byte of memory given back, nothing listed.
        assert_eq!((pool.used(), pool.mapped(), pool.backlogs().len()), (0, 0, 0));
    }

    #[test]
    fn a_reader_that_comes_back_gets_the_backlog_then_live_output_and_the_stream_splices_again() {
        let relay = Relay::start().unwrap();
        let pool = Pool::new(64 << 20);
        let mut b = buffered(&relay, &pool, 16 << 20, Policy::Block);
        let data = numbered(1 << 20);
        let mut w = write_all_async(b.w, data.clone())
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer blocked though the backlog had room");
        // The reader takes everything so far; the backlog empties and is freed.
        let mut got = vec![0u8; data.len()];
        b.r.read_exact(&mut got).unwrap();
        assert!(got == data, "bytes reordered or repeated");
        poll_until("the backlog to end", || pool.backlogs().is_empty());
        assert_eq!((pool.used(), pool.mapped()), (0, 0));
        // Live output again, through splice (no backlog while the reader keeps up).
        w.write_all(b"live\n").unwrap();
        let mut live = [0u8; 5];
        b.r.read_exact(&mut live).unwrap();
        assert_eq!(&live, b"live\n");
        assert_eq!(pool.mapped(), 0);
        drop(w);
        b.done.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn at_the_cap_block_holds_the_writer_back_and_loses_nothing() {
        let relay = Relay::start().unwrap();
        let pool = Pool::new(64 << 20);
        let cap = 256 << 10;
        let mut b = buffered(&relay, &pool, cap, Policy::Block);
        let data = numbered(2 << 20);
        let writer = write_all_async(b.w, data.clone());
        // The backlog fills to its cap, then the source pipe fills behind it.
        poll_until("the backlog to reach its cap", || pool.used() == cap);
        poll_until("the source pipe to fill", || readable_bytes(b.src.as_fd()) >= 64 << 10);
        assert!(writer.try_recv().is_err(), "the writer got past the cap");
        assert_eq!(pool.used(), cap, "the backlog grew past its cap");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.r.read_to_end(&mut got).unwrap();
            got
        });
        drop(
            writer
                .recv_timeout(Duration::from_secs(30))
                .expect("the writer stayed blocked"),
        );
        let got = reader.join().unwrap();
        b.done.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(got == data, "{} bytes of {}, or reordered", got.len(), data.len());
        assert_eq!((pool.used(), pool.mapped(), pool.dropped()), (0, 0, 0));
    }

    #[test]
    fn at_the_cap_drop_keeps_the_writer_going_and_counts_exactly_what_is_missing() {
        let relay = Relay::start().unwrap();
        let pool = Pool::new(64 << 20);
        let cap = 256 << 10;
        let mut b = buffered(&relay, &pool, cap, Policy::Drop);
        let data = numbered(4 << 20);
        let w = write_all_async(b.w, data.clone())
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer blocked under policy drop");
        assert!(pool.used() <= cap);
        drop(w);
        // Read only once the relay has discarded what is left in the source: a reader that frees a
        // page while the source still holds bytes lets that page in and the rest is dropped, a
        // second gap (a loaded host schedules it so, now and then).
        poll_until("the source to be emptied", || readable_bytes(b.src.as_fd()) == 0);
        let mut got = Vec::new();
        b.r.read_to_end(&mut got).unwrap();
        b.done.recv_timeout(Duration::from_secs(5)).unwrap();
        let dropped = pool.dropped() as usize;
        assert!(dropped > 0);
        assert_eq!(
            got.len() + dropped,
            data.len(),
            "the count does not match the bytes missing"
        );
        // The newest bytes were dropped: what arrived is the data with one piece cut out.
        let k = got.iter().zip(&data).take_while(|(a, b)| a == b).count();
        assert!(
            got[k..] == data[k + dropped..],
            "not one contiguous gap of {dropped} bytes"
        );
        assert_eq!((pool.used(), pool.mapped()), (0, 0));
    }

    #[test]
    fn the_shim_cap_bounds_all_streams_together() {
        let relay = Relay::start().unwrap();
        let total = 512 << 10;
        let pool = Pool::new(total);
        let streams: Vec<Buffered> = (0..3)
            .map(|_| buffered(&relay, &pool, 16 << 20, Policy::Block))
            .collect();
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for b in streams {
            writers.push(write_all_async(b.w, numbered(1 << 20)));
            readers.push((b.r, b.done));
        }
        poll_until("the shim's cap to be reached", || pool.used() == total);
        assert!(pool.backlogs().iter().map(|b| b.bytes).sum::<usize>() == total);
        for (mut r, done) in readers {
            let writer = writers.remove(0);
            let t = std::thread::spawn(move || {
                let mut got = Vec::new();
                r.read_to_end(&mut got).unwrap();
                got
            });
            drop(writer.recv_timeout(Duration::from_secs(30)).unwrap());
            assert!(t.join().unwrap() == numbered(1 << 20));
            done.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        assert_eq!((pool.used(), pool.mapped()), (0, 0));
    }

    /// Sockets both sides: splice needs a pipe on one side, so the stream copies (`pump_copy`).
    fn socket_pair() -> (std::os::unix::net::UnixStream, std::os::unix::net::UnixStream) {
        std::os::unix::net::UnixStream::pair().unwrap()
    }

    #[test]
    fn a_stream_splice_cannot_move_is_copied_whole_then_closed() {
        let relay = Relay::start().unwrap();
        let (src_r, mut src_w) = socket_pair();
        let (mut dst_r, dst_w) = socket_pair();
        let (s, rx) = watched(src_r.into(), dst_w.into(), false);
        relay.add(s);
        let data = numbered(3 << 20);
        let expect = data.clone();
        let writer = std::thread::spawn(move || src_w.write_all(&data));
        let mut got = Vec::new();
        dst_r.read_to_end(&mut got).unwrap();
        writer.join().unwrap().unwrap();
        assert!(got == expect, "{} bytes of {}, or reordered", got.len(), expect.len());
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_copied_stream_buffers_too() {
        let relay = Relay::start().unwrap();
        let pool = Pool::new(64 << 20);
        let (src_r, src_w) = socket_pair();
        let (mut dst_r, dst_w) = socket_pair();
        let (mut s, rx) = watched(src_r.into(), dst_w.into(), false);
        s.buffer = Some(Buffering {
            name: "test copied".into(),
            settings: Settings::default(),
            pool: pool.clone(),
        });
        relay.add(s);
        // 4 MiB: many times what the two sockets hold.
        let data = numbered(4 << 20);
        let w = write_all_async(std::fs::File::from(OwnedFd::from(src_w)), data.clone())
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer blocked though the backlog had room");
        assert!(pool.used() > 0, "nothing was buffered");
        drop(w);
        let mut got = Vec::new();
        dst_r.read_to_end(&mut got).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(got == data, "{} bytes of {}, or reordered", got.len(), data.len());
        assert_eq!((pool.used(), pool.mapped()), (0, 0));
    }

    #[test]
    fn a_console_buffers_too() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut t = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
        let relay = Relay::start().unwrap();
        let pool = Pool::new(64 << 20);
        let (mut dst_r, dst_w) = pipe();
        let (mut s, rx) = watched(pty.master, dst_w.into(), true);
        s.buffer = Some(Buffering {
            name: "test tty".into(),
            settings: Settings::default(),
            pool: pool.clone(),
        });
        let id = relay.add(s);
        let data = numbered(1 << 20);
        let slave = std::fs::File::from(pty.slave);
        let slave = write_all_async(slave, data.clone())
            .recv_timeout(Duration::from_secs(30))
            .expect("the terminal's writer blocked though the backlog had room");
        let mut got = vec![0u8; data.len()];
        dst_r.read_exact(&mut got).unwrap();
        assert!(got == data, "bytes reordered or repeated");
        drop(slave);
        relay.finish(id);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((pool.used(), pool.mapped()), (0, 0));
    }
}
