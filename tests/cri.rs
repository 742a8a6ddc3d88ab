//! Kubernetes CRI end to end: a pod runs on our shim through containerd's
//! CRI plugin, the way the kubelet drives it.
//!
//! A private containerd with CRI on registers the shim as runtime handler
//! `rustrunc`, with runc options BinaryName = a logging runc wrapper and
//! Root = a private runc root. On every containerd at hand, one test each:
//! - `containerd_1_6`: Debian 12's 1.6 (/usr/bin), config version 2
//!   (test-fixtures/cri-config.toml.in), the options in a file CRI passes
//!   as `ConfigPath` (1.6 forwards nothing else);
//! - `containerd_1_7`: trixie's 1.7, config version 2, the options inline
//!   in the handler's table (CRI sends them as TOML in `config_body`);
//! - `containerd_2`: sid's 2.x, config version 3
//!   (test-fixtures/cri-config-v3.toml.in), the options inline;
//! - `extra_bin_dirs`: each directory in RR_CONTAINERD_EXTRA_BIN_DIRS (as
//!   tests/versions.rs), configured by its version.
//!
//! 1.7 and 2.x come from target/containerd/{trixie,sid} (fetched by
//! scripts/fetch-containerd.sh, which `make test` runs); a release whose
//! binaries are absent is skipped with the reason printed. A Python CRI
//! client (tests/cri/cri_client.py, grpcio from
//! scripts/install-cri-deps.sh) makes the calls; this file decides what to
//! call and checks the answers.
//!
//! One pod with host networking (no CNI needed), the pause image of
//! test-fixtures/pause/ as its sandbox, two busybox containers: one that
//! prints and sleeps, one that prints and exits 7. Checked: one shim daemon
//! serves the whole pod, BinaryName and Root were used, ExecSync output and
//! exit codes, the CRI log files, exit codes in ContainerStatus, and that
//! after Stop/Remove nothing is left (shim, socket, mounts, runc state,
//! bundles, cgroups).
//!
//! Run: `cargo test --test cri -- --test-threads=1 --nocapture` (root), or one
//! release: `cargo test --test cri containerd_2`. RUSTRUNC_CRI_LOG_LEVEL=debug
//! makes containerd (and so the shim, which then gets -debug) log more; the
//! log of the last run on each version stays in
//! target/tmp/cri-containerd-<version>.log.

mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use containerd_shim_rustrunc_v2::protos::shim::api::Options as RuntimeOptions;
use protobuf::Message;
use serde_json::{json, Value};

use harness::cri::{
    CriClient, CriContainerd, Registration, Release, BUSYBOX_IMAGE, CRI_NAMESPACE, HANDLER, PAUSE_IMAGE, SHIM_NAME,
};

/// Host network: CRI sets up no network namespace and calls no CNI plugin.
/// PID per container (what the kubelet asks for by default), IPC per pod.
fn namespace_options() -> Value {
    json!({"network": "NODE", "pid": "CONTAINER", "ipc": "POD"})
}

fn container_config(name: &str, script: &str) -> Value {
    json!({
        "metadata": {"name": name, "attempt": 0},
        "image": {"image": BUSYBOX_IMAGE},
        "command": ["sh", "-c", script],
        "log_path": format!("{name}/0.log"),
        "labels": {"test": "rustrunc-cri"},
        "linux": {"security_context": {"namespace_options": namespace_options()}}
    })
}

/// A call that must succeed; on failure the panic shows containerd's log.
fn ok(cri: &mut CriClient, c: &CriContainerd, method: &str, request: Value) -> Value {
    match cri.runtime(method, request.clone()) {
        Ok(v) => v,
        Err(e) => panic!(
            "CRI {method} failed: {} {}\nrequest: {request}\n--- containerd.log tail:\n{}",
            e.code,
            e.details,
            c.log_tail(60)
        ),
    }
}

fn container_status(cri: &mut CriClient, c: &CriContainerd, id: &str) -> Value {
    ok(cri, c, "ContainerStatus", json!({"container_id": id}))["status"].clone()
}

/// Polls ContainerStatus until the container is in `state`.
fn wait_state(cri: &mut CriClient, c: &CriContainerd, id: &str, state: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let st = container_status(cri, c, id);
        if st["state"] == json!(state) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} not {state} after {timeout:?}: {st}\n--- containerd.log tail:\n{}",
            c.log_tail(40)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// CRI log lines are `<RFC 3339 time> <stdout|stderr> <F|P> <text>`; waits
