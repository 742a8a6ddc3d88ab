//! A process (a container's init or an exec) and its state machine. Transition methods refuse illegal
//! moves with FailedPrecondition (NotFound once deleted). Starting and Deleting are transient states
//! that close the races between concurrent RPCs and the exit handler.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::protos::shim::task::Status;
use crate::stdio::{ProcessIo, StdioPaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Starting,
    Running,
    Pausing,
    Paused,
    Resuming,
    Stopped,
    Deleting,
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: u32,
    pub at: SystemTime,
}

/// Told the exit once it is known: a parked Wait, with the connection it came on.
type Waiter = (u64, Box<dyn FnOnce(ExitInfo) + Send>);

struct Inner {
    state: State,
    pid: u32,
    exit: Option<ExitInfo>,
    /// Set when a start failed before the process ran: every Wait is answered with it while the
    /// process stays created (the Go shim closes the exec's wait channel on that path).
    failed_start: Option<ExitInfo>,
    waiters: Vec<Waiter>,
}

pub struct Process {
    pub container_id: String,
    /// None for the container's init.
    pub exec_id: Option<String>,
    pub stdio: StdioPaths,
    /// An exec's runtime-spec Process (JSON), as given to `runc exec --process`.
    pub spec: Vec<u8>,
    inner: Mutex<Inner>,
    exited: Condvar,
    pub io: Mutex<Option<ProcessIo>>,
    /// CloseIO arrived; read and written under the `io` lock, so a CloseIO racing the start is kept.
    stdin_closed: std::sync::atomic::AtomicBool,
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Created => "created",
        State::Starting => "starting",
        State::Running => "running",
        State::Pausing => "pausing",
        State::Paused => "paused",
        State::Resuming => "resuming",
        State::Stopped => "stopped",
        State::Deleting => "deleting",
        State::Deleted => "deleted",
    }
}

impl Process {
    pub fn new(container_id: &str, exec_id: Option<&str>, stdio: StdioPaths) -> Process {
        Process::with_spec(container_id, exec_id, stdio, Vec::new())
    }

    pub fn with_spec(container_id: &str, exec_id: Option<&str>, stdio: StdioPaths, spec: Vec<u8>) -> Process {
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.map(str::to_string),
            stdio,
            spec,
            inner: Mutex::new(Inner {
                state: State::Created,
                pid: 0,
                exit: None,
                failed_start: None,
                waiters: Vec::new(),
            }),
            exited: Condvar::new(),
            io: Mutex::new(None),
            stdin_closed: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The id containerd knows the process by: the exec id, or the container id for init.
    pub fn id(&self) -> &str {
        self.exec_id.as_deref().unwrap_or(&self.container_id)
    }

    pub fn is_init(&self) -> bool {
        self.exec_id.is_none()
    }

    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub fn set_pid(&self, pid: u32) {
        self.lock().pid = pid;
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    pub fn exit(&self) -> Option<ExitInfo> {
        self.lock().exit
    }

    /// The status reported to containerd.
    pub fn status(&self) -> Status {
        match self.state() {
            State::Created | State::Starting => Status::CREATED,
            State::Running => Status::RUNNING,
            State::Pausing => Status::PAUSING,
            State::Paused | State::Resuming => Status::PAUSED,
            State::Stopped | State::Deleting | State::Deleted => Status::STOPPED,
        }
    }

    fn refuse(&self, op: &str, s: State) -> Error {
        if s == State::Deleted {
            Error::NotFound(format!(
                "process {} of container {} is deleted",
                self.id(),
                self.container_id
            ))
        } else {
            Error::FailedPrecondition(format!("cannot {op} a {} process", state_name(s)))
        }
    }

    /// Installs the process's IO once runc has created it, honouring a CloseIO that came first.
    pub fn set_io(&self, io: ProcessIo) {
        let mut g = self.io.lock().unwrap_or_else(|e| e.into_inner());
        if self.stdin_closed.load(std::sync::atomic::Ordering::SeqCst) {
            io.close_stdin();
        }
        *g = Some(io);
    }

    /// CloseIO: the client will write no more; the container sees EOF once the client's writer is closed.
    pub fn close_stdin(&self) {
        let g = self.io.lock().unwrap_or_else(|e| e.into_inner());
        self.stdin_closed.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(io) = g.as_ref() {
            io.close_stdin();
        }
    }

    /// Created -> Starting; the guard commits to Running, or rolls back to Created when dropped.
    pub fn begin_start(&self) -> Result<Transition<'_>> {
        self.transition("start", &[State::Created], State::Starting)
    }

    /// The state once a Start in progress has ended (at most `timeout` of waiting). The process runs,
    /// and may write output, before `runc exec` returns and Start records its pid: a Kill in that
    /// moment waits for it, as the Go shim's does (its kill takes the pid's lock, which Start holds).
    pub fn state_after_start(&self, timeout: std::time::Duration) -> State {
        let g = self.lock();
        let (g, _) = self
            .exited
            .wait_timeout_while(g, timeout, |g| g.state == State::Starting)
            .unwrap_or_else(|e| e.into_inner());
        g.state
    }

    /// Records the exit; false when the process was already stopped or deleted (nothing to report).
    pub fn set_exited(&self, status: u32) -> bool {
        let mut g = self.lock();
        match g.state {
            State::Created | State::Starting | State::Running | State::Pausing | State::Paused | State::Resuming => {
                g.state = State::Stopped;
                let exit = ExitInfo {
                    status,
                    at: SystemTime::now(),
                };
                g.exit = Some(exit);
                self.exited.notify_all();
                let waiters = std::mem::take(&mut g.waiters);
                drop(g);
                release(waiters, exit);
                true
            }
            State::Stopped | State::Deleting | State::Deleted => false,
        }
    }

    /// Created or Stopped -> Deleting; the guard commits to Deleted (releasing waiters), or rolls
    /// back to where it was.
    pub fn begin_delete(&self) -> Result<Transition<'_>> {
        self.transition("delete", &[State::Created, State::Stopped], State::Deleting)
    }

