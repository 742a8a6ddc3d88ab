//! Typed wrapper of the runc (or crun) command line. Every command is spawned through the reaper and
//! waited through its broadcast. On failure the error carries runc's own message from `log.json`.

use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::reaper;
use crate::spawn::{Cmd, Io};
use crate::stdio::ChildStdio;

pub const DEFAULT_ROOT: &str = "/run/containerd/runc";

#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: String,
    /// `--root`: `<Options.root or /run/containerd/runc>/<namespace>`.
    pub root: String,
    /// `--log`: `<bundle>/log.json`.
    pub log: PathBuf,
    pub systemd_cgroup: bool,
}

#[derive(Debug)]
pub struct CreateOpts<'a> {
    pub bundle: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
}

impl Runc {
    pub fn new(binary: &str, root: &str, namespace: &str, bundle: &Path, systemd_cgroup: bool) -> Runc {
        let binary = if binary.is_empty() { "runc" } else { binary };
        let root = if root.is_empty() { DEFAULT_ROOT } else { root };
        Runc {
            binary: binary.to_string(),
            root: format!("{}/{namespace}", root.trim_end_matches('/')),
            log: crate::bundle::Bundle::new(bundle).runc_log(),
            systemd_cgroup,
        }
    }

    fn command(&self, args: &[&str]) -> Cmd {
        let mut cmd = Cmd::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json"]);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(args);
        // runc would notify systemd instead of the container's own sd_notify otherwise.
        cmd.env_remove("NOTIFY_SOCKET");
        // runc must not outlive the shim.
        cmd.pdeathsig(nix::sys::signal::Signal::SIGKILL);
        cmd
    }

    /// Runs a command, capturing its stdout (returned) and stderr (for the error).
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>> {
        let mut cmd = self.command(args);
        cmd.stdio(if stdin.is_some() { Io::Piped } else { Io::Null }, Io::Piped, Io::Piped);
        let mut sp = reaper::spawn_cmd(&mut cmd).map_err(|e| self.spawn_error(args[0], e))?;
        if let (Some(data), Some(mut w)) = (stdin, sp.child.stdin.take()) {
            use std::io::Write;
            let _ = w.write_all(data);
        }
        let (stdout, stderr) = read_both(sp.child.stdout.take(), sp.child.stderr.take());
        let status = sp.wait();
        if status != 0 {
            return Err(self.failure(args[0], status, &stderr));
        }
        Ok(stdout)
    }

