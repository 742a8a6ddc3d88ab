//! Under load and outages the shim stays controllable and loses nothing (issue 11): threads bounded
//! whatever its clients do (pending Waits, idle or abandoned connections, unread answers, execs),
//! control with a tight pids limit, signals that do not end it, exits delivered after a containerd
//! outage, no daemon left by a failed `start` or never given a container.
//!
//! The `make test` sizes; the large ones are in tests/stress.rs and tests/faults.rs (`make stress`).
//! Each test prints its figures. The bounds (threads, backlog) are the design's, in
//! tests/harness/load.rs: MAX_THREADS, BACKLOG_ANSWERS, MAX_RSS_KIB_UNDER_BACKLOG.

mod harness;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim_rustrunc_v2::frame;
use containerd_shim_rustrunc_v2::protos::shim::shim::*;
use harness::load::{
    park_waits, peak_line, wrong_wait_answers, Parked, BACKLOG_ANSWERS, MAX_RSS_KIB_UNDER_BACKLOG, MAX_THREADS,
    RELEASE_TIMEOUT,
};
use harness::procs;
use harness::shim::{ctx, run_shim, spec_json, DirectShim};
use harness::ttrpc_raw::{id_payload, TASK_SERVICE, TYPE_RESPONSE};
use harness::{unique_id, Containerd, IMAGE, RUNTIME};

/// Pending Waits in `make test` (5,000 in `make stress`).
const WAITS: usize = 1_000;
/// Idle connections held open on one shim.
const IDLE_CONNECTIONS: usize = 500;
/// Clients that each send Waits and hang up, and their Waits each.
const ABANDONING_CLIENTS: usize = 10;
const WAITS_PER_CLIENT: usize = 50;
/// pids.max of the shim's cgroup in the pids-limited test, and the Waits parked there.
const PIDS_MAX: u64 = 64;
const PIDS_LIMITED_WAITS: usize = 1_000;
/// Requests a client pipelines without ever reading an answer.
const UNREAD_REQUESTS: usize = 100_000;
/// Concurrent execs in `make test` (200 in `make stress`).
const EXECS: usize = 50;
/// `RUSTRUNC_IDLE_EXIT_SECS` for the daemon that never gets a Create.
const IDLE_EXIT_SECS: u64 = 2;

fn kill(shim: &DirectShim, id: &str, signal: i32) -> ttrpc::Result<protobuf::well_known_types::empty::Empty> {
    shim.client().kill(
        ctx(),
        &KillRequest {
            id: id.into(),
            signal: signal as u32,
            ..Default::default()
        },
    )
}

/// Figures once they hold still (two looks 300 ms apart agree), at most 10 s.
fn settled(pid: u32) -> procs::Figures {
    let mut last = procs::figures(pid).expect("the shim is running");
    harness::eventually(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = procs::figures(pid)?;
        let same = now == last;
        last = now;
        same.then_some(now)
    })
    .unwrap_or(last)
}

/// Row 1: 1,000 Waits parked on a running init.
#[test]
fn pending_waits_hold_no_thread() {
    if harness::skip_if_unsupported() {
        return;
    }
    harness::load::pending_waits(WAITS);
}

/// Row 2: idle connections (each made one request, then stays open) hold no thread.
#[test]
fn idle_connections_hold_no_thread() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    shim.run("c", &["sleep", "100000"]);
    let before = settled(shim.pid);
    let mut conns = Vec::new();
    for i in 0..IDLE_CONNECTIONS {
        let mut conn = shim.raw().unwrap_or_else(|e| panic!("connection {i}: {e}"));
        // A request answered: the shim has accepted this connection.
        conn.call(TASK_SERVICE, "Connect", &id_payload("c"))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        conns.push(conn);
    }
    let (held, line) = peak_line(shim.pid);
    println!("no connection: {before}\n{IDLE_CONNECTIONS} idle connections: {line}");
    let answered = shim
        .raw()
        .map_err(|e| e.to_string())
        .and_then(|mut c| c.call(TASK_SERVICE, "Connect", &id_payload("c")));
    drop(conns);
    assert!(answered.is_ok(), "a new connection was not served: {answered:?}");
    assert!(
        held.threads <= MAX_THREADS,
        "{} threads with {IDLE_CONNECTIONS} idle connections; at most {MAX_THREADS}",
        held.threads
    );
}

