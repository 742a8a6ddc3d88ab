//! Task events, forwarded to containerd over ttrpc (`Events.Forward` on `TTRPC_ADDRESS`) from one
//! ordered queue by one thread. A failed forward is retried (reconnecting) before the next event is
//! sent, so retries never reorder events; after the last retry the event is dropped and logged.

use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;

use crate::protos::shim::event::Envelope;
use crate::protos::shim::events::ForwardRequest;
use crate::protos::shim::events_ttrpc::EventsClient;

const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: u32 = 5;
/// How long the connection to containerd outlives the last event.
const IDLE_DISCONNECT: Duration = Duration::from_secs(2);

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// A message's proto full name, which containerd's typeurl uses as the type URL of its event types
/// (no prefix). Spelled out rather than read through protobuf reflection: building the descriptor pool
/// on first use costs milliseconds of CPU and heap in every shim.
pub trait Named: protobuf::Message {
    const TYPE_URL: &'static str;
}

macro_rules! named {
    ($($t:ty => $n:literal),* $(,)?) => {
        $(impl Named for $t { const TYPE_URL: &'static str = $n; })*
        /// Every Named type's name against reflection (tests only).
        #[cfg(test)]
        fn named_vs_reflection() -> Vec<(&'static str, String)> {
                        vec![$(($n, <$t as protobuf::MessageFull>::descriptor().full_name().to_string())),*]
        }
    };
}

named! {
    crate::protos::events::task::TaskCreate => "containerd.events.TaskCreate",
    crate::protos::events::task::TaskStart => "containerd.events.TaskStart",
    crate::protos::events::task::TaskDelete => "containerd.events.TaskDelete",
    crate::protos::events::task::TaskExit => "containerd.events.TaskExit",
    crate::protos::events::task::TaskOOM => "containerd.events.TaskOOM",
    crate::protos::events::task::TaskExecAdded => "containerd.events.TaskExecAdded",
    crate::protos::events::task::TaskExecStarted => "containerd.events.TaskExecStarted",
    crate::protos::events::task::TaskPaused => "containerd.events.TaskPaused",
    crate::protos::events::task::TaskResumed => "containerd.events.TaskResumed",
    crate::protos::shim::oci::ProcessDetails => "containerd.runc.v1.ProcessDetails",
    crate::protos::shim::oci::Options => "containerd.runc.v1.Options",
    crate::protos::cgroups_v1::metrics::Metrics => "io.containerd.cgroups.v1.Metrics",
    crate::protos::cgroups_v2::metrics::Metrics => "io.containerd.cgroups.v2.Metrics",
}

/// Packs a message as an Any with its proto full name as the type URL.
pub fn to_any<M: Named>(m: &M) -> Any {
    let mut a = Any::new();
    a.type_url = M::TYPE_URL.to_string();
    a.value = m.write_to_bytes().unwrap_or_default();
    a
}

enum Item {
    Event(Box<Envelope>),
    Flush(SyncSender<()>),
}

/// Where envelopes go: containerd, or a test's recorder.
pub trait Sink: Send + 'static {
    fn forward(&mut self, env: &Envelope) -> Result<(), String>;
    /// Nothing to send for a while: release what is not needed until the next event.
    fn idle(&mut self) {}
}

pub struct Publisher {
    tx: Mutex<Sender<Item>>,
    namespace: String,
}

impl Publisher {
    pub fn new(namespace: &str, sink: impl Sink) -> Publisher {
        Publisher::with_idle(namespace, sink, IDLE_DISCONNECT)
    }

    /// As `new`, with how long the sink may stay idle before it is told so.
    pub fn with_idle(namespace: &str, sink: impl Sink, idle: Duration) -> Publisher {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("events".into())
            .stack_size(128 * 1024)
            .spawn(move || forward_loop(rx, sink, idle))
            .expect("spawning the events thread");
        Publisher {
            tx: Mutex::new(tx),
            namespace: namespace.to_string(),
        }
    }

    /// Queues an event; events are delivered in the order of these calls.
    pub fn publish<M: Named>(&self, topic: &str, event: &M) {
        let mut env = Envelope::new();
        env.timestamp = Some(timestamp(SystemTime::now())).into();
        env.namespace = self.namespace.clone();
        env.topic = topic.to_string();
        env.event = Some(to_any(event)).into();
        log::debug!("event {topic}");
        let _ = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Item::Event(Box::new(env)));
    }

    /// Waits until everything queued so far was forwarded (or given up on), at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = sync_channel(1);
        if self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Item::Flush(tx))
            .is_err()
        {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }
}

