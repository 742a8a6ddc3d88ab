//! ttrpc by hand, to send what a well-behaved client never would.
//!
//! Frames are the shim's own codec (`frame`); the payloads are encoded here by hand, so that they
//! can be malformed on purpose. A request payload is the protobuf `ttrpc.Request{service=1,
//! method=2, payload=3, timeout_nano=4, metadata=5}`, a response `ttrpc.Response{status=1
//! google.rpc.Status{code=1, message=2}, payload=2}`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use containerd_shim_rustrunc_v2::frame;
pub use containerd_shim_rustrunc_v2::frame::{TYPE_REQUEST, TYPE_RESPONSE};

pub const TASK_SERVICE: &str = "containerd.task.v2.Task";

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Protobuf field `num` as length-delimited bytes.
pub fn pb_bytes(num: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(((num as u64) << 3) | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// Protobuf field `num` as a varint.
pub fn pb_varint(num: u32, v: u64, out: &mut Vec<u8>) {
    varint((num as u64) << 3, out);
    varint(v, out);
}

pub fn encode_request(service: &str, method: &str, payload: &[u8], timeout_nano: i64) -> Vec<u8> {
    let mut out = Vec::new();
    pb_bytes(1, service.as_bytes(), &mut out);
    pb_bytes(2, method.as_bytes(), &mut out);
    pb_bytes(3, payload, &mut out);
    if timeout_nano != 0 {
        pb_varint(4, timeout_nano as u64, &mut out);
    }
    out
}

fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A protobuf field's value: a varint (Ok) or length-delimited bytes (Err).
type FieldValue = Result<u64, Vec<u8>>;

/// The fields of a protobuf message: (number, value).
fn fields(b: &[u8]) -> Option<Vec<(u32, FieldValue)>> {
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let key = read_varint(b, &mut i)?;
        let (num, wt) = ((key >> 3) as u32, key & 7);
        match wt {
            0 => out.push((num, Ok(read_varint(b, &mut i)?))),
            2 => {
                let len = read_varint(b, &mut i)? as usize;
                let data = b.get(i..i.checked_add(len)?)?.to_vec();
                i += len;
                out.push((num, Err(data)));
            }
            1 => i += 8,
            5 => i += 4,
            _ => return None,
        }
    }
    Some(out)
}

/// A decoded `ttrpc.Response`: status code (0 = OK), status message, payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: u64,
    pub message: String,
    pub payload: Vec<u8>,
}

pub fn decode_response(b: &[u8]) -> Option<Response> {
    let mut r = Response {
        code: 0,
        message: String::new(),
        payload: Vec::new(),
    };
    for (num, v) in fields(b)? {
        match (num, v) {
            (1, Err(status)) => {
                for (n, sv) in fields(&status)? {
                    match (n, sv) {
                        (1, Ok(code)) => r.code = code,
                        (2, Err(msg)) => r.message = String::from_utf8_lossy(&msg).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Err(p)) => r.payload = p,
            _ => {}
        }
    }
    Some(r)
}

/// One client connection, with a read timeout so nothing here can hang a test.
pub struct Conn {
    pub stream: UnixStream,
    next_stream: u32,
}

impl Conn {
    pub fn connect(socket: &Path) -> std::io::Result<Conn> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn { stream, next_stream: 1 })
    }

    pub fn frame(&mut self, stream_id: u32, ty: u8, flags: u8, payload: &[u8]) -> std::io::Result<()> {
        frame::write(&mut self.stream, stream_id, ty, flags, payload)
    }

    pub fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one frame: (stream id, type, payload). Err on EOF, timeout or a short read.
    pub fn read_frame(&mut self) -> std::io::Result<(u32, u8, Vec<u8>)> {
        let (h, p) = frame::read(&mut self.stream)?;
        Ok((h.stream_id, h.type_, p))
    }

    /// Sends a request on a fresh stream id and waits for its response. Err(text) when the
    /// connection closed or timed out without one.
    pub fn call(&mut self, service: &str, method: &str, payload: &[u8]) -> Result<Response, String> {
        let sid = self.next_stream;
        self.next_stream += 2;
        let req = encode_request(service, method, payload, 0);
        self.frame(sid, TYPE_REQUEST, 0, &req)
            .map_err(|e| format!("writing {service}/{method}: {e}"))?;
        self.response_for(sid)
    }

    /// Sends a request on a fresh stream id without reading anything: its stream id.
    pub fn send(&mut self, service: &str, method: &str, payload: &[u8]) -> std::io::Result<u32> {
        let sid = self.next_stream;
        self.next_stream += 2;
        let req = encode_request(service, method, payload, 0);
        self.frame(sid, TYPE_REQUEST, 0, &req)?;
        Ok(sid)
    }

    /// `n` requests in one write (pipelined, nothing read): their stream ids.
    pub fn send_many(&mut self, service: &str, method: &str, payload: &[u8], n: usize) -> std::io::Result<Vec<u32>> {
        let req = encode_request(service, method, payload, 0);
        let mut buf = Vec::with_capacity(n * (frame::HEADER_LENGTH + req.len()));
        let mut sids = Vec::with_capacity(n);
        for _ in 0..n {
            let sid = self.next_stream;
            self.next_stream += 2;
            frame::encode_into(sid, TYPE_REQUEST, 0, &req, &mut buf);
            sids.push(sid);
        }
        self.stream.write_all(&buf)?;
        Ok(sids)
    }

    pub fn response_for(&mut self, sid: u32) -> Result<Response, String> {
        loop {
            let (id, ty, p) = self
                .read_frame()
                .map_err(|e| format!("no response on stream {sid}: {e}"))?;
            if id == sid && ty == TYPE_RESPONSE {
                return decode_response(&p).ok_or_else(|| format!("undecodable response {p:?}"));
            }
        }
    }

    /// Whether the server closed the connection (EOF) within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let _ = self.stream.set_read_timeout(Some(timeout));
        let mut b = [0u8; 4096];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// A message with only field 1 set to `id` (ConnectRequest, StateRequest, PidsRequest, ...).
pub fn id_payload(id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    pb_bytes(1, id.as_bytes(), &mut out);
    out
}

/// `WaitRequest{id=1, exec_id=2}`.
pub fn wait_payload(id: &str, exec_id: &str) -> Vec<u8> {
    let mut out = id_payload(id);
    if !exec_id.is_empty() {
        pb_bytes(2, exec_id.as_bytes(), &mut out);
    }
    out
}

/// The varint field `num` of a message (absent: 0, as protobuf omits zero), None if undecodable.
pub fn varint_field(b: &[u8], num: u32) -> Option<u64> {
    Some(
        fields(b)?
            .into_iter()
            .find_map(|(n, v)| (n == num).then_some(v.ok()).flatten())
            .unwrap_or(0),
    )
}
