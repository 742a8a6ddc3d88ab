//! The shim on a cgroup v2 (unified) host with systemd, as Kubernetes nodes run it: freezer v2, v2
//! resources in Update, v2 Metrics, OOM through memory.events (also under the systemd cgroup driver),
//! Kill --all, and `SystemdCgroup = true` scopes. Every test skips (saying why) elsewhere; `make
//! test-cgroup2` runs them in a cgroup v2 + systemd guest.

mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_shim_rustrunc_v2::protos::shim::shim::UpdateTaskRequest;
use harness::events::{wait_status, Events};
use harness::{unique_id, Containerd, IMAGE, RUNTIME};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const LONG: Duration = Duration::from_secs(60);

fn skip(reason: &str) -> bool {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {reason}");
    true
}

/// True (after printing why) unless this is a root, containerd-equipped, cgroup v2 unified host.
fn skip_unless_v2() -> bool {
    if harness::skip_if_unsupported() {
        return true;
    }
    if !Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        return skip("not a cgroup v2 unified host (no /sys/fs/cgroup/cgroup.controllers)");
    }
    false
}

/// `skip_unless_v2`, and systemd must be PID 1 (the systemd cgroup driver talks to it).
fn skip_unless_v2_systemd() -> bool {
    if skip_unless_v2() {
        return true;
    }
    if !Path::new("/run/systemd/system").is_dir() {
        return skip("systemd is not the init system (no /run/systemd/system)");
    }
    false
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + LONG;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of task `id`, from `ctr task ls`.
fn task_pid(c: &Containerd, id: &str) -> u32 {
    let ls = c.ctr_ok(&["task", "ls"]);
    ls.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(id)).then(|| w.next()?.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no pid for {id} in:\n{ls}"))
}

/// The v2 cgroup (`0::/path`) of a process, relative and as a directory.
fn cgroup_of(pid: u32) -> (String, PathBuf) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no v2 line in /proc/{pid}/cgroup: {text}"))
        .to_string();
    let dir = Path::new(CGROUP_ROOT).join(rel.trim_start_matches('/'));
    (rel, dir)
}

fn read(dir: &Path, file: &str) -> String {
    let p = dir.join(file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

fn procs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("cgroup.procs")).map_or(0, |t| t.lines().count())
}

fn options_file(c: &Containerd, toml: &str) -> String {
    let p = c.dir.join("systemd.toml");
    std::fs::write(&p, toml).unwrap();
    p.to_string_lossy().into_owned()
}

fn run_detached(c: &Containerd, id: &str, extra: &[&str]) {
    let mut a = vec!["run", "-d", "--runtime", RUNTIME];
    a.extend_from_slice(extra);
    a.extend_from_slice(&[IMAGE, id, "sleep", "1000"]);
    c.ctr_ok(&a);
}

fn kill_and_delete(c: &Containerd, id: &str) {
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
    wait_status(c, id, "STOPPED");
    c.ctr_ok(&["task", "rm", id]);
    c.ctr_ok(&["containers", "rm", id]);
}

