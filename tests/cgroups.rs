//! Stats and OOM events through the shim (this host: cgroup v1; v2 parsing is unit-tested on fixtures).

mod common;

use std::time::Duration;

use common::events::{wait_status, Events};
use common::{unique_id, Containerd, IMAGE, RUNTIME};

#[test]
fn task_metrics_are_cgroup_v1_metrics() {
    if common::skip_if_unsupported() {
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
    if common::skip_if_unsupported() {
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
    let topics: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("\"{id}\"")))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
        .collect();
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
