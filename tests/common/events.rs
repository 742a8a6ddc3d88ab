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

/// `ctr events` in the background; `peek` shows what it printed so far, `stop` ends it and returns all.
pub struct Events {
    child: std::process::Child,
    seen: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Events {
    pub fn start(c: &Containerd) -> Events {
        let mut child = c.spawn_ctr(&["events"]);
        let out = child.stdout.take().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = seen.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        Events {
            child,
            seen,
            reader: Some(reader),
        }
    }

    /// The complete lines printed so far.
    pub fn peek(&self) -> String {
        self.seen.lock().unwrap().clone()
    }

    pub fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.peek()
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
    loop {
        let ls = c.ctr_ok(&["task", "ls"]);
        if ls.lines().any(|l| l.starts_with(id) && l.contains(status)) {
            break;
        }
        assert!(Instant::now() < deadline, "task {id} never became {status}:\n{ls}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
