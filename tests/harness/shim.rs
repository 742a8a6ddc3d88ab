//! A shim daemon started by hand, without containerd: `shim start` in a temp bundle with
//! `-address` naming a socket nobody serves and TTRPC_ADDRESS pointing nowhere. The test then talks
//! ttrpc to it (the library's generated `TaskClient`, or `ttrpc_raw` frames).
//!
//! Dropping a `DirectShim` stops it (Shutdown RPC, else SIGKILL), removes its socket, runc state
//! (`/run/containerd/runc/<ns>`), cgroups (`/sys/fs/cgroup/<ns>`), mounts and temp dir.

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim_rustrunc_v2::protos::shim::shim::{CreateTaskRequest, StartRequest};
use containerd_shim_rustrunc_v2::protos::shim::shim_ttrpc::TaskClient;

use super::procs::{self, Figures};
use super::ttrpc_raw::Conn;
use super::SHIM_BIN;

static N: AtomicUsize = AtomicUsize::new(0);

/// 10 s, in the nanoseconds ttrpc contexts want.
pub const RPC_TIMEOUT_NS: i64 = 10_000_000_000;

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(RPC_TIMEOUT_NS)
}

/// A fresh directory `/tmp/<prefix>-<pid>-<n>`, removed (with what is mounted under it) on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/{prefix}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        for m in procs::mounts_under(&self.0) {
            let _ = Command::new("umount").args(["-l", &m]).stderr(Stdio::null()).status();
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub struct DirectShim {
    /// Temp dir holding the bundles (`<dir>/<id>`) and the fake containerd address.
    pub dir: PathBuf,
    /// The bundle `start` ran in.
    pub bundle: PathBuf,
    pub namespace: String,
    pub id: String,
    /// `-address` given to the shim (nothing listens there).
    pub address: String,
    /// The shim's ttrpc socket (/run/containerd/s/<hash>).
    pub socket: PathBuf,
    pub pid: u32,
    log: Arc<Mutex<String>>,
    stop_log: Arc<AtomicBool>,
}

/// Runs the shim binary with `args` in `cwd`, stdin from `stdin`, bounded to 20 s.
pub fn run_shim(args: &[&str], cwd: &Path, stdin: &[u8], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(SHIM_BIN);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn shim");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut input, &data);
    });
    let out = super::drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = super::drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let status = super::wait_bounded(&mut child, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("shim {args:?} did not finish within 20 s"));
    std::process::Output {
        status,
        stdout: out.recv_timeout(Duration::from_secs(5)).unwrap_or_default(),
        stderr: err.recv_timeout(Duration::from_secs(5)).unwrap_or_default(),
    }
}

/// A rootfs of busybox (copied) with the applets the tests run, in `<bundle>/rootfs`.
pub fn busybox_rootfs(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    if fs::hard_link("/bin/busybox", rootfs.join("bin/busybox")).is_err() {
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    }
    for applet in ["sh", "sleep", "true", "echo", "cat", "seq", "tty", "usleep"] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
    }
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
}

/// A minimal runnable OCI spec: busybox `args`, own pid/mount/ipc/uts namespaces, cgroup
/// `/<ns>/<id>` (removed on drop with the namespace's cgroup dir).
pub fn spec_json(namespace: &str, id: &str, args: &[&str]) -> String {
    spec(namespace, id, args, false)
}

/// `spec_json` for a process with a terminal (and /dev/pts for runc to make it in).
pub fn tty_spec_json(namespace: &str, id: &str, args: &[&str]) -> String {
    spec(namespace, id, args, true)
}

fn spec(namespace: &str, id: &str, args: &[&str], terminal: bool) -> String {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "rr",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}
        ],
        "linux": {
            "cgroupsPath": format!("/{namespace}/{id}"),
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        }
    })
    .to_string()
}

/// Create (with `req`, its bundle ready) then Start of that init: its pid, or which call failed.
pub fn create_start(client: &TaskClient, req: CreateTaskRequest) -> Result<u32, String> {
    let id = req.id.clone();
    client.create(ctx(), &req).map_err(|e| format!("Create: {e:?}"))?;
    let start = StartRequest {
        id,
        ..Default::default()
    };
    Ok(client.start(ctx(), &start).map_err(|e| format!("Start: {e:?}"))?.pid)
}

