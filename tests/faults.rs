//! Races and faults: processes that exit while the shim is still creating, starting, killing or
//! deleting them; runc, containerd, the shim itself or a client dying at the wrong moment. None may
//! hang (every ctr call is bounded), lose an exit, publish one twice, or leave anything behind.
//!
//! Run by `make stress` (`cargo test --test stress --test faults -- --ignored --test-threads=1`):
//! they stop and start containerd, SIGKILL shims and runc, and take a minute or two. The few that
//! are quick and disturb nothing else are not ignored and run in `make test` too.

mod harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::events::{self, wait_child, wait_status, Events};
use harness::fifo::{fifo_of, FifoReader};
use harness::procs;
use harness::restart::{self, Restarted};
use harness::KillOnDrop;
use harness::{unique_id, Containerd, IMAGE, RUNTIME};

fn ctr_stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn runc_root(c: &Containerd) -> PathBuf {
    Path::new("/run/containerd/runc").join(&c.namespace)
}

fn assert_clean(c: &Containerd) {
    let left = c.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// Removes container `id` whatever state its task is in (bounded ctr calls).
fn force_remove(c: &Containerd, id: &str) {
    let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    let _ = c.ctr(&["task", "rm", "-f", id]);
    let _ = c.ctr(&["containers", "rm", id]);
}

/// The exit events of `id` (its init when exec is None).
fn exits<'a>(events: &'a str, id: &str, exec: Option<&str>) -> Vec<&'a str> {
    let pid_id = exec.unwrap_or(id);
    events::of(events, id)
        .into_iter()
        .filter(|e| e.topic == "/tasks/exit" && e.process() == pid_id)
        .map(|e| e.line)
        .collect()
}

/// Index of the first event of `topic` for container `id` (and, given one, process `process`: for
/// /tasks/exit the container's id is its init's) in the event stream.
fn position(events: &str, topic: &str, id: &str, process: Option<&str>) -> Option<usize> {
    events::parse(events)
        .iter()
        .position(|e| e.topic == topic && e.container() == id && process.map_or(true, |p| e.process() == p))
}

/// A runtime options file naming `script` (written executable) as the runc binary.
fn wrapper(c: &Containerd, name: &str, body: &str) -> PathBuf {
    let script = c.dir.join(format!("{name}.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# runc, except for `create`\nis_create=\nprev=\npidfile=\n\
             for a in \"$@\"; do [ \"$a\" = create ] && is_create=1; \
             [ \"$prev\" = --pid-file ] && pidfile=$a; prev=$a; done\n\
             [ -z \"$is_create\" ] && exec /usr/sbin/runc \"$@\"\n{body}\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let toml = c.dir.join(format!("{name}.toml"));
    std::fs::write(&toml, format!("BinaryName = \"{}\"\n", script.display())).unwrap();
    toml
}

// ---- races -------------------------------------------------------------------------------------

#[test]
#[ignore = "faults (make stress)"]
fn inits_that_exit_during_create_or_right_after_start() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let mut events = Events::start(&c);
    std::thread::sleep(Duration::from_millis(300));
    // A rootfs whose /bin/bad is executable but not a program: execve fails once runc starts it.
    let rootfs = c.dir.join("badroot");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::write(rootfs.join("bin/bad"), b"\x7fELF garbage, not a program\n").unwrap();
    std::fs::set_permissions(rootfs.join("bin/bad"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // runc whose create kills the new init before it returns: the exit is reaped during Create.
    let killer = wrapper(
        &c,
        "kill-init-in-create",
        "/usr/sbin/runc \"$@\"; rc=$?\nkill -9 \"$(cat \"$pidfile\")\"\nexit $rc",
    );
    let killer = killer.to_string_lossy().into_owned();
    let rootfs = rootfs.to_string_lossy().into_owned();
    let mut expected_exits = Vec::new();
    let started = Instant::now();
    for i in 0..15 {
        // Exits right after Start.
        let id = unique_id(&format!("true{i}"));
        let o = c.ctr(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "true"]);
        assert_eq!(o.status.code(), Some(0), "{id}: {o:?}");
        expected_exits.push((id, 0, true));
        let id = unique_id(&format!("false{i}"));
        let o = c.ctr(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "false"]);
        assert_eq!(o.status.code(), Some(1), "{id}: {o:?}");
        expected_exits.push((id, 1, true));
        // A process that cannot be executed: runc init fails the execve right after Start and
        // says so on the container's stderr; the task exits 1 (as with the Go shim).
        let id = unique_id(&format!("noexec{i}"));
        let o = c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--rootfs",
            &rootfs,
            &id,
            "/bin/bad",
        ]);
        assert_eq!(o.status.code(), Some(1), "{id}: {o:?}");
        let err = ctr_stderr(&o);
        assert!(err.contains("exec format error"), "{id}: unclear error {err:?}");
        let _ = c.ctr(&["containers", "rm", &id]);
        expected_exits.push((id, 1, true));
        // The init dies during Create: Create succeeds, the exit is published once, Start refuses.
        let id = unique_id(&format!("diesincreate{i}"));
        let o = c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            &killer,
            IMAGE,
            &id,
            "sleep",
            "100",
        ]);
        assert!(!o.status.success(), "{id}: {o:?}");
        let err = ctr_stderr(&o);
        // Either answer is right, and which one comes is a race the shim does not settle: when the
        // exit is already reaped the shim refuses Start itself ("stopped"); when it is not yet, runc
        // start finds the process gone and says so. The exit is published once either way.
        assert!(
            err.contains("stopped") || err.contains("container process is already dead"),
            "{id}: unclear error {err:?}"
        );
        let _ = c.ctr(&["task", "rm", "-f", &id]);
        let _ = c.ctr(&["containers", "rm", &id]);
        expected_exits.push((id, 137, false));
    }
    println!("60 instant exits in {:.1} s", started.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_millis(500));
    let text = events.stop();
    for (id, status, started) in &expected_exits {
        let ex = exits(&text, id, None);
        assert_eq!(ex.len(), 1, "{id}: {} exit events:\n{}", ex.len(), ex.join("\n"));
        assert_eq!(events::field(ex[0], "exit_status"), *status as i64, "{id}: {}", ex[0]);
        let exit_at = position(&text, "/tasks/exit", id, None).unwrap();
        let after = if *started { "/tasks/start" } else { "/tasks/create" };
        let start_at = position(&text, after, id, None).unwrap_or_else(|| panic!("{id}: no {after}"));
        assert!(start_at < exit_at, "{id}: exit published before {after}");
    }
    assert_clean(&c);
}

