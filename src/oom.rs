//! OOM watcher: one epoll thread tells the service when the kernel OOM-kills in a container's memory
//! cgroup, the way containerd's Go shim does (`pkg/oom/v1`, `internal/oom`):
//! * v1: an eventfd registered on `memory.oom_control` through `cgroup.event_control`. The kernel signals
//!   it on each OOM, and once more when the cgroup is removed (after the rmdir).
//! * v2: inotify `IN_MODIFY` on `memory.events` and `cgroup.events`; an OOM kill is an increase of the
//!   `oom_kill` counter in `memory.events`. Under the systemd cgroup driver the container's cgroup is a
//!   transient scope that systemd removes as soon as it is empty, so after an OOM kill `memory.events`
//!   is often gone before it is read (the Go shim misses about 4 kills in 10 so). The parent's
//!   `memory.events` counts its children's kills too (hierarchical since Linux 5.2): it is watched as
//!   well, and a kill it counted after the container's last reading is the container's when the
//!   container's cgroup turns out to be gone.
//!
//! `on_oom` is called once per check that sees OOMs, however many (v1: the eventfd counter coalesces
//! notifications, v2: one call for 0 -> 3; the count is logged), as the Go shim publishes one TaskOOM.
//! [`OomWatcher::remove`] checks one last time before closing, so the service can publish the OOM event
//! before the exit event (CRI derives OOMKilled from that order, containerd#12714).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::cgroup::Cgroup;
use crate::error::{Context, Error, Result};

/// The fd watched for one container. Dropping it closes the fd, which also takes it out of the epoll set.
enum Source {
    V1 {
        efd: EventFd,
        dir: PathBuf,
    },
    V2 {
        inotify: Inotify,
        dir: PathBuf,
        last: u64,
        /// The parent's memory.events and its oom_kill as of `last` (None: no parent with one).
        parent: Option<(PathBuf, u64)>,
    },
}

/// The oom_kill counter of a `memory.events` file, if it can be read.
fn read_oom_kill(events: &Path) -> Option<u64> {
    oom_kill(&fs::read_to_string(events).ok()?)
}

/// The container's counter and its parent's, read so that they agree: a kill of the container counted
/// in one is counted in the other (the kernel bumps both at once). None when the container's file is
/// gone or unreadable; the parent's counter is then its last value.
fn read_both(events: &Path, parent: Option<&Path>) -> Option<(u64, Option<u64>)> {
    let mut child = read_oom_kill(events)?;
    for _ in 0..10 {
        let p = parent.and_then(read_oom_kill);
        let again = read_oom_kill(events)?;
        if again == child {
            return Some((child, p));
        }
        child = again;
    }
    // OOM kills in a burst: this pair may count one kill in the parent only, reported twice at worst.
    Some((child, parent.and_then(read_oom_kill)))
}

impl Source {
    fn v1(dir: &Path) -> Result<Source> {
        let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        // The kernel takes its own reference to memory.oom_control: our fd can be closed right away.
        let ctl = fs::File::open(dir.join("memory.oom_control"))
            .ctx(|| format!("opening memory.oom_control in {}", dir.display()))?;
        fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.event_control"))
            .and_then(|mut f| f.write_all(format!("{} {}", efd.as_raw_fd(), ctl.as_raw_fd()).as_bytes()))
            .ctx(|| format!("registering for OOM notifications of {}", dir.display()))?;
        Ok(Source::V1 {
            efd,
            dir: dir.to_path_buf(),
        })
    }

    fn v2(dir: &Path) -> Result<Source> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        let watch = |path: &Path| inotify.add_watch(path, AddWatchFlags::IN_MODIFY).map(drop);
        // Watch before reading the start value, so a kill in between shows up as a modification.
        let events = dir.join("memory.events");
        watch(&events).ctx(|| format!("watching {}", events.display()))?;
        // cgroup.events changes when the cgroup empties (see check).
        let _ = watch(&dir.join("cgroup.events"));
        // The parent's changes (siblings' kills included) keep its value current, so that only kills
        // after the container's last reading count for it once the container's file is gone. The root
        // cgroup has no memory.events.
        let parent = dir
            .parent()
            .map(|p| p.join("memory.events"))
            .filter(|p| watch(p).is_ok());
        let text = fs::read_to_string(&events).ctx(|| format!("reading {}", events.display()))?;
        let (last, parent_last) = read_both(&events, parent.as_deref()).unwrap_or((oom_kill(&text).unwrap_or(0), None));
        Ok(Source::V2 {
            inotify,
            dir: dir.to_path_buf(),
            last,
            parent: parent.zip(parent_last),
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Source::V1 { efd, .. } => efd.as_fd(),
            Source::V2 { inotify, .. } => inotify.as_fd(),
        }
    }

