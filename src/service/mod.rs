//! The Task service: one thin handler per RPC; errors become ttrpc codes in one place (error.rs).
//! Exit bookkeeping follows the Go shim (`preStart`/`handleStarted`): subscribe to exits before runc
//! forks a process, publish its start event, then reconcile the exits seen meanwhile, so an exit is
//! never lost and never published before its start. No lock is held across a runc call.

pub mod lifecycle;

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use protobuf::well_known_types::empty::Empty;

use crate::container::{validate_id, Container};
use crate::error::{Error, Result};
use crate::events::{timestamp, Publisher};
use crate::lock::lock;
use crate::oom::OomWatcher;
use crate::process::{Process, State};
use crate::protos::events::task as ev;
use crate::protos::shim::oci::ProcessDetails;
use crate::protos::shim::shim::*;
use crate::protos::shim::shim_ttrpc::Task;
use crate::protos::shim::task::{ProcessInfo, Status};
use crate::reaper::Exit;
use crate::runtime::NewRuntime;
use crate::server::Reply;
use crate::stdio::relay::Relay;
use lifecycle::{Action, Lifecycle};

/// How long an exit waits for the process's output to reach the client before it is reported. A
/// client may stop reading once it has the exit: containerd 1.6's `Task.Delete` (ctr) closes its
/// fifo readers before it waits for its copy (1.7 fixed that), so output still in the shim's pipe or
/// in the fifo then is lost. Normally the output ends with the process and the client reads it in
/// a few milliseconds; a background process that keeps the pipe open, or a client that does not
/// read, costs 100 ms (the wait stops when nothing moves for that long; the Go shim does not wait).
const EXIT_DRAIN: Duration = Duration::from_secs(1);

/// What the daemon's main thread waits for.
pub enum Msg {
    Exit(Exit),
    Shutdown,
}

pub struct Service {
    namespace: String,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    lifecycle: Mutex<Lifecycle<Arc<Process>>>,
    events: Arc<Publisher>,
    oom: OomWatcher,
    relay: Relay,
    shutdown: Sender<Msg>,
    /// Ids between the AlreadyExists check and the insertion of their container: a second Create
    /// of the same id must not run runc (its cleanup would delete the first one's state).
    creating: Mutex<HashSet<String>>,
    ever_created: std::sync::atomic::AtomicBool,
    new_runtime: NewRuntime,
}

/// An exit subscription taken before runc forks; dropped unused (the fork failed) it is cancelled.
struct Subscription<'a> {
    svc: &'a Service,
    sub: Option<lifecycle::Sub>,
}

impl Subscription<'_> {
    /// Rule 2 of the lifecycle: `p` exists and its start (or create) event is queued.
    fn started(mut self, p: &Arc<Process>) {
        let sub = self.sub.take().expect("started once");
        let actions = lock(&self.svc.lifecycle).started(sub, p, p.pid());
        self.svc.perform(actions);
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        if let Some(sub) = self.sub.take() {
            lock(&self.svc.lifecycle).cancel(sub);
        }
    }
}

impl lifecycle::Tracked for Arc<Process> {
    fn container(&self) -> &str {
        &self.container_id
    }
    fn is_init(&self) -> bool {
        Process::is_init(self)
    }
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

impl Service {
    /// Creates the service. Exits reach it through [`Msg::Exit`] on the channel that [`Service::run`]
    /// serves (the daemon points the reaper's monitor at it); containers get their runtime from
    /// `new_runtime`.
    pub fn start(
        namespace: &str,
        events: Publisher,
        relay: Relay,
        tx: Sender<Msg>,
        new_runtime: NewRuntime,
    ) -> std::io::Result<Arc<Service>> {
        let events = Arc::new(events);
        let publisher = events.clone();
        let oom = OomWatcher::start_on(
            &relay,
            Box::new(move |id: &str| {
                log::info!("container {id}: OOM kill");
                publisher.publish(
                    "/tasks/oom",
                    &ev::TaskOOM {
                        container_id: id.to_string(),
                        ..Default::default()
                    },
                );
            }),
        )?;
        Ok(Arc::new(Service {
            namespace: namespace.to_string(),
            containers: Mutex::new(HashMap::new()),
            lifecycle: Mutex::new(Lifecycle::default()),
            events,
            oom,
            relay,
            shutdown: tx,
            creating: Mutex::new(HashSet::new()),
            ever_created: Default::default(),
            new_runtime,
        }))
    }