#[test]
#[ignore = "faults (make stress)"]
fn exec_racing_the_init_exit() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let mut events = Events::start(&c);
    std::thread::sleep(Duration::from_millis(300));
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let mut cases = Vec::new();
    for i in 0..24 {
        let id = unique_id(&format!("race{i}"));
        // From "already gone" to "still running" by the time ctr's Exec arrives (≈ 50-150 ms).
        let delay_us = (i % 8) * 30_000; // 0 .. 210 ms
        let init = format!("usleep {delay_us}");
        c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sh", "-c", &init]);
        // The exec is started as the init exits (or just after).
        let o = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "late",
            &id,
            "sh",
            "-c",
            "echo in; usleep 20000",
        ]);
        let outcome = match o.status.code() {
            Some(0) => "exec ran".to_string(),
            Some(137) => "exec killed with its init".to_string(),
            _ => {
                let err = ctr_stderr(&o).to_lowercase();
                if err.contains("exec failed") {
                    // runc exec lost the race to the init's death ("error writing config to pipe:
                    // ... broken pipe"): runc's own words, as with the Go shim.
                    "runc exec failed".to_string()
                } else {
                    assert!(
                        err.contains("not running") || err.contains("not found") || err.contains("stopped"),
                        "{id}: exec failed without a clear reason: {o:?}"
                    );
                    "exec refused".to_string()
                }
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
        wait_status(&c, &id, "STOPPED");
        c.ctr_ok(&["task", "rm", &id]);
        c.ctr_ok(&["containers", "rm", &id]);
        cases.push(id);
    }
    println!("exec racing init exit: {outcomes:?}");
    std::thread::sleep(Duration::from_millis(500));
    let text = events.stop();
    for id in &cases {
        let init = exits(&text, id, None);
        assert_eq!(init.len(), 1, "{id}: {} init exits", init.len());
        assert_eq!(events::field(init[0], "exit_status"), 0, "{id}: {}", init[0]);
        let init_at = position(&text, "/tasks/exit", id, Some(id)).unwrap();
        if let Some(started) = position(&text, "/tasks/exec-started", id, None) {
            let ex = exits(&text, id, Some("late"));
            assert_eq!(ex.len(), 1, "{id}: a started exec has {} exits", ex.len());
            let ex_at = position(&text, "/tasks/exit", id, Some("late")).unwrap();
            assert!(started < ex_at, "{id}: exec exit before exec-started");
            assert!(ex_at < init_at, "{id}: the init's exit was published before its exec's");
        }
    }
    assert_clean(&c);
}

#[test]
#[ignore = "faults (make stress)"]
fn kill_racing_the_exit() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let mut events = Events::start(&c);
    std::thread::sleep(Duration::from_millis(300));
    let mut ids = Vec::new();
    let mut kill_results = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..24 {
        let id = unique_id(&format!("kill{i}"));
        let init = format!("usleep {}; exit 3", (i % 6) * 25_000);
        c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sh", "-c", &init]);
        // Kill at about the time it exits: either it is killed (137) or it is already gone.
        std::thread::sleep(Duration::from_millis((i % 4) as u64 * 15));
        let o = c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
        let r = if o.status.success() {
            "killed".to_string()
        } else {
            let err = ctr_stderr(&o);
            assert!(err.contains("not found"), "{id}: kill of an exiting task: {err:?}");
            "not found".to_string()
        };
        *kill_results.entry(r).or_default() += 1;
        wait_status(&c, &id, "STOPPED");
        // A second kill of the stopped task answers not found, at once.
        let o = c.ctr_timeout(&["task", "kill", "-s", "SIGKILL", &id], Duration::from_secs(10));
        assert!(
            !o.status.success() && ctr_stderr(&o).contains("not found"),
            "{id}: {o:?}"
        );
        c.ctr_ok(&["task", "rm", &id]);
        c.ctr_ok(&["containers", "rm", &id]);
        ids.push(id);
    }
    println!("kill racing exit: {kill_results:?}");
    std::thread::sleep(Duration::from_millis(500));
    let text = events.stop();
    for id in &ids {
        let ex = exits(&text, id, None);
        assert_eq!(ex.len(), 1, "{id}: {} exits", ex.len());
        let status = events::field(ex[0], "exit_status");
        assert!(status == 3 || status == 137, "{id}: exit status {status}");
    }
    assert_clean(&c);
}

