//! Task events, forwarded to containerd over ttrpc (`Events.Forward` on `TTRPC_ADDRESS`) from one
//! ordered queue by one thread. A failed forward is retried (reconnecting) before the next event is
//! sent, so retries never reorder events.
//!
//! No event is lost while the shim lives: while containerd cannot be reached (restarting, stopped,
//! upgraded) an event is retried with backoff for as long as it takes, and the events behind it
//! wait, in order, in a bounded queue ([`QUEUE_MAX`]; a publisher waits when it is full, and says
//! so in the log). A containerd that takes the request but does not answer (SIGSTOPped, overloaded)
//! is waited for on the same connection ([`ANSWER_PATIENCE`]) rather than sent the event again:
//! every resend may be a duplicate, as the first request may have been processed. Only an event
//! that containerd answers with an error is given up after [`ATTEMPTS`] tries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;

use crate::frame;
use crate::protos::shim::event::Envelope;
use crate::protos::shim::events::ForwardRequest;
use std::os::unix::net::UnixStream;
use ttrpc::proto::{Codec, Request, Response};

/// How long one write, or one wait for the answer, may take before it is logged (writes: retried).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer is waited for on a connection that containerd keeps open before the event is
/// sent again on a new one.
const ANSWER_PATIENCE: Duration = Duration::from_secs(60);
/// Tries of an event that containerd refuses (answers with an error status).
const ATTEMPTS: u32 = 5;
/// The longest pause between two tries while containerd cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Events waiting for containerd; a publisher waits when there are this many.
pub const QUEUE_MAX: usize = 8192;
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

/// Why a forward failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardError {
    /// containerd could not be reached or did not answer: retried for as long as it takes.
    Unreachable(String),
    /// containerd answered with an error, or there is no containerd to send to: retried
    /// [`ATTEMPTS`] times, then dropped.
    Refused(String),
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::Unreachable(m) | ForwardError::Refused(m) => f.write_str(m),
        }
    }
}

/// Where envelopes go: containerd, or a test's recorder.
pub trait Sink: Send + 'static {
    fn forward(&mut self, env: &Envelope) -> Result<(), ForwardError>;
    /// Nothing to send for a while: release what is not needed until the next event.
    fn idle(&mut self) {}
}

pub struct Publisher {
    /// Unbounded in type, bounded by `queue`: a bounded channel allocates (and touches) all its
    /// slots up front, 192 KiB of every idle shim's memory for 8,192 events that are never there.
    tx: Sender<Item>,
    namespace: String,
    queue: Arc<Queue>,
}

/// The events waiting (published, not yet forwarded or given up), and the room a publisher waits for.
#[derive(Default)]
struct Queue {
    len: AtomicUsize,
    room: Condvar,
    lock: Mutex<()>,
}

impl Queue {
    fn taken(&self) {
        if self.len.fetch_sub(1, Ordering::AcqRel) >= QUEUE_MAX {
            let _g = crate::lock::lock(&self.lock);
            self.room.notify_all();
        }
    }
}

impl Publisher {
    pub fn new(namespace: &str, sink: impl Sink) -> Publisher {
        Publisher::with_idle(namespace, sink, IDLE_DISCONNECT)
    }

    /// As `new`, with how long the sink may stay idle before it is told so.
    pub fn with_idle(namespace: &str, sink: impl Sink, idle: Duration) -> Publisher {
        Publisher::with(namespace, sink, idle, MAX_BACKOFF)
    }

    fn with(namespace: &str, sink: impl Sink, idle: Duration, max_backoff: Duration) -> Publisher {
        let (tx, rx) = channel();
        let queue = Arc::new(Queue::default());
        let q = queue.clone();
        std::thread::Builder::new()
            .name("events".into())
            .stack_size(128 * 1024)
            .spawn(move || forward_loop(rx, sink, idle, max_backoff, &q))
            .expect("spawning the events thread");
        Publisher {
            tx,
            namespace: namespace.to_string(),
            queue,
        }
    }

