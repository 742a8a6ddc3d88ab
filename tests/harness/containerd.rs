//! The containerd layer: a private containerd per test, driven with `ctr`.
//!
//! ```ignore
//! mod harness;
//! use harness::{Containerd, IMAGE, RUNTIME};
//!
//! #[test]
//! fn lifecycle() {
//!     if harness::skip_if_unsupported() { return; }
//!     let c = Containerd::start();
//!     let id = harness::unique_id("life");
//!     let out = c.ctr_ok(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "echo", "hi"]);
//!     assert_eq!(out, "hi\n");
//!     assert_eq!(c.leftovers(), Vec::<String>::new());
//! }
//! ```
//!
//! Each `Containerd` has its own temp dir (root, state, socket, log) and its
//! own namespace, so tests can run in parallel threads and processes and
//! `leftovers()` only reports what belongs to this instance. Dropping it
//! tears everything down, also when the test panicked.
//!
//! Two things ctr does are worked around here, so tests need not care:
//! `ctr_stdin` holds stdin open until the process has started (ctr drops an
//! early EOF, see there), and `run`/`task start`/`task exec` get
//! `--fifo-dir <dir>/fifo` (ctr leaks FIFO dirs in /run/containerd/fifo).
//!
//! containerd and ctr come from /usr/bin (Debian 12: 1.6), or from the
//! directory in `RR_CONTAINERD_BIN_DIR`; `Containerd::start_with(dir)`
//! picks them per instance (tests/versions.rs runs 1.6, 1.7 and 2.x).
//!
//! Only std is used; external tools: containerd, ctr, runc, kill, umount,
//! and bash + test-fixtures/build-image.sh to make the image.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use super::host::*;
use super::procs;

/// The busybox image imported into every containerd (built by
/// test-fixtures/build-image.sh).
pub const IMAGE: &str = "docker.io/library/rustrunc-busybox:latest";
/// Runtime type that makes containerd run our shim binary,
/// `containerd-shim-rustrunc-v2`, found via the PATH we give containerd.
pub const RUNTIME: &str = "io.containerd.rustrunc.v2";
/// The shim under test (cargo builds it before integration tests).
pub const SHIM_BIN: &str = env!("CARGO_BIN_EXE_containerd-shim-rustrunc-v2");

/// Where `Containerd::start` takes containerd and ctr from, unless
/// RR_CONTAINERD_BIN_DIR names another directory holding both.
const DEFAULT_BIN_DIR: &str = "/usr/bin";
/// PATH for containerd after the shim's directory; explicit rather than
/// inherited so runc/crun resolve to the system ones (/usr/sbin/runc).
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where the shims' sockets live: containerd 1.6+ hard-codes it
/// (`/run/containerd/s/<sha256(address/ns/id)>`), whatever `state` says.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// A ctr command that takes longer than this is hung: kill it and fail.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a leftover scan lets shims exit. A shim exits after Shutdown once its last events
/// are delivered, which it bounds at 5 s; this leaves room for a loaded machine.
pub const SHIM_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Shorter bound for each ctr call made during cleanup.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);
/// `["--runtime", RUNTIME]`, to splice into `ctr run` arguments.
pub fn runtime_args() -> [&'static str; 2] {
    ["--runtime", RUNTIME]
}

/// Tests need root and containerd. Returns true (after printing
/// "skipped: <reason>") when the calling test should just return.
pub fn skip_if_unsupported() -> bool {
    let reason = if !is_root() {
        Some("not running as root".to_string())
    } else {
        let bin = default_bin_dir();
        [bin.join("containerd"), bin.join("ctr"), PathBuf::from("/bin/busybox")]
            .into_iter()
            .find(|p| !p.exists())
            .map(|p| format!("{} is missing (run scripts/install-deps.sh)", p.display()))
    };
    reason.inspect(|r| skip(r)).is_some()
}

/// The directory of containerd and ctr for `Containerd::start`.
pub fn default_bin_dir() -> PathBuf {
    match std::env::var_os("RR_CONTAINERD_BIN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_BIN_DIR),
    }
}