    /// Handles container exits until shutdown is asked for (Shutdown with no task left, SIGTERM).
    /// Runs on the daemon's main thread.
    pub fn run(&self, rx: Receiver<Msg>) {
        for m in rx {
            match m {
                Msg::Exit(e) => self.on_exit(e),
                Msg::Shutdown => return,
            }
        }
    }

    pub fn events(&self) -> &Publisher {
        &self.events
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Process>)> {
        let c = self.container(id)?;
        let p = if exec_id.is_empty() {
            c.init.clone()
        } else {
            c.exec(exec_id)?
        };
        Ok((c, p))
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.containers).is_empty() && lock(&self.creating).is_empty()
    }

    // ---- exit bookkeeping -------------------------------------------------------------------

    /// Subscribes to exits before runc runs (rule 1 of the lifecycle).
    fn pre_start(&self, restarting: Option<&Arc<Process>>) -> Subscription<'_> {
        let sub = lock(&self.lifecycle).subscribe(restarting.map(|p| (p, p.pid())));
        Subscription {
            svc: self,
            sub: Some(sub),
        }
    }

    fn on_exit(&self, e: Exit) {
        let actions = lock(&self.lifecycle).exited(e);
        self.perform(actions);
    }

    /// Does what the lifecycle said, in its order, with no lock held.
    fn perform(&self, actions: Vec<Action<Arc<Process>>>) {
        for a in actions {
            match a {
                Action::KillAll(id) => {
                    let c = lock(&self.containers).get(&id).cloned();
                    if let Some(c) = c {
                        if let Err(e) = c.runc.kill(&c.id, 9, true) {
                            log::debug!("kill --all after init exit of {}: {e}", c.id);
                        }
                    }
                }
                Action::Exit(p, status) => self.handle_process_exit(&p, status),
            }
        }
    }

    fn handle_process_exit(&self, p: &Arc<Process>, status: u32) {
        if p.is_init() {
            // Reports an OOM kill not yet seen, so /tasks/oom precedes /tasks/exit.
            self.oom.remove(&p.container_id);
        }
        let drain = lock(&p.io).as_ref().map(|io| {
            io.process_exited();
            io.drain_waiter()
        });
        if let Some(d) = drain {
            let how = d.wait(EXIT_DRAIN);
            if how != crate::stdio::Drained::Yes {
                log::debug!(
                    "{} of {}: exit reported before its output drained ({how:?})",
                    p.id(),
                    p.container_id
                );
            }
        }
        if p.set_exited(status) {
            let exit = p.exit().expect("set above");
            self.events.publish(
                "/tasks/exit",
                &ev::TaskExit {
                    container_id: p.container_id.clone(),
                    id: p.id().to_string(),
                    pid: p.pid(),
                    exit_status: status,
                    exited_at: Some(timestamp(exit.at)).into(),
                    ..Default::default()
                },
            );
        }
        if !p.is_init() {
            self.exec_done(&p.container_id);
        }
    }

    /// One exec of the container less: may release init's held exit.
    fn exec_done(&self, container_id: &str) {
        let actions = lock(&self.lifecycle).exec_done(container_id);
        self.perform(actions);
    }

    // ---- RPCs ------------------------------------------------------------------------------

    fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        validate_id("container id", &req.id)?;
        {
            let cs = lock(&self.containers);
            if cs.contains_key(&req.id) || !lock(&self.creating).insert(req.id.clone()) {
                return Err(Error::AlreadyExists(format!("container {:?} already exists", req.id)));
            }
        }
        self.ever_created.store(true, std::sync::atomic::Ordering::Relaxed);
        let sub = self.pre_start(None);
        let created = Container::create(&req, &self.namespace, &self.relay, &self.new_runtime);
        let c = match created {
            Ok(c) => Arc::new(c),
            Err(e) => {
                lock(&self.creating).remove(&req.id);
                return Err(e);
            }
        };
        let pid = c.init.pid();
        self.watch_oom(&c);
        if c.kill_all_on_exit {
            lock(&self.lifecycle).kill_all_on_exit(&c.id);
        }
        {
            let mut cs = lock(&self.containers);
            cs.insert(req.id.clone(), c.clone());
            lock(&self.creating).remove(&req.id);
        }
        log::info!("created container {} (pid {pid})", req.id);
        self.events.publish(
            "/tasks/create",
            &ev::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req
                    .rootfs
                    .iter()
                    .map(|m| crate::protos::events::mount::Mount {
                        type_: m.type_.clone(),
                        source: m.source.clone(),
                        target: m.target.clone(),
                        options: m.options.clone(),
                        ..Default::default()
                    })
                    .collect(),
                io: Some(ev::TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            },
        );
        sub.started(&c.init);
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn watch_oom(&self, c: &Container) {
        if let Some(cg) = c.cgroup.get() {
            if let Err(e) = self.oom.add(&c.id, cg) {
                log::warn!("container {}: not watching for OOM kills: {e}", c.id);
            }
        }
    }

    fn do_checkpoint(&self, req: CheckpointTaskRequest) -> Result<Empty> {
        let c = self.container(&req.id)?;
        match c.init.state() {
            State::Running | State::Paused => {}
            s => {
                return Err(Error::FailedPrecondition(format!(
                    "cannot checkpoint a container whose init is {s:?}"
                )))
            }
        }
        let opts = match req.options.as_ref() {
            Some(a) => crate::options::checkpoint_from_any(&a.type_url, &a.value)?,
            None => Default::default(),
        };
        c.checkpoint(&req.path, &opts)?;
        Ok(Empty::new())
    }

    fn do_start(&self, req: StartRequest) -> Result<StartResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        if !p.is_init() {
            return self.start_exec(&c, &p);
        }
        let start = p.begin_start()?;
        let sub = self.pre_start(Some(&p));
        if c.restore_pending() {
            // On failure nothing runs: the task stays created, with no process to track.
            c.start_restore(&self.relay)?;
            self.watch_oom(&c);
        } else if let Err(e) = c.runc.start(&c.id).map_err(|e| e.context("OCI runtime start failed")) {
            // The created init is tracked again (it may die with the failed start).
            drop(start);
            sub.started(&p);
            return Err(e);
        }
        start.commit();
        let pid = p.pid();
        self.events.publish(
            "/tasks/start",
            &ev::TaskStart {
                container_id: c.id.clone(),
                pid,
                ..Default::default()
            },
        );
        sub.started(&p);
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn start_exec(&self, c: &Arc<Container>, p: &Arc<Process>) -> Result<StartResponse> {
        let start = p.begin_start()?;
        if !lock(&self.lifecycle).exec_starting(&c.id) {
            return Err(Error::FailedPrecondition(format!(
                "container {} init process is not running",
                c.id
            )));
        }
        let sub = self.pre_start(None);
        let pid = match c.start_exec(p, &self.relay) {
            Ok(pid) => pid,
            Err(e) => {
                drop(sub);
                // Never ran: it stays created (as the Go shim's does), its Wait returns, no exit
                // event, and a held-back init exit may go now.
                start.failed_to_run();
                self.exec_done(&c.id);
                return Err(e);
            }
        };
        start.commit();
        self.events.publish(
            "/tasks/exec-started",
            &ev::TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: p.id().to_string(),
                pid,
                ..Default::default()
            },
        );
        sub.started(p);
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn do_exec(&self, req: ExecProcessRequest) -> Result<Empty> {
        let c = self.container(&req.id)?;
        let exec_id = req.exec_id.clone();
        c.add_exec(req)?;
        self.events.publish(
            "/tasks/exec-added",
            &ev::TaskExecAdded {
                container_id: c.id.clone(),
                exec_id,
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    fn delete_exec(&self, c: &Arc<Container>, p: &Arc<Process>) -> Result<DeleteResponse> {
        let delete = p.begin_delete()?;
        c.delete_exec(p);
        delete.commit();
        Ok(delete_response(p))
    }

    fn do_pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        let c = self.container(&req.id)?;
        let pids = c.runc.ps(&c.id)?;
        let execs: HashMap<u32, String> = lock(&c.execs).values().map(|p| (p.pid(), p.id().to_string())).collect();
        let processes = pids
            .into_iter()
            .map(|pid| {
                let mut info = ProcessInfo {
                    pid,
                    ..Default::default()
                };
                if let Some(exec_id) = execs.get(&pid) {
                    let details = ProcessDetails {
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    };
                    info.info = Some(crate::events::to_any(&details)).into();
                }
                info
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn do_pause(&self, req: PauseRequest) -> Result<Empty> {
        let c = self.container(&req.id)?;
        let pause = c.init.begin_pause()?;
        c.runc.pause(&c.id).map_err(|e| e.context("OCI runtime pause failed"))?;
        pause.commit();
        self.events.publish(
            "/tasks/paused",
            &ev::TaskPaused {
                container_id: c.id.clone(),
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    fn do_resume(&self, req: ResumeRequest) -> Result<Empty> {
        let c = self.container(&req.id)?;
        let resume = c.init.begin_resume()?;
        c.runc
            .resume(&c.id)
            .map_err(|e| e.context("OCI runtime resume failed"))?;
        resume.commit();
        self.events.publish(
            "/tasks/resumed",
            &ev::TaskResumed {
                container_id: c.id.clone(),
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        if !p.is_init() {
            return self.delete_exec(&c, &p);
        }
        let delete = p.begin_delete()?;
        // runc delete kills a created init; that exit is not the task's to report.
        c.delete(|| lock(&self.lifecycle).forget(&p, p.pid()))?;
        self.oom.remove(&c.id);
        lock(&self.containers).remove(&c.id);
        lock(&self.lifecycle).deleted(&c.id);
        delete.commit();
        let r = delete_response(&p);
        self.events.publish(
            "/tasks/delete",
            &ev::TaskDelete {
                container_id: c.id.clone(),
                pid: r.pid,
                exit_status: r.exit_status,
                exited_at: r.exited_at.clone(),
                ..Default::default()
            },
        );
        log::info!("deleted container {}", c.id);
        Ok(r)
    }

    fn do_kill(&self, req: KillRequest) -> Result<Empty> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        c.kill(&p, req.signal, req.all)?;
        Ok(Empty::new())
    }

    fn do_state(&self, req: StateRequest) -> Result<StateResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let exit = p.exit();
        let mut status = p.status();
        if !p.is_init() && status == Status::RUNNING && matches!(c.init.status(), Status::PAUSED | Status::PAUSING) {
            status = c.init.status();
        }
        Ok(StateResponse {
            id: p.id().to_string(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: p.pid(),
            status: status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    /// Wait, parked: answered from the exit path through `reply`, holding no thread meanwhile. Runs
    /// on the event loop: looks up and registers, never blocks.
    pub fn wait_parked(&self, req: ttrpc::proto::Request, reply: Reply) {
        let req = match <WaitRequest as protobuf::Message>::parse_from_bytes(&req.payload) {
            Ok(r) => r,
            Err(e) => return reply.err(ttrpc::Code::INVALID_ARGUMENT, format!("Wait: Unpack request error {e}")),
        };
        let p = match self.process(&req.id, &req.exec_id) {
            Ok((_, p)) => p,
            Err(e) => {
                log::warn!("Wait {}: {e}", req.id);
                return reply.err(e.code(), e.message().to_string());
            }
        };
        p.on_exit(
            reply.conn(),
            Box::new(move |e| {
                reply.ok(&WaitResponse {
                    exit_status: e.status,
                    exited_at: Some(timestamp(e.at)).into(),
                    ..Default::default()
                })
            }),
        );
    }

    /// A client connection closed: its parked Waits go with it.
    pub fn connection_closed(&self, conn: u64) {
        let mut dropped = 0;
        for c in self.containers() {
            dropped += c.init.drop_waiters(conn);
            for p in lock(&c.execs).values() {
                dropped += p.drop_waiters(conn);
            }
        }
        if dropped > 0 {
            log::debug!("connection {conn} closed: {dropped} parked Waits dropped");
        }
    }

    fn containers(&self) -> Vec<Arc<Container>> {
        lock(&self.containers).values().cloned().collect()
    }

    /// The task service's part of the SIGUSR1 state dump.
    pub fn dump(&self, out: &mut String) {
        use std::fmt::Write;
        let cs = self.containers();
        let _ = writeln!(out, "  containers: {}", cs.len());
        for c in cs {
            let execs: Vec<Arc<Process>> = lock(&c.execs).values().cloned().collect();
            for p in std::iter::once(&c.init).chain(execs.iter()) {
                let _ = writeln!(
                    out,
                    "    {} {}: pid {} {:?}, exit {:?}, {} Waits parked",
                    c.id,
                    if p.is_init() { "init" } else { p.id() },
                    p.pid(),
                    p.state(),
                    p.exit().map(|e| e.status),
                    p.waiters()
                );
            }
        }
        let (tracked, subs, held) = lock(&self.lifecycle).figures();
        let _ = writeln!(
            out,
            "  lifecycle: {tracked} pids tracked, {subs} subscriptions open, {held} init exits held for execs"
        );
        let _ = writeln!(out, "  events: {} queued for containerd", self.events.queued());
    }

    /// Whether a container was ever created in this shim (a shim that never gets one exits).
    pub fn ever_created(&self) -> bool {
        self.ever_created.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks the daemon's main thread to shut down.
    pub fn shutdown_now(&self) {
        let _ = self.shutdown.send(Msg::Shutdown);
    }

    fn do_connect(&self, req: ConnectRequest) -> Result<ConnectResponse> {
        let task_pid = lock(&self.containers).get(&req.id).map(|c| c.init.pid()).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn do_shutdown(&self, _req: ShutdownRequest) -> Result<Empty> {
        if self.is_empty() {
            let _ = self.shutdown.send(Msg::Shutdown);
        }
        Ok(Empty::new())
    }

    fn do_update(&self, req: UpdateTaskRequest) -> Result<Empty> {
        let c = self.container(&req.id)?;
        match c.init.state() {
            State::Stopped | State::Deleting | State::Deleted => {
                return Err(Error::FailedPrecondition(format!(
                    "cannot update a stopped container {}",
                    c.id
                )))
            }
            _ => {}
        }
        let resources = req.resources.as_ref().map(|a| a.value.as_slice()).unwrap_or_default();
        // runc validates the LinuxResources itself; a JSON check here gives a clearer error first.
        serde_json::from_slice::<serde_json::Value>(resources)
            .map_err(|e| Error::InvalidArgument(format!("update resources are not LinuxResources JSON: {e}")))?;
        c.runc
            .update(&c.id, resources)
            .map_err(|e| e.context("OCI runtime update failed"))?;
        Ok(Empty::new())
    }

    fn do_stats(&self, req: StatsRequest) -> Result<StatsResponse> {
        let c = self.container(&req.id)?;
        let cg = c
            .cgroup
            .get()
            .ok_or_else(|| Error::NotFound(format!("container {} has no cgroup", c.id)))?;
        Ok(StatsResponse {
            stats: Some(crate::stats::metrics(cg)?).into(),
            ..Default::default()
        })
    }

    /// ResizePty: the process's terminal (before Start too). A process that has exited has no
    /// terminal left to resize: that is no error (the Go shim answers one for an exec, which
    /// `ctr exec -t` prints whenever the exit wins the race with its first resize).
    fn do_resize_pty(&self, req: ResizePtyRequest) -> Result<Empty> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        if p.exit().is_some() {
            return Ok(Empty::new());
        }
        if let Some(io) = lock(&p.io).as_ref() {
            io.resize(req.width, req.height)?;
        }
        Ok(Empty::new())
    }

    fn do_close_io(&self, req: CloseIORequest) -> Result<Empty> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        p.close_stdin();
        Ok(Empty::new())
    }
}

/// What Delete answers for a process: its pid and exit (none: 0, now).
fn delete_response(p: &Process) -> DeleteResponse {
    let (status, at) = p.exit().map(|e| (e.status, e.at)).unwrap_or((0, SystemTime::now()));
    DeleteResponse {
        pid: p.pid(),
        exit_status: status,
        exited_at: Some(timestamp(at)).into(),
        ..Default::default()
    }
}

fn log_result<T>(rpc: &str, id: &str, r: Result<T>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        log::warn!("{rpc} {id}: {e}");
        e.into()
    })
}

impl Task for Service {
    fn state(&self, _: &ttrpc::TtrpcContext, r: StateRequest) -> ttrpc::Result<StateResponse> {
        let id = r.id.clone();
        self.do_state(r).map_err(|e| {
            log::debug!("State {id}: {e}");
            e.into()
        })
    }
    fn create(&self, _: &ttrpc::TtrpcContext, r: CreateTaskRequest) -> ttrpc::Result<CreateTaskResponse> {
        let id = r.id.clone();
        log_result("Create", &id, self.do_create(r))
    }
    fn start(&self, _: &ttrpc::TtrpcContext, r: StartRequest) -> ttrpc::Result<StartResponse> {
        let id = r.id.clone();
        log_result("Start", &id, self.do_start(r))
    }
    fn delete(&self, _: &ttrpc::TtrpcContext, r: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let id = r.id.clone();
        log_result("Delete", &id, self.do_delete(r))
    }
    fn pids(&self, _: &ttrpc::TtrpcContext, r: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let id = r.id.clone();
        log_result("Pids", &id, self.do_pids(r))
    }
    fn pause(&self, _: &ttrpc::TtrpcContext, r: PauseRequest) -> ttrpc::Result<Empty> {
        let id = r.id.clone();
        log_result("Pause", &id, self.do_pause(r))
    }
    fn resume(&self, _: &ttrpc::TtrpcContext, r: ResumeRequest) -> ttrpc::Result<Empty> {
        let id = r.id.clone();
        log_result("Resume", &id, self.do_resume(r))
    }
    fn checkpoint(&self, _: &ttrpc::TtrpcContext, r: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        let id = r.id.clone();
        log_result("Checkpoint", &id, self.do_checkpoint(r))
    }
    fn kill(&self, _: &ttrpc::TtrpcContext, r: KillRequest) -> ttrpc::Result<Empty> {
        let id = r.id.clone();
        self.do_kill(r).map_err(|e| {
            log::debug!("Kill {id}: {e}");
            e.into()
        })
    }
    fn exec(&self, _: &ttrpc::TtrpcContext, r: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let id = r.id.clone();
        log_result("Exec", &id, self.do_exec(r))
    }
    fn resize_pty(&self, _: &ttrpc::TtrpcContext, r: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let id = r.id.clone();
        log_result("ResizePty", &id, self.do_resize_pty(r))
    }
    fn close_io(&self, _: &ttrpc::TtrpcContext, r: CloseIORequest) -> ttrpc::Result<Empty> {
        let id = r.id.clone();
        log_result("CloseIO", &id, self.do_close_io(r))
    }
    fn update(&self, _: &ttrpc::TtrpcContext, r: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let id = r.id.clone();
        log_result("Update", &id, self.do_update(r))
    }
    fn wait(&self, _: &ttrpc::TtrpcContext, r: WaitRequest) -> ttrpc::Result<WaitResponse> {
        // The daemon serves Wait parked (`wait_parked`): reaching this is a wiring mistake.
        Err(Error::Other(format!("Wait {}: not served parked", r.id)).into())
    }
    fn stats(&self, _: &ttrpc::TtrpcContext, r: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let id = r.id.clone();
        log_result("Stats", &id, self.do_stats(r))
    }
    fn connect(&self, _: &ttrpc::TtrpcContext, r: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let id = r.id.clone();
        log_result("Connect", &id, self.do_connect(r))
    }
    fn shutdown(&self, _: &ttrpc::TtrpcContext, r: ShutdownRequest) -> ttrpc::Result<Empty> {
        let id = r.id.clone();
        log_result("Shutdown", &id, self.do_shutdown(r))
    }
}

#[cfg(test)]
mod tests;
