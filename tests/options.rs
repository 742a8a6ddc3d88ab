//! Runtime options reaching runc: BinaryName (crun), NoPivotRoot, IoUid/IoGid, ShimCgroup, Root, given
//! the way ctr 1.6 can give them to a runtime not named io.containerd.runc*: a TOML file
//! (`--runtime-config-path`, sent as runtimeoptions.v1.Options).

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use harness::events::{wait_child, wait_status};
use harness::{unique_id, Containerd, IMAGE, RUNTIME};

/// A runtime binary that logs its argv, then runs the real one.
fn wrapper(c: &Containerd, real: &str) -> (String, std::path::PathBuf) {
    let log = c.dir.join(format!(
        "{}.argv",
        Path::new(real).file_name().unwrap().to_string_lossy()
    ));
    let script = c.dir.join(format!(
        "wrap-{}",
        Path::new(real).file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$*\" >> {}\nexec {real} \"$@\"\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script.to_string_lossy().into_owned(), log)
}

/// `ctr run <mode> --runtime ours --runtime-config-path <opts> IMAGE <id> <cmd...>`.
fn run_args<'a>(mode: &'a str, opts: &'a str, id: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "run",
        mode,
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        opts,
        IMAGE,
        id,
    ];
    a.extend_from_slice(cmd);
    a
}

