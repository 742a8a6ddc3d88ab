//! The foundation, end to end: real containerd, real runc, real ctr, this shim.

mod harness;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use harness::events::{self, wait_child, wait_status, Events};
use harness::{unique_id, Containerd, IMAGE, RUNTIME, SHIM_BIN};
use sha2::{Digest, Sha256};

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn assert_clean(c: &Containerd) {
    // Waits for shims to exit: containerd runs `shim delete` and the shim exits after the last RPC.
    let left = c.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
fn echo_hello_and_nothing_left() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("hello");
    let out = c.ctr_ok(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "echo", "hello"]);
    assert_eq!(out, "hello\n");
    assert_clean(&c);
}

#[test]
fn stderr_is_separate_and_exit_codes_pass_through() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("codes");
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
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("err\n"),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(3), "{o:?}");

    // ctr exits with 137 when the container is killed with SIGKILL.
    let id = unique_id("killed");
    let mut run = c.spawn_ctr(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "sleep", "1000"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c
        .ctr_ok(&["task", "ls"])
        .lines()
        .any(|l| l.starts_with(&id) && l.contains("RUNNING"))
    {
        assert!(Instant::now() < deadline, "task never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    let status = wait_child(&mut run, Duration::from_secs(30));
    assert_eq!(status.code(), Some(137), "{status:?} signal {:?}", status.signal());
    assert_clean(&c);
}

#[test]
fn stdin_round_trips_and_eof_ends_cat() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("stdin");
    let mut input = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in input.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let o = c.ctr_stdin(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "cat"], &input);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(o.stdout.len(), input.len());
    assert!(o.stdout == input, "stdin came back altered");
    assert_clean(&c);
}

#[test]
fn large_stdout_arrives_complete() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("big");
    // The container hashes what it writes and reports the hash on stderr.
    let script = "head -c 67108864 /dev/urandom > /tmp/d && sha256sum /tmp/d >&2 && cat /tmp/d";
    let o = c.ctr(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "sh", "-c", script]);
    assert!(o.status.success(), "{:?}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout.len(), 64 << 20);
    // The sha256sum line; ctr 2.2+ may print a warning before it (cgroup v1 deprecation).
    let stderr = String::from_utf8_lossy(&o.stderr);
    let want = stderr
        .lines()
        .find(|l| l.ends_with(" /tmp/d"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no sha256sum line on stderr: {stderr}"));
    assert_eq!(hex(Sha256::digest(&o.stdout)), want);
    assert_clean(&c);
}

#[test]
fn detached_task_lifecycle_leaves_nothing() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("detached");
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sleep", "1000"]);
    let ls = c.ctr_ok(&["task", "ls"]);
    let line = ls
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("task missing: {ls}"));
    assert!(line.contains("RUNNING"), "{line}");
    assert!(!c.leftovers_now().is_empty(), "leftovers must see a running shim");
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c
        .ctr_ok(&["task", "ls"])
        .lines()
        .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
    {
        assert!(Instant::now() < deadline, "task never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert_clean(&c);
}

#[test]
fn rootfs_directory_without_mounts() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let rootfs = c.dir.join("plainroot");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let id = unique_id("rootfs");
    let dir = rootfs.to_string_lossy().to_string();
    let out = c.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--rootfs",
        &dir,
        &id,
        "/bin/echo",
        "from-dir",
    ]);
    assert_eq!(out, "from-dir\n");
    assert_clean(&c);
}

#[test]
fn events_are_published_in_order() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let mut events = Events::start(&c);
    std::thread::sleep(Duration::from_millis(300));
    let id = unique_id("events");
    c.ctr_ok(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "true"]);
    std::thread::sleep(Duration::from_millis(500));
    let text = events.stop();
    let topics = events::topics(&text, &id);
    assert_eq!(
        topics,
        ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"],
        "events:\n{text}"
    );
    assert_clean(&c);
}

