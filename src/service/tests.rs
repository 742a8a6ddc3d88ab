//! The task service in-process, without root: the real `Service` with a fake runtime that hands out
//! pids (above the kernel's pid_max, so no real process is ever named) and exits them on demand,
//! and an events sink that records what containerd would see.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::events::{ForwardError, Sink};
use crate::options::CheckpointOpts;
use crate::protos::shim::event::Envelope;
use crate::runc::{CreateOpts, RestoreOpts};
use crate::runtime::Runtime;
use crate::stdio::ChildStdio;

/// What a fake runtime verb does besides being recorded: may fail, or act on the service (an exit).
type Hook = Box<dyn FnMut() -> Result<()> + Send>;

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    signals: Mutex<Vec<(u32, i32)>>,
    next_pid: AtomicU32,
    hooks: Mutex<HashMap<&'static str, Hook>>,
}

impl Fake {
    fn call(&self, verb: &'static str, id: &str) -> Result<()> {
        lock(&self.calls).push(format!("{verb} {id}"));
        // Taken out while it runs: a hook may call into the service, which may call the runtime.
        let hook = lock(&self.hooks).remove(verb);
        match hook {
            Some(mut h) => {
                let r = h();
                lock(&self.hooks).entry(verb).or_insert(h);
                r
            }
            None => Ok(()),
        }
    }

    fn hand_out_pid(&self, pid_file: &Path) -> u32 {
        // pid_max is at most 2^22: no process has one of these.
        let pid = (1 << 22) + 1 + self.next_pid.fetch_add(1, Ordering::Relaxed);
        std::fs::write(pid_file, pid.to_string()).unwrap();
        pid
    }

    fn on(&self, verb: &'static str, h: Hook) {
        lock(&self.hooks).insert(verb, h);
    }

    fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }
}

struct FakeRuntime(Arc<Fake>);

impl Runtime for FakeRuntime {
    fn create(&self, id: &str, o: &CreateOpts, _: ChildStdio) -> Result<()> {
        self.0.hand_out_pid(o.pid_file);
        self.0.call("create", id)
    }
    fn start(&self, id: &str) -> Result<()> {
        self.0.call("start", id)
    }
    fn exec(&self, id: &str, _: &Path, pid_file: &Path, _: Option<&Path>, _: ChildStdio) -> Result<()> {
        self.0.call("exec", id)?;
        self.0.hand_out_pid(pid_file);
        Ok(())
    }
    fn kill(&self, id: &str, _: u32, _: bool) -> Result<()> {
        self.0.call("kill", id)
    }
    fn delete(&self, id: &str, _: bool) -> Result<()> {
        self.0.call("delete", id)
    }
    fn pause(&self, id: &str) -> Result<()> {
        self.0.call("pause", id)
    }
    fn resume(&self, id: &str) -> Result<()> {
        self.0.call("resume", id)
    }
    fn ps(&self, id: &str) -> Result<Vec<u32>> {
        self.0.call("ps", id).map(|()| Vec::new())
    }
    fn update(&self, id: &str, _: &[u8]) -> Result<()> {
        self.0.call("update", id)
    }
    fn checkpoint(&self, id: &str, _: &CheckpointOpts, _: &Path, _: &Path) -> Result<()> {
        self.0.call("checkpoint", id)
    }
    fn restore(&self, id: &str, _: &RestoreOpts, _: ChildStdio) -> Result<()> {
        self.0.call("restore", id)
    }
    fn signal(&self, pid: u32, signal: i32) -> nix::Result<()> {
        lock(&self.0.signals).push((pid, signal));
        Ok(())
    }
}

/// Records each event as containerd would see it: "exit <id> <status>" for exits, the topic's last
/// part otherwise.
struct Seen(Arc<Mutex<Vec<String>>>);

impl Sink for Seen {
    fn forward(&mut self, env: &Envelope) -> std::result::Result<(), ForwardError> {
        let what = match env.topic.as_str() {
            "/tasks/exit" => {
                let e = <ev::TaskExit as protobuf::Message>::parse_from_bytes(&env.event.value).unwrap();
                format!("exit {} {}", e.id, e.exit_status)
            }
            t => t.trim_start_matches("/tasks/").to_string(),
        };
        lock(&self.0).push(what);
        Ok(())
    }
}