fn forward_loop(rx: Receiver<Item>, mut sink: impl Sink, idle: Duration) {
    loop {
        let item = match rx.recv_timeout(idle) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                // ttrpc's sync client polls its socket every 10 ms while connected: an idle shim
                // must not hold it open.
                sink.idle();
                // Nothing happened for a while: what the requests allocated and freed goes back too.
                crate::memory::trim();
                match rx.recv() {
                    Ok(item) => item,
                    Err(_) => return,
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match item {
            Item::Flush(done) => {
                let _ = done.send(());
            }
            Item::Event(env) => {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match sink.forward(&env) {
                        Ok(()) => break,
                        Err(e) if attempt >= ATTEMPTS => {
                            log::error!("dropping event {} after {attempt} attempts: {e}", env.topic);
                            break;
                        }
                        Err(e) => {
                            log::warn!("forwarding event {} (attempt {attempt}): {e}", env.topic);
                            std::thread::sleep(Duration::from_millis(100 << attempt));
                        }
                    }
                }
            }
        }
    }
}

/// containerd's ttrpc Events service, connected lazily and reconnected after any failure.
pub struct Containerd {
    address: String,
    client: Option<EventsClient>,
}

impl Containerd {
    pub fn new(ttrpc_address: &str) -> Containerd {
        let address = ttrpc_address.trim_start_matches("unix://");
        Containerd {
            address: format!("unix://{address}"),
            client: None,
        }
    }
}

impl Sink for Containerd {
    fn idle(&mut self) {
        self.client = None;
    }

    fn forward(&mut self, env: &Envelope) -> Result<(), String> {
        if self.address == "unix://" {
            return Err("TTRPC_ADDRESS is not set: no way to reach containerd".into());
        }
        if self.client.is_none() {
            let c =
                ttrpc::Client::connect(&self.address).map_err(|e| format!("connecting to {}: {e}", self.address))?;
            self.client = Some(EventsClient::new(c));
        }
        let mut req = ForwardRequest::new();
        req.envelope = Some(env.clone()).into();
        let client = self.client.as_ref().expect("connected above");
        match client.forward(ttrpc::context::with_duration(FORWARD_TIMEOUT), &req) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.client = None;
                Err(e.to_string())
            }
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::protos::events::task::{TaskCreate, TaskExit, TaskStart};
    use std::sync::Arc;

    /// Records topics; fails the first `fail` forwards to exercise the retry path.
    pub struct Recorder {
        pub seen: Arc<Mutex<Vec<String>>>,
        pub fail: u32,
    }

    impl Sink for Recorder {
        fn idle(&mut self) {
            self.seen.lock().unwrap().push("idle".into());
        }

        fn forward(&mut self, env: &Envelope) -> Result<(), String> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err("broken".into());
            }
            assert_eq!(env.namespace, "ns");
            self.seen
                .lock()
                .unwrap()
                .push(format!("{} {}", env.topic, env.event.type_url));
            Ok(())
        }
    }

    #[test]
    fn events_arrive_in_order_despite_retries() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let p = Publisher::new(
            "ns",
            Recorder {
                seen: seen.clone(),
                fail: 2,
            },
        );
        p.publish("/tasks/create", &TaskCreate::new());
        p.publish("/tasks/start", &TaskStart::new());
        p.publish("/tasks/exit", &TaskExit::new());
        assert!(p.flush(Duration::from_secs(10)));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                "/tasks/create containerd.events.TaskCreate",
                "/tasks/start containerd.events.TaskStart",
                "/tasks/exit containerd.events.TaskExit",
            ]
        );
    }

    #[test]
    fn an_idle_sink_is_told_once_per_quiet_spell() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let p = Publisher::with_idle(
            "ns",
            Recorder {
                seen: seen.clone(),
                fail: 0,
            },
            Duration::from_millis(50),
        );
        p.publish("/tasks/create", &TaskCreate::new());
        std::thread::sleep(Duration::from_millis(300));
        p.publish("/tasks/start", &TaskStart::new());
        assert!(p.flush(Duration::from_secs(5)));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                "/tasks/create containerd.events.TaskCreate",
                "idle",
                "/tasks/start containerd.events.TaskStart"
            ]
        );
    }

    #[test]
    fn names_match_the_protos() {
        for (name, reflected) in named_vs_reflection() {
            assert_eq!(name, reflected);
        }
    }

    #[test]
    fn any_type_url_is_the_full_name() {
        let mut e = TaskExit::new();
        e.exit_status = 3;
        let a = to_any(&e);
        assert_eq!(a.type_url, "containerd.events.TaskExit");
        assert_eq!(a.value, vec![0x20, 3]);
    }
}
