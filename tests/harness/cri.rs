//! The CRI layer (tests/cri.rs, tests/cri_buffering.rs): a private containerd
//! with the CRI plugin on, our shim registered as runtime handler
//! `rustrunc`, the busybox and pause images imported into `k8s.io`, and a
//! CRI client (tests/cri/cri_client.py, Python + grpcio in a venv made by
//! scripts/install-cri-deps.sh) driven line by line with JSON.
//!
//! Any containerd from 1.6 on (`Release`: a directory with containerd and
//! ctr); its `--version` picks the config (`Flavor`): schema version 2 for
//! 1.6/1.7 (test-fixtures/cri-config.toml.in), version 3 for 2.x
//! (test-fixtures/cri-config-v3.toml.in), and how the handler's runc
//! options get there: a `ConfigPath` file on 1.6 (which forwards nothing
//! else), inline keys on 1.7 and 2.x (which send them as TOML in
//! `config_body`; then no options file exists at all).
//!
//! Its own containerd (the containerd layer starts one with CRI disabled),
//! built on the host and containerd layers' pieces: everything lives in a temp dir `/tmp/rrc-<pid>-<n>`, external
//! tools are called with time limits, and `Drop` tears everything down also
//! when the test panicked: containerd, our shims, the containers' cgroups,
//! runc state, mounts, the temp dir.
//!
//! What is ours, with several containerds on the host: shim daemons whose
//! argv has `-address <our socket>`, sockets in /run/containerd/s named
//! after that address, the runc root `<dir>/runc` (the runtime options file
//! sets it), and the pods' cgroup parent `/rustrunc-cri-<pid>-<n>`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    cleanup_dir, dir_entries, is_root, is_zombie, listening_sockets_of, mounts_under, remove_cgroup_tree, run_bounded,
    shim_processes, spawn_containerd, term_then_kill, terminate_containerd, wait_containerd_ready,
};

pub use super::SHIM_BIN;
pub const SHIM_NAME: &str = "containerd-shim-rustrunc-v2";
/// The CRI runtime handler that test-fixtures/cri-config.toml.in registers.
pub const HANDLER: &str = "rustrunc";
/// CRI keeps everything in this containerd namespace.
pub const CRI_NAMESPACE: &str = "k8s.io";
pub const BUSYBOX_IMAGE: &str = super::IMAGE;
/// The config's sandbox_image (test-fixtures/pause/).
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:rustrunc-test";

/// Debian 12's containerd 1.6.
const SYSTEM_BIN_DIR: &str = "/usr/bin";
use super::SHIM_SOCKET_DIR;
const START_TIMEOUT: Duration = Duration::from_secs(30);
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);
/// First run: a venv and two wheels from PyPI (~20 s here).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest a single CRI call may take before the test gives up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub use super::skip;

/// A containerd release to run CRI on: the directory of its `containerd`
/// and `ctr`, and what its version must start with ("" = any).
#[derive(Debug, Clone)]
pub struct Release {
    pub bin_dir: PathBuf,
    pub version_prefix: String,
}

impl Release {
    /// Debian 12's containerd 1.6 in /usr/bin.
    pub fn system() -> Release {
        Release {
            bin_dir: PathBuf::from(SYSTEM_BIN_DIR),
            version_prefix: "1.6.".into(),
        }
    }

    /// A Debian suite's containerd unpacked by scripts/fetch-containerd.sh
    /// into target/containerd/<suite>/usr/bin (trixie: 1.7, sid: 2.x).
    pub fn fetched(suite: &str, version_prefix: &str) -> Release {
        Release {
            bin_dir: manifest_dir().join("target/containerd").join(suite).join("usr/bin"),
            version_prefix: version_prefix.into(),
        }
    }

    /// Any release in `dir` (RR_CONTAINERD_EXTRA_BIN_DIRS).
    pub fn any_in(dir: &Path) -> Release {
        Release {
            bin_dir: dir.to_path_buf(),
            version_prefix: String::new(),
        }
    }