fn options_file(c: &Containerd, name: &str, toml: &str) -> String {
    let p = c.dir.join(name);
    std::fs::write(&p, toml).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn crun_through_binary_name_with_no_pivot_root() {
    if harness::skip_if_unsupported() {
        return;
    }
    let Some(crun) = ["/usr/bin/crun", "/usr/sbin/crun"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        println!("skipped: crun is not installed");
        return;
    };
    let c = Containerd::start();
    let (bin, log) = wrapper(&c, crun);
    let opts = options_file(
        &c,
        "crun.toml",
        &format!("BinaryName = \"{bin}\"\nNoPivotRoot = true\n"),
    );
    let id = unique_id("crun");
    let o = c.ctr(&run_args("--rm", &opts, &id, &["echo", "via-crun"]));
    let argv = std::fs::read_to_string(&log).unwrap_or_default();
    let create = argv
        .lines()
        .find(|l| l.contains(" create "))
        .unwrap_or_else(|| panic!("crun never ran create:\n{argv}"));
    assert!(create.contains("--no-pivot"), "{create}");
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("hybrid mode not supported") {
        // crun refuses cgroup v1 hosts with a v2 hierarchy mounted (like this one); the error is crun's own.
        println!("crun cannot run containers on this hybrid cgroup host: {}", err.trim());
        let _ = c.ctr(&["containers", "rm", &id]);
    } else {
        assert_eq!(String::from_utf8_lossy(&o.stdout), "via-crun\n", "{o:?}");
        assert!(argv.lines().any(|l| l.contains(" start ")), "{argv}");
    }
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn io_gid_owns_the_pipes() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let opts = options_file(&c, "io.toml", "IoUid = 1234\nIoGid = 5678\n");
    let id = unique_id("iouid");
    let out = c.ctr_ok(&run_args(
        "--rm",
        &opts,
        &id,
        &["sh", "-c", "stat -L -c '%g' /proc/self/fd/1 /proc/self/fd/2"],
    ));
    // runc hands the pipes' uid to the container's user (fixStdioPermissions, which matters under user
    // namespaces, where IoUid is the host side of the container's root); the group stays IoGid.
    assert_eq!(out, "5678\n5678\n");
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn shim_cgroup_and_runc_root() {
    if harness::skip_if_unsupported() {
        return;
    }
    let hierarchy = Path::new("/sys/fs/cgroup/pids");
    if !hierarchy.is_dir() {
        println!("skipped: no cgroup v1 pids hierarchy");
        return;
    }
    let c = Containerd::start();
    let name = unique_id("rustrunc-shimcg");
    let cg = hierarchy.join(&name);
    std::fs::create_dir(&cg).unwrap();
    struct RmCgroup(std::path::PathBuf);
    impl Drop for RmCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _guard = RmCgroup(cg.clone());
    let root = c.dir.join("runc-root");
    let opts = options_file(
        &c,
        "cg.toml",
        &format!("ShimCgroup = \"/{name}\"\nRoot = \"{}\"\n", root.display()),
    );
    let id = unique_id("shimcg");
    c.ctr_ok(&run_args("-d", &opts, &id, &["sleep", "1000"]));
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    let shim_in_cgroup = procs.lines().any(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("containerd-shim-rustrunc-v2"))
    });
    assert!(shim_in_cgroup, "shim not in {}: {procs:?}", cg.display());
    assert!(root.join(&c.namespace).join(&id).is_dir(), "runc state not under Root");
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&c, &id, "STOPPED");
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert!(
        !root.join(&c.namespace).join(&id).exists(),
        "runc state left under Root"
    );
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn kill_signals_a_running_init_itself_and_leaves_paused_ones_to_runc() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let (bin, log) = wrapper(&c, "/usr/sbin/runc");
    let opts = options_file(&c, "runc.toml", &format!("BinaryName = \"{bin}\"\n"));
    let kills = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" kill "))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let run = |id: &str| {
        // PID 1 ignores SIGTERM unless it has a handler: this one exits 3 on it.
        let script = "trap 'exit 3' TERM; while :; do sleep 0.05; done";
        c.ctr_ok(&run_args("-d", &opts, id, &["sh", "-c", script]));
    };
    let remove = |id: &str| {
        c.ctr_ok(&["task", "rm", id]);
        c.ctr_ok(&["containers", "rm", id]);
    };

    // A signal to a running init, and SIGKILL to all of a container with its own pid namespace: no runc.
    let term = unique_id("kill-term");
    run(&term);
    c.ctr_ok(&["task", "kill", "-s", "SIGTERM", &term]);
    wait_status(&c, &term, "STOPPED");
    let all = unique_id("kill-all");
    run(&all);
    c.ctr_ok(&["task", "kill", "--all", "-s", "SIGKILL", &all]);
    wait_status(&c, &all, "STOPPED");
    assert_eq!(kills(), Vec::<String>::new(), "runc kill ran");
    let o = c.ctr(&["task", "kill", "-s", "SIGTERM", &term]);
    assert!(!o.status.success(), "killing a stopped task succeeded");
    remove(&term);
    remove(&all);

    // A paused container is runc's: it thaws the cgroup for SIGKILL, or the process could not die.
    let paused = unique_id("kill-paused");
    run(&paused);
    c.ctr_ok(&["task", "pause", &paused]);
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &paused]);
    wait_status(&c, &paused, "STOPPED");
    let k = kills();
    assert_eq!(k.len(), 1, "{k:?}");
    assert!(k[0].ends_with(&format!("kill {paused} 9")), "{k:?}");
    remove(&paused);
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn kill_during_an_exec_start_waits_for_it_instead_of_failing() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    // A runtime whose `exec` returns a second after the process started: the exec runs (and could be
    // writing output) while the shim's Start is still in progress.
    let script = c.dir.join("slow-exec-runc");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \" $* \" in *\" exec \"*) /usr/sbin/runc \"$@\"; rc=$?; sleep 1; exit $rc;; esac\nexec /usr/sbin/runc \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opts = options_file(&c, "slow.toml", &format!("BinaryName = \"{}\"\n", script.display()));
    let id = unique_id("kill-starting");
    c.ctr_ok(&run_args("-d", &opts, &id, &["sleep", "1000"]));
    let mut exec = c.spawn_ctr(&["task", "exec", "--exec-id", "slow", &id, "sleep", "1000"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let o = c.ctr(&["task", "kill", "-s", "SIGKILL", "--exec-id", "slow", &id]);
    let status = wait_child(&mut exec, std::time::Duration::from_secs(20));
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&c, &id, "STOPPED");
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert!(o.status.success(), "kill during Start: {o:?}");
    assert_eq!(status.code(), Some(137), "the exec was not killed");
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn state_is_answered_while_every_worker_runs_runc() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    // A runtime whose `ps` holds its worker until the test releases it (30 s at most).
    let (started, release) = (c.dir.join("ps-started"), c.dir.join("ps-release"));
    let script = c.dir.join("held-ps-runc");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" ps \"*) echo ps >> {s}; i=0; while [ ! -e {r} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done;; esac\nexec /usr/sbin/runc \"$@\"\n",
            s = started.display(),
            r = release.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opts = options_file(&c, "held.toml", &format!("BinaryName = \"{}\"\n", script.display()));
    let id = unique_id("busy-workers");
    c.ctr_ok(&run_args("-d", &opts, &id, &["sleep", "1000"]));
    // Releases the held `runc ps` even when the test fails.
    struct Release(std::path::PathBuf);
    impl Drop for Release {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "");
        }
    }
    let _release = Release(release.clone());
    // More Pids requests than the shim has workers (4): every worker ends up inside `runc ps`.
    let mut ps: Vec<_> = (0..6).map(|_| c.spawn_ctr(&["task", "ps", &id])).collect();
    let held = |n: usize| {
        std::fs::read_to_string(&started)
            .map(|s| s.lines().count() >= n)
            .unwrap_or(false)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !held(4) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let all_busy = held(4);
    // State (through `ctr task ls`) must not wait for a worker.
    let ls = c.ctr_timeout(&["task", "ls"], std::time::Duration::from_secs(20));
    let still_held = !release.exists();
    std::fs::write(&release, "").unwrap();
    for p in &mut ps {
        wait_child(p, std::time::Duration::from_secs(60));
    }
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&c, &id, "STOPPED");
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert!(all_busy, "the Pids requests never occupied 4 workers");
    assert!(still_held);
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.status.success() && text.contains("RUNNING"),
        "State waited for a worker: {ls:?}"
    );
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}
