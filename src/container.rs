//! A container: its bundle, its runc, its init process, its rootfs mounts.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::bundle::{read_pid, write_atomic, Bundle};
use crate::error::{Context, Error, Result};
use crate::lock::lock;
use crate::mount::{self, Mount};
use crate::options::{self, Options};
use crate::process::{Process, State};
use crate::protos::shim::shim::CreateTaskRequest;
use crate::protos::shim::shim::ExecProcessRequest;
use crate::runc::{CreateOpts, RestoreOpts};
use crate::runtime::{NewRuntime, Runtime};
use crate::stdio::{self, backlog, relay::Relay, StdioPaths};

struct PendingRestore {
    child: stdio::ChildStdio,
    pending: stdio::PendingIo,
    image: PathBuf,
}

pub struct Container {
    pub id: String,
    pub bundle: Bundle,
    pub runc: Arc<dyn Runtime>,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    pub mounts: Vec<Mount>,
    pub namespace: String,
    pub io_uid: u32,
    pub io_gid: u32,
    pub no_pivot: bool,
    pub criu_work_path: String,
    /// The init's cgroup, resolved right after create or restore (stats, OOM).
    pub cgroup: OnceLock<crate::cgroup::Cgroup>,
    /// IO and image of a container created from a checkpoint, until Start restores it.
    restore: Mutex<Option<PendingRestore>>,
    /// Without a private pid namespace the kernel does not kill the rest on init's exit: we do.
    pub kill_all_on_exit: bool,
    /// How the output of its processes buffers while nobody reads it.
    pub output: backlog::Settings,
}

/// Annotations (from the OCI spec; CRI forwards a pod's when the runtime handler allows them) that set
/// a container's output buffering over the handler's `OutputBuffer` and `OutputPolicy`.
pub const ANNOTATION_OUTPUT_BUFFER: &str = "io.containerd.rustrunc.v2.output-buffer";
pub const ANNOTATION_OUTPUT_POLICY: &str = "io.containerd.rustrunc.v2.output-policy";

/// The output buffering of a container: the defaults, then the runtime options, then its annotations.
fn output_settings(opts: &Options, spec: &serde_json::Value) -> Result<backlog::Settings> {
    let mut s = backlog::Settings::default();
    if let Some(cap) = opts.output_buffer {
        s.cap = cap;
    }
    if let Some(p) = opts.output_policy {
        s.policy = p;
    }
    let annotation = |k: &str| -> Result<Option<&str>> {
        match spec.pointer("/annotations").and_then(|a| a.get(k)) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Error::InvalidArgument(format!("annotation {k}: not a string"))),
        }
    };
    if let Some(v) = annotation(ANNOTATION_OUTPUT_BUFFER)? {
        s.cap = backlog::parse_size(v)
            .map_err(|e| Error::InvalidArgument(format!("annotation {ANNOTATION_OUTPUT_BUFFER}: {e}")))?;
    }
    if let Some(v) = annotation(ANNOTATION_OUTPUT_POLICY)? {
        s.policy = v
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("annotation {ANNOTATION_OUTPUT_POLICY}: {e}")))?;
    }
    Ok(s)
}

/// How long Delete waits for a process's output to reach the client before it closes the streams.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a Kill waits for a Start in progress to end (so that a Start that never returns cannot
/// hold a Kill forever).
const START_WAIT: Duration = Duration::from_secs(10);

/// Ids become path components (bundle, runc state, pid files): refuse anything that could escape.
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidArgument(format!("invalid {what} {id:?}: {why}")));
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if id.contains('/') || id.contains('\0') {
        return bad("contains '/' or NUL");
    }
    if id.contains("..") {
        return bad("contains '..'");
    }
    if id.starts_with('-') {
        return bad("starts with '-'");
    }
    Ok(())
}

