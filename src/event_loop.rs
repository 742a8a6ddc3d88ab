//! The daemon's one event loop: one thread, one epoll, typed subscribers (after firecracker's
//! `EventManager` / `MutEventSubscriber`).
//!
//! The rule every subscriber keeps: **no subscriber blocks**. A callback runs on the loop thread and
//! returns as soon as it has done what is ready: it never waits for a client, a child, a lock held
//! across IO, or a timeout. Work that must block (runc, mounts, opening fifos) goes to the bounded
//! [`crate::pool`] and posts its result back (a queue plus [`Handle::kick`]).
//!
//! A subscriber registers fds with a key of its own (`u64` below 2^40); the loop routes readiness of
//! that fd back to the same subscriber with that key. Timers and kicks are routed the same way.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::lock::lock;

/// A subscriber's own keys must fit below this many bits; the rest of the epoll token names it.
const KEY_BITS: u32 = 40;
const WAKE: u64 = u64::MAX;

/// Something the loop serves. Every method runs on the loop thread and must not block.
pub trait Subscriber: Send {
    /// A short name for logs and the state dump.
    fn name(&self) -> &'static str;
    /// Called once, on the loop thread, before anything else: register fds here.
    fn init(&mut self, _ops: &mut Ops) {}
    /// A registered fd is ready (`key` as registered).
    fn ready(&mut self, key: u64, events: EpollFlags, ops: &mut Ops);
    /// Somebody called [`Handle::kick`]: look at what was queued for you.
    fn kicked(&mut self, _ops: &mut Ops) {}
    /// A timer set with [`Ops::timer`] is due.
    fn timer(&mut self, _key: u64, _ops: &mut Ops) {}
    /// One or more lines for the SIGUSR1 state dump.
    fn dump(&self, _out: &mut String) {}
}

/// What a subscriber may do to the loop from inside its callbacks.
pub struct Ops<'a> {
    epoll: &'a Epoll,
    sub: usize,
    timers: &'a mut Vec<(Instant, usize, u64)>,
    dump: &'a mut bool,
}

impl Ops<'_> {
    fn token(&self, key: u64) -> u64 {
        debug_assert!(key < 1 << KEY_BITS);
        (self.sub as u64) << KEY_BITS | key
    }

    /// Watches `fd` for `events`; readiness arrives as `ready(key, ..)`. Level-triggered.
    pub fn add(&mut self, fd: BorrowedFd<'_>, events: EpollFlags, key: u64) -> nix::Result<()> {
        self.epoll.add(fd, EpollEvent::new(events, self.token(key)))
    }

    /// Changes what `fd` (added by this subscriber) is watched for.
    pub fn modify(&mut self, fd: BorrowedFd<'_>, events: EpollFlags, key: u64) -> nix::Result<()> {
        let mut ev = EpollEvent::new(events, self.token(key));
        self.epoll.modify(fd, &mut ev)
    }

    /// Stops watching `fd`. Close it only after this (or let the close remove it).
    pub fn delete(&mut self, fd: BorrowedFd<'_>) {
        let _ = self.epoll.delete(fd);
    }

    /// Calls `timer(key, ..)` at `at` (or on the next turn of the loop if it has passed).
    pub fn timer(&mut self, at: Instant, key: u64) {
        self.timers.push((at, self.sub, key));
    }

    /// Asks for a state dump of every subscriber (and the daemon's hook) once this turn ends.
    pub fn request_dump(&mut self) {
        *self.dump = true;
    }
}

type DumpHook = Box<dyn Fn(&mut String) + Send>;

struct Shared {
    epoll: Epoll,
    wake: EventFd,
    /// Subscribers added since the loop last looked, with their index.
    added: Mutex<Vec<(usize, Box<dyn Subscriber>)>>,
    /// Indices of subscribers kicked since the loop last looked.
    kicked: Mutex<Vec<usize>>,
    /// Wakes the eventfd only when nothing is pending yet: one write per turn of the loop.
    wake_pending: AtomicBool,
    next_sub: AtomicUsize,
    dump_hook: Mutex<Option<DumpHook>>,
    /// Times the loop woke up (for tests).
    wakeups: AtomicU64,
}

/// The loop, shared by whoever adds subscribers; [`EventLoop::spawn`] starts its thread.
#[derive(Clone)]
pub struct EventLoop(Arc<Shared>);

