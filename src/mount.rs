//! Rootfs mounts from the Create request, and the recursive unmount used by Delete and `shim delete`.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub target: String,
    pub options: Vec<String>,
}

/// Splits mount options into flags, propagation flags and the data string, as Go's mount package does.
fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear, prop) = match o.as_str() {
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "defaults" => (MsFlags::empty(), MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty(), MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty(), MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED | MsFlags::MS_REC),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        flags = (flags | set) & !clear;
        propagation |= prop;
    }
    (flags, propagation, data.join(","))
}

const KNOWN_TYPES: &[&str] = &[
    "bind", "rbind", "overlay", "tmpfs", "ext4", "xfs", "btrfs", "none", "proc", "sysfs",
];

impl Mount {
    /// Mounts onto `root` joined with the mount's own target.
    pub fn mount_at(&self, root: &Path) -> Result<PathBuf> {
        let target = match self.target.trim_start_matches('/') {
            "" => root.to_path_buf(),
            t if t.split('/').any(|c| c == "..") => {
                return Err(Error::InvalidArgument(format!(
                    "mount target {:?} escapes the rootfs",
                    self.target
                )))
            }
            t => root.join(t),
        };
        let (mut flags, propagation, data) = parse_options(&self.options);
        let kind = self.kind.as_str();
        if kind == "bind" || kind == "rbind" {
            flags |= MsFlags::MS_BIND;
            if kind == "rbind" {
                flags |= MsFlags::MS_REC;
            }
        }
        if !KNOWN_TYPES.contains(&kind) && !proc_filesystems().iter().any(|f| f == kind) {
            return Err(Error::InvalidArgument(format!(
                "rootfs mount type {kind:?} is not supported by this kernel"
            )));
        }
        let what = |e: nix::Error| {
            Error::InvalidArgument(format!(
                "mounting {kind} {:?} on {} with options {:?}: {e}",
                self.source,
                target.display(),
                self.options.join(",")
            ))
        };
        let page = 4096;
        if kind == "overlay" && data.len() >= page - 512 {
            mount_overlay_long(&self.source, &target, flags, &data).map_err(what)?;
        } else {
            let fstype = if flags.contains(MsFlags::MS_BIND) {
                None
            } else {
                Some(kind)
            };
            let data_opt = (!data.is_empty()).then_some(data.as_str());
            mount(
                Some(self.source.as_str()),
                &target,
                fstype,
                flags & !MsFlags::MS_REMOUNT,
                data_opt,
            )
            .map_err(what)?;
        }
        // A read-only bind needs a remount to take effect.
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            let r = mount(
                None::<&str>,
                &target,
                None::<&str>,
                flags | MsFlags::MS_REMOUNT,
                None::<&str>,
            );
            if let Err(e) = r {
                let _ = umount2(&target, MntFlags::MNT_DETACH);
                return Err(what(e));
            }
        }
        if !propagation.is_empty() {
            if let Err(e) = mount(None::<&str>, &target, None::<&str>, propagation, None::<&str>) {
                let _ = umount2(&target, MntFlags::MNT_DETACH);
                return Err(what(e));
            }
        }
        Ok(target)
    }
}