    /// Non-blocking: the OOMs seen since the last check, and whether the cgroup is gone.
    fn check(&mut self) -> (u64, bool) {
        match self {
            Source::V1 { efd, dir } => {
                let n = match efd.read() {
                    Ok(n) => n,
                    Err(Errno::EAGAIN) => 0,
                    Err(e) => {
                        log::warn!("oom: reading the eventfd of {}: {e}", dir.display());
                        return (0, true);
                    }
                };
                // The removal of the cgroup is signalled too (after the rmdir): it accounts for one count.
                let gone = !dir.join("memory.oom_control").exists();
                (n.saturating_sub(gone as u64), gone)
            }
            Source::V2 {
                inotify,
                dir,
                last,
                parent,
            } => {
                // Drained before reading: a change made while we read wakes us again (drained after, its
                // event could be lost with the change unseen).
                let ignored = drain_inotify(inotify);
                // kernfs sends no inotify event when a cgroup is removed, but the removal needs the cgroup
                // empty first, which cgroup.events announces: stop then, after this last look, as Go does.
                let empty = fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|t| t.contains("populated 0"));
                let gone = ignored || empty;
                let events = dir.join("memory.events");
                match read_both(&events, parent.as_ref().map(|(p, _)| p.as_path())) {
                    Some((n, p)) => {
                        let seen = n.saturating_sub(*last);
                        *last = n;
                        if let (Some((_, parent_last)), Some(p)) = (parent.as_mut(), p) {
                            *parent_last = p;
                        }
                        (seen, gone)
                    }
                    // Only a file being rewritten (test trees) lacks the line: the next change tells.
                    None if events.exists() => (0, gone),
                    // Gone (ENOENT, or ENODEV from a kernfs file whose cgroup was removed), likely by
                    // systemd right after the container's last process died: kills the parent counted
                    // since the last reading were the container's (or, in that short window, a
                    // sibling's: an OOM event too many is the lesser harm than one missed).
                    None => {
                        let seen = match parent {
                            Some((p, parent_last)) => read_oom_kill(p).map_or(0, |n| n.saturating_sub(*parent_last)),
                            None => 0,
                        };
                        if seen > 0 {
                            log::info!(
                                "oom: {} is gone; its parent counted {seen} OOM kill(s) since",
                                dir.display()
                            );
                        }
                        (seen, true)
                    }
                }
            }
        }
    }
}

/// Empties an inotify queue. The events only say "look again"; returns whether one was IN_IGNORED (a
/// watched file is gone).
fn drain_inotify(inotify: &Inotify) -> bool {
    let mut ignored = false;
    // EAGAIN: empty.
    while let Ok(events) = inotify.read_events() {
        if events.is_empty() {
            break;
        }
        ignored |= events.iter().any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED));
    }
    ignored
}

