//! `binary://` log URIs: a logging binary started by the shim that reads the container's stdout and
//! stderr itself (fd 3 and fd 4) and signals on fd 5 that it is ready, as containerd's Go shim does.
//! `binary` is ready at EOF on fd 5; `binary-v2` must write one byte first.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::reaper::{self, Spawned};

const READY_TIMEOUT_MS: u16 = 30_000;
const STOP_TIMEOUT: Duration = Duration::from_secs(12);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryUri {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub v2: bool,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `binary:///path?k=v&flag` (or `binary-v2://`); None for other schemes. The query becomes
/// the logger's arguments `k v flag`, in order.
pub fn parse(uri: &str) -> Option<Result<BinaryUri>> {
    let (scheme, rest) = uri.split_once("://")?;
    let v2 = match scheme {
        "binary" => false,
        "binary-v2" => true,
        _ => return None,
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = percent_decode(path);
    if !path.starts_with('/') {
        return Some(Err(Error::InvalidArgument(format!(
            "log uri {uri:?}: the logging binary needs an absolute path"
        ))));
    }
    let mut args = Vec::new();
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        args.push(percent_decode(k));
        if !v.is_empty() {
            args.push(percent_decode(v));
        }
    }
    Some(Ok(BinaryUri {
        path: PathBuf::from(path),
        args,
        v2,
    }))
}

/// A running logging binary.
pub struct Logger {
    sp: Spawned,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

impl Logger {
    /// Starts the logger and waits until it is ready. Returns it with the write ends of its stdout and
    /// stderr pipes, which the container gets.
    pub fn start(b: &BinaryUri, container_id: &str, namespace: &str) -> Result<(Logger, OwnedFd, OwnedFd)> {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (ready_r, ready_w) = pipe()?;
        let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
        let mut cmd = Command::new(&b.path);
        cmd.args(&b.args)
            .env("CONTAINER_ID", container_id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the hook runs in the forked child of a multithreaded process; it only makes
        // async-signal-safe calls (fcntl, dup2) and allocates nothing, not even on error.
        unsafe {
            cmd.pre_exec(move || {
                // Lift the fds out of 3..=5 first, so placing one cannot clobber another.
                let mut high = [0; 3];
                for (h, fd) in high.iter_mut().zip(fds) {
                    *h = nix::fcntl::fcntl(fd, nix::fcntl::F_DUPFD_CLOEXEC(10))?;
                }
                for (to, h) in (3..).zip(high) {
                    nix::unistd::dup2(h, to)?;
                }
                Ok(())
            });
        }
        let sp = reaper::spawn(&mut cmd)
            .map_err(|e| Error::InvalidArgument(format!("starting the logging binary {}: {e}", b.path.display())))?;
        drop(cmd);
        drop((out_r, err_r, ready_w));
        let logger = Logger { sp };
        if let Err(e) = wait_ready(&ready_r, b.v2) {
            logger.stop();
            return Err(Error::Other(format!("logging binary {}: {e}", b.path.display())));
        }
        Ok((logger, out_w, err_w))
    }

    /// SIGTERM, and SIGKILL if it has not exited after 12 s.
    pub fn stop(&self) {
        let pid = nix::unistd::Pid::from_raw(self.sp.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        if self.sp.wait_timeout(STOP_TIMEOUT).is_none() {
            log::warn!("logging binary {pid} ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
            self.sp.wait();
        }
    }
}

fn wait_ready(ready: &OwnedFd, v2: bool) -> std::result::Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(ready), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(READY_TIMEOUT_MS)) {
        Ok(0) => return Err(format!("not ready after {READY_TIMEOUT_MS} ms")),
        Ok(_) => {}
        Err(e) => return Err(format!("waiting for it: {e}")),
    }
    let mut byte = [0u8; 1];
    let n = nix::unistd::read(ready.as_raw_fd(), &mut byte).map_err(|e| format!("reading its ready pipe: {e}"))?;
    match (v2, n) {
        (false, _) => Ok(()),
        (true, 1) => Ok(()),
        (true, _) => Err("exited or closed its ready pipe without signalling ready (binary-v2)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let b = parse("binary:///usr/bin/logger?id=a%20b&debug").unwrap().unwrap();
        assert_eq!(
            b,
            BinaryUri {
                path: "/usr/bin/logger".into(),
                args: vec!["id".into(), "a b".into(), "debug".into()],
                v2: false
            }
        );
        assert!(parse("binary-v2:///l").unwrap().unwrap().v2);
        assert!(parse("file:///x").is_none());
        assert!(parse("/plain/fifo").is_none());
        assert!(matches!(
            parse("binary://relative"),
            Some(Err(Error::InvalidArgument(_)))
        ));
    }
}
