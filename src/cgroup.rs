//! Cgroup helpers. Which cgroup version rules the host is decided the way containerd does: unified
//! only when /sys/fs/cgroup itself is cgroup2 (a hybrid host, with v2 at /sys/fs/cgroup/unified, is v1).

use std::fs;
use std::path::PathBuf;

use crate::error::{Error, Result};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

pub fn is_unified() -> bool {
    nix::sys::statfs::statfs(CGROUP_ROOT).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Mount points of the v1 hierarchies.
fn v1_hierarchies() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            (post.split(' ').next()? == "cgroup").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// Removes the container cgroup at `cgroups_path` (the spec's `linux.cgroupsPath`) after a failed
/// create, killing what is left in it. For a `runc create` that was killed before it wrote its
/// state: `runc delete` then finds no container, its `runc init` may linger a moment, and nobody
/// else would remove the cgroup. The leaf is this container's own (containerd ids are unique per
/// namespace, and the shim has no container by this id); a cgroup with child cgroups is left alone.
/// Systemd paths (`slice:prefix:name`) and relative ones too: systemd and runc own those.
pub fn remove_leftover(cgroups_path: &str) {
    if !cgroups_path.starts_with('/') || cgroups_path.contains(':') {
        return;
    }
    let rel = cgroups_path.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        return;
    }
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in text.lines() {
        let Some((pre, post)) = l.split_once(" - ") else {
            continue;
        };
        if !matches!(post.split(' ').next(), Some("cgroup" | "cgroup2")) {
            continue;
        }
        let Some(mount_point) = pre.split(' ').nth(4) else {
            continue;
        };
        let dir = PathBuf::from(mount_point).join(rel);
        remove_dir_killing(&dir);
    }
}

fn remove_dir_killing(dir: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return log::info!("removed the leftover cgroup {}", dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() < deadline => {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                if procs.trim().is_empty() && fs::read_dir(dir).is_ok_and(|d| d.flatten().any(|e| e.path().is_dir())) {
                    return log::debug!("leaving cgroup {}: it has child cgroups", dir.display());
                }
                for pid in procs.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                    let _ = crate::sys::kill(pid, libc::SIGKILL);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return log::warn!("leaving cgroup {}: {e}", dir.display()),
        }
    }
}

/// Moves `pid` into the cgroup at `path` (relative to the hierarchy roots), as the Go shim does for
/// ShimCgroup: v2 the unified path, v1 every hierarchy in which the cgroup exists.
pub fn add_process(path: &str, pid: u32) -> Result<()> {
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return Err(Error::InvalidArgument(format!(
            "cgroup path {path:?} escapes the hierarchy"
        )));
    }
    let dirs: Vec<PathBuf> = if is_unified() {
        vec![PathBuf::from(CGROUP_ROOT).join(rel)]
    } else {
        v1_hierarchies()
            .into_iter()
            .map(|h| h.join(rel))
            .filter(|d| d.is_dir())
            .collect()
    };
    let mut done = 0;
    for d in &dirs {
        match fs::write(d.join("cgroup.procs"), pid.to_string()) {
            Ok(()) => done += 1,
            Err(e) => return Err(Error::Other(format!("adding pid {pid} to {}: {e}", d.display()))),
        }
    }
    if done == 0 {
        return Err(Error::NotFound(format!("cgroup {path:?} does not exist")));
    }
    Ok(())
}

/// Where a process's cgroup lives, resolved once after `runc create` (the pid is gone after exit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    /// cgroup v2: the one directory under /sys/fs/cgroup.
    V2(PathBuf),
    /// cgroup v1: one directory per controller (controller name -> directory). Named hierarchies
    /// (`name=systemd`) are left out.
    V1(std::collections::BTreeMap<String, PathBuf>),
}