    fn containerd(&self) -> PathBuf {
        self.bin_dir.join("containerd")
    }

    fn ctr(&self) -> PathBuf {
        self.bin_dir.join("ctr")
    }

    /// `containerd --version`'s version, without a leading `v` (Debian:
    /// "1.7.24~ds1"); checked against `version_prefix`.
    fn version(&self) -> Result<String, String> {
        let mut cmd = Command::new(self.containerd());
        cmd.arg("--version");
        let out = run_ok(cmd, TOOL_TIMEOUT)?;
        // "containerd github.com/containerd/containerd[/v2] <version> <commit>"
        let version = out
            .split_whitespace()
            .nth(2)
            .map(|v| v.trim_start_matches('v').to_string())
            .ok_or_else(|| format!("no version in {}'s `--version`: {out:?}", self.containerd().display()))?;
        if !version.starts_with(&self.version_prefix) {
            return Err(format!(
                "{} is containerd {version}, expected {}*",
                self.containerd().display(),
                self.version_prefix
            ));
        }
        Ok(version)
    }
}

/// How a containerd release wants CRI and our handler configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// 1.6: config version 2; CRI forwards only `ConfigPath` from the
    /// handler's options (runtimeoptions.v1.Options has no ConfigBody yet),
    /// so the runc options are in a file.
    V1_6,
    /// 1.7: config version 2; the options inline, sent as TOML in
    /// runtimeoptions' `config_body`.
    V1_7,
    /// 2.x: config version 3 (`io.containerd.cri.v1.runtime` / `.images`);
    /// the options inline, sent as TOML in `config_body`.
    V2,
}

impl Flavor {
    fn of(version: &str) -> Result<Flavor, String> {
        let mut parts = version.split(['.', '~', '-', '+']);
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        match (major, minor) {
            (1, 6) => Ok(Flavor::V1_6),
            (1, 7) => Ok(Flavor::V1_7),
            (m, _) if m >= 2 => Ok(Flavor::V2),
            _ => Err(format!("containerd {version} is older than 1.6 (not supported)")),
        }
    }

    /// Whether the handler's runc options are inline in its `options`
    /// table (else in a `ConfigPath` file).
    pub fn inline_options(self) -> bool {
        self != Flavor::V1_6
    }

    fn template(self) -> &'static str {
        match self {
            Flavor::V1_6 | Flavor::V1_7 => "test-fixtures/cri-config.toml.in",
            Flavor::V2 => "test-fixtures/cri-config-v3.toml.in",
        }
    }
}

/// How the handler names our shim in containerd's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// `runtime_type = "io.containerd.rustrunc.v2"`: containerd finds the binary on its PATH.
    OwnType,
    /// 2.x only: `runtime_type = "io.containerd.runc.v2"` with `runtime_path` = our binary. containerd
    /// then sends the options as containerd.runc.v1.Options and asks the shim for its features.
    RuncTypeWithPath,
}

/// Why this machine cannot run the test on `release`, if it cannot.
pub fn unsupported(release: &Release) -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    for p in [release.containerd(), release.ctr()] {
        if !p.exists() {
            let hint = if release.bin_dir == Path::new(SYSTEM_BIN_DIR) {
                "run scripts/install-deps.sh"
            } else {
                "scripts/fetch-containerd.sh fetches it"
            };
            return Some(format!("{} is missing ({hint})", p.display()));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (run scripts/install-deps.sh)".into());
    }
    if real_runc().is_none() {
        return Some("runc is missing (run scripts/install-deps.sh)".into());
    }
    None
}

/// CRI pods are heavy (a containerd with CRI, a shim, a pause and two
/// containers each): one test at a time per test process.
pub fn serialize() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every CRI test does first: `release` usable here, the Python client, and this process's
/// one-at-a-time lock. None, the reason printed, when the test should just return.
pub fn prepare(release: &Release) -> Option<(PythonEnv, std::sync::MutexGuard<'static, ()>)> {
    if let Some(reason) = unsupported(release) {
        skip(&reason);
        return None;
    }
    match python_env() {
        Ok(py) => Some((py, serialize())),
        Err(reason) => {
            skip(&reason);
            None
        }
    }
}

