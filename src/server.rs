//! The ttrpc server: frames in, generated method handlers, frames out.
//!
//! Ours rather than ttrpc-rust's sync `Server`, which this shim used first and which
//! - could lose its last worker thread: with a pool of one, a worker that took a request while
//!   another was leaving saw a count of one, asked for no replacement, and the connection then
//!   queued requests forever (containerd saw the task as UNKNOWN, seen in the 1,000-lifecycle run);
//! - dropped a connection without an answer when a payload did not decode, and answered unknown
//!   methods INVALID_ARGUMENT where containerd's ttrpc answers UNIMPLEMENTED;
//! - kept 6 threads per connection.
//!
//! Here each connection has a reader thread and a writer thread, and requests run on a pool of
//! worker threads that grows whenever no worker is idle (a Wait blocks for the task's lifetime and
//! must hold nothing else up) and shrinks back after a few idle seconds: a burst of requests reuses
//! threads instead of starting one each (which cost a tenth of the shim's CPU per container), an
//! idle shim keeps none. Every request gets exactly one answer, whatever it carries.
//!
//! The wire format is containerd's ttrpc: a 10-byte header (length, stream id, type, flags;
//! big-endian) and a protobuf `Request` or `Response`.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use ttrpc::proto::{
    Codec, MessageHeader, Request, Response, MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX, MESSAGE_TYPE_REQUEST,
    MESSAGE_TYPE_RESPONSE,
};
use ttrpc::{Code, MethodHandler, TtrpcContext};

pub type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

type Outbox = Sender<(MessageHeader, Vec<u8>)>;

/// Stack of a worker thread: handlers decode a message and run runc; 256 KiB is plenty, and only
/// the pages touched become resident.
const REQUEST_STACK: usize = 256 << 10;
const CONN_STACK: usize = 64 << 10;

/// How long an idle worker waits for a request before it ends.
const WORKER_IDLE: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    cv: Condvar,
}

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Job>,
    /// Waiting workers not yet woken for a job. Waiting workers = idle + woken.
    idle: usize,
    /// Wake-ups sent and not yet taken by a waiting worker.
    woken: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

impl Pool {
    /// Runs `job` on an idle worker, or on a new one when none is idle.
    fn submit(&'static self, job: Job) -> std::io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.queue.push_back(job);
        if st.idle > 0 {
            st.idle -= 1;
            st.woken += 1;
            self.cv.notify_one();
            return Ok(());
        }
        let spawned = thread::Builder::new()
            .name("rpc".into())
            .stack_size(REQUEST_STACK)
            .spawn(move || self.work());
        if spawned.is_err() {
            st.queue.pop_back();
        }
        spawned.map(drop)
    }

    fn work(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = st.queue.pop_front() {
                drop(st);
                job();
                st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.idle += 1;
            loop {
                let (g, t) = self.cv.wait_timeout(st, WORKER_IDLE).unwrap_or_else(|e| e.into_inner());
                st = g;
                // Any waiter may take a wake-up; the job may be gone to a worker that just finished
                // one, and then this worker simply waits again.
                if st.woken > 0 {
                    st.woken -= 1;
                    break;
                }
                if t.timed_out() {
                    st.idle -= 1;
                    return;
                }
            }
        }
    }
}

/// Serves `methods` on `listener` from a background thread. Connections from another user are
/// refused (SO_PEERCRED), as the Go shim's UnixSocketRequireSameUser does.
pub fn serve(listener: UnixListener, methods: Methods) -> std::io::Result<()> {
    let methods = Arc::new(methods);
    thread::Builder::new()
        .name("accept".into())
        .stack_size(CONN_STACK)
        .spawn(move || accept_loop(&listener, &methods))?;
    Ok(())
}

