//! The exit-ordering rules, as a plain value: no locks, no IO, no clock. The service holds it under
//! one lock, calls a method, lets the lock go, and then does what the returned [`Action`]s say, in
//! their order. The rules (the Go shim's `preStart`/`handleStarted`, and what containerd expects):
//!
//! 1. **Subscribe before runc forks.** An exit that arrives while `runc create|start|exec` runs is
//!    kept by the subscription, so it is neither lost nor reported before the start.
//! 2. **Start before exit.** `started` is called after the start (or create) event is queued; an exit
//!    already seen for that pid is reported then, never earlier.
//! 3. **Init's exit after its execs'.** While execs of a container run, its init's exit is held and
//!    released by the last exec's [`Lifecycle::exec_done`].
//! 4. **No exec into a container whose init exited** ([`Lifecycle::exec_starting`]).
//! 5. **A created init killed by Delete reports no exit** ([`Lifecycle::forget`]).
//! 6. **Kill the rest when a shared-pid-namespace init exits** ([`Action::KillAll`], before its exit).
//!
//! OOM before exit is the service's part of performing [`Action::Exit`] for an init.

use std::collections::{HashMap, HashSet};

use crate::reaper::Exit;

/// What the lifecycle needs to know of a process. Implemented by `Arc<Process>`; tests use a
/// small stand-in.
pub trait Tracked: Clone {
    fn container(&self) -> &str;
    fn is_init(&self) -> bool;
    /// The same process (not an equal one).
    fn same(&self, other: &Self) -> bool;
}

/// What the caller must do, in order, once it has let go of the lifecycle's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Kill every process of this container (its init exited and it has no pid namespace of its own).
    KillAll(String),
    /// Record and report this exit (then call [`Lifecycle::exec_done`] for an exec).
    Exit(P, u32),
}

/// An exit subscription, from [`Lifecycle::subscribe`]; give it back through `started` or `cancel`.
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a subscription is ended with started() or cancel()"]
pub struct Sub(u64);

pub struct Lifecycle<P> {
    /// Started processes by pid.
    running: HashMap<u32, Vec<P>>,
    /// Exits seen while a Create/Start/Exec was in flight, by subscription.
    subscribers: HashMap<u64, Vec<Exit>>,
    next_sub: u64,
    init_exited: HashSet<String>,
    running_execs: HashMap<String, usize>,
    /// Init exits held back until the container's execs have exited.
    pending_init: HashMap<String, (P, u32)>,
    /// Containers whose other processes are killed when init exits.
    kill_all: HashSet<String>,
}

impl<P> Default for Lifecycle<P> {
    fn default() -> Self {
        Lifecycle {
            running: HashMap::new(),
            subscribers: HashMap::new(),
            next_sub: 0,
            init_exited: HashSet::new(),
            running_execs: HashMap::new(),
            pending_init: HashMap::new(),
            kill_all: HashSet::new(),
        }
    }
}

impl<P: Tracked> Lifecycle<P> {
    /// Rule 1: before runc forks. A created init being started (`restarting`, with its `runc create`
    /// pid) is taken out of `running`, so an exit during `runc start` is seen by the subscription and
    /// reported after the start.
    pub fn subscribe(&mut self, restarting: Option<(&P, u32)>) -> Sub {
        self.next_sub += 1;
        self.subscribers.insert(self.next_sub, Vec::new());
        if let Some((p, pid)) = restarting {
            self.untrack(p, pid);
        }
        Sub(self.next_sub)
    }

    /// The fork failed: nothing ran under this subscription.
    pub fn cancel(&mut self, sub: Sub) {
        self.subscribers.remove(&sub.0);
    }

    /// Rule 2: the process `p` with `pid` exists and its start (or create) event is queued: report
    /// an exit the subscription saw, or track it from now on.
    pub fn started(&mut self, sub: Sub, p: &P, pid: u32) -> Vec<Action<P>> {
        let seen = self.subscribers.remove(&sub.0).unwrap_or_default();
        match seen.iter().find(|e| e.pid == pid) {
            Some(e) => self.dispatch(p.clone(), e.status),
            None => {
                self.running.entry(pid).or_default().push(p.clone());
                Vec::new()
            }
        }
    }