#[test]
#[ignore = "faults (make stress)"]
fn delete_racing_the_exit() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let mut events = Events::start(&c);
    std::thread::sleep(Duration::from_millis(300));
    let mut ids = Vec::new();
    let mut refused = 0;
    for i in 0..20 {
        let id = unique_id(&format!("del{i}"));
        let init = format!("usleep {}", (i % 5) * 60_000);
        c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sh", "-c", &init]);
        if i % 2 == 0 {
            // Delete as the init exits: refused while it runs ("must be stopped"), then done.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let o = c.ctr_timeout(&["task", "rm", &id], Duration::from_secs(20));
                if o.status.success() {
                    break;
                }
                let err = ctr_stderr(&o);
                assert!(
                    err.contains("stopped") || err.contains("running"),
                    "{id}: unclear refusal {err:?}"
                );
                refused += 1;
                assert!(Instant::now() < deadline, "{id}: task rm never succeeded");
            }
        } else {
            // Forced: the kill races the natural exit, the delete follows.
            let o = c.ctr_timeout(&["task", "rm", "-f", &id], Duration::from_secs(20));
            assert!(o.status.success(), "{id}: task rm -f: {o:?}");
        }
        c.ctr_ok(&["containers", "rm", &id]);
        ids.push(id);
    }
    println!("delete racing exit: {refused} deletes refused while the init was running");
    std::thread::sleep(Duration::from_millis(500));
    let text = events.stop();
    for (i, id) in ids.iter().enumerate() {
        let ex = exits(&text, id, None);
        assert_eq!(ex.len(), 1, "{id}: {} exits:\n{}", ex.len(), ex.join("\n"));
        let status = events::field(ex[0], "exit_status");
        assert!(
            status == 0 || (i % 2 == 1 && status == 137),
            "{id}: exit status {status}"
        );
        let exit_at = position(&text, "/tasks/exit", id, None).unwrap();
        let delete_at = position(&text, "/tasks/delete", id, None).unwrap_or_else(|| panic!("{id}: no delete event"));
        assert!(exit_at < delete_at, "{id}: delete event before the exit");
    }
    assert_clean(&c);
}

