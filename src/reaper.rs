//! The one reaper. The shim is a child subreaper: container inits and execs are re-parented to it,
//! and runc commands are its children. A single `waitpid(-1, WNOHANG)` loop (run on SIGCHLD) collects
//! every exit. Commands spawned through [`spawn`] get their exit on their own channel; every other exit
//! goes to the monitor (the task service). Spawning holds the reaper lock, so a command's exit can never
//! be collected before its waiter is registered; nobody ever calls `Child::wait` (that races the loop
//! and yields ECHILD).

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// An exit collected by the reaper. `status` is the exit code, or 128 + signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    pub status: u32,
}

struct State {
    waiters: Vec<(u32, Sender<u32>)>,
    monitor: Option<Box<dyn Fn(Exit) + Send>>,
}

static STATE: Mutex<State> = Mutex::new(State {
    waiters: Vec::new(),
    monitor: None,
});

fn lock() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Routes exits of processes not spawned through [`spawn`] (container processes) to `tx`.
pub fn set_monitor(f: Box<dyn Fn(Exit) + Send>) {
    lock().monitor = Some(f);
}

/// Collects every exited child. Called from the signal thread on SIGCHLD.
pub fn reap() {
    let mut st = lock();
    loop {
        let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code as u32),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as u32),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::warn!("waitpid: {e}");
                return;
            }
        };
        let pid = pid.as_raw() as u32;
        if let Some(i) = st.waiters.iter().position(|(p, _)| *p == pid) {
            let (_, tx) = st.waiters.swap_remove(i);
            let _ = tx.send(status);
        } else if let Some(m) = &st.monitor {
            m(Exit { pid, status });
        }
    }
}

/// A child spawned through the reaper; its exit status arrives from the reap loop.
pub struct Spawned<C = Child> {
    pub child: C,
    rx: Receiver<u32>,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl<C> Spawned<C> {
    pub fn wait(&self) -> u32 {
        // The sender is dropped only after sending, so recv fails only if the reaper state was torn down.
        self.rx.recv().unwrap_or(255)
    }

    /// The exit status, or None if it is still running after `d`.
    pub fn wait_timeout(&self, d: std::time::Duration) -> Option<u32> {
        match self.rx.recv_timeout(d) {
            Ok(s) => Some(s),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Some(255),
        }
    }
}

/// Spawns `cmd`, registering its waiter atomically with respect to the reap loop.
pub fn spawn(cmd: &mut Command) -> io::Result<Spawned> {
    let mut st = lock();
    let child = cmd.spawn()?;
    let (tx, rx) = channel();
    st.waiters.push((child.id(), tx));
    Ok(Spawned { child, rx })
}

/// As [`spawn`], for a [`crate::spawn::Cmd`] (no fork: the shim's memory is not copied).
pub fn spawn_cmd(cmd: &mut crate::spawn::Cmd) -> io::Result<Spawned<crate::spawn::Child>> {
    let mut st = lock();
    let child = cmd.spawn()?;
    let (tx, rx) = channel();
    st.waiters.push((child.pid, tx));
    Ok(Spawned { child, rx })
}

/// Forks with the reaper lock held and waits for the child through the reap loop; `child`'s result is
/// the child's exit status.
///
/// # Safety
/// `child` runs in the forked child of a multithreaded process: it must make only async-signal-safe
/// calls (no allocation, no lock, no `std::env`), as std's `pre_exec` hook.
pub unsafe fn fork_and_wait(child: impl FnOnce() -> i32) -> io::Result<u32> {
    let rx = {
        let mut st = lock();
        // SAFETY: the child runs only `child`, which our caller promises is async-signal-safe, and
        // leaves by _exit (no atexit handlers, no destructors of the parent's state).
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => crate::sys::exit_now(child()),
            nix::unistd::ForkResult::Parent { child: pid } => {
                let (tx, rx) = channel();
                st.waiters.push((pid.as_raw() as u32, tx));
                rx
            }
        }
    };
    Ok(rx.recv().unwrap_or(255))
}

/// Signals, as a subscriber of the event loop: the handlers only write to a pipe the loop watches.
/// SIGCHLD reaps; SIGTERM/SIGINT call `on_term`; SIGUSR1 asks the loop for a state dump in the
/// log; SIGUSR2, SIGALRM and SIGHUP are caught and ignored (their default would end the shim, and
/// with it containerd's view of the containers: a stray `kill -USR1` must not cost a pod).
/// SIGPIPE is already ignored by the Rust runtime. Caught (not ignored) signals are reset to their
/// defaults in runc and the containers at exec.
struct Signals {
    pipe: std::os::fd::OwnedFd,
    term: std::sync::Arc<std::sync::atomic::AtomicBool>,
    dump: std::sync::Arc<std::sync::atomic::AtomicBool>,
    on_term: Box<dyn Fn() + Send>,
}

impl crate::event_loop::Subscriber for Signals {
    fn name(&self) -> &'static str {
        "signals"
    }

    fn init(&mut self, ops: &mut crate::event_loop::Ops) {
        use std::os::fd::AsFd;
        if let Err(e) = ops.add(self.pipe.as_fd(), nix::sys::epoll::EpollFlags::EPOLLIN, 0) {
            log::error!("watching signals: {e}");
        }
        // A child may have exited before the handler was installed.
        self.ready(0, nix::sys::epoll::EpollFlags::EPOLLIN, ops);
    }

    fn ready(&mut self, _: u64, _: nix::sys::epoll::EpollFlags, ops: &mut crate::event_loop::Ops) {
        use std::sync::atomic::Ordering;
        let mut buf = [0u8; 64];
        while nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&self.pipe), &mut buf).is_ok_and(|n| n > 0) {}
        reap();
        if self.dump.swap(false, Ordering::Relaxed) {
            ops.request_dump();
        }
        if self.term.swap(false, Ordering::Relaxed) {
            (self.on_term)();
        }
    }
}