    /// Events waiting to be forwarded.
    pub fn queued(&self) -> usize {
        self.queue.len.load(Ordering::Relaxed)
    }

    /// Queues an event; events are delivered in the order of these calls. Waits while the queue
    /// is full.
    pub fn publish<M: Named>(&self, topic: &str, event: &M) {
        self.queue_event(topic, event, true)
    }

    /// As [`Publisher::publish`], but never waits: for the event loop's thread (OOM events), which
    /// must not block, or nothing else is served until containerd comes back. Such events may go
    /// past [`QUEUE_MAX`]; they come at the rate the kernel OOM-kills, one per wake-up per container.
    pub fn publish_nowait<M: Named>(&self, topic: &str, event: &M) {
        self.queue_event(topic, event, false)
    }

    fn queue_event<M: Named>(&self, topic: &str, event: &M, wait: bool) {
        let mut env = Envelope::new();
        env.timestamp = Some(timestamp(SystemTime::now())).into();
        env.namespace = self.namespace.clone();
        env.topic = topic.to_string();
        env.event = Some(to_any(event)).into();
        log::debug!("event {topic}");
        if wait && self.queue.len.load(Ordering::Acquire) >= QUEUE_MAX {
            log::warn!("{QUEUE_MAX} events wait for containerd: waiting to queue {topic}");
            let mut g = crate::lock::lock(&self.queue.lock);
            while self.queue.len.load(Ordering::Acquire) >= QUEUE_MAX {
                g = self.queue.room.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        }
        self.queue.len.fetch_add(1, Ordering::AcqRel);
        let _ = self.tx.send(Item::Event(Box::new(env)));
    }

    /// Waits until everything queued so far was forwarded (or given up on), at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = sync_channel(1);
        if self.tx.send(Item::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }
}

fn forward_loop(rx: Receiver<Item>, mut sink: impl Sink, idle: Duration, max_backoff: Duration, queue: &Queue) {
    loop {
        let item = match rx.recv_timeout(idle) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                // Nothing to send for a while: the connection is given back (containerd holds a
                // goroutine and an fd for it).
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
                deliver(&mut sink, &env, max_backoff, &queue.len);
                queue.taken();
            }
        }
    }
}