impl DirectShim {
    /// `shim start` in a fresh bundle; waits for the daemon it spawned.
    pub fn start() -> DirectShim {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/rrd-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let namespace = format!("rr-direct-{}-{n}", std::process::id());
        let id = "first".to_string();
        let bundle = dir.join(&id);
        fs::create_dir_all(&bundle).unwrap();
        fs::write(bundle.join("config.json"), spec_json(&namespace, &id, &["true"])).unwrap();
        // The shim's log: a fifo it opens write-only (non-blocking), so a reader must exist first.
        nix::unistd::mkfifo(&bundle.join("log"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut reader = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(bundle.join("log"))
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stop_log = Arc::new(AtomicBool::new(false));
        {
            let (log, stop) = (log.clone(), stop_log.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while !stop.load(Ordering::SeqCst) {
                    match reader.read(&mut buf) {
                        Ok(n) if n > 0 => log.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n])),
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
        let address = dir.join("fake.sock").to_string_lossy().into_owned();
        let ttrpc_address = format!("{address}.ttrpc");
        let o = run_shim(
            &[
                "-namespace",
                &namespace,
                "-address",
                &address,
                "-publish-binary",
                "/usr/bin/containerd",
                "-id",
                &id,
                "start",
            ],
            &bundle,
            b"",
            &[("TTRPC_ADDRESS", &ttrpc_address)],
        );
        assert!(o.status.success(), "shim start failed: {o:?}");
        let printed = String::from_utf8_lossy(&o.stdout).into_owned();
        let socket = PathBuf::from(
            printed
                .strip_prefix("unix://")
                .unwrap_or_else(|| panic!("start printed {printed:?}")),
        );
        let pid = super::eventually(Duration::from_secs(10), || procs::shim_daemon(&address, &id))
            .unwrap_or_else(|| panic!("no shim daemon for {address} {id}"));
        let shim = DirectShim {
            dir,
            bundle,
            namespace,
            id,
            address,
            socket,
            pid,
            log,
            stop_log,
        };
        // The daemon serves once its listener accepts: Connect answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while shim.raw().is_err() {
            assert!(
                Instant::now() < deadline,
                "shim socket {} never accepted",
                shim.socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        shim
    }

    pub fn client(&self) -> TaskClient {
        let c = ttrpc::Client::connect(&format!("unix://{}", self.socket.display())).expect("connect to the shim");
        TaskClient::new(c)
    }

    /// Creates and starts container `id` (busybox `args`, no stdio): its pid.
    pub fn run(&self, id: &str, args: &[&str]) -> u32 {
        let bundle = self.bundle(id, Some(&spec_json(&self.namespace, id, args)));
        busybox_rootfs(&bundle);
        let req = CreateTaskRequest {
            id: id.into(),
            bundle: bundle.to_string_lossy().into_owned(),
            ..Default::default()
        };
        create_start(&self.client(), req).unwrap_or_else(|e| panic!("{id}: {e}"))
    }

    pub fn raw(&self) -> std::io::Result<Conn> {
        Conn::connect(&self.socket)
    }

    pub fn figures(&self) -> Figures {
        procs::figures(self.pid).expect("the shim is running")
    }

    pub fn alive(&self) -> bool {
        procs::alive(self.pid)
    }

    /// Everything the shim logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn runc_root(&self) -> PathBuf {
        Path::new("/run/containerd/runc").join(&self.namespace)
    }

    /// A new bundle dir `<dir>/<id>` (no config.json unless `config` is given).
    pub fn bundle(&self, id: &str, config: Option<&str>) -> PathBuf {
        let b = self.dir.join(id.replace(['/', '\0'], "_"));
        fs::create_dir_all(&b).unwrap();
        if let Some(c) = config {
            fs::write(b.join("config.json"), c).unwrap();
        }
        b
    }

    /// What a failed request may have left: mounts under our dir, runc state, children of the shim.
    pub fn residue(&self) -> Vec<String> {
        let mut v = Vec::new();
        for m in procs::mounts_under(&self.dir) {
            v.push(format!("mount {m}"));
        }
        for e in procs::entries(&self.runc_root()) {
            v.push(format!("runc state {}", e.display()));
        }
        for (p, s) in procs::children(self.pid) {
            v.push(format!("child of the shim {p} ({s}): {:?}", procs::argv(p)));
        }
        v
    }

    fn stop(&mut self) {
        if self.alive() {
            if let Ok(mut conn) = self.raw() {
                // Shutdown{id}: field 1.
                let mut req = Vec::new();
                super::ttrpc_raw::pb_bytes(1, self.id.as_bytes(), &mut req);
                let _ = conn.call(super::ttrpc_raw::TASK_SERVICE, "Shutdown", &req);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.alive() {
                super::signal(self.pid, libc::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while self.alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = fs::remove_file(&self.socket);
        let root = self.runc_root();
        for e in procs::entries(&root) {
            if let Some(id) = e.file_name().and_then(|s| s.to_str()) {
                let mut cmd = Command::new("runc");
                cmd.arg("--root").arg(&root).args(["delete", "-f", id]);
                let _ = super::run_bounded(cmd, Duration::from_secs(15));
            }
            let _ = fs::remove_dir_all(&e);
        }
        let _ = fs::remove_dir(&root);
        for cg in [Path::new("/sys/fs/cgroup").join(&self.namespace)].into_iter().chain(
            procs::entries(Path::new("/sys/fs/cgroup"))
                .into_iter()
                .map(|c| c.join(&self.namespace)),
        ) {
            if cg.is_dir() {
                for child in procs::entries(&cg).into_iter().filter(|p| p.is_dir()) {
                    let _ = fs::remove_dir(child);
                }
                let _ = fs::remove_dir(&cg);
            }
        }
        let mut mounts = procs::mounts_under(&self.dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).stderr(Stdio::null()).status();
        }
        self.stop_log.store(true, Ordering::SeqCst);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for DirectShim {
    fn drop(&mut self) {
        self.stop();
    }
}