/// Installs the signal handlers and adds their subscriber to `lp`.
pub fn watch_signals(lp: &crate::event_loop::EventLoop, on_term: Box<dyn Fn() + Send>) -> io::Result<()> {
    use signal_hook::consts::{SIGALRM, SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    let term = Arc::new(AtomicBool::new(false));
    let dump = Arc::new(AtomicBool::new(false));
    let ignored = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register(sig, term.clone())?;
    }
    signal_hook::flag::register(SIGUSR1, dump.clone())?;
    for sig in [SIGUSR2, SIGALRM, SIGHUP] {
        signal_hook::flag::register(sig, ignored.clone())?;
    }
    for sig in [SIGCHLD, SIGTERM, SIGINT, SIGUSR1] {
        signal_hook::low_level::pipe::register_raw(sig, std::os::fd::AsRawFd::as_raw_fd(&w))?;
    }
    // The handlers write to it for the rest of the process's life.
    std::mem::forget(w);
    lp.add(Box::new(Signals {
        pipe: r,
        term,
        dump,
        on_term,
    }));
    Ok(())
}

/// Starts the signal thread: SIGCHLD reaps; SIGTERM/SIGINT call `on_term` (None: ignore them).
pub fn start_signal_thread(on_term: Option<Box<dyn Fn() + Send>>) -> io::Result<()> {
    use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
    let mut sigs = vec![SIGCHLD];
    if on_term.is_some() {
        sigs.extend([SIGTERM, SIGINT]);
    }
    let mut signals = signal_hook::iterator::Signals::new(&sigs)?;
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGCHLD {
                    reap();
                } else if let Some(f) = &on_term {
                    f();
                }
            }
        })?;
    // A child may have exited before the handler was installed.
    reap();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only unit test that spawns children: waitpid(-1) would steal other tests' children.
    #[test]
    fn exits_reach_the_waiter_and_the_monitor() {
        start_signal_thread(None).unwrap();
        let (tx, rx) = channel();
        set_monitor(Box::new(move |e| {
            let _ = tx.send(e);
        }));
        let ok = spawn(Command::new("true").arg("")).unwrap();
        assert_eq!(ok.wait(), 0);
        let three = spawn(Command::new("sh").args(["-c", "exit 3"])).unwrap();
        assert_eq!(three.wait(), 3);
        // spawn::Cmd (clone + execve): output, argv[0], a removed variable; exec errors come back.
        std::env::set_var("RR_SPAWN_TEST_DROP", "1");
        let mut c = crate::spawn::Cmd::new("sh");
        c.args(["-c", "echo out $0 ${RR_SPAWN_TEST_DROP:-gone}; echo err >&2", "arg0"])
            .env_remove("RR_SPAWN_TEST_DROP")
            .stdio(crate::spawn::Io::Null, crate::spawn::Io::Piped, crate::spawn::Io::Piped);
        let mut sp = spawn_cmd(&mut c).unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        std::io::Read::read_to_string(&mut sp.child.stdout.take().unwrap(), &mut out).unwrap();
        std::io::Read::read_to_string(&mut sp.child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(sp.wait(), 0);
        assert_eq!((out.as_str(), err.as_str()), ("out arg0 gone\n", "err\n"));
        // The program starts with no signal blocked, and ignores what we ignore but SIGPIPE (Rust
        // ignores it; the clone blocks everything until the child has reset its handlers).
        let ours = std::fs::read_to_string("/proc/self/status").unwrap();
        let ignored = ours.lines().find_map(|l| l.strip_prefix("SigIgn:\t")).unwrap();
        let ignored = u64::from_str_radix(ignored, 16).unwrap();
        assert_ne!(ignored & 1 << (libc::SIGPIPE - 1), 0);
        let expected = format!(
            "SigBlk:\t{:016x}\nSigIgn:\t{:016x}\n",
            0,
            ignored & !(1 << (libc::SIGPIPE - 1))
        );
        let mut c = crate::spawn::Cmd::new("grep");
        c.args(["-E", "^Sig(Blk|Ign):", "/proc/self/status"])
            .pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .stdio(crate::spawn::Io::Null, crate::spawn::Io::Piped, crate::spawn::Io::Null);
        let mut sp = spawn_cmd(&mut c).unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut sp.child.stdout.take().unwrap(), &mut out).unwrap();
        assert_eq!(sp.wait(), 0);
        assert_eq!(out, expected);
        let e = spawn_cmd(&mut crate::spawn::Cmd::new("rr-no-such-program"))
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        // A directory: execve fails in the child, and that error comes back.
        let e = spawn_cmd(&mut crate::spawn::Cmd::new("/")).err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        let sleeper = spawn(Command::new("sleep").arg("60")).unwrap();
        nix::sys::signal::kill(Pid::from_raw(sleeper.pid() as i32), nix::sys::signal::SIGKILL).unwrap();
        assert_eq!(sleeper.wait(), 137);
        // Not spawned through the reaper: a grandchild-style exit goes to the monitor.
        #[allow(clippy::zombie_processes)] // the reap loop collects it, never Child::wait
        let plain = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let exit = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(
            exit,
            Exit {
                pid: plain.id(),
                status: 7
            }
        );
    }
}