struct Shim {
    svc: Arc<Service>,
    fake: Arc<Fake>,
    seen: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
    _exits: Mutex<Receiver<Msg>>,
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn shim() -> Shim {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rr-service-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fake = Arc::new(Fake::default());
    let f = fake.clone();
    let new_runtime: NewRuntime = Arc::new(move |_: &crate::options::Options, _: &str, _: &Path| {
        Arc::new(FakeRuntime(f.clone())) as Arc<dyn Runtime>
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = channel();
    let svc = Service::start(
        "ns",
        Publisher::new("ns", Seen(seen.clone())),
        Relay::start().unwrap(),
        tx,
        new_runtime,
    )
    .unwrap();
    Shim {
        svc,
        fake,
        seen,
        dir,
        _exits: Mutex::new(rx),
    }
}

impl Shim {
    fn create(&self, id: &str) -> Result<u32> {
        let bundle = self.dir.join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(
            bundle.join("config.json"),
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#,
        )
        .unwrap();
        self.svc
            .do_create(CreateTaskRequest {
                id: id.into(),
                bundle: bundle.to_string_lossy().into_owned(),
                ..Default::default()
            })
            .map(|r| r.pid)
    }

    fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        self.svc
            .do_start(StartRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
            .map(|r| r.pid)
    }

    fn exec(&self, id: &str, exec_id: &str) -> Result<()> {
        let mut spec = protobuf::well_known_types::any::Any::new();
        spec.value = br#"{"args":["true"],"cwd":"/"}"#.to_vec();
        self.svc
            .do_exec(ExecProcessRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                spec: Some(spec).into(),
                ..Default::default()
            })
            .map(drop)
    }

    fn delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        self.svc.do_delete(DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })
    }

    fn exit(&self, pid: u32, status: u32) {
        self.svc.on_exit(Exit { pid, status });
    }

    /// What containerd has seen so far, once everything published is forwarded.
    fn events(&self) -> Vec<String> {
        assert!(self.svc.events().flush(Duration::from_secs(10)));
        lock(&self.seen).clone()
    }

    /// A parked Wait on the process: its answer arrives on the returned channel.
    fn wait(&self, id: &str, exec_id: &str) -> Receiver<u32> {
        let (tx, rx) = channel();
        let (_, p) = self.svc.process(id, exec_id).unwrap();
        p.on_exit(
            1,
            Box::new(move |e| {
                let _ = tx.send(e.status);
            }),
        );
        rx
    }
}

#[test]
fn an_exit_during_start_is_published_after_the_start() {
    let s = shim();
    let pid = s.create("c").unwrap();
    let svc = Arc::downgrade(&s.svc);
    s.fake.on(
        "start",
        Box::new(move || {
            // The process ran and died before `runc start` returned.
            svc.upgrade().unwrap().on_exit(Exit { pid, status: 3 });
            Ok(())
        }),
    );
    let wait = s.wait("c", "");
    s.start("c", "").unwrap();
    assert_eq!(wait.recv_timeout(Duration::from_secs(10)).unwrap(), 3);
    assert_eq!(s.events(), ["create", "start", "exit c 3"]);
}

#[test]
fn an_exit_during_create_is_published_after_the_create() {
    let s = shim();
    let svc = Arc::downgrade(&s.svc);
    s.fake.on(
        "create",
        Box::new(move || {
            // The pid the fake just handed out.
            svc.upgrade().unwrap().on_exit(Exit {
                pid: (1 << 22) + 1,
                status: 1,
            });
            Ok(())
        }),
    );
    s.create("c").unwrap();
    assert_eq!(s.events(), ["create", "exit c 1"]);
}

#[test]
fn init_exit_is_published_after_its_running_execs_exits() {
    let s = shim();
    let init = s.create("c").unwrap();
    s.start("c", "").unwrap();
    s.exec("c", "e1").unwrap();
    let e1 = s.start("c", "e1").unwrap();
    let init_wait = s.wait("c", "");
    s.exit(init, 137);
    assert!(
        init_wait.recv_timeout(Duration::from_millis(200)).is_err(),
        "init's exit is held while e1 runs"
    );
    let refused = s.exec("c", "e2").and_then(|()| s.start("c", "e2").map(drop));
    assert!(matches!(refused, Err(Error::FailedPrecondition(_))), "{refused:?}");
    s.exit(e1, 0);
    assert_eq!(init_wait.recv_timeout(Duration::from_secs(10)).unwrap(), 137);
    assert_eq!(
        s.events(),
        [
            "create",
            "start",
            "exec-added",
            "exec-started",
            "exec-added",
            "exit e1 0",
            "exit c 137"
        ]
    );
}

#[test]
fn deleting_a_created_init_publishes_no_exit() {
    let s = shim();
    let pid = s.create("c").unwrap();
    let svc = Arc::downgrade(&s.svc);
    s.fake.on(
        "delete",
        Box::new(move || {
            // runc delete kills the created init.
            svc.upgrade().unwrap().on_exit(Exit { pid, status: 137 });
            Ok(())
        }),
    );
    let wait = s.wait("c", "");
    s.delete("c", "").unwrap();
    assert_eq!(
        wait.recv_timeout(Duration::from_secs(10)).unwrap(),
        0,
        "as the Go shim says"
    );
    assert_eq!(s.events(), ["create", "delete"]);
}

#[test]
fn two_creates_of_one_id_run_the_runtime_once() {
    let s = Arc::new(shim());
    let (entered_tx, entered) = channel();
    let (release, released) = channel::<()>();
    let (entered_tx, released) = (Mutex::new(entered_tx), Mutex::new(released));
    s.fake.on(
        "create",
        Box::new(move || {
            lock(&entered_tx).send(()).unwrap();
            lock(&released).recv().unwrap();
            Ok(())
        }),
    );
    let first = {
        let s = s.clone();
        std::thread::spawn(move || s.create("c"))
    };
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    let second = s.create("c");
    assert!(matches!(second, Err(Error::AlreadyExists(_))), "{second:?}");
    release.send(()).unwrap();
    first.join().unwrap().unwrap();
    assert_eq!(s.fake.calls(), ["create c"], "the loser touched nothing");
}

