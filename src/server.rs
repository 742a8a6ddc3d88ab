//! The ttrpc server, as a subscriber of the daemon's event loop: the listener and every connection
//! are non-blocking fds of the loop; frames are read and written by the loop thread with partial
//! frames kept per connection. A request runs either
//! - on the bounded worker pool ([`crate::pool`]), for handlers that may block on runc or a mount, or
//! - on the loop thread itself, for the **parked** methods (Wait): the handler must not block; it
//!   keeps the [`Reply`] and answers when the event comes (an exit). A parked request holds no
//!   thread, and it is dropped with its connection ([`Server::new`]'s `on_close`).
//!
//! So the daemon's threads do not follow its clients: not pending Waits, not idle connections.
//! Back-pressure: a connection whose answers are not read (or whose requests pile up on the workers)
//! stops being read at [`MAX_PENDING`] answers or [`MAX_UNWRITTEN`] bytes, and is read again when
//! they drain; other connections are served meanwhile. Every request gets exactly one answer,
//! whatever it carries; connections from another user are refused (SO_PEERCRED).
//!
//! The wire format is containerd's ttrpc ([`crate::frame`]) carrying a protobuf `Request` or
//! `Response`.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::epoll::EpollFlags;
use ttrpc::proto::{Codec, MessageHeader, Request, Response};
use ttrpc::{Code, MethodHandler, TtrpcContext};

use crate::event_loop::{EventLoop, Handle, Ops, Subscriber};
use crate::frame::{self, Decoded, Decoder};
use crate::lock::lock;

pub type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;
/// Methods answered from an event: called on the loop thread with the request and its [`Reply`];
/// they must not block.
pub type Parked = HashMap<String, Box<dyn Fn(Request, Reply) + Send + Sync>>;
/// Told (on the loop thread) that a connection is gone, with its id ([`Reply::conn`]).
pub type OnClose = Box<dyn Fn(u64) + Send + Sync>;

/// Answers owed on one connection (running on workers, or not yet written) past which it is not read.
pub const MAX_PENDING: usize = 1024;
/// Bytes of answers not yet written past which a connection is not read.
pub const MAX_UNWRITTEN: usize = 4 << 20;
/// What one readiness of one connection may read, so that one busy client does not starve others.
const READ_BUDGET: usize = 256 << 10;

const LISTENER: u64 = 0;
/// The timer that re-arms the listener after accept ran out of fds or memory.
const ACCEPT_RETRY: u64 = 0;

type Frame = (MessageHeader, Vec<u8>);

/// Connections with answers to pick up, shared between the workers and the loop.
struct Ready {
    conns: Mutex<Vec<u64>>,
    handle: OnceLock<Handle>,
}

impl Ready {
    fn notify(&self, conn: u64) {
        lock(&self.conns).push(conn);
        if let Some(h) = self.handle.get() {
            h.kick();
        }
    }
}

/// The right to answer one request, once. Dropped unanswered (a handler that lost it, a panic), it
/// answers INTERNAL, so no request is left hanging; on a connection already gone it is a no-op.
pub struct Reply {
    conn: u64,
    stream_id: u32,
    tx: Option<Sender<Frame>>,
    ready: Arc<Ready>,
}

impl Reply {
    /// The connection the request came on, to drop parked requests with it.
    pub fn conn(&self) -> u64 {
        self.conn
    }

    pub fn ok<M: protobuf::Message>(mut self, m: &M) {
        match m.write_to_bytes() {
            Ok(payload) => {
                let res = Response {
                    status: Some(ttrpc::get_status(Code::OK, String::new())).into(),
                    payload,
                    ..Default::default()
                };
                self.send(res);
            }
            Err(e) => self.err(Code::INTERNAL, format!("encoding the answer: {e}")),
        }
    }

    pub fn status(mut self, s: ttrpc::Status) {
        self.send(Response {
            status: Some(s).into(),
            ..Default::default()
        });
    }

    pub fn err(self, code: Code, message: String) {
        self.status(ttrpc::get_status(code, message));
    }

