//! A Kubernetes pod on a cgroup v2 + systemd node, as the kubelet configures it with its default
//! `systemd` cgroup driver: the runtime handler's runc options say `SystemdCgroup = true`, and the pod
//! sandbox's `linux.cgroup_parent` is the pod's slice in the kubelet's systemd form,
//! `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid, - as _>.slice`. containerd's
//! CRI turns a parent whose last element ends in `.slice` into runc's systemd cgroups path
//! `<that slice>:cri-containerd:<id>` (getCgroupsPath), so each container of the pod gets a transient
//! `cri-containerd-<id>.scope` in the pod's slice.
//!
//! Checked: one grouped shim serves the sandbox and its container, both scopes are in the pod's slice
//! (in the kubepods hierarchy, and systemd says so), the container's memory limit is its scope's
//! memory.max, ExecSync works, and after Stop/Remove no scope unit, no shim and nothing of the
//! harness's is left; the slices, which the kubelet removes itself, are then stopped and checked gone.
//!
//! Skips (saying why) unless the host is cgroup v2 unified with systemd as PID 1; `make test-cgroup2`
//! runs it in such a guest. One test per containerd: Debian 12's 1.6 and sid's 2.x (when
//! target/containerd/sid has it, see scripts/fetch-containerd.sh).

mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use harness::cri::{
    CriClient, CriContainerd, Registration, Release, BUSYBOX_IMAGE, CRI_NAMESPACE, HANDLER, PAUSE_IMAGE,
};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const LONG: Duration = Duration::from_secs(60);
const MEMORY_LIMIT: u64 = 64 << 20;

/// Why this host cannot run these tests, if it cannot.
fn unsupported_host() -> Option<&'static str> {
    if !Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        return Some("not a cgroup v2 unified host (no /sys/fs/cgroup/cgroup.controllers)");
    }
    if !Path::new("/run/systemd/system").is_dir() {
        return Some("systemd is not the init system (no /run/systemd/system)");
    }
    None
}

