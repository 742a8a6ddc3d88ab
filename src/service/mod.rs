//! The Task service: one thin handler per RPC; errors become ttrpc codes in one place (error.rs).
//! Exit bookkeeping follows the Go shim (`preStart`/`handleStarted`): subscribe to exits before runc
//! forks a process, publish its start event, then reconcile the exits seen meanwhile, so an exit is
//! never lost and never published before its start. No lock is held across a runc call.

pub mod lifecycle;
mod rpc;
mod task;

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::container::Container;
use crate::error::{Error, Result};
use crate::events::{timestamp, Publisher};
use crate::lock::lock;
use crate::oom::OomWatcher;
use crate::process::Process;
use crate::protos::events::task as ev;
use crate::protos::shim::shim::*;
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
                // Called on the event loop's thread (the OOM watch), which must never wait.
                publisher.publish_nowait(
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
}

#[cfg(test)]
mod tests;
