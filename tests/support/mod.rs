//! Helpers for the robustness tests (tests/stress.rs, tests/faults.rs, tests/bad_input.rs), on top of
//! tests/common (which they do not change):
//!
//! - `fifo`: a container's output fifo read directly (a client that goes away and comes back);
//! - `procs`: figures of a process from /proc (threads, RSS, fds, children, zombies), finding shims;
//! - `restart`: stopping the harness's containerd and starting it again with the same config;
//! - `shim`: a shim daemon started by hand (`shim start` in a temp bundle), for ttrpc from the test;
//! - `ttrpc_raw`: ttrpc frames written and read by hand (unknown methods, malformed payloads).
//!
//! Each test file says `mod common; mod support;`.
#![allow(dead_code)] // each test file uses a different part

pub mod fifo;
pub mod load;
pub mod outage;
pub mod procs;
pub mod restart;
pub mod shim;
pub mod ttrpc_raw;

use std::process::Child;
use std::time::{Duration, Instant};

// The bounded command runner and its parts live in tests/common, shared by every harness.
pub use crate::common::{drain, run_bounded, wait_bounded};

/// Polls `f` every 50 ms until it returns Some, or returns None once `timeout` has passed.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `sig` to `pid` (a process this test started, directly or through containerd).
pub fn signal(pid: u32, sig: i32) {
    let sig = nix::sys::signal::Signal::try_from(sig).expect("a signal number");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// A child process killed (and reaped) when dropped: background ctr commands, script(1), ...
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
