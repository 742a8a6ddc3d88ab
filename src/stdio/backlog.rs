//! What an output stream holds while its destination does not take bytes (containerd stopped or
//! restarting, a client or logging binary not reading): the relay keeps reading the container's pipe
//! into a backlog, so the container's writes do not block, and writes the backlog out first, in
//! order, once the destination takes bytes again.
//!
//! Bounded twice: per stream (`Settings::cap`) and per shim (`Pool`, every stream of every container
//! of the shim draws from it). At the cap the stream follows its `Policy`: `Block` stops reading the
//! container's pipe (back-pressure, as without a backlog: nothing lost) and `Drop` reads and discards
//! the newest bytes, counting them. Memory only: bytes are never spilled to a file (see the README).
//!
//! Paid for only while used: a stream without a backlog has no allocation; the backlog's chunks are
//! anonymous mappings of their own (not malloc's heap, which would keep freed pages resident), so
//! every byte of them is given back to the kernel the moment the backlog drains.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;

/// What a stream does when its backlog (or the shim's) is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Stop reading the container's output: its writes block until the destination takes bytes.
    #[default]
    Block,
    /// Keep reading and discard the newest bytes, counted and logged.
    Drop,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Block => "block",
            Policy::Drop => "drop",
        })
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "block" => Ok(Policy::Block),
            "drop" => Ok(Policy::Drop),
            _ => Err(format!("output policy {s:?}: expected \"block\" or \"drop\"")),
        }
    }
}

/// A stream's cap in bytes (0: no backlog, the destination's back-pressure reaches the container at
/// once) and its policy at the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub cap: usize,
    pub policy: Policy,
}

/// 8 MiB per stream: about 80 s of a chatty service (100 KB/s) while containerd restarts.
pub const DEFAULT_STREAM_CAP: usize = 8 << 20;
/// 32 MiB per shim (a pod's containers share one shim).
pub const DEFAULT_SHIM_CAP: usize = 32 << 20;

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            cap: DEFAULT_STREAM_CAP,
            policy: Policy::Block,
        }
    }
}

/// A size: bytes, or a number with a binary suffix (`8Mi`, `512Ki`, `1Gi`; `K`/`M`/`G` and a
/// trailing `B` mean the same), as written in TOML or an annotation.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let t = t.strip_suffix(['i', 'I']).unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("size {s:?}: expected bytes or a number with Ki, Mi or Gi"))?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n && *v <= (1u64 << 40))
        .map(|v| v as usize)
        .ok_or_else(|| format!("size {s:?} is too large (at most 1Ti)"))
}

/// The shim's budget: the cap every backlog draws from, and the live backlogs (for the state dump).
pub struct Pool {
    cap: AtomicUsize,
    used: AtomicUsize,
    /// Bytes mapped for backlogs (chunks, discard buffers), for tests and the dump.
    mapped: AtomicUsize,
    /// Bytes dropped by every stream since the shim started.
    dropped: AtomicU64,
    live: Mutex<Vec<Arc<Stat>>>,
}

struct Stat {
    name: String,
    since: Instant,
    started: SystemTime,
    bytes: AtomicUsize,
    dropped: AtomicU64,
}

/// One backlog as [`Pool::backlogs`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BacklogInfo {
    /// `<namespace>/<container>[/<exec>] stdout` (or `stderr`, `tty`).
    pub stream: String,
    /// Bytes held now.
    pub bytes: usize,
    /// Bytes dropped since the backlog began (policy `drop`).
    pub dropped: u64,
    /// How long the stream has been buffering.
    pub age: Duration,
}

impl Pool {
    pub fn new(cap: usize) -> Arc<Pool> {
        Arc::new(Pool {
            cap: AtomicUsize::new(cap),
            used: AtomicUsize::new(0),
            mapped: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
        })
    }

    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// Bytes held by every backlog of the pool.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes of memory the backlogs hold mapped (0 once every backlog drained).
    pub fn mapped(&self) -> usize {
        self.mapped.load(Ordering::Relaxed)
    }

