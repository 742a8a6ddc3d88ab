//! The bundle directory containerd hands the shim: every file name the shim reads or writes in it,
//! and the atomic reads and writes. `start`, `delete` and Create all go through here.

use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::options::Options;

/// The OCI spec (containerd writes it).
const CONFIG: &str = "config.json";
/// The rootfs mount point.
const ROOTFS: &str = "rootfs";
/// The runtime options, when not the defaults, for `delete` after a daemon died.
const OPTIONS: &str = "options.json";
/// The runtime binary's name, beside `options.json`.
const RUNTIME: &str = "runtime";
/// The init's pid (runc `--pid-file`).
const INIT_PID: &str = "init.pid";
/// runc's `--log` (JSON lines): the error text of a failed command.
const RUNC_LOG: &str = "log.json";
/// The shim's address, written by `start`.
const ADDRESS: &str = "address";
/// The fifo containerd reads the shim's log from (the daemon's stderr).
pub const SHIM_LOG: &str = "log";

/// A bundle directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle(PathBuf);

impl Deref for Bundle {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Bundle {
    pub fn new(dir: impl Into<PathBuf>) -> Bundle {
        Bundle(dir.into())
    }

    /// The OCI spec as JSON; a missing or malformed one is an error naming it.
    pub fn spec(&self) -> Result<serde_json::Value> {
        read_spec(&self.0)
    }

    /// The spec's text if it can be read (grouping in `start` falls back to the id without it).
    pub fn spec_text(&self) -> Option<String> {
        fs::read_to_string(self.0.join(CONFIG)).ok()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.0.join(ROOTFS)
    }

    pub fn init_pid_file(&self) -> PathBuf {
        self.0.join(INIT_PID)
    }

    /// The init's pid, as runc wrote it.
    pub fn init_pid(&self) -> Result<u32> {
        read_pid(&self.init_pid_file())
    }

    pub fn exec_pid_file(&self, exec_id: &str) -> PathBuf {
        self.0.join(format!("{exec_id}.pid"))
    }

    /// The process spec of an exec, for `runc exec --process` (removed once runc has read it).
    pub fn exec_spec_file(&self, exec_id: &str) -> PathBuf {
        self.0.join(format!(".exec-{exec_id}.json"))
    }

    pub fn runc_log(&self) -> PathBuf {
        self.0.join(RUNC_LOG)
    }

    /// Where CRIU works unless CriuWorkPath says otherwise (containerd's persistent dir).
    pub fn criu_work(&self) -> PathBuf {
        self.0.join("work")
    }

    /// Where a CRIU log (`dump.log`, `restore.log`) is kept when it failed: `criu-<name>`.
    pub fn criu_log(&self, name: &str) -> PathBuf {
        self.0.join(format!("criu-{name}"))
    }

    pub fn write_address(&self, address: &str) -> Result<()> {
        write_atomic(&self.0.join(ADDRESS), address.as_bytes()).ctx(|| "writing the address file")
    }

    pub fn address(&self) -> Option<String> {
        fs::read_to_string(self.0.join(ADDRESS)).ok()
    }

    /// Keeps options that are not the defaults, and the runtime's name, for `delete`. Missing files
    /// read as the defaults: skipping them saves two file creations (and renames) per container, a
    /// measurable part of the shim's CPU on ext4.
    pub fn write_options(&self, opts: &Options) -> Result<()> {
        if *opts == Options::default() {
            return Ok(());
        }
        write_atomic(&self.0.join(OPTIONS), &serde_json::to_vec(opts).unwrap_or_default())
            .ctx(|| "writing options.json")?;
        write_atomic(&self.0.join(RUNTIME), opts.binary_name.as_bytes()).ctx(|| "writing runtime")
    }

    /// The options Create kept (defaults when none), with the runtime's name from `runtime`.
    pub fn options(&self) -> Options {
        let mut opts: Options = fs::read(self.0.join(OPTIONS))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let binary = fs::read_to_string(self.0.join(RUNTIME)).unwrap_or_default();
        if !binary.trim().is_empty() {
            opts.binary_name = binary.trim().to_string();
        }
        opts
    }
}

/// Reads the bundle's OCI spec, so that a missing or malformed one is reported by name rather than
/// by runc's bare "unexpected EOF".
pub(crate) fn read_spec(bundle: &Path) -> Result<serde_json::Value> {
    let path = bundle.join(CONFIG);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::InvalidArgument(format!(
                "bundle {} has no config.json",
                bundle.display()
            )))
        }
        Err(e) => return Err(Error::InvalidArgument(format!("reading {}: {e}", path.display()))),
    };
    match serde_json::from_slice::<serde_json::Value>(&text) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(Error::InvalidArgument(format!(
            "{} is not a JSON object",
            path.display()
        ))),
        Err(e) => Err(Error::InvalidArgument(format!(
            "{} is not a valid OCI spec: {e}",
            path.display()
        ))),
    }
}

/// Writes a file through a temporary name, so no reader sees half of it and no symlink planted in the
/// bundle is followed: the temporary file is created exclusively and without following links (a
/// name planted there fails the write), and rename replaces a link at the final name, not its target.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        std::process::id()
    ));
    // A stale file of our own from a crash: unlinking removes a link, never its target.
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    if let Err(e) = f.write_all(data) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    drop(f);
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

pub fn read_pid(path: &Path) -> Result<u32> {
    let text = fs::read_to_string(path).ctx(|| format!("reading pid file {}", path.display()))?;
    text.trim().parse().map_err(|_| {
        Error::Other(format!(
            "pid file {} holds {:?}, not a pid",
            path.display(),
            text.trim()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rr-bundle-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn options_are_kept_only_when_not_the_defaults() {
        let d = dir("opts");
        let b = Bundle::new(&d);
        b.write_options(&Options::default()).unwrap();
        assert!(!d.join(OPTIONS).exists() && !d.join(RUNTIME).exists());
        assert_eq!(b.options(), Options::default());
        let opts = Options {
            binary_name: "/usr/bin/crun".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        b.write_options(&opts).unwrap();
        assert_eq!(b.options(), opts);
        b.write_address("unix:///run/x").unwrap();
        assert_eq!(b.address().as_deref(), Some("unix:///run/x"));
        fs::write(b.init_pid_file(), "42\n").unwrap();
        assert_eq!(b.init_pid().unwrap(), 42);
        fs::write(b.init_pid_file(), "x").unwrap();
        assert!(b.init_pid().unwrap_err().to_string().contains("not a pid"));
        let _ = fs::remove_dir_all(&d);
    }
}
