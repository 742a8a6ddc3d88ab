//! The shim against every containerd at hand: Debian 12's 1.6 (/usr/bin), trixie's 1.7 and sid's 2.x
//! (target/containerd/{trixie,sid}, fetched by scripts/fetch-containerd.sh, which `make test` runs), and
//! any directory in RR_CONTAINERD_EXTRA_BIN_DIRS (colon-separated, each holding containerd and ctr, e.g.
//! a locally built 2.3). A release whose binaries are absent is skipped with the reason printed.
//!
//! For each: the lifecycle through ctr (output, exit codes, exec, pause/resume, kill, delete, the events
//! in order, which task API containerd chose), a TTY run, and a containerd restart under a running task.

mod harness;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::events::{self, wait_status, Events};
use harness::{unique_id, Containerd, IMAGE, RUNTIME};

/// A containerd release to test: where its binaries are and what `ctr version` must report.
struct Release {
    dir: PathBuf,
    /// Prefix of the server version, e.g. "1.7.".
    version_prefix: String,
}

fn system() -> Release {
    Release {
        dir: PathBuf::from("/usr/bin"),
        version_prefix: "1.6.".into(),
    }
}

fn fetched(suite: &str, version_prefix: &str) -> Release {
    Release {
        dir: Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/containerd")
            .join(suite)
            .join("usr/bin"),
        version_prefix: version_prefix.into(),
    }
}

/// Starts a containerd of `r` with the shim registered, or prints why not and returns None.
fn start(r: &Release) -> Option<Containerd> {
    if harness::skip_if_unsupported() {
        return None;
    }
    for b in ["containerd", "ctr"] {
        if !r.dir.join(b).exists() {
            eprintln!(
                "skipped: {} is missing (scripts/fetch-containerd.sh fetches it)",
                r.dir.join(b).display()
            );
            return None;
        }
    }
    let c = Containerd::start_with(&r.dir);
    // The server must be the release under test (the socket is private, but check the binary).
    let v = c.ctr_ok(&["version"]);
    let server = v
        .split("Server:")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("Version:")))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no server version in `ctr version`:\n{v}"));
    assert!(
        server.starts_with(&r.version_prefix),
        "{} is containerd {server}, expected {}*",
        r.dir.display(),
        r.version_prefix
    );
    eprintln!("containerd {server} from {}", r.dir.display());
    Some(c)
}

fn server_major(c: &Containerd) -> u32 {
    let v = c.ctr_ok(&["version"]);
    let server = v.split("Server:").nth(1).unwrap_or_default();
    server
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .and_then(|s| s.trim().trim_start_matches('v').split('.').next()?.parse().ok())
        .expect("server version")
}

fn assert_clean(c: &Containerd) {
    // containerd runs `shim delete` and the shim exits asynchronously after the last RPC.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = c.leftovers();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {left:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn task_pid(c: &Containerd, id: &str) -> String {
    let ls = c.ctr_ok(&["task", "ls"]);
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("task {id} not listed:\n{ls}"))
        .to_string()
}