#[test]
fn instant_exits_never_hang() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    for i in 0..10 {
        let id = unique_id(&format!("true{i}"));
        // ctr() fails the test if ctr does not return within its timeout.
        let o = c.ctr(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "true"]);
        assert!(o.status.success(), "{o:?}");
        let o = c.ctr(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "false"]);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
    }
    assert_clean(&c);
}

#[test]
fn failing_runc_gives_clear_errors_and_leaves_nothing() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    // The process in the spec does not exist: runc create fails, and says why.
    let id = unique_id("noexec");
    let o = c.ctr(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "/no/such/binary"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/no/such/binary") && err.contains("no such file"), "{err}");
    let _ = c.ctr(&["containers", "rm", &id]);

    // A malformed spec given with --config.
    let id = unique_id("badspec");
    let spec = c.dir.join("bad-config.json");
    std::fs::write(&spec, r#"{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/"},"root":{"path":"rootfs"},"linux":{"namespaces":[{"type":"bogus"}]}}"#).unwrap();
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--config",
        &spec.to_string_lossy(),
        &id,
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bogus"), "{err}");
    let _ = c.ctr(&["containers", "rm", &id]);

    // The runtime binary (BinaryName) does not exist.
    let id = unique_id("nobinary");
    let toml = c.dir.join("runtime.toml");
    std::fs::write(&toml, "BinaryName = \"/no/such/runc\"\n").unwrap();
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &toml.to_string_lossy(),
        IMAGE,
        &id,
        "true",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("runtime binary \"/no/such/runc\" not found"), "{err}");
    let _ = c.ctr(&["containers", "rm", &id]);
    assert_clean(&c);
}

#[test]
fn ids_that_escape_are_refused_by_start_and_delete() {
    for action in ["start", "delete"] {
        for id in ["../x", "a/b", ".."] {
            let o = std::process::Command::new(SHIM_BIN)
                .args([
                    "-namespace",
                    "default",
                    "-address",
                    "/nonexistent.sock",
                    "-id",
                    id,
                    "-bundle",
                    "/nonexistent",
                    action,
                ])
                .stdin(std::process::Stdio::null())
                .current_dir("/")
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(1), "{action} {id}: {o:?}");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains(&format!("invalid id (-id) {id:?}")),
                "{action} {id}: {err}"
            );
            assert!(o.stdout.is_empty());
        }
    }
    let o = std::process::Command::new(SHIM_BIN)
        .args(["-id", "x", "start"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("namespace cannot be empty"),
        "{o:?}"
    );
}

/// The first process whose argv satisfies `f`.
fn find_pid(f: impl Fn(&[&[u8]]) -> bool) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        (!args[0].is_empty() && f(&args)).then_some(pid)
    })
}

/// The pid of the shim daemon serving container `id` (its argv holds `-id <id>`).
fn shim_pid(id: &str) -> Option<u32> {
    find_pid(|args| {
        args[0].ends_with(b"containerd-shim-rustrunc-v2")
            && args.windows(2).any(|w| w[0] == b"-id" && w[1] == id.as_bytes())
            && !args.contains(&&b"start"[..])
    })
}

fn read_trim(p: impl AsRef<std::path::Path>) -> String {
    std::fs::read_to_string(p).unwrap_or_default().trim().to_string()
}