    /// The reaper collected `e`.
    pub fn exited(&mut self, e: Exit) -> Vec<Action<P>> {
        for seen in self.subscribers.values_mut() {
            seen.push(e);
        }
        let procs = self.running.remove(&e.pid).unwrap_or_default();
        procs.into_iter().flat_map(|p| self.dispatch(p, e.status)).collect()
    }

    fn dispatch(&mut self, p: P, status: u32) -> Vec<Action<P>> {
        if !p.is_init() {
            return vec![Action::Exit(p, status)];
        }
        let c = p.container().to_string();
        self.init_exited.insert(c.clone());
        let mut actions = Vec::new();
        if self.kill_all.contains(&c) {
            actions.push(Action::KillAll(c.clone()));
        }
        // Rule 3.
        if self.running_execs.get(&c).copied().unwrap_or(0) > 0 {
            self.pending_init.insert(c, (p, status));
        } else {
            actions.push(Action::Exit(p, status));
        }
        actions
    }

    /// Rule 6: this container's other processes are killed when its init exits.
    pub fn kill_all_on_exit(&mut self, container: &str) {
        self.kill_all.insert(container.to_string());
    }

    /// Rule 4: an exec of `container` is about to start; refused (false) once its init exited.
    pub fn exec_starting(&mut self, container: &str) -> bool {
        if self.init_exited.contains(container) {
            return false;
        }
        *self.running_execs.entry(container.to_string()).or_default() += 1;
        true
    }

    /// An exec's exit was reported, or its start failed: one exec less. Releases init's held exit
    /// after the last one (rule 3).
    pub fn exec_done(&mut self, container: &str) -> Vec<Action<P>> {
        let n = self.running_execs.entry(container.to_string()).or_default();
        *n = n.saturating_sub(1);
        if *n > 0 {
            return Vec::new();
        }
        match self.pending_init.remove(container) {
            Some((p, status)) => vec![Action::Exit(p, status)],
            None => Vec::new(),
        }
    }

    /// Rule 5: stop tracking `p` (pid `pid`): its exit must not be reported.
    pub fn forget(&mut self, p: &P, pid: u32) {
        self.untrack(p, pid);
    }

    /// The container is deleted: nothing of it is kept.
    pub fn deleted(&mut self, container: &str) {
        self.init_exited.remove(container);
        self.running_execs.remove(container);
        self.pending_init.remove(container);
        self.kill_all.remove(container);
    }

    fn untrack(&mut self, p: &P, pid: u32) {
        if let Some(list) = self.running.get_mut(&pid) {
            list.retain(|q| !q.same(p));
            if list.is_empty() {
                self.running.remove(&pid);
            }
        }
    }

