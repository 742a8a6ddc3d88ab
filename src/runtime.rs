//! The OCI runtime as the shim uses it: one method per runc verb. [`crate::runc::Runc`] runs the
//! real binary (runc or crun); tests of the task service put a fake in its place, which hands out
//! pids and exits them on demand, so the service's ordering rules are tested in-process, without
//! root.

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::options::{CheckpointOpts, Options};
use crate::runc::{CreateOpts, RestoreOpts};
use crate::stdio::ChildStdio;

pub trait Runtime: Send + Sync {
    /// `create`: the init is created, stopped before the user's process; its pid is in `o.pid_file`.
    fn create(&self, id: &str, o: &CreateOpts, stdio: ChildStdio) -> Result<()>;
    fn start(&self, id: &str) -> Result<()>;
    /// `exec --detach`: the process spec is the JSON file `process`; its pid goes to `pid_file`.
    fn exec(&self, id: &str, process: &Path, pid_file: &Path, console: Option<&Path>, stdio: ChildStdio) -> Result<()>;
    fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()>;
    fn delete(&self, id: &str, force: bool) -> Result<()>;
    fn pause(&self, id: &str) -> Result<()>;
    fn resume(&self, id: &str) -> Result<()>;
    fn ps(&self, id: &str) -> Result<Vec<u32>>;
    fn update(&self, id: &str, resources: &[u8]) -> Result<()>;
    fn checkpoint(&self, id: &str, o: &CheckpointOpts, image: &Path, work: &Path) -> Result<()>;
    fn restore(&self, id: &str, o: &RestoreOpts, stdio: ChildStdio) -> Result<()>;
    /// Sends `signal` to a process the runtime started (kill(2); a fake records it instead).
    fn signal(&self, pid: u32, signal: i32) -> nix::Result<()> {
        crate::sys::kill(pid, signal)
    }
}

/// Makes the runtime of a container from its options, namespace and bundle.
pub type NewRuntime = Arc<dyn Fn(&Options, &str, &Path) -> Arc<dyn Runtime> + Send + Sync>;

/// The real one: runc (or `BinaryName`).
pub fn runc() -> NewRuntime {
    Arc::new(|opts: &Options, namespace: &str, bundle: &Path| {
        Arc::new(crate::runc::Runc::new(
            &opts.binary_name,
            &opts.root,
            namespace,
            bundle,
            opts.systemd_cgroup,
        )) as Arc<dyn Runtime>
    })
}
