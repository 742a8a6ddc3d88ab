//! Process figures from /proc: what a leak looks like from outside (threads, RSS, fds, children).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `/proc/<pid>` says about one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    pub threads: u64,
    pub rss_kib: u64,
    pub fds: usize,
}

impl Figures {
    /// The larger of each figure.
    fn max(self, other: Figures) -> Figures {
        Figures {
            threads: self.threads.max(other.threads),
            rss_kib: self.rss_kib.max(other.rss_kib),
            fds: self.fds.max(other.fds),
        }
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "threads {:>3}  fds {:>4}  VmRSS {:>6} KiB",
            self.threads, self.fds, self.rss_kib
        )
    }
}

fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Threads and VmRSS (/proc/<pid>/status) and open fds (/proc/<pid>/fd); None once it is gone.
pub fn figures(pid: u32) -> Option<Figures> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(Figures {
        threads: status_field(&status, "Threads:")?,
        rss_kib: status_field(&status, "VmRSS:")?,
        fds,
    })
}

/// `fd -> target` for every open fd, sorted: printed when fds leak, to show what leaked.
pub fn fd_targets(pid: u32) -> Vec<String> {
    let mut v: Vec<(u32, String)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.parse().ok()?;
                    let t = fs::read_link(e.path()).ok()?;
                    Some((n, t.to_string_lossy().into_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(n, t)| format!("{n} -> {t}")).collect()
}

/// Fd targets with the pipe/socket inode numbers blanked, to compare the kinds of fds held.
pub fn fd_kinds(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = fd_targets(pid)
        .into_iter()
        .map(|l| {
            let t = l.split_once(" -> ").map(|x| x.1).unwrap_or("").to_string();
            match t.split_once(":[") {
                Some((kind, _)) => kind.to_string(),
                None => t,
            }
        })
        .collect();
    v.sort();
    v
}

/// The state letter of /proc/<pid>/stat (R, S, Z, ...), None if there is no such process.
pub fn state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
}

pub fn ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    matches!(state(pid), Some(s) if s != 'Z' && s != 'X')
}

pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Direct children of `pid` with their state letter.
pub fn children(pid: u32) -> Vec<(u32, char)> {
    all_pids()
        .into_iter()
        .filter(|p| ppid(*p) == Some(pid))
        .filter_map(|p| Some((p, state(p)?)))
        .collect()
}

/// Zombie children of `pid` that stay zombies for a moment (a reaper that is about to reap is fine).
pub fn lasting_zombies(pid: u32) -> Vec<u32> {
    let zombies = || -> Vec<u32> {
        children(pid)
            .into_iter()
            .filter(|(_, s)| *s == 'Z')
            .map(|(p, _)| p)
            .collect()
    };
    let first = zombies();
    if first.is_empty() {
        return first;
    }
    std::thread::sleep(Duration::from_millis(500));
    zombies().into_iter().filter(|p| first.contains(p)).collect()
}

pub fn argv(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Live processes whose argv satisfies `f`.
pub fn find(f: impl Fn(&[String]) -> bool) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| {
            let a = argv(*p);
            !a.is_empty() && f(&a) && alive(*p)
        })
        .collect()
}

/// The shim daemon whose argv names `-id <id>` (for a group, the id of its first container) and
/// `-address <address>`.
pub fn shim_daemon(address: &str, id: &str) -> Option<u32> {
    find(|a| {
        a[0].ends_with("containerd-shim-rustrunc-v2")
            && a.windows(2).any(|w| w[0] == "-id" && w[1] == id)
            && a.windows(2).any(|w| w[0] == "-address" && w[1] == address)
            && !a.iter().any(|x| x == "start" || x == "delete")
    })
    .into_iter()
    .next()
}

/// Every live process of this shim binary that belongs to the containerd at `address`.
pub fn shims_of(address: &str) -> Vec<u32> {
    find(|a| a[0].ends_with("containerd-shim-rustrunc-v2") && a.iter().any(|x| x == address))
}

/// Unix socket paths in `dir` (e.g. /run/containerd/s).
pub fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_socket()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub use super::mounts_under;

/// Entries of a directory (empty if it does not exist), sorted.
pub use super::dir_entries as entries;

/// Every fifo under `dir`, recursively.
pub fn fifos_under(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in entries(&d) {
            match fs::symlink_metadata(&e) {
                Ok(m) if m.is_dir() => stack.push(e),
                Ok(m) if m.file_type().is_fifo() => found.push(e),
                _ => {}
            }
        }
    }
    found.sort();
    found
}

/// The init pid `ctr task ls` shows for `id`.
pub fn task_pid(task_ls: &str, id: &str) -> Option<u32> {
    task_ls
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
}

/// VmSize (KiB) of a process: its address space, which thread stacks inflate.
pub fn vm_size_kib(pid: u32) -> Option<u64> {
    status_field(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?, "VmSize:")
}

/// The largest figures of `pid` seen over `samples` looks `every` apart (each field on its own).
pub fn peak(pid: u32, samples: usize, every: Duration) -> Option<Figures> {
    let mut top: Option<Figures> = None;
    for i in 0..samples {
        if i > 0 {
            std::thread::sleep(every);
        }
        let f = figures(pid)?;
        top = Some(top.map_or(f, |t| t.max(f)));
    }
    top
}

/// Samples the figures of a process on a thread until stopped: the peak of each.
pub struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Option<Figures>>>,
}

impl Sampler {
    pub fn start(pid: u32, every: Duration) -> Sampler {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut top: Option<Figures> = None;
            while !s.load(Ordering::SeqCst) {
                if let Some(f) = peak(pid, 1, every) {
                    top = Some(top.map_or(f, |t| t.max(f)));
                }
                std::thread::sleep(every);
            }
            top
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling: the peaks seen (None if the process was never seen).
    pub fn stop(mut self) -> Option<Figures> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.take().and_then(|h| h.join().ok()).flatten()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
