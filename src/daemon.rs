//! Daemon mode: the long-running shim that serves ttrpc to containerd.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::mpsc::channel;
use std::time::Duration;

use crate::bootstrap::LISTENER_FD;
use crate::cli::Flags;
use crate::error::{Context, Result};
use crate::events::{Containerd, Publisher};
use crate::protos::shim::shim_ttrpc::create_task;
use crate::service::{Msg, Service};
use crate::stdio::relay::Relay;

/// Points stderr (and so the logger and any panic message) at the bundle's `log` fifo.
fn open_log() {
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("log")
    else {
        return;
    };
    unsafe { libc::dup2(f.as_raw_fd(), 2) };
}

use std::os::unix::fs::OpenOptionsExt;

/// containerd 2.x speaks `containerd.task.v3.Task` to shims that serve it: the messages are the same as
/// v2's, only the service name differs.
fn task_v3(
    v2: HashMap<String, Box<dyn ttrpc::MethodHandler + Send + Sync>>,
) -> HashMap<String, Box<dyn ttrpc::MethodHandler + Send + Sync>> {
    v2.into_iter()
        .map(|(path, h)| {
            (
                path.replacen("/containerd.task.v2.Task/", "/containerd.task.v3.Task/", 1),
                h,
            )
        })
        .collect()
}

/// Refuses connections from another user (SO_PEERCRED), as the Go shim's UnixSocketRequireSameUser.
#[derive(Debug)]
struct SameUser;

impl ttrpc::AcceptHook for SameUser {
    fn on_accept(&self, fd: std::os::fd::RawFd) -> std::result::Result<ttrpc::HookOutput, ttrpc::HookError> {
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let cred = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|e| ttrpc::HookError::Rejected(format!("reading the peer's credentials: {e}")))?;
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        if cred.uid() != uid || cred.gid() != gid {
            log::warn!(
                "refusing a connection from uid {} gid {} (pid {})",
                cred.uid(),
                cred.gid(),
                cred.pid()
            );
            return Err(ttrpc::HookError::Rejected(format!(
                "peer uid {} gid {} is not {uid}:{gid}",
                cred.uid(),
                cred.gid()
            )));
        }
        Ok(ttrpc::HookOutput {
            data: Default::default(),
            payload_transform: None,
        })
    }
}

pub fn run(flags: &Flags) -> Result<()> {
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    open_log();
    crate::logger::init(flags.debug);
    // The inherited listener must not leak into runc or the containers.
    let listener = if nix::sys::stat::fstat(LISTENER_FD).is_ok() {
        unsafe { libc::fcntl(LISTENER_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
        LISTENER_FD
    } else if !flags.socket.is_empty() {
        let l =
            std::os::unix::net::UnixListener::bind(&flags.socket).ctx(|| format!("listening on {}", flags.socket))?;
        std::os::fd::IntoRawFd::into_raw_fd(l)
    } else {
        return Err(crate::error::Error::InvalidArgument(
            "no listener: run through `start`".into(),
        ));
    };

    let (tx, rx) = channel::<Msg>();
    let on_term = tx.clone();
    let relay = Relay::start().ctx(|| "starting the io thread")?;
    // Signals are handled on the io thread: one thread fewer.
    crate::reaper::watch_signals(
        &relay,
        Box::new(move || {
            let _ = on_term.send(Msg::Shutdown);
        }),
    )
    .ctx(|| "installing signal handlers")?;
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
    let events = Publisher::new(&flags.namespace, Containerd::new(&ttrpc_address));
    let service = Service::start(&flags.namespace, events, relay, tx).ctx(|| "starting the task service")?;

    // Workers per connection: ttrpc starts one when none is idle and lets one leave when more than
    // `max` are. max 2 keeps a spare instead of starting (and ending) a thread for every request;
    // ttrpc's own defaults keep 3 to 5 idle.
    let mut server = ttrpc::Server::new()
        .add_listener(listener)
        .map_err(|e| crate::error::Error::Other(format!("ttrpc listener: {e}")))?
        .register_service(create_task(service.clone()))
        .register_service(task_v3(create_task(service.clone())))
        .set_accept_hook(SameUser)
        .set_thread_count_min(1)
        .set_thread_count_default(1)
        .set_thread_count_max(2);
    // start() insists on min < default < max; start_listen() takes the 1/1/2 pool as it is.
    server
        .start_listen()
        .map_err(|e| crate::error::Error::Other(format!("starting the ttrpc server: {e}")))?;
    log::info!(
        "shim {} serving {} in namespace {}",
        std::process::id(),
        flags.id,
        flags.namespace
    );

    service.run(rx);
    log::info!("shutting down");
    service.events().flush(Duration::from_secs(5));
    if !flags.socket.is_empty() {
        let _ = std::fs::remove_file(&flags.socket);
    }
    // Give the Shutdown reply a moment to leave before the process (and the connection) goes.
    std::thread::sleep(Duration::from_millis(10));
    std::process::exit(0)
}