/// Whether the spec gives the container a pid namespace of its own.
fn has_private_pid_ns(spec: &serde_json::Value) -> bool {
    spec.pointer("/linux/namespaces")
        .and_then(|n| n.as_array())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.get("type").and_then(|t| t.as_str()) == Some("pid")
                    && n.get("path").and_then(|p| p.as_str()).unwrap_or("").is_empty()
            })
        })
}

impl Container {
    /// Mounts the rootfs, opens the IO and runs `runc create`. On any failure everything done so far
    /// is undone: no mount, process, runc state or fd is left behind.
    pub fn create(
        req: &CreateTaskRequest,
        namespace: &str,
        relay: &Relay,
        new_runtime: &NewRuntime,
    ) -> Result<Container> {
        let id = req.id.as_str();
        let bundle = Bundle::new(&req.bundle);
        if !bundle.is_absolute() || !bundle.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "bundle {:?} is not an existing absolute directory",
                req.bundle
            )));
        }
        let spec = bundle.spec()?;
        let opts = match req.options.as_ref() {
            Some(a) => options::from_any(&a.type_url, &a.value)?,
            None => Options::default(),
        };
        let output = output_settings(&opts, &spec)?;
        if let Some(total) = opts.output_buffer_total {
            // Per shim: every container of the shim comes with the same handler's options.
            backlog::shim_pool().set_cap(total);
        }
        let runc = new_runtime(&opts, namespace, &bundle);
        bundle.write_options(&opts)?;

        let mounts: Vec<Mount> = req
            .rootfs
            .iter()
            .map(|m| Mount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                target: m.target.clone(),
                options: m.options.clone(),
            })
            .collect();
        let rootfs = bundle.rootfs();
        if !mounts.is_empty() {
            if let Err(e) = fs::create_dir(&rootfs) {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(Error::Other(format!("creating {}: {e}", rootfs.display())));
                }
            }
            for m in &mounts {
                if let Err(e) = m.mount_at(&rootfs) {
                    let _ = mount::unmount_recursive(&rootfs);
                    return Err(e);
                }
            }
        }
        let undo_mounts = || {
            if !mounts.is_empty() {
                if let Err(e) = mount::unmount_recursive(&rootfs) {
                    log::warn!("cleanup of {}: {e}", rootfs.display());
                }
            }
        };

        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let (child, pending) = match stdio::prepare(
            &paths,
            opts.io_uid,
            opts.io_gid,
            stdio::LogIds {
                container_id: id,
                namespace,
                exec_id: None,
            },
            output,
        ) {
            Ok(x) => x,
            Err(e) => {
                undo_mounts();
                return Err(e);
            }
        };
        let init = Arc::new(Process::new(id, None, paths));
        let c = Container {
            id: id.to_string(),
            kill_all_on_exit: !has_private_pid_ns(&spec),
            bundle,
            runc,
            init,
            execs: Mutex::new(HashMap::new()),
            mounts,
            namespace: namespace.to_string(),
            io_uid: opts.io_uid,
            io_gid: opts.io_gid,
            no_pivot: opts.no_pivot_root,
            criu_work_path: opts.criu_work_path.clone(),
            cgroup: OnceLock::new(),
            restore: Mutex::new(None),
            output,
        };
        if !req.checkpoint.is_empty() {
            // Restore: runc runs at Start (`runc restore`); containerd may apply the rootfs diff meanwhile.
            *c.restore.lock().unwrap_or_else(|e| e.into_inner()) = Some(PendingRestore {
                child,
                pending,
                image: PathBuf::from(&req.checkpoint),
            });
            return Ok(c);
        }
        let pid_file = c.bundle.init_pid_file();
        let console = pending.console_socket().map(Path::to_path_buf);
        let created = c
            .runc
            .create(
                id,
                &CreateOpts {
                    bundle: &c.bundle,
                    pid_file: &pid_file,
                    console_socket: console.as_deref(),
                    no_pivot: opts.no_pivot_root,
                    no_new_keyring: opts.no_new_keyring,
                },
                child,
            )
            .map_err(|e| e.context("OCI runtime create failed"));
        let started = created
            .and_then(|()| read_pid(&pid_file))
            .and_then(|pid| Ok((pid, pending.start(relay)?)));
        let (pid, io) = match started {
            Ok(x) => x,
            Err(e) => {
                // runc may have got as far as leaving state (and a runc init) behind, or, killed
                // before writing its state, only the cgroup.
                let _ = c.runc.delete(id, true);
                if let Some(p) = spec.pointer("/linux/cgroupsPath").and_then(|p| p.as_str()) {
                    crate::cgroup::remove_leftover(p);
                }
                let _ = c.unmount();
                return Err(e);
            }
        };
        c.init.set_pid(pid);
        c.init.set_io(io);
        if let Ok(cg) = crate::cgroup::Cgroup::of_pid(pid) {
            let _ = c.cgroup.set(cg);
        }
        Ok(c)
    }

    /// True for a container created from a checkpoint and not started yet.
    pub fn restore_pending(&self) -> bool {
        self.restore.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Start of a container created from a checkpoint: `runc restore`, then its IO and cgroup.
    pub fn start_restore(&self, relay: &Relay) -> Result<u32> {
        let Some(r) = self.restore.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Err(Error::FailedPrecondition(format!(
                "container {} has no checkpoint to restore",
                self.id
            )));
        };
        let pid_file = self.bundle.init_pid_file();
        let work = self.criu_work_dir();
        let console = r.pending.console_socket().map(Path::to_path_buf);
        let opts = RestoreOpts {
            bundle: &self.bundle,
            pid_file: &pid_file,
            image: &r.image,
            work: &work,
            console_socket: console.as_deref(),
            no_pivot: self.no_pivot,
        };
        let restored =
            (self.runc.restore(&self.id, &opts, r.child)).map_err(|e| e.context("OCI runtime restore failed"));
        let pid = restored.and_then(|()| read_pid(&pid_file)).inspect_err(|_| {
            let _ = fs::copy(work.join("restore.log"), self.bundle.criu_log("restore.log"));
        })?;
        let io = r.pending.start(relay).inspect_err(|_| {
            let _ = self.runc.signal(pid, libc::SIGKILL);
        })?;
        self.init.set_pid(pid);
        self.init.set_io(io);
        if let Ok(cg) = crate::cgroup::Cgroup::of_pid(pid) {
            let _ = self.cgroup.set(cg);
        }
        Ok(pid)
    }

    /// CRIU's work directory: CriuWorkPath, else the bundle's `work` (containerd's persistent dir).
    pub fn criu_work_dir(&self) -> PathBuf {
        let base = if self.criu_work_path.is_empty() {
            self.bundle.criu_work()
        } else {
            PathBuf::from(&self.criu_work_path)
        };
        base.join(format!("criu-work-{}", self.id))
    }

    /// `runc checkpoint` of the init; CRIU's dump log is kept in the bundle when it fails.
    pub fn checkpoint(&self, path: &str, o: &options::CheckpointOpts) -> Result<()> {
        let image = if path.is_empty() {
            PathBuf::from(&o.image_path)
        } else {
            PathBuf::from(path)
        };
        if image.as_os_str().is_empty() {
            return Err(Error::InvalidArgument("checkpoint without an image path".into()));
        }
        let work = if o.work_path.is_empty() {
            self.criu_work_dir()
        } else {
            PathBuf::from(&o.work_path)
        };
        fs::create_dir_all(&work).ctx(|| format!("creating CRIU work dir {}", work.display()))?;
        let r = self.runc.checkpoint(&self.id, o, &image, &work).map_err(|e| {
            // As the Go shim: CRIU's log kept in the bundle, and the error says where it is.
            let log = self.bundle.criu_log("dump.log");
            let _ = fs::copy(work.join("dump.log"), &log);
            e.context("OCI runtime checkpoint failed")
                .suffix(format_args!(" path= {}", log.display()))
        });
        if o.work_path.is_empty() {
            let _ = fs::remove_dir_all(&work);
        }
        r
    }

    pub fn exec(&self, exec_id: &str) -> Result<Arc<Process>> {
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id:?} of container {:?} not found", self.id)))
    }

    /// Runs `runc exec` for a created exec process: its IO, its spec file, its pid.
    pub fn start_exec(&self, p: &Process, relay: &Relay) -> Result<u32> {
        let exec_id = p.exec_id.as_deref().unwrap_or_default();
        let (child, pending) = stdio::prepare(
            &p.stdio,
            self.io_uid,
            self.io_gid,
            stdio::LogIds {
                container_id: &self.id,
                namespace: &self.namespace,
                exec_id: Some(exec_id),
            },
            self.output,
        )?;
        let spec = self.bundle.exec_spec_file(exec_id);
        write_atomic(&spec, &p.spec).ctx(|| "writing the exec process spec")?;
        let pid_file = self.bundle.exec_pid_file(exec_id);
        let console = pending.console_socket().map(Path::to_path_buf);
        let r = self
            .runc
            .exec(&self.id, &spec, &pid_file, console.as_deref(), child)
            .map_err(|e| e.context("OCI runtime exec failed"))
            .and_then(|()| read_pid(&pid_file));
        let _ = fs::remove_file(&spec);
        let pid = r?;
        let io = pending.start(relay).inspect_err(|_| {
            // Running without its IO is useless to the client: stop it.
            let _ = self.runc.signal(pid, libc::SIGKILL);
        })?;
        p.set_pid(pid);
        p.set_io(io);
        Ok(pid)
    }

    /// Exec: a created exec process with its spec (`terminal` as asked) and its own IO paths.
    pub fn add_exec(&self, req: ExecProcessRequest) -> Result<Arc<Process>> {
        validate_id("exec id", &req.exec_id)?;
        match self.init.state() {
            State::Created | State::Running => {}
            s => {
                return Err(Error::FailedPrecondition(format!(
                    "cannot exec in a container whose init is {s:?}"
                )))
            }
        }
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("exec without a process spec".into()))?;
        let mut process: serde_json::Value = serde_json::from_slice(&spec.value)
            .map_err(|e| Error::InvalidArgument(format!("exec process spec is not valid JSON: {e}")))?;
        process
            .as_object_mut()
            .ok_or_else(|| Error::InvalidArgument("exec process spec is not a JSON object".into()))?
            .insert("terminal".into(), req.terminal.into());
        let stdio = StdioPaths {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
        };
        let spec = serde_json::to_vec(&process).unwrap_or_default();
        let p = Arc::new(Process::with_spec(&self.id, Some(&req.exec_id), stdio, spec));
        let mut execs = lock(&self.execs);
        if execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {:?} of container {:?} already exists",
                req.exec_id, self.id
            )));
        }
        execs.insert(req.exec_id, p.clone());
        Ok(p)
    }

    /// Delete of the init (which the caller moved to Deleting): runc's state, after the output has
    /// drained (at most [`DRAIN_TIMEOUT`]), then the rootfs. A created init is killed by `runc
    /// delete`: `forget` is called first, so its exit is not reported. On failure the IO is kept.
    pub fn delete(&self, forget: impl FnOnce()) -> Result<()> {
        let never_ran = self.init.exit().is_none();
        let io = lock(&self.init.io).take();
        let result: Result<()> = (|| {
            if never_ran {
                forget();
                self.runc.delete(&self.id, false).or_else(ignore_not_found)?;
            }
            if let Some(io) = &io {
                if !io.wait_drained(DRAIN_TIMEOUT) {
                    log::warn!(
                        "container {}: output not drained after {DRAIN_TIMEOUT:?}; closing it",
                        self.id
                    );
                }
            }
            if !never_ran {
                self.runc.delete(&self.id, false).or_else(ignore_not_found)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            *lock(&self.init.io) = io;
            return Err(e.context("OCI runtime delete failed"));
        }
        if let Some(io) = io {
            io.close();
        }
        if let Err(e) = self.unmount() {
            log::warn!("container {}: {e}", self.id);
        }
        Ok(())
    }

    /// Delete of an exec (which the caller moved to Deleting): its output drained (at most
    /// [`DRAIN_TIMEOUT`]), its IO closed, its pid file removed, and it is no longer known.
    pub fn delete_exec(&self, p: &Process) {
        if let Some(io) = lock(&p.io).take() {
            if !io.wait_drained(DRAIN_TIMEOUT) {
                log::warn!(
                    "exec {} of {}: output not drained after {DRAIN_TIMEOUT:?}; closing it",
                    p.id(),
                    self.id
                );
            }
            io.close();
        }
        let _ = fs::remove_file(self.bundle.exec_pid_file(p.id()));
        lock(&self.execs).remove(p.id());
    }

    /// Kill: a running init or exec is signalled directly; runc keeps the rest.
    ///
    /// `runc kill` is a Go process (about 8 ms of CPU) for what is one kill(2) in the common cases:
    /// a signal to a running init, and SIGKILL to all of a container with a pid namespace of its own
    /// (the kernel kills the rest of the namespace when its init dies). runc keeps paused (it thaws
    /// for SIGKILL), created or stopped containers, and `all` with another signal or a shared pid
    /// namespace (its walk of the cgroup). An init that has exited gets runc's answer (NotFound)
    /// without runc, unless `all` may still find processes in a cgroup shared with others' pid
    /// namespace. A Kill during a Start waits for it ([`START_WAIT`]): the process runs, and may
    /// write, before runc returns its pid.
    pub fn kill(&self, p: &Process, signal: u32, all: bool) -> Result<()> {
        p.check_kill()?;
        if p.is_init() {
            if matches!(p.state(), State::Stopped | State::Deleting) && !(all && self.kill_all_on_exit) {
                return Err(Error::NotFound(format!("container {} is not running", self.id)));
            }
            let direct = p.state_after_start(START_WAIT) == State::Running
                && (!all || (signal == libc::SIGKILL as u32 && !self.kill_all_on_exit));
            if direct {
                return self.signal(p.pid(), signal, || format!("container {}", self.id));
            }
            return self.runc.kill(&self.id, signal, all);
        }
        // An exec is signalled directly; `all` does not apply to it.
        match p.state_after_start(START_WAIT) {
            State::Created | State::Starting => Err(Error::FailedPrecondition(format!(
                "exec {} has not been started",
                p.id()
            ))),
            State::Stopped | State::Deleting | State::Deleted => {
                Err(Error::NotFound(format!("exec {} has already finished", p.id())))
            }
            _ => self.signal(p.pid(), signal, || format!("exec {}", p.id())),
        }
    }

    /// Sends `signal` (any number runc would take, real-time ones included) to a process of ours.
    /// Its pid cannot be reused before our reaper collects it; what remains is the moment between
    /// that and the exit being recorded, which `runc kill` and the Go shim's exec kill have too.
    fn signal(&self, pid: u32, signal: u32, what: impl Fn() -> String) -> Result<()> {
        if signal == 0 || signal > libc::SIGRTMAX() as u32 {
            return Err(Error::InvalidArgument(format!(
                "invalid signal {signal} for {}",
                what()
            )));
        }
        if pid == 0 {
            return Err(Error::FailedPrecondition(format!("{} has no pid yet", what())));
        }
        match self.runc.signal(pid, signal as i32) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => Err(Error::NotFound(format!("{} has already finished", what()))),
            Err(e) => Err(Error::Other(format!("signalling {}: {e}", what()))),
        }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle.rootfs()
    }

    pub fn unmount(&self) -> Result<()> {
        if self.mounts.is_empty() {
            return Ok(());
        }
        mount::unmount_recursive(&self.rootfs())
    }
}