fn accept_loop(listener: &UnixListener, methods: &Arc<Methods>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => continue,
            Err(e) => {
                // Out of fds or memory: the error repeats until something is freed, so don't spin.
                log::warn!("ttrpc: accept: {e}; retrying in {backoff:?}");
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        if let Err(why) = same_user(&conn) {
            log::warn!("ttrpc: refusing a connection: {why}");
            continue;
        }
        let m = methods.clone();
        if let Err(e) = thread::Builder::new()
            .name("conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || serve_conn(conn, &m))
        {
            log::warn!("ttrpc: no thread for a new connection: {e}");
        }
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

/// Reads requests until the peer closes; the writer thread outlives it until the last answer of a
/// request still running has been written.
fn serve_conn(conn: UnixStream, methods: &Arc<Methods>) {
    let conn = Arc::new(conn);
    let (out, rx) = channel::<(MessageHeader, Vec<u8>)>();
    let w = conn.clone();
    let writer = thread::Builder::new()
        .name("conn-write".into())
        .stack_size(CONN_STACK)
        .spawn(move || {
            for (mh, payload) in rx {
                let mut frame: Vec<u8> = mh.into();
                frame.extend_from_slice(&payload);
                if let Err(e) = (&*w).write_all(&frame) {
                    log::debug!("ttrpc: writing a response: {e}");
                    // The reader sees EOF and stops taking requests; later answers are dropped.
                    let _ = w.shutdown(std::net::Shutdown::Both);
                    break;
                }
            }
        });
    if let Err(e) = writer {
        log::warn!("ttrpc: no writer thread for a connection: {e}");
        return;
    }
    // Dropped when the connection ends, which tells handlers watching `cancel_rx`.
    let (_cancel, cancel_rx) = crossbeam_channel::unbounded::<()>();
    let conn_ctx = Arc::new(ttrpc::ConnectionContext::default());
    loop {
        let (mh, payload) = match read_frame(&conn) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(FrameError::Io(e)) => {
                if e.kind() != ErrorKind::UnexpectedEof {
                    log::debug!("ttrpc: reading a request: {e}");
                }
                break;
            }
            Err(FrameError::TooLong(mh)) => {
                reply_status(
                    &out,
                    mh.stream_id,
                    Code::RESOURCE_EXHAUSTED,
                    format!(
                        "message length {} exceeds maximum message size of {MESSAGE_LENGTH_MAX}",
                        mh.length
                    ),
                );
                continue;
            }
        };
        // Other frame types are for streams, which no Task method uses: ignored, as ttrpc does.
        if mh.type_ != MESSAGE_TYPE_REQUEST {
            continue;
        }
        if mh.stream_id % 2 != 1 {
            reply_status(
                &out,
                mh.stream_id,
                Code::INVALID_ARGUMENT,
                "stream id must be odd for client initiated streams".into(),
            );
            continue;
        }
        let req = match <Request as Codec>::decode(&payload) {
            Ok(r) => r,
            Err(e) => {
                reply_status(
                    &out,
                    mh.stream_id,
                    Code::INVALID_ARGUMENT,
                    format!("decoding the ttrpc request: {e}"),
                );
                continue;
            }
        };
        let path = format!("/{}/{}", req.service, req.method);
        if !methods.contains_key(&path) {
            let prefix = format!("/{}/", req.service);
            let what = if methods.keys().any(|k| k.starts_with(&prefix)) {
                "no such method"
            } else {
                "no such service"
            };
            reply_status(&out, mh.stream_id, Code::UNIMPLEMENTED, format!("{path}: {what}"));
            continue;
        }
        let ctx = TtrpcContext {
            fd: conn.as_raw_fd(),
            cancel_rx: cancel_rx.clone(),
            mh,
            res_tx: out.clone(),
            metadata: ttrpc::context::from_pb(&req.metadata),
            timeout_nano: req.timeout_nano,
            conn_ctx: conn_ctx.clone(),
        };
        let (m, o) = (methods.clone(), out.clone());
        if let Err(e) = pool().submit(Box::new(move || handle(&m, &path, ctx, req, &o))) {
            reply_status(
                &out,
                mh.stream_id,
                Code::RESOURCE_EXHAUSTED,
                format!("no thread for the request: {e}"),
            );
        }
    }
}

fn handle(methods: &Methods, path: &str, ctx: TtrpcContext, req: Request, out: &Outbox) {
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
        reply_status(out, stream_id, code, msg);
    }
}

fn reply_status(out: &Outbox, stream_id: u32, code: Code, message: String) {
    let res = Response {
        status: Some(ttrpc::get_status(code, message)).into(),
        ..Default::default()
    };
    match res.encode() {
        Ok(buf) => {
            let mh = MessageHeader {
                length: buf.len() as u32,
                stream_id,
                type_: MESSAGE_TYPE_RESPONSE,
                flags: 0,
            };
            // Fails only when the connection is already gone.
            let _ = out.send((mh, buf));
        }
        Err(e) => log::warn!("ttrpc: encoding an error response: {e:?}"),
    }
}

enum FrameError {
    Io(std::io::Error),
    /// Over the size limit; the payload was read and dropped.
    TooLong(MessageHeader),
}

/// One frame; `None` at a clean end of the connection (between frames).
fn read_frame(mut conn: &UnixStream) -> Result<Option<(MessageHeader, Vec<u8>)>, FrameError> {
    let mut hdr = [0u8; MESSAGE_HEADER_LENGTH];
    let mut got = 0;
    while got < hdr.len() {
        match conn.read(&mut hdr[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Io(ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let mh = MessageHeader::from(&hdr);
    if mh.length as usize > MESSAGE_LENGTH_MAX {
        // Skip the payload so the next frame is read from its start, as containerd's ttrpc does.
        let skipped = std::io::copy(&mut conn.take(mh.length as u64), &mut std::io::sink()).map_err(FrameError::Io)?;
        if skipped < mh.length as u64 {
            return Err(FrameError::Io(ErrorKind::UnexpectedEof.into()));
        }
        return Err(FrameError::TooLong(mh));
    }
    let mut payload = vec![0u8; mh.length as usize];
    conn.read_exact(&mut payload).map_err(FrameError::Io)?;
    Ok(Some((mh, payload)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protos::shim::shim::{ConnectRequest, ConnectResponse};

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
        serve(l, m).unwrap();
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
        let mh = MessageHeader {
            length: payload.len() as u32,
            stream_id,
            type_,
            flags: 0,
        };
        let mut f: Vec<u8> = mh.into();
        f.extend_from_slice(payload);
        c.write_all(&f).unwrap();
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
        let mut hdr = [0u8; MESSAGE_HEADER_LENGTH];
        c.read_exact(&mut hdr).unwrap();
        let mh = MessageHeader::from(&hdr);
        assert_eq!(mh.type_, MESSAGE_TYPE_RESPONSE);
        let mut p = vec![0u8; mh.length as usize];
        c.read_exact(&mut p).unwrap();
        (mh.stream_id, <Response as Codec>::decode(&p).unwrap())
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
            MESSAGE_TYPE_REQUEST,
            &request("t.T", "Connect", vec![0x0a, 0x05, b'c']),
        );
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (1, Code::INVALID_ARGUMENT), "{:?}", r.status.message);
        // Bytes that are no Request at all.
        send(&mut c, 3, MESSAGE_TYPE_REQUEST, &[0xff, 0xff, 0xff]);
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (3, Code::INVALID_ARGUMENT));
        send(&mut c, 5, MESSAGE_TYPE_REQUEST, &request("t.T", "Nope", vec![]));
        let (id, r) = recv(&mut c);
        assert_eq!(
            (id, code(&r), r.status.message.as_str()),
            (5, Code::UNIMPLEMENTED, "/t.T/Nope: no such method")
        );
        send(&mut c, 7, MESSAGE_TYPE_REQUEST, &request("x.Y", "Connect", vec![]));
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
            MESSAGE_TYPE_REQUEST,
            &request("t.T", "Connect", odd.encode().unwrap()),
        );
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (15, Code::INTERNAL));
        send(
            &mut c,
            8,
            MESSAGE_TYPE_REQUEST,
            &request("t.T", "Connect", good.clone()),
        );
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (8, Code::INVALID_ARGUMENT));
        // Over the size limit: skipped and refused, and the next frame still parses.
        let big = vec![0u8; MESSAGE_LENGTH_MAX + 1];
        send(&mut c, 9, MESSAGE_TYPE_REQUEST, &big);
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (9, Code::RESOURCE_EXHAUSTED));
        // Data frames are ignored; then a good request is answered on the same connection.
        send(&mut c, 11, 3, b"data");
        send(&mut c, 13, MESSAGE_TYPE_REQUEST, &request("t.T", "Connect", good));
        let (id, r) = recv(&mut c);
        assert_eq!((id, code(&r)), (13, Code::OK));
        let rep = <ConnectResponse as Codec>::decode(&r.payload).unwrap();
        assert_eq!(rep.shim_pid, 42);
    }

    #[test]
    fn the_pool_never_leaves_a_job_waiting_behind_a_blocked_one() {
        // Jobs that block until released (like Waits) and quick ones, submitted interleaved: every
        // quick one must run while the blocked ones still block.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<usize>();
        for i in 0..200 {
            if i % 10 == 0 {
                let r = release_rx.clone();
                pool()
                    .submit(Box::new(move || {
                        let _ = r.lock().unwrap().recv();
                    }))
                    .unwrap();
            } else {
                let d = done_tx.clone();
                pool().submit(Box::new(move || d.send(i).unwrap())).unwrap();
            }
        }
        for _ in 0..180 {
            done_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a quick job starved");
        }
        for _ in 0..20 {
            release_tx.send(()).unwrap();
        }
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
                MESSAGE_TYPE_REQUEST,
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
}
