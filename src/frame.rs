//! ttrpc frames, the one codec for the server, the events client and the tests: a 10-byte header
//! (u32 payload length, u32 stream id, u8 type, u8 flags; big-endian) and the payload, at most
//! [`MAX_LENGTH`] bytes (containerd's limit). Client streams are odd.
//!
//! [`Decoder`] takes bytes as they come (non-blocking reads, partial frames); [`read`] and [`write`]
//! move one whole frame over a blocking stream. The payload (a protobuf `Request` or `Response`) is
//! the caller's business.

use std::io::{Error, ErrorKind, Read, Write};

/// Bytes of a frame header.
pub const HEADER_LENGTH: usize = 10;
/// The largest payload a peer accepts.
pub const MAX_LENGTH: usize = ttrpc::proto::MESSAGE_LENGTH_MAX;
pub const TYPE_REQUEST: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
/// Stream data, which no method of the shim or of containerd's Events uses.
pub const TYPE_DATA: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub length: u32,
    pub stream_id: u32,
    pub type_: u8,
    pub flags: u8,
}

impl Header {
    pub fn new(stream_id: u32, type_: u8, length: usize) -> Header {
        Header {
            length: length as u32,
            stream_id,
            type_,
            flags: 0,
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LENGTH] {
        let mut h = [0u8; HEADER_LENGTH];
        h[0..4].copy_from_slice(&self.length.to_be_bytes());
        h[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        h[8] = self.type_;
        h[9] = self.flags;
        h
    }

    pub fn decode(h: &[u8; HEADER_LENGTH]) -> Header {
        Header {
            length: u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
            stream_id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            type_: h[8],
            flags: h[9],
        }
    }

    /// Whether the payload is over [`MAX_LENGTH`].
    pub fn too_long(&self) -> bool {
        self.length as usize > MAX_LENGTH
    }

    /// The error text containerd's ttrpc gives for a frame over the limit.
    pub fn too_long_message(&self) -> String {
        format!(
            "message length {} exceeds maximum message size of {MAX_LENGTH}",
            self.length
        )
    }
}

impl From<&ttrpc::proto::MessageHeader> for Header {
    fn from(m: &ttrpc::proto::MessageHeader) -> Header {
        Header {
            length: m.length,
            stream_id: m.stream_id,
            type_: m.type_,
            flags: m.flags,
        }
    }
}

impl From<Header> for ttrpc::proto::MessageHeader {
    fn from(h: Header) -> ttrpc::proto::MessageHeader {
        ttrpc::proto::MessageHeader {
            length: h.length,
            stream_id: h.stream_id,
            type_: h.type_,
            flags: h.flags,
        }
    }
}

/// A whole frame: header and payload. The length is the payload's, whatever it is (tests send
/// frames over the limit on purpose).
pub fn encode(stream_id: u32, type_: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LENGTH + payload.len());
    encode_into(stream_id, type_, flags, payload, &mut out);
    out
}

/// [`encode`], appended to `out` (several frames in one write).
pub fn encode_into(stream_id: u32, type_: u8, flags: u8, payload: &[u8], out: &mut Vec<u8>) {
    let h = Header {
        length: payload.len() as u32,
        stream_id,
        type_,
        flags,
    };
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(payload);
}

/// Writes one frame in one `write_all`, so concurrent writers of whole frames do not interleave.
pub fn write(w: &mut impl Write, stream_id: u32, type_: u8, flags: u8, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&encode(stream_id, type_, flags, payload))
}

/// Reads one whole frame. A header over [`MAX_LENGTH`] is `InvalidData` (its payload left unread).
pub fn read(r: &mut impl Read) -> std::io::Result<(Header, Vec<u8>)> {
    let mut h = [0u8; HEADER_LENGTH];
    r.read_exact(&mut h)?;
    let h = Header::decode(&h);
    let payload = read_payload(r, &h)?;
    Ok((h, payload))
}

/// Reads the payload of a header already read (by a caller that reads headers its own way).
pub fn read_payload(r: &mut impl Read, h: &Header) -> std::io::Result<Vec<u8>> {
    if h.too_long() {
        return Err(Error::new(ErrorKind::InvalidData, h.too_long_message()));
    }
    let mut payload = vec![0u8; h.length as usize];
    r.read_exact(&mut payload)?;
    Ok(payload)
}

/// What a [`Decoder`] keeps of its buffer between frames.
const KEEP_CAPACITY: usize = 64 << 10;

/// What [`Decoder::next_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Frame(Header, Vec<u8>),
    /// A header over [`MAX_LENGTH`]: its payload is skipped as it comes, so the next frame is read
    /// from its start (as containerd's ttrpc does); the peer is owed an error.
    TooLong(Header),
}