/// Which task API containerd settled on for the shim of `id`, from the bundle: 2.x records the shim's
/// `start` reply in bootstrap.json; 1.x has only the shim's `address` file and speaks v2 only.
fn task_api(c: &Containerd, id: &str) -> String {
    let b = c.bundle(id);
    let address = std::fs::read_to_string(b.join("address")).expect("the shim writes <bundle>/address");
    assert!(
        address.starts_with("unix:///run/containerd/s/"),
        "address file: {address:?}"
    );
    match std::fs::read_to_string(b.join("bootstrap.json")) {
        Ok(j) => {
            assert!(server_major(c) >= 2, "bootstrap.json from containerd 1.x: {j}");
            // The shim prints a plain address, which containerd takes as version 2 over ttrpc.
            let want = format!(r#"{{"version":2,"address":"{address}","protocol":"ttrpc"}}"#);
            assert_eq!(j, want, "bootstrap.json");
            "containerd.task.v2.Task over ttrpc (bootstrap.json version 2)".into()
        }
        Err(_) => {
            assert!(server_major(c) < 2, "containerd 2.x wrote no bootstrap.json");
            "containerd.task.v2.Task over ttrpc (1.x: v2 only)".into()
        }
    }
}

/// Topics of `ctr events` lines about container `id`, in order; the init's exit is "/tasks/exit(init)".
fn topics(text: &str, id: &str) -> Vec<String> {
    events::of(text, id)
        .iter()
        .filter(|e| e.topic.starts_with("/tasks/"))
        .map(|e| {
            if e.topic == "/tasks/exit" && e.process() == id {
                "/tasks/exit(init)".to_string()
            } else {
                e.topic.to_string()
            }
        })
        .collect()
}

/// The first `topic` event about container `id`; for /tasks/exit, the init's (its `id` is the container's).
fn wait_for_event(events: &Events, id: &str, topic: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = events.peek();
        if let Some(e) = events::of(&seen, id)
            .iter()
            .find(|e| e.topic == topic && (topic != "/tasks/exit" || e.process() == id))
        {
            return e.line.to_string();
        }
        assert!(Instant::now() < deadline, "no {topic} event for {id}; events:\n{seen}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh cgroup for the shim (the unified hierarchy, or the v1 pids one), removed on drop.
struct ShimCgroup {
    name: String,
    dir: PathBuf,
}

impl ShimCgroup {
    fn new() -> ShimCgroup {
        let name = unique_id("rustrunc-shimcg");
        let root = Path::new("/sys/fs/cgroup");
        let dir = if root.join("cgroup.controllers").exists() {
            root.join(&name)
        } else {
            root.join("pids").join(&name)
        };
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        ShimCgroup { name, dir }
    }
}

impl Drop for ShimCgroup {
    fn drop(&mut self) {
        // After a clean run the shim has left it; after a failure it may still be in it (dropped before
        // the harness kills it): kill what is inside, then rmdir.
        for i in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            if i >= 20 {
                let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

fn lifecycle(r: Release) {
    let Some(c) = start(&r) else { return };

    let id = unique_id("echo");
    let out = c.ctr_ok(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "echo", "hello"]);
    assert_eq!(out, "hello\n");

    let id = unique_id("code");
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        &id,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n", "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("err\n"), "{o:?}");
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_clean(&c);

    let events = Events::start(&c);
    std::thread::sleep(Duration::from_millis(300)); // `ctr events` subscribes asynchronously
    let id = unique_id("detached");
    // Runtime options travel on `shim start`'s stdin: an Any up to 2.2, a BootstrapParams extension
    // from 2.3 on. ShimCgroup is applied by `start`, so the shim in that cgroup shows they arrived.
    let shim_cg = ShimCgroup::new();
    let opts = c.dir.join("opts.toml");
    std::fs::write(&opts, format!("ShimCgroup = \"/{}\"\n", shim_cg.name)).unwrap();
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &opts.to_string_lossy(),
        IMAGE,
        &id,
        "sleep",
        "1000",
    ]);
    wait_status(&c, &id, "RUNNING");
    eprintln!("task API: {}", task_api(&c, &id));
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    let procs = std::fs::read_to_string(shim_cg.dir.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|p| p == shims[0].to_string()),
        "shim {} not in ShimCgroup {}: {procs:?}",
        shims[0],
        shim_cg.dir.display()
    );

    let o = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo exec-out; exit 5",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "exec-out\n", "{o:?}");
    assert_eq!(o.status.code(), Some(5), "{o:?}");

    c.ctr_ok(&["task", "pause", &id]);
    wait_status(&c, &id, "PAUSED");
    c.ctr_ok(&["task", "resume", &id]);
    wait_status(&c, &id, "RUNNING");
    let out = c.ctr_ok(&["task", "exec", "--exec-id", "e2", &id, "echo", "resumed"]);
    assert_eq!(out, "resumed\n");

    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&c, &id, "STOPPED");
    let exit = wait_for_event(&events, &id, "/tasks/exit");
    assert!(exit.contains("\"exit_status\":137"), "{exit}");
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    wait_for_event(&events, &id, "/tasks/delete");
    let seen = events.peek();
    let got = topics(&seen, &id);
    let want = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/exit(init)",
        "/tasks/delete",
    ];
    assert_eq!(got, want, "events of {id}:\n{seen}");
    assert_clean(&c);
}