#[test]
fn a_failed_exec_start_leaves_the_exec_created_and_answers_its_wait() {
    // containerd's TestIssue10589: exec held in runc while init is killed; the exec's start fails.
    let s = shim();
    let init = s.create("c").unwrap();
    s.start("c", "").unwrap();
    s.exec("c", "e1").unwrap();
    s.exec("c", "e2").unwrap();
    let svc = Arc::downgrade(&s.svc);
    s.fake.on(
        "exec",
        Box::new(move || {
            svc.upgrade().unwrap().on_exit(Exit { pid: init, status: 137 });
            Err(Error::Other(
                "runc exec failed: container process is already dead".into(),
            ))
        }),
    );
    let wait = s.wait("c", "e1");
    assert!(s.start("c", "e1").is_err());
    assert_eq!(wait.recv_timeout(Duration::from_secs(10)).unwrap(), 255);
    let (_, e1) = s.svc.process("c", "e1").unwrap();
    assert_eq!(e1.status(), crate::protos::shim::task::Status::CREATED);
    // Init's exit, held for the exec being started, is released by its failure.
    assert_eq!(
        s.events(),
        ["create", "start", "exec-added", "exec-added", "exit c 137"]
    );
    // A Wait after the failure is answered too.
    assert_eq!(s.wait("c", "e1").recv_timeout(Duration::from_secs(10)).unwrap(), 255);
    // e2, started after init's exit: refused before runc, stays created, its Waits answered.
    let wait = s.wait("c", "e2");
    let refused = s.start("c", "e2");
    assert_eq!(
        refused.map(drop),
        Err(Error::FailedPrecondition(
            "container c init process is not running: failed precondition".into()
        ))
    );
    assert_eq!(wait.recv_timeout(Duration::from_secs(10)).unwrap(), 255);
    let (_, e2) = s.svc.process("c", "e2").unwrap();
    assert_eq!(e2.status(), crate::protos::shim::task::Status::CREATED);
    s.delete("c", "e1").unwrap();
    s.delete("c", "e2").unwrap();
}

#[test]
fn kill_signals_a_running_init_through_the_runtime() {
    let s = shim();
    let pid = s.create("c").unwrap();
    let created = s.svc.do_kill(KillRequest {
        id: "c".into(),
        signal: 15,
        ..Default::default()
    });
    assert!(created.is_ok());
    assert_eq!(
        s.fake.calls(),
        ["create c", "kill c"],
        "a created init is runc's to kill"
    );
    s.start("c", "").unwrap();
    s.svc
        .do_kill(KillRequest {
            id: "c".into(),
            signal: 15,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(*lock(&s.fake.signals), [(pid, 15)]);
}

#[test]
fn parked_waits_go_with_their_connection() {
    let s = shim();
    let pid = s.create("c").unwrap();
    s.start("c", "").unwrap();
    let (_, p) = s.svc.process("c", "").unwrap();
    let (tx, rx) = channel();
    for conn in [7, 7, 8] {
        let tx = tx.clone();
        p.on_exit(conn, Box::new(move |_| tx.send(conn).unwrap()));
    }
    s.svc.connection_closed(7);
    s.exit(pid, 0);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 8);
    assert!(rx.try_recv().is_err());
}

#[test]
fn runtime_failures_read_as_the_go_shims_and_keep_their_code() {
    // Docker's and kubelet's users (and their runbooks) grep for these prefixes.
    let s = shim();
    s.fake.on(
        "create",
        Box::new(|| {
            Err(Error::Other(
                "runc create failed: unable to start container process".into(),
            ))
        }),
    );
    let e = s.create("c").unwrap_err();
    assert_eq!(
        e.to_string(),
        "OCI runtime create failed: runc create failed: unable to start container process"
    );
    assert_eq!(
        s.fake.calls(),
        ["create c", "delete c"],
        "the failed create is cleaned up"
    );
    lock(&s.fake.hooks).clear();
    s.create("d").unwrap();
    s.start("d", "").unwrap();
    s.exec("d", "e").unwrap();
    s.fake.on(
        "exec",
        Box::new(|| Err(Error::NotFound("exec failed: container does not exist".into()))),
    );
    let e = s.start("d", "e").unwrap_err();
    assert_eq!(
        e,
        Error::NotFound("OCI runtime exec failed: exec failed: container does not exist".into())
    );
}

#[test]
fn resizing_the_terminal_of_an_exited_exec_is_no_error() {
    let s = shim();
    s.create("c").unwrap();
    s.start("c", "").unwrap();
    s.exec("c", "e").unwrap();
    let pid = s.start("c", "e").unwrap();
    s.exit(pid, 0);
    let r = s.svc.do_resize_pty(ResizePtyRequest {
        id: "c".into(),
        exec_id: "e".into(),
        width: 80,
        height: 24,
        ..Default::default()
    });
    assert!(r.is_ok(), "{r:?}");
}