#[test]
fn lifecycle_exec_freezer_and_kill_all() {
    if skip_unless_v2() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("life2");
    run_detached(&c, &id, &[]);
    let (_, cg) = cgroup_of(task_pid(&c, &id));
    assert_eq!(
        c.ctr_ok(&["task", "exec", "--exec-id", "e1", &id, "echo", "hi"]),
        "hi\n"
    );

    // Pause and resume are cgroup.freeze on v2; cgroup.events says when the freeze is complete.
    c.ctr_ok(&["task", "pause", &id]);
    wait_status(&c, &id, "PAUSED");
    eventually("frozen 1", || read(&cg, "cgroup.events").contains("frozen 1"));
    c.ctr_ok(&["task", "resume", &id]);
    wait_status(&c, &id, "RUNNING");
    eventually("frozen 0", || read(&cg, "cgroup.events").contains("frozen 0"));

    // Kill --all reaches every process of the cgroup, not just the init.
    c.ctr_ok(&["task", "exec", "-d", "--exec-id", "bg", &id, "sleep", "1000"]);
    eventually("two processes in the cgroup", || procs(&cg) == 2);
    c.ctr_ok(&["task", "kill", "--all", "-s", "SIGKILL", &id]);
    wait_status(&c, &id, "STOPPED");
    eventually("an empty cgroup", || procs(&cg) == 0);
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    eventually("the cgroup removed", || !cg.exists());
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn update_writes_v2_resources() {
    if skip_unless_v2() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("update2");
    run_detached(&c, &id, &["--memory-limit", "33554432"]);
    let (_, cg) = cgroup_of(task_pid(&c, &id));
    assert_eq!(read(&cg, "memory.max"), "33554432");
    let mut any = protobuf::well_known_types::any::Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    any.value = br#"{"memory":{"limit":67108864},"cpu":{"quota":50000,"period":100000},"pids":{"limit":42}}"#.to_vec();
    let req = UpdateTaskRequest {
        id: id.clone(),
        resources: Some(any).into(),
        ..Default::default()
    };
    // ctr 1.6 has no `task update` for these: call the shim's Update directly, as containerd would.
    c.shim_client(&id)
        .update(ttrpc::context::with_timeout(30_000_000_000), &req)
        .expect("Update");
    assert_eq!(read(&cg, "memory.max"), "67108864");
    assert_eq!(read(&cg, "cpu.max"), "50000 100000");
    assert_eq!(read(&cg, "pids.max"), "42");
    kill_and_delete(&c, &id);
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

fn usage_usec(cg: &Path) -> u64 {
    read(cg, "cpu.stat")
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.parse().ok())
        .expect("usage_usec in cpu.stat")
}

#[test]
fn metrics_are_v2_metrics_in_their_units() {
    if skip_unless_v2() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("metrics2");
    run_detached(&c, &id, &["--memory-limit", "67108864"]);
    let (_, cg) = cgroup_of(task_pid(&c, &id));
    let before = usage_usec(&cg);
    let json = c.ctr_ok(&["task", "metrics", "--format", "json", &id]);
    let after = usage_usec(&cg);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let num = |p: &str| v.pointer(p).and_then(|t| t.as_u64());
    assert_eq!(num("/memory/usage_limit"), Some(64 << 20), "{json}");
    assert_eq!(num("/pids/current"), Some(1), "{json}");
    // Microseconds, as cpu.stat has them (not nanoseconds, as v1's cpuacct.usage).
    let usage = num("/cpu/usage_usec").unwrap_or(0);
    assert!(
        before <= usage && usage <= after,
        "{before} <= {usage} <= {after}: {json}"
    );
    let mem = num("/memory/usage").unwrap_or(0);
    assert!(mem > 0 && mem < 64 << 20, "{json}");
    kill_and_delete(&c, &id);
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

const OOM_RUNS: usize = 20;

/// Runs OOM_RUNS containers whose init exceeds a 32 MiB limit (`extra(id)`: more `ctr run` arguments)
/// and asserts that every one published /tasks/oom before its /tasks/exit.
fn every_oom_is_published_before_the_exit(extra: impl Fn(&Containerd, &str) -> Vec<String>) {
    let c = Containerd::start();
    let missed = oom_kills(&c, RUNTIME, OOM_RUNS, extra);
    // How often the container's memory.events was gone already and its parent's counter told (src/oom.rs).
    let late = c.log_tail(1_000_000).matches("its parent counted").count();
    eprintln!(
        "OOM before exit in {} of {OOM_RUNS} runs ({late} read from the parent's memory.events)",
        OOM_RUNS - missed.len()
    );
    assert!(
        missed.is_empty(),
        "{} of {OOM_RUNS} missed:\n{}",
        missed.len(),
        missed.join("\n")
    );
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

/// Runs `runs` containers on `runtime` whose init exceeds a 32 MiB limit and returns those that did not
/// publish /tasks/oom before their /tasks/exit (with what the shim logged of them).
fn oom_kills(
    c: &Containerd,
    runtime: &str,
    runs: usize,
    extra: impl Fn(&Containerd, &str) -> Vec<String>,
) -> Vec<String> {
    let mut events = Events::start(c);
    // Subscribed once it reports a first event.
    let probe = unique_id("probe");
    c.ctr_ok(&["containers", "create", IMAGE, &probe]);
    eventually("ctr events to subscribe", || {
        events.peek().contains(&format!("\"{probe}\""))
    });
    c.ctr_ok(&["containers", "rm", &probe]);

    let mut ids = Vec::new();
    for _ in 0..runs {
        let id = unique_id("oom2");
        let more = extra(c, &id);
        let mut a = vec!["run", "--rm", "--runtime", runtime, "--memory-limit", "33554432"];
        a.extend(more.iter().map(String::as_str));
        // The init itself is killed (dd's 64 MiB buffer cannot fit), so the cgroup empties at once: with
        // SystemdCgroup, systemd then removes the scope, memory.events with it, right away.
        a.extend_from_slice(&[IMAGE, &id, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
        let o = c.ctr(&a);
        assert_eq!(o.status.code(), Some(137), "{o:?}");
        ids.push(id);
    }
    let last = format!("\"{}\"", ids.last().unwrap());
    eventually("the last container's delete event", || {
        events
            .peek()
            .lines()
            .any(|l| l.contains("/containers/delete") && l.contains(&last))
    });
    let text = events.stop();
    let mut missed = Vec::new();
    for id in &ids {
        let topics: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(&format!("\"{id}\"")))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
            .collect();
        let oom = topics.iter().position(|t| *t == "/tasks/oom");
        let exit = topics.iter().position(|t| *t == "/tasks/exit");
        if !matches!((oom, exit), (Some(o), Some(e)) if o < e) {
            // What the shim's OOM watch saw of this container (it logs to containerd's log).
            let log = c.log_tail(100_000);
            let seen: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(id.as_str()) && l.contains("oom"))
                .collect();
            missed.push(format!("{id}: {topics:?}\n  {}", seen.join("\n  ")));
        }
    }
    missed
}

#[test]
fn oom_every_time_with_cgroupfs() {
    if skip_unless_v2() {
        return;
    }
    every_oom_is_published_before_the_exit(|_, _| Vec::new());
}

/// Kubernetes' default: kubelet's systemd cgroup driver, SystemdCgroup = true in the runtime options.
/// systemd removes a transient scope once it is empty, memory.events with it.
#[test]
fn oom_every_time_with_systemd_cgroup() {
    if skip_unless_v2_systemd() {
        return;
    }
    every_oom_is_published_before_the_exit(|c, id| {
        vec![
            "--runtime-config-path".into(),
            options_file(c, "SystemdCgroup = true\n"),
            "--cgroup".into(),
            format!("system.slice:rroom:{id}"),
        ]
    });
}

/// The Go shim (Debian's containerd-shim-runc-v2) on the same OOM kills: a figure printed for
/// comparison, not asserted (issue 14 measured it missing ~4 in 10 under the systemd driver).
#[test]
fn go_shim_oom_figure() {
    if skip_unless_v2_systemd() {
        return;
    }
    const GO_RUNS: usize = 10;
    let c = Containerd::start();
    let systemd = oom_kills(&c, "io.containerd.runc.v2", GO_RUNS, |_, id| {
        vec![
            "--runc-systemd-cgroup".into(),
            "--cgroup".into(),
            format!("system.slice:rroom:{id}"),
        ]
    });
    let cgroupfs = oom_kills(&c, "io.containerd.runc.v2", GO_RUNS, |_, _| Vec::new());
    eprintln!(
        "Go shim (containerd-shim-runc-v2): OOM before exit in {} of {GO_RUNS} runs with SystemdCgroup, {} of \
         {GO_RUNS} with cgroupfs",
        GO_RUNS - systemd.len(),
        GO_RUNS - cgroupfs.len()
    );
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

fn systemctl(args: &[&str]) -> String {
    let o = std::process::Command::new("systemctl").args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn systemd_cgroup_makes_a_scope_in_its_slice_and_removes_it() {
    if skip_unless_v2_systemd() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("scope");
    let opts = options_file(&c, "SystemdCgroup = true\n");
    let cgroup = format!("system.slice:rrtest:{id}");
    run_detached(
        &c,
        &id,
        &[
            "--runtime-config-path",
            &opts,
            "--cgroup",
            &cgroup,
            "--memory-limit",
            "33554432",
        ],
    );
    let scope = format!("rrtest-{id}.scope");
    let (rel, cg) = cgroup_of(task_pid(&c, &id));
    assert_eq!(rel, format!("/system.slice/{scope}"));
    assert_eq!(read(&cg, "memory.max"), "33554432");
    assert_eq!(systemctl(&["show", "-p", "Slice", "--value", &scope]), "system.slice");
    assert_eq!(systemctl(&["show", "-p", "MemoryMax", "--value", &scope]), "33554432");
    assert_eq!(systemctl(&["is-active", &scope]), "active");
    let json = c.ctr_ok(&["task", "metrics", "--format", "json", &id]);
    assert!(json.contains("\"usage_limit\": 33554432"), "{json}");
    kill_and_delete(&c, &id);
    eventually("the scope gone", || {
        systemctl(&["list-units", "--all", "--no-legend", &scope]).is_empty() && !cg.exists()
    });
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}