#[test]
fn daemon_socket_permissions_oom_score_and_fds() {
    use std::os::unix::fs::PermissionsExt;
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("daemon");
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sleep", "1000"]);
    let socket = c.shim_socket(&id);
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600, "socket {socket}");
    assert_eq!(mode("/run/containerd/s"), 0o700);

    let pid = shim_pid(&id).expect("shim process");
    // `start` writes containerd's score + 1: containerd is the parent of `start`.
    let dir = c.dir.to_string_lossy().to_string();
    let containerd_pid =
        find_pid(|args| args[0].ends_with(b"containerd") && args.iter().any(|a| a.starts_with(dir.as_bytes())))
            .expect("containerd process");
    let containerd_score: i32 = read_trim(format!("/proc/{containerd_pid}/oom_score_adj"))
        .parse()
        .unwrap();
    assert_eq!(
        read_trim(format!("/proc/{pid}/oom_score_adj")),
        (containerd_score + 1).min(1000).to_string()
    );

    // The container sees its stdio and nothing of the shim's (listener, log fifo, epoll, ...).
    let out = c.ctr_ok(&["task", "ls"]);
    let cpid = out
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{cpid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut fds: Vec<u32> = fds.iter().filter_map(|f| f.parse().ok()).collect();
    fds.sort();
    assert_eq!(fds, [0, 1, 2], "container fds");

    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c
        .ctr_ok(&["task", "ls"])
        .lines()
        .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
    {
        assert!(Instant::now() < deadline, "task never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert!(!std::path::Path::new(&socket).exists(), "socket {socket} not removed");
    assert_clean(&c);
}

#[test]
fn sigterm_stops_the_shim_and_containerd_cleans_up() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("sigterm");
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sleep", "1000"]);
    let pid = shim_pid(&id).expect("shim process");
    let socket = c.shim_socket(&id);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && read_trim(format!("/proc/{pid}/stat")).split(' ').nth(2) != Some("Z")
    {
        assert!(Instant::now() < deadline, "shim ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!std::path::Path::new(&socket).exists(), "socket left after SIGTERM");
    // containerd notices the disconnect and runs `shim delete`, which kills and removes the container.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.ctr_ok(&["task", "ls"]).lines().any(|l| l.starts_with(&id)) {
        assert!(Instant::now() < deadline, "task still listed after the shim died");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.ctr_ok(&["containers", "rm", &id]);
    assert_clean(&c);
}

#[test]
fn delete_action_is_idempotent_and_prints_a_delete_response() {
    use std::os::unix::fs::PermissionsExt;
    if harness::skip_if_unsupported() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_id("rr-delete"));
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    std::fs::write(dir.join("init.pid"), "4242").unwrap();
    // The runtime is a script that logs its arguments and does what `runc delete --force` does for
    // a container it has: remove the state directory.
    let calls = dir.join("calls");
    let runtime = dir.join("fake-runc");
    std::fs::write(
        &runtime,
        format!(
            "#!/bin/sh\necho \"$*\" >>{}\nfor a; do id=$a; done\nrm -rf \"$2/$id\"\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("runtime"), runtime.to_string_lossy().as_bytes()).unwrap();
    let namespace = unique_id("rr-delete-ns");
    let runc_root = std::path::Path::new("/run/containerd/runc").join(&namespace);
    let delete = || {
        let o = std::process::Command::new(SHIM_BIN)
            .args(["-namespace", &namespace, "-address", "/nonexistent.sock"])
            .args(["-publish-binary", "/usr/bin/containerd"])
            .args(["-id", "gone", "-bundle", &dir.to_string_lossy(), "delete"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        // DeleteResponse{pid=1: 4242, exit_status=2: 137, exited_at=3: {...}}, raw protobuf.
        assert_eq!(&o.stdout[..6], &[0x08, 0x92, 0x21, 0x10, 0x89, 0x01], "{:?}", o.stdout);
        assert_eq!(o.stdout[6], 0x1a, "exited_at present");
    };
    // The runtime has state for the id (a shim that died with its container): it is told to delete.
    std::fs::create_dir_all(runc_root.join("gone")).unwrap();
    delete();
    let logged = std::fs::read_to_string(&calls).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&runc_root);
    assert!(logged.ends_with("delete --force gone\n"), "runtime calls: {logged:?}");
    // No state left (the normal case, after the task's own Delete): idempotent, and no runtime run.
    delete();
    delete();
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        logged,
        "runtime run without state"
    );
    assert!(!runc_root.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn task_v3_service_and_other_users_refused() {
    use protobuf::Message;
    use std::os::unix::fs::PermissionsExt;
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("v3");
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sleep", "1000"]);
    let address = c.shim_address(&id);
    let socket = c.shim_socket(&id);

    // containerd 2.x's task API v3 is served beside v2, same messages.
    let client = ttrpc::Client::connect(&address).unwrap();
    let req = containerd_shim_rustrunc_v2::protos::shim::shim::ConnectRequest {
        id: id.clone(),
        ..Default::default()
    };
    let r = client
        .request(ttrpc::Request {
            service: "containerd.task.v3.Task".into(),
            method: "Connect".into(),
            payload: req.write_to_bytes().unwrap(),
            timeout_nano: 10_000_000_000,
            ..Default::default()
        })
        .expect("v3 Connect");
    let resp = containerd_shim_rustrunc_v2::protos::shim::shim::ConnectResponse::parse_from_bytes(&r.payload).unwrap();
    assert_eq!(resp.shim_pid, shim_pid(&id).unwrap());
    drop(client);

    // Another user is refused even where the socket's mode would let it in (SO_PEERCRED). The socket
    // directory is 0700: reach the socket through a bind mount of it in an open directory (not a
    // hard link: /run is a tmpfs and the temp dir on disk on a standard host, EXDEV).
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let open_dir = c.dir.join("open");
    std::fs::create_dir_all(&open_dir).unwrap();
    std::fs::set_permissions(&c.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = open_dir.join("shim.sock");
    std::fs::write(&link, b"").unwrap();
    // Unmounted on every path (the harness would also unmount what is under its dir).
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let st = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&socket)
        .arg(&link)
        .status()
        .unwrap();
    assert!(st.success(), "mount --bind {socket} {}", link.display());
    let unmount = Unmount(&link);
    let probe = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.settimeout(5)\n\
        body=bytes([10,23])+b'containerd.task.v2.Task'+bytes([18,7])+b'Connect'\n\
        try:\n s.sendall(len(body).to_bytes(4,'big')+(1).to_bytes(4,'big')+bytes([1,0])+body)\n r=s.recv(4096)\n\
        except (ConnectionResetError, BrokenPipeError):\n r=b''\n\
        print('closed' if r==b'' else 'answered')";
    let o = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            probe,
        ])
        .arg(&link)
        .output()
        .unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    drop(unmount);
    std::fs::remove_file(&link).unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "closed", "{o:?}");
    // The shim is still serving its own user.
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&c, &id, "STOPPED");
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert_clean(&c);
}

/// Context switches of every thread of a process so far.
fn context_switches(pid: u32) -> u64 {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for l in status.lines() {
            if l.contains("ctxt_switches:") {
                n += l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
            }
        }
    }
    n
}

#[test]
fn a_shim_sleeps_right_after_publishing_events() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("quiet");
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sleep", "1000"]);
    let pid = shim_pid(&id).expect("shim process");
    // TaskCreate and TaskStart went out just now, on a connection that stays open for a while.
    std::thread::sleep(Duration::from_millis(300));
    let before = context_switches(pid);
    std::thread::sleep(Duration::from_secs(1));
    let woke = context_switches(pid) - before;
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&c, &id, "STOPPED");
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert_clean(&c);
    // Nothing happens in that second: the process has nothing to wake up for. (A client that polls
    // its connection every 10 ms shows about 100.)
    assert!(woke < 20, "the shim woke {woke} times in 1 s with nothing to do");
}

#[test]
fn sigkill_of_the_shim_is_cleaned_up_by_shim_delete() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("shimkill");
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sleep", "1000"]);
    let pid = shim_pid(&id).expect("shim process");
    let socket = c.shim_socket(&id);
    let ls = c.ctr_ok(&["task", "ls"]);
    let cpid: i32 = ls
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
    // containerd sees the connection drop and runs `shim delete`: runc delete --force, unmount, socket.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.ctr_ok(&["task", "ls"]).lines().any(|l| l.starts_with(&id)) {
        assert!(Instant::now() < deadline, "task still listed after the shim was killed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{cpid}")).exists()
        && read_trim(format!("/proc/{cpid}/stat")).split(' ').nth(2) != Some("Z")
    {
        assert!(
            Instant::now() < deadline,
            "the container's process outlived its shim's cleanup"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&socket).exists() {
        assert!(Instant::now() < deadline, "dead shim's socket {socket} left behind");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.ctr_ok(&["containers", "rm", &id]);
    assert_clean(&c);
}
