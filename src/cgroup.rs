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