fn systemctl(args: &[&str]) -> String {
    let o = Command::new("systemctl").args(args).output().expect("run systemctl");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `systemctl list-units --all` lines naming any of `needles`.
fn units_naming(needles: &[&str]) -> Vec<String> {
    systemctl(&["list-units", "--all", "--no-legend", "--plain"])
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(String::from)
        .collect()
}

/// The slices the kubelet would have made for the pod, stopped on drop as the kubelet does when the pod
/// is gone (systemd keeps a slice when it empties). The kubepods parents only when this test made them.
struct Slices {
    stop: Vec<String>,
}

impl Drop for Slices {
    fn drop(&mut self) {
        for s in &self.stop {
            let _ = Command::new("systemctl").args(["stop", s]).output();
        }
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + LONG;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A call that must succeed; on failure the panic shows containerd's log.
fn ok(cri: &mut CriClient, c: &CriContainerd, method: &str, request: Value) -> Value {
    cri.runtime(method, request.clone()).unwrap_or_else(|e| {
        panic!(
            "CRI {method} failed: {} {}\nrequest: {request}\n--- containerd.log tail:\n{}",
            e.code,
            e.details,
            c.log_tail(60)
        )
    })
}

/// Exactly one shim daemon of this containerd is alive now; its pid.
fn one_shim(c: &CriContainerd, when: &str) -> u32 {
    let daemons = c.shim_daemons();
    assert_eq!(daemons.len(), 1, "{when}: want one shim daemon, found {daemons:#?}");
    daemons[0].0
}

/// The pid of task `id` in k8s.io, from `ctr task ls`.
fn task_pid(c: &CriContainerd, id: &str) -> u32 {
    let ls = c.ctr_ok(&["-n", CRI_NAMESPACE, "task", "ls"]);
    ls.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(id)).then(|| w.next()?.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no pid for {id} in:\n{ls}"))
}

/// The v2 cgroup (`0::/path`) of a process, as written there and as a directory.
fn cgroup_of(pid: u32) -> (String, PathBuf) {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no v2 line in /proc/{pid}/cgroup: {text}"))
        .to_string();
    let dir = Path::new(CGROUP_ROOT).join(rel.trim_start_matches('/'));
    (rel, dir)
}

#[test]
fn containerd_1_6() {
    kubelet_pod_with_systemd_driver(Release::system());
}

#[test]
fn containerd_2() {
    kubelet_pod_with_systemd_driver(Release::fetched("sid", "2."));
}

fn kubelet_pod_with_systemd_driver(release: Release) {
    if let Some(reason) = unsupported_host() {
        return harness::skip(reason);
    }
    let Some((py, _one_at_a_time)) = harness::cri::prepare(&release) else {
        return;
    };

    // A pod uid as the API server makes them; systemd unit names use `-` for nesting, so the kubelet
    // escapes the uid's dashes as `_`.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let uid = format!("{:08x}-7272-4000-8000-{:012x}", std::process::id(), nanos);
    let pod_slice = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
    let cgroup_parent = format!("/kubepods.slice/kubepods-besteffort.slice/{pod_slice}");
    // Declared before the containerd: dropped after it, whatever happens.
    let mut slices = Slices {
        stop: vec![pod_slice.clone()],
    };
    for parent in ["kubepods-besteffort.slice", "kubepods.slice"] {
        if systemctl(&["show", "-p", "ActiveState", "--value", parent]) != "active" {
            slices.stop.push(parent.to_string());
        }
    }

    // The handler's runc options say SystemdCgroup = true, as on a node whose kubelet uses the
    // systemd driver.
    let c = CriContainerd::start_with(&release, Registration::OwnType, true);
    let mut cri = c.client(&py);
    let cri = &mut cri;
    let version = ok(cri, &c, "Version", json!({"version": "v1"}));
    eprintln!(
        "cri: {} {} from {}, SystemdCgroup = true, cgroup_parent {cgroup_parent}",
        version["runtime_name"],
        version["runtime_version"],
        c.containerd.display()
    );
    cri.wait_image(PAUSE_IMAGE);
    cri.wait_image(BUSYBOX_IMAGE);

    // ---- the pod ----------------------------------------------------------
    let log_dir = c.dir.join(format!("pods/default_rr-systemd-pod_{uid}"));
    fs::create_dir_all(&log_dir).unwrap(); // the kubelet creates it
    let ns = json!({"network": "NODE", "pid": "CONTAINER", "ipc": "POD"});
    let sandbox_config = json!({
        "metadata": {"name": "rr-systemd-pod", "uid": uid, "namespace": "default", "attempt": 0},
        "log_directory": log_dir,
        "linux": {
            "cgroup_parent": cgroup_parent,
            "security_context": {"namespace_options": ns}
        }
    });
    let run = ok(
        cri,
        &c,
        "RunPodSandbox",
        json!({"config": sandbox_config, "runtime_handler": HANDLER}),
    );
    let pod = run["pod_sandbox_id"].as_str().expect("pod_sandbox_id").to_string();
    let shim_pid = one_shim(&c, "after RunPodSandbox");
    let sockets = vec![c.shim_socket(&pod)];

    // The sandbox (pause) is in its scope in the pod's slice, in the kubepods hierarchy.
    let pod_scope = format!("cri-containerd-{pod}.scope");
    let (rel, _) = cgroup_of(task_pid(&c, &pod));
    assert_eq!(rel, format!("{cgroup_parent}/{pod_scope}"), "the sandbox's cgroup");
    assert_eq!(systemctl(&["show", "-p", "Slice", "--value", &pod_scope]), pod_slice);
    assert_eq!(systemctl(&["is-active", &pod_scope]), "active");

    // ---- a container with a memory limit ------------------------------------
    let created = ok(
        cri,
        &c,
        "CreateContainer",
        json!({
            "pod_sandbox_id": pod,
            "config": {
                "metadata": {"name": "main", "attempt": 0},
                "image": {"image": BUSYBOX_IMAGE},
                "command": ["sh", "-c", "echo up; sleep 1000"],
                "log_path": "main/0.log",
                "linux": {
                    "resources": {"memory_limit_in_bytes": MEMORY_LIMIT},
                    "security_context": {"namespace_options": ns}
                }
            },
            "sandbox_config": sandbox_config,
        }),
    );
    let ctr = created["container_id"].as_str().expect("container_id").to_string();
    ok(cri, &c, "StartContainer", json!({"container_id": ctr}));
    assert_eq!(
        one_shim(&c, "after StartContainer"),
        shim_pid,
        "the sandbox's shim serves the container"
    );

    let scope = format!("cri-containerd-{ctr}.scope");
    let (rel, cg) = cgroup_of(task_pid(&c, &ctr));
    assert_eq!(rel, format!("{cgroup_parent}/{scope}"), "the container's cgroup");
    assert_eq!(systemctl(&["show", "-p", "Slice", "--value", &scope]), pod_slice);
    assert_eq!(
        fs::read_to_string(cg.join("memory.max")).unwrap().trim(),
        MEMORY_LIMIT.to_string(),
        "the container's memory limit in its scope"
    );
    assert_eq!(
        systemctl(&["show", "-p", "MemoryMax", "--value", &scope]),
        MEMORY_LIMIT.to_string()
    );

    let exec = ok(
        cri,
        &c,
        "ExecSync",
        json!({"container_id": ctr, "cmd": ["sh", "-c", "echo exec-ok; cat /proc/self/cgroup"], "timeout": 30}),
    );
    assert_eq!(exec["exit_code"].as_i64(), Some(0), "ExecSync: {exec}");
    // The exec joins the container's scope (CRI's default cgroup namespace hides the path: `0::/`).
    assert!(
        exec["stdout"].as_str().unwrap_or_default().starts_with("exec-ok\n0::"),
        "ExecSync: {exec}"
    );

    // ---- teardown, as the kubelet does it -------------------------------------
    ok(cri, &c, "StopContainer", json!({"container_id": ctr, "timeout": 10}));
    ok(cri, &c, "RemoveContainer", json!({"container_id": ctr}));
    ok(cri, &c, "StopPodSandbox", json!({"pod_sandbox_id": pod}));
    ok(cri, &c, "RemovePodSandbox", json!({"pod_sandbox_id": pod}));
    eventually("both scopes gone from systemd", || {
        units_naming(&[&pod_scope, &scope]).is_empty()
    });
    let left = c.leftovers(&sockets);
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert!(c.shim_daemons().is_empty(), "a shim is left: {:?}", c.shim_daemons());

    // What is left is the kubelet's own: the slices. Stopped as it does, they go, and nothing of the pod
    // stays in systemd.
    let made_kubepods = slices.stop.iter().any(|s| s == "kubepods.slice");
    drop(slices);
    let mut mine = vec![uid.as_str(), pod.as_str(), ctr.as_str()];
    if made_kubepods {
        mine.push("kubepods");
    }
    eventually("no unit of the pod left", || units_naming(&mine).is_empty());
}
