//! Load on one shim daemon (issue 11): many Waits parked on a process, many connections, many
//! execs. Shared by tests/load.rs (the `make test` sizes) and tests/stress.rs (the large ones).
//!
//! The bounds are the event-loop design's: one loop thread, a pool of at most 4 workers for
//! blocking handlers, and a few fixed threads (signals, the reaper's, the relay's), whatever the
//! load. A parked request holds no thread; a connection holds none either.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::procs::{self, Figures};
use super::ttrpc_raw::{id_payload, varint_field, wait_payload, Conn, Response, TASK_SERVICE, TYPE_RESPONSE};

/// Most threads the shim daemon may have, whatever its clients do.
pub const MAX_THREADS: u64 = 8;
/// About how many unwritten answers a connection may owe before the shim stops reading it.
pub const BACKLOG_ANSWERS: usize = 1_000;
/// RSS the shim stays under while a client owes it reading 100,000 answers (a few MiB of backlog
/// per connection; today's shim queues them all).
pub const MAX_RSS_KIB_UNDER_BACKLOG: u64 = 64 << 10;
/// How long a stopped connection's threads and fds may take to go once it closed.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(20);

/// Requests written on one connection, and the answers read so far (by stream id).
pub struct Parked {
    pub conn: Conn,
    pub sids: Vec<u32>,
    pub answers: HashMap<u32, Response>,
}

impl Parked {
    /// `n` Waits on `id`/`exec_id` in one write, then a Connect as a fence: requests on a connection
    /// are read in order, so once the fence is answered the shim has read (and parked, or refused)
    /// every Wait before it. Answers that came before the fence are kept.
    pub fn waits(socket: &Path, id: &str, exec_id: &str, n: usize) -> Result<Parked, String> {
        let mut conn = Conn::connect(socket).map_err(|e| format!("connect: {e}"))?;
        let sids = conn
            .send_many(TASK_SERVICE, "Wait", &wait_payload(id, exec_id), n)
            .map_err(|e| format!("writing {n} Waits: {e}"))?;
        let fence = conn
            .send(TASK_SERVICE, "Connect", &id_payload(id))
            .map_err(|e| format!("writing the fence: {e}"))?;
        let mut p = Parked {
            conn,
            sids,
            answers: HashMap::new(),
        };
        p.read_until(fence, Duration::from_secs(60))?;
        Ok(p)
    }

    /// Reads answers until the one for `sid` came (not kept), or `timeout`.
    fn read_until(&mut self, sid: u32, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let (id, ty, payload) = self
                .conn
                .read_frame()
                .map_err(|e| format!("no answer for stream {sid}: {e}"))?;
            if ty != TYPE_RESPONSE {
                continue;
            }
            if id == sid {
                return Ok(());
            }
            let r = super::ttrpc_raw::decode_response(&payload).ok_or("undecodable answer")?;
            if self.answers.insert(id, r).is_some() {
                return Err(format!("stream {id} answered twice"));
            }
        }
        Err(format!("no answer for stream {sid} within {timeout:?}"))
    }

    /// Reads until every request has its answer or `deadline` (one for all connections, so many
    /// unanswered ones fail in bounded time): the ones still unanswered.
    pub fn read_all(&mut self, deadline: Instant) -> Result<Vec<u32>, String> {
        let _ = self.conn.stream.set_read_timeout(Some(Duration::from_secs(2)));
        while self.answers.len() < self.sids.len() && Instant::now() < deadline {
            match self.conn.read_frame() {
                Ok((id, TYPE_RESPONSE, payload)) => {
                    let r = super::ttrpc_raw::decode_response(&payload).ok_or("undecodable answer")?;
                    if self.answers.insert(id, r).is_some() {
                        return Err(format!("stream {id} answered twice"));
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(format!("reading answers: {e}")),
            }
        }
        Ok(self
            .sids
            .iter()
            .copied()
            .filter(|s| !self.answers.contains_key(s))
            .collect())
    }
}

/// What went wrong with the Waits' answers: refused, wrong exit status, missing (at most 5 shown).
pub fn wrong_wait_answers(parked: &[Parked], status: u64) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut n = 0;
    for p in parked {
        for sid in &p.sids {
            let problem = match p.answers.get(sid) {
                None => Some("no answer".to_string()),
                Some(r) if r.code != 0 => Some(format!("refused: code {} {:?}", r.code, r.message)),
                Some(r) => match varint_field(&r.payload, 1) {
                    Some(s) if s == status => None,
                    other => Some(format!("exit status {other:?}, not {status}")),
                },
            };
            if let Some(p) = problem {
                n += 1;
                if wrong.len() < 5 {
                    wrong.push(format!("stream {sid}: {p}"));
                }
            }
        }
    }
    if n > wrong.len() {
        wrong.push(format!("... {n} wrong in all"));
    }
    wrong
}