    /// (pids tracked, subscriptions open, init exits held), for the state dump.
    pub fn figures(&self) -> (usize, usize, usize) {
        (self.running.len(), self.subscribers.len(), self.pending_init.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process: (container, exec id or "" for init).
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct P(&'static str, &'static str);

    impl Tracked for P {
        fn container(&self) -> &str {
            self.0
        }
        fn is_init(&self) -> bool {
            self.1.is_empty()
        }
        fn same(&self, other: &Self) -> bool {
            self == other
        }
    }

    const INIT: P = P("c", "");
    const E1: P = P("c", "e1");
    const E2: P = P("c", "e2");

    fn exit(pid: u32, status: u32) -> Exit {
        Exit { pid, status }
    }

    fn exits(a: Vec<Action<P>>) -> Vec<(P, u32)> {
        a.into_iter()
            .filter_map(|a| match a {
                Action::Exit(p, s) => Some((p, s)),
                Action::KillAll(_) => None,
            })
            .collect()
    }

    #[test]
    fn an_exit_during_create_is_reported_at_started_not_before() {
        let mut l = Lifecycle::default();
        let sub = l.subscribe(None);
        // runc create forked pid 10, which died before create returned.
        assert_eq!(l.exited(exit(10, 1)), vec![], "not before the start");
        assert_eq!(exits(l.started(sub, &INIT, 10)), vec![(INIT, 1)]);
        assert_eq!(l.figures(), (0, 0, 0));
    }

    #[test]
    fn an_exit_during_start_is_reported_after_the_start() {
        let mut l = Lifecycle::default();
        let sub = l.subscribe(None);
        assert_eq!(l.started(sub, &INIT, 10), vec![]);
        // Start: the created init is taken out of tracking while runc start runs.
        let sub = l.subscribe(Some((&INIT, 10)));
        assert_eq!(l.exited(exit(10, 0)), vec![], "seen by the subscription only");
        assert_eq!(exits(l.started(sub, &INIT, 10)), vec![(INIT, 0)]);
    }

    #[test]
    fn other_pids_seen_by_a_subscription_are_not_taken_for_ours() {
        let mut l = Lifecycle::default();
        let sub = l.subscribe(None);
        assert_eq!(l.exited(exit(99, 3)), vec![]);
        assert_eq!(l.started(sub, &E1, 11), vec![]);
        assert_eq!(exits(l.exited(exit(11, 4))), vec![(E1, 4)]);
    }

    #[test]
    fn init_exit_is_held_until_the_last_exec_is_done() {
        let mut l = Lifecycle::default();
        let s = l.subscribe(None);
        let _ = l.started(s, &INIT, 10);
        for (e, pid) in [(&E1, 11), (&E2, 12)] {
            assert!(l.exec_starting("c"));
            let s = l.subscribe(None);
            assert_eq!(l.started(s, e, pid), vec![]);
        }
        assert_eq!(l.exited(exit(10, 137)), vec![], "held: two execs run");
        assert!(!l.exec_starting("c"), "no exec once init exited");
        assert_eq!(exits(l.exited(exit(11, 1))), vec![(E1, 1)]);
        assert_eq!(l.exec_done("c"), vec![], "one exec still runs");
        assert_eq!(exits(l.exited(exit(12, 2))), vec![(E2, 2)]);
        assert_eq!(exits(l.exec_done("c")), vec![(INIT, 137)]);
    }

    #[test]
    fn a_failed_exec_start_releases_a_held_init_exit() {
        let mut l = Lifecycle::default();
        let s = l.subscribe(None);
        let _ = l.started(s, &INIT, 10);
        assert!(l.exec_starting("c"));
        let s = l.subscribe(None);
        assert_eq!(l.exited(exit(10, 0)), vec![], "held for the exec being started");
        l.cancel(s);
        assert_eq!(exits(l.exec_done("c")), vec![(INIT, 0)]);
    }

    #[test]
    fn a_created_init_killed_by_delete_reports_nothing() {
        let mut l = Lifecycle::default();
        let s = l.subscribe(None);
        let _ = l.started(s, &INIT, 10);
        l.forget(&INIT, 10);
        assert_eq!(l.exited(exit(10, 137)), vec![]);
        l.deleted("c");
        assert_eq!(l.figures(), (0, 0, 0));
    }

    #[test]
    fn a_shared_pid_namespace_init_kills_the_rest_before_its_exit() {
        let mut l = Lifecycle::default();
        l.kill_all_on_exit("c");
        let s = l.subscribe(None);
        let _ = l.started(s, &INIT, 10);
        assert_eq!(
            l.exited(exit(10, 0)),
            vec![Action::KillAll("c".into()), Action::Exit(INIT, 0)]
        );
    }

    #[test]
    fn one_pid_two_processes_both_exit() {
        // A pid reused by the kernel between two tracked processes is reported for both.
        let mut l = Lifecycle::default();
        for p in [&E1, &E2] {
            let s = l.subscribe(None);
            let _ = l.started(s, p, 11);
        }
        assert_eq!(exits(l.exited(exit(11, 5))), vec![(E1, 5), (E2, 5)]);
    }
}