    /// Running -> Pausing (while `runc pause` runs); commits to Paused, rolls back to Running.
    pub fn begin_pause(&self) -> Result<Transition<'_>> {
        self.transition("pause", &[State::Running], State::Pausing)
    }

    /// Paused -> Resuming (while `runc resume` runs); commits to Running, rolls back to Paused.
    pub fn begin_resume(&self) -> Result<Transition<'_>> {
        self.transition("resume", &[State::Paused], State::Resuming)
    }

    fn transition(&self, op: &str, from: &[State], to: State) -> Result<Transition<'_>> {
        let mut g = self.lock();
        if !from.contains(&g.state) {
            return Err(self.refuse(op, g.state));
        }
        let back = std::mem::replace(&mut g.state, to);
        Ok(Transition {
            p: self,
            back,
            done: false,
        })
    }

    /// Ends the transient state a [`Transition`] entered. An exit recorded meanwhile (Stopped) wins.
    fn end_transition(&self, ok: bool, back: State) -> Vec<Waiter> {
        let mut g = self.lock();
        let mut released = Vec::new();
        g.state = match (g.state, ok) {
            (State::Starting, true) | (State::Resuming, true) => State::Running,
            (State::Pausing, true) => State::Paused,
            (State::Deleting, true) => {
                released = std::mem::take(&mut g.waiters);
                State::Deleted
            }
            (State::Starting | State::Deleting | State::Pausing | State::Resuming, false) => back,
            (s, _) => s,
        };
        self.exited.notify_all();
        released
    }

    /// Whether the process can still be signalled.
    pub fn check_kill(&self) -> Result<()> {
        match self.state() {
            State::Deleted => Err(self.refuse("kill", State::Deleted)),
            _ => Ok(()),
        }
    }

    /// Calls `f` with the exit once it is known (at once if it is), from whichever thread records
    /// it: a Wait parked without a thread. A process deleted without ever running answers
    /// [`NEVER_RAN`]. `f` must not block.
    pub fn on_exit(&self, conn: u64, f: Box<dyn FnOnce(ExitInfo) + Send>) {
        let mut g = self.lock();
        let now = match (g.exit.or(g.failed_start), g.state) {
            (Some(e), _) => e,
            (None, State::Deleted) => NEVER_RAN,
            _ => return g.waiters.push((conn, f)),
        };
        drop(g);
        f(now)
    }

    /// Drops the waiters that came on connection `conn` (it closed: nobody to answer).
    pub fn drop_waiters(&self, conn: u64) -> usize {
        let mut g = self.lock();
        let before = g.waiters.len();
        g.waiters.retain(|(c, _)| *c != conn);
        before - g.waiters.len()
    }

    pub fn waiters(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Blocks until the process exited (or was deleted without ever running). Tests only: the
    /// daemon parks its Waits with [`Process::on_exit`].
    #[cfg(test)]
    pub fn wait(&self) -> ExitInfo {
        let (tx, rx) = std::sync::mpsc::channel();
        self.on_exit(
            0,
            Box::new(move |e| {
                let _ = tx.send(e);
            }),
        );
        rx.recv().expect("an exit")
    }
}

