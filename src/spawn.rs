//! Starting a program the way Go's os/exec does on Linux: `clone(CLONE_VM | CLONE_VFORK)`, so the
//! shim's page tables are neither copied nor made copy-on-write (std's `Command` forks as soon as a
//! `pre_exec` hook is set, and runc needs PR_SET_PDEATHSIG). The child runs on a small stack of its
//! own, in our memory, while the calling thread waits: it only makes raw system calls (no allocation,
//! no locks) until `execve`.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::signal::{pthread_sigmask, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::stat::SFlag;
use nix::unistd::{access, dup2, AccessFlags, Pid};

/// What one of the child's fds 0, 1 and 2 is.
pub enum Io {
    Null,
    Fd(OwnedFd),
    /// A new pipe; the parent's end is returned in [`Child`].
    Piped,
}

pub struct Cmd {
    program: CString,
    argv: Vec<CString>,
    env_remove: Vec<Vec<u8>>,
    stdio: [Io; 3],
    pdeathsig: Option<Signal>,
}

pub struct Child {
    pub pid: u32,
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

fn cstring(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        let p = program.as_ref().as_bytes();
        Cmd {
            program: CString::new(p).unwrap_or_default(),
            argv: vec![CString::new(p).unwrap_or_default()],
            env_remove: Vec::new(),
            stdio: [Io::Null, Io::Null, Io::Null],
            pdeathsig: None,
        }
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Cmd {
        // An argument with a NUL cannot be passed; execve gets it cut (as an empty string) and fails
        // loudly in the program rather than here.
        self.argv.push(CString::new(a.as_ref().as_bytes()).unwrap_or_default());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Cmd {
        for a in args {
            self.arg(a);
        }
        self
    }

    pub fn env_remove(&mut self, key: &str) -> &mut Cmd {
        self.env_remove.push(key.as_bytes().to_vec());
        self
    }

    pub fn stdio(&mut self, stdin: Io, stdout: Io, stderr: Io) -> &mut Cmd {
        self.stdio = [stdin, stdout, stderr];
        self
    }

    /// PR_SET_PDEATHSIG in the child: the signal it gets when the thread that started it exits.
    pub fn pdeathsig(&mut self, sig: Signal) -> &mut Cmd {
        self.pdeathsig = Some(sig);
        self
    }

    /// Starts the program. The caller reaps it (the reaper's lock must be held, so that its exit is not
    /// collected before its waiter is registered).
    pub fn spawn(&mut self) -> io::Result<Child> {
        let path = resolve(&self.program)?;
        let mut envp: Vec<CString> = Vec::new();
        for (k, v) in std::env::vars_os() {
            if self.env_remove.iter().any(|r| r.as_slice() == k.as_bytes()) {
                continue;
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            if let Ok(c) = CString::new(kv) {
                envp.push(c);
            }
        }
        let mut argv_p: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv_p.push(std::ptr::null());
        let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
        envp_p.push(std::ptr::null());

        // The child's fds 0..2, and our ends of its pipes. Everything we open is close-on-exec.
        let mut keep: Vec<OwnedFd> = Vec::new();
        let mut ours: [Option<File>; 3] = [None, None, None];
        let mut fds = [-1 as RawFd; 3];
        let stdio = std::mem::replace(&mut self.stdio, [Io::Null, Io::Null, Io::Null]);
        for (i, io) in stdio.into_iter().enumerate() {
            let child_end = match io {
                Io::Fd(fd) => fd,
                // std opens close-on-exec.
                Io::Null => File::options().read(i == 0).write(i != 0).open("/dev/null")?.into(),
                Io::Piped => {
                    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
                    let (child, parent) = if i == 0 { (r, w) } else { (w, r) };
                    ours[i] = Some(File::from(parent));
                    child
                }
            };
            fds[i] = child_end.as_raw_fd();
            keep.push(child_end);
        }

        let ctx = ChildCtx {
            path: path.as_ptr(),
            argv: argv_p.as_ptr(),
            envp: envp_p.as_ptr(),
            fds,
            pdeathsig: self.pdeathsig,
            errno: AtomicI32::new(0),
        };
        // The child's stack: it makes a few system calls and execs.
        let mut stack = vec![0u128; 2048]; // 32 KiB, 16-byte aligned
        let top = stack.as_mut_ptr_range().end.cast::<libc::c_void>();

        // No signal handler may run in the child (it shares our memory): block all of them across the
        // clone; the child puts the handlers back to default before unblocking.
        let mut old = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old))?;
        // SAFETY: `child_main` is a plain extern "C" fn that only reads `ctx` and makes
        // async-signal-safe calls, allocating nothing; `top` ends a 16-byte aligned 32 KiB stack that we
        // own and keep alive until clone returns; with CLONE_VM | CLONE_VFORK, clone returns only once
        // the child has exec'd or exited, so it never uses `stack`, `ctx`, `path`, `argv_p`, `envp_p` or
        // the fds in `keep` after they are dropped; every signal is blocked, so none of our handlers can
        // run on the child's stack.
        let pid = unsafe {
            libc::clone(
                child_main,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::from_ref(&ctx).cast_mut().cast(),
            )
        };
        let clone_err = io::Error::last_os_error();
        let restored = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        drop(stack);
        drop(keep);
        if pid < 0 {
            return Err(clone_err);
        }
        // CLONE_VFORK: the child has exec'd or exited by now; `errno` says which.
        let errno = ctx.errno.load(Ordering::Acquire);
        if errno != 0 {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            return Err(io::Error::from_raw_os_error(errno));
        }
        if let Err(e) = restored {
            // Cannot happen with a mask pthread_sigmask just returned; said loudly if it ever does.
            log::error!("restoring the signal mask after clone: {e}");
        }
        let [stdin, stdout, stderr] = ours;
        Ok(Child {
            pid: pid as u32,
            stdin,
            stdout,
            stderr,
        })
    }
}

/// `execvp`'s PATH search, done before the clone (the child must not allocate).
fn resolve(program: &CString) -> io::Result<CString> {
    let p = program.as_bytes();
    if p.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if p.contains(&b'/') {
        return Ok(program.clone());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let dir = if dir.as_os_str().is_empty() { ".".into() } else { dir };
        let full = dir.join(OsStr::from_bytes(p));
        let c = cstring(full.as_os_str().as_bytes())?;
        if access(c.as_c_str(), AccessFlags::X_OK).is_ok()
            && nix::sys::stat::stat(c.as_c_str())
                .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFDIR)
        {
            return Ok(c);
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

struct ChildCtx {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    fds: [RawFd; 3],
    pdeathsig: Option<Signal>,
    /// Set by the child when it fails before or at execve.
    errno: AtomicI32,
}

/// Runs in the child, on its own stack, in the parent's memory, with every signal blocked. From here
/// to execve: async-signal-safe calls only (nix's wrappers of them are thin), no allocation, no lock.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `&ChildCtx` that `spawn` passed to clone; `spawn` is suspended (CLONE_VFORK)
    // and keeps it alive until this child has exec'd or exited.
    let ctx = unsafe { &*arg.cast::<ChildCtx>() };
    let fail = |e: Errno| -> ! {
        let errno = if e as i32 == 0 { libc::EINVAL } else { e as i32 };
        ctx.errno.store(errno, Ordering::Release);
        crate::sys::exit_now(127)
    };
    // Handlers are the parent's code: back to the default action before signals are let in.
    for sig in 1..65 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            default_if_handled(sig);
        }
    }
    // Rust ignores SIGPIPE; the program gets the default, as with std's Command.
    if let Err(e) = to_default(libc::SIGPIPE) {
        fail(e);
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
        fail(e);
    }
    if let Some(sig) = ctx.pdeathsig {
        if let Err(e) = nix::sys::prctl::set_pdeathsig(sig) {
            fail(e);
        }
    }
    // Lift sources that sit in 0..=2 first, so placing one cannot clobber another.
    let mut src = ctx.fds;
    for s in src.iter_mut() {
        if *s < 3 {
            match fcntl(*s, FcntlArg::F_DUPFD_CLOEXEC(3)) {
                Ok(fd) => *s = fd,
                Err(e) => fail(e),
            }
        }
    }
    for (i, s) in (0..).zip(src) {
        if let Err(e) = dup2(s, i) {
            fail(e);
        }
    }
    // SAFETY: path, argv and envp point to NUL-terminated strings and NULL-terminated arrays that
    // `spawn` built and keeps alive until we have exec'd (nix's execve would allocate).
    unsafe { libc::execve(ctx.path, ctx.argv, ctx.envp) };
    fail(Errno::last())
}