impl Cgroup {
    /// The cgroup of `pid` on this host.
    pub fn of_pid(pid: u32) -> Result<Cgroup> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| Error::NotFound(format!("reading the cgroup of pid {pid}: {e}")))?;
        Ok(Cgroup::parse(&text, is_unified(), &v1_mounts()))
    }

    /// Parses /proc/<pid>/cgroup. `mounts` maps each v1 controller to its hierarchy's mount point.
    pub fn parse(proc_cgroup: &str, unified: bool, mounts: &[(String, PathBuf)]) -> Cgroup {
        if unified {
            let path = proc_cgroup
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("/")
                .trim_start_matches('/');
            return Cgroup::V2(PathBuf::from(CGROUP_ROOT).join(path));
        }
        let mut dirs = std::collections::BTreeMap::new();
        for line in proc_cgroup.lines() {
            let mut f = line.splitn(3, ':');
            let (_, controllers, path) = match (f.next(), f.next(), f.next()) {
                (Some(a), Some(b), Some(c)) => (a, b, c),
                _ => continue,
            };
            for ctl in controllers
                .split(',')
                .filter(|c| !c.is_empty() && !c.starts_with("name="))
            {
                if let Some((_, mnt)) = mounts.iter().find(|(c, _)| c == ctl) {
                    dirs.insert(ctl.to_string(), mnt.join(path.trim_start_matches('/')));
                }
            }
        }
        Cgroup::V1(dirs)
    }

    /// The directory of a v1 controller, or the v2 directory.
    pub fn dir(&self, controller: &str) -> Option<&std::path::Path> {
        match self {
            Cgroup::V2(p) => Some(p),
            Cgroup::V1(m) => m.get(controller).map(PathBuf::as_path),
        }
    }
}

/// v1 controller -> mount point of its hierarchy, from /proc/self/mountinfo (super options list the
/// controllers: `rw,memory`, `rw,cpu,cpuacct`).
fn v1_mounts() -> Vec<(String, PathBuf)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for l in text.lines() {
        let Some((pre, post)) = l.split_once(" - ") else {
            continue;
        };
        let mut post = post.split(' ');
        if post.next() != Some("cgroup") {
            continue;
        }
        let (Some(mnt), Some(opts)) = (pre.split(' ').nth(4), post.nth(1)) else {
            continue;
        };
        for o in opts.split(',') {
            if !matches!(o, "rw" | "ro") && !o.starts_with("name=") && !o.contains('=') {
                out.push((o.to_string(), PathBuf::from(mnt)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_v1_and_v2() {
        let v1 = "12:memory:/default/c1\n4:cpu,cpuacct:/default/c1\n1:name=systemd:/x\n0::/\n";
        let mounts = vec![
            ("memory".to_string(), PathBuf::from("/sys/fs/cgroup/memory")),
            ("cpu".to_string(), PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")),
            ("cpuacct".to_string(), PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")),
        ];
        let cg = Cgroup::parse(v1, false, &mounts);
        assert_eq!(
            cg.dir("memory"),
            Some(std::path::Path::new("/sys/fs/cgroup/memory/default/c1"))
        );
        assert_eq!(
            cg.dir("cpuacct"),
            Some(std::path::Path::new("/sys/fs/cgroup/cpu,cpuacct/default/c1"))
        );
        assert_eq!(cg.dir("pids"), None);
        let cg = Cgroup::parse("0::/kubepods/pod1/c1\n", true, &[]);
        assert_eq!(cg, Cgroup::V2(PathBuf::from("/sys/fs/cgroup/kubepods/pod1/c1")));
        assert_eq!(
            cg.dir("memory"),
            Some(std::path::Path::new("/sys/fs/cgroup/kubepods/pod1/c1"))
        );
    }

    #[test]
    fn this_host() {
        let cg = Cgroup::of_pid(std::process::id()).unwrap();
        if !is_unified() {
            assert!(cg.dir("memory").is_some_and(|d| d.is_dir()), "{cg:?}");
        }
    }
}