    fn send(&mut self, res: Response) {
        if let Some(tx) = self.tx.take() {
            if let Some(f) = response_frame(self.stream_id, &res) {
                if tx.send(f).is_ok() {
                    self.ready.notify(self.conn);
                }
            }
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.tx.is_some() {
            let res = Response {
                status: Some(ttrpc::get_status(Code::INTERNAL, "request dropped without an answer")).into(),
                ..Default::default()
            };
            self.send(res);
        }
    }
}

fn response_frame(stream_id: u32, res: &Response) -> Option<Frame> {
    match res.encode() {
        Ok(buf) => Some((
            frame::Header::new(stream_id, frame::TYPE_RESPONSE, buf.len()).into(),
            buf,
        )),
        Err(e) => {
            log::warn!("ttrpc: encoding a response: {e:?}");
            None
        }
    }
}

fn status_frame(stream_id: u32, code: Code, message: String) -> Option<Frame> {
    response_frame(
        stream_id,
        &Response {
            status: Some(ttrpc::get_status(code, message)).into(),
            ..Default::default()
        },
    )
}

struct Conn {
    stream: UnixStream,
    /// Where workers and parked requests put their answers.
    tx: Sender<Frame>,
    rx: Receiver<Frame>,
    /// Requests handed to the workers and not yet answered.
    running: Arc<AtomicUsize>,
    decoder: Decoder,
    wbuf: VecDeque<u8>,
    /// Lengths of the frames in `wbuf` (the first one maybe partly written).
    unwritten: VecDeque<usize>,
    interest: EpollFlags,
    /// Dropped with the connection, which tells handlers watching `cancel_rx`.
    _cancel: crossbeam_channel::Sender<()>,
    cancel_rx: crossbeam_channel::Receiver<()>,
    conn_ctx: Arc<ttrpc::ConnectionContext>,
}

impl Conn {
    fn owed(&self) -> usize {
        self.running.load(Ordering::Acquire) + self.unwritten.len()
    }

    fn backlogged(&self) -> bool {
        self.owed() >= MAX_PENDING || self.wbuf.len() >= MAX_UNWRITTEN
    }