fn real_runc() -> Option<PathBuf> {
    [
        "/usr/sbin/runc",
        "/usr/bin/runc",
        "/usr/local/sbin/runc",
        "/usr/local/bin/runc",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn run_ok(cmd: Command, timeout: Duration) -> Result<String, String> {
    let desc = format!("{cmd:?}");
    let o = run_bounded(cmd, timeout)?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{desc} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// The Python side: the venv's interpreter, ready to run cri_client.py.
pub struct PythonEnv {
    pub python: PathBuf,
}

/// Runs scripts/install-cri-deps.sh (quiet, idempotent) for the venv
/// `target/cri-venv`; Err(reason) when it could not.
pub fn python_env() -> Result<PythonEnv, String> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is <target>/tmp")
        .to_path_buf();
    let venv = target.join("cri-venv");
    let mut cmd = Command::new("bash");
    cmd.arg(manifest_dir().join("scripts/install-cri-deps.sh")).arg(&venv);
    run_ok(cmd, INSTALL_TIMEOUT).map_err(|e| format!("the CRI client's Python deps could not be installed: {e}"))?;
    Ok(PythonEnv {
        python: venv.join("bin/python"),
    })
}

/// Builds an image tar into CARGO_TARGET_TMPDIR unless one newer than all
/// `inputs` is there already (the builds are deterministic).
fn image_tar(file: &str, script: &Path, name: &str, inputs: &[&Path]) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(file);
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = match mtime(&out) {
        Some(o) => inputs.iter().chain([&script]).all(|i| mtime(i).is_some_and(|t| t <= o)),
        None => false,
    };
    if !fresh {
        let mut cmd = Command::new("bash");
        cmd.arg(script).arg(&out).arg(name);
        if let Err(e) = run_ok(cmd, TOOL_TIMEOUT) {
            panic!("building image {name}: {e}");
        }
    }
    out
}

pub struct CriContainerd {
    /// Temp dir: config, root, state, sockets, containerd.log, runc root,
    /// the runc wrapper and its log, the pods' log dirs.
    pub dir: PathBuf,
    /// containerd's gRPC socket; CRI is served on it too.
    pub address: String,
    /// `<dir>/runc`: runc's --root is `<runc_root>/k8s.io`.
    pub runc_root: PathBuf,
    /// The runc wrapper the handler's options name as BinaryName.
    pub wrapper: PathBuf,
    /// The BinaryName wrapper appends each runc argv here.
    pub wrapper_log: PathBuf,
    /// Cgroup parent to give the pods (cgroupfs syntax).
    pub cgroup_parent: String,
    /// `containerd --version`'s version, e.g. "1.7.24~ds1".
    pub version: String,
    pub flavor: Flavor,
    /// The handler's `ConfigPath` file (1.6 only; 1.7/2.x have the
    /// options inline and no such file exists).
    pub options_file: Option<PathBuf>,
    /// The containerd binary running.
    pub containerd: PathBuf,
    /// How the handler is registered, and so the runtime type containerd tags our shim's logs with.
    pub registration: Registration,
    pub runtime_type: &'static str,
    ctr: PathBuf,
    child: Child,
}

impl CriContainerd {
    /// Starts `release`'s containerd with CRI and imports the busybox and
    /// pause images into k8s.io.
    pub fn start(release: &Release) -> CriContainerd {
        CriContainerd::start_as(release, Registration::OwnType)
    }

    /// `start`, with the handler registered as `registration` says.
    pub fn start_as(release: &Release, registration: Registration) -> CriContainerd {
        CriContainerd::start_with(release, registration, false)
    }

    /// `start_as`, with the handler's runc options saying `SystemdCgroup = systemd_cgroup` (what a
    /// node whose kubelet uses the systemd cgroup driver has).
    pub fn start_with(release: &Release, registration: Registration, systemd_cgroup: bool) -> CriContainerd {
        let version = release.version().unwrap_or_else(|e| panic!("{e}"));
        let flavor = Flavor::of(&version).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            registration == Registration::OwnType || flavor == Flavor::V2,
            "runtime_path is containerd 2.x's; this is {version}"
        );
        let n = super::next_n();
        let tag = format!("{}-{}", std::process::id(), n);
        // Short: the socket path must fit in sun_path (108 bytes).
        let dir = PathBuf::from(format!("/tmp/rrc-{tag}"));
        if dir.exists() {
            cleanup_dir(&dir); // stale, from an earlier process with our pid
        }
        fs::create_dir_all(dir.join("bin")).expect("create the temp dir");
        // Until `c` below owns it, a panic removes the dir through this.
        let guard = DirGuard(Some(dir.clone()));
        let address = dir.join("c.sock").to_string_lossy().into_owned();
        let runc_root = dir.join("runc");
        let wrapper = dir.join("runc-wrapper");
        let wrapper_log = dir.join("runc-wrapper.log");
        let runc = real_runc().expect("runc (checked by unsupported())");

        // BinaryName: log the argv, then become the real runc (same pid, so
        // the shim's pid files and reaping are unaffected).
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n# runc wrapper of tests/cri.rs: proves BinaryName is used.\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
                wrapper_log.display(),
                runc.display()
            ),
        )
        .expect("write the runc wrapper");
        set_mode(&wrapper, 0o755);
        // The runc options of the handler: BinaryName = the wrapper, Root =
        // a runc root in the temp dir (runc state goes to <Root>/k8s.io/<id>).
        let runc_options = format!(
            "BinaryName = \"{}\"\nRoot = \"{}\"\nSystemdCgroup = {systemd_cgroup}\n",
            wrapper.display(),
            runc_root.display()
        );
        let (handler_options, options_file) = if flavor.inline_options() {
            (runc_options, None)
        } else {
            let file = dir.join("runtime-options.toml");
            fs::write(
                &file,
                format!("# runc options of the rustrunc handler (CRI passes this file's path as ConfigPath)\n{runc_options}"),
            )
            .expect("write the runtime options");
            (format!("ConfigPath = \"{}\"\n", file.display()), Some(file))
        };

        let template_path = manifest_dir().join(flavor.template());
        let template =
            fs::read_to_string(&template_path).unwrap_or_else(|e| panic!("read {}: {e}", template_path.display()));
        // containerd logs what it learnt of a runtime's features at debug level only.
        let default_level = match registration {
            Registration::OwnType => "info",
            Registration::RuncTypeWithPath => "debug",
        };
        let level = std::env::var("RUSTRUNC_CRI_LOG_LEVEL").unwrap_or_else(|_| default_level.into());
        let shim = dir.join("bin").join(SHIM_NAME);
        let (runtime_type, registration_lines) = match registration {
            Registration::OwnType => (
                "io.containerd.rustrunc.v2",
                "        runtime_type = \"io.containerd.rustrunc.v2\"".to_string(),
            ),
            Registration::RuncTypeWithPath => (
                "io.containerd.runc.v2",
                format!(
                    "        runtime_type = \"io.containerd.runc.v2\"\n        runtime_path = \"{}\"",
                    shim.display()
                ),
            ),
        };
        let config = template
            .replace("@ROOT@", &dir.join("root").to_string_lossy())
            .replace("@STATE@", &dir.join("state").to_string_lossy())
            .replace("@ADDRESS@", &address)
            .replace("@LOG_LEVEL@", &level)
            .replace("@SANDBOX_IMAGE@", PAUSE_IMAGE)
            .replace("@HANDLER_OPTIONS@", &handler_options)
            .replace("@HANDLER_REGISTRATION@", &registration_lines)
            .replace("@CNI_DIR@", &dir.join("cni").to_string_lossy());
        let unfilled: Vec<&str> = config
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && l.contains('@'))
            .collect();
        assert!(
            unfilled.is_empty(),
            "unfilled placeholders in {}: {unfilled:?}",
            template_path.display()
        );
        let config_path = dir.join("config.toml");
        fs::write(&config_path, config).expect("write containerd config");

        // A private copy of the shim: other builds may replace the one in
        // target/ while this test runs.
        if fs::hard_link(SHIM_BIN, &shim).is_err() {
            fs::copy(SHIM_BIN, &shim).expect("copy the shim binary");
        }

        let containerd = release.containerd();
        let child = spawn_containerd(&containerd, &dir.join("config.toml"), &dir, &dir.join("bin"));
        // From here on a panic drops `c`, which cleans up.
        let mut c = CriContainerd {
            dir: guard.disarm(),
            address,
            runc_root,
            wrapper,
            wrapper_log,
            cgroup_parent: format!("/rustrunc-cri-{tag}"),
            version,
            flavor,
            options_file,
            containerd,
            registration,
            runtime_type,
            ctr: release.ctr(),
            child,
        };
        c.wait_ready();
        let busybox = image_tar(
            "cri-busybox.oci.tar",
            &manifest_dir().join("test-fixtures/build-image.sh"),
            BUSYBOX_IMAGE,
            &[Path::new("/bin/busybox")],
        );
        let pause = image_tar(
            "cri-pause.oci.tar",
            &manifest_dir().join("test-fixtures/pause/build-pause-image.sh"),
            PAUSE_IMAGE,
            &[&manifest_dir().join("test-fixtures/pause/pause.c")],
        );
        for tar in [busybox, pause] {
            c.ctr_ok(&["-n", CRI_NAMESPACE, "images", "import", &tar.to_string_lossy()]);
        }
        c
    }

    /// Stops containerd (SIGTERM, as systemd does: the shims keep running), leaves it stopped for
    /// `outage` and starts it again on the same config, root, state and socket; returns once it
    /// answers. What a containerd upgrade or restart is to the pods.
    pub fn restart(&mut self, outage: Duration) {
        terminate_containerd(&mut self.child);
        thread::sleep(outage);
        self.child = spawn_containerd(
            &self.containerd,
            &self.dir.join("config.toml"),
            &self.dir,
            &self.dir.join("bin"),
        );
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        wait_containerd_ready(&mut self.child, &self.ctr, &self.address, &self.dir, START_TIMEOUT);
    }

    /// `ctr --address <sock> <args>`; panics with the log tail on failure.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(&self.ctr);
        cmd.args(["--address", &self.address]).args(args);
        run_ok(cmd, TOOL_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n--- containerd.log tail:\n{}", self.log_tail(40)))
    }

    /// The runtime options containerd stored for container `id` (what CRI
    /// built from the handler's `options` table, and what the shim gets
    /// with the task): its type URL and encoded value.
    pub fn runtime_options(&self, id: &str) -> (String, Vec<u8>) {
        let info = self.ctr_ok(&["-n", CRI_NAMESPACE, "containers", "info", id]);
        let info: Value =
            serde_json::from_str(&info).unwrap_or_else(|e| panic!("ctr containers info {id}: {e}: {info}"));
        let any = &info["Runtime"]["Options"];
        let type_url = any["type_url"].as_str().unwrap_or_default().to_string();
        let b64 = any["value"].as_str().unwrap_or_default();
        let mut cmd = Command::new("base64");
        cmd.arg("-d");
        // run_bounded gives the child no stdin: decode a file.
        let tmp = self.dir.join("options.b64");
        fs::write(&tmp, b64).expect("write options.b64");
        cmd.arg(&tmp);
        let o = run_bounded(cmd, TOOL_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            o.status.success(),
            "base64 -d {b64:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        (type_url, o.stdout)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The last `n` lines of containerd.log (the shims' logs end up there).
    pub fn log_tail(&self, n: usize) -> String {
        super::log_tail(&self.dir, n)
    }

    /// Lines our shim logged (containerd tags them runtime=<runtime type>)
    /// at warning level or above.
    pub fn shim_warnings(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(&format!("runtime={}", self.runtime_type)))
            .filter(|l| {
                ["level=warning", "level=error", "level=fatal", "level=panic"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .map(String::from)
            .collect()
    }

    /// Starts the Python CRI client on our socket.
    pub fn client(&self, py: &PythonEnv) -> CriClient {
        CriClient::start(py, &self.address, &self.dir.join("gen"))
    }

    /// `/run/containerd/s/<sha256(<address>/<ns>/<group>)>`: where a shim
    /// for that group listens (containerd 1.6/1.7 and our shim).
    pub fn shim_socket(&self, group: &str) -> PathBuf {
        let hash = Sha256::digest(format!("{}/{CRI_NAMESPACE}/{group}", self.address).as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        Path::new(SHIM_SOCKET_DIR).join(hex)
    }

    /// `<state>/io.containerd.runtime.v2.task/k8s.io/<id>`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(CRI_NAMESPACE)
            .join(id)
    }

    /// Our shim daemons: live processes running the shim binary with
    /// `-address <our socket>` and no `start`/`delete` action, nor `-info`
    /// (containerd 2.x asks the runtime binary for its features that way).
    pub fn shim_daemons(&self) -> Vec<(u32, String)> {
        shim_daemons(&self.address, &self.dir)
    }

    /// Starts recording our shim daemons every few milliseconds.
    pub fn watch_shims(&self) -> ShimWatcher {
        ShimWatcher::start(self.address.clone(), self.dir.clone())
    }

    /// `<runc_root>/k8s.io`: runc state dirs of live containers.
    pub fn runc_state(&self) -> Vec<PathBuf> {
        dir_entries(&self.runc_root.join(CRI_NAMESPACE))
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        super::cgroup_dirs(&self.cgroup_parent)
    }

    /// What this containerd's pods left behind; [] after a clean teardown.
    /// Shims exit asynchronously after the last delete: retries for up to `SHIM_EXIT_TIMEOUT`.
    pub fn leftovers(&self, sockets: &[PathBuf]) -> Vec<String> {
        super::settled(super::SHIM_EXIT_TIMEOUT, || self.leftovers_now(sockets))
    }

    fn leftovers_now(&self, sockets: &[PathBuf]) -> Vec<String> {
        let mut found = Vec::new();
        for (pid, argv) in shim_processes(&self.address, &self.dir) {
            found.push(format!("shim process {pid}: {}", argv.join(" ")));
        }
        for m in mounts_under(&self.dir) {
            found.push(format!("mount {m}"));
        }
        for s in sockets.iter().filter(|s| fs::symlink_metadata(s).is_ok()) {
            found.push(format!("shim socket {}", s.display()));
        }
        for e in self.runc_state() {
            found.push(format!("runc state {}", e.display()));
        }
        let bundles = self.dir.join("state/io.containerd.runtime.v2.task").join(CRI_NAMESPACE);
        for e in dir_entries(&bundles) {
            found.push(format!("bundle dir {}", e.display()));
        }
        for cg in self.cgroup_dirs() {
            for e in dir_entries(&cg).into_iter().filter(|e| e.is_dir()) {
                found.push(format!("cgroup {}", e.display()));
            }
        }
        found
    }

    /// Best-effort teardown; every step is bounded and nothing panics.
    fn cleanup(&mut self) {
        // 1. Tasks and containers through containerd while it is up (CRI's
        //    own records go with the temp dir).
        if let Ok(None) = self.child.try_wait() {
            let list = |what: &str| -> Vec<String> {
                let mut cmd = Command::new(&self.ctr);
                cmd.args(["--address", &self.address, "-n", CRI_NAMESPACE, what, "ls", "-q"]);
                run_ok(cmd, CLEANUP_TIMEOUT)
                    .map(|s| s.split_whitespace().map(String::from).collect())
                    .unwrap_or_default()
            };
            let ctr = |args: &[&str]| {
                let mut cmd = Command::new(&self.ctr);
                cmd.args(["--address", &self.address, "-n", CRI_NAMESPACE]).args(args);
                let _ = run_bounded(cmd, CLEANUP_TIMEOUT);
            };
            for id in list("tasks") {
                ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", &id]);
                ctr(&["tasks", "rm", "-f", &id]);
            }
            for id in list("containers") {
                ctr(&["containers", "rm", &id]);
            }
        }
        // 2. containerd: SIGTERM, SIGKILL after 10 s.
        if let Ok(None) = self.child.try_wait() {
            term_then_kill(&mut self.child, Duration::from_secs(10));
        }
        let _ = self.child.wait();
        // 3. Shims outlive containerd by design: kill ours, remove their
        //    sockets (a killed shim cannot).
        let shims = shim_processes(&self.address, &self.dir);
        let sockets = listening_sockets_of(&shims.iter().map(|(p, _)| *p).collect::<Vec<_>>());
        for (pid, _) in &shims {
            super::signal(*pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !shim_processes(&self.address, &self.dir).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        for s in sockets.iter().filter(|p| p.starts_with(SHIM_SOCKET_DIR)) {
            let _ = fs::remove_file(s);
        }
        // 4. Orphaned containers: runc delete -f, then kill what is still in
        //    our cgroups and remove them.
        let root = self.runc_root.join(CRI_NAMESPACE);
        if let Some(runc) = real_runc() {
            for e in dir_entries(&root) {
                if let Some(id) = e.file_name().and_then(|s| s.to_str()) {
                    let mut cmd = Command::new(&runc);
                    cmd.arg("--root").arg(&root).args(["delete", "-f", id]);
                    let _ = run_bounded(cmd, CLEANUP_TIMEOUT);
                }
            }
        }
        for cg in self.cgroup_dirs() {
            remove_cgroup_tree(&cg);
        }
        // 5. Keep containerd's log (with the shims' logs) for a post-mortem:
        //    target/tmp/cri-containerd-<version>.log, overwritten by the
        //    next run on that version.
        let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cri-containerd-{}.log", self.version));
        let _ = fs::copy(self.dir.join("containerd.log"), keep);
        // 6. Mounts (CRI's sandbox /dev/shm, rootfs overlays) and the dir.
        cleanup_dir(&self.dir);
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        // Runs while a failed test unwinds too: cleanup() never panics.
        self.cleanup();
    }
}

/// Removes a dir when dropped, unless disarmed.
struct DirGuard(Option<PathBuf>);

impl DirGuard {
    fn disarm(mut self) -> PathBuf {
        self.0.take().expect("armed")
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            cleanup_dir(&dir);
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The Python CRI client (tests/cri/cri_client.py), one JSON line per call.
pub struct CriClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

/// A failed CRI call: the gRPC status code name and message.
#[derive(Debug)]
pub struct CallError {
    pub code: String,
    pub details: String,
}

impl CriClient {
    fn start(py: &PythonEnv, address: &str, gen: &Path) -> CriClient {
        let mut child = Command::new(&py.python)
            .arg(manifest_dir().join("tests/cri/cri_client.py"))
            .arg("--address")
            .arg(address)
            .arg("--proto")
            .arg(manifest_dir().join("tests/cri/api.proto"))
            .arg("--gen")
            .arg(gen)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", py.python.display()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut c = CriClient {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        };
        let ready = c.next_line(Duration::from_secs(60));
        let v: Value = serde_json::from_str(&ready).unwrap_or(Value::Null);
        assert_eq!(v["ready"], json!(true), "cri_client.py did not start: {ready}");
        eprintln!("cri: client ready: grpcio {} protobuf {}", v["grpc"], v["protobuf"]);
        c
    }

    fn next_line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "cri_client.py gave no answer ({e:?}) within {timeout:?}; its stderr:\n{}",
                    String::from_utf8_lossy(&self.stderr.lock().unwrap())
                );
            }
        }
    }

    /// One unary call; the response as protobuf's JSON mapping with proto
    /// field names (int64 as strings, enums as names, bytes as text).
    pub fn call(&mut self, service: &str, method: &str, request: Value) -> Result<Value, CallError> {
        let timeout = CALL_TIMEOUT.as_secs();
        let line = json!({"service": service, "method": method, "request": request, "timeout": timeout});
        let stdin = self.stdin.as_mut().expect("client stdin");
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("writing to cri_client.py: {e}"));
        let answer = self.next_line(CALL_TIMEOUT + Duration::from_secs(10));
        let v: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("bad answer {answer:?}: {e}"));
        if v["ok"] == json!(true) {
            Ok(v["response"].clone())
        } else {
            Err(CallError {
                code: v["code"].as_str().unwrap_or("?").to_string(),
                details: v["details"].as_str().unwrap_or("").to_string(),
            })
        }
    }

    /// A RuntimeService call.
    pub fn runtime(&mut self, method: &str, request: Value) -> Result<Value, CallError> {
        self.call("RuntimeService", method, request)
    }

    /// Waits until CRI's image store knows `image` (ctr import reaches it
    /// through an event), returns its id.
    pub fn wait_image(&mut self, image: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.call("ImageService", "ImageStatus", json!({"image": {"image": image}}));
            if let Ok(v) = &r {
                if let Some(id) = v["image"]["id"].as_str().filter(|s| !s.is_empty()) {
                    return id.to_string();
                }
            }
            assert!(Instant::now() < deadline, "CRI does not see image {image}: {r:?}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for CriClient {
    fn drop(&mut self) {
        drop(self.stdin.take()); // EOF: it exits by itself
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A thread that scans /proc every 5 ms for our shim daemons, so that a
/// second shim is seen even if it lived only for a short-lived container.
pub struct ShimWatcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<ShimsSeen>>,
}

/// What a ShimWatcher saw: every daemon (pid -> argv) and the most that
/// were alive in one scan.
#[derive(Debug, Default)]
pub struct ShimsSeen {
    pub daemons: std::collections::BTreeMap<u32, String>,
    pub max_at_once: usize,
    pub scans: usize,
}

impl ShimWatcher {
    fn start(address: String, dir: PathBuf) -> ShimWatcher {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut seen = ShimsSeen::default();
            while !flag.load(Ordering::SeqCst) {
                let now = shim_daemons(&address, &dir);
                seen.max_at_once = seen.max_at_once.max(now.len());
                seen.daemons.extend(now);
                seen.scans += 1;
                thread::sleep(Duration::from_millis(5));
            }
            seen
        });
        ShimWatcher {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> ShimsSeen {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for ShimWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---- /proc, mounts, cgroups ---------------------------------------------

fn shim_daemons(address: &str, dir: &Path) -> Vec<(u32, String)> {
    let shims: Vec<(u32, Vec<String>)> = shim_processes(address, dir)
        .into_iter()
        .filter(|(_, argv)| {
            argv.first().is_some_and(|a0| a0.ends_with(SHIM_NAME))
                && argv.iter().any(|a| a == "-address")
                && !argv.iter().any(|a| a == "start" || a == "delete" || a == "-info")
        })
        .collect();
    // A daemon forking runc shows up twice for a moment: the child still has the daemon's argv
    // until it execs. Children of a listed daemon are not daemons. Nor is a process that is gone by
    // the time its parent is read: a `shim delete` exiting reads back a cut argv ("… -namespace
    // k8s."), without its "delete".
    let pids: Vec<u32> = shims.iter().map(|(p, _)| *p).collect();
    shims
        .into_iter()
        .filter(|(pid, _)| super::procs::ppid(*pid).is_some_and(|pp| !pids.contains(&pp)))
        .filter(|(pid, _)| !is_zombie(*pid))
        .map(|(pid, argv)| (pid, argv.join(" ")))
        .collect()
}

/// Whether `p` is a unix socket.
pub fn is_socket(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}
