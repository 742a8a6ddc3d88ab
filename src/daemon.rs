//! Daemon mode: the long-running shim that serves ttrpc to containerd.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd};
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

pub fn run(flags: &Flags) -> Result<()> {
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    open_log();
    crate::logger::init(flags.debug);
    // The inherited listener must not leak into runc or the containers.
    let listener = if nix::sys::stat::fstat(LISTENER_FD).is_ok() {
        unsafe { libc::fcntl(LISTENER_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: fd 3 is the listening socket `start` passed us, and nothing else owns it.
        unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTENER_FD) }
    } else if !flags.socket.is_empty() {
        std::os::unix::net::UnixListener::bind(&flags.socket).ctx(|| format!("listening on {}", flags.socket))?
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

    let mut methods = create_task(service.clone());
    methods.extend(task_v3(create_task(service.clone())));
    crate::server::serve(listener, methods).ctx(|| "starting the ttrpc server")?;
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