/// The same race without containerd in between: Delete sent straight to a shim (started by hand)
/// in a loop while the init exits. Refused while it runs, then the exit status, then NotFound.
#[test]
#[ignore = "faults (make stress)"]
fn delete_racing_the_exit_at_the_shim() {
    use containerd_shim_rustrunc_v2::protos::shim::shim::{DeleteRequest, StateRequest, WaitRequest};
    use harness::shim::{ctx, DirectShim};
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let client = shim.client();
    let mut refused = 0;
    for i in 0..20 {
        let id = format!("del{i}");
        let script = format!("usleep {}", (i % 5) * 5000);
        shim.run(&id, &["sh", "-c", &script]);
        let req = DeleteRequest {
            id: id.clone(),
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let resp = loop {
            match client.delete(ctx(), &req) {
                Ok(r) => break r,
                Err(ttrpc::Error::RpcStatus(s)) => {
                    assert_ne!(
                        s.code(),
                        ttrpc::Code::NOT_FOUND,
                        "{id}: Delete lost the container: {s:?}"
                    );
                    refused += 1;
                }
                Err(e) => panic!("{id}: Delete: {e:?}"),
            }
            assert!(Instant::now() < deadline, "{id}: Delete never succeeded");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(resp.exit_status, 0, "{id}: Delete reports exit {}", resp.exit_status);
        for (what, r) in [
            ("Delete", client.delete(ctx(), &req).map(|_| ())),
            (
                "State",
                client
                    .state(
                        ctx(),
                        &StateRequest {
                            id: id.clone(),
                            ..Default::default()
                        },
                    )
                    .map(|_| ()),
            ),
            (
                "Wait",
                client
                    .wait(
                        ctx(),
                        &WaitRequest {
                            id: id.clone(),
                            ..Default::default()
                        },
                    )
                    .map(|_| ()),
            ),
        ] {
            match r {
                Err(ttrpc::Error::RpcStatus(s)) => assert_eq!(s.code(), ttrpc::Code::NOT_FOUND, "{id}: {what}: {s:?}"),
                other => panic!("{id}: {what} after Delete: {other:?}"),
            }
        }
        let residue = harness::eventually(Duration::from_secs(5), || {
            let r = shim.residue();
            r.is_empty().then_some(())
        });
        assert!(residue.is_some(), "{id}: {:#?}", shim.residue());
    }
    println!("delete racing exit at the shim: {refused} Deletes refused while the init ran");
    assert!(procs::lasting_zombies(shim.pid).is_empty());
}

#[test]
#[ignore = "faults (make stress)"]
fn container_deleted_by_runc_behind_the_shims_back() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let mut events = Events::start(&c);
    std::thread::sleep(Duration::from_millis(300));
    let id = unique_id("runcdel");
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sleep", "1000"]);
    let pid = procs::task_pid(&c.ctr_ok(&["task", "ls"]), &id).expect("init pid");
    let o = Command::new("runc")
        .arg("--root")
        .arg(runc_root(&c))
        .args(["delete", "--force", &id])
        .output()
        .unwrap();
    assert!(o.status.success(), "runc delete --force: {o:?}");
    assert!(
        harness::eventually(Duration::from_secs(10), || (!procs::alive(pid)).then_some(())).is_some(),
        "init survived runc delete --force"
    );
    // Kill answers not found, promptly, with or without --all, and nothing hangs.
    for args in [
        vec!["task", "kill", &id],
        vec!["task", "kill", "-a", "-s", "SIGKILL", &id],
    ] {
        let t = Instant::now();
        let o = c.ctr_timeout(&args, Duration::from_secs(10));
        assert!(!o.status.success(), "{args:?}: {o:?}");
        assert!(ctr_stderr(&o).contains("not found"), "{args:?}: {}", ctr_stderr(&o));
        assert!(t.elapsed() < Duration::from_secs(5), "{args:?} took {:?}", t.elapsed());
    }
    wait_status(&c, &id, "STOPPED");
    // An exec into it is refused; ps, delete and container removal work.
    let o = c.ctr_timeout(
        &["task", "exec", "--exec-id", "x", &id, "true"],
        Duration::from_secs(10),
    );
    assert!(!o.status.success(), "exec into a deleted container: {o:?}");
    let _ = c.ctr_timeout(&["task", "ps", &id], Duration::from_secs(10));
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    std::thread::sleep(Duration::from_millis(500));
    let text = events.stop();
    let ex = exits(&text, &id, None);
    assert_eq!(ex.len(), 1, "exits: {ex:?}");
    assert_eq!(events::field(ex[0], "exit_status"), 137, "{}", ex[0]);
    assert_clean(&c);
}

// ---- faults ------------------------------------------------------------------------------------

/// Checks that `lines` are `prefix0, prefix1, ...` in order with no repeats; returns the missing
/// indices (lines lost) and the last index seen.
fn sequence_gaps(text: &str, prefix: &str) -> (Vec<usize>, Option<usize>) {
    let mut expect = 0usize;
    let mut missing = Vec::new();
    for l in text.lines() {
        let n: usize = l
            .strip_prefix(prefix)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {l:?}"));
        assert!(
            n >= expect,
            "line {prefix}{n} repeated or out of order (expected {prefix}{expect})"
        );
        missing.extend(expect..n);
        expect = n + 1;
    }
    (missing, expect.checked_sub(1))
}

#[test]
#[ignore = "faults (make stress)"]
fn containerd_restart_keeps_tasks_output_and_control() {
    if harness::skip_if_unsupported() {
        return;
    }
    const LINES: usize = 3000;
    let c = Containerd::start();
    // A: writes numbered lines on stdout and stderr (≈ 6 s), once /go exists; its fifos are read
    //    here directly, so the reader can go away and come back like a client.
    let a = unique_id("writer");
    let script = format!(
        "until [ -e /go ]; do usleep 10000; done; i=0; while [ $i -lt {LINES} ]; do echo o$i; echo e$i >&2; \
         i=$((i+1)); usleep 2000; done; exit 0"
    );
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &a, "sh", "-c", &script]);
    // B: just runs, to be controlled after the restart.
    let b = unique_id("sleeper");
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &b, "sleep", "100000"]);
    // C: attached to a `ctr run` that dies with containerd: C must not get SIGPIPE.
    let cc = unique_id("attached");
    let mut attached = KillOnDrop(c.spawn_ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        &cc,
        "sh",
        "-c",
        "while true; do echo tick; usleep 1000; done",
    ]));
    let _attached_out = harness::drain(attached.0.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let _attached_err = harness::drain(attached.0.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let out_path = fifo_of(&c, &a, "stdout");
    let err_path = fifo_of(&c, &a, "stderr");
    let out1 = FifoReader::open(&out_path);
    let err1 = FifoReader::open(&err_path);
    c.ctr_ok(&["task", "exec", "--exec-id", "go", &a, "touch", "/go"]);
    wait_status(&c, &cc, "RUNNING");
    let a_pid = procs::task_pid(&c.ctr_ok(&["task", "ls"]), &a).unwrap();
    let c_pid = procs::task_pid(&c.ctr_ok(&["task", "ls"]), &cc).unwrap();
    let shims_before = procs::shims_of(&c.address);
    std::thread::sleep(Duration::from_millis(1000));

    // containerd goes away; so do our readers of A's output.
    let old = restart::stop(&c);
    let read_before = out1.text().lines().count();
    let out1 = out1.close();
    let err1 = err1.close();
    let st = wait_child(&mut attached.0, Duration::from_secs(30));
    println!("containerd {old} stopped; `ctr run` attached to C exited ({st}); {read_before} lines read so far");
    std::thread::sleep(Duration::from_secs(2)); // A keeps writing, C keeps trying to
    assert!(
        procs::alive(a_pid) && procs::alive(c_pid),
        "a container died while containerd was down"
    );
    assert_eq!(
        procs::shims_of(&c.address),
        shims_before,
        "a shim died while containerd was down"
    );

    let r = Restarted::start(&c);
    println!("containerd restarted as {}", r.pid());
    let mut events = Events::start(&c);
    std::thread::sleep(Duration::from_millis(300));
    let ls = c.ctr_ok(&["task", "ls"]);
    for id in [&a, &b, &cc] {
        assert!(
            ls.lines().any(|l| l.starts_with(id.as_str()) && l.contains("RUNNING")),
            "{id} after restart:\n{ls}"
        );
    }
    // A's output, from where the first reader stopped: nothing lost beyond a pipe's worth.
    let out2 = FifoReader::open(&out_path);
    let err2 = FifoReader::open(&err_path);
    let last = format!("o{}\n", LINES - 1);
    let done = harness::eventually(Duration::from_secs(60), || out2.text().ends_with(&last).then_some(()));
    wait_status(&c, &a, "STOPPED");
    std::thread::sleep(Duration::from_millis(300));
    let (out2, err2) = (out2.close(), err2.close());
    let out_all = [out1, out2].concat();
    let err_all = [err1, err2].concat();
    let (out_missing, out_last) = sequence_gaps(&String::from_utf8_lossy(&out_all), "o");
    let (err_missing, err_last) = sequence_gaps(&String::from_utf8_lossy(&err_all), "e");
    println!(
        "A: stdout {} bytes, {} lines missing; stderr {} bytes, {} lines missing",
        out_all.len(),
        out_missing.len(),
        err_all.len(),
        err_missing.len()
    );
    assert!(done.is_some(), "A's stdout stopped at o{out_last:?} after the restart");
    assert_eq!(out_last, Some(LINES - 1));
    assert_eq!(err_last, Some(LINES - 1));
    // A line is at most 6 bytes: a pipe buffer (64 KiB) holds far more than what was written while
    // nobody read, so nothing may be missing at all.
    assert!(out_missing.is_empty(), "stdout lines lost: {out_missing:?}");
    assert!(err_missing.is_empty(), "stderr lines lost: {err_missing:?}");

    // B and C are controllable: kill, exit status (not SIGPIPE's 141), delete.
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &b]);
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &cc]);
    for id in [&a, &b, &cc] {
        wait_status(&c, id, "STOPPED");
        c.ctr_ok(&["task", "rm", id]);
        c.ctr_ok(&["containers", "rm", id]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let text = events.stop();
    for (id, want) in [(&a, 0), (&b, 137), (&cc, 137)] {
        let ex = exits(&text, id, None);
        assert_eq!(ex.len(), 1, "{id}: exits after the restart:\n{text}");
        assert_eq!(events::field(ex[0], "exit_status"), want, "{id}: {}", ex[0]);
    }
    // A new container runs through the restarted containerd.
    let id = unique_id("after");
    assert_eq!(
        c.ctr_ok(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "echo", "after"]),
        "after\n"
    );
    assert_clean(&c);
    drop(r);
}