    /// Bytes dropped by every stream of the pool so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Every stream buffering now and what it holds.
    pub fn backlogs(&self) -> Vec<BacklogInfo> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.iter()
            .map(|s| BacklogInfo {
                stream: s.name.clone(),
                bytes: s.bytes.load(Ordering::Relaxed),
                dropped: s.dropped.load(Ordering::Relaxed),
                age: s.since.elapsed(),
            })
            .collect()
    }
}

/// The shim's pool (one shim process, one pool); its cap is the handler's `OutputBufferTotal`.
pub fn shim_pool() -> &'static Arc<Pool> {
    static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(DEFAULT_SHIM_CAP))
}

/// The shim's current backlogs (stream, bytes held), for the SIGUSR1 state dump.
pub fn backlogs() -> Vec<BacklogInfo> {
    shim_pool().backlogs()
}

/// How one stream buffers: given to the relay with the stream.
pub struct Buffering {
    pub name: String,
    pub settings: Settings,
    pub pool: Arc<Pool>,
}

/// Whether a stream whose destination is full should start a backlog: it buffers, and there is room
/// (or it drops at the cap, which needs a backlog to count the drops).
pub fn worth_starting(b: &Buffering) -> bool {
    let pool_room = b.pool.cap.load(Ordering::Relaxed) > b.pool.used.load(Ordering::Relaxed);
    b.settings.cap > 0 && (pool_room || b.settings.policy == Policy::Drop)
}

/// A page-aligned anonymous mapping: unmapped (all of it returned to the kernel) when dropped.
struct Chunk {
    ptr: *mut u8,
    pool: Arc<Pool>,
    /// Bytes already written out, and bytes filled.
    start: usize,
    end: usize,
}

// SAFETY: the mapping is owned by the chunk alone (no other pointer to it exists and the slices
// `bytes`/`bytes_mut` hand out borrow the chunk), so moving the chunk moves every access with it.
unsafe impl Send for Chunk {}

/// Large enough that a busy stream makes few mappings, small enough that a small backlog wastes
/// little: only touched pages are resident.
const CHUNK: usize = 256 << 10;
/// What a dropping stream reads (and discards) at a time.
const SCRATCH: usize = 64 << 10;

impl Chunk {
    fn new(pool: &Arc<Pool>) -> std::io::Result<Chunk> {
        // SAFETY: a new anonymous mapping at an address the kernel picks: no memory of ours changes.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHUNK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        pool.mapped.fetch_add(CHUNK, Ordering::Relaxed);
        Ok(Chunk {
            ptr: p.cast(),
            pool: pool.clone(),
            start: 0,
            end: 0,
        })
    }

    /// The whole mapping.
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is a readable and writable mapping of CHUNK bytes, zero-filled by the kernel
        // (so initialized), alive until the chunk drops; the slice borrows the chunk, so it cannot
        // outlive the mapping or coexist with `bytes_mut`.
        unsafe { std::slice::from_raw_parts(self.ptr, CHUNK) }
    }

    /// The whole mapping, to fill.
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; the slice borrows the chunk mutably, so it is the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, CHUNK) }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: `ptr` and CHUNK are exactly the mapping `new` made, owned by this chunk alone; no
        // slice of it is alive (they borrow the chunk).
        unsafe { libc::munmap(self.ptr.cast(), CHUNK) };
        self.pool.mapped.fetch_sub(CHUNK, Ordering::Relaxed);
    }
}

/// What a read into the backlog found.
pub enum Fill {
    /// Bytes read (into the backlog, or discarded at the cap under `Drop`).
    Read,
    /// The source is empty now.
    Empty,
    /// EOF.
    Eof,
    /// No room and the policy is `Block`: the source is left alone.
    Full,
    Err(Errno),
}

/// The bytes of one stream waiting for its destination, oldest first.
pub struct Backlog {
    chunks: VecDeque<Chunk>,
    len: usize,
    peak: usize,
    stat: Arc<Stat>,
    pool: Arc<Pool>,
    settings: Settings,
    /// Bytes moved out of the backlog to the destination.
    sent: u64,
    /// Bytes dropped in the current run of drops, and when it began (wall clock, for the log).
    dropping: Option<(u64, SystemTime, Instant)>,
    scratch: Option<Chunk>,
    /// The start was logged.
    announced: bool,
    /// Reached the cap under `Block`: takes nothing more, drains, and the stream splices again
    /// (rather than copying every byte through the backlog behind a reader that is slow for good).
    capped: bool,
}