/// A transient state entered by `Process::begin_*`: [`Transition::commit`] ends it where the operation
/// leads; dropped (an error returned, a panic) it rolls back. No path can leave a process in
/// Starting, Deleting, Pausing or Resuming.
#[must_use = "a transition is committed or rolled back"]
pub struct Transition<'a> {
    p: &'a Process,
    back: State,
    done: bool,
}

impl Transition<'_> {
    pub fn commit(mut self) {
        self.done = true;
        release(self.p.end_transition(true, self.back), NEVER_RAN);
    }

    /// A start that failed before the process ran (an exec whose `runc exec` failed): the process
    /// stays created, as the Go shim's does, and its waiters, now and later, are answered (255): it
    /// will not run from this start, and containerd waits for it before it reports the failure.
    pub fn failed_to_run(mut self) {
        self.done = true;
        let _ = self.p.end_transition(false, self.back);
        let failed = ExitInfo {
            status: 255,
            at: SystemTime::now(),
        };
        let waiters = {
            let mut g = self.p.lock();
            g.failed_start = Some(failed);
            std::mem::take(&mut g.waiters)
        };
        release(waiters, failed);
    }
}

impl std::fmt::Debug for Transition<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Transition of {} (back to {:?})", self.p.id(), self.back)
    }
}

impl Drop for Transition<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.p.end_transition(false, self.back);
        }
    }
}

/// What a Wait on a process deleted without ever running is told, as the Go shim does.
pub const NEVER_RAN: ExitInfo = ExitInfo {
    status: 0,
    at: SystemTime::UNIX_EPOCH,
};