/// Shim daemon of `id`, its socket, and the pids in its container (init, its child and an exec,
/// whose attached ctr is returned to be killed at the end).
fn shim_with_processes(c: &Containerd, id: &str) -> (u32, PathBuf, Vec<u32>, KillOnDrop) {
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "sh",
        "-c",
        "sleep 1000 & sleep 1000",
    ]);
    let exec = KillOnDrop(c.spawn_ctr(&["task", "exec", "--exec-id", "bg", id, "sleep", "1000"]));
    let ps = harness::eventually(Duration::from_secs(20), || {
        let ps = c.ctr_ok(&["task", "ps", id]);
        (ps.lines().count() >= 4).then_some(ps)
    })
    .expect("init, its child and the exec running");
    let pids: Vec<u32> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let shim = procs::shim_daemon(&c.address, id).expect("shim");
    let socket = PathBuf::from(c.shim_socket(id));
    (shim, socket, pids, exec)
}

#[test]
#[ignore = "faults (make stress)"]
fn sigkilled_shim_is_cleaned_up_by_containerd() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("shimkill");
    let (shim, _socket, pids, _exec) = shim_with_processes(&c, &id);
    harness::signal(shim, libc::SIGKILL);
    // containerd notices the closed connection and runs `shim delete`.
    let gone = harness::eventually(Duration::from_secs(30), || {
        (!c.ctr_ok(&["task", "ls"]).lines().any(|l| l.starts_with(id.as_str()))).then_some(())
    });
    assert!(
        gone.is_some(),
        "task still listed after its shim was killed:\n{}",
        c.log_tail(30)
    );
    for pid in &pids {
        assert!(
            harness::eventually(Duration::from_secs(10), || (!procs::alive(*pid)).then_some(())).is_some(),
            "container process {pid} survived its shim: {:?}",
            procs::argv(*pid)
        );
    }
    // The task leaves `ctr task ls` as soon as its shim is unreachable; containerd's cleanup (`shim
    // delete`: runc delete --force, unmount) runs in the background just after.
    let _ = harness::eventually(Duration::from_secs(15), || {
        (procs::entries(&runc_root(&c)).is_empty() && procs::mounts_under(&c.dir).is_empty()).then_some(())
    });
    let state = procs::entries(&runc_root(&c));
    let mounts = procs::mounts_under(&c.dir);
    assert!(
        state.is_empty() && mounts.is_empty(),
        "left after `shim delete`: runc state {state:?}, mounts {mounts:?}\ncontainerd.log:\n{}",
        c.log_tail(30)
    );
    c.ctr_ok(&["containers", "rm", &id]);
    // The socket is the subject of killed_shims_socket_is_removed; everything else must be gone.
    let left = harness::settled(harness::SHIM_EXIT_TIMEOUT, || {
        c.leftovers_now()
            .into_iter()
            .filter(|l| !l.starts_with("shim socket without listener"))
            .collect()
    });
    assert!(left.is_empty(), "{left:#?}");
}