    fn spawn_error(&self, verb: &str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::FailedPrecondition(format!("runtime binary {:?} not found (running {verb})", self.binary))
        } else {
            Error::Other(format!("{} {verb}: starting {:?}: {e}", self.binary, self.binary))
        }
    }

    fn failure(&self, verb: &str, status: u32, stderr: &[u8]) -> Error {
        let detail = last_log_error(&self.log)
            .or_else(|| {
                let s = String::from_utf8_lossy(stderr).trim().to_string();
                (!s.is_empty()).then_some(s)
            })
            .unwrap_or_else(|| format!("exit status {status}"));
        // runc's own message usually says "runc create failed: ..." already.
        let msg = if detail.contains(&format!("{verb} failed")) {
            detail.clone()
        } else {
            format!("{} {verb} failed: {detail}", self.binary)
        };
        // The messages runc uses for a process or container that is gone (checkKillError in Go).
        let gone = [
            "does not exist",
            "container not running",
            "process already finished",
            "no such process",
        ];
        if gone.iter().any(|g| detail.contains(g)) {
            Error::NotFound(msg)
        } else {
            Error::Other(msg)
        }
    }

    /// Runs a command that starts a process (create, exec, restore): its stdio are the process's own,
    /// so there is no output to read; errors come from `log.json`.
    fn run_with_stdio(&self, args: &[&str], stdio: ChildStdio) -> Result<()> {
        let _ = fs::remove_file(&self.log);
        let mut cmd = self.command(args);
        let io = |f: Option<std::os::fd::OwnedFd>| f.map(Io::Fd).unwrap_or(Io::Null);
        cmd.stdio(io(stdio.stdin), io(stdio.stdout), io(stdio.stderr));
        // Spawning closes our copies of the process's stdio.
        let sp = reaper::spawn_cmd(&mut cmd).map_err(|e| self.spawn_error(args[0], e))?;
        let status = sp.wait();
        if status != 0 {
            return Err(self.failure(args[0], status, b""));
        }
        Ok(())
    }

    /// `runc create`: the container's stdio are given as the child's fds 0, 1, 2.
    pub fn create(&self, id: &str, o: &CreateOpts, stdio: ChildStdio) -> Result<()> {
        let mut args: Vec<&str> = vec!["create", "--bundle"];
        let bundle = o.bundle.to_string_lossy();
        let pid_file = o.pid_file.to_string_lossy();
        args.push(&bundle);
        args.extend(["--pid-file", &pid_file]);
        let console;
        if let Some(c) = o.console_socket {
            console = c.to_string_lossy();
            args.extend(["--console-socket", &console]);
        }
        if o.no_pivot {
            args.push("--no-pivot");
        }
        if o.no_new_keyring {
            args.push("--no-new-keyring");
        }
        args.push(id);
        self.run_with_stdio(&args, stdio)
    }

    /// `runc exec --detach`: the process spec is read from `process` (a JSON file).
    pub fn exec(
        &self,
        id: &str,
        process: &Path,
        pid_file: &Path,
        console: Option<&Path>,
        stdio: ChildStdio,
    ) -> Result<()> {
        let process = process.to_string_lossy();
        let pid_file = pid_file.to_string_lossy();
        let console = console.map(|c| c.to_string_lossy());
        let mut args = vec!["exec", "--process", &process, "--detach", "--pid-file", &pid_file];
        if let Some(c) = &console {
            args.extend(["--console-socket", c]);
        }
        args.push(id);
        self.run_with_stdio(&args, stdio)
    }

    /// `runc ps --format json`: the pids in the container.
    pub fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let out = self.run(&["ps", "--format", "json", id], None)?;
        serde_json::from_slice::<Option<Vec<u32>>>(&out)
            .map(Option::unwrap_or_default)
            .map_err(|e| {
                Error::Other(format!(
                    "{} ps: parsing {:?}: {e}",
                    self.binary,
                    String::from_utf8_lossy(&out)
                ))
            })
    }

    /// `runc checkpoint`: the process keeps running unless `o.exit`.
    pub fn checkpoint(&self, id: &str, o: &crate::options::CheckpointOpts, image: &Path, work: &Path) -> Result<()> {
        let args = checkpoint_args(id, o, image, work);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args, None).map(drop)
    }

    /// `runc restore --detach`: brings a checkpointed container back, with `stdio` as its IO.
    pub fn restore(&self, id: &str, o: &RestoreOpts, stdio: ChildStdio) -> Result<()> {
        let args = restore_args(id, o);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run_with_stdio(&args, stdio)
    }

    /// `runc update --resources=-`: the LinuxResources JSON on stdin.
    pub fn update(&self, id: &str, resources: &[u8]) -> Result<()> {
        self.run(&["update", "--resources=-", id], Some(resources)).map(drop)
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.run(&["pause", id], None).map(drop)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.run(&["resume", id], None).map(drop)
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.run(&["start", id], None).map(drop)
    }

    pub fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, &sig]);
        self.run(&args, None).map(drop)
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        self.run(&args, None).map(drop)
    }
}

pub struct RestoreOpts<'a> {
    pub bundle: &'a Path,
    pub pid_file: &'a Path,
    pub image: &'a Path,
    pub work: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot: bool,
}

fn checkpoint_args(id: &str, o: &crate::options::CheckpointOpts, image: &Path, work: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec!["checkpoint".into()];
    if !o.exit {
        a.push("--leave-running".into());
    }
    a.extend([
        "--image-path".into(),
        image.to_string_lossy().into(),
        "--work-path".into(),
        work.to_string_lossy().into(),
    ]);
    if !o.parent_path.is_empty() {
        a.extend(["--parent-path".into(), o.parent_path.clone()]);
    }
    for (on, flag) in [
        (o.open_tcp, "--tcp-established"),
        (o.external_unix_sockets, "--ext-unix-sk"),
        (o.terminal, "--shell-job"),
        (o.file_locks, "--file-locks"),
    ] {
        if on {
            a.push(flag.into());
        }
    }
    for ns in &o.empty_namespaces {
        a.extend(["--empty-ns".into(), ns.clone()]);
    }
    if !o.cgroups_mode.is_empty() {
        a.extend(["--manage-cgroups-mode".into(), o.cgroups_mode.clone()]);
    }
    a.push(id.into());
    a
}

fn restore_args(id: &str, o: &RestoreOpts) -> Vec<String> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut a: Vec<String> = vec!["restore".into(), "--detach".into(), "--no-subreaper".into()];
    a.extend(["--pid-file".into(), s(o.pid_file), "--bundle".into(), s(o.bundle)]);
    a.extend(["--image-path".into(), s(o.image), "--work-path".into(), s(o.work)]);
    if o.no_pivot {
        a.push("--no-pivot".into());
    }
    if let Some(c) = o.console_socket {
        a.extend(["--console-socket".into(), s(c)]);
    }
    a.push(id.into());
    a
}