fn release(waiters: Vec<Waiter>, exit: ExitInfo) {
    for (_, f) in waiters {
        f(exit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn p() -> Process {
        Process::new("c", None, StdioPaths::default())
    }

    #[test]
    fn state_after_start_waits_out_a_start_in_progress() {
        let p = Arc::new(p());
        assert_eq!(p.state_after_start(Duration::from_secs(5)), State::Created);
        let (started_tx, started) = std::sync::mpsc::channel();
        let q = p.clone();
        let t = std::thread::spawn(move || {
            let start = q.begin_start().unwrap();
            started_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            start.commit();
        });
        started.recv().unwrap();
        assert_eq!(p.state_after_start(Duration::from_secs(5)), State::Running);
        t.join().unwrap();
        // A Start that does not end is waited for only as long as asked.
        let r = super::Process::new("c", Some("e"), StdioPaths::default());
        let _start = r.begin_start().unwrap();
        assert_eq!(r.state_after_start(Duration::from_millis(20)), State::Starting);
    }

    #[test]
    fn parked_waiters_are_told_the_exit_once_and_go_with_their_connection() {
        let p = p();
        let (tx, rx) = std::sync::mpsc::channel();
        for conn in [1, 1, 2] {
            let tx = tx.clone();
            p.on_exit(conn, Box::new(move |e| tx.send((conn, e.status)).unwrap()));
        }
        assert_eq!(p.waiters(), 3);
        assert_eq!(p.drop_waiters(1), 2, "connection 1 closed");
        p.begin_start().unwrap().commit();
        assert!(rx.try_recv().is_err(), "nobody is told before the exit");
        assert!(p.set_exited(7));
        assert_eq!(rx.try_recv().unwrap(), (2, 7));
        assert!(rx.try_recv().is_err(), "dropped waiters are never called");
        // After the exit, a new waiter is told at once.
        p.on_exit(3, Box::new(move |e| tx.send((3, e.status)).unwrap()));
        assert_eq!(rx.try_recv().unwrap(), (3, 7));
        assert_eq!(p.waiters(), 0);
    }

    #[test]
    fn a_failed_start_answers_waiters_and_leaves_the_process_created() {
        let p = Process::new("c", Some("e"), StdioPaths::default());
        let (tx, rx) = std::sync::mpsc::channel();
        p.on_exit(1, Box::new(move |e| tx.send(e.status).unwrap()));
        p.begin_start().unwrap().failed_to_run();
        assert_eq!(rx.try_recv().unwrap(), 255);
        assert_eq!(p.state(), State::Created);
        assert_eq!(p.status(), Status::CREATED);
        assert!(p.exit().is_none());
        // A Wait that comes after the failure is answered too, at once (containerd's
        // TestIssue10589 reads the exec's state and waits for it after its start failed).
        let (tx, rx) = std::sync::mpsc::channel();
        p.on_exit(2, Box::new(move |e| tx.send(e.status).unwrap()));
        assert_eq!(rx.try_recv().unwrap(), 255);
        assert_eq!(p.waiters(), 0);
    }

    #[test]
    fn lifecycle_table() {
        let p = p();
        assert_eq!(p.status(), Status::CREATED);
        let start = p.begin_start().unwrap();
        assert!(matches!(p.begin_start(), Err(Error::FailedPrecondition(_))));
        assert!(matches!(p.begin_delete(), Err(Error::FailedPrecondition(_))));
        start.commit();
        assert_eq!(p.status(), Status::RUNNING);
        let e = p.begin_delete().unwrap_err();
        assert_eq!(e, Error::FailedPrecondition("cannot delete a running process".into()));
        assert!(p.set_exited(3));
        assert!(!p.set_exited(4), "an exit is recorded once");
        assert_eq!(p.exit().unwrap().status, 3);
        assert!(matches!(p.begin_start(), Err(Error::FailedPrecondition(_))));
        drop(p.begin_delete().unwrap());
        assert_eq!(p.state(), State::Stopped, "a dropped transition rolls back");
        p.begin_delete().unwrap().commit();
        assert!(matches!(p.begin_delete(), Err(Error::NotFound(_))));
        assert!(matches!(p.check_kill(), Err(Error::NotFound(_))));
        assert_eq!(p.status(), Status::STOPPED);
    }

    #[test]
    fn pause_and_resume() {
        let p = p();
        assert!(
            matches!(p.begin_pause(), Err(Error::FailedPrecondition(_))),
            "created cannot pause"
        );
        p.begin_start().unwrap().commit();
        let pause = p.begin_pause().unwrap();
        assert_eq!(p.status(), Status::PAUSING);
        assert!(matches!(p.begin_pause(), Err(Error::FailedPrecondition(_))));
        pause.commit();
        assert_eq!(p.status(), Status::PAUSED);
        assert!(
            matches!(p.begin_delete(), Err(Error::FailedPrecondition(_))),
            "paused cannot be deleted"
        );
        let resume = p.begin_resume().unwrap();
        assert_eq!(p.status(), Status::PAUSED);
        assert!(
            matches!(p.begin_resume(), Err(Error::FailedPrecondition(_))),
            "resume while resuming"
        );
        drop(resume);
        assert_eq!(p.status(), Status::PAUSED, "a failed resume keeps it paused");
        p.begin_resume().unwrap().commit();
        assert_eq!(p.status(), Status::RUNNING);
        assert!(matches!(p.begin_resume(), Err(Error::FailedPrecondition(_))));
        p.begin_pause().unwrap().commit();
        assert!(p.set_exited(137), "a paused process can still exit (SIGKILL)");
    }

    #[test]
    fn failed_start_returns_to_created_and_exit_during_start_wins() {
        let a = p();
        drop(a.begin_start().unwrap());
        assert_eq!(a.state(), State::Created);
        let b = p();
        let start = b.begin_start().unwrap();
        assert!(b.set_exited(1));
        start.commit();
        assert_eq!(b.state(), State::Stopped);
    }

    #[test]
    fn wait_blocks_until_exit() {
        let p = Arc::new(p());
        p.begin_start().unwrap().commit();
        let q = p.clone();
        let t = std::thread::spawn(move || q.wait().status);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished());
        p.set_exited(137);
        assert_eq!(t.join().unwrap(), 137);
    }
}