    fn queue(&mut self, (mh, payload): Frame) {
        let hdr = frame::Header::from(&mh).encode();
        self.wbuf.extend(hdr.iter());
        self.wbuf.extend(payload.iter());
        self.unwritten.push_back(hdr.len() + payload.len());
    }
}

pub struct Server {
    listener: UnixListener,
    methods: Arc<Methods>,
    /// Methods that never block (no runc, no IO that waits): run on the loop thread itself, so
    /// they are answered at once even while every worker runs runc.
    inline: std::collections::HashSet<String>,
    parked: Parked,
    on_close: OnClose,
    conns: HashMap<u64, Conn>,
    next: u64,
    ready: Arc<Ready>,
    accept_backoff: Duration,
    /// Connections refused (another user) and answers not read (back-pressure), for the dump.
    refused: u64,
    throttled: u64,
}

impl Server {
    pub fn new(listener: UnixListener, methods: Methods, parked: Parked, on_close: OnClose) -> std::io::Result<Server> {
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener,
            methods: Arc::new(methods),
            inline: Default::default(),
            parked,
            on_close,
            conns: HashMap::new(),
            next: 1,
            ready: Arc::new(Ready {
                conns: Mutex::new(Vec::new()),
                handle: OnceLock::new(),
            }),
            accept_backoff: Duration::from_millis(5),
            refused: 0,
            throttled: 0,
        })
    }

    /// Runs these methods on the loop thread (see `inline`): each must never block.
    pub fn inline(mut self, paths: impl IntoIterator<Item = String>) -> Server {
        self.inline.extend(paths);
        self
    }

    /// Adds the server to `lp`.
    pub fn serve(self, lp: &EventLoop) {
        let ready = self.ready.clone();
        let h = lp.add(Box::new(self));
        let _ = ready.handle.set(h);
        // Answers may have been queued before the handle existed.
        ready.notify(0);
    }

    fn accept(&mut self, ops: &mut Ops) {
        loop {
            let conn = match self.listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => continue,
                Err(e) => {
                    // Out of fds or memory: the error repeats until something is freed; stop
                    // watching the listener for a while instead of spinning on it.
                    log::warn!("ttrpc: accept: {e}; retrying in {:?}", self.accept_backoff);
                    ops.delete(self.listener.as_fd());
                    ops.timer(Instant::now() + self.accept_backoff, ACCEPT_RETRY);
                    self.accept_backoff = (self.accept_backoff * 2).min(Duration::from_secs(1));
                    return;
                }
            };
            self.accept_backoff = Duration::from_millis(5);
            if let Err(why) = same_user(&conn) {
                log::warn!("ttrpc: refusing a connection: {why}");
                self.refused += 1;
                continue;
            }
            if let Err(e) = conn.set_nonblocking(true) {
                log::warn!("ttrpc: a connection: {e}");
                continue;
            }
            let id = self.next;
            self.next += 1;
            if let Err(e) = ops.add(conn.as_fd(), EpollFlags::EPOLLIN, id) {
                log::warn!("ttrpc: watching a connection: {e}");
                continue;
            }
            let (tx, rx) = channel();
            let (cancel, cancel_rx) = crossbeam_channel::unbounded();
            self.conns.insert(
                id,
                Conn {
                    stream: conn,
                    tx,
                    rx,
                    running: Arc::new(AtomicUsize::new(0)),
                    decoder: Decoder::new(),
                    wbuf: VecDeque::new(),
                    unwritten: VecDeque::new(),
                    interest: EpollFlags::EPOLLIN,
                    _cancel: cancel,
                    cancel_rx,
                    conn_ctx: Arc::new(ttrpc::ConnectionContext::default()),
                },
            );
        }
    }

    fn close(&mut self, id: u64, ops: &mut Ops) {
        if let Some(c) = self.conns.remove(&id) {
            ops.delete(c.stream.as_fd());
            drop(c);
            (self.on_close)(id);
        }
    }

    /// Reads what the connection has (within budget and back-pressure) and dispatches whole frames.
    /// False when the connection is finished.
    fn read(&mut self, id: u64) -> bool {
        let mut budget = READ_BUDGET;
        let mut buf = [0u8; 16 << 10];
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return false;
            };
            if c.backlogged() || budget == 0 {
                return true;
            }
            match (&c.stream).read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    c.decoder.feed(&buf[..n]);
                    self.frames(id);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("ttrpc: reading a request: {e}");
                    return false;
                }
            }
        }
    }

    /// Dispatches every whole frame the connection's decoder holds.
    fn frames(&mut self, id: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            match c.decoder.next_frame() {
                None => return,
                Some(Decoded::TooLong(h)) => {
                    if let Some(f) = status_frame(h.stream_id, Code::RESOURCE_EXHAUSTED, h.too_long_message()) {
                        c.queue(f);
                    }
                }
                Some(Decoded::Frame(h, payload)) => self.request(id, h.into(), payload),
            }
        }
    }

    fn request(&mut self, id: u64, mh: MessageHeader, payload: Vec<u8>) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        // Other frame types are for streams, which no Task method uses: ignored, as ttrpc does.
        if mh.type_ != frame::TYPE_REQUEST {
            return;
        }
        let refuse = |c: &mut Conn, code, msg| {
            if let Some(f) = status_frame(mh.stream_id, code, msg) {
                c.queue(f);
            }
        };
        if mh.stream_id % 2 != 1 {
            return refuse(
                c,
                Code::INVALID_ARGUMENT,
                "stream id must be odd for client initiated streams".into(),
            );
        }
        let req = match <Request as Codec>::decode(&payload) {
            Ok(r) => r,
            Err(e) => return refuse(c, Code::INVALID_ARGUMENT, format!("decoding the ttrpc request: {e}")),
        };
        let path = format!("/{}/{}", req.service, req.method);
        if let Some(f) = self.parked.get(&path) {
            let reply = Reply {
                conn: id,
                stream_id: mh.stream_id,
                tx: Some(c.tx.clone()),
                ready: self.ready.clone(),
            };
            // A panic here would take the loop down with it; the reply, dropped, answers INTERNAL.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(req, reply))).is_err() {
                log::error!("ttrpc: {path}: the handler panicked");
            }
            return;
        }
        if !self.methods.contains_key(&path) {
            let prefix = format!("/{}/", req.service);
            let what = if self.methods.keys().any(|k| k.starts_with(&prefix)) {
                "no such method"
            } else {
                "no such service"
            };
            return refuse(c, Code::UNIMPLEMENTED, format!("{path}: {what}"));
        }
        let ctx = TtrpcContext {
            fd: c.stream.as_raw_fd(),
            cancel_rx: c.cancel_rx.clone(),
            mh,
            res_tx: c.tx.clone(),
            metadata: ttrpc::context::from_pb(&req.metadata),
            timeout_nano: req.timeout_nano,
            conn_ctx: c.conn_ctx.clone(),
        };
        if self.inline.contains(&path) {
            // Answers into the connection's channel, which the caller flushes.
            return handle(&self.methods, &path, ctx, req, &c.tx);
        }
        c.running.fetch_add(1, Ordering::AcqRel);
        let (methods, running, ready, tx) = (
            self.methods.clone(),
            c.running.clone(),
            self.ready.clone(),
            c.tx.clone(),
        );
        crate::pool::pool().submit(Box::new(move || {
            handle(&methods, &path, ctx, req, &tx);
            running.fetch_sub(1, Ordering::AcqRel);
            ready.notify(id);
        }));
    }

    /// Moves the connection's answers into its write buffer and writes what the socket takes.
    /// False when the connection is finished.
    fn flush(&mut self, id: u64) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        while let Ok(f) = c.rx.try_recv() {
            c.queue(f);
        }
        while !c.wbuf.is_empty() {
            let (a, _) = c.wbuf.as_slices();
            match (&c.stream).write(a) {
                Ok(0) => return false,
                Ok(n) => {
                    c.wbuf.drain(..n);
                    let mut n = n;
                    while n > 0 {
                        let first = c.unwritten.front_mut().expect("a frame per byte");
                        let k = n.min(*first);
                        *first -= k;
                        n -= k;
                        if *first == 0 {
                            c.unwritten.pop_front();
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("ttrpc: writing a response: {e}");
                    return false;
                }
            }
        }
        true
    }

    /// Watches the connection for what it needs now: reading unless backlogged, writing while
    /// answers wait.
    fn rearm(&mut self, id: u64, ops: &mut Ops) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut want = EpollFlags::empty();
        if c.backlogged() {
            if c.interest.contains(EpollFlags::EPOLLIN) {
                self.throttled += 1;
                log::debug!(
                    "ttrpc: connection {id}: {} answers owed, not reading it for now",
                    c.owed()
                );
            }
        } else {
            want |= EpollFlags::EPOLLIN;
        }
        if !c.wbuf.is_empty() {
            want |= EpollFlags::EPOLLOUT;
        }
        if want != c.interest {
            c.interest = want;
            if let Err(e) = ops.modify(c.stream.as_fd(), want, id) {
                log::warn!("ttrpc: connection {id}: {e}");
            }
        }
    }

    /// One turn for a connection: answers out, requests in, interest updated; closed when finished.
    fn service(&mut self, id: u64, readable: bool, ops: &mut Ops) {
        let mut alive = self.flush(id);
        if alive && readable {
            alive = self.read(id);
            // Errors for bad frames were queued by the read.
            alive = alive && self.flush(id);
        }
        if alive {
            self.rearm(id, ops);
        } else {
            self.close(id, ops);
        }
    }
}

