//! Stats and OOM events through the shim on cgroup v1 (tests/cgroup2.rs has the v2 ones; the OOM test
//! here runs on both).

mod harness;

use std::time::Duration;

use containerd_shim_rustrunc_v2::protos::shim::shim::UpdateTaskRequest;
use harness::events::{self, wait_status, Events};
use harness::{unique_id, Containerd, IMAGE, RUNTIME};

/// The v1 Metrics fields read back: not on a cgroup v2 unified host.
fn skip_unless_v1() -> bool {
    if harness::skip_if_unsupported() {
        return true;
    }
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        eprintln!("skipped: a cgroup v2 unified host (tests/cgroup2.rs covers it)");
        return true;
    }
    false
}

#[test]
fn task_metrics_are_cgroup_v1_metrics() {
    if skip_unless_v1() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("metrics");
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "67108864",
        IMAGE,
        &id,
        "sleep",
        "1000",
    ]);
    let json = c.ctr_ok(&["task", "metrics", "--format", "json", &id]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert!(
        v.pointer("/cpu/usage/total").and_then(|t| t.as_u64()).unwrap_or(0) > 0,
        "{json}"
    );
    assert_eq!(
        v.pointer("/memory/usage/limit").and_then(|t| t.as_u64()),
        Some(64 << 20),
        "{json}"
    );
    assert_eq!(v.pointer("/pids/current").and_then(|t| t.as_u64()), Some(1), "{json}");
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&c, &id, "STOPPED");
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn oom_kill_is_published_before_the_exit() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let mut events = Events::start(&c);
    std::thread::sleep(Duration::from_millis(300));
    let id = unique_id("oom");
    // busybox tail keeps everything it reads when there is no newline: it grows past the 16 MiB limit.
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "16777216",
        IMAGE,
        &id,
        "sh",
        "-c",
        "head -c 200000000 /dev/zero | tail",
    ]);
    assert_eq!(o.status.code(), Some(137), "{o:?}");
    std::thread::sleep(Duration::from_millis(500));
    let text = events.stop();
    let topics = events::topics(&text, &id);
    let first_oom = topics
        .iter()
        .position(|t| *t == "/tasks/oom")
        .unwrap_or_else(|| panic!("no /tasks/oom: {topics:?}"));
    let last_oom = topics.iter().rposition(|t| *t == "/tasks/oom").unwrap();
    let exit = topics.iter().position(|t| *t == "/tasks/exit").expect("exit event");
    assert!(topics[..first_oom].contains(&"/tasks/start"), "{topics:?}");
    assert!(last_oom < exit, "OOM after exit: {topics:?}");
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

fn update_request(id: &str, json: &str) -> UpdateTaskRequest {
    let mut any = protobuf::well_known_types::any::Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    any.value = json.as_bytes().to_vec();
    UpdateTaskRequest {
        id: id.into(),
        resources: Some(any).into(),
        ..Default::default()
    }
}

#[test]
fn update_changes_the_memory_limit() {
    if skip_unless_v1() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("update");
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "33554432",
        IMAGE,
        &id,
        "sleep",
        "1000",
    ]);
    let limit = |c: &Containerd| -> Option<u64> {
        let json = c.ctr_ok(&["task", "metrics", "--format", "json", &id]);
        let v: serde_json::Value = serde_json::from_str(&json).ok()?;
        v.pointer("/memory/usage/limit")?.as_u64()
    };
    assert_eq!(limit(&c), Some(32 << 20));
    // ctr 1.6 has no `task update`: call the shim's Update directly, as containerd would.
    let shim = c.shim_client(&id);
    shim.update(
        ttrpc::context::with_timeout(10_000_000_000),
        &update_request(&id, r#"{"memory":{"limit":67108864}}"#),
    )
    .expect("Update");
    assert_eq!(limit(&c), Some(64 << 20));
    let bad = shim.update(
        ttrpc::context::with_timeout(10_000_000_000),
        &update_request(&id, "not json"),
    );
    assert!(
        format!("{bad:?}").contains("InvalidArgument") || format!("{bad:?}").contains("INVALID_ARGUMENT"),
        "{bad:?}"
    );
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&c, &id, "STOPPED");
    // A stopped container cannot be updated.
    assert!(!c
        .ctr(&["task", "update", "--memory-limit", "33554432", &id])
        .status
        .success());
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}
