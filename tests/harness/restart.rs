//! Stopping the harness's containerd and starting another one on the same config, root, state and
//! socket: what a containerd restart (upgrade, crash, systemctl restart) looks like to a shim.
//!
//! The containerd layer owns the first containerd (`Containerd`, a `Child` it reaps on drop); its
//! `Containerd::restart` takes `&mut` and comes back at once. This module stops and starts separately,
//! with only `&Containerd`, so that a test can act during the outage. `stop` sends that process SIGTERM (found through its `--config <dir>/config.toml`
//! argv) and `Restarted::start` runs `containerd --config <dir>/config.toml` again with the same
//! PATH. The `Restarted` guard, dropped before the `Containerd` it borrows, removes tasks and
//! containers through the new containerd and stops it; the harness's own Drop then finds its child
//! gone and does the rest (shims, runc state, cgroups, mounts, temp dir).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::procs;
use super::{shim_dir, spawn_containerd, term_then_kill, wait_containerd_ready, Containerd};

const CONTAINERD: &str = "/usr/bin/containerd";

fn config_path(c: &Containerd) -> PathBuf {
    c.dir.join("config.toml")
}

/// The pid of the containerd serving `c` (any generation), if one runs.
pub fn containerd_pid(c: &Containerd) -> Option<u32> {
    let config = config_path(c).to_string_lossy().into_owned();
    procs::find(|a| a[0].ends_with("containerd") && a.contains(&config))
        .into_iter()
        .next()
}

/// SIGTERM to the running containerd of `c`; waits (≤ 20 s) until it is gone or a zombie. Returns
/// its pid.
pub fn stop(c: &Containerd) -> u32 {
    let pid = containerd_pid(c).expect("containerd is running");
    super::signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while procs::alive(pid) {
        if Instant::now() > deadline {
            super::signal(pid, libc::SIGKILL);
            panic!("containerd {pid} ignored SIGTERM for 20 s; killed it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    pid
}

/// SIGKILL to the running containerd of `c` (a crash); waits (≤ 20 s) until it is gone. Returns
/// its pid.
pub fn crash(c: &Containerd) -> u32 {
    let pid = containerd_pid(c).expect("containerd is running");
    super::signal(pid, libc::SIGKILL);
    let gone = super::eventually(Duration::from_secs(20), || (!procs::alive(pid)).then_some(()));
    assert!(gone.is_some(), "containerd {pid} still alive 20 s after SIGKILL");
    pid
}

/// A containerd this test started on the config of `c`; stopped (after its tasks are removed) when
/// dropped.
pub struct Restarted<'a> {
    c: &'a Containerd,
    child: Child,
}

impl<'a> Restarted<'a> {
    pub fn start(c: &'a Containerd) -> Restarted<'a> {
        Restarted::start_with_config(c, &config_path(c))
    }

    /// `start`, on another config file (e.g. debug logging, another ttrpc address).
    pub fn start_with_config(c: &'a Containerd, config: &Path) -> Restarted<'a> {
        let child = spawn_containerd(Path::new(CONTAINERD), config, &c.dir, shim_dir());
        let mut r = Restarted { c, child };
        wait_containerd_ready(
            &mut r.child,
            Path::new("ctr"),
            &c.address,
            &c.dir,
            Duration::from_secs(30),
        );
        r
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ctr_quiet(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("ctr");
        cmd.args(["--address", &self.c.address, "-n", &self.c.namespace])
            .args(args);
        super::run_bounded(cmd, Duration::from_secs(15))
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

impl Drop for Restarted<'_> {
    fn drop(&mut self) {
        // Never panics: this also runs while a failed test unwinds.
        if let Ok(None) = self.child.try_wait() {
            for id in self
                .ctr_quiet(&["tasks", "ls", "-q"])
                .unwrap_or_default()
                .split_whitespace()
            {
                let _ = self.ctr_quiet(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
                let _ = self.ctr_quiet(&["tasks", "rm", "-f", id]);
            }
            for id in self
                .ctr_quiet(&["containers", "ls", "-q"])
                .unwrap_or_default()
                .split_whitespace()
            {
                let _ = self.ctr_quiet(&["containers", "rm", id]);
            }
            if !term_then_kill(&mut self.child, Duration::from_secs(10)) {
                eprintln!("restarted containerd ignored SIGTERM; killed it");
            }
        }
        let _ = self.child.wait();
    }
}