fn tty(r: Release) {
    let Some(c) = start(&r) else { return };
    let id = unique_id("tty");
    let (code, out) = c.ctr_tty(&[
        "run",
        "--rm",
        "-t",
        "--runtime",
        RUNTIME,
        IMAGE,
        &id,
        "sh",
        "-c",
        "tty; echo hello-tty; exit 3",
    ]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/"), "the process has no terminal: {text:?}");
    assert!(text.contains("hello-tty\r"), "{text:?}");
    assert_eq!(code, Some(3), "{text:?}");
    assert_clean(&c);
}

/// `ctr task attach` with its stdout read line by line.
struct Attach {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Attach {
    fn start(c: &Containerd, id: &str) -> Attach {
        let mut child = Command::new(c.ctr_bin())
            .args(["--address", &c.address, "-n", &c.namespace, "task", "attach", id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ctr task attach");
        let reader = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in reader.lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Attach { child, lines }
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn restart(r: Release) {
    let Some(mut c) = start(&r) else { return };
    let id = unique_id("tick");
    let started = Instant::now();
    // Numbered ticks: one produced after the restart can be told from the backlog in the fifo.
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        &id,
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done",
    ]);
    wait_status(&c, &id, "RUNNING");
    let pid = task_pid(&c, &id);
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    std::thread::sleep(Duration::from_millis(500));

    c.restart();
    // At most 5 ticks a second, so a number above this was printed after the restart.
    let backlog = (started.elapsed().as_secs_f64() / 0.2).ceil() as u64 + 1;

    assert_eq!(task_pid(&c, &id), pid, "the task changed after the restart");
    wait_status(&c, &id, "RUNNING");
    assert_eq!(c.shim_pids(), shims, "the shim must outlive containerd's restart");

    // The shim still relays the task's output, to a new client.
    let attach = Attach::start(&c, &id);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = attach
            .lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no tick after the restart (backlog {backlog})"));
        let n: u64 = l
            .strip_prefix("tick ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected output {l:?}"));
        if n > backlog {
            break;
        }
    }
    // Gone before the kill: `ctr task attach` deletes the task once it exits.
    drop(attach);

    // Controllable: exec, and events reach the new containerd.
    let events = Events::start(&c);
    std::thread::sleep(Duration::from_millis(300));
    let out = c.ctr_ok(&["task", "exec", "--exec-id", "after", &id, "echo", "after-restart"]);
    assert_eq!(out, "after-restart\n");
    wait_for_event(&events, &id, "/tasks/exec-started");
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    let exit = wait_for_event(&events, &id, "/tasks/exit");
    assert!(exit.contains("\"exit_status\":137"), "{exit}");
    wait_status(&c, &id, "STOPPED");
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert_clean(&c);
}

/// containerd's TestIssue10589, through ctr: exec1 is held inside `runc exec` while the test kills init;
/// exec2 is made after the kill and held too; both are let go, their starts fail (the init is gone).
/// Both execs stay created (Go shim: `execCreatedState.Start` fails before its transition), their Waits
/// are answered, and the task ends stopped with one init exit.
fn exec_start_failing_after_init_killed(r: Release) {
    let Some(c) = start(&r) else { return };
    let id = unique_id("i10589");
    let hold = c.dir.join(format!("{id}-hold"));
    std::fs::create_dir_all(&hold).unwrap();
    let h = hold.display();
    // runc, except that `runc exec` of `sleep 301` (exec1) or `sleep 302` (exec2) says so in
    // NAME.ready and waits for NAME.go (2 minutes at most, so nothing outlives a failed test long).
    let script = hold.join("runc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprev=; spec=\n\
             for a in \"$@\"; do [ \"$prev\" = --process ] && spec=$a; prev=$a; done\n\
             if [ -n \"$spec\" ]; then for n in 1 2; do\n\
             if grep -q '\"30'$n'\"' \"$spec\"; then\n\
             : > {h}/exec$n.ready; i=0\n\
             while [ ! -e {h}/exec$n.go ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done\n\
             fi; done; fi\nexec /usr/sbin/runc \"$@\"\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let toml = hold.join("options.toml");
    std::fs::write(&toml, format!("BinaryName = \"{}\"\n", script.display())).unwrap();
    /// Lets every held `runc exec` go, also when the test fails half-way.
    struct Release<'a>(&'a Path);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            for n in ["exec1.go", "exec2.go"] {
                let _ = std::fs::write(self.0.join(n), b"");
            }
        }
    }
    let _release = Release(&hold);
    let ready = |n: &str, exec: &mut std::process::Child| -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if hold.join(format!("{n}.ready")).exists() {
                return true;
            }
            if let Ok(Some(_)) = exec.try_wait() {
                return false;
            }
            assert!(Instant::now() < deadline, "{n} never reached runc exec");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let finish = |n: &str, mut exec: std::process::Child| {
        let st = harness::wait_bounded(&mut exec, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("`ctr task exec` of {n} did not return"));
        let mut err = String::new();
        use std::io::Read;
        let _ = exec.stderr.take().unwrap().read_to_string(&mut err);
        assert!(!st.success(), "{n} started in a container whose init was killed");
        eprintln!("{n}: start failed as it should: {}", err.trim());
    };

    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &toml.to_string_lossy(),
        IMAGE,
        &id,
        "sleep",
        "inf",
    ]);
    wait_status(&c, &id, "RUNNING");
    let events = Events::start(&c);
    // --detach: ctr neither waits for nor deletes the exec, so the test can read its state after.
    let exec = |n: &str, arg: &str| c.spawn_ctr(&["task", "exec", "--detach", "--exec-id", n, &id, "sleep", arg]);
    let mut exec1 = exec("exec1", "301");
    assert!(ready("exec1", &mut exec1), "exec1 ended before runc exec");
    let pid = task_pid(&c, &id);
    let killed = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    assert!(killed.success(), "kill -KILL {pid}");
    let mut exec2 = exec("exec2", "302");
    let exec2_ran = ready("exec2", &mut exec2);
    std::fs::write(hold.join("exec1.go"), b"").unwrap();
    finish("exec1", exec1);
    if exec2_ran {
        std::fs::write(hold.join("exec2.go"), b"").unwrap();
    }
    finish("exec2", exec2);

    use containerd_shim_rustrunc_v2::protos::shim::shim::{StateRequest, WaitRequest};
    use containerd_shim_rustrunc_v2::protos::shim::task::Status;
    let shim = c.shim_client(&id);
    let ctx = || ttrpc::context::with_timeout(10_000_000_000);
    for n in ["exec1", "exec2"] {
        let req = StateRequest {
            id: id.clone(),
            exec_id: n.into(),
            ..Default::default()
        };
        let st = shim
            .state(ctx(), &req)
            .unwrap_or_else(|e| panic!("State of {n}: {e:?}"));
        assert_eq!(
            st.status.enum_value(),
            Ok(Status::CREATED),
            "{n} (TestIssue10589 wants created)"
        );
        let req = WaitRequest {
            id: id.clone(),
            exec_id: n.into(),
            ..Default::default()
        };
        shim.wait(ctx(), &req)
            .unwrap_or_else(|e| panic!("the Wait of {n}, whose start failed, was not answered: {e:?}"));
    }
    wait_status(&c, &id, "STOPPED");
    let exit = wait_for_event(&events, &id, "/tasks/exit");
    assert!(exit.contains("\"exit_status\":137"), "{exit}");
    drop(shim);
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    let seen = events.peek();
    let inits = topics(&seen, &id).iter().filter(|t| *t == "/tasks/exit(init)").count();
    assert_eq!(inits, 1, "one exit of the init; events:\n{seen}");
    assert_clean(&c);
}