fn ignore_not_found(e: Error) -> Result<()> {
    match e {
        Error::NotFound(_) => Ok(()),
        e => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::read_spec;

    #[test]
    fn ids_that_could_escape_are_refused() {
        for bad in ["", "a/b", "..", "../x", "a..b", "x\0y", "-rf", &"x".repeat(256)] {
            assert!(
                matches!(validate_id("id", bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        for good in ["c1", "my-container_1.2", "0123456789abcdef"] {
            validate_id("id", good).unwrap();
        }
    }

    #[test]
    fn pid_namespace_detection() {
        let spec = |ns: &str| read_spec_text(&format!(r#"{{"linux":{{"namespaces":[{ns}]}}}}"#));
        assert!(has_private_pid_ns(&spec(r#"{"type":"mount"},{"type":"pid"}"#)));
        assert!(!has_private_pid_ns(&spec(r#"{"type":"pid","path":"/proc/1/ns/pid"}"#)));
        assert!(!has_private_pid_ns(&spec(r#"{"type":"mount"}"#)));
    }

    fn read_spec_text(text: &str) -> serde_json::Value {
        let dir = std::env::temp_dir().join(format!(
            "rr-spec-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("config.json"), text).unwrap();
        let r = read_spec(&dir);
        fs::remove_dir_all(&dir).unwrap();
        r.unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn output_settings_annotations_override_options() {
        let spec = |a: &str| read_spec_text(&format!(r#"{{"annotations":{{{a}}}}}"#));
        let opts = Options {
            output_buffer: Some(1 << 20),
            output_policy: Some(backlog::Policy::Drop),
            ..Default::default()
        };
        assert_eq!(
            output_settings(&Options::default(), &spec("")).unwrap(),
            backlog::Settings::default()
        );
        let s = output_settings(&opts, &spec(r#""other":"x""#)).unwrap();
        assert_eq!((s.cap, s.policy), (1 << 20, backlog::Policy::Drop));
        let s = output_settings(
            &opts,
            &spec(&format!(
                r#""{ANNOTATION_OUTPUT_BUFFER}":"64Mi","{ANNOTATION_OUTPUT_POLICY}":"block""#
            )),
        )
        .unwrap();
        assert_eq!((s.cap, s.policy), (64 << 20, backlog::Policy::Block));
        for (bad, want) in [
            (
                format!(r#""{ANNOTATION_OUTPUT_BUFFER}":"much""#),
                "output-buffer: size \"much\"",
            ),
            (
                format!(r#""{ANNOTATION_OUTPUT_POLICY}":"oldest""#),
                "output-policy: output policy",
            ),
            (
                format!(r#""{ANNOTATION_OUTPUT_BUFFER}":5"#),
                "output-buffer: not a string",
            ),
        ] {
            let e = output_settings(&opts, &spec(&bad)).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn write_atomic_never_writes_through_a_planted_symlink() {
        let dir = std::env::temp_dir().join(format!("rr-symlink-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, "untouched").unwrap();
        // A link at the final name: replaced, the victim untouched.
        std::os::unix::fs::symlink(&victim, dir.join("options.json")).unwrap();
        write_atomic(&dir.join("options.json"), b"{}").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(fs::read_to_string(dir.join("options.json")).unwrap(), "{}");
        assert!(!fs::symlink_metadata(dir.join("options.json"))
            .unwrap()
            .file_type()
            .is_symlink());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_spec_is_named() {
        let dir = std::env::temp_dir().join(format!("rr-badspec-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let msg = |r: Result<serde_json::Value>| r.map(|_| String::new()).unwrap_or_else(|e| e.to_string());
        assert!(msg(read_spec(&dir)).contains("has no config.json"));
        for bad in ["{\"ociVersion\": \"1.0.2\", \"process\": ", "[]", ""] {
            fs::write(dir.join("config.json"), bad).unwrap();
            let m = msg(read_spec(&dir));
            assert!(m.contains("config.json"), "{bad:?}: {m:?}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
