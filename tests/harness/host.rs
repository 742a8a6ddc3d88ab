//! The host layer: what any test needs whatever it drives. Bounded commands (`run_with_timeout`,
//! `run_bounded`, `wait_bounded`), polling (`eventually`), leftover scans (mounts from mountinfo,
//! cgroup trees, listening sockets, zombies), unique ids, signals, and children killed on drop.
//! Only std and nix; nothing here knows containerd.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Longest ctr_stdin holds stdin open waiting for the process to start.
const STDIN_GATE_TIMEOUT: Duration = Duration::from_secs(5);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A number no other call in this test process gets: with the pid, a unique name.
pub fn next_n() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// Says why a test returns without testing: "skipped: <reason>" straight to fd 2 (cargo test
/// captures print! of passing tests; a skip must be visible).
pub fn skip(reason: &str) {
    let _ = writeln!(std::io::stderr(), "skipped: {reason}");
}

/// `prefix-<pid>-<n>`: unique among concurrently running tests (threads and
/// processes), and a valid container id.
pub fn unique_id(prefix: &str) -> String {
    format!("{}-{}-{}", prefix, std::process::id(), next_n())
}

pub fn is_root() -> bool {
    // std has no geteuid(); /proc/self/status says "Uid: real effective ...".
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Runs `cmd` with an optional stdin, collecting its output; kills it and
/// returns Err if it has not exited within `timeout`. Pipes are drained by
/// threads so a chatty child cannot block on a full pipe. The one bounded
/// command runner of every layer.
pub fn run_with_timeout(cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output, String> {
    run_gated(cmd, input, None, timeout)
}

/// `run_with_timeout` with no stdin.
pub fn run_bounded(cmd: Command, timeout: Duration) -> Result<Output, String> {
    run_gated(cmd, None, None, timeout)
}

/// `run_with_timeout`, but stdin is closed (EOF) only once `close_gate`
/// fires or STDIN_GATE_TIMEOUT passed, whichever is first.
pub fn run_gated(
    mut cmd: Command,
    input: Option<&[u8]>,
    close_gate: Option<mpsc::Receiver<()>>,
    timeout: Duration,
) -> Result<Output, String> {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    if let Some(data) = input {
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        // Writing from a thread: the child may not read all of it before it
        // writes output; dropping stdin at the end signals EOF.
        thread::spawn(move || {
            let _ = stdin.write_all(&data);
            if let Some(gate) = close_gate {
                let _ = gate.recv_timeout(STDIN_GATE_TIMEOUT);
            }
        });
    }
    let out_rx = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err_rx = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let status = wait_bounded(&mut child, timeout)
        .ok_or_else(|| format!("{cmd:?} did not finish within {timeout:?}; killed it"))?;
    // A grandchild could hold the pipes open; don't wait for it forever.
    let grace = Duration::from_secs(5);
    Ok(Output {
        status,
        stdout: out_rx.recv_timeout(grace).unwrap_or_default(),
        stderr: err_rx.recv_timeout(grace).unwrap_or_default(),
    })
}

/// Reads `r` to its end on a thread; the receiver gets everything once it is done.
pub fn drain(r: Option<Box<dyn Read + Send>>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// Waits for `child` for at most `timeout`; on timeout (or a failed wait)
/// kills it, reaps it and returns None.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// SIGTERM to `child`, then up to `grace` for it to exit; if it has not, kills and reaps it and
/// returns false. Never panics (cleanup runs it while a failed test unwinds).
pub fn term_then_kill(child: &mut Child, grace: Duration) -> bool {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    wait_bounded(child, grace).is_some()
}

/// Unmounts (lazily, deepest first) everything under `dir`, then removes it.
/// Unmounts whatever is mounted under `dir`, then removes it.
pub fn cleanup_dir(dir: &Path) {
    for m in mounts_under(dir) {
        let _ = Command::new("umount").args(["-l", &m]).stderr(Stdio::null()).status();
    }
    if let Err(e) = fs::remove_dir_all(dir) {
        if dir.exists() {
            eprintln!("harness: could not remove {}: {e}", dir.display());
        }
    }
}

/// Mount points at or under `dir` per /proc/self/mountinfo, deepest first.
/// Mount points at or under `dir` in this mount namespace (which containerd
/// and the shims share), deepest first: the order to unmount them in.
/// Every harness's one reader of mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    let prefix = format!("{dir}/");
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| *m == *dir || m.starts_with(&prefix))
        .collect();
    mounts.reverse(); // later mounts may sit on top of earlier ones
    mounts.sort_by_key(|m| std::cmp::Reverse(m.matches('/').count())); // stable
    mounts.dedup();
    mounts
}

/// The kernel writes a mount point into mountinfo with exactly four bytes
/// escaped as `\ooo`: space, tab, newline and backslash. The backslash goes
/// last, so `\134040` (a literal `\040` in the path) stays `\040`.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

pub fn cmdline(pid: u32) -> String {
    super::procs::argv(pid).join(" ")
}

pub fn is_zombie(pid: u32) -> bool {
    // /proc/<pid>/stat: "pid (comm) S ..."; comm may contain spaces/parens.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ")
        .map(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
        .unwrap_or(true)
}

/// `/sys/fs/cgroup/<rel>` (cgroup v2) and `/sys/fs/cgroup/<controller>/<rel>` (v1; controllers
/// reached by a symlink, such as `cpu -> cpu,cpuacct`, once): where runc puts a container whose
/// cgroupsPath is `/<rel>` (ctr sets `/<namespace>/<id>`).
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    let base = Path::new("/sys/fs/cgroup");
    let mut v = vec![base.join(rel)];
    v.extend(
        dir_entries(base)
            .into_iter()
            .filter(|c| fs::symlink_metadata(c).is_ok_and(|m| m.is_dir()))
            .map(|c| c.join(rel)),
    );
    v.into_iter().filter(|p| p.is_dir()).collect()
}

/// Kills every process in a cgroup tree, then removes it bottom-up.
pub fn remove_cgroup_tree(cg: &Path) {
    for child in dir_entries(cg).into_iter().filter(|p| p.is_dir()) {
        remove_cgroup_tree(&child);
    }
    for _ in 0..50 {
        let procs = fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
        // Never pid 1, whatever a cgroup says.
        let pids: Vec<&str> = procs.split_whitespace().filter(|p| *p != "1").collect();
        if pids.is_empty() || fs::remove_dir(cg).is_ok() {
            break;
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
        thread::sleep(Duration::from_millis(20));
    }
    let _ = fs::remove_dir(cg);
}

/// Listening unix sockets (flag __SO_ACCEPTCON) in /proc/net/unix, as
/// (inode, path).
fn listening_unix() -> Vec<(String, Vec<u8>)> {
    let table = fs::read("/proc/net/unix").unwrap_or_default();
    table
        .split(|&c| c == b'\n')
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&[u8]> = line.split(|&c| c == b' ').filter(|c| !c.is_empty()).collect();
            (cols.len() >= 8 && cols[3] == b"00010000")
                .then(|| (String::from_utf8_lossy(cols[6]).into_owned(), cols[7].to_vec()))
        })
        .collect()
}