/// `shim delete` removes the socket a SIGKILLed shim could not (since 0e14a38; containerd 1.6.20's Go
/// shim leaves it behind).
#[test]
#[ignore = "faults (make stress)"]
fn killed_shims_socket_is_removed() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("shimsock");
    let (shim, socket, _, _exec) = shim_with_processes(&c, &id);
    assert!(socket.exists());
    harness::signal(shim, libc::SIGKILL);
    let gone = harness::eventually(Duration::from_secs(30), || {
        (!c.ctr_ok(&["task", "ls"]).lines().any(|l| l.starts_with(id.as_str()))).then_some(())
    });
    assert!(gone.is_some(), "task still listed after its shim was killed");
    c.ctr_ok(&["containers", "rm", &id]);
    let removed = harness::eventually(Duration::from_secs(10), || (!socket.exists()).then_some(()));
    assert!(
        removed.is_some(),
        "socket {} left after `shim delete`",
        socket.display()
    );
    assert_clean(&c);
}

#[test]
#[ignore = "faults (make stress)"]
fn runc_killed_mid_create_fails_cleanly() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let hang_pid = c.dir.join("hung-runc.pid");
    let mut variants: Vec<(String, PathBuf)> = vec![
        (
            "killed before doing anything".into(),
            wrapper(&c, "die-first", "kill -9 $$"),
        ),
        (
            "killed after runc create returned".into(),
            wrapper(&c, "die-after", "/usr/sbin/runc \"$@\"\nkill -9 $$"),
        ),
    ];
    for ms in [5, 20, 50, 100, 200] {
        variants.push((
            format!("runc create SIGKILLed after {ms} ms"),
            wrapper(
                &c,
                &format!("die-mid-{ms}"),
                &format!("/usr/sbin/runc \"$@\" &\nrunc=$!\nsleep 0.{ms:03}\nkill -9 $runc\nwait $runc\nkill -9 $$"),
            ),
        ));
    }
    variants.push((
        "hung runc killed from outside".into(),
        wrapper(&c, "hang", &format!("echo $$ > {}\nexec sleep 60", hang_pid.display())),
    ));
    for (what, toml) in &variants {
        let id = unique_id("midcreate");
        let toml = toml.to_string_lossy().into_owned();
        let args = [
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            &toml,
            IMAGE,
            &id,
            "sleep",
            "1000",
        ];
        let t = Instant::now();
        let o = if what.starts_with("hung") {
            let _ = std::fs::remove_file(&hang_pid);
            let mut run = KillOnDrop(c.spawn_ctr(&args));
            let pid: u32 = harness::eventually(Duration::from_secs(20), || {
                std::fs::read_to_string(&hang_pid).ok()?.trim().parse().ok()
            })
            .expect("the hung runc wrote its pid");
            std::thread::sleep(Duration::from_millis(300));
            harness::signal(pid, libc::SIGKILL);
            let status = wait_child(&mut run.0, Duration::from_secs(30));
            let mut err = String::new();
            let _ = run.0.stderr.take().unwrap().read_to_string(&mut err);
            (status.success(), err)
        } else {
            let o = c.ctr(&args);
            (o.status.success(), ctr_stderr(&o))
        };
        println!("{what}: {:.2} s: {}", t.elapsed().as_secs_f64(), o.1.trim());
        // ctr run may also have succeeded if runc finished before the kill: then clean up normally.
        if o.0 {
            force_remove(&c, &id);
        } else {
            assert!(
                o.1.contains("create") || o.1.contains("runc"),
                "{what}: unclear error {:?}",
                o.1
            );
            let _ = c.ctr(&["containers", "rm", &id]);
        }
        // An empty cgroup runc made before it was killed is the subject of
        // runc_killed_mid_create_leaves_no_cgroup; a process in it would be a leak here.
        let residue = || -> Vec<String> {
            c.leftovers_now()
                .into_iter()
                .filter(|l| {
                    l.strip_prefix("cgroup ")
                        .map(|cg| !cgroup_procs(Path::new(cg)).is_empty())
                        .unwrap_or(true)
                })
                .collect()
        };
        let left = harness::settled(harness::SHIM_EXIT_TIMEOUT, residue);
        assert!(left.is_empty(), "{what}: left behind: {left:#?}");
    }
}

/// The pids in a cgroup directory and its children.
fn cgroup_procs(cg: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    for child in procs::entries(cg).into_iter().filter(|p| p.is_dir()) {
        v.extend(cgroup_procs(&child));
    }
    v
}

/// Container cgroups `/<ns>/<id>` (any controller) that exist.
fn container_cgroups(c: &Containerd, id: &str) -> Vec<PathBuf> {
    harness::cgroup_dirs(&format!("{}/{id}", c.namespace))
}