/// Lets code on any thread wake one subscriber (its `kicked` runs on the loop thread).
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    sub: usize,
}

impl Handle {
    pub fn kick(&self) {
        lock(&self.shared.kicked).push(self.sub);
        self.shared.wake();
    }
}

impl Shared {
    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.wake.write(1);
        }
    }
}

impl EventLoop {
    pub fn new() -> std::io::Result<EventLoop> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        epoll.add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        Ok(EventLoop(Arc::new(Shared {
            epoll,
            wake,
            added: Mutex::new(Vec::new()),
            kicked: Mutex::new(Vec::new()),
            wake_pending: AtomicBool::new(false),
            next_sub: AtomicUsize::new(0),
            dump_hook: Mutex::new(None),
            wakeups: AtomicU64::new(0),
        })))
    }

    /// Adds a subscriber (from any thread, before or after the loop runs); its `init` runs on the
    /// loop thread. The handle kicks it.
    pub fn add(&self, sub: Box<dyn Subscriber>) -> Handle {
        let idx = self.0.next_sub.fetch_add(1, Ordering::Relaxed);
        lock(&self.0.added).push((idx, sub));
        self.0.wake();
        Handle {
            shared: self.0.clone(),
            sub: idx,
        }
    }

    /// What the SIGUSR1 dump prints before the subscribers' lines (the task service's state).
    pub fn set_dump_hook(&self, f: DumpHook) {
        *lock(&self.0.dump_hook) = Some(f);
    }

    /// Starts the loop's thread; it runs for the rest of the process.
    pub fn spawn(&self) -> std::io::Result<()> {
        let sh = self.0.clone();
        std::thread::Builder::new()
            .name("loop".into())
            .stack_size(128 * 1024)
            .spawn(move || run(&sh))
            .map(drop)
    }

    #[cfg(test)]
    pub fn wakeups(&self) -> u64 {
        self.0.wakeups.load(Ordering::Relaxed)
    }
}

fn run(sh: &Shared) {
    let mut subs: HashMap<usize, Box<dyn Subscriber>> = HashMap::new();
    let mut timers: Vec<(Instant, usize, u64)> = Vec::new();
    let mut events = vec![EpollEvent::empty(); 64];
    let mut dump = false;
    macro_rules! ops {
        ($idx:expr) => {
            Ops {
                epoll: &sh.epoll,
                sub: $idx,
                timers: &mut timers,
                dump: &mut dump,
            }
        };
    }
    loop {
        // Due timers, then sleep until the next one (or an event).
        let now = Instant::now();
        let due: Vec<(usize, u64)> = {
            let mut due = Vec::new();
            timers.retain(|&(at, s, k)| {
                if at <= now {
                    due.push((s, k));
                    false
                } else {
                    true
                }
            });
            due
        };
        for (s, k) in due {
            if let Some(sub) = subs.get_mut(&s) {
                sub.timer(k, &mut ops!(s));
            }
        }
        let timeout = match timers.iter().map(|t| t.0).min() {
            None => EpollTimeout::NONE,
            // epoll_wait counts whole milliseconds: round up, so a timer never spins at 0.
            Some(t) => {
                let ms = t
                    .saturating_duration_since(Instant::now())
                    .as_micros()
                    .div_ceil(1000)
                    .clamp(0, 60_000);
                EpollTimeout::try_from(ms as i32).unwrap_or(EpollTimeout::NONE)
            }
        };
        let n = match sh.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("event loop: epoll_wait: {e}");
                return;
            }
        };
        sh.wakeups.fetch_add(1, Ordering::Relaxed);
        for ev in &events[..n] {
            let t = ev.data();
            if t == WAKE {
                let _ = sh.wake.read();
                sh.wake_pending.store(false, Ordering::Release);
                let added = std::mem::take(&mut *lock(&sh.added));
                for (idx, mut sub) in added {
                    sub.init(&mut ops!(idx));
                    subs.insert(idx, sub);
                }
                let mut kicked = std::mem::take(&mut *lock(&sh.kicked));
                kicked.sort_unstable();
                kicked.dedup();
                for idx in kicked {
                    if let Some(sub) = subs.get_mut(&idx) {
                        sub.kicked(&mut ops!(idx));
                    }
                }
                continue;
            }
            let idx = (t >> KEY_BITS) as usize;
            if let Some(sub) = subs.get_mut(&idx) {
                sub.ready(t & ((1 << KEY_BITS) - 1), ev.events(), &mut ops!(idx));
            }
        }
        if std::mem::take(&mut dump) {
            let mut out = String::from("state dump (SIGUSR1):\n");
            if let Some(f) = lock(&sh.dump_hook).as_ref() {
                f(&mut out);
            }
            let mut idx: Vec<_> = subs.keys().copied().collect();
            idx.sort_unstable();
            let names: Vec<&str> = idx.iter().map(|i| subs[i].name()).collect();
            out.push_str(&format!(
                "  event loop: {} subscribers ({}), {} timers\n",
                subs.len(),
                names.join(", "),
                timers.len()
            ));
            for i in idx {
                subs[&i].dump(&mut out);
            }
            threads(&mut out);
            for line in out.lines() {
                log::info!("{line}");
            }
        }
    }
}

