//! Starting a program the way Go's os/exec does on Linux: `clone(CLONE_VM | CLONE_VFORK)`, so the
//! shim's page tables are neither copied nor made copy-on-write (std's `Command` forks as soon as a
//! `pre_exec` hook is set, and runc needs PR_SET_PDEATHSIG). The child runs on a small stack of its
//! own, in our memory, while the calling thread waits: it only makes raw system calls (no allocation,
//! no locks) until `execve`.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

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
    pdeathsig: libc::c_int,
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
            pdeathsig: 0,
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
    pub fn pdeathsig(&mut self, sig: libc::c_int) -> &mut Cmd {
        self.pdeathsig = sig;
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
                Io::Null => {
                    let flags = if i == 0 { libc::O_RDONLY } else { libc::O_WRONLY };
                    open_cloexec(c"/dev/null", flags)?
                }
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

        let mut ctx = ChildCtx {
            path: path.as_ptr(),
            argv: argv_p.as_ptr(),
            envp: envp_p.as_ptr(),
            fds,
            pdeathsig: self.pdeathsig,
            errno: 0,
        };
        // The child's stack: it makes a few system calls and execs.
        let mut stack = vec![0u128; 2048]; // 32 KiB, 16-byte aligned
        let top = unsafe { stack.as_mut_ptr().add(stack.len()) }.cast::<libc::c_void>();

        // No signal handler may run in the child (it shares our memory): block all of them across the
        // clone; the child puts the handlers back to default before unblocking.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        let pid = unsafe {
            libc::clone(
                child_main,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut ctx as *mut ChildCtx).cast(),
            )
        };
        let clone_err = io::Error::last_os_error();
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        drop(stack);
        drop(keep);
        if pid < 0 {
            return Err(clone_err);
        }
        // CLONE_VFORK: the child has exec'd or exited by now; `errno` says which.
        let errno = unsafe { std::ptr::read_volatile(&ctx.errno) };
        if errno != 0 {
            let mut st = 0;
            unsafe { libc::waitpid(pid, &mut st, 0) };
            return Err(io::Error::from_raw_os_error(errno));
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
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            if unsafe { libc::stat(c.as_ptr(), &mut st) } == 0 && st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Ok(c);
            }
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

fn open_cloexec(path: &std::ffi::CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
struct ChildCtx {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    fds: [RawFd; 3],
    pdeathsig: libc::c_int,
    /// Set by the child when it fails before or at execve.
    errno: libc::c_int,
}

/// Runs in the child, on its own stack, in the parent's memory, with every signal blocked.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    unsafe {
        let ctx = &mut *arg.cast::<ChildCtx>();
        let fail = |ctx: &mut ChildCtx| -> ! {
            ctx.errno = *libc::__errno_location();
            if ctx.errno == 0 {
                ctx.errno = libc::EINVAL;
            }
            libc::_exit(127)
        };
        // Handlers are the parent's code: back to the default action before signals are let in.
        let mut sa: libc::sigaction = std::mem::zeroed();
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            if libc::sigaction(sig, std::ptr::null(), &mut sa) == 0
                && sa.sa_sigaction != libc::SIG_DFL
                && sa.sa_sigaction != libc::SIG_IGN
            {
                sa.sa_sigaction = libc::SIG_DFL;
                sa.sa_flags = 0;
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        // Rust ignores SIGPIPE; the program gets the default, as with std's Command.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if ctx.pdeathsig != 0 && libc::prctl(libc::PR_SET_PDEATHSIG, ctx.pdeathsig as libc::c_ulong) != 0 {
            fail(ctx);
        }
        // Lift sources that sit in 0..=2 first, so placing one cannot clobber another.
        let mut src = ctx.fds;
        for s in src.iter_mut() {
            if *s < 3 {
                *s = libc::fcntl(*s, libc::F_DUPFD_CLOEXEC, 3);
                if *s < 0 {
                    fail(ctx);
                }
            }
        }
        for (i, s) in src.iter().enumerate() {
            if libc::dup2(*s, i as libc::c_int) < 0 {
                fail(ctx);
            }
        }
        libc::execve(ctx.path, ctx.argv, ctx.envp);
        fail(ctx)
    }
}

// Tested in reaper.rs: a unit test that reaps children must be the only one (waitpid(-1) in the
// reap loop would take another test's child).