/// Row 3: what every containerd restart does: clients send Waits and hang up. The Waits go with
/// their connections (no thread, no fd kept until the container exits), and the shim still answers.
#[test]
fn abandoned_waits_go_with_their_connection() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    shim.run("c", &["sleep", "100000"]);
    let before = settled(shim.pid);
    let parked = park_waits(
        &shim.socket,
        "c",
        "",
        ABANDONING_CLIENTS * WAITS_PER_CLIENT,
        ABANDONING_CLIENTS,
    );
    let (_, during) = peak_line(shim.pid);
    drop(parked);
    let hung_up = Instant::now();
    let released = harness::eventually(RELEASE_TIMEOUT, || {
        let f = procs::figures(shim.pid)?;
        (f.threads <= MAX_THREADS && f.fds <= before.fds).then_some(f)
    });
    let after = procs::figures(shim.pid).expect("the shim is running");
    println!(
        "before: {before}\n{ABANDONING_CLIENTS} x {WAITS_PER_CLIENT} Waits: {during}\nafter the hang-ups: {after} ({})",
        match released {
            Some(_) => format!("released in {:.1} s", hung_up.elapsed().as_secs_f64()),
            None => format!("not released within {RELEASE_TIMEOUT:?}"),
        }
    );
    if released.is_none() {
        println!("fds now:\n{}", procs::fd_targets(shim.pid).join("\n"));
    }
    // Still controllable, and a Wait made now is answered.
    let mut conn = shim.raw().expect("connect");
    let wait = conn
        .send(TASK_SERVICE, "Wait", &harness::ttrpc_raw::wait_payload("c", ""))
        .expect("send Wait");
    kill(&shim, "c", libc::SIGKILL).expect("Kill");
    let status = conn
        .response_for(wait)
        .map(|r| harness::ttrpc_raw::varint_field(&r.payload, 1));
    assert!(
        released.is_some(),
        "after {ABANDONING_CLIENTS} clients hung up on their Waits the shim keeps {after} \
         (before: {before}); at most {MAX_THREADS} threads and {} fds",
        before.fds
    );
    assert_eq!(status, Ok(Some(137)), "a Wait after the hang-ups");
}

/// The shim's pids cgroup (v1) for the test: a child cgroup with `pids.max`, the shim moved in; on
/// drop the shim goes back to the root cgroup and the child is removed.
struct PidsCgroup {
    dir: PathBuf,
    pid: u32,
}

