//! One epoll thread moves the bytes of every stream of every process. A stream is a source fd and a
//! destination fd, at least one of them a pipe (fifos are pipes), so bytes move with splice(2) and never
//! through userspace. At EOF on the source the destination is closed: only then, so nothing is cut off.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// What a stream carries; `hold` are fds kept open for the stream's lifetime (the reader the shim
/// holds on an output fifo so the container never sees EPIPE), closed with it.
pub struct Stream {
    pub src: OwnedFd,
    pub dst: OwnedFd,
    #[allow(dead_code)] // never read: it only has to stay open
    pub hold: Option<OwnedFd>,
    pub on_done: Option<Box<dyn FnOnce() + Send>>,
}

enum Cmd {
    Add(u64, Stream),
    Cancel(u64),
}

struct Shared {
    epoll: Epoll,
    wake: EventFd,
    cmds: Mutex<Vec<Cmd>>,
    next: AtomicU64,
}

#[derive(Clone)]
pub struct Relay(Arc<Shared>);

const WAKE: u64 = u64::MAX;
const CHUNK: usize = 1 << 20;

impl Relay {
    pub fn start() -> std::io::Result<Relay> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        epoll.add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        let shared = Arc::new(Shared {
            epoll,
            wake,
            cmds: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("io".into())
            .stack_size(128 * 1024)
            .spawn(move || run(&s))?;
        Ok(Relay(shared))
    }

    /// Adds a stream; returns its id for [`Relay::cancel`].
    pub fn add(&self, stream: Stream) -> u64 {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        self.send(Cmd::Add(id, stream));
        id
    }

    /// Stops a stream now, closing its fds without draining (its on_done still runs).
    pub fn cancel(&self, id: u64) {
        self.send(Cmd::Cancel(id));
    }

    fn send(&self, c: Cmd) {
        self.0.cmds.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        let _ = self.0.wake.write(1);
    }
}

struct Active {
    s: Stream,
    /// true while waiting for the destination to become writable (its buffer was full).
    on_dst: bool,
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
    Done,
}

fn pump(a: &mut Active) -> Pump {
    let (src, dst) = (a.s.src.as_raw_fd(), a.s.dst.as_raw_fd());
    loop {
        let n = unsafe {
            libc::splice(
                src,
                std::ptr::null_mut(),
                dst,
                std::ptr::null_mut(),
                CHUNK,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        if n > 0 {
            continue;
        }
        if n == 0 {
            return Pump::Done;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN => {
                return if readable_bytes(src) > 0 {
                    Pump::WaitDst
                } else {
                    Pump::WaitSrc
                };
            }
            // The reader of the destination is gone (the container closed its stdin): nothing more to do.
            Errno::EPIPE => return Pump::Done,
            e => {
                log::warn!("io relay: splice {src} -> {dst}: {e}");
                return Pump::Done;
            }
        }
    }
}

fn token(id: u64, dst: bool) -> u64 {
    id << 1 | dst as u64
}

fn run(sh: &Shared) {
    let mut streams: HashMap<u64, Active> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); 64];
    loop {
        let n = match sh.epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("io relay: epoll_wait: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let t = ev.data();
            if t == WAKE {
                let _ = sh.wake.read();
                let cmds = std::mem::take(&mut *sh.cmds.lock().unwrap_or_else(|e| e.into_inner()));
                for c in cmds {
                    match c {
                        Cmd::Add(id, s) => {
                            set_nonblocking(s.src.as_raw_fd());
                            set_nonblocking(s.dst.as_raw_fd());
                            // Data may already be waiting: pump once, then watch.
                            step(sh, id, Active { s, on_dst: false }, &mut streams, true);
                        }
                        Cmd::Cancel(id) => {
                            if let Some(a) = streams.remove(&id) {
                                finish(sh, a);
                            }
                        }
                    }
                }
                continue;
            }
            let id = t >> 1;
            if let Some(a) = streams.remove(&id) {
                step(sh, id, a, &mut streams, false);
            }
        }
    }
}

/// Pumps a stream and (re)arms its epoll interest; `fresh` streams are not registered yet.
fn step(sh: &Shared, id: u64, mut a: Active, streams: &mut HashMap<u64, Active>, fresh: bool) {
    let want_dst = match pump(&mut a) {
        Pump::Done => {
            if !fresh {
                deregister(sh, &a);
            }
            finish_unregistered(a);
            return;
        }
        Pump::WaitSrc => false,
        Pump::WaitDst => true,
    };
    if fresh || want_dst != a.on_dst {
        if !fresh {
            deregister(sh, &a);
        }
        a.on_dst = want_dst;
        let (fd, flags) = if want_dst {
            (a.s.dst.as_fd(), EpollFlags::EPOLLOUT)
        } else {
            (a.s.src.as_fd(), EpollFlags::EPOLLIN)
        };
        if let Err(e) = sh.epoll.add(fd, EpollEvent::new(flags, token(id, want_dst))) {
            log::warn!("io relay: epoll add: {e}");
            finish_unregistered(a);
            return;
        }
    }
    streams.insert(id, a);
}

fn deregister(sh: &Shared, a: &Active) {
    let fd = if a.on_dst { a.s.dst.as_fd() } else { a.s.src.as_fd() };
    let _ = sh.epoll.delete(fd);
}

fn finish(sh: &Shared, a: Active) {
    deregister(sh, &a);
    finish_unregistered(a);
}

fn finish_unregistered(mut a: Active) {
    let done = a.s.on_done.take();
    drop(a); // closes src, dst and held fds
    if let Some(f) = done {
        f();
    }
}
