//! containerd down while containers exit (issue 11, row 1): every `/tasks/exit` must reach it once
//! it is back, in order per container. Shared by tests/load.rs (5 s) and tests/faults.rs (30 s,
//! 120 s, and containerd SIGSTOPped for 40 s).
//!
//! Each container has an exec and its init; during the outage the test ends the exec first, then
//! the init (each with its own status), so each container owes containerd two exits in that order.
//!
//! What proves delivery is a `ctr events` subscriber that was there before the shims could
//! deliver: after a crash the restarted containerd serves its ttrpc (where shims publish) on
//! another path first, the subscriber connects over gRPC, and only then does the usual ttrpc path
//! appear (a symlink to the new socket: connect(2) follows it). A subscriber started after the
//! restart would miss what the shims delivered before it, and `ctr task ls` asks the shim, so it
//! says STOPPED whether or not the event ever arrived.

use std::path::Path;
use std::time::{Duration, Instant};

use super::events::{self, Event, Events};
use super::procs;
use super::restart::{self, Restarted};
use super::{unique_id, Containerd, IMAGE, RUNTIME};

/// The Go shim's figure (containerd SIGSTOPped for 40 s, 10 containers exiting): each exit
/// delivered up to 6 times. A forward that timed out may have been processed, so a resend can
/// duplicate; no more than Go.
pub const MAX_DELIVERIES_PER_EXIT: usize = 6;

/// A container whose init and exec wait for SIGTERM, then exit with their own status.
pub struct Exiting {
    pub id: String,
    pub init_pid: u32,
    pub exec_pid: u32,
    pub init_status: i64,
    pub exec_status: i64,
}

/// `n` such containers, running, each with exec "x".
pub fn containers(c: &Containerd, n: usize) -> Vec<Exiting> {
    (0..n)
        .map(|i| {
            let id = unique_id(&format!("out{i}"));
            let (init_status, exec_status) = (10 + i as i64, 40 + i as i64);
            // `sleep & wait`: the trap runs as soon as the signal comes (pid 1 only gets signals it
            // handles, which sh does once it traps them).
            let init = format!("trap 'exit {init_status}' TERM; sleep 100000 & wait");
            c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sh", "-c", &init]);
            // Unique to this test process too: another run on the host has its own sleepers.
            let marker = format!("{}", 200_000_000 + (std::process::id() % 100_000) * 100 + i as u32);
            let exec = format!("trap 'exit {exec_status}' TERM; sleep {marker} & wait");
            c.ctr_ok(&["task", "exec", "-d", "--exec-id", "x", &id, "sh", "-c", &exec]);
            let ls = c.ctr_ok(&["task", "ls"]);
            let init_pid = procs::task_pid(&ls, &id).unwrap_or_else(|| panic!("{id} not in:\n{ls}"));
            // The exec's sh is the parent of the one `sleep <marker>` on the host.
            let exec_pid = super::eventually(Duration::from_secs(10), || {
                let sleeper = procs::find(|a| a.len() == 2 && a[0] == "sleep" && a[1] == marker)
                    .into_iter()
                    .next()?;
                let stat = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).ok()?;
                stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
            })
            .unwrap_or_else(|| panic!("{id}: exec not found"));
            Exiting {
                id,
                init_pid,
                exec_pid,
                init_status,
                exec_status,
            }
        })
        .collect()
}

/// `ctr events`, once it is subscribed: it has seen the event of a container the test made for that.
fn subscribed(c: &Containerd) -> Events {
    let events = Events::start(c);
    let probe = unique_id("probe");
    c.ctr_ok(&["containers", "create", IMAGE, &probe]);
    let seen = super::eventually(Duration::from_secs(30), || {
        events
            .peek()
            .lines()
            .any(|l| l.contains("/containers/create") && l.contains(&probe))
            .then_some(())
    });
    c.ctr_ok(&["containers", "rm", &probe]);
    assert!(seen.is_some(), "ctr events never showed /containers/create of {probe}");
    events
}

/// SIGTERM to `pid`; waits (≤ 20 s) until it is gone.
fn end(pid: u32) {
    super::signal(pid, libc::SIGTERM);
    let gone = super::eventually(Duration::from_secs(20), || (!procs::alive(pid)).then_some(()));
    assert!(gone.is_some(), "{pid} ignored SIGTERM");
}

/// Ends every exec, then every init (exec before init in each container).
pub fn end_all(list: &[Exiting]) {
    for e in list {
        end(e.exec_pid);
        end(e.init_pid);
    }
}

/// Per container: (exec exits, init exits, exec before init, wrong statuses) in `text`.
fn deliveries(text: &str, e: &Exiting) -> (usize, usize, bool, Vec<String>) {
    let exits: Vec<Event> = events::of(text, &e.id)
        .into_iter()
        .filter(|ev| ev.topic == "/tasks/exit")
        .collect();
    let is_exec = |ev: &Event| ev.process() == "x";
    let execs: Vec<&Event> = exits.iter().filter(|ev| is_exec(ev)).collect();
    let inits: Vec<&Event> = exits.iter().filter(|ev| !is_exec(ev)).collect();
    let mut wrong = Vec::new();
    for ev in &execs {
        if ev.int("exit_status") != e.exec_status {
            wrong.push(format!("{}: exec exit {}", e.id, ev.line));
        }
    }
    for ev in &inits {
        if ev.int("exit_status") != e.init_status {
            wrong.push(format!("{}: init exit {}", e.id, ev.line));
        }
    }
    let first_exec = exits.iter().position(is_exec);
    let first_init = exits.iter().position(|ev| !is_exec(ev));
    let ordered = matches!((first_exec, first_init), (Some(x), Some(i)) if x < i);
    (execs.len(), inits.len(), ordered, wrong)
}