/// The `oom_kill` counter of a v2 `memory.events` (the trailing space keeps `oom_group_kill` out).
fn oom_kill(memory_events: &str) -> Option<u64> {
    memory_events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

struct Watch {
    id: String,
    /// None once removed or gone. Held while on_oom runs for this container, so that `remove` waits for
    /// a report in progress and no report can come after it.
    source: Mutex<Option<Source>>,
}

struct Shared {
    epoll: Epoll,
    next: AtomicU64,
    /// epoll token -> watch. Tokens are never reused, so a stale event cannot hit a newer watch.
    watches: Mutex<HashMap<u64, Arc<Watch>>>,
    on_oom: Box<dyn Fn(&str) + Send + Sync>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Checks a watch (its lock held by the caller) and reports OOMs. Closes it when asked (`close`) or
    /// when the cgroup is gone; returns whether it is closed.
    fn check(&self, w: &Watch, src: &mut Option<Source>, close: bool) -> bool {
        let Some(s) = src.as_mut() else { return true };
        let (ooms, gone) = s.check();
        if ooms > 0 {
            log::info!("oom: container {}: {ooms} OOM event(s)", w.id);
            (self.on_oom)(&w.id);
        }
        if gone {
            log::info!("oom: the memory cgroup of {} is gone, not watching it anymore", w.id);
        }
        if gone || close {
            *src = None;
        }
        src.is_none()
    }
}

/// Watches the memory cgroups of the shim's containers. The thread stops when this is dropped.
pub struct OomWatcher(Arc<Shared>);

impl OomWatcher {
    /// A watcher on an event loop of its own (tests).
    #[cfg(test)]
    pub fn start(on_oom: Box<dyn Fn(&str) + Send + Sync>) -> std::io::Result<OomWatcher> {
        OomWatcher::start_on(&crate::stdio::relay::Relay::start()?, on_oom)
    }

    /// Calls `on_oom(container_id)` on the event loop's thread when it sees OOM kills (or in `remove`);
    /// `on_oom` must not block or call back into the watcher.
    pub fn start_on(
        relay: &crate::stdio::relay::Relay,
        on_oom: Box<dyn Fn(&str) + Send + Sync>,
    ) -> std::io::Result<OomWatcher> {
        let shared = Arc::new(Shared {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            next: AtomicU64::new(1),
            watches: Mutex::new(HashMap::new()),
            on_oom,
        });
        let s = shared.clone();
        // An epoll fd is readable while one of its fds is: the relay's epoll watches ours.
        relay.watch(
            shared.epoll.0.as_raw_fd(),
            Box::new(move || {
                poll(&s, EpollTimeout::ZERO);
            }),
        );
        Ok(OomWatcher(shared))
    }

    /// Starts watching the memory cgroup of a container (right after `runc create`, so OOMs of the
    /// created-but-not-started init are caught). Replaces an earlier watch of the same id.
    pub fn add(&self, container_id: &str, cg: &Cgroup) -> Result<()> {
        let dir = cg
            .dir("memory")
            .ok_or_else(|| Error::NotFound(format!("container {container_id} has no memory cgroup")))?;
        let source = match cg {
            Cgroup::V1(_) => Source::v1(dir)?,
            Cgroup::V2(_) => Source::v2(dir)?,
        };
        self.remove(container_id);
        let token = self.0.next.fetch_add(1, Ordering::Relaxed);
        let w = Arc::new(Watch {
            id: container_id.to_string(),
            source: Mutex::new(Some(source)),
        });
        // In the map before epoll, so the thread finds the watch for an event that is already pending;
        // the watch lock keeps the thread off it until it is registered.
        let src = lock(&w.source);
        lock(&self.0.watches).insert(token, w.clone());
        let fd = src.as_ref().map(Source::fd).expect("just created");
        if let Err(e) = self.0.epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token)) {
            lock(&self.0.watches).remove(&token);
            return Err(Error::from(e).context(format!("watching the memory cgroup of {container_id}")));
        }
        Ok(())
    }

    /// Stops watching, after one last check that reports OOMs not reported yet: once this returns, every
    /// OOM of the container is reported and no further `on_oom` call is made for it. Idempotent.
    pub fn remove(&self, container_id: &str) {
        let mut removed = Vec::new();
        lock(&self.0.watches).retain(|_, w| {
            let hit = w.id == container_id;
            if hit {
                removed.push(w.clone());
            }
            !hit
        });
        // The map lock is released: the thread may be reporting for another container meanwhile.
        for w in removed {
            let mut src = lock(&w.source);
            self.0.check(&w, &mut src, true);
        }
    }

    #[cfg(test)]
    fn watching(&self) -> usize {
        lock(&self.0.watches).len()
    }
}

