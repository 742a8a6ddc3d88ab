//! Helpers shared by the shim's integration tests: background ctr commands and `ctr events`,
//! whose lines are read as `Event`s (the JSON part parsed), not by substring.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::Value;

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

/// One line of `ctr events`: `<timestamp> <namespace> <topic> <event as JSON>` (the timestamp has
/// spaces in it; the JSON is everything from the first `{`).
pub struct Event<'a> {
    /// The whole line, for messages.
    pub line: &'a str,
    pub namespace: &'a str,
    pub topic: &'a str,
    pub body: Value,
}

impl<'a> Event<'a> {
    /// None for a line that is not an event with a JSON body.
    pub fn parse(line: &'a str) -> Option<Event<'a>> {
        let brace = line.find('{')?;
        let body = serde_json::from_str(&line[brace..]).ok()?;
        let mut words = line[..brace].split_whitespace().rev();
        let topic = words.next()?;
        let namespace = words.next()?;
        Some(Event {
            line,
            namespace,
            topic,
            body,
        })
    }

    /// A string field; "" when absent (protobuf's JSON omits empty fields).
    pub fn str(&self, name: &str) -> &str {
        self.body.get(name).and_then(Value::as_str).unwrap_or("")
    }

    /// An integer field; 0 when absent (protobuf's JSON omits zeros).
    pub fn int(&self, name: &str) -> i64 {
        self.body.get(name).and_then(Value::as_i64).unwrap_or(0)
    }

    /// The container the event is about (every /tasks/ event has `container_id`).
    pub fn container(&self) -> &str {
        self.str("container_id")
    }

    /// For /tasks/exit: the exited process's id, the container's for its init, else the exec's.
    pub fn process(&self) -> &str {
        self.str("id")
    }
}

/// Every event in `ctr events` output, in order (other lines skipped).
pub fn parse(text: &str) -> Vec<Event<'_>> {
    text.lines().filter_map(Event::parse).collect()
}

/// The events about container `id`, in order.
pub fn of<'a>(text: &'a str, id: &str) -> Vec<Event<'a>> {
    parse(text).into_iter().filter(|e| e.container() == id).collect()
}

/// The topics of the /tasks/ events about container `id`, in order.
pub fn topics<'a>(text: &'a str, id: &str) -> Vec<&'a str> {
    of(text, id)
        .into_iter()
        .map(|e| e.topic)
        .filter(|t| t.starts_with("/tasks/"))
        .collect()
}

/// The integer field `name` of an event line (0 when absent, as protobuf omits it, or when the
/// line is not an event).
pub fn field(line: &str, name: &str) -> i64 {
    Event::parse(line).map_or(0, |e| e.int(name))
}