/// Reads a child's stdout and stderr to EOF together (poll), so neither pipe can fill up and block it.
fn read_both(out: Option<fs::File>, err: Option<fs::File>) -> (Vec<u8>, Vec<u8>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut bufs = (Vec::new(), Vec::new());
    let mut srcs: Vec<(fs::File, bool)> = Vec::new();
    if let Some(o) = out {
        srcs.push((o, true));
    }
    if let Some(e) = err {
        srcs.push((e, false));
    }
    let mut chunk = [0u8; 4096];
    while !srcs.is_empty() {
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = srcs
                .iter()
                .map(|(f, _)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        };
        let mut i = 0;
        let mut k = 0;
        srcs.retain_mut(|(r, is_out)| {
            let keep = if ready[k] {
                match r.read(&mut chunk) {
                    Ok(0) | Err(_) => false,
                    Ok(n) => {
                        if *is_out { &mut bufs.0 } else { &mut bufs.1 }.extend_from_slice(&chunk[..n]);
                        true
                    }
                }
            } else {
                true
            };
            k += 1;
            i += 1;
            keep
        });
    }
    bufs
}

/// The last `"level":"error"` message runc wrote to its JSON log.
pub fn last_log_error(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v.get("level")?.as_str()? == "error").then(|| v.get("msg")?.as_str().map(str::to_string))?
    })
}

impl crate::runtime::Runtime for Runc {
    fn create(&self, id: &str, o: &CreateOpts, stdio: ChildStdio) -> Result<()> {
        Runc::create(self, id, o, stdio)
    }
    fn start(&self, id: &str) -> Result<()> {
        Runc::start(self, id)
    }
    fn exec(&self, id: &str, process: &Path, pid_file: &Path, console: Option<&Path>, stdio: ChildStdio) -> Result<()> {
        Runc::exec(self, id, process, pid_file, console, stdio)
    }
    fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        Runc::kill(self, id, signal, all)
    }
    fn delete(&self, id: &str, force: bool) -> Result<()> {
        Runc::delete(self, id, force)
    }
    fn pause(&self, id: &str) -> Result<()> {
        Runc::pause(self, id)
    }
    fn resume(&self, id: &str) -> Result<()> {
        Runc::resume(self, id)
    }
    fn ps(&self, id: &str) -> Result<Vec<u32>> {
        Runc::ps(self, id)
    }
    fn update(&self, id: &str, resources: &[u8]) -> Result<()> {
        Runc::update(self, id, resources)
    }
    fn checkpoint(&self, id: &str, o: &crate::options::CheckpointOpts, image: &Path, work: &Path) -> Result<()> {
        Runc::checkpoint(self, id, o, image, work)
    }
    fn restore(&self, id: &str, o: &RestoreOpts, stdio: ChildStdio) -> Result<()> {
        Runc::restore(self, id, o, stdio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_binary_defaults() {
        let r = Runc::new("", "", "default", Path::new("/b"), false);
        assert_eq!(r.binary, "runc");
        assert_eq!(r.root, "/run/containerd/runc/default");
        assert_eq!(r.log, Path::new("/b/log.json"));
        let r = Runc::new("/usr/bin/crun", "/x/", "k8s.io", Path::new("/b"), true);
        assert_eq!((r.binary.as_str(), r.root.as_str()), ("/usr/bin/crun", "/x/k8s.io"));
    }

    #[test]
    fn checkpoint_and_restore_arguments() {
        let o = crate::options::CheckpointOpts {
            open_tcp: true,
            terminal: true,
            empty_namespaces: vec!["network".into()],
            ..Default::default()
        };
        assert_eq!(
            checkpoint_args("c1", &o, Path::new("/img"), Path::new("/w")).join(" "),
            "checkpoint --leave-running --image-path /img --work-path /w --tcp-established --shell-job --empty-ns network c1"
        );
        let exit = crate::options::CheckpointOpts {
            exit: true,
            ..Default::default()
        };
        assert!(
            !checkpoint_args("c1", &exit, Path::new("/i"), Path::new("/w")).contains(&"--leave-running".to_string())
        );
        let r = RestoreOpts {
            bundle: Path::new("/b"),
            pid_file: Path::new("/b/init.pid"),
            image: Path::new("/img"),
            work: Path::new("/w"),
            console_socket: None,
            no_pivot: true,
        };
        assert_eq!(
            restore_args("c1", &r).join(" "),
            "restore --detach --no-subreaper --pid-file /b/init.pid --bundle /b --image-path /img --work-path /w --no-pivot c1"
        );
    }

    #[test]
    fn log_json_last_error() {
        let dir = std::env::temp_dir().join(format!("rr-logjson-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("log.json");
        fs::write(
            &p,
            "{\"level\":\"error\",\"msg\":\"first\"}\n{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"runc create failed: unable to load config\"}\n{\"level\":\"info\",\"msg\":\"i\"}\n",
        )
        .unwrap();
        assert_eq!(
            last_log_error(&p).as_deref(),
            Some("runc create failed: unable to load config")
        );
        assert_eq!(last_log_error(&dir.join("missing")), None);
        fs::remove_dir_all(dir).unwrap();
    }
}