/// Builds the image tar once per test process, or reuses the one a
/// previous process built when it is newer than its inputs (the build is
/// deterministic, so that is the same file). Concurrent processes may build
/// at the same time; build-image.sh renames atomically.
fn image_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let safe_name: String = IMAGE
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{safe_name}.oci.tar"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-fixtures/build-image.sh");
        let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        let fresh = match (mtime(&out), mtime(&script), mtime(Path::new("/bin/busybox"))) {
            (Some(o), Some(s), Some(b)) => o >= s && o >= b,
            _ => false,
        };
        if fresh {
            return out;
        }
        let o = Command::new("bash")
            .arg(&script)
            .arg(&out)
            .arg(IMAGE)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            o.status.success(),
            "{} failed ({}):\n{}{}",
            script.display(),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
}

pub struct Containerd {
    /// Temp dir holding config, root, state, socket and containerd.log.
    pub dir: PathBuf,
    /// gRPC socket path (`ctr --address`).
    pub address: String,
    /// Namespace used for every ctr call; unique per instance so runc state
    /// (/run/containerd/runc/<ns>) and cgroups (/<ns>/<id>) are ours alone.
    pub namespace: String,
    /// Directory holding the containerd and ctr binaries used.
    pub bin_dir: PathBuf,
    child: Child,
    /// Every word given to ctr here (container ids among them): a leftover shim socket is this
    /// containerd's if its name is the hash of one of them (see [`Containerd::stale_shim_sockets`]).
    words: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Containerd {
    /// Starts a private containerd and imports IMAGE into its namespace.
    pub fn start() -> Containerd {
        Containerd::start_with(&default_bin_dir())
    }

    /// `start`, with `<bin_dir>/containerd` and `<bin_dir>/ctr` (any
    /// release from 1.6 on; 2.x migrates the version 2 config on load).
    pub fn start_with(bin_dir: &Path) -> Containerd {
        let n = super::next_n();
        // Short: the socket path must stay under the 108-byte sun_path limit.
        let dir = PathBuf::from(format!("/tmp/rr-{}-{}", std::process::id(), n));
        if dir.exists() {
            cleanup_dir(&dir); // stale, from an earlier process with our pid
        }
        fs::create_dir_all(&dir).expect("create containerd temp dir");
        let address = dir.join("c.sock").to_string_lossy().into_owned();
        let template_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-fixtures/containerd-config.toml.in");
        let template =
            fs::read_to_string(&template_path).unwrap_or_else(|e| panic!("read {}: {e}", template_path.display()));
        let config = template
            .replace("@ROOT@", &dir.join("root").to_string_lossy())
            .replace("@STATE@", &dir.join("state").to_string_lossy())
            .replace("@ADDRESS@", &address);
        let config_path = dir.join("config.toml");
        fs::write(&config_path, config).expect("write containerd config");

        let child = spawn_containerd(&bin_dir.join("containerd"), &config_path, &dir, shim_dir());
        // From here on a panic drops `c`, which cleans up.
        let mut c = Containerd {
            dir,
            address,
            namespace: format!("rustrunc-test-{}-{}", std::process::id(), n),
            bin_dir: bin_dir.to_path_buf(),
            child,
            words: Default::default(),
        };
        c.wait_ready();
        c.ctr_ok(&["images", "import", &image_tar().to_string_lossy()]);
        c
    }

    /// Stops containerd (SIGTERM, as systemd does; shims keep running) and
    /// starts the same binary on the same config, root, state and socket:
    /// an upgrade or crash as a shim sees it. Returns once it answers.
    pub fn restart(&mut self) {
        terminate_containerd(&mut self.child);
        self.child = spawn_containerd(
            &self.containerd_bin(),
            &self.dir.join("config.toml"),
            &self.dir,
            shim_dir(),
        );
        self.wait_ready();
    }

    /// The containerd binary this instance runs.
    pub fn containerd_bin(&self) -> PathBuf {
        self.bin_dir.join("containerd")
    }

    /// The ctr binary this instance runs.
    pub fn ctr_bin(&self) -> PathBuf {
        self.bin_dir.join("ctr")
    }

    /// `ctr <args>` under script(1), which gives ctr the terminal `-t` needs; `run` and `task exec`
    /// get `--fifo-dir` like every other ctr call here.
    pub fn tty_command(&self, args: &[&str]) -> Command {
        self.note(args);
        let ctr = self.ctr_bin().to_string_lossy().into_owned();
        let fifo_dir = self.dir.join("fifo").to_string_lossy().into_owned();
        let mut words = vec![ctr.as_str(), "--address", &self.address, "-n", &self.namespace];
        let (verb, rest) = match args {
            ["run", rest @ ..] => (&["run"][..], rest),
            ["task", "exec", rest @ ..] => (&["task", "exec"][..], rest),
            _ => (&[][..], args),
        };
        words.extend_from_slice(verb);
        words.extend_from_slice(&["--fifo-dir", &fifo_dir]);
        words.extend_from_slice(rest);
        let cmdline: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &cmdline.join(" "), "/dev/null"]);
        cmd
    }

    /// Runs [`Containerd::tty_command`], killed after 120 s: (exit code, what it printed).
    pub fn ctr_tty(&self, args: &[&str]) -> (Option<i32>, Vec<u8>) {
        let cmd = self.tty_command(args);
        let o = Command::new("timeout")
            .args(["-s", "KILL", "120"])
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .stdin(Stdio::null())
            .output()
            .expect("running script(1)");
        (o.status.code(), o.stdout)
    }

    /// Live shim processes of this containerd.
    pub fn shim_pids(&self) -> Vec<u32> {
        shim_pids(&self.address, &self.dir)
    }

    fn wait_ready(&mut self) {
        let ctr = self.ctr_bin();
        wait_containerd_ready(&mut self.child, &ctr, &self.address, &self.dir, START_TIMEOUT);
    }

    /// Where containerd keeps the bundles of this namespace's tasks.
    pub fn bundles(&self) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace)
    }

    /// The bundle of task `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.bundles().join(id)
    }

    /// The `unix://` address the shim serving `id` wrote into its bundle.
    pub fn shim_address(&self, id: &str) -> String {
        let file = self.bundle(id).join("address");
        let address = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        address.trim().to_string()
    }

    /// The path of the socket of the shim serving `id`.
    pub fn shim_socket(&self, id: &str) -> String {
        let address = self.shim_address(id);
        match address.strip_prefix("unix://") {
            Some(path) => path.to_string(),
            None => panic!("address file of {id}: {address:?} is not unix://"),
        }
    }

    /// A ttrpc client of the shim serving container `id`, found through the bundle's address file
    /// (for the calls ctr has no command for, such as Update).
    pub fn shim_client(&self, id: &str) -> containerd_shim_rustrunc_v2::protos::shim::shim_ttrpc::TaskClient {
        containerd_shim_rustrunc_v2::protos::shim::shim_ttrpc::TaskClient::new(
            ttrpc::Client::connect(&self.shim_address(id)).expect("connecting to the shim"),
        )
    }

    /// The last `n` lines of containerd.log (shim logs end up there too).
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.dir, n)
    }

    /// `ctr --address <sock> -n <ns> <args>`. For commands that create IO
    /// FIFOs (`run`, `task start`, `task exec`) it adds `--fifo-dir
    /// <dir>/fifo` right after the command words: ctr otherwise puts them in
    /// the host-wide /run/containerd/fifo and never removes them for
    /// detached (-d) or killed commands.
    /// Records the words of a ctr command line, which name the containers (and so the shim sockets)
    /// this containerd's tests made.
    fn note(&self, args: &[&str]) {
        let mut words = self.words.lock().unwrap_or_else(|e| e.into_inner());
        words.extend(args.iter().filter(|a| !a.starts_with('-')).map(|a| a.to_string()));
    }

    /// Sockets in /run/containerd/s that a shim of this containerd made for one of the ids its tests
    /// used (`hex(sha256(address/namespace/id))`, as containerd and the shim compute them) and that
    /// nothing listens on. The dir is shared by every containerd on the host: another test's socket
    /// is never counted. A socket must be dead on two looks 300 ms apart (a shim that is just
    /// exiting removes its socket a moment later).
    fn stale_shim_sockets(&self) -> Vec<PathBuf> {
        let ours: std::collections::HashSet<PathBuf> = {
            let words = self.words.lock().unwrap_or_else(|e| e.into_inner());
            words
                .iter()
                .map(|w| {
                    PathBuf::from(containerd_shim_rustrunc_v2::bootstrap::socket_path(
                        SHIM_SOCKET_DIR,
                        &self.address,
                        &self.namespace,
                        w,
                    ))
                })
                .collect()
        };
        let candidates = || -> Vec<PathBuf> {
            let listening = listening_unix_sockets();
            dir_entries(Path::new(SHIM_SOCKET_DIR))
                .into_iter()
                .filter(|p| ours.contains(p))
                .filter(|p| {
                    fs::symlink_metadata(p)
                        .map(|m| m.file_type().is_socket())
                        .unwrap_or(false)
                })
                .filter(|p| !listening.iter().any(|l| l == p.as_os_str().as_bytes()))
                .collect()
        };
        let first = candidates();
        if first.is_empty() {
            return first;
        }
        thread::sleep(Duration::from_millis(300));
        candidates().into_iter().filter(|p| first.contains(p)).collect()
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        self.note(args);
        let mut cmd = Command::new(self.ctr_bin());
        cmd.args(["--address", &self.address, "-n", &self.namespace]);
        let words = match args {
            ["run", ..] => 1,
            ["t" | "task" | "tasks", "start" | "exec", ..] => 2,
            _ => 0,
        };
        cmd.args(&args[..words]);
        if words > 0 && !args.iter().any(|a| a.starts_with("--fifo-dir")) {
            cmd.arg("--fifo-dir").arg(self.dir.join("fifo"));
        }
        cmd.args(&args[words..]);
        cmd
    }

    fn try_ctr(&self, args: &[&str], input: Option<&[u8]>, timeout: Duration) -> Result<Output, String> {
        run_with_timeout(self.ctr_cmd(args), input, timeout)
    }

    /// `ctr --address <sock> -n <ns> <args>`; panics if it hangs for 60 s.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_timeout(args, CTR_TIMEOUT)
    }

    /// `ctr` with another time limit (kill + panic when it is exceeded).
    pub fn ctr_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        self.try_ctr(args, None, timeout)
            .unwrap_or_else(|e| panic!("{e}\ncontainerd.log tail:\n{}", self.log_tail(40)))
    }

    /// Like `ctr`, feeding `input` on stdin, then EOF, which ctr turns into
    /// CloseIO on the process's stdin.
    ///
    /// ctr (1.6 .. 2.x) has a race: it only learns how to CloseIO once
    /// NewTask/Exec has returned, and an EOF read before that is dropped,
    /// leaving the process waiting on stdin forever. So stdin is held open
    /// until `ctr events` shows the process started (/tasks/start or
    /// /tasks/exec-started for a container id among `args`), which happens
    /// after that point; at most STDIN_GATE_TIMEOUT.
    pub fn ctr_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut events = self.spawn_ctr(&["events"]);
        let (tx, gate) = mpsc::channel();
        let stdout = events.stdout.take().unwrap();
        let ids: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let Some(e) = super::events::Event::parse(&line) else {
                    continue;
                };
                let started = e.topic == "/tasks/start" || e.topic == "/tasks/exec-started";
                if started && ids.iter().any(|id| e.container() == id) {
                    let _ = tx.send(());
                    return;
                }
            }
        });
        // `ctr events` subscribes asynchronously; give it a moment so the
        // start event is not missed (the gate timeout covers a miss).
        thread::sleep(Duration::from_millis(100));
        let result = run_gated(self.ctr_cmd(args), Some(input), Some(gate), CTR_TIMEOUT);
        let _ = events.kill();
        let _ = events.wait();
        result.unwrap_or_else(|e| panic!("{e}\ncontainerd.log tail:\n{}", self.log_tail(40)))
    }

    /// Runs ctr, asserts it succeeded, returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        self.check_ok(args, &o);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Panics with everything useful when `o` is a failure of `ctr args`.
    pub fn check_ok(&self, args: &[&str], o: &Output) {
        if !o.status.success() {
            panic!(
                "ctr {:?} failed ({})\n--- stdout:\n{}\n--- stderr:\n{}\n--- containerd.log tail:\n{}",
                args,
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                self.log_tail(40)
            );
        }
    }

    /// Starts ctr in the background (e.g. `ctr events`) with stdout and
    /// stderr piped and stdin null. The caller owns it: kill and wait it.
    /// (It also ends by itself when containerd stops.)
    pub fn spawn_ctr(&self, args: &[&str]) -> Child {
        self.ctr_cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ctr {args:?}: {e}"))
    }

    /// Task or container ids listed by `ctr <what> ls -q` (empty on error).
    fn list(&self, what: &str) -> Vec<String> {
        match self.try_ctr(&[what, "ls", "-q"], None, CLEANUP_TIMEOUT) {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(String::from)
                .collect(),
            _ => Vec::new(),
        }
    }

    fn runc_root(&self) -> PathBuf {
        // The shim's default runc root is /run/containerd/runc/<namespace>.
        Path::new("/run/containerd/runc").join(&self.namespace)
    }

    /// Everything this containerd's containers left behind; [] after a clean
    /// lifecycle. Shims exit asynchronously after `task delete`: retries for
    /// up to `SHIM_EXIT_TIMEOUT` before reporting.
    pub fn leftovers(&self) -> Vec<String> {
        settled(SHIM_EXIT_TIMEOUT, || self.leftovers_now())
    }

    /// What is left behind at this instant, for a test that expects something.
    pub fn leftovers_now(&self) -> Vec<String> {
        let mut found = Vec::new();
        for id in self.list("tasks") {
            found.push(format!("task {id} still exists"));
        }
        for id in self.list("containers") {
            found.push(format!("container {id} still exists"));
        }
        for pid in shim_pids(&self.address, &self.dir) {
            found.push(format!("shim process {pid}: {}", cmdline(pid)));
        }
        for m in mounts_under(&self.dir) {
            found.push(format!("mount {m}"));
        }
        for e in dir_entries(&self.runc_root()) {
            found.push(format!("runc state {}", e.display()));
        }
        for e in dir_entries(&self.bundles()) {
            found.push(format!("bundle dir {}", e.display()));
        }
        for cg in cgroup_dirs(&self.namespace) {
            for e in dir_entries(&cg).into_iter().filter(|e| e.is_dir()) {
                found.push(format!("cgroup {}", e.display()));
            }
        }
        for s in self.stale_shim_sockets() {
            found.push(format!("shim socket without listener {}", s.display()));
        }
        found
    }

    /// Best-effort teardown; every step is bounded and nothing panics.
    fn cleanup(&mut self) {
        // 1. Tasks and containers, through containerd while it is up.
        //    `task rm -f` SIGKILLs and waits for the exit itself.
        if let Ok(None) = self.child.try_wait() {
            for id in self.list("tasks") {
                let _ = self.try_ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", &id], None, CLEANUP_TIMEOUT);
                let _ = self.try_ctr(&["tasks", "rm", "-f", &id], None, CLEANUP_TIMEOUT);
            }
            for id in self.list("containers") {
                let _ = self.try_ctr(&["containers", "rm", &id], None, CLEANUP_TIMEOUT);
            }
        }
        // 2. containerd: SIGTERM, SIGKILL after 10 s.
        if let Ok(None) = self.child.try_wait() {
            term_then_kill(&mut self.child, Duration::from_secs(10));
        }
        let _ = self.child.wait();
        // 3. Shims outlive containerd by design; kill ours.
        let shims = shim_pids(&self.address, &self.dir);
        let sockets = listening_sockets_of(&shims);
        for pid in &shims {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !shim_pids(&self.address, &self.dir).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        // A killed shim cannot remove its socket in /run/containerd/s.
        for path in sockets.iter().filter(|p| p.starts_with(SHIM_SOCKET_DIR)) {
            let _ = fs::remove_file(path);
        }
        // 4. Containers orphaned by a dead shim: runc deletes state, kills
        //    and removes cgroups; then kill whatever is still in our cgroups.
        let root = self.runc_root();
        for e in dir_entries(&root) {
            if let Some(id) = e.file_name().and_then(|s| s.to_str()) {
                let mut cmd = Command::new("runc");
                cmd.arg("--root").arg(&root).args(["delete", "-f", id]);
                let _ = run_with_timeout(cmd, None, CLEANUP_TIMEOUT);
            }
            let _ = fs::remove_dir_all(&e);
        }
        let _ = fs::remove_dir(&root);
        for cg in cgroup_dirs(&self.namespace) {
            remove_cgroup_tree(&cg);
        }
        // 5. Mounts and the temp dir.
        cleanup_dir(&self.dir);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Drop also runs while a failed test unwinds; a second panic would
        // abort the test binary, so cleanup() never panics.
        self.cleanup();
    }
}