/// Frames out of a byte stream that arrives in pieces of any size.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`; what is before it was decoded.
    at: usize,
    /// Bytes still to skip of an over-size frame.
    skip: usize,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, or None until more bytes come.
    pub fn next_frame(&mut self) -> Option<Decoded> {
        if self.skip > 0 {
            let n = self.skip.min(self.buf.len() - self.at);
            self.skip -= n;
            self.at += n;
        }
        let rest = &self.buf[self.at..];
        if self.skip > 0 || rest.len() < HEADER_LENGTH {
            return self.wait();
        }
        let h = Header::decode(rest[..HEADER_LENGTH].try_into().expect("length checked"));
        if h.too_long() {
            self.at += HEADER_LENGTH;
            self.skip = h.length as usize;
            return Some(Decoded::TooLong(h));
        }
        let end = HEADER_LENGTH + h.length as usize;
        if rest.len() < end {
            return self.wait();
        }
        let payload = rest[HEADER_LENGTH..end].to_vec();
        self.at += end;
        Some(Decoded::Frame(h, payload))
    }

    /// Drops what was decoded, keeping only a partial frame.
    fn wait(&mut self) -> Option<Decoded> {
        self.buf.drain(..self.at);
        self.at = 0;
        // One large frame must not leave its buffer behind on an idle connection.
        if self.buf.capacity() > KEEP_CAPACITY && self.buf.len() <= KEEP_CAPACITY {
            self.buf.shrink_to(KEEP_CAPACITY);
        }
        None
    }

    /// Bytes held: a partial frame (and, between calls of `next_frame`, frames not yet taken).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Vec<u8> {
        let mut s = encode(1, TYPE_REQUEST, 0, b"hello");
        encode_into(3, TYPE_DATA, 1, b"", &mut s);
        encode_into(5, TYPE_RESPONSE, 0, &[7u8; 300], &mut s);
        s
    }

    fn expected() -> Vec<Decoded> {
        vec![
            Decoded::Frame(Header::new(1, TYPE_REQUEST, 5), b"hello".to_vec()),
            Decoded::Frame(
                Header {
                    flags: 1,
                    ..Header::new(3, TYPE_DATA, 0)
                },
                vec![],
            ),
            Decoded::Frame(Header::new(5, TYPE_RESPONSE, 300), vec![7u8; 300]),
        ]
    }

    fn drain(d: &mut Decoder, out: &mut Vec<Decoded>) {
        while let Some(f) = d.next_frame() {
            out.push(f);
        }
    }

    #[test]
    fn header_round_trips_big_endian() {
        let h = Header {
            length: 0x0102_0304,
            stream_id: 0x0506_0708,
            type_: 9,
            flags: 10,
        };
        assert_eq!(h.encode(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(Header::decode(&h.encode()), h);
        let m: ttrpc::proto::MessageHeader = h.into();
        assert_eq!(Vec::<u8>::from(m), h.encode().to_vec(), "ttrpc's own encoding");
        assert_eq!(Header::from(&m), h);
    }

    #[test]
    fn frames_split_at_every_byte_boundary_decode_the_same() {
        let s = stream();
        for cut in 0..=s.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            d.feed(&s[..cut]);
            drain(&mut d, &mut got);
            d.feed(&s[cut..]);
            drain(&mut d, &mut got);
            assert_eq!(got, expected(), "split at {cut}");
            assert_eq!(d.buffered(), 0);
        }
        // And one byte at a time.
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &s {
            d.feed(std::slice::from_ref(b));
            drain(&mut d, &mut got);
        }
        assert_eq!(got, expected());
    }

    #[test]
    fn an_oversize_header_is_refused_its_payload_skipped_and_the_next_frame_read() {
        let big = MAX_LENGTH + 1;
        let mut s = Header::new(9, TYPE_REQUEST, big).encode().to_vec();
        s.extend(std::iter::repeat(0xaa).take(big));
        s.extend(encode(11, TYPE_REQUEST, 0, b"next"));
        // In pieces that cut the skipped payload and the next header anywhere.
        for piece in [1 << 20, 4097, 10] {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for c in s.chunks(piece) {
                d.feed(c);
                drain(&mut d, &mut got);
                assert!(d.buffered() <= piece + HEADER_LENGTH, "the skipped payload is not kept");
            }
            assert_eq!(
                got,
                vec![
                    Decoded::TooLong(Header::new(9, TYPE_REQUEST, big)),
                    Decoded::Frame(Header::new(11, TYPE_REQUEST, 4), b"next".to_vec()),
                ],
                "pieces of {piece}"
            );
        }
        // A blocking read refuses it without reading (or allocating) the payload.
        let mut r = &s[..];
        let e = read(&mut r).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData);
        assert_eq!(
            e.to_string(),
            format!("message length {big} exceeds maximum message size of {MAX_LENGTH}")
        );
        assert_eq!(r.len(), s.len() - HEADER_LENGTH);
    }

    #[test]
    fn write_then_read_is_the_same_frame_and_a_short_one_is_an_error() {
        let mut buf = Vec::new();
        write(&mut buf, 7, TYPE_RESPONSE, 0, b"abc").unwrap();
        let (h, p) = read(&mut &buf[..]).unwrap();
        assert_eq!((h, p.as_slice()), (Header::new(7, TYPE_RESPONSE, 3), &b"abc"[..]));
        let e = read(&mut &buf[..buf.len() - 1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_large_frame_does_not_leave_its_buffer_behind() {
        let mut d = Decoder::new();
        d.feed(&encode(1, TYPE_REQUEST, 0, &vec![1u8; 1 << 20]));
        assert!(matches!(d.next_frame(), Some(Decoded::Frame(_, p)) if p.len() == 1 << 20));
        assert_eq!(d.next_frame(), None);
        assert!(d.buf.capacity() <= KEEP_CAPACITY, "kept {} bytes", d.buf.capacity());
    }
}