pub fn listening_unix_sockets() -> Vec<Vec<u8>> {
    listening_unix().into_iter().map(|(_, path)| path).collect()
}

/// Paths of the unix sockets that processes `pids` listen on (their fds
/// link to "socket:[<inode>]").
pub fn listening_sockets_of(pids: &[u32]) -> Vec<PathBuf> {
    let listening = listening_unix();
    let mut paths = Vec::new();
    for pid in pids {
        for fd in dir_entries(Path::new(&format!("/proc/{pid}/fd"))) {
            let Ok(target) = fs::read_link(&fd) else { continue };
            let target = target.to_string_lossy().into_owned();
            let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) else {
                continue;
            };
            for (ino, path) in &listening {
                if ino == inode {
                    paths.push(PathBuf::from(std::ffi::OsStr::from_bytes(path)));
                }
            }
        }
    }
    paths
}

/// `s` as one word for sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Polls `f` every 50 ms until it returns Some, or returns None once `timeout` has passed.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `scan` until it finds nothing, for up to `timeout`; returns what the last scan found
/// ([] once settled). For leftovers that go away asynchronously, such as a shim after Shutdown.
pub fn settled(timeout: Duration, mut scan: impl FnMut() -> Vec<String>) -> Vec<String> {
    let mut last = Vec::new();
    eventually(timeout, || {
        last = scan();
        last.is_empty().then_some(())
    });
    last
}

/// Sends `sig` to `pid` (a process this test started, directly or through containerd).
pub fn signal(pid: u32, sig: i32) {
    let sig = nix::sys::signal::Signal::try_from(sig).expect("a signal number");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// A child process killed (and reaped) when dropped: background ctr commands, script(1), ...
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