/// `<bin_dir>/containerd --config <dir>/config.toml`, with the shim's
/// directory first on its PATH and its output appended to containerd.log.
/// The directory of the shim under test, first in containerd's PATH.
pub fn shim_dir() -> &'static Path {
    Path::new(SHIM_BIN).parent().expect("shim binary has a directory")
}

/// Starts `containerd --config <config>` logging to `<dir>/containerd.log`, in `dir`, with PATH
/// `<first_in_path>:SYSTEM_PATH` (where it finds the shims it starts).
pub fn spawn_containerd(containerd: &Path, config: &Path, dir: &Path, first_in_path: &Path) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .expect("open containerd.log");
    Command::new(containerd)
        .arg("--config")
        .arg(config)
        .env("PATH", format!("{}:{SYSTEM_PATH}", first_in_path.display()))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log fd"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", containerd.display()))
}

/// Polls `<ctr> --address <address> version` until containerd answers; panics with the tail of
/// `<dir>/containerd.log` if `child` exits first or `timeout` passes.
pub fn wait_containerd_ready(child: &mut Child, ctr: &Path, address: &str, dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("containerd exited during startup ({st}); log:\n{}", log_tail(dir, 50));
        }
        let mut cmd = Command::new(ctr);
        cmd.args(["--address", address, "version"]);
        if matches!(run_bounded(cmd, Duration::from_secs(5)), Ok(o) if o.status.success()) {
            return;
        }
        if Instant::now() > deadline {
            panic!("containerd not ready after {timeout:?}; log:\n{}", log_tail(dir, 50));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM to a containerd this harness started, as systemd stops it (its shims keep running);
/// waits up to 20 s for it to exit, else kills it and panics.
pub fn terminate_containerd(child: &mut Child) {
    let pid = child.id();
    if !term_then_kill(child, Duration::from_secs(20)) {
        panic!("containerd {pid} ignored SIGTERM for 20 s; killed it");
    }
}

/// The last `n` lines of `<dir>/containerd.log` (the shims' logs end up there too).
pub fn log_tail(dir: &Path, n: usize) -> String {
    let log = fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Live (non-zombie) shim processes of the containerd at `address`, with
/// their argv: argv contains "containerd-shim" and either argv has
/// `<address>`, the environment has it (TTRPC_ADDRESS=<address>.ttrpc), or
/// the cwd is in our temp dir `dir` (shims run in their bundle dir).
pub fn shim_processes(address: &str, dir: &Path) -> Vec<(u32, Vec<String>)> {
    let me = std::process::id();
    let ttrpc = format!("{address}.ttrpc");
    let mut found = Vec::new();
    for pid in procs::all_pids() {
        if pid == me {
            continue;
        }
        let e = PathBuf::from(format!("/proc/{pid}"));
        let argv = procs::argv(pid);
        if !argv.iter().any(|a| a.contains("containerd-shim")) {
            continue; // zombies have an empty cmdline and are skipped here too
        }
        let env = fs::read(e.join("environ")).unwrap_or_default();
        let ours = argv.iter().any(|a| a == address)
            || env
                .split(|&c| c == 0)
                .any(|kv| kv.ends_with(address.as_bytes()) || kv.ends_with(ttrpc.as_bytes()))
            || fs::read_link(e.join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir));
        if ours && !is_zombie(pid) {
            found.push((pid, argv));
        }
    }
    found
}

fn shim_pids(address: &str, dir: &Path) -> Vec<u32> {
    shim_processes(address, dir).into_iter().map(|(pid, _)| pid).collect()
}
