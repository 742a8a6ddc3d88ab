//! Exec, pause/resume and pids through the shim, with real containerd, runc and ctr.

mod harness;

use std::time::Duration;

use harness::events::{self, wait_child, wait_status, Events};
use harness::{unique_id, Containerd, IMAGE, RUNTIME};

fn run_detached(c: &Containerd, prefix: &str, args: &[&str]) -> String {
    let id = unique_id(prefix);
    let mut cmd = vec!["run", "-d", "--runtime", RUNTIME, IMAGE, &id];
    cmd.extend_from_slice(args);
    c.ctr_ok(&cmd);
    id
}

fn kill_and_remove(c: &Containerd, id: &str) {
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
    wait_status(c, id, "STOPPED");
    c.ctr_ok(&["task", "rm", id]);
    c.ctr_ok(&["containers", "rm", id]);
}

#[test]
fn exec_output_exit_code_and_stdin() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = run_detached(&c, "exec", &["sleep", "1000"]);
    let o = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "x1",
        &id,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 5",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("err\n"), "{o:?}");
    assert_eq!(o.status.code(), Some(5));
    // ctr calls CloseIO as soon as its stdin ends, which may be before the exec has started.
    for i in 0..5 {
        let input = format!("line {i}\n").repeat(1000);
        let o = c.ctr_stdin(
            &["task", "exec", "--exec-id", &format!("cat{i}"), &id, "cat"],
            input.as_bytes(),
        );
        assert!(o.status.success(), "{o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), input);
    }
    // stdin that ends at once: ctr sends CloseIO right after the Exec RPC, before Start (the shim must
    // keep it and apply it once the exec's IO exists, or cat never sees EOF).
    let input = c.dir.join("exec-input");
    std::fs::write(&input, "early eof\n").unwrap();
    for i in 0..5 {
        let out = std::process::Command::new("timeout")
            .args(["-s", "KILL", "30", "ctr", "--address", &c.address, "-n", &c.namespace])
            .args([
                "task",
                "exec",
                "--fifo-dir",
                &c.dir.join("fifo").to_string_lossy(),
                "--exec-id",
                &format!("early{i}"),
                &id,
                "cat",
            ])
            .stdin(std::fs::File::open(&input).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "exec with early stdin EOF: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "early eof\n");
    }
    kill_and_remove(&c, &id);
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn duplicate_exec_ids_pids_and_exec_exit_before_init_exit() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let mut events = Events::start(&c);
    let id = run_detached(&c, "execdup", &["sleep", "1000"]);
    let mut long = c.spawn_ctr(&["task", "exec", "--exec-id", "long", &id, "sleep", "1000"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ps = loop {
        let ps = c.ctr_ok(&["task", "ps", &id]);
        if ps.contains("long") {
            break ps;
        }
        assert!(std::time::Instant::now() < deadline, "exec never listed: {ps}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ps.lines().count(), 3, "header, init and the exec: {ps}");
    let o = c.ctr(&["task", "exec", "--exec-id", "long", &id, "true"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"), "{o:?}");
    // Killing init (private pid namespace) kills the exec too; the exec's exit must be published first.
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    let status = wait_child(&mut long, Duration::from_secs(30));
    assert_eq!(status.code(), Some(137));
    wait_status(&c, &id, "STOPPED");
    // An exec into a stopped container is refused.
    let o = c.ctr(&["task", "exec", "--exec-id", "late", &id, "true"]);
    assert!(!o.status.success());
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    std::thread::sleep(Duration::from_millis(300));
    let text = events.stop();
    let topics = events::topics(&text, &id);
    let exits: Vec<&str> = events::of(&text, &id)
        .iter()
        .filter(|e| e.topic == "/tasks/exit")
        .map(|e| if e.process() == "long" { "exec" } else { "init" })
        .collect();
    assert_eq!(exits, ["exec", "init"], "events:\n{text}");
    assert_eq!(topics.first(), Some(&"/tasks/create"), "{topics:?}");
    assert!(
        topics.contains(&"/tasks/exec-added") && topics.contains(&"/tasks/exec-started"),
        "{topics:?}"
    );
    assert_eq!(topics.last(), Some(&"/tasks/delete"), "{topics:?}");
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn pause_and_resume() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let mut events = Events::start(&c);
    let id = run_detached(&c, "pause", &["sleep", "1000"]);
    c.ctr_ok(&["task", "pause", &id]);
    wait_status(&c, &id, "PAUSED");
    // Pausing a paused task is refused.
    assert!(!c.ctr(&["task", "pause", &id]).status.success());
    c.ctr_ok(&["task", "resume", &id]);
    wait_status(&c, &id, "RUNNING");
    let o = c.ctr(&["task", "exec", "--exec-id", "after", &id, "echo", "alive"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "alive\n");
    kill_and_remove(&c, &id);
    std::thread::sleep(Duration::from_millis(300));
    let text = events.stop();
    let topics = events::topics(&text, &id);
    let pos = |t: &str| {
        topics
            .iter()
            .position(|x| *x == t)
            .unwrap_or_else(|| panic!("{t} missing: {topics:?}"))
    };
    assert!(pos("/tasks/start") < pos("/tasks/paused") && pos("/tasks/paused") < pos("/tasks/resumed"));
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}
