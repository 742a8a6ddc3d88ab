//! Helpers shared by the shim's integration tests: background ctr commands and `ctr events`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::Containerd;

/// Waits for a background ctr, killing it (and failing) after `timeout`.
pub fn wait_child(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("background ctr did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ctr events` in the background; `stop` ends it and returns what it printed.
pub struct Events {
    child: std::process::Child,
    reader: Option<std::thread::JoinHandle<String>>,
}

impl Events {
    pub fn start(c: &Containerd) -> Events {
        let mut child = c.spawn_ctr(&["events"]);
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
            s
        });
        Events {
            child,
            reader: Some(reader),
        }
    }

    pub fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader
            .take()
            .map(|r| r.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Polls `ctr task ls` until task `id` shows `status`.
pub fn wait_status(c: &Containerd, id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c
        .ctr_ok(&["task", "ls"])
        .lines()
        .any(|l| l.starts_with(id) && l.contains(status))
    {
        assert!(Instant::now() < deadline, "task {id} never became {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
