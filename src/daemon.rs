//! Daemon mode: the long-running shim that serves ttrpc to containerd. It wires the event loop and
//! its subscribers (the ttrpc server, the relay, signals and the reaper, OOM notifications), the
//! events thread and the worker pool; the main thread handles exits in order and shutdown.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::epoll::EpollFlags;

use crate::bootstrap::LISTENER_FD;
use crate::cli::Flags;
use crate::error::{Context, Result};
use crate::event_loop::{EventLoop, Ops, Subscriber};
use crate::events::{Containerd, Publisher};
use crate::protos::shim::shim_ttrpc::create_task;
use crate::server::{Methods, Parked, Server};
use crate::service::{Msg, Service};
use crate::stdio::relay::Relay;

/// How long a daemon that was never given a container waits before it exits (containerd died right
/// after `start`, or gave up on the task): nobody else would ever stop it.
const IDLE_EXIT: Duration = Duration::from_secs(60);
/// Overrides [`IDLE_EXIT`], in seconds (tests).
const IDLE_EXIT_ENV: &str = "RUSTRUNC_IDLE_EXIT_SECS";

/// Points stderr (and so the logger and any panic message) at the bundle's `log` fifo.
fn open_log() {
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(crate::bundle::SHIM_LOG)
    else {
        return;
    };
    let _ = nix::unistd::dup2(f.as_raw_fd(), 2);
}

use std::os::unix::fs::OpenOptionsExt;

/// containerd 2.x speaks `containerd.task.v3.Task` to shims that serve it: the messages are the same as
/// v2's, only the service name differs.
fn task_v3<T>(v2: HashMap<String, T>) -> HashMap<String, T> {
    v2.into_iter()
        .map(|(path, h)| {
            (
                path.replacen("/containerd.task.v2.Task/", "/containerd.task.v3.Task/", 1),
                h,
            )
        })
        .collect()
}

/// Exits the daemon if no container was created within its time (see [`IDLE_EXIT`]).
struct IdleExit {
    service: Arc<Service>,
    after: Duration,
}

impl Subscriber for IdleExit {
    fn name(&self) -> &'static str {
        "idle-exit"
    }

    fn init(&mut self, ops: &mut Ops) {
        ops.timer(Instant::now() + self.after, 0);
    }

    fn ready(&mut self, _: u64, _: EpollFlags, _: &mut Ops) {}

    fn timer(&mut self, _: u64, _: &mut Ops) {
        if !self.service.ever_created() && self.service.is_empty() {
            log::warn!("no container was created in {:?}: exiting", self.after);
            self.service.shutdown_now();
        }
    }
}

pub fn run(flags: &Flags) -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).ctx(|| "becoming a child subreaper")?;
    open_log();
    crate::logger::init(flags.debug);
    // The inherited listener must not leak into runc or the containers.
    let listener = if nix::sys::stat::fstat(LISTENER_FD).is_ok() {
        nix::fcntl::fcntl(LISTENER_FD, nix::fcntl::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .ctx(|| "setting close-on-exec on the listener")?;
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
    let lp = EventLoop::new().ctx(|| "creating the event loop")?;
    let relay = Relay::on(&lp);
    crate::reaper::watch_signals(
        &lp,
        Box::new(move || {
            let _ = on_term.send(Msg::Shutdown);
        }),
    )
    .ctx(|| "installing signal handlers")?;
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
    let events = Publisher::new(&flags.namespace, Containerd::new(&ttrpc_address));
    let exits = tx.clone();
    crate::reaper::set_monitor(Box::new(move |e| {
        let _ = exits.send(Msg::Exit(e));
    }));
    let service = Service::start(&flags.namespace, events, relay, tx, crate::runtime::runc())
        .ctx(|| "starting the task service")?;

    let mut methods: Methods = create_task(service.clone());
    methods.extend(task_v3(create_task(service.clone())));
    let mut parked: Parked = HashMap::new();
    let s = service.clone();
    parked.insert(
        "/containerd.task.v2.Task/Wait".into(),
        Box::new(move |req, reply| s.wait_parked(req, reply)),
    );
    let parked = {
        let s = service.clone();
        let mut v3: Parked = HashMap::new();
        v3.insert(
            "/containerd.task.v2.Task/Wait".into(),
            Box::new(move |req, reply| s.wait_parked(req, reply)),
        );
        parked.extend(task_v3(v3));
        parked
    };
    // What never blocks is answered on the loop: a task's state, its terminal, its stdin.
    let inline = ["State", "Connect", "ResizePty", "CloseIO"]
        .iter()
        .flat_map(|m| [2, 3].map(|v| format!("/containerd.task.v{v}.Task/{m}")));
    let s = service.clone();
    Server::new(
        listener,
        methods,
        parked,
        Box::new(move |conn| s.connection_closed(conn)),
    )
    .ctx(|| "starting the ttrpc server")?
    .inline(inline)
    .serve(&lp);
    let s = service.clone();
    lp.set_dump_hook(Box::new(move |out| s.dump(out)));
    let after = std::env::var(IDLE_EXIT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(IDLE_EXIT);
    lp.add(Box::new(IdleExit {
        service: service.clone(),
        after,
    }));
    lp.spawn().ctx(|| "starting the event loop")?;
    // The one worker that always exists, so control never waits for a thread that cannot be made.
    crate::pool::pool().submit(Box::new(|| {}));
    log::info!(
        "shim {} serving {} in namespace {}",
        std::process::id(),
        flags.id,
        flags.namespace
    );

    service.run(rx);
    log::info!("shutting down");
    if !flags.socket.is_empty() {
        let _ = std::fs::remove_file(&flags.socket);
    }
    if !service.events().flush(Duration::from_secs(5)) {
        log::warn!(
            "{} events not delivered to containerd at shutdown",
            service.events().queued()
        );
    }
    // Give the Shutdown reply a moment to leave before the process (and the connection) goes.
    std::thread::sleep(Duration::from_millis(10));
    std::process::exit(0)
}
