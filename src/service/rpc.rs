//! The task RPCs: each looks up the container or process, takes its transition, lets the container
//! do the work, and publishes the event. No lock is held across a runtime call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use protobuf::well_known_types::empty::Empty;

use super::{Msg, Service};
use crate::container::{validate_id, Container};
use crate::error::{Error, Result};
use crate::events::timestamp;
use crate::lock::lock;
use crate::process::{Process, State};
use crate::protos::events::task as ev;
use crate::protos::shim::oci::ProcessDetails;
use crate::protos::shim::shim::*;
use crate::protos::shim::task::{ProcessInfo, Status};

impl Service {
    pub(super) fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
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

    pub(super) fn watch_oom(&self, c: &Container) {
        if let Some(cg) = c.cgroup.get() {
            if let Err(e) = self.oom.add(&c.id, cg) {
                log::warn!("container {}: not watching for OOM kills: {e}", c.id);
            }
        }
    }

    pub(super) fn do_checkpoint(&self, req: CheckpointTaskRequest) -> Result<Empty> {
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

    pub(super) fn do_start(&self, req: StartRequest) -> Result<StartResponse> {
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
            // It can never run now: its Waits are answered rather than left parked for good (the
            // Go shim leaves them blocked); it stays created.
            start.failed_to_run();
            // The Go shim's text (errgrpc's ": failed precondition" tail), which users grep for.
            return Err(Error::FailedPrecondition(format!(
                "container {} init process is not running: failed precondition",
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

    pub(super) fn do_exec(&self, req: ExecProcessRequest) -> Result<Empty> {
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

    pub(super) fn do_pids(&self, req: PidsRequest) -> Result<PidsResponse> {
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

    pub(super) fn do_pause(&self, req: PauseRequest) -> Result<Empty> {
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

    pub(super) fn do_resume(&self, req: ResumeRequest) -> Result<Empty> {
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

    pub(super) fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
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

    pub(super) fn do_kill(&self, req: KillRequest) -> Result<Empty> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        c.kill(&p, req.signal, req.all)?;
        Ok(Empty::new())
    }

    pub(super) fn do_state(&self, req: StateRequest) -> Result<StateResponse> {
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

    pub(super) fn do_connect(&self, req: ConnectRequest) -> Result<ConnectResponse> {
        let task_pid = lock(&self.containers).get(&req.id).map(|c| c.init.pid()).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    pub(super) fn do_shutdown(&self, _req: ShutdownRequest) -> Result<Empty> {
        if self.is_empty() {
            let _ = self.shutdown.send(Msg::Shutdown);
        }
        Ok(Empty::new())
    }

    pub(super) fn do_update(&self, req: UpdateTaskRequest) -> Result<Empty> {
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

    pub(super) fn do_stats(&self, req: StatsRequest) -> Result<StatsResponse> {
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
    pub(super) fn do_resize_pty(&self, req: ResizePtyRequest) -> Result<Empty> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        if p.exit().is_some() {
            return Ok(Empty::new());
        }
        if let Some(io) = lock(&p.io).as_ref() {
            io.resize(req.width, req.height)?;
        }
        Ok(Empty::new())
    }

    pub(super) fn do_close_io(&self, req: CloseIORequest) -> Result<Empty> {
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