impl Subscriber for Server {
    fn name(&self) -> &'static str {
        "ttrpc"
    }

    fn init(&mut self, ops: &mut Ops) {
        if let Err(e) = ops.add(self.listener.as_fd(), EpollFlags::EPOLLIN, LISTENER) {
            log::error!("ttrpc: watching the listener: {e}");
        }
    }

    fn ready(&mut self, key: u64, events: EpollFlags, ops: &mut Ops) {
        if key == LISTENER {
            return self.accept(ops);
        }
        let readable = events.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
        if events.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) && !events.contains(EpollFlags::EPOLLIN) {
            // Hung up while not being read (back-pressure): nobody is left to take the answers.
            return self.close(key, ops);
        }
        self.service(key, readable, ops);
    }

    fn kicked(&mut self, ops: &mut Ops) {
        let mut ids = std::mem::take(&mut *lock(&self.ready.conns));
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            if self.conns.contains_key(&id) {
                // A backlogged connection that drained is read again from its readiness.
                self.service(id, false, ops);
            }
        }
    }

    fn timer(&mut self, key: u64, ops: &mut Ops) {
        if key == ACCEPT_RETRY {
            if let Err(e) = ops.add(self.listener.as_fd(), EpollFlags::EPOLLIN, LISTENER) {
                log::warn!("ttrpc: watching the listener again: {e}");
            }
        }
    }

    fn dump(&self, out: &mut String) {
        let owed: usize = self.conns.values().map(Conn::owed).sum();
        let unwritten: usize = self.conns.values().map(|c| c.wbuf.len()).sum();
        let paused = self
            .conns
            .values()
            .filter(|c| !c.interest.contains(EpollFlags::EPOLLIN))
            .count();
        let (workers, idle, queued) = crate::pool::pool().figures();
        out.push_str(&format!(
            "  ttrpc: {} connections ({paused} not read for back-pressure, {} times so far), {owed} answers owed, \
             {unwritten} bytes unwritten, {} refused; workers {workers} ({idle} idle), {queued} requests queued\n",
            self.conns.len(),
            self.throttled,
            self.refused,
        ));
    }
}