/// Forwards one event: for as long as containerd is unreachable, [`ATTEMPTS`] times if it refuses.
fn deliver(sink: &mut impl Sink, env: &Envelope, max_backoff: Duration, queued: &AtomicUsize) {
    let started = Instant::now();
    let mut refusals = 0;
    let mut backoff = Duration::from_millis(100);
    let mut tries: u64 = 0;
    loop {
        tries += 1;
        match sink.forward(env) {
            Ok(()) => {
                if tries > 1 {
                    log::info!(
                        "event {} delivered after {tries} tries ({:.1?}); {} more queued",
                        env.topic,
                        started.elapsed(),
                        queued.load(Ordering::Relaxed).saturating_sub(1)
                    );
                }
                return;
            }
            Err(ForwardError::Refused(e)) => {
                refusals += 1;
                if refusals >= ATTEMPTS {
                    log::error!("dropping event {} after {refusals} refusals: {e}", env.topic);
                    return;
                }
                log::warn!("forwarding event {} (refused {refusals} times): {e}", env.topic);
            }
            Err(ForwardError::Unreachable(e)) => {
                // Said once, then every ~30 s while it lasts.
                if tries == 1 || tries % 15 == 0 {
                    log::warn!(
                        "containerd unreachable for {:.0?}, {} events waiting, retrying {}: {e}",
                        started.elapsed(),
                        queued.load(Ordering::Relaxed),
                        env.topic
                    );
                }
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// containerd's ttrpc Events service over one blocking connection, opened with the first event and
/// reopened after a failure. Not ttrpc's sync client: that one starts two threads per connection
/// and polls its socket every 10 ms while connected (100 wake-ups a second per shim, for 2 s after
/// every burst of events). A Forward is one request and one answer, so the events thread writes the
/// frame and reads the answer itself; an open idle connection costs nothing.
pub struct Containerd {
    path: String,
    /// The connection and the next stream id on it (client streams are odd).
    conn: Option<(UnixStream, u32)>,
}

const EVENTS_SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";

impl Containerd {
    pub fn new(ttrpc_address: &str) -> Containerd {
        Containerd {
            path: ttrpc_address.trim_start_matches("unix://").to_string(),
            conn: None,
        }
    }

    /// One request, one answer on the current connection (made if there is none).
    fn call(&mut self, body: &[u8]) -> std::io::Result<Response> {
        if self.conn.is_none() {
            let c = UnixStream::connect(&self.path)?;
            c.set_read_timeout(Some(FORWARD_TIMEOUT))?;
            c.set_write_timeout(Some(FORWARD_TIMEOUT))?;
            self.conn = Some((c, 1));
        }
        let (conn, next) = self.conn.as_mut().expect("connected above");
        let stream_id = *next;
        *next += 2;
        let r = exchange(conn, stream_id, body);
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

fn exchange(mut conn: &UnixStream, stream_id: u32, body: &[u8]) -> std::io::Result<Response> {
    use std::io::{Error, ErrorKind};
    frame::write(&mut conn, stream_id, frame::TYPE_REQUEST, 0, body)?;
    loop {
        let mut hdr = [0u8; frame::HEADER_LENGTH];
        read_patiently(conn, &mut hdr)?;
        let h = frame::Header::decode(&hdr);
        let payload = frame::read_payload(&mut conn, &h)?;
        // Anything but our answer (nothing else is expected) is skipped.
        if h.stream_id == stream_id && h.type_ == frame::TYPE_RESPONSE {
            return <Response as Codec>::decode(&payload)
                .map_err(|e| Error::new(ErrorKind::InvalidData, format!("undecodable answer: {e:?}")));
        }
    }
}

impl Sink for Containerd {
    fn idle(&mut self) {
        self.conn = None;
    }

    fn forward(&mut self, env: &Envelope) -> Result<(), ForwardError> {
        if self.path.is_empty() {
            return Err(ForwardError::Refused(
                "TTRPC_ADDRESS is not set: no way to reach containerd".into(),
            ));
        }
        let mut req = ForwardRequest::new();
        req.envelope = Some(env.clone()).into();
        let request = Request {
            service: EVENTS_SERVICE.into(),
            method: "Forward".into(),
            payload: protobuf::Message::write_to_bytes(&req).map_err(|e| ForwardError::Refused(e.to_string()))?,
            timeout_nano: FORWARD_TIMEOUT.as_nanos() as i64,
            ..Default::default()
        };
        let body = request
            .encode()
            .map_err(|e| ForwardError::Refused(format!("encoding: {e:?}")))?;
        let reused = self.conn.is_some();
        let answer = match self.call(&body) {
            // A kept connection that a containerd restart closed: try a new one at once.
            Err(e) if reused && stale(&e) => self.call(&body),
            r => r,
        };
        let answer = answer.map_err(|e| ForwardError::Unreachable(format!("forwarding to {}: {e}", self.path)))?;
        match answer.status.as_ref() {
            Some(st) if st.code() != ttrpc::Code::OK => Err(ForwardError::Refused(format!(
                "containerd answered {:?}: {}",
                st.code(),
                st.message()
            ))),
            _ => Ok(()),
        }
    }
}

/// Reads a whole answer header. Before its first byte, a read timeout only means containerd has not
/// answered yet: the request is in its hands, so it is waited for (up to [`ANSWER_PATIENCE`]) rather
/// than sent again.
fn read_patiently(mut conn: &UnixStream, buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::{ErrorKind, Read};
    let started = Instant::now();
    let mut got = 0;
    while got < buf.len() {
        match conn.read(&mut buf[got..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e)
                if got == 0
                    && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                    && started.elapsed() < ANSWER_PATIENCE =>
            {
                log::warn!(
                    "containerd has not answered an event for {:.0?}; still waiting",
                    started.elapsed()
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Errors that mean the connection was closed before our request reached anyone.
fn stale(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), BrokenPipe | ConnectionReset | UnexpectedEof | NotConnected)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::protos::events::task::{TaskCreate, TaskExit, TaskStart};
    use std::sync::{Arc, Mutex};

    /// Records topics; fails the first `fail` forwards to exercise the retry path.
    pub struct Recorder {
        pub seen: Arc<Mutex<Vec<String>>>,
        pub fail: u32,
    }

    impl Sink for Recorder {
        fn idle(&mut self) {
            self.seen.lock().unwrap().push("idle".into());
        }

        fn forward(&mut self, env: &Envelope) -> Result<(), ForwardError> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err(ForwardError::Unreachable("broken".into()));
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

    /// (connection number, service, method, topic) of each request.
    type Seen = Arc<Mutex<Vec<(usize, String, String, String)>>>;

    /// A stand-in for containerd's Events service: answers each Forward with `answer(n)` (n counts
    /// requests from 0) and closes the connection after request `close_after` on it, if given.
    fn fake_containerd(answer: fn(usize) -> Response, close_after: Option<usize>) -> (String, Seen) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "rr-events-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            for (conn_no, c) in listener.incoming().enumerate() {
                let mut c = c.unwrap();
                let mut on_conn = 0;
                while let Ok((mh, body)) = frame::read(&mut c) {
                    let req = <Request as Codec>::decode(&body).unwrap();
                    let fwd = <ForwardRequest as protobuf::Message>::parse_from_bytes(&req.payload).unwrap();
                    log.lock()
                        .unwrap()
                        .push((conn_no, req.service, req.method, fwd.envelope.topic.clone()));
                    let res = answer(n).encode().unwrap();
                    frame::write(&mut c, mh.stream_id, frame::TYPE_RESPONSE, 0, &res).unwrap();
                    n += 1;
                    on_conn += 1;
                    if Some(on_conn) == close_after {
                        break;
                    }
                }
            }
        });
        (path.to_string_lossy().into_owned(), seen)
    }

    fn envelope(topic: &str) -> Envelope {
        let mut env = Envelope::new();
        env.topic = topic.into();
        env
    }

    #[test]
    fn forward_is_one_request_on_a_kept_connection() {
        let (path, seen) = fake_containerd(|_| Response::default(), None);
        let mut c = Containerd::new(&format!("unix://{path}"));
        c.forward(&envelope("/tasks/create")).unwrap();
        c.forward(&envelope("/tasks/start")).unwrap();
        let seen = seen.lock().unwrap().clone();
        let _ = std::fs::remove_file(&path);
        let events = "containerd.services.events.ttrpc.v1.Events".to_string();
        assert_eq!(
            seen,
            vec![
                (0, events.clone(), "Forward".into(), "/tasks/create".into()),
                (0, events, "Forward".into(), "/tasks/start".into()),
            ]
        );
    }

    #[test]
    fn a_connection_closed_by_containerd_is_replaced_without_an_error() {
        // As after a containerd restart: the kept connection is dead by the next event.
        let (path, seen) = fake_containerd(|_| Response::default(), Some(1));
        let mut c = Containerd::new(&path);
        c.forward(&envelope("/tasks/create")).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        c.forward(&envelope("/tasks/start")).unwrap();
        let conns: Vec<usize> = seen.lock().unwrap().iter().map(|s| s.0).collect();
        let _ = std::fs::remove_file(&path);
        assert_eq!(conns, vec![0, 1]);
    }

    #[test]
    fn an_error_status_from_containerd_is_an_error() {
        let (path, _) = fake_containerd(
            |_| Response {
                status: Some(ttrpc::get_status(ttrpc::Code::INVALID_ARGUMENT, "bad envelope")).into(),
                ..Default::default()
            },
            None,
        );
        let e = Containerd::new(&path).forward(&envelope("/tasks/exit")).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(
            matches!(&e, ForwardError::Refused(m) if m.contains("bad envelope")),
            "{e}"
        );
    }

    /// Fails every forward with `unreachable` for the first `down` of them, then `refused` ones.
    struct Flaky {
        down: u32,
        refuse: bool,
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for Flaky {
        fn forward(&mut self, env: &Envelope) -> Result<(), ForwardError> {
            if self.down > 0 {
                self.down -= 1;
                return Err(ForwardError::Unreachable("connection refused".into()));
            }
            if self.refuse && env.topic == "/tasks/oom" {
                return Err(ForwardError::Refused("bad".into()));
            }
            self.seen.lock().unwrap().push(env.topic.clone());
            Ok(())
        }
    }

    #[test]
    fn an_unreachable_containerd_loses_nothing_and_a_refused_event_is_dropped() {
        // 40 tries is far more than the old code's 5 attempts (it dropped the event).
        let seen = Arc::new(Mutex::new(Vec::new()));
        let p = Publisher::with(
            "ns",
            Flaky {
                down: 40,
                refuse: true,
                seen: seen.clone(),
            },
            IDLE_DISCONNECT,
            Duration::from_millis(1),
        );
        for topic in ["/tasks/exit", "/tasks/oom", "/tasks/delete"] {
            p.publish(topic, &TaskExit::new());
        }
        assert!(p.flush(Duration::from_secs(30)));
        assert_eq!(*seen.lock().unwrap(), vec!["/tasks/exit", "/tasks/delete"]);
        assert_eq!(p.queued(), 0);
    }

    #[test]
    fn a_containerd_that_does_not_answer_yet_is_waited_for_not_sent_the_event_again() {
        // A containerd that takes 7 s to answer (SIGSTOPped): more than FORWARD_TIMEOUT.
        let path = std::env::temp_dir().join(format!("rr-events-slow-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = requests.clone();
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let mut c = c.unwrap();
                let r = r.clone();
                std::thread::spawn(move || loop {
                    let Ok((mh, _)) = frame::read(&mut c) else {
                        return;
                    };
                    r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(FORWARD_TIMEOUT + Duration::from_secs(2));
                    let res = Response::default().encode().unwrap();
                    let _ = frame::write(&mut c, mh.stream_id, frame::TYPE_RESPONSE, 0, &res);
                });
            }
        });
        let mut c = Containerd::new(path.to_str().unwrap());
        c.forward(&envelope("/tasks/exit")).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1, "sent once");
    }

    /// Holds the first forward until released; counts every event.
    struct Held {
        release: std::sync::mpsc::Receiver<()>,
        held: bool,
        seen: Arc<AtomicUsize>,
    }

    impl Sink for Held {
        fn forward(&mut self, _: &Envelope) -> Result<(), ForwardError> {
            if !self.held {
                self.held = true;
                let _ = self.release.recv();
            }
            self.seen.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_makes_the_publisher_wait_and_loses_nothing() {
        let (release, rx) = std::sync::mpsc::channel();
        let seen = Arc::new(AtomicUsize::new(0));
        let p = Arc::new(Publisher::new(
            "ns",
            Held {
                release: rx,
                held: false,
                seen: seen.clone(),
            },
        ));
        for _ in 0..QUEUE_MAX {
            p.publish("/tasks/exit", &TaskExit::new());
        }
        let q = p.clone();
        let extra = std::thread::spawn(move || q.publish("/tasks/exit", &TaskExit::new()));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!extra.is_finished(), "the queue is full: the publisher waits");
        // The event loop's publisher does not wait, and its event is kept.
        let q = p.clone();
        let from_loop = std::thread::spawn(move || q.publish_nowait("/tasks/oom", &TaskExit::new()));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !from_loop.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "publish_nowait waited on a full queue"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        release.send(()).unwrap();
        extra.join().unwrap();
        assert!(p.flush(Duration::from_secs(30)));
        assert_eq!(seen.load(Ordering::SeqCst), QUEUE_MAX + 2);
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