#[test]
#[ignore = "faults (make stress)"]
fn runc_killed_mid_create_leaves_no_cgroup() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let mut leaked = Vec::new();
    for ms in (2..=60).step_by(2) {
        let toml = wrapper(
            &c,
            &format!("die-mid-{ms}"),
            &format!("/usr/sbin/runc \"$@\" &\nrunc=$!\nsleep 0.{ms:03}\nkill -9 $runc\nwait $runc\nkill -9 $$"),
        );
        let id = unique_id(&format!("cg{ms}"));
        let toml = toml.to_string_lossy().into_owned();
        let o = c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            &toml,
            IMAGE,
            &id,
            "sleep",
            "1000",
        ]);
        assert!(!o.status.success(), "{id}: {o:?}");
        let _ = c.ctr(&["containers", "rm", &id]);
        std::thread::sleep(Duration::from_millis(200));
        for cg in container_cgroups(&c, &id) {
            leaked.push(format!(
                "after {ms} ms: {} (procs {:?})",
                cg.display(),
                cgroup_procs(&cg)
            ));
            let _ = std::fs::remove_dir(&cg);
        }
    }
    println!("{} cgroups left by 30 runc creates killed 2..60 ms in", leaked.len());
    assert!(leaked.is_empty(), "{leaked:#?}");
}

/// Lines read from `r` on a thread.
fn line_reader(r: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            let _ = tx.send(l + "\n");
        }
    });
    rx
}

