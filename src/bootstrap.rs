//! The two short-lived actions containerd runs with the bundle as cwd: `start` (find or spawn the
//! daemon that serves this container, print its address) and `delete` (clean up after a task or a
//! dead shim, print a DeleteResponse).

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use protobuf::Message;
use sha2::{Digest, Sha256};

use crate::bundle::Bundle;
use crate::cli::Flags;
use crate::container::validate_id;
use crate::error::{Context, Error, Result};
use crate::events::timestamp;
use crate::options::{self, Options};
use crate::protos::shim::shim::DeleteResponse;
use crate::runc::Runc;

pub const SOCKET_DIR: &str = "/run/containerd/s";
/// sun_path is 108 bytes; Go's shim keeps 106 usable.
const SOCKET_PATH_LIMIT: usize = 106;
/// The fd the daemon finds its listener on (as the Go shim).
pub(crate) const LISTENER_FD: i32 = 3;

/// Go's `filepath.Join`: join with '/', then clean.
fn go_join(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    let abs = joined.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !abs {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    let body = out.join("/");
    if abs {
        format!("/{body}")
    } else if body.is_empty() {
        ".".into()
    } else {
        body
    }
}

/// The socket path containerd and every shim of a group agree on:
/// `<dir>/hex(sha256(join(address, namespace, group)))`.
pub fn socket_path(dir: &str, address: &str, namespace: &str, group: &str) -> String {
    let digest = Sha256::digest(go_join(&[address, namespace, group]).as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}/{hex}", dir.trim_end_matches('/'))
}

/// Containers of one pod (or one explicit group) share a shim: the group comes from the spec's
/// annotations, else it is the container id.
pub(crate) fn grouping(bundle: &Path, id: &str) -> String {
    let Some(text) = Bundle::new(bundle).spec_text() else {
        return id.to_string();
    };
    let Ok(spec) = serde_json::from_str::<serde_json::Value>(&text) else {
        return id.to_string();
    };
    for key in ["io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"] {
        if let Some(g) = spec
            .pointer("/annotations")
            .and_then(|a| a.get(key))
            .and_then(|v| v.as_str())
        {
            if !g.is_empty() {
                return g.to_string();
            }
        }
    }
    id.to_string()
}

fn require(flags: &Flags) -> Result<()> {
    if flags.namespace.is_empty() {
        return Err(Error::InvalidArgument(
            "shim namespace cannot be empty (-namespace)".into(),
        ));
    }
    validate_id("namespace", &flags.namespace)?;
    validate_id("id (-id)", &flags.id)
}

/// `start`: prints the address of the daemon serving this container, spawning it if needed.
pub fn start(flags: &Flags) -> Result<String> {
    require(flags)?;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .ctx(|| "reading start options from stdin")?;
    let start_input = options::from_start_stdin(&input, &flags.id, &flags.namespace)?;
    let bundle = std::env::current_dir().ctx(|| "finding the bundle (cwd)")?;
    let group = grouping(&bundle, &flags.id);
    let dir = start_input
        .socket_dir
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| SOCKET_DIR.to_string());
    let path = socket_path(&dir, &flags.address, &flags.namespace, &group);
    if path.len() > SOCKET_PATH_LIMIT {
        return Err(Error::InvalidArgument(format!(
            "socket path {path:?} is longer than {SOCKET_PATH_LIMIT} bytes"
        )));
    }
    let address = format!("unix://{path}");
    fs::create_dir_all(&dir).ctx(|| format!("creating socket directory {dir}"))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).ctx(|| format!("chmod {dir}"))?;

    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(&path).is_ok() {
                // A live shim serves this group already: containerd talks to it.
                write_address(&bundle, &address)?;
                return Ok(address);
            }
            fs::remove_file(&path).ctx(|| format!("removing stale socket {path}"))?;
            UnixListener::bind(&path).ctx(|| format!("listening on {path}"))?
        }
        Err(e) => return Err(Error::Other(format!("listening on {path}: {e}"))),
    };
    let mut daemon = None;
    let result = (|| {
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).ctx(|| format!("chmod {path}"))?;
        let child = daemon.insert(spawn_daemon(flags, &path, &listener)?);
        place_daemon(child.id(), &start_input.options)?;
        write_address(&bundle, &address)
    })();
    if let Err(e) = result {
        // Nobody will ever learn this daemon's address: it must not outlive us.
        if let Some(mut child) = daemon {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(address)
}

fn write_address(bundle: &Path, address: &str) -> Result<()> {
    Bundle::new(bundle).write_address(address)
}

/// fork+exec of ourselves as the daemon, with the listener as fd 3 and stdio on /dev/null (containerd
/// reads `start`'s combined output until EOF: the daemon must not hold it).
fn spawn_daemon(flags: &Flags, socket: &str, listener: &UnixListener) -> Result<std::process::Child> {
    let exe = std::env::current_exe().ctx(|| "finding our own executable")?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "-namespace",
        &flags.namespace,
        "-id",
        &flags.id,
        "-address",
        &flags.address,
    ]);
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    cmd.args(["-socket", socket]);
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let fd = listener.as_raw_fd();
    // SAFETY: the hook runs in the forked child of a multithreaded process; it only makes
    // async-signal-safe calls (setsid, fcntl, dup2) and allocates nothing, not even on error.
    unsafe {
        cmd.pre_exec(move || {
            // Own session: containerd's signals to `start`'s process group do not reach the daemon.
            nix::unistd::setsid()?;
            // dup2 clears close-on-exec on the copy; when the listener already is fd 3, clear it by hand.
            if fd == LISTENER_FD {
                nix::fcntl::fcntl(fd, nix::fcntl::F_SETFD(nix::fcntl::FdFlag::empty()))?;
            } else {
                nix::unistd::dup2(fd, LISTENER_FD)?;
            }
            Ok(())
        });
    }
    // Once `start` has succeeded the daemon is reaped by whoever adopts it when `start` exits.
    cmd.spawn().ctx(|| "starting the shim daemon")
}