/// `n` Waits on `id` spread over `conns` connections, all read by the shim when this returns.
pub fn park_waits(socket: &Path, id: &str, exec_id: &str, n: usize, conns: usize) -> Vec<Parked> {
    (0..conns)
        .map(|i| {
            let per = n / conns + usize::from(i < n % conns);
            Parked::waits(socket, id, exec_id, per).unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect()
}

/// The peak figures over a second (10 looks), with VmSize, as a line to print.
pub fn peak_line(pid: u32) -> (Figures, String) {
    let f = procs::peak(pid, 10, Duration::from_millis(100)).expect("the shim is running");
    let vm = procs::vm_size_kib(pid).unwrap_or(0);
    (f, format!("{f}  VmSize {vm:>8} KiB"))
}

/// Row 1 of issue 11: `n` Waits parked on a running init hold no thread; when it is killed each
/// is answered with 137.
pub fn pending_waits(n: usize) {
    use containerd_shim_rustrunc_v2::protos::shim::shim::KillRequest;
    let shim = super::shim::DirectShim::start();
    shim.run("c", &["sleep", "100000"]);
    let (idle, idle_line) = peak_line(shim.pid);
    println!("0 Waits:     {idle_line}");
    let started = Instant::now();
    let mut parked = park_waits(&shim.socket, "c", "", n, 10);
    let (busy, busy_line) = peak_line(shim.pid);
    println!(
        "{n} Waits: {busy_line}  (parked in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    shim.client()
        .kill(
            super::shim::ctx(),
            &KillRequest {
                id: "c".into(),
                signal: libc::SIGKILL as u32,
                ..Default::default()
            },
        )
        .expect("Kill");
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in parked.iter_mut() {
        p.read_all(deadline).expect("reading the Waits' answers");
    }
    let wrong = wrong_wait_answers(&parked, 137);
    println!(
        "all {n} answered {:.1} s after the parking began; {} wrong",
        started.elapsed().as_secs_f64(),
        wrong.len()
    );
    assert!(
        busy.threads <= MAX_THREADS,
        "{} threads with {n} pending Waits (idle: {} threads); at most {MAX_THREADS}",
        busy.threads,
        idle.threads
    );
    assert!(wrong.is_empty(), "Waits answered wrongly:\n{}", wrong.join("\n"));
}

/// Row 6: `n` execs in one container running at once (Exec + Start + a Wait each, no TTY): threads
/// sampled throughout stay bounded; each exits with its own status.
pub fn concurrent_execs(n: usize) {
    use containerd_shim_rustrunc_v2::protos::shim::shim::{ExecProcessRequest, StartRequest, WaitRequest};
    use std::sync::{Arc, Barrier};
    let shim = super::shim::DirectShim::start();
    shim.run("c", &["sleep", "100000"]);
    let gate = shim.dir.join("c/rootfs/tmp/go");
    let sampler = procs::Sampler::start(shim.pid, Duration::from_millis(20));
    let started = Instant::now();
    // Few client threads each starting its share (a client is not the shim's problem), then one
    // waiting thread per exec: the Waits are all pending at once.
    let client = shim.client();
    let workers = 8;
    let all_started = Arc::new(Barrier::new(workers + 1));
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let client = client.clone();
            let all_started = all_started.clone();
            std::thread::spawn(move || {
                let mut waits = Vec::new();
                let mut errors = Vec::new();
                for i in (w..n).step_by(workers) {
                    let exec_id = format!("e{i}");
                    // Polls once a second for the gate, then exits with its own status.
                    let script = format!("until [ -e /tmp/go ]; do sleep 1; done; exit {}", i % 200);
                    let spec = serde_json::json!({
                        "args": ["sh", "-c", script], "cwd": "/", "env": ["PATH=/bin"],
                        "user": {"uid": 0, "gid": 0}
                    });
                    let mut any = protobuf::well_known_types::any::Any::new();
                    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
                    any.value = spec.to_string().into_bytes();
                    let r = client
                        .exec(
                            super::shim::ctx(),
                            &ExecProcessRequest {
                                id: "c".into(),
                                exec_id: exec_id.clone(),
                                spec: Some(any).into(),
                                ..Default::default()
                            },
                        )
                        .and_then(|_| {
                            client.start(
                                super::shim::ctx(),
                                &StartRequest {
                                    id: "c".into(),
                                    exec_id: exec_id.clone(),
                                    ..Default::default()
                                },
                            )
                        });
                    if let Err(e) = r {
                        errors.push(format!("{exec_id}: {e:?}"));
                        continue;
                    }
                    let client = client.clone();
                    waits.push((
                        i,
                        std::thread::spawn(move || {
                            client.wait(
                                ttrpc::context::with_timeout(300_000_000_000),
                                &WaitRequest {
                                    id: "c".into(),
                                    exec_id,
                                    ..Default::default()
                                },
                            )
                        }),
                    ));
                }
                all_started.wait();
                for (i, h) in waits {
                    match h.join().unwrap() {
                        Ok(w) if w.exit_status == (i % 200) as u32 => {}
                        Ok(w) => errors.push(format!("e{i}: exit status {} not {}", w.exit_status, i % 200)),
                        Err(e) => errors.push(format!("e{i}: Wait: {e:?}")),
                    }
                }
                errors
            })
        })
        .collect();
    all_started.wait();
    let running = started.elapsed();
    // Every exec is running and waited for: the peak is now; then let them all exit.
    let (now, line) = peak_line(shim.pid);
    std::fs::write(&gate, b"").unwrap();
    let errors: Vec<String> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let peak = sampler.stop().unwrap_or(now);
    println!(
        "{n} execs running after {:.1} s: {line}; peak over the run: {peak}; all exited after {:.1} s",
        running.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        errors.is_empty(),
        "{} execs failed:\n{}",
        errors.len(),
        errors.join("\n")
    );
    assert!(
        peak.threads <= MAX_THREADS,
        "{} threads with {n} concurrent execs; at most {MAX_THREADS}",
        peak.threads
    );
}