fn same_user(conn: &UnixStream) -> Result<(), String> {
    let cred = nix::sys::socket::getsockopt(&conn.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("reading the peer's credentials: {e}"))?;
    let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    if cred.uid() != uid || cred.gid() != gid {
        return Err(format!(
            "peer uid {} gid {} (pid {}) is not {uid}:{gid}",
            cred.uid(),
            cred.gid(),
            cred.pid()
        ));
    }
    Ok(())
}

fn handle(methods: &Methods, path: &str, ctx: TtrpcContext, req: Request, out: &Sender<Frame>) {
    let stream_id = ctx.mh.stream_id;
    // The generated handler answers by itself; an error means it did not (the payload did not
    // decode, or the answer could not be encoded or sent). A panic is answered too, not left hanging.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| methods[path].handler(ctx, req)))
        .unwrap_or_else(|_| Err(ttrpc::Error::Others(format!("{path}: the handler panicked"))));
    if let Err(e) = result {
        let (code, msg) = match e {
            ttrpc::Error::RpcStatus(s) => (s.code.enum_value_or(Code::UNKNOWN), s.message),
            ttrpc::Error::Others(m) if m.starts_with("Unpack request") => {
                (Code::INVALID_ARGUMENT, format!("{path}: {m}"))
            }
            e => (Code::INTERNAL, format!("{path}: {e:?}")),
        };
        if let Some(f) = status_frame(stream_id, code, msg) {
            // Fails only when the connection is already gone.
            let _ = out.send(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protos::shim::shim::{ConnectRequest, ConnectResponse};
    use std::sync::mpsc::channel;

    /// Answers Connect with a fixed pid; every other method is unknown.
    struct Connect;

    impl MethodHandler for Connect {
        fn handler(&self, ctx: TtrpcContext, req: Request) -> ttrpc::Result<()> {
            let r = <ConnectRequest as Codec>::decode(&req.payload)
                .map_err(|e| ttrpc::Error::Others(format!("Unpack request error {e:?}")))?;
            assert!(r.id.starts_with('c'), "a panic is answered too");
            let rep = ConnectResponse {
                shim_pid: 42,
                ..Default::default()
            };
            let mut res = Response::new();
            res.status = Some(ttrpc::get_status(Code::OK, String::new())).into();
            res.payload = rep.encode().unwrap();
            ctx.respond(ctx.mh.stream_id, res)
        }
    }

    fn server() -> (tempdir::Dir, String) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("s");
        let l = UnixListener::bind(&path).unwrap();
        let mut m: Methods = HashMap::new();
        m.insert("/t.T/Connect".into(), Box::new(Connect));
        let lp = EventLoop::new().unwrap();
        Server::new(l, m, Parked::new(), Box::new(|_| {})).unwrap().serve(&lp);
        lp.spawn().unwrap();
        (dir, path.to_string_lossy().into_owned())
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "rr-server-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn send(c: &mut UnixStream, stream_id: u32, type_: u8, payload: &[u8]) {
        frame::write(c, stream_id, type_, 0, payload).unwrap();
    }

    fn request(service: &str, method: &str, payload: Vec<u8>) -> Vec<u8> {
        let r = Request {
            service: service.into(),
            method: method.into(),
            payload,
            ..Default::default()
        };
        r.encode().unwrap()
    }

    fn recv(c: &mut UnixStream) -> (u32, Response) {
        let (h, p) = frame::read(c).unwrap();
        assert_eq!(h.type_, frame::TYPE_RESPONSE);
        (h.stream_id, <Response as Codec>::decode(&p).unwrap())
    }

    fn code(r: &Response) -> Code {
        r.status.code.enum_value_or(Code::UNKNOWN)
    }

    #[test]
    fn every_request_gets_one_answer_and_the_connection_survives_bad_ones() {
        let (_d, path) = server();
        let mut c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let good = ConnectRequest {
            id: "c1".into(),
            ..Default::default()
        }
        .encode()
        .unwrap();
        // A payload that is not a ConnectRequest: field 1, a string of 5 bytes, has one.
        send(
            &mut c,
            1,
            frame::TYPE_REQUEST,
            &request("t.T", "Connect", vec![0x0a, 0x05, b'c']),
        );
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (1, Code::INVALID_ARGUMENT), "{:?}", r.status.message);
        // Bytes that are no Request at all.
        send(&mut c, 3, frame::TYPE_REQUEST, &[0xff, 0xff, 0xff]);
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (3, Code::INVALID_ARGUMENT));
        send(&mut c, 5, frame::TYPE_REQUEST, &request("t.T", "Nope", vec![]));
        let (id, r) = recv(&mut c);
        assert_eq!(
            (id, code(&r), r.status.message.as_str()),
            (5, Code::UNIMPLEMENTED, "/t.T/Nope: no such method")
        );
        send(&mut c, 7, frame::TYPE_REQUEST, &request("x.Y", "Connect", vec![]));
        let (id, r) = recv(&mut c);
        assert_eq!(
            (id, code(&r), r.status.message.as_str()),
            (7, Code::UNIMPLEMENTED, "/x.Y/Connect: no such service")
        );
        // A handler that panics (on this id) still answers.
        let odd = ConnectRequest {
            id: "x".into(),
            ..Default::default()
        };
        send(
            &mut c,
            15,
            frame::TYPE_REQUEST,
            &request("t.T", "Connect", odd.encode().unwrap()),
        );
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (15, Code::INTERNAL));
        send(&mut c, 8, frame::TYPE_REQUEST, &request("t.T", "Connect", good.clone()));
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (8, Code::INVALID_ARGUMENT));
        // Over the size limit: skipped and refused, and the next frame still parses.
        let big = vec![0u8; frame::MAX_LENGTH + 1];
        send(&mut c, 9, frame::TYPE_REQUEST, &big);
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (9, Code::RESOURCE_EXHAUSTED));
        // Data frames are ignored; then a good request is answered on the same connection.
        send(&mut c, 11, frame::TYPE_DATA, b"data");
        send(&mut c, 13, frame::TYPE_REQUEST, &request("t.T", "Connect", good));
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (13, Code::OK));
        let rep = <ConnectResponse as Codec>::decode(&r.payload).unwrap();
        assert_eq!(rep.shim_pid, 42);
    }

    #[test]
    fn many_requests_in_flight_are_all_answered() {
        let (_d, path) = server();
        let mut c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let good = ConnectRequest {
            id: "c2".into(),
            ..Default::default()
        }
        .encode()
        .unwrap();
        let n = 500u32;
        for i in 0..n {
            send(
                &mut c,
                2 * i + 1,
                frame::TYPE_REQUEST,
                &request("t.T", "Connect", good.clone()),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..n {
            let (id, r) = recv(&mut c);
            assert_eq!(code(&r), Code::OK);
            assert!(seen.insert(id), "stream {id} answered twice");
        }
    }

    /// A server whose `/t.T/Wait` is parked: each request's Reply is handed to the test, and closed
    /// connections are reported.
    fn parked_server() -> (
        tempdir::Dir,
        String,
        std::sync::mpsc::Receiver<Reply>,
        std::sync::mpsc::Receiver<u64>,
    ) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("s");
        let l = UnixListener::bind(&path).unwrap();
        let mut m: Methods = HashMap::new();
        m.insert("/t.T/Connect".into(), Box::new(Connect));
        let (rtx, rrx) = channel();
        let rtx = Mutex::new(rtx);
        let mut parked: Parked = HashMap::new();
        parked.insert(
            "/t.T/Wait".into(),
            Box::new(move |_req, reply| {
                let _ = lock(&rtx).send(reply);
            }),
        );
        let (ctx, crx) = channel();
        let ctx = Mutex::new(ctx);
        let lp = EventLoop::new().unwrap();
        Server::new(
            l,
            m,
            parked,
            Box::new(move |id| {
                let _ = lock(&ctx).send(id);
            }),
        )
        .unwrap()
        .serve(&lp);
        lp.spawn().unwrap();
        (dir, path.to_string_lossy().into_owned(), rrx, crx)
    }

    fn threads() -> usize {
        std::fs::read_dir("/proc/self/task").unwrap().count()
    }

    #[test]
    fn parked_requests_hold_no_thread_are_answered_later_and_go_with_their_connection() {
        let (_d, path, replies, closed) = parked_server();
        let mut c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let before = threads();
        for i in 0..500u32 {
            send(&mut c, 2 * i + 1, frame::TYPE_REQUEST, &request("t.T", "Wait", vec![]));
        }
        let mut held: Vec<Reply> = (0..500)
            .map(|_| replies.recv_timeout(Duration::from_secs(10)).expect("parked"))
            .collect();
        // Other tests in this process start threads too: a margin, far below one per request.
        assert!(
            threads() < before + 8,
            "{} threads for 500 parked requests",
            threads() - before
        );
        // Answered from "the event", in any order; other requests are served meanwhile.
        let last = held.pop().unwrap();
        let good = ConnectRequest {
            id: "c3".into(),
            ..Default::default()
        };
        send(
            &mut c,
            2001,
            frame::TYPE_REQUEST,
            &request("t.T", "Connect", good.encode().unwrap()),
        );
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (2001, Code::OK));
        last.ok(&ConnectResponse {
            shim_pid: 7,
            ..Default::default()
        });
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (999, Code::OK));
        assert_eq!(<ConnectResponse as Codec>::decode(&r.payload).unwrap().shim_pid, 7);
        // One dropped unanswered is answered INTERNAL, not left hanging.
        drop(held.pop());
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (997, Code::INTERNAL));
        // The client goes: the server says which connection, for its parked requests to be dropped.
        let conn = held[0].conn();
        drop(c);
        assert_eq!(closed.recv_timeout(Duration::from_secs(10)).unwrap(), conn);
        // Answering on a connection gone is harmless.
        held.pop().unwrap().ok(&ConnectResponse::default());
    }

    #[test]
    fn a_client_that_reads_no_answers_stops_being_read_and_others_are_served() {
        let (_d, path, replies, _closed) = parked_server();
        let mut lazy = UnixStream::connect(&path).unwrap();
        lazy.set_nonblocking(true).unwrap();
        let good = request(
            "t.T",
            "Connect",
            ConnectRequest {
                id: "c4".into(),
                ..Default::default()
            }
            .encode()
            .unwrap(),
        );
        // Write until the socket takes no more: the server stopped reading.
        let one = frame::encode(1, frame::TYPE_REQUEST, 0, &good);
        let mut sent = 0usize;
        let mut stalled_since = None;
        loop {
            match lazy.write(&one) {
                Ok(n) if n == one.len() => {
                    sent += 1;
                    stalled_since = None;
                }
                Ok(_) => panic!("partial frame: test too simple"),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // Keep trying for a while: the server may just be busy.
                    let t = *stalled_since.get_or_insert_with(Instant::now);
                    if t.elapsed() > Duration::from_secs(3) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
            assert!(sent < 1_000_000, "the server never stopped reading");
        }
        eprintln!("the server stopped reading after {sent} unanswered-but-unread requests");
        // Another client is served promptly meanwhile (parked requests too).
        let mut other = UnixStream::connect(&path).unwrap();
        other.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        send(&mut other, 1, frame::TYPE_REQUEST, &good);
        assert_eq!(code(&recv(&mut other).1), Code::OK);
        send(&mut other, 3, frame::TYPE_REQUEST, &request("t.T", "Wait", vec![]));
        replies
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .ok(&ConnectResponse::default());
        assert_eq!(recv(&mut other).0, 3);
        // The lazy client reads: everything it sent is answered, the server reading it again.
        lazy.set_nonblocking(false).unwrap();
        lazy.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for _ in 0..sent {
            assert_eq!(code(&recv(&mut lazy).1), Code::OK);
        }
    }
}
