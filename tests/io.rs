//! Terminal IO (ctr -t, driven through a pseudo-terminal with script(1)) and reattaching to a task.

mod harness;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::events::wait_status;
use harness::{unique_id, Containerd, IMAGE, RUNTIME};

#[test]
fn tty_run_prints_output_and_passes_the_exit_code() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
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
    assert!(text.contains("hello-tty"), "{text:?}");
    assert_eq!(code, Some(3), "{text:?}");
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn tty_execs_return_complete_large_output() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("ttyexec");
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sleep", "1000"]);
    let started = Instant::now();
    for i in 0..100 {
        let exec_id = format!("seq{i}");
        let (code, out) = c.ctr_tty(&[
            "task",
            "exec",
            "-t",
            "--exec-id",
            &exec_id,
            &id,
            "seq",
            "-s",
            " ",
            "1000000",
        ]);
        let text = String::from_utf8_lossy(&out);
        let tail = text.trim_end();
        assert!(
            tail.ends_with("999999 1000000"),
            "exec {i}: output truncated, ends with {:?}",
            &tail[tail.len().saturating_sub(40)..]
        );
        assert_eq!(code, Some(0), "exec {i}");
    }
    println!("100 tty execs of seq 1..1000000 in {:?}", started.elapsed());
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&c, &id, "STOPPED");
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

/// `ctr task attach` with a pipe for stdin and a line reader on stdout.
struct Attach {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Attach {
    fn start(c: &Containerd, id: &str) -> Attach {
        let mut child = Command::new("ctr")
            .args(["--address", &c.address, "-n", &c.namespace, "task", "attach", id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let reader = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in reader.lines().map_while(Result::ok) {
                let _ = tx.send(l + "\n");
            }
        });
        Attach { child, lines }
    }

    /// Writes `line` to the task and returns the line it prints back.
    fn echo(&mut self, line: &str) -> String {
        self.child.stdin.as_mut().unwrap().write_all(line.as_bytes()).unwrap();
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("no echo through attach")
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn attach_detach_and_reattach() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("attach");
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "cat"]);
    // First client: writes a line, sees it echoed, and vanishes without closing stdin (SIGKILL).
    let mut first = Attach::start(&c, &id);
    assert_eq!(first.echo("hello\n"), "hello\n");
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // The task survived its client, and its stdin was not closed: a second client talks to it.
    let ls = c.ctr_ok(&["task", "ls"]);
    assert!(ls.lines().any(|l| l.starts_with(&id) && l.contains("RUNNING")), "{ls}");
    let mut second = Attach::start(&c, &id);
    assert_eq!(second.echo("hello again\n"), "hello again\n");
    // ctr attach ends with the task and reports its exit status.
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    let status = harness::events::wait_child(&mut second.child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(137));
    // ctr attach deletes the task it saw exit.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.ctr_ok(&["task", "ls"]).lines().any(|l| l.starts_with(&id)) {
        assert!(Instant::now() < deadline, "task not deleted");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.ctr_ok(&["containers", "rm", &id]);
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}