/// until `path` has a full (F) line with `stream` and `text`.
fn wait_log_line(path: &Path, stream: &str, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = fs::read_to_string(path).unwrap_or_default();
        let hit = log.lines().find(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            f.len() == 4 && f[0].contains('T') && f[1] == stream && f[2] == "F" && f[3] == text
        });
        if let Some(l) = hit {
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{} has no `<time> {stream} F {text}` line; it holds:\n{log}",
            path.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Exactly one shim daemon of this containerd is alive now; its pid.
fn one_shim(c: &CriContainerd, when: &str) -> u32 {
    let daemons = c.shim_daemons();
    assert_eq!(
        daemons.len(),
        1,
        "{when}: want exactly one {SHIM_NAME} daemon for this containerd, found {daemons:#?}\n--- containerd.log tail:\n{}",
        c.log_tail(40)
    );
    daemons[0].0
}

/// The socket a bundle's `address` file names (`unix:///run/containerd/s/<hex>`).
fn bundle_socket(c: &CriContainerd, id: &str) -> PathBuf {
    let path = c.bundle(id).join("address");
    let address = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    PathBuf::from(address.trim().trim_start_matches("unix://"))
}

#[test]
fn containerd_1_6() {
    pod_runs_on_one_shim_and_leaves_nothing(Release::system(), Registration::OwnType);
}

#[test]
fn containerd_1_7() {
    pod_runs_on_one_shim_and_leaves_nothing(Release::fetched("trixie", "1.7."), Registration::OwnType);
}

#[test]
fn containerd_2() {
    pod_runs_on_one_shim_and_leaves_nothing(Release::fetched("sid", "2."), Registration::OwnType);
}

/// containerd 2.x with the handler registered as `runtime_type = "io.containerd.runc.v2"` and
/// `runtime_path` = this shim: the pod runs on our shim, the options arrive as
/// containerd.runc.v1.Options, and containerd learns the handler's features from the shim's `-info`.
#[test]
fn containerd_2_runc_type_with_runtime_path() {
    pod_runs_on_one_shim_and_leaves_nothing(Release::fetched("sid", "2."), Registration::RuncTypeWithPath);
}

/// Directories from RR_CONTAINERD_EXTRA_BIN_DIRS, each with any 1.6+ release
/// (e.g. a local build of 2.3).
#[test]
fn extra_bin_dirs() {
    let dirs = std::env::var("RR_CONTAINERD_EXTRA_BIN_DIRS").unwrap_or_default();
    if dirs.is_empty() {
        return harness::cri::skip("RR_CONTAINERD_EXTRA_BIN_DIRS is not set");
    }
    for d in dirs.split(':').filter(|d| !d.is_empty()) {
        pod_runs_on_one_shim_and_leaves_nothing(Release::any_in(Path::new(d)), Registration::OwnType);
    }
}

/// The whole pod life on `release`'s containerd; skips (with the reason
/// printed) when the release or the Python client cannot be had.
fn pod_runs_on_one_shim_and_leaves_nothing(release: Release, registration: Registration) {
    let Some((py, _one_at_a_time)) = harness::cri::prepare(&release) else {
        return;
    };
    let started = Instant::now();
    let c = CriContainerd::start_as(&release, registration);
    let mut cri = c.client(&py);
    let cri = &mut cri;

    let version = ok(cri, &c, "Version", json!({"version": "v1"}));
    eprintln!(
        "cri: {} {} (CRI {}) from {}, {:?}: handler options {}",
        version["runtime_name"],
        version["runtime_version"],
        version["runtime_api_version"],
        c.containerd.display(),
        c.flavor,
        match &c.options_file {
            Some(f) => format!("in ConfigPath {}", f.display()),
            None => "inline (no options file)".into(),
        }
    );
    if registration == Registration::RuncTypeWithPath {
        // CRI asked `<runtime_path> -info` for the runtime's features at start (debug-level lines).
        let log = c.log();
        assert!(
            !log.contains("introspecting OCI runtime features needs"),
            "features not introspected:\n{}",
            c.log_tail(40)
        );
        let rro = format!("runtime \\\"{HANDLER}\\\" supports recursive read-only mounts");
        assert!(
            log.contains(&rro),
            "no {rro:?} in containerd's log:\n{}",
            log.lines()
                .filter(|l| l.contains("features") || l.contains(HANDLER))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    cri.wait_image(PAUSE_IMAGE);
    cri.wait_image(BUSYBOX_IMAGE);

    // ---- the pod ----------------------------------------------------------
    let log_dir = c.dir.join("pods/default_rustrunc-pod_uid-1");
    fs::create_dir_all(&log_dir).unwrap(); // the kubelet creates it
    let sandbox_config = json!({
        "metadata": {"name": "rustrunc-pod", "uid": "uid-1", "namespace": "default", "attempt": 0},
        "log_directory": log_dir,
        "labels": {"test": "rustrunc-cri"},
        "linux": {
            "cgroup_parent": c.cgroup_parent,
            "security_context": {"namespace_options": namespace_options()}
        }
    });
    // Every shim daemon from now until the pod is removed.
    let watcher = c.watch_shims();
    let run = ok(
        cri,
        &c,
        "RunPodSandbox",
        json!({"config": sandbox_config, "runtime_handler": HANDLER}),
    );
    let pod = run["pod_sandbox_id"].as_str().expect("pod_sandbox_id").to_string();
    let status = ok(cri, &c, "PodSandboxStatus", json!({"pod_sandbox_id": pod}))["status"].clone();
    assert_eq!(status["state"], json!("SANDBOX_READY"), "{status}");
    assert_eq!(status["runtime_handler"], json!(HANDLER), "{status}");
    let shim_pid = one_shim(&c, "after RunPodSandbox");

    // ---- two containers -----------------------------------------------------
    let mut create_start = |name: &str, script: &str| -> String {
        let created = ok(
            cri,
            &c,
            "CreateContainer",
            json!({
                "pod_sandbox_id": pod,
                "config": container_config(name, script),
                "sandbox_config": sandbox_config,
            }),
        );
        let id = created["container_id"].as_str().expect("container_id").to_string();
        ok(cri, &c, "StartContainer", json!({"container_id": id}));
        assert_eq!(one_shim(&c, &format!("after StartContainer {name}")), shim_pid);
        id
    };
    let one = create_start("one", "echo one; sleep 1000");
    let two = create_start("two", "echo two; exit 7");

    // ---- ExecSync into the running one ----------------------------------------
    let exec = ok(
        cri,
        &c,
        "ExecSync",
        json!({"container_id": one, "cmd": ["echo", "exec-ok"], "timeout": 20}),
    );
    assert_eq!(
        (
            exec["stdout"].as_str(),
            exec["stderr"].as_str(),
            exec["exit_code"].as_i64()
        ),
        (Some("exec-ok\n"), Some(""), Some(0)),
        "ExecSync echo: {exec}"
    );
    let exec = ok(
        cri,
        &c,
        "ExecSync",
        json!({"container_id": one, "cmd": ["sh", "-c", "echo to-stderr >&2; exit 3"], "timeout": 20}),
    );
    assert_eq!(
        (
            exec["stdout"].as_str(),
            exec["stderr"].as_str(),
            exec["exit_code"].as_i64()
        ),
        (Some(""), Some("to-stderr\n"), Some(3)),
        "ExecSync exit 3: {exec}"
    );
    assert_eq!(one_shim(&c, "after ExecSync"), shim_pid);

    // ---- states, exit codes, logs ---------------------------------------------
    let st_two = wait_state(cri, &c, &two, "CONTAINER_EXITED", Duration::from_secs(15));
    assert_eq!(st_two["exit_code"], json!(7), "container two: {st_two}");
    assert_ne!(st_two["finished_at"], json!("0"), "container two: {st_two}");
    let st_one = container_status(cri, &c, &one);
    assert_eq!(st_one["state"], json!("CONTAINER_RUNNING"), "container one: {st_one}");
    let line = wait_log_line(&log_dir.join("one/0.log"), "stdout", "one");
    eprintln!("cri: log of one: {line}");
    wait_log_line(&log_dir.join("two/0.log"), "stdout", "two");

    // One shim for the pod: the bundles name the socket of the group
    // io.kubernetes.cri.sandbox-id = <pod>. (Container two's bundle is
    // gone already: CRI deletes a task as soon as it exits.)
    let socket = bundle_socket(&c, &pod);
    assert_eq!(
        socket,
        c.shim_socket(&pod),
        "the sandbox's shim socket is not the pod group's"
    );
    assert_eq!(bundle_socket(&c, &one), socket, "container one went to another shim");
    assert!(harness::cri::is_socket(&socket), "{} is not a socket", socket.display());
    assert_eq!(one_shim(&c, "with the pod running"), shim_pid);
    // What CRI made of the handler's options table, for each container: a
    // runtimeoptions.v1.Options with only ConfigPath (1.6) or only the
    // table as TOML in ConfigBody (1.7: go-toml v1, "strings"; 2.x:
    // go-toml v2, 'strings').
    for id in [&pod, &one] {
        let (type_url, value) = c.runtime_options(id);
        if registration == Registration::RuncTypeWithPath {
            // Typed, as for the Go shim; what the shim made of it is checked below (options.json).
            assert_eq!(type_url, "containerd.runc.v1.Options", "runtime options of {id}");
            continue;
        }
        assert_eq!(type_url, "runtimeoptions.v1.Options", "runtime options of {id}");
        let sent = RuntimeOptions::parse_from_bytes(&value).unwrap_or_else(|e| panic!("{id}: {e}"));
        let body = String::from_utf8_lossy(&sent.config_body).into_owned();
        match &c.options_file {
            Some(file) => assert_eq!(
                (sent.config_path.as_str(), body.as_str()),
                (file.to_string_lossy().as_ref(), ""),
                "{id}: 1.6 sends ConfigPath only"
            ),
            None => {
                let wrapper = c.wrapper.to_string_lossy();
                assert!(
                    sent.config_path.is_empty()
                        && [
                            format!("BinaryName = \"{wrapper}\""),
                            format!("BinaryName = '{wrapper}'")
                        ]
                        .iter()
                        .any(|l| body.lines().any(|b| b == l)),
                    "{id}: want the handler's table inline in ConfigBody, got ConfigPath {:?}, ConfigBody {body:?}",
                    sent.config_path
                );
                if id == &pod {
                    eprintln!("cri: ConfigBody CRI sent: {body:?}");
                }
            }
        }
    }
    // What the shim decoded from the options CRI sent with each task
    // (`<bundle>/options.json`, the Go shim's keys).
    for id in [&pod, &one] {
        let path = c.bundle(id).join("options.json");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let opts: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()));
        assert_eq!(
            (&opts["binary_name"], &opts["root"]),
            (
                &json!(c.wrapper.to_string_lossy()),
                &json!(c.runc_root.to_string_lossy())
            ),
            "options of {id} as the shim decoded them: {text}"
        );
    }

    // ---- teardown through CRI ---------------------------------------------------
    // `sh` is PID 1 of its PID namespace and ignores SIGTERM: after the
    // 1 s grace period CRI sends SIGKILL.
    ok(cri, &c, "StopContainer", json!({"container_id": one, "timeout": 1}));
    let st_one = wait_state(cri, &c, &one, "CONTAINER_EXITED", Duration::from_secs(15));
    assert_eq!(
        st_one["exit_code"],
        json!(137),
        "container one after StopContainer: {st_one}"
    );
    for id in [&one, &two] {
        ok(cri, &c, "RemoveContainer", json!({"container_id": id}));
    }
    ok(cri, &c, "StopPodSandbox", json!({"pod_sandbox_id": pod}));
    let status = ok(cri, &c, "PodSandboxStatus", json!({"pod_sandbox_id": pod}))["status"].clone();
    assert_eq!(status["state"], json!("SANDBOX_NOTREADY"), "{status}");
    ok(cri, &c, "RemovePodSandbox", json!({"pod_sandbox_id": pod}));
    let seen = watcher.finish();
    assert_eq!(
        (seen.daemons.keys().copied().collect::<Vec<u32>>(), seen.max_at_once),
        (vec![shim_pid], 1),
        "not one shim for the whole pod: {seen:#?}"
    );
    let left = ok(cri, &c, "ListContainers", json!({}));
    assert_eq!(left["containers"], json!([]), "{left}");
    let left = ok(cri, &c, "ListPodSandbox", json!({}));
    assert_eq!(left["items"], json!([]), "{left}");

    // ---- BinaryName and Root were honoured --------------------------------------
    // The wrapper is named nowhere but in the handler's options (inline on
    // 1.7/2.x, with no options file; in its ConfigPath file on 1.6).
    let runs = fs::read_to_string(&c.wrapper_log).unwrap_or_default();
    let root_arg = format!("--root {}/{CRI_NAMESPACE} ", c.runc_root.display());
    // `runc features` (containerd 2.3+ asks `shim -info`, which asks
    // BinaryName) is global: no --root.
    let bad: Vec<&str> = runs
        .lines()
        .filter(|l| !l.starts_with(&root_arg) && *l != "features")
        .collect();
    assert!(bad.is_empty(), "runc calls without `{root_arg}`: {bad:#?}");
    for (what, id) in [("sandbox", &pod), ("one", &one), ("two", &two)] {
        for verb in [" create ", " start "] {
            assert!(
                runs.lines().any(|l| l.contains(verb) && l.ends_with(id.as_str())),
                "no `runc{verb}... {id}` ({what}) through the BinaryName wrapper; its log:\n{runs}"
            );
        }
    }
    assert!(
        runs.lines().any(|l| l.contains(" exec ") && l.ends_with(one.as_str())),
        "no `runc exec` for ExecSync through the wrapper; its log:\n{runs}"
    );

    // ---- nothing left -------------------------------------------------------------
    let leftovers = c.leftovers(&[socket]);
    assert_eq!(
        leftovers,
        Vec::<String>::new(),
        "leftovers after the pod was removed\n--- containerd.log tail:\n{}",
        c.log_tail(40)
    );

    let warnings = c.shim_warnings();
    eprintln!(
        "cri: containerd {}: pod served by shim pid {shim_pid} alone ({} scans); {} runc calls via the wrapper; {} shim warnings; {:.1?}",
        c.version,
        seen.scans,
        runs.lines().count(),
        warnings.len(),
        started.elapsed()
    );
    for w in warnings {
        eprintln!("cri: shim warning: {w}");
    }
}