/// Puts `sig` back to its default action if a handler (our code) is installed; ignored stays ignored,
/// as exec keeps it.
fn default_if_handled(sig: libc::c_int) {
    let mut sa = MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: a null new action only queries; the kernel writes the current one to `sa`.
    if unsafe { libc::sigaction(sig, std::ptr::null(), sa.as_mut_ptr()) } != 0 {
        return;
    }
    // SAFETY: sigaction succeeded, so it wrote the whole struct.
    let sa = unsafe { sa.assume_init() };
    if sa.sa_sigaction != libc::SIG_DFL && sa.sa_sigaction != libc::SIG_IGN {
        let _ = to_default(sig);
    }
}

/// The default action for `sig`, with no flags and an empty mask.
fn to_default(sig: libc::c_int) -> Result<(), Errno> {
    // signal(2) would do, but glibc's adds SA_RESTART; nix's `Signal` has no real-time signals.
    let mut sa = MaybeUninit::<libc::sigaction>::zeroed();
    let p = sa.as_mut_ptr();
    // SAFETY: `p` points to `sa`, alive and zeroed (a valid sigaction: SIG_DFL, no flags, empty mask);
    // SIG_DFL installs no code of ours.
    Errno::result(unsafe { libc::sigaction(sig, p, std::ptr::null_mut()) }).map(drop)
}

// Tested in reaper.rs: a unit test that reaps children must be the only one (waitpid(-1) in the
// reap loop would take another test's child).