/// How long a backlog lasts before the log says so (at info).
const ANNOUNCE: Duration = Duration::from_secs(1);

impl Backlog {
    /// A backlog for the stream `b`, listed in the pool; holds no memory until filled.
    pub fn start(b: &Buffering) -> Backlog {
        let stat = Arc::new(Stat {
            name: b.name.clone(),
            since: Instant::now(),
            started: SystemTime::now(),
            bytes: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        });
        b.pool.live.lock().unwrap_or_else(|e| e.into_inner()).push(stat.clone());
        Backlog {
            chunks: VecDeque::new(),
            len: 0,
            peak: 0,
            stat,
            pool: b.pool.clone(),
            settings: b.settings,
            sent: 0,
            dropping: None,
            scratch: None,
            announced: false,
            capped: false,
        }
    }

    /// Says in the log that the stream buffers, once it has for `ANNOUNCE` (shorter episodes, a
    /// reader busy for a moment, are only in the debug log).
    fn announce(&mut self) {
        if !self.announced && self.stat.since.elapsed() >= ANNOUNCE {
            self.announced = true;
            log::info!(
                "{}: destination not taking output since {}; buffering (up to {} bytes, then {})",
                self.stat.name,
                crate::logger::rfc3339(self.stat.started),
                self.settings.cap,
                self.settings.policy
            );
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes this backlog may still take: the stream's room and the shim's.
    fn room(&self) -> usize {
        let pool_room = self
            .pool
            .cap
            .load(Ordering::Relaxed)
            .saturating_sub(self.pool.used.load(Ordering::Relaxed));
        self.settings.cap.saturating_sub(self.len).min(pool_room)
    }

    fn grew(&mut self, n: usize) {
        self.len += n;
        self.peak = self.peak.max(self.len);
        self.pool.used.fetch_add(n, Ordering::Relaxed);
        self.stat.bytes.store(self.len, Ordering::Relaxed);
    }

    fn shrank(&mut self, n: usize) {
        self.len -= n;
        self.sent += n as u64;
        self.pool.used.fetch_sub(n, Ordering::Relaxed);
        self.stat.bytes.store(self.len, Ordering::Relaxed);
    }

    /// Appends bytes already read (copy mode's pending buffer), whatever the room: they were taken
    /// from the container already.
    pub fn push(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            if self.chunks.back().map_or(true, |c| c.end == CHUNK) {
                self.chunks.push_back(Chunk::new(&self.pool)?);
            }
            let c = self.chunks.back_mut().expect("a chunk");
            let n = data.len().min(CHUNK - c.end);
            let end = c.end;
            c.bytes_mut()[end..end + n].copy_from_slice(&data[..n]);
            c.end += n;
            data = &data[n..];
            self.grew(n);
        }
        Ok(())
    }

    /// Reads what `src` holds into the backlog, up to the room; at the cap, follows the policy.
    pub fn fill(&mut self, src: BorrowedFd<'_>) -> Fill {
        self.announce();
        let room = self.room();
        if self.capped || room == 0 {
            return match self.settings.policy {
                Policy::Block => {
                    self.capped = true;
                    Fill::Full
                }
                Policy::Drop => self.discard(src),
            };
        }
        if self.chunks.back().map_or(true, |c| c.end == CHUNK) {
            match Chunk::new(&self.pool) {
                Ok(c) => self.chunks.push_back(c),
                // Out of memory: as if full (back-pressure or drops), never a lost stream.
                Err(e) => {
                    log::warn!("{}: backlog chunk: {e}", self.stat.name);
                    return match self.settings.policy {
                        Policy::Block => Fill::Full,
                        Policy::Drop => self.discard(src),
                    };
                }
            }
        }
        let c = self.chunks.back_mut().expect("a chunk");
        let (end, want) = (c.end, room.min(CHUNK - c.end));
        match nix::unistd::read(src.as_raw_fd(), &mut c.bytes_mut()[end..end + want]) {
            Ok(0) => Fill::Eof,
            Ok(n) => {
                c.end += n;
                self.grew(n);
                self.end_drops();
                Fill::Read
            }
            Err(Errno::EAGAIN) => Fill::Empty,
            Err(e) => Fill::Err(e),
        }
    }

    /// Reads and discards (policy `Drop` at the cap): the newest bytes are the ones lost, so what
    /// the backlog holds stays one piece with the bytes before the outage.
    fn discard(&mut self, src: BorrowedFd<'_>) -> Fill {
        if self.scratch.is_none() {
            match Chunk::new(&self.pool) {
                Ok(c) => self.scratch = Some(c),
                Err(_) => return Fill::Full,
            }
        }
        let s = self.scratch.as_mut().expect("scratch");
        match nix::unistd::read(src.as_raw_fd(), &mut s.bytes_mut()[..SCRATCH]) {
            Ok(0) => Fill::Eof,
            Ok(n) => {
                let d = self
                    .dropping
                    .get_or_insert_with(|| (0, SystemTime::now(), Instant::now()));
                d.0 += n as u64;
                self.stat.dropped.fetch_add(n as u64, Ordering::Relaxed);
                self.pool.dropped.fetch_add(n as u64, Ordering::Relaxed);
                Fill::Read
            }
            Err(Errno::EAGAIN) => Fill::Empty,
            Err(e) => Fill::Err(e),
        }
    }

    /// A run of drops is over (bytes fit again, or the backlog ends): say how many and when.
    fn end_drops(&mut self) {
        if let Some((n, from, t0)) = self.dropping.take() {
            log::warn!(
                "{}: dropped {n} bytes of output between {} and {} ({:.3} s; the backlog was full)",
                self.stat.name,
                crate::logger::rfc3339(from),
                crate::logger::rfc3339(SystemTime::now()),
                t0.elapsed().as_secs_f64()
            );
        }
    }

    /// Writes the oldest bytes to `dst` until it is full or the backlog empty. Ok(bytes written);
    /// EAGAIN only when nothing could be written.
    pub fn flush(&mut self, dst: BorrowedFd<'_>) -> Result<usize, Errno> {
        let mut total = 0;
        while !self.chunks.is_empty() {
            let mut iov = [IoSlice::new(&[]); 16];
            let mut k = 0;
            for (v, c) in iov.iter_mut().zip(&self.chunks) {
                *v = IoSlice::new(&c.bytes()[c.start..c.end]);
                k += 1;
            }
            let mut n = match nix::sys::uio::writev(dst, &iov[..k]) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) if total > 0 => return Ok(total),
                Err(e) => return Err(e),
            };
            total += n;
            self.shrank(n);
            while n > 0 {
                let c = self.chunks.front_mut().expect("written bytes come from a chunk");
                let k = n.min(c.end - c.start);
                c.start += k;
                n -= k;
                // A chunk still being filled stays; one written out is unmapped now.
                if c.start == c.end && (c.end == CHUNK || self.len == 0) {
                    self.chunks.pop_front();
                }
            }
            if self.len == 0 {
                self.chunks.clear();
            }
        }
        Ok(total)
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.end_drops();
        self.pool.used.fetch_sub(self.len, Ordering::Relaxed);
        self.pool
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| !Arc::ptr_eq(s, &self.stat));
        let took = self.stat.since.elapsed().as_secs_f64();
        let dropped = self.stat.dropped.load(Ordering::Relaxed);
        let level = if self.announced || dropped > 0 || took >= ANNOUNCE.as_secs_f64() {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        if self.len == 0 {
            log::log!(
                level,
                "{}: destination took the output again after {took:.3} s (buffering since {}); stopped buffering ({} bytes sent from the backlog, at most {} held, {dropped} dropped)",
                self.stat.name,
                crate::logger::rfc3339(self.stat.started),
                self.sent,
                self.peak
            );
        } else {
            log::warn!(
                "{}: stream closed after {took:.3} s of buffering with {} bytes never delivered ({} sent, {dropped} dropped)",
                self.stat.name,
                self.len,
                self.sent
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_policies() {
        assert_eq!(parse_size("8Mi"), Ok(8 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size(" 4096 "), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "x", "-1", "1.5Mi", "2Ti", "99999999999Gi"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!("drop".parse::<Policy>(), Ok(Policy::Drop));
        assert!("newest".parse::<Policy>().is_err());
    }
}