impl PidsCgroup {
    fn new(pid: u32, max: u64) -> PidsCgroup {
        let root = Path::new("/sys/fs/cgroup/pids");
        assert!(
            root.join("cgroup.procs").exists(),
            "no cgroup v1 pids controller at {}",
            root.display()
        );
        let dir = root.join(format!("rr-load-{}-{pid}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let g = PidsCgroup { dir, pid };
        std::fs::write(g.dir.join("pids.max"), max.to_string()).unwrap();
        // cgroup.procs moves every thread of the process.
        std::fs::write(g.dir.join("cgroup.procs"), pid.to_string()).unwrap();
        g
    }

    fn current(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("pids.current"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let root = Path::new("/sys/fs/cgroup/pids/cgroup.procs");
        let _ = std::fs::write(root, self.pid.to_string());
        // Whatever the shim started in here (runc) moves out too, then the cgroup can go.
        let _ = harness::eventually(Duration::from_secs(10), || {
            for p in std::fs::read_to_string(self.dir.join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
            {
                let _ = std::fs::write(root, p);
            }
            std::fs::remove_dir(&self.dir).ok()
        });
    }
}

/// Row 4: with pids.max=64 on the shim's cgroup and 1,000 Waits parked, Kill, State, Exec (and its
/// Start and Wait), Pids and Delete all work, and every Wait is answered.
#[test]
fn pids_limited_shim_stays_controllable() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let init = shim.run("c", &["sleep", "100000"]);
    let cg = PidsCgroup::new(shim.pid, PIDS_MAX);
    // Parked as in park_waits, but a connection the shim drops is a failure to report, not the end.
    let mut failed = Vec::new();
    let mut parked = Vec::new();
    for i in 0..10 {
        match Parked::waits(&shim.socket, "c", "", PIDS_LIMITED_WAITS / 10) {
            Ok(p) => parked.push(p),
            Err(e) => failed.push(format!("parking Waits on connection {i}: {e}")),
        }
    }
    let (f, line) = peak_line(shim.pid);
    println!(
        "pids.max {PIDS_MAX}, {PIDS_LIMITED_WAITS} Waits: {line}, pids.current {}",
        cg.current()
    );
    let client = shim.client();
    match client.state(
        ctx(),
        &StateRequest {
            id: "c".into(),
            ..Default::default()
        },
    ) {
        Ok(s) if s.status.value() == 2 => {} // RUNNING
        other => failed.push(format!("State: {other:?}")),
    }
    match client.pids(
        ctx(),
        &PidsRequest {
            id: "c".into(),
            ..Default::default()
        },
    ) {
        Ok(p) if p.processes.iter().any(|p| p.pid == init) => {}
        other => failed.push(format!("Pids: {other:?} (init {init})")),
    }
    let mut spec = protobuf::well_known_types::any::Any::new();
    spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    spec.value = br#"{"args":["sh","-c","exit 3"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}}"#.to_vec();
    let exec = client
        .exec(
            ctx(),
            &ExecProcessRequest {
                id: "c".into(),
                exec_id: "e".into(),
                spec: Some(spec).into(),
                ..Default::default()
            },
        )
        .map_err(|e| format!("Exec: {e:?}"))
        .and_then(|_| {
            client
                .start(
                    ctx(),
                    &StartRequest {
                        id: "c".into(),
                        exec_id: "e".into(),
                        ..Default::default()
                    },
                )
                .map_err(|e| format!("Start of the exec: {e:?}"))
        })
        .and_then(|_| {
            client
                .wait(
                    ctx(),
                    &WaitRequest {
                        id: "c".into(),
                        exec_id: "e".into(),
                        ..Default::default()
                    },
                )
                .map_err(|e| format!("Wait of the exec: {e:?}"))
        });
    match exec {
        Ok(w) if w.exit_status == 3 => {}
        other => failed.push(format!("exec: {other:?}")),
    }
    if let Err(e) = kill(&shim, "c", libc::SIGKILL) {
        failed.push(format!("Kill: {e:?}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in parked.iter_mut() {
        if let Err(e) = p.read_all(deadline) {
            failed.push(e);
        }
    }
    let wrong = wrong_wait_answers(&parked, 137);
    if !wrong.is_empty() {
        failed.push(format!("Waits: {}", wrong.join("; ")));
    }
    match client.delete(
        ctx(),
        &DeleteRequest {
            id: "c".into(),
            ..Default::default()
        },
    ) {
        Ok(d) if d.exit_status == 137 => {}
        other => failed.push(format!("Delete: {other:?}")),
    }
    println!("peak threads {}; {} control failures", f.threads, failed.len());
    drop(cg);
    assert!(
        failed.is_empty(),
        "with pids.max={PIDS_MAX} and {PIDS_LIMITED_WAITS} Waits:\n{}",
        failed.join("\n")
    );
}

/// Row 5: a client pipelines 100,000 requests and reads no answer. The shim stops reading it after a
/// bounded backlog (memory and threads bounded) and serves another connection meanwhile; then the
/// client reads and gets every answer, once each.
#[test]
fn unread_answers_stop_the_reading() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    shim.run("c", &["sleep", "100000"]);
    let mut conn = shim.raw().expect("connect");
    conn.stream.set_write_timeout(None).unwrap();
    let reader = conn.stream.try_clone().unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let batch = 1_000;
    let sampler = procs::Sampler::start(shim.pid, Duration::from_millis(20));
    let writer = {
        let written = written.clone();
        std::thread::spawn(move || {
            let mut sids = Vec::with_capacity(UNREAD_REQUESTS);
            for _ in 0..UNREAD_REQUESTS / batch {
                match conn.send_many(TASK_SERVICE, "Connect", &id_payload("c"), batch) {
                    Ok(s) => sids.extend(s),
                    Err(e) => return Err(format!("after {} requests: {e}", sids.len())),
                }
                written.fetch_add(batch, Ordering::SeqCst);
            }
            Ok(sids)
        })
    };
    // Until the writer finished or has made no progress for 3 s (the shim stopped reading).
    let started = Instant::now();
    let (mut last, mut since) = (0, Instant::now());
    let stalled = loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = written.load(Ordering::SeqCst);
        if now >= UNREAD_REQUESTS {
            break false;
        }
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > Duration::from_secs(3) {
            break true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "writer neither done nor stalled"
        );
    };
    let accepted = written.load(Ordering::SeqCst);
    let (now, line) = peak_line(shim.pid);
    let f = sampler.stop().unwrap_or(now);
    let other = shim
        .raw()
        .map_err(|e| e.to_string())
        .and_then(|mut c| c.call(TASK_SERVICE, "Connect", &id_payload("c")));
    println!(
        "{} after {:.1} s, {accepted} of {UNREAD_REQUESTS} requests written; shim now: {line}, peak {f}; another connection: {}",
        if stalled { "stalled" } else { "all written" },
        started.elapsed().as_secs_f64(),
        if other.is_ok() { "served" } else { "NOT served" }
    );
    // Now read everything owed.
    reader.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut seen = HashSet::new();
    let mut bad = Vec::new();
    let reading = Instant::now();
    let mut buf = std::io::BufReader::with_capacity(1 << 20, reader);
    while seen.len() < UNREAD_REQUESTS {
        let (h, p) = match frame::read(&mut buf) {
            Ok(f) => f,
            Err(e) => {
                bad.push(format!("after {} answers: {e}", seen.len()));
                break;
            }
        };
        let sid = h.stream_id;
        let ok = h.type_ == TYPE_RESPONSE && harness::ttrpc_raw::decode_response(&p).is_some_and(|r| r.code == 0);
        let first = seen.insert(sid);
        let known = sid % 2 == 1 && (sid as usize) < 2 * UNREAD_REQUESTS;
        if (!ok || !known || !first) && bad.len() < 5 {
            bad.push(format!(
                "stream {sid}: type {}, status ok {ok}, a stream we sent {known}, first answer {first}",
                h.type_
            ));
        }
    }
    let sent = writer.join().unwrap();
    println!(
        "then read {} answers in {:.1} s",
        seen.len(),
        reading.elapsed().as_secs_f64()
    );
    assert!(other.is_ok(), "another connection was not served: {other:?}");
    assert!(bad.is_empty(), "answers:\n{}", bad.join("\n"));
    assert_eq!(sent.map(|s| s.len()), Ok(UNREAD_REQUESTS));
    assert!(
        stalled,
        "the shim read all {UNREAD_REQUESTS} requests of a client that read no answer; it should stop \
         after about {BACKLOG_ANSWERS} unwritten answers"
    );
    assert!(
        f.threads <= MAX_THREADS && f.rss_kib <= MAX_RSS_KIB_UNDER_BACKLOG,
        "shim {f} while a client owed it reading; at most {MAX_THREADS} threads and \
         {MAX_RSS_KIB_UNDER_BACKLOG} KiB"
    );
}

/// Row 6 at `make test` size: 50 execs at once in one container, each with a Wait.
#[test]
fn concurrent_execs_hold_no_thread() {
    if harness::skip_if_unsupported() {
        return;
    }
    harness::load::concurrent_execs(EXECS);
}

/// Row 7: SIGUSR1 asks for a state dump in the shim's log; SIGUSR2, SIGALRM, SIGHUP and SIGPIPE
/// are ignored. The shim keeps running and its container is not killed. (SIGTERM: tests/faults.rs.)
#[test]
fn signals_do_not_end_the_shim() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let mut failed = Vec::new();
    for (name, sig) in [
        ("SIGUSR1", libc::SIGUSR1),
        ("SIGUSR2", libc::SIGUSR2),
        ("SIGALRM", libc::SIGALRM),
        ("SIGHUP", libc::SIGHUP),
        ("SIGPIPE", libc::SIGPIPE),
    ] {
        // A container (and shim) per signal: one that ends the shim would take the next one with it.
        let id = unique_id(&name.to_lowercase());
        c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sleep", "100000"]);
        let shim = procs::shim_daemon(&c.address, &id).expect("the container's shim");
        harness::signal(shim, sig);
        // The shim must still be there once the signal had time to act (a death is quick).
        let died = harness::eventually(Duration::from_secs(3), || (!procs::alive(shim)).then_some(()));
        let ls = c.ctr(&["task", "ls"]);
        let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
        let running = ls
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id.as_str()) && l.contains("RUNNING"));
        let dumped = sig != libc::SIGUSR1
            || harness::eventually(Duration::from_secs(10), || {
                std::fs::read_to_string(c.dir.join("containerd.log"))
                    .ok()?
                    .contains("state dump")
                    .then_some(())
            })
            .is_some();
        let outcome = format!(
            "{name}: shim {}, task {}{}",
            if died.is_some() { "DIED" } else { "running" },
            if running { "RUNNING" } else { "not running" },
            if sig == libc::SIGUSR1 {
                if dumped {
                    ", state dump in the log"
                } else {
                    ", NO state dump in the log"
                }
            } else {
                ""
            }
        );
        println!("{outcome}");
        if died.is_some() || !running || !dumped {
            failed.push(format!("{outcome}\n{}", ls.trim_end()));
        }
        let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
        let _ = c.ctr(&["task", "rm", "-f", &id]);
        let _ = c.ctr(&["containers", "rm", &id]);
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

/// Row 1 of the outage table at `make test` size: containerd killed for 5 s while 10 containers
/// end (an exec, then the init): every exit reaches it once it is back, in order.
#[test]
fn exits_during_a_5s_containerd_outage_are_delivered() {
    if harness::skip_if_unsupported() {
        return;
    }
    harness::outage::crash_outage(10, Duration::from_secs(5));
}

/// A tmpfs of `size` mounted by the test on a new dir; unmounted and removed on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = PathBuf::from(format!("/tmp/rr-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = Tmpfs(dir);
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&t.0)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", t.0.display());
        t
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Shim daemons (not `start`/`delete`) whose argv names `-id <id>`.
fn daemons_of(id: &str) -> Vec<u32> {
    procs::find(|a| {
        a[0].ends_with("containerd-shim-rustrunc-v2")
            && a.windows(2).any(|w| w[0] == "-id" && w[1] == id)
            && !a.iter().any(|x| x == "start" || x == "delete")
    })
}

/// `shim start` for `id` in `bundle` (its config.json written already), with `-address` naming a
/// socket nobody serves and `env` added: its output.
fn shim_start(bundle: &Path, namespace: &str, id: &str, address: &str, env: &[(&str, &str)]) -> std::process::Output {
    let ttrpc = format!("{address}.ttrpc");
    run_shim(
        &[
            "-namespace",
            namespace,
            "-address",
            address,
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            id,
            "start",
        ],
        bundle,
        b"",
        &[&[("TTRPC_ADDRESS", ttrpc.as_str())], env].concat(),
    )
}

/// On drop (also when the test failed): kills any daemon of `id` left and removes its socket and
/// runc state dir.
struct NoDaemonLeft {
    id: String,
    socket: PathBuf,
    namespace: String,
}

impl Drop for NoDaemonLeft {
    fn drop(&mut self) {
        for p in daemons_of(&self.id) {
            harness::signal(p, libc::SIGKILL);
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

/// Row 9: `start` whose address file cannot be written (the bundle on a full filesystem) fails with
/// a clear error and leaves no daemon and no socket.
#[test]
fn start_that_cannot_write_its_address_leaves_no_daemon() {
    use containerd_shim_rustrunc_v2::bootstrap::{socket_path, SOCKET_DIR};
    if harness::skip_if_unsupported() {
        return;
    }
    let fs = Tmpfs::new("256k");
    let id = unique_id("full");
    let namespace = unique_id("rr-full");
    let bundle = fs.0.join(&id);
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), spec_json(&namespace, &id, &["true"])).unwrap();
    // Fill it: data writes fail with ENOSPC from here on.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(fs.0.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
    }
    let address = format!("/tmp/rr-full-{}.sock", std::process::id());
    let socket = PathBuf::from(socket_path(SOCKET_DIR, &address, &namespace, &id));
    let _guard = NoDaemonLeft {
        id: id.clone(),
        socket: socket.clone(),
        namespace: namespace.clone(),
    };
    let o = shim_start(&bundle, &namespace, &id, &address, &[]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    // A daemon `start` spawned and then gave up on must be gone within this bound.
    let left = harness::eventually(Duration::from_secs(10), || {
        (daemons_of(&id).is_empty() && !socket.exists()).then_some(())
    });
    let (daemons, socket_left) = (daemons_of(&id), socket.exists());
    println!(
        "start: {}, stderr {:?}; daemons left {daemons:?}, socket left {socket_left}",
        o.status,
        err.trim()
    );
    assert!(!o.status.success(), "start succeeded on a full filesystem: {o:?}");
    assert!(
        err.contains("address") && err.contains("No space left"),
        "unclear error: {err:?}"
    );
    assert!(
        left.is_some(),
        "start failed but left daemon(s) {daemons:?} (socket left: {socket_left})"
    );
}

/// Row 9: a daemon started by `start` that never gets a Create exits by itself within
/// RUSTRUNC_IDLE_EXIT_SECS (60 s unless set) and removes its socket. (`start` succeeded, so it
/// spawned the daemon; whether this test sees it alive first does not matter.)
#[test]
fn daemon_without_create_exits_by_itself() {
    if harness::skip_if_unsupported() {
        return;
    }
    let dir = harness::shim::TempDir::new("rr-idle");
    let id = unique_id("idle");
    let namespace = unique_id("rr-idle");
    let bundle = dir.0.join(&id);
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), spec_json(&namespace, &id, &["true"])).unwrap();
    let address = dir.0.join("fake.sock").to_string_lossy().into_owned();
    let secs = IDLE_EXIT_SECS.to_string();
    let o = shim_start(
        &bundle,
        &namespace,
        &id,
        &address,
        &[("RUSTRUNC_IDLE_EXIT_SECS", &secs)],
    );
    assert!(o.status.success(), "start: {o:?}");
    let started = Instant::now();
    let printed = String::from_utf8_lossy(&o.stdout).into_owned();
    let socket = PathBuf::from(printed.trim().strip_prefix("unix://").unwrap_or(printed.trim()));
    let _guard = NoDaemonLeft {
        id: id.clone(),
        socket: socket.clone(),
        namespace,
    };
    let seen = daemons_of(&id);
    // Its own bound plus slack for a loaded machine.
    let bound = Duration::from_secs(IDLE_EXIT_SECS + 20);
    let gone = harness::eventually(bound, || (daemons_of(&id).is_empty() && !socket.exists()).then_some(()));
    println!(
        "idle daemon {seen:?} (RUSTRUNC_IDLE_EXIT_SECS={secs}): {} after {:.1} s, socket {}",
        if daemons_of(&id).is_empty() {
            "exited"
        } else {
            "still running"
        },
        started.elapsed().as_secs_f64(),
        if socket.exists() { "still there" } else { "removed" }
    );
    assert!(
        gone.is_some(),
        "a daemon with no Create was still running (or its socket still there) after {bound:?}"
    );
}