/// Puts the daemon into ShimCgroup and one point above containerd for the OOM killer.
fn place_daemon(pid: u32, opts: &Options) -> Result<()> {
    if !opts.shim_cgroup.is_empty() {
        crate::cgroup::add_process(&opts.shim_cgroup, pid)
            .ctx(|| format!("moving the shim into cgroup {:?}", opts.shim_cgroup))?;
    }
    let parent = nix::unistd::getppid();
    let score: i32 = fs::read_to_string(format!("/proc/{parent}/oom_score_adj"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let ours = (score + 1).min(1000);
    fs::write(format!("/proc/{pid}/oom_score_adj"), ours.to_string()).ctx(|| "setting oom_score_adj")?;
    Ok(())
}

/// `delete`: runs after every task teardown and after a shim died. Idempotent, tolerant of missing
/// files and of a container runc no longer knows.
pub fn delete(flags: &Flags) -> Result<Vec<u8>> {
    require(flags)?;
    let bundle = Bundle::new(if flags.bundle.is_empty() {
        std::env::current_dir().ctx(|| "finding the bundle (cwd)")?
    } else {
        PathBuf::from(&flags.bundle)
    });
    let opts = bundle.options();
    let runc = Runc::new(
        &opts.binary_name,
        &opts.root,
        &flags.namespace,
        &bundle,
        opts.systemd_cgroup,
    );
    if runtime_may_know(Path::new(&runc.root), &flags.id) {
        crate::reaper::start_signal_thread(None).ctx(|| "installing the SIGCHLD handler")?;
        if let Err(e) = runc.delete(&flags.id, true) {
            if !matches!(e, Error::NotFound(_)) {
                eprintln!("warning: {e}");
            }
        }
    }
    if let Err(e) = crate::mount::unmount_recursive(&bundle.rootfs()) {
        eprintln!("warning: {e}");
    }
    remove_dead_socket(&bundle);
    let pid = bundle.init_pid().unwrap_or(0);
    let resp = DeleteResponse {
        pid,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(timestamp(SystemTime::now())).into(),
        ..Default::default()
    };
    Ok(resp.write_to_bytes().unwrap_or_default())
}

/// Whether the runtime may still hold state for `id` under its root. runc and crun keep a
/// container in `<root>/<id>`, runsc in `<root>/<id>_sandbox:…`; with no entry starting with the id
/// there is nothing for `runc delete --force` to do. containerd runs `shim delete` after every shim
/// exit, normally long after the task's own Delete removed that state, so this saves a runtime
/// process (about 8 ms of CPU for runc) per container. Unreadable roots count as "may know".
fn runtime_may_know(root: &Path, id: &str) -> bool {
    match fs::read_dir(root) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().as_encoded_bytes().starts_with(id.as_bytes())),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// A shim killed with SIGKILL could not remove its socket: remove it now, unless a shim (of the same
/// pod) still listens on it.
fn remove_dead_socket(bundle: &Bundle) {
    let Some(address) = bundle.address() else {
        return;
    };
    let Some(path) = address.trim().strip_prefix("unix://") else {
        return;
    };
    use std::os::unix::fs::FileTypeExt;
    if !fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        return; // gone already, or not a socket: nothing of ours
    }
    match UnixStream::connect(path) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            let _ = fs::remove_file(path);
        }
        _ => {}
    }
}

pub fn print(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_address_known_vector() {
        // sha256("/run/containerd/containerd.sock/default/c1"), as the Go shim computes it.
        assert_eq!(
            socket_path(SOCKET_DIR, "/run/containerd/containerd.sock", "default", "c1"),
            "/run/containerd/s/d25aa4ef11a84e954e74a5bcff06557d0b6ea8d0c00243896f29826694bbd888"
        );
        // filepath.Join cleans the path.
        assert_eq!(
            socket_path(
                "/run/containerd/s/",
                "/run/containerd//containerd.sock/",
                "default",
                "c1"
            ),
            socket_path(SOCKET_DIR, "/run/containerd/containerd.sock", "default", "c1"),
        );
    }

    #[test]
    fn go_join_cleans() {
        assert_eq!(go_join(&["/a/", "b", "./c"]), "/a/b/c");
        assert_eq!(go_join(&["/a/b/../c", "d"]), "/a/c/d");
        assert_eq!(go_join(&["a", ""]), "a");
    }

    #[test]
    fn grouping_annotations() {
        let dir = std::env::temp_dir().join(format!("rr-group-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(grouping(&dir, "c1"), "c1", "no config.json");
        fs::write(
            dir.join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(&dir, "c1"), "pod1");
        fs::write(
            dir.join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1","io.containerd.runc.v2.group":"g"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(&dir, "c1"), "g");
        fs::write(dir.join("config.json"), r#"{"annotations":{}}"#).unwrap();
        assert_eq!(grouping(&dir, "c1"), "c1");
        fs::remove_dir_all(&dir).unwrap();
    }
}