#[test]
#[ignore = "faults (make stress)"]
fn stdin_client_killed_task_stays_controllable() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("stdin");
    // `ctr run` feeds cat from our pipe, and is SIGKILLed mid-conversation.
    let mut client = KillOnDrop(
        Command::new("ctr")
            .args(["--address", &c.address, "-n", &c.namespace, "run", "--fifo-dir"])
            .arg(c.dir.join("fifo"))
            .args(["--runtime", RUNTIME, IMAGE, &id, "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut input = client.0.stdin.take().unwrap();
    let lines = line_reader(client.0.stdout.take().unwrap());
    wait_status(&c, &id, "RUNNING");
    let shim = procs::shim_daemon(&c.address, &id).expect("shim");
    input.write_all(b"ping\n").unwrap();
    assert_eq!(lines.recv_timeout(Duration::from_secs(20)).expect("no echo"), "ping\n");
    let before = procs::figures(shim).unwrap();
    harness::signal(client.0.id(), libc::SIGKILL);
    let _ = client.0.wait();
    drop(input);
    std::thread::sleep(Duration::from_millis(500));
    // The task outlived its client with stdin open: still running, and reachable again.
    let ls = c.ctr_ok(&["task", "ls"]);
    assert!(
        ls.lines().any(|l| l.starts_with(id.as_str()) && l.contains("RUNNING")),
        "{ls}"
    );
    let o = c.ctr(&["task", "exec", "--exec-id", "probe", &id, "echo", "alive"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "alive\n", "{o:?}");
    let mut attach = KillOnDrop(
        Command::new("ctr")
            .args(["--address", &c.address, "-n", &c.namespace, "task", "attach", &id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut input = attach.0.stdin.take().unwrap();
    let lines = line_reader(attach.0.stdout.take().unwrap());
    input.write_all(b"pong\n").unwrap();
    assert_eq!(
        lines
            .recv_timeout(Duration::from_secs(20))
            .expect("no echo through attach"),
        "pong\n",
        "a new client talks to the task"
    );
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    let st = wait_child(&mut attach.0, Duration::from_secs(30));
    assert_eq!(st.code(), Some(137));
    let after = procs::figures(shim);
    println!("shim with the killed client: {before}; after reattach and kill: {after:?}");
    harness::eventually(Duration::from_secs(20), || {
        (!c.ctr_ok(&["task", "ls"]).lines().any(|l| l.starts_with(id.as_str()))).then_some(())
    })
    .expect("attach deletes the task it saw exit");
    c.ctr_ok(&["containers", "rm", &id]);
    assert_clean(&c);
}

/// Create, Start and Wait of init `id` through the shim's ttrpc, stdout to `stdout`: its exit status.
fn create_start_wait(
    client: &containerd_shim_rustrunc_v2::protos::shim::shim_ttrpc::TaskClient,
    id: &str,
    bundle: &Path,
    stdout: &Path,
) -> Result<u32, String> {
    use containerd_shim_rustrunc_v2::protos::shim::shim::{CreateTaskRequest, WaitRequest};
    use harness::shim::{create_start, ctx};
    let req = CreateTaskRequest {
        id: id.into(),
        bundle: bundle.to_string_lossy().into_owned(),
        stdout: stdout.to_string_lossy().into_owned(),
        ..Default::default()
    };
    create_start(client, req)?;
    client
        .wait(
            ctx(),
            &WaitRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .map(|w| w.exit_status)
        .map_err(|e| format!("Wait: {e:?}"))
}

/// A client that opens its stdout fifo late (ctr opens it from a goroutine, so under load it can be
/// after the process already exited): what the process wrote must still reach it. The Go shim
/// opens its fifo writer blocking, i.e. waits for the client's reader; this shim never waits: it
/// holds a reader of its own until Delete, so the fifo keeps its buffered bytes. (It used to close
/// that reader at EOF, which freed the buffer with the unread output in it: seen in
/// `thousand_lifecycles_leave_nothing` as an `echo` whose `ctr run` printed nothing, once in ~1,500.)
/// Not ignored: a plain regression test, run by `make test`.
#[test]
fn output_waits_for_a_late_fifo_reader() {
    use containerd_shim_rustrunc_v2::protos::shim::shim::DeleteRequest;
    use harness::shim::{busybox_rootfs, ctx, spec_json, DirectShim};
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let id = "late";
    let bundle = shim.bundle(id, Some(&spec_json(&shim.namespace, id, &["echo", "hello"])));
    busybox_rootfs(&bundle);
    let fifo = bundle.join("stdout");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Create and Start on a thread: a shim that waits for the reader blocks in Create until below.
    let runner = {
        let client = shim.client();
        let (bundle, fifo) = (bundle.clone(), fifo.clone());
        std::thread::spawn(move || create_start_wait(&client, id, &bundle, &fifo))
    };
    // The client is slow to open its reader.
    std::thread::sleep(Duration::from_millis(1000));
    let reader = FifoReader::open(&fifo);
    let got = harness::eventually(Duration::from_secs(10), || {
        reader.text().contains("hello").then_some(())
    });
    let status = runner.join().unwrap();
    let text = String::from_utf8_lossy(&reader.close()).into_owned();
    let _ = shim.client().delete(
        ctx(),
        &DeleteRequest {
            id: id.into(),
            ..Default::default()
        },
    );
    assert_eq!(status, Ok(0));
    assert!(
        got.is_some(),
        "the late reader got {text:?}, not the process's \"hello\\n\""
    );
}

/// The shim's fds open for writing on `path` (from /proc/<pid>/fdinfo flags).
fn writers_on(pid: u32, path: &Path) -> usize {
    procs::entries(Path::new(&format!("/proc/{pid}/fd")))
        .into_iter()
        .filter(|fd| std::fs::read_link(fd).ok().as_deref() == Some(path))
        .filter(|fd| {
            let n = fd.file_name().unwrap().to_string_lossy().into_owned();
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")).unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .unwrap_or(0);
            flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32
        })
        .count()
}

/// An exit is reported once the process's output has left the shim: containerd 1.6's ctr closes its
/// fifo readers as soon as it has the exit (Task.Delete closes before it waits for its copy), so
/// what is still in the shim's pipe then is lost (seen: 64 MiB through ctr arriving 320 KiB short
/// under load). Here the client reads slowly; when Wait answers, the shim must have written all of
/// the output to the fifo and closed its writer, and the client must have read it.
#[test]
fn exit_is_reported_after_the_output_left_the_shim() {
    use containerd_shim_rustrunc_v2::protos::shim::shim::DeleteRequest;
    use harness::shim::{busybox_rootfs, ctx, spec_json, DirectShim};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let id = "drain";
    let total = 2 << 20;
    let script = format!("head -c {total} /dev/zero");
    let bundle = shim.bundle(id, Some(&spec_json(&shim.namespace, id, &["sh", "-c", &script])));
    busybox_rootfs(&bundle);
    let fifo = bundle.join("stdout");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A slow reader: 16 KiB every 5 ms, so the shim's pipe is full when the process exits.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let (got, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let reader = {
        let (got, stop) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 << 10];
            while !stop.load(Ordering::SeqCst) {
                match f.read(&mut buf) {
                    Ok(n) => {
                        got.fetch_add(n, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let client = shim.client();
    let status = create_start_wait(&client, id, &bundle, &fifo).unwrap();
    let writers = writers_on(shim.pid, &fifo);
    let read_by_then = got.load(Ordering::SeqCst);
    let _ = harness::eventually(Duration::from_secs(20), || {
        (got.load(Ordering::SeqCst) >= total).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    let _ = client.delete(
        ctx(),
        &DeleteRequest {
            id: id.into(),
            ..Default::default()
        },
    );
    println!("at the exit: {read_by_then} of {total} bytes read, {writers} shim writer(s) on the fifo");
    assert_eq!(status, 0);
    assert_eq!(got.load(Ordering::SeqCst), total, "bytes read in all");
    assert_eq!(writers, 0, "Wait answered while the shim still had output to write");
    // And the client had read it (but for the one 16 KiB read it may have been finishing).
    assert!(
        read_by_then + (16 << 10) >= total,
        "Wait answered while the client had read only {read_by_then} of {total} bytes"
    );
}

// ---- containerd outages (issue 11) -------------------------------------------------------------

/// containerd SIGKILLed for 30 s while 10 containers end an exec and then their init: every exit
/// reaches it once it is back, exec before init (tests/load.rs does 5 s in `make test`).
#[test]
#[ignore = "faults: containerd down 30 s (make stress)"]
fn exits_during_a_30s_containerd_outage_are_delivered() {
    if harness::skip_if_unsupported() {
        return;
    }
    harness::outage::crash_outage(10, Duration::from_secs(30));
}

/// The same for 120 s.
#[test]
#[ignore = "faults: containerd down 120 s (make stress)"]
fn exits_during_a_120s_containerd_outage_are_delivered() {
    if harness::skip_if_unsupported() {
        return;
    }
    harness::outage::crash_outage(10, Duration::from_secs(120));
}

/// containerd SIGSTOPped for 40 s (its sockets accept, nothing answers) while 10 containers end:
/// each exit delivered, and no more than MAX_DELIVERIES_PER_EXIT times (Go's figure), printed.
#[test]
#[ignore = "faults: containerd stopped 40 s (make stress)"]
fn exits_while_containerd_is_frozen_are_delivered_few_times() {
    if harness::skip_if_unsupported() {
        return;
    }
    harness::outage::frozen_outage(10, Duration::from_secs(40));
}