/// Waits up to `timeout` for notifications and handles them; false on a fatal epoll error.
fn poll(sh: &Shared, timeout: EpollTimeout) -> bool {
    let mut events = [EpollEvent::empty(); 16];
    {
        let n = match sh.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => return true,
            Err(e) => {
                log::error!("oom: epoll_wait: {e}");
                return false;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            // Cloned out, so the map lock is not held while on_oom runs.
            let Some(w) = lock(&sh.watches).get(&token).cloned() else {
                continue;
            };
            // Neither fd kind hangs up; if one ever did, polling it again would spin.
            let hup = ev.events().intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
            let mut src = lock(&w.source);
            if sh.check(&w, &mut src, hup) {
                drop(src);
                lock(&sh.watches).remove(&token);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::mpsc::{channel, Receiver};
    use std::time::{Duration, Instant};

    const QUIET: Duration = Duration::from_millis(300);
    const LONG: Duration = Duration::from_secs(10);

    type OnOom = Box<dyn Fn(&str) + Send + Sync>;

    fn recorder() -> (OnOom, Receiver<String>) {
        let (tx, rx) = channel();
        (Box::new(move |id: &str| tx.send(id.to_string()).unwrap()), rx)
    }

    fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + LONG;
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A fake v2 cgroup directory, removed on drop.
    struct FakeV2(PathBuf);

    impl FakeV2 {
        fn new(tag: &str) -> FakeV2 {
            FakeV2::new_in(
                &std::env::temp_dir(),
                &format!("rustrunc-oomtest-{}-{tag}", std::process::id()),
            )
        }

        fn new_in(parent: &Path, name: &str) -> FakeV2 {
            let dir = parent.join(name);
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
            let fake = FakeV2(dir);
            fake.set_oom_kill(0);
            fake
        }

        fn set_oom_kill(&self, n: u64) {
            let text = format!("low 0\nhigh 0\nmax 0\noom {n}\noom_kill {n}\n");
            fs::write(self.0.join("memory.events"), text).unwrap();
        }

        fn cgroup(&self) -> Cgroup {
            Cgroup::V2(self.0.clone())
        }
    }

    impl Drop for FakeV2 {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn parses_oom_kill() {
        assert_eq!(oom_kill("low 0\noom 2\noom_kill 3\noom_group_kill 9\n"), Some(3));
        assert_eq!(oom_kill("oom_group_kill 9\n"), None);
        assert_eq!(oom_kill(""), None);
    }

    #[test]
    fn v2_reports_oom_kill_increases() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<OomWatcher>();
        let fake = FakeV2::new("v2");
        fake.set_oom_kill(2); // the value at add time is the baseline, not an OOM
        let (on_oom, rx) = recorder();
        let w = OomWatcher::start(on_oom).unwrap();
        w.add("c1", &fake.cgroup()).unwrap();
        fake.set_oom_kill(2);
        assert!(rx.recv_timeout(QUIET).is_err(), "the value at add time reported");
        fake.set_oom_kill(3);
        assert_eq!(rx.recv_timeout(LONG).unwrap(), "c1");
        assert!(rx.recv_timeout(QUIET).is_err(), "one call per increase");
        fake.set_oom_kill(3);
        assert!(rx.recv_timeout(QUIET).is_err(), "unchanged counter reported");
        fake.set_oom_kill(6);
        assert_eq!(rx.recv_timeout(LONG).unwrap(), "c1");
        assert!(rx.recv_timeout(QUIET).is_err());
        w.remove("c1");
        assert_eq!(w.watching(), 0);
        fake.set_oom_kill(7);
        assert!(rx.recv_timeout(QUIET).is_err(), "reported after remove");
        w.remove("c1");
        w.remove("unknown");
    }

    /// The thread is kept busy in on_oom for "b", so only remove's final check can see a's OOM: it must
    /// be reported before remove returns, without waiting for the thread.
    #[test]
    fn v2_remove_reports_the_last_oom_first() {
        let (a, b) = (FakeV2::new("final-a"), FakeV2::new("final-b"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (entered_tx, entered) = channel();
        let (release, gate) = channel::<()>();
        let gate = Mutex::new(gate);
        let c = calls.clone();
        let w = OomWatcher::start(Box::new(move |id: &str| {
            lock(&c).push(id.to_string());
            if id == "b" {
                entered_tx.send(()).unwrap();
                let _ = lock(&gate).recv_timeout(2 * LONG);
            }
        }))
        .unwrap();
        w.add("a", &a.cgroup()).unwrap();
        w.add("b", &b.cgroup()).unwrap();
        b.set_oom_kill(1);
        entered.recv_timeout(LONG).unwrap();
        a.set_oom_kill(1);
        // In another thread: remove must not wait for the on_oom of another container.
        std::thread::scope(|s| {
            let r = s.spawn(|| w.remove("a"));
            eventually("remove(a) while on_oom(b) runs", || r.is_finished());
        });
        assert_eq!(*lock(&calls), ["b", "a"]);
        release.send(()).unwrap();
        w.remove("b");
        assert_eq!(*lock(&calls), ["b", "a"]);
    }

    #[test]
    fn v2_deleted_cgroup_stops_the_watch() {
        let fake = FakeV2::new("gone");
        let (on_oom, rx) = recorder();
        let w = OomWatcher::start(on_oom).unwrap();
        w.add("c1", &fake.cgroup()).unwrap();
        assert_eq!(w.watching(), 1);
        fs::remove_dir_all(&fake.0).unwrap();
        eventually("the watch to stop", || w.watching() == 0);
        assert!(rx.try_recv().is_err());
        w.remove("c1");
        assert!(w.add("c1", &fake.cgroup()).is_err());
    }

    /// Empty means nothing is left to OOM-kill (and the cgroup may go without an inotify event).
    #[test]
    fn v2_empty_cgroup_stops_the_watch() {
        let fake = FakeV2::new("empty");
        let (on_oom, rx) = recorder();
        let w = OomWatcher::start(on_oom).unwrap();
        w.add("c1", &fake.cgroup()).unwrap();
        fake.set_oom_kill(1);
        fs::write(fake.0.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        eventually("the watch to stop", || w.watching() == 0);
        assert_eq!(rx.recv_timeout(LONG).unwrap(), "c1");
        fake.set_oom_kill(2);
        assert!(rx.recv_timeout(QUIET).is_err());
        w.remove("c1");
    }

    /// systemd removes an emptied transient scope (SystemdCgroup = true) at once, often before the kill
    /// in its memory.events is read: the parent's hierarchical counter tells then. The thread is held in
    /// on_oom for "b" while the kill and the removal happen, so it can only look afterwards.
    #[test]
    fn v2_gone_cgroup_reports_the_kills_its_parent_counted() {
        let parent = FakeV2::new("parent");
        parent.set_oom_kill(5);
        let scope = FakeV2::new_in(&parent.0, "c1.scope");
        let b = FakeV2::new("parent-b");
        let (entered_tx, entered) = channel();
        let (release, gate) = channel::<()>();
        let gate = Mutex::new(gate);
        let (tx, rx) = channel();
        let w = OomWatcher::start(Box::new(move |id: &str| {
            tx.send(id.to_string()).unwrap();
            if id == "b" {
                entered_tx.send(()).unwrap();
                let _ = lock(&gate).recv_timeout(2 * LONG);
            }
        }))
        .unwrap();
        w.add("c1", &scope.cgroup()).unwrap();
        w.add("b", &b.cgroup()).unwrap();
        // A sibling's kill: the parent counts it, the container does not.
        parent.set_oom_kill(6);
        assert!(rx.recv_timeout(QUIET).is_err(), "a sibling's kill reported");
        b.set_oom_kill(1);
        entered.recv_timeout(LONG).unwrap();
        assert_eq!(rx.recv_timeout(LONG).unwrap(), "b");
        // The container's kill, counted in both, and its cgroup removed before the watcher looks.
        scope.set_oom_kill(1);
        parent.set_oom_kill(7);
        fs::remove_dir_all(&scope.0).unwrap();
        release.send(()).unwrap();
        assert_eq!(rx.recv_timeout(LONG).unwrap(), "c1");
        eventually("the watch to stop", || w.watching() == 1);
        assert!(rx.recv_timeout(QUIET).is_err(), "one call for one kill");
        w.remove("b");
    }

    /// Without a kill, the parent's counter unchanged, a removed cgroup reports nothing.
    #[test]
    fn v2_gone_cgroup_without_a_kill_reports_nothing() {
        let parent = FakeV2::new("parent-quiet");
        parent.set_oom_kill(3);
        let scope = FakeV2::new_in(&parent.0, "c1.scope");
        let (on_oom, rx) = recorder();
        let w = OomWatcher::start(on_oom).unwrap();
        w.add("c1", &scope.cgroup()).unwrap();
        fs::remove_dir_all(&scope.0).unwrap();
        w.remove("c1");
        assert!(rx.recv_timeout(QUIET).is_err(), "a removal reported as an OOM");
    }

    #[test]
    fn v1_without_memory_controller_is_an_error() {
        let (on_oom, _rx) = recorder();
        let w = OomWatcher::start(on_oom).unwrap();
        assert!(matches!(
            w.add("c1", &Cgroup::V1(BTreeMap::new())),
            Err(Error::NotFound(_))
        ));
    }

    /// The v1 memory hierarchy, when the host has one and we may create cgroups in it.
    fn v1_root() -> Option<&'static Path> {
        let root = Path::new("/sys/fs/cgroup/memory");
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: not root");
        } else if !root.join("cgroup.event_control").exists() {
            eprintln!("skipping: no cgroup v1 memory hierarchy at {}", root.display());
        } else {
            return Some(root);
        }
        None
    }

    /// A real v1 memory cgroup: on drop its processes are killed and it is removed, even after a failure.
    struct V1Cgroup(PathBuf);

    impl V1Cgroup {
        fn new(root: &Path, tag: &str) -> V1Cgroup {
            let dir = root.join(format!("rustrunc-oomtest-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir(&dir);
            fs::create_dir(&dir).unwrap();
            V1Cgroup(dir)
        }

        fn pids(&self) -> Vec<i32> {
            let text = fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
            text.lines().filter_map(|l| l.parse().ok()).collect()
        }

        fn cgroup(&self) -> Cgroup {
            Cgroup::V1(BTreeMap::from([("memory".to_string(), self.0.clone())]))
        }
    }

    impl Drop for V1Cgroup {
        fn drop(&mut self) {
            let end = Instant::now() + LONG;
            while self.0.exists() && Instant::now() < end {
                for pid in self.pids() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                }
                if fs::remove_dir(&self.0).is_err() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    #[test]
    fn v1_reports_a_real_oom_kill() {
        let Some(root) = v1_root() else { return };
        let cg = V1Cgroup::new(root, "kill");
        let limit = (8u64 << 20).to_string();
        fs::write(cg.0.join("memory.limit_in_bytes"), &limit).unwrap();
        if cg.0.join("memory.memsw.limit_in_bytes").exists() {
            fs::write(cg.0.join("memory.memsw.limit_in_bytes"), &limit).unwrap();
        }
        let (on_oom, rx) = recorder();
        let w = OomWatcher::start(on_oom).unwrap();
        w.add("oomer", &cg.cgroup()).unwrap();

        // The shell moves itself into the cgroup, then becomes dd, whose 64 MiB buffer cannot fit.
        // Spawned through the reaper so that, if its signal thread runs (another test), the exit goes to
        // our waiter and not to that test's monitor; Child::wait could then fail with ECHILD.
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=64M count=1",
            cg.0.display()
        );
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut sp = crate::reaper::spawn(&mut cmd).unwrap();
        eventually("dd to die", || !matches!(sp.child.try_wait(), Ok(None)));

        assert_eq!(rx.recv_timeout(LONG).unwrap(), "oomer");
        let oom_control = fs::read_to_string(cg.0.join("memory.oom_control")).unwrap();
        assert!(oom_kill(&oom_control).is_some_and(|n| n > 0), "{oom_control}");
        w.remove("oomer");
        assert_eq!(w.watching(), 0);
        assert!(rx.recv_timeout(QUIET).is_err(), "more than one call for one OOM");
    }

    /// Removing the cgroup signals the eventfd too: that is the end of the watch, not an OOM.
    #[test]
    fn v1_rmdir_stops_the_watch() {
        let Some(root) = v1_root() else { return };
        let cg = V1Cgroup::new(root, "rmdir");
        let (on_oom, rx) = recorder();
        let w = OomWatcher::start(on_oom).unwrap();
        w.add("c1", &cg.cgroup()).unwrap();
        assert_eq!(w.watching(), 1);
        fs::remove_dir(&cg.0).unwrap();
        eventually("the watch to stop", || w.watching() == 0);
        assert!(rx.recv_timeout(QUIET).is_err(), "cgroup removal reported as an OOM");
        w.remove("c1");
    }
}