/// Every thread of the process: name, state and where the kernel has it waiting.
fn threads(out: &mut String) {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for e in dir.flatten() {
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, r)| &r[..1]).unwrap_or("?");
        let wchan = std::fs::read_to_string(p.join("wchan")).unwrap_or_default();
        out.push_str(&format!(
            "  thread {} {:<10} state {state} waiting in {}\n",
            e.file_name().to_string_lossy(),
            comm.trim(),
            if wchan.is_empty() || wchan == "0" {
                "-"
            } else {
                wchan.trim()
            }
        ));
    }
}

/// Calls a closure whenever an fd is readable: signals and OOM notifications. The closure must
/// consume what made the fd readable, must not block, and the fd must stay open.
pub struct Watch {
    fd: std::os::fd::RawFd,
    name: &'static str,
    on_ready: Box<dyn FnMut() + Send>,
}

impl Watch {
    pub fn new(name: &'static str, fd: std::os::fd::RawFd, on_ready: Box<dyn FnMut() + Send>) -> Box<Watch> {
        Box::new(Watch { fd, name, on_ready })
    }
}

impl Subscriber for Watch {
    fn name(&self) -> &'static str {
        self.name
    }

    fn init(&mut self, ops: &mut Ops) {
        // SAFETY: the owner of `fd` keeps it open for as long as the loop runs (see `Watch`).
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        match ops.add(fd, EpollFlags::EPOLLIN, 0) {
            // Whatever arrived before it was watched.
            Ok(()) => (self.on_ready)(),
            Err(e) => log::error!("event loop: watching fd {} ({}): {e}", fd.as_raw_fd(), self.name),
        }
    }

    fn ready(&mut self, _key: u64, _events: EpollFlags, _ops: &mut Ops) {
        (self.on_ready)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    struct Counter {
        tx: std::sync::mpsc::Sender<&'static str>,
    }

    impl Subscriber for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        fn init(&mut self, ops: &mut Ops) {
            ops.timer(Instant::now() + Duration::from_millis(20), 7);
            let _ = self.tx.send("init");
        }
        fn ready(&mut self, _: u64, _: EpollFlags, _: &mut Ops) {}
        fn kicked(&mut self, _: &mut Ops) {
            let _ = self.tx.send("kicked");
        }
        fn timer(&mut self, key: u64, _: &mut Ops) {
            assert_eq!(key, 7);
            let _ = self.tx.send("timer");
        }
    }

    #[test]
    fn subscribers_get_init_kicks_timers_and_readiness() {
        let lp = EventLoop::new().unwrap();
        lp.spawn().unwrap();
        let (tx, rx) = channel();
        let h = lp.add(Box::new(Counter { tx }));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "init");
        h.kick();
        let mut seen = vec![
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        ];
        seen.sort_unstable();
        assert_eq!(seen, ["kicked", "timer"]);

        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let (rtx, rrx) = channel();
        let rfd = r.as_raw_fd();
        lp.add(Watch::new(
            "pipe",
            rfd,
            Box::new(move || {
                let mut b = [0u8; 8];
                if nix::unistd::read(rfd, &mut b).is_ok_and(|n| n > 0) {
                    let _ = rtx.send(b[0]);
                }
            }),
        ));
        nix::unistd::write(&w, b"x").unwrap();
        assert_eq!(rrx.recv_timeout(Duration::from_secs(10)).unwrap(), b'x');
        drop(r);
    }
}