macro_rules! release_tests {
    ($($m:ident => $release:expr;)*) => {$(
        mod $m {
            #[test]
            fn lifecycle() {
                super::lifecycle($release);
            }
            #[test]
            fn tty() {
                super::tty($release);
            }
            #[test]
            fn restart() {
                super::restart($release);
            }
            #[test]
            fn exec_start_failing_after_init_killed() {
                super::exec_start_failing_after_init_killed($release);
            }
        }
    )*};
}

release_tests! {
    containerd_1_6 => super::system();
    containerd_1_7 => super::fetched("trixie", "1.7.");
    containerd_2 => super::fetched("sid", "2.");
}

/// Directories from RR_CONTAINERD_EXTRA_BIN_DIRS, each with any 1.6+ release.
#[test]
fn extra_bin_dirs() {
    let dirs = std::env::var("RR_CONTAINERD_EXTRA_BIN_DIRS").unwrap_or_default();
    if dirs.is_empty() {
        eprintln!("skipped: RR_CONTAINERD_EXTRA_BIN_DIRS is not set");
        return;
    }
    for d in dirs.split(':').filter(|d| !d.is_empty()) {
        let r = || Release {
            dir: PathBuf::from(d),
            version_prefix: String::new(),
        };
        lifecycle(r());
        tty(r());
        restart(r());
        exec_start_failing_after_init_killed(r());
    }
}