/// Waits (≤ `timeout`) until `events` shows both exits of every container, then checks them: each
/// at least once, the exec's first, right statuses, at most `max_each` deliveries of one exit.
/// Prints the delivery counts; returns what is wrong.
fn check(events: &Events, list: &[Exiting], timeout: Duration, max_each: usize, what: &str) -> Vec<String> {
    let started = Instant::now();
    let all = super::eventually(timeout, || {
        let text = events.peek();
        list.iter()
            .all(|e| {
                let (x, i, _, _) = deliveries(&text, e);
                x > 0 && i > 0
            })
            .then_some(())
    });
    // A moment more for resends that were still coming.
    std::thread::sleep(Duration::from_secs(2));
    let text = events.peek();
    let mut problems = Vec::new();
    let mut counts = Vec::new();
    for e in list {
        let (x, i, ordered, wrong) = deliveries(&text, e);
        counts.push(format!("{x}/{i}"));
        if x == 0 || i == 0 {
            problems.push(format!("{}: exec exit delivered {x} times, init exit {i} times", e.id));
        } else if !ordered {
            problems.push(format!("{}: init exit delivered before the exec's", e.id));
        }
        if x > max_each || i > max_each {
            problems.push(format!(
                "{}: delivered {x} (exec) / {i} (init) times; at most {max_each}",
                e.id
            ));
        }
        problems.extend(wrong);
    }
    println!(
        "{what}: deliveries per container (exec/init) {}; {} after containerd was back",
        counts.join(" "),
        if all.is_some() {
            format!("all in {:.1} s", started.elapsed().as_secs_f64())
        } else {
            format!("NOT all within {timeout:?}")
        }
    );
    if !problems.is_empty() {
        problems.insert(0, format!("{what}:"));
    }
    problems
}

/// containerd SIGKILLed; `n` containers end their exec and init; `outage` later containerd is back.
/// Every exit must reach it (retried while the shim lives), in order.
pub fn crash_outage(n: usize, outage: Duration) {
    let c = Containerd::start();
    let list = containers(&c, n);
    // The restarted containerd: debug log, and its ttrpc socket elsewhere until we subscribed.
    let config = std::fs::read_to_string(c.dir.join("config.toml")).unwrap();
    let ttrpc = format!("{}.ttrpc", c.address);
    let later = format!("{}.ttrpc-later", c.address);
    let config = config
        .replace(&format!("\"{ttrpc}\""), &format!("\"{later}\""))
        .replace("level = \"info\"", "level = \"debug\"");
    let restart_config = c.dir.join("restart.toml");
    std::fs::write(&restart_config, config).unwrap();

    restart::crash(&c);
    let down = Instant::now();
    end_all(&list);
    let ended = down.elapsed();
    std::thread::sleep(outage.saturating_sub(down.elapsed()));
    let _ = std::fs::remove_file(&ttrpc);
    let back = Restarted::start_with_config(&c, &restart_config);
    let events = subscribed(&c);
    std::os::unix::fs::symlink(Path::new(&later), &ttrpc).unwrap();
    println!(
        "containerd down {:.1} s (the {n} containers' exits within the first {:.1} s)",
        down.elapsed().as_secs_f64(),
        ended.as_secs_f64()
    );
    // Backoff after a long outage may reach tens of seconds before the next try.
    let forwarded = || {
        let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
        let ns = format!("ns={}", c.namespace);
        log.lines()
            .filter(|l| l.contains("event forwarded") && l.contains("topic=/tasks/exit") && l.contains(&ns))
            .count()
    };
    let problems = check(
        &events,
        &list,
        Duration::from_secs(60).max(outage),
        MAX_DELIVERIES_PER_EXIT,
        &format!("containerd down {:.0} s", outage.as_secs_f64()),
    );
    // containerd's own record (debug log of the restarted one): every forward it took, duplicates too.
    println!(
        "containerd.log: {} /tasks/exit forwarded after the restart",
        forwarded()
    );
    drop(events);
    drop(back);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// containerd SIGSTOPped (alive, its sockets accept, nothing answers) for `outage` while `n`
/// containers end: each exit reaches the subscriber that was there all along, and resends of
/// forwards that timed out duplicate no more than Go's.
pub fn frozen_outage(n: usize, outage: Duration) {
    let c = Containerd::start();
    let list = containers(&c, n);
    let events = subscribed(&c);
    let pid = restart::containerd_pid(&c).expect("containerd");
    struct Cont(u32);
    impl Drop for Cont {
        fn drop(&mut self) {
            super::signal(self.0, libc::SIGCONT);
        }
    }
    super::signal(pid, libc::SIGSTOP);
    let cont = Cont(pid);
    let down = Instant::now();
    end_all(&list);
    std::thread::sleep(outage.saturating_sub(down.elapsed()));
    drop(cont);
    println!("containerd stopped for {:.1} s", down.elapsed().as_secs_f64());
    let problems = check(
        &events,
        &list,
        Duration::from_secs(120),
        MAX_DELIVERIES_PER_EXIT,
        &format!("containerd SIGSTOPped {:.0} s", outage.as_secs_f64()),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