fn proc_filesystems() -> Vec<String> {
    fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

/// Overlay options longer than a page (many layers) do not fit mount(2): like Go, mount from a child
/// that has chdir'ed to the lowerdirs' common parent, with the lowerdirs made relative to it.
fn mount_overlay_long(source: &str, target: &Path, flags: MsFlags, data: &str) -> nix::Result<()> {
    let opts: Vec<&str> = data.split(',').collect();
    let lowers: Vec<&str> = opts
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .map(|l| l.split(':').collect())
        .unwrap_or_default();
    let prefix = common_dir(&lowers);
    if prefix.is_empty() || prefix == "/" {
        return Err(nix::Error::E2BIG);
    }
    let rel: Vec<String> = opts
        .iter()
        .map(|o| match o.strip_prefix("lowerdir=") {
            Some(l) => format!(
                "lowerdir={}",
                l.split(':')
                    .map(|d| d[prefix.len()..].trim_start_matches('/'))
                    .collect::<Vec<_>>()
                    .join(":")
            ),
            None => o.to_string(),
        })
        .collect();
    let c = |s: &str| CString::new(s).map_err(|_| nix::Error::EINVAL);
    let (dir, src, tgt, fstype, dat) = (
        c(&prefix)?,
        c(source)?,
        c(&target.to_string_lossy())?,
        c("overlay")?,
        c(&rel.join(","))?,
    );
    // SAFETY: the child only calls chdir(2) and mount(2), through nix with `CStr`s made above (which
    // nix passes as they are: no allocation).
    let status = unsafe {
        crate::reaper::fork_and_wait(|| {
            if nix::unistd::chdir(dir.as_c_str()).is_err() {
                1
            } else if mount(
                Some(src.as_c_str()),
                tgt.as_c_str(),
                Some(fstype.as_c_str()),
                flags,
                Some(dat.as_c_str()),
            )
            .is_err()
            {
                2
            } else {
                0
            }
        })
    }
    .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    match status {
        0 => Ok(()),
        1 => Err(nix::Error::ENOENT),
        _ => Err(nix::Error::EINVAL),
    }
}

fn common_dir(dirs: &[&str]) -> String {
    let Some(first) = dirs.first() else {
        return String::new();
    };
    let mut prefix: Vec<&str> = first.split('/').collect();
    prefix.pop();
    for d in &dirs[1..] {
        let parts: Vec<&str> = d.split('/').collect();
        let n = prefix.iter().zip(parts.iter()).take_while(|(a, b)| a == b).count();
        prefix.truncate(n.min(parts.len().saturating_sub(1)));
    }
    prefix.join("/")
}

/// Mount points from /proc/self/mountinfo, octal escapes decoded.
fn mount_points() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts `target` and everything below it, deepest first. Missing or unmounted targets are fine.
pub fn unmount_recursive(target: &Path) -> Result<()> {
    let mut mounts: Vec<PathBuf> = mount_points().into_iter().filter(|m| m.starts_with(target)).collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    mounts.dedup();
    let mut last_err = None;
    for m in mounts {
        // A path mounted several times is unmounted until it is not a mount point any more.
        for _ in 0..32 {
            match umount2(&m, MntFlags::empty()) {
                Ok(()) => continue,
                Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => break,
                Err(nix::Error::EBUSY) => {
                    if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
                        last_err = Some(format!("unmounting {}: {e}", m.display()));
                        break;
                    }
                }
                Err(e) => {
                    last_err = Some(format!("unmounting {}: {e}", m.display()));
                    break;
                }
            }
        }
    }
    match last_err {
        Some(e) => Err(Error::Other(e)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, p, d) = parse_options(&s(&["ro", "nosuid", "lowerdir=/a:/b", "upperdir=/u", "rw", "rprivate"]));
        assert_eq!(f, MsFlags::MS_NOSUID);
        assert_eq!(p, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(d, "lowerdir=/a:/b,upperdir=/u");
        let (f, _, d) = parse_options(&s(&["rbind", "ro"]));
        assert_eq!(f, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(d, "");
    }

    #[test]
    fn common_parent_of_lowerdirs() {
        assert_eq!(
            common_dir(&["/var/lib/c/snapshots/12/fs", "/var/lib/c/snapshots/3/fs"]),
            "/var/lib/c/snapshots"
        );
        assert_eq!(common_dir(&["/a/b/fs"]), "/a/b");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn bad_targets_and_types_are_refused() {
        let m = Mount {
            kind: "overlay".into(),
            source: "x".into(),
            target: "../../etc".into(),
            options: vec![],
        };
        assert!(matches!(
            m.mount_at(Path::new("/nonexistent")),
            Err(Error::InvalidArgument(_))
        ));
        let m = Mount {
            kind: "nosuchfs".into(),
            source: "x".into(),
            target: "".into(),
            options: vec![],
        };
        let e = m.mount_at(Path::new("/nonexistent")).unwrap_err();
        assert!(e.to_string().contains("\"nosuchfs\" is not supported"), "{e}");
    }
}
