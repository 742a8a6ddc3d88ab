//! Reading a container's output fifo directly, as a client (containerd, ctr) would: the reader can
//! go away and come back.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::procs;
use super::Containerd;

/// Reads a fifo into a buffer on a thread until EOF, an error or `stop`.
pub struct FifoReader {
    data: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FifoReader {
    pub fn open(path: &Path) -> FifoReader {
        use std::sync::atomic::Ordering;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let data = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (d, s) = (data.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !s.load(Ordering::SeqCst) {
                match f.read(&mut buf) {
                    Ok(0) => std::thread::sleep(Duration::from_millis(10)), // no writer right now
                    Ok(n) => d.lock().unwrap().extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        FifoReader {
            data,
            stop,
            thread: Some(thread),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data.lock().unwrap()).into_owned()
    }

    /// Stops reading and closes the fifo; returns everything read.
    pub fn close(mut self) -> Vec<u8> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.data.lock().unwrap())
    }
}

impl Drop for FifoReader {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The fifo ctr made for stream `stream` ("stdout", "stderr") of container `id`.
pub fn fifo_of(c: &Containerd, id: &str, stream: &str) -> PathBuf {
    procs::fifos_under(&c.dir.join("fifo"))
        .into_iter()
        .find(|p| p.file_name().and_then(|n| n.to_str()) == Some(&format!("{id}-{stream}")))
        .unwrap_or_else(|| panic!("no {stream} fifo for {id}"))
}

impl FifoReader {
    /// Bytes read so far.
    pub fn len(&self) -> usize {
        self.data.lock().unwrap().len()
    }

    /// Whether the last `n` bytes read contain `needle`.
    pub fn tail_contains(&self, n: usize, needle: &str) -> bool {
        let d = self.data.lock().unwrap();
        String::from_utf8_lossy(&d[d.len().saturating_sub(n)..]).contains(needle)
    }
}
