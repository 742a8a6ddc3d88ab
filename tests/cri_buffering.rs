//! Output buffering through Kubernetes CRI: pods whose container writes a timestamped line every
//! millisecond and measures its longest write, while containerd (with CRI) is stopped and started
//! again. CRI reopens the fifos of running containers when it comes back; the container's CRI log
//! file must then hold every line exactly once, in order, and no write may have waited for
//! containerd.
//!
//! Three pods in the same outage, on containerd 1.6 (/usr/bin): one on this shim with its defaults,
//! one on this shim with the pod annotation `io.containerd.rustrunc.v2.output-buffer: "0"` (which
//! the handler's `pod_annotations` lets through: no backlog, so the writer waits as with the Go
//! shim; this also shows the annotation reaching the shim), and one on the `runc` handler (Debian's
//! Go shim), printed for comparison.
//!
//! Run: `cargo test --test cri_buffering -- --test-threads=1 --nocapture` (root); the 30 s outage is
//! `#[ignore]` (make stress).

mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use harness::cri::{CriClient, CriContainerd, Release, BUSYBOX_IMAGE, HANDLER, PAUSE_IMAGE};
use harness::writer::check;

/// As tests/buffering.rs's writer: `@PAD@` bytes of padding per line fill the fifo and the pipe
/// early in the outage; the last line says the longest write in microseconds.
const WRITER: &str = r#"pad=$(head -c @PAD@ /dev/zero | tr '\0' x); i=0; max=0
until [ -e /stop ]; do t0=$EPOCHREALTIME; echo "line $i $t0 $pad"; t1=$EPOCHREALTIME
d=$(( ${t1/./} - ${t0/./} )); [ $d -gt $max ] && max=$d; i=$((i+1)); usleep 1000; done
echo "maxstall $max lines $i""#;

const NO_BUFFER: (&str, &str) = ("io.containerd.rustrunc.v2.output-buffer", "0");

fn ok(cri: &mut CriClient, c: &CriContainerd, method: &str, request: Value) -> Value {
    cri.runtime(method, request).unwrap_or_else(|e| {
        panic!(
            "{method}: {} {}\n--- containerd.log tail:\n{}",
            e.code,
            e.details,
            c.log_tail(40)
        )
    })
}

/// The text of a CRI log file (`<time> <stream> <F|P> <text>` lines), partial lines joined.
fn cri_log_text(path: &Path) -> String {
    let log = fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    for l in log.lines() {
        let f: Vec<&str> = l.splitn(4, ' ').collect();
        if f.len() < 3 {
            continue;
        }
        out.push_str(f.get(3).copied().unwrap_or(""));
        if f[2] == "F" {
            out.push('\n');
        }
    }
    out
}

struct Pod {
    label: &'static str,
    id: String,
    container: String,
    log: PathBuf,
}

fn outage(outage: Duration, pad: usize) {
    let release = Release::system();
    let Some((py, _one_at_a_time)) = harness::cri::prepare(&release) else {
        return;
    };
    let mut c = CriContainerd::start(&release);
    let mut cri = c.client(&py);
    cri.wait_image(PAUSE_IMAGE);
    cri.wait_image(BUSYBOX_IMAGE);
    let script = WRITER.replace("@PAD@", &pad.to_string());
    let kinds = [
        ("rustrunc", HANDLER, None),
        ("rustrunc, pod output-buffer=0", HANDLER, Some(NO_BUFFER)),
        ("Go shim (runc handler)", "runc", None),
    ];
    let mut pods = Vec::new();
    for (n, (label, handler, annotation)) in kinds.into_iter().enumerate() {
        let name = format!("writer-{n}");
        let log_dir = c.dir.join("pods").join(&name);
        fs::create_dir_all(&log_dir).unwrap(); // the kubelet creates it
        let annotations: Value = annotation.map_or(json!({}), |(k, v)| json!({ k: v }));
        let namespaces = json!({"network": "NODE", "pid": "CONTAINER", "ipc": "POD"});
        let sandbox_config = json!({
            "metadata": {"name": name, "uid": format!("uid-{n}"), "namespace": "default", "attempt": 0},
            "log_directory": log_dir,
            "annotations": annotations,
            "linux": {
                "cgroup_parent": c.cgroup_parent,
                "security_context": {"namespace_options": namespaces}
            }
        });
        let run = ok(
            &mut cri,
            &c,
            "RunPodSandbox",
            json!({"config": sandbox_config, "runtime_handler": handler}),
        );
        let id = run["pod_sandbox_id"].as_str().expect("pod_sandbox_id").to_string();
        let created = ok(
            &mut cri,
            &c,
            "CreateContainer",
            json!({
                "pod_sandbox_id": id,
                "config": {
                    "metadata": {"name": "writer", "attempt": 0},
                    "image": {"image": BUSYBOX_IMAGE},
                    "command": ["sh", "-c", script],
                    "log_path": "writer/0.log",
                    "linux": {"security_context": {"namespace_options": namespaces}}
                },
                "sandbox_config": sandbox_config,
            }),
        );
        let container = created["container_id"].as_str().expect("container_id").to_string();
        ok(&mut cri, &c, "StartContainer", json!({"container_id": container}));
        pods.push(Pod {
            label,
            id,
            container,
            log: log_dir.join("writer/0.log"),
        });
    }
    for p in &pods {
        let deadline = Instant::now() + Duration::from_secs(60);
        while fs::metadata(&p.log).map_or(0, |m| m.len()) < 100 * pad as u64 {
            assert!(Instant::now() < deadline, "{}: no output in its CRI log", p.label);
            thread::sleep(Duration::from_millis(50));
        }
    }

    drop(cri);
    c.restart(outage);
    println!("containerd (CRI) stopped for {outage:?} and started again");
    let mut cri = c.client(&py);
    for p in &pods {
        // The exec's status is not checked: the writer sees /stop and exits, and its pid
        // namespace's end may SIGKILL `touch` first (137). The summary line says whether it worked.
        let _ = cri.runtime(
            "ExecSync",
            json!({"container_id": p.container, "cmd": ["touch", "/stop"], "timeout": 30}),
        );
    }
    let mut results = Vec::new();
    for p in &pods {
        let deadline = Instant::now() + Duration::from_secs(120);
        let text = loop {
            let text = cri_log_text(&p.log);
            if text.contains("maxstall") {
                break text;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no summary line in its CRI log after the restart\n--- containerd.log tail:\n{}",
                p.label,
                c.log_tail(40)
            );
            thread::sleep(Duration::from_millis(100));
        };
        let (stall, lines, problems) = check(&text);
        println!(
            "CRI, {outage:?} outage: {:<32} longest write {:>9.1} ms, {lines} lines in the CRI log, {} problems",
            p.label,
            stall as f64 / 1000.0,
            problems.len()
        );
        results.push((stall, problems));
    }
    let sockets: Vec<PathBuf> = pods[..2].iter().map(|p| c.shim_socket(&p.id)).collect();
    for p in &pods {
        ok(&mut cri, &c, "StopPodSandbox", json!({"pod_sandbox_id": p.id}));
        ok(&mut cri, &c, "RemovePodSandbox", json!({"pod_sandbox_id": p.id}));
    }
    assert!(results[0].1.is_empty(), "rustrunc: {:?}", results[0].1);
    assert!(
        results[0].0 < 1_000_000,
        "rustrunc: a write stalled {} ms while containerd was away",
        results[0].0 / 1000
    );
    assert!(results[1].1.is_empty(), "output-buffer=0: {:?}", results[1].1);
    assert!(
        results[1].0 >= outage.as_micros() as u64 / 4,
        "the pod annotation did not reach the shim: longest write {} ms",
        results[1].0 / 1000
    );
    let leftovers = c.leftovers(&sockets);
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_5s_containerd_outage_through_cri() {
    outage(Duration::from_secs(5), 1000);
}

#[test]
#[ignore = "stress: a 30 s outage (make stress)"]
fn a_30s_containerd_outage_through_cri_go_shim_compared() {
    outage(Duration::from_secs(30), 200);
}
