//! Output buffering across a containerd outage: containers writing a line every millisecond while
//! containerd is stopped and started again, their fifos read directly (as containerd or `ctr task
//! attach` would) before the stop and after the restart.
//!
//! Writers in the same outage: this shim with its defaults, on pipes and on a terminal (must not
//! stall, every line once and in order), this shim with buffering turned off by the runtime options
//! (`OutputBuffer = 0` in a `--runtime-config-path` TOML: the behaviour without a backlog, stalls
//! once the fifo and the pipe are full), and Debian's Go shim (printed for comparison). Each writer measures how long its longest `echo` took (`$EPOCHREALTIME` before and
//! after, busybox sh) and prints it last.

mod harness;

use std::time::{Duration, Instant};

use harness::events::wait_status;
use harness::fifo::{fifo_of, FifoReader};
use harness::restart::{self, Restarted};
use harness::writer::check;
use harness::{unique_id, Containerd, IMAGE, RUNTIME};

/// `@PAD@` bytes of padding per line, so that the 256 KiB fifo and the 1 MiB pipe fill early in the
/// outage; the last line says the longest write in microseconds. It starts once /go exists: `ctr run
/// -d` reads the fifo itself until it exits, and would take the first lines.
const WRITER: &str = r#"until [ -e /go ]; do usleep 10000; done
pad=$(head -c @PAD@ /dev/zero | tr '\0' x); i=0; max=0
until [ -e /stop ]; do t0=$EPOCHREALTIME; echo "line $i $t0 $pad"; t1=$EPOCHREALTIME
d=$(( ${t1/./} - ${t0/./} )); [ $d -gt $max ] && max=$d; i=$((i+1)); usleep 1000; done
echo "maxstall $max lines $i""#;

const GO_RUNTIME: &str = "io.containerd.runc.v2";

struct Writer {
    label: &'static str,
    id: String,
    /// What was read before the stop, and the reader after the restart.
    before: Vec<u8>,
    reader: Option<FifoReader>,
}

fn outage(outage: Duration, pad: usize, with_go: bool) {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let script = WRITER.replace("@PAD@", &pad.to_string());
    let no_buffer = c.dir.join("no-buffer.toml");
    std::fs::write(
        &no_buffer,
        "# the runtime options of a handler that does not buffer\nOutputBuffer = 0\n",
    )
    .unwrap();
    let no_buffer = no_buffer.to_string_lossy().into_owned();
    // (label, runtime, extra ctr arguments, terminal)
    let mut kinds = vec![
        ("rustrunc", RUNTIME, None, false),
        (
            "rustrunc, OutputBuffer = 0",
            RUNTIME,
            Some(["--runtime-config-path", no_buffer.as_str()]),
            false,
        ),
        ("rustrunc, tty", RUNTIME, None, true),
    ];
    if with_go {
        kinds.push(("Go shim (runc.v2)", GO_RUNTIME, None, false));
    }
    let mut writers: Vec<Writer> = kinds
        .into_iter()
        .map(|(label, runtime, extra, tty)| {
            let id = unique_id("buffered");
            let mut args = vec!["run", "-d", "--runtime", runtime];
            args.extend(extra.iter().flatten());
            args.extend([IMAGE, &id, "sh", "-c", &script]);
            if tty {
                // ctr wants a terminal for -t: script(1) gives it one.
                args.insert(2, "-t");
                let o = harness::run_bounded(c.tty_command(&args), Duration::from_secs(60))
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                assert!(o.status.success(), "{label}: {o:?}");
            } else {
                c.ctr_ok(&args);
            }
            let reader = Some(FifoReader::open(&fifo_of(&c, &id, "stdout")));
            Writer {
                label,
                id,
                before: Vec::new(),
                reader,
            }
        })
        .collect();
    // Writing, and read, before the outage.
    for w in &writers {
        c.ctr_ok(&["task", "exec", "--exec-id", "go", &w.id, "touch", "/go"]);
    }
    for w in &writers {
        let r = w.reader.as_ref().unwrap();
        harness::eventually(Duration::from_secs(60), || (r.len() > 100 * pad).then_some(()))
            .unwrap_or_else(|| panic!("{}: no output", w.label));
    }

    let shim = harness::procs::shim_daemon(&c.address, &writers[0].id).expect("the shim of the first writer");
    let rss = || harness::procs::figures(shim).map_or(0, |f| f.rss_kib);
    let rss_before = rss();
    let old = restart::stop(&c);
    for w in &mut writers {
        w.before = w.reader.take().unwrap().close();
    }
    println!("containerd {old} stopped for {outage:?}");
    std::thread::sleep(outage); // the outage itself, not a wait for a condition
    let rss_outage = rss();
    let r = Restarted::start(&c);
    let back = Instant::now();
    for w in &mut writers {
        w.reader = Some(FifoReader::open(&fifo_of(&c, &w.id, "stdout")));
    }
    for w in &writers {
        // Its status is not checked: the writer sees /stop and exits, and its pid namespace's end
        // may SIGKILL `touch` before it exited (137). The summary line says whether it worked.
        let _ = c.ctr(&["task", "exec", "--exec-id", "stop", &w.id, "touch", "/stop"]);
    }
    let mut results = Vec::new();
    let mut rss_after = 0;
    for w in &mut writers {
        let reader = w.reader.as_ref().unwrap();
        harness::eventually(Duration::from_secs(120), || {
            reader.tail_contains(4096, "maxstall").then_some(())
        })
        .unwrap_or_else(|| panic!("{}: no summary line after the restart", w.label));
        wait_status(&c, &w.id, "STOPPED");
        let after = w.reader.take().unwrap().close();
        let all = [std::mem::take(&mut w.before), after].concat();
        let (stall, lines, problems) = check(&String::from_utf8_lossy(&all));
        println!(
            "{:<28} longest write {:>9.1} ms, {lines} lines ({} MiB), {} problems",
            w.label,
            stall as f64 / 1000.0,
            all.len() >> 20,
            problems.len()
        );
        results.push((w.label, stall, problems));
        if results.len() == 1 {
            rss_after = rss();
        }
        c.ctr_ok(&["task", "rm", &w.id]);
        c.ctr_ok(&["containers", "rm", &w.id]);
    }
    println!("read everything {:?} after the restart", back.elapsed());
    // Memory, not asserted (bench/ is for figures): the backlog's chunks are unmapped once drained.
    println!(
        "shim VmRSS: {rss_before} KiB before the outage, {rss_outage} KiB at its end, {rss_after} KiB after the drain"
    );
    // This shim, pipes and terminal: nothing lost, duplicated or reordered, and no write waited for
    // containerd (the bound is generous for a loaded machine; without the backlog it is the outage).
    for (label, stall, problems) in [&results[0], &results[2]] {
        assert!(problems.is_empty(), "{label}: {problems:?}");
        assert!(
            *stall < 1_000_000,
            "{label}: a write stalled {} ms while containerd was away",
            stall / 1000
        );
    }
    // Without a backlog (the runtime options turned it off) nothing is lost either, but the writer
    // waits.
    let (_, stall_off, problems) = &results[1];
    assert!(problems.is_empty(), "OutputBuffer = 0: {problems:?}");
    assert!(
        *stall_off >= outage.as_micros() as u64 / 4,
        "OutputBuffer = 0 did not turn buffering off: longest write {} ms",
        stall_off / 1000
    );
    // The shim said what it held (after the restart: during the outage its log has no reader).
    let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
    let said = format!(
        "{}/{} stdout: destination took the output again",
        c.namespace, writers[0].id
    );
    let line = log.lines().find(|l| l.contains(&said));
    assert!(line.is_some(), "no {said:?} in the log:\n{}", c.log_tail(30));
    println!("{}", line.unwrap());
    drop(r);
}

#[test]
fn a_5s_containerd_outage_stalls_no_write_and_loses_no_line() {
    outage(Duration::from_secs(5), 1000, false);
}

#[test]
#[ignore = "stress: a 30 s outage (make stress)"]
fn a_30s_containerd_outage_stalls_no_write_and_loses_no_line_go_shim_compared() {
    outage(Duration::from_secs(30), 200, true);
}

/// The last `n` bytes of a file, as text.
fn file_tail(p: &std::path::Path, n: usize) -> String {
    let d = std::fs::read(p).unwrap_or_default();
    String::from_utf8_lossy(&d[d.len().saturating_sub(n)..]).into_owned()
}

/// A `binary://` logger that reads nothing for `pause` after saying it is ready: with a backlog the
/// writer does not notice; without (the annotation turns it off, and the logger then reads the
/// container's pipes itself, as with the Go shim) it waits for the logger.
#[test]
fn a_logger_that_stops_reading_stalls_no_write() {
    if harness::skip_if_unsupported() {
        return;
    }
    let pause = 5;
    let c = Containerd::start();
    let logger = c.dir.join("slow-logger.sh");
    // fd 3 = stdout, fd 4 = stderr, fd 5 = ready (closing it says ready).
    std::fs::write(
        &logger,
        "#!/bin/sh\nexec 5>&-\nsleep $4\ncat <&3 > \"$2\" &\ncat <&4 > /dev/null &\nwait\n",
    )
    .unwrap();
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = WRITER.replace("@PAD@", "1000");
    let mut runs = Vec::new();
    let no_buffer = "io.containerd.rustrunc.v2.output-buffer=0";
    for (label, annotation) in [("rustrunc", None), ("rustrunc, output-buffer=0", Some(no_buffer))] {
        let id = unique_id("logged");
        let out = c.dir.join(format!("{id}.out"));
        let uri = format!("binary://{}?out={}&pause={pause}", logger.display(), out.display());
        let mut args = vec!["run", "-d", "--runtime", RUNTIME, "--log-uri", &uri];
        if let Some(a) = annotation {
            args.extend(["--annotation", a]);
        }
        args.extend([IMAGE, &id, "sh", "-c", &script]);
        c.ctr_ok(&args);
        c.ctr_ok(&["task", "exec", "--exec-id", "go", &id, "touch", "/go"]);
        runs.push((label, id, out));
    }
    // The loggers read again once they wrote something.
    for (label, _, out) in &runs {
        harness::eventually(Duration::from_secs(60), || {
            (std::fs::metadata(out).map(|m| m.len()).unwrap_or(0) > 0).then_some(())
        })
        .unwrap_or_else(|| panic!("{label}: the logger never wrote"));
    }
    let mut results = Vec::new();
    for (label, id, out) in &runs {
        // (Not checked: see `outage`.)
        let _ = c.ctr(&["task", "exec", "--exec-id", "stop", id, "touch", "/stop"]);
        harness::eventually(Duration::from_secs(120), || {
            file_tail(out, 4096).contains("maxstall").then_some(())
        })
        .unwrap_or_else(|| panic!("{label}: no summary line"));
        wait_status(&c, id, "STOPPED");
        let (stall, lines, problems) = check(&String::from_utf8_lossy(&std::fs::read(out).unwrap()));
        println!(
            "logger paused {pause} s: {label:<28} longest write {:>9.1} ms, {lines} lines, {} problems",
            stall as f64 / 1000.0,
            problems.len()
        );
        results.push((stall, problems));
        c.ctr_ok(&["task", "rm", id]);
        c.ctr_ok(&["containers", "rm", id]);
    }
    assert!(results[0].1.is_empty(), "rustrunc: {:?}", results[0].1);
    assert!(
        results[0].0 < 1_000_000,
        "rustrunc: a write stalled {} ms behind the logger",
        results[0].0 / 1000
    );
    assert!(results[1].1.is_empty(), "output-buffer=0: {:?}", results[1].1);
    assert!(
        results[1].0 >= pause * 1_000_000 / 4,
        "output-buffer=0 did not turn buffering off: longest write {} ms",
        results[1].0 / 1000
    );
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

/// A malformed annotation fails Create with an error naming it, and leaves nothing behind.
#[test]
fn a_bad_output_annotation_is_a_clear_error() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    for (annotation, want) in [
        (
            "io.containerd.rustrunc.v2.output-buffer=lots",
            "io.containerd.rustrunc.v2.output-buffer: size \"lots\"",
        ),
        (
            "io.containerd.rustrunc.v2.output-policy=oldest",
            "io.containerd.rustrunc.v2.output-policy: output policy \"oldest\"",
        ),
    ] {
        let id = unique_id("badann");
        let o = c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            annotation,
            IMAGE,
            &id,
            "true",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{annotation}: {o:?}");
        let _ = c.ctr(&["containers", "rm", &id]);
    }
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

/// A writer as fast as the shell goes (fixed-width lines), for the caps: starts at /go, stops at
/// /stop and says how many lines it wrote.
const FAST_WRITER: &str = r#"until [ -e /go ]; do usleep 10000; done
pad=$(head -c 100 /dev/zero | tr '\0' x); i=0
until [ -e /stop ]; do printf 'line %08d %s\n' $i $pad; i=$((i+1)); done
echo "done lines $i""#;

/// What FAST_WRITER writes for `lines` lines.
fn fast_writer_output(lines: u64) -> Vec<u8> {
    let pad = "x".repeat(100);
    let mut out = Vec::new();
    for i in 0..lines {
        out.extend_from_slice(format!("line {i:08} {pad}\n").as_bytes());
    }
    out.extend_from_slice(format!("done lines {lines}\n").as_bytes());
    out
}

/// The lines count of FAST_WRITER's last line.
fn fast_writer_lines(got: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(&got[got.len().saturating_sub(64)..]).into_owned();
    text.rsplit("done lines ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no summary line at the end: {text:?}"))
}

/// Caps hold through an outage with a writer far faster than any cap: with `block` the writer waits
/// at the cap and nothing is lost; with `drop` the shim's log counts exactly the bytes missing, and
/// they are one piece (the newest bytes while the backlog was full).
#[test]
fn at_the_cap_block_loses_nothing_and_drop_counts_what_it_dropped() {
    if harness::skip_if_unsupported() {
        return;
    }
    struct Run {
        policy: &'static str,
        id: String,
        shim: u32,
        reader: Option<FifoReader>,
        got: Vec<u8>,
    }
    let c = Containerd::start();
    let mut runs = Vec::new();
    for policy in ["block", "drop"] {
        let id = unique_id(&format!("cap-{policy}"));
        let policy_annotation = format!("io.containerd.rustrunc.v2.output-policy={policy}");
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--annotation",
            "io.containerd.rustrunc.v2.output-buffer=2Mi",
            "--annotation",
            &policy_annotation,
            IMAGE,
            &id,
            "sh",
            "-c",
            FAST_WRITER,
        ]);
        let reader = Some(FifoReader::open(&fifo_of(&c, &id, "stdout")));
        c.ctr_ok(&["task", "exec", "--exec-id", "go", &id, "touch", "/go"]);
        let shim = harness::procs::shim_daemon(&c.address, &id).expect("its shim");
        runs.push(Run {
            policy,
            id,
            shim,
            reader,
            got: Vec::new(),
        });
    }
    for r in &runs {
        let reader = r.reader.as_ref().unwrap();
        harness::eventually(Duration::from_secs(60), || (reader.len() > 1 << 20).then_some(()))
            .unwrap_or_else(|| panic!("{}: no output", r.policy));
    }
    let rss = |pid| harness::procs::figures(pid).map_or(0, |f| f.rss_kib);
    let before: Vec<u64> = runs.iter().map(|r| rss(r.shim)).collect();
    restart::stop(&c);
    for r in &mut runs {
        r.got = r.reader.take().unwrap().close();
    }
    std::thread::sleep(Duration::from_secs(5)); // the outage itself, not a wait for a condition
    let during: Vec<u64> = runs.iter().map(|r| rss(r.shim)).collect();
    let restarted = Restarted::start(&c);
    for r in &mut runs {
        r.reader = Some(FifoReader::open(&fifo_of(&c, &r.id, "stdout")));
    }
    for r in &runs {
        // (Not checked: see `outage`.)
        let _ = c.ctr(&["task", "exec", "--exec-id", "stop", &r.id, "touch", "/stop"]);
    }
    for r in &mut runs {
        let reader = r.reader.as_ref().unwrap();
        harness::eventually(Duration::from_secs(60), || {
            reader.tail_contains(64, "done lines").then_some(())
        })
        .unwrap_or_else(|| panic!("{}: no summary line after the restart", r.policy));
        wait_status(&c, &r.id, "STOPPED");
        r.got.extend(r.reader.take().unwrap().close());
    }
    for (i, r) in runs.iter().enumerate() {
        // The shim logs a backlog's end after its last drops; containerd copies it into its log.
        let ended = format!("{}/{} stdout: destination took the output again", c.namespace, r.id);
        let log = harness::eventually(Duration::from_secs(30), || {
            let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
            log.contains(&ended).then_some(log)
        })
        .unwrap_or_else(|| panic!("{}: no {ended:?} in the log", r.policy));
        let dropped_at = format!("{}/{} stdout: dropped ", c.namespace, r.id);
        let dropped: usize = log
            .lines()
            .filter_map(|l| l.split(&dropped_at).nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
            .sum();
        let want = fast_writer_output(fast_writer_lines(&r.got));
        println!(
            "cap 2 MiB, policy {}: the writer wrote {} KiB, {} KiB arrived, the log says {dropped} bytes dropped; shim VmRSS {} KiB before the outage, {} KiB at its end",
            r.policy,
            want.len() >> 10,
            r.got.len() >> 10,
            before[i],
            during[i]
        );
        let missing = want.len() - r.got.len().min(want.len());
        assert_eq!(
            dropped, missing,
            "{}: the count in the log is not the bytes missing",
            r.policy
        );
        if r.policy == "block" {
            assert!(r.got == want, "block: bytes lost or reordered");
        } else {
            assert!(dropped > 0, "drop: nothing dropped, the cap did not hold");
            // What arrived is what was written with whole runs cut out (one per time the backlog
            // hit its cap: a reader that stalls again on a loaded host makes a second one), in
            // order, the cuts adding up to the count in the log.
            let gaps = gaps(&r.got, &want).unwrap_or_else(|| panic!("drop: output reordered or altered"));
            assert_eq!(gaps.iter().sum::<usize>(), dropped, "drop: gaps {gaps:?}");
            println!("drop: {} gap(s): {gaps:?}", gaps.len());
        }
        c.ctr_ok(&["task", "rm", &r.id]);
        c.ctr_ok(&["containers", "rm", &r.id]);
    }
    drop(restarted);
}

/// The lengths of the runs of `want` missing from `got`, if `got` is `want` with runs cut out (the
/// writer's lines are numbered, so a 64-byte probe finds where `got` goes on).
fn gaps(got: &[u8], want: &[u8]) -> Option<Vec<usize>> {
    let (mut g, mut w, mut gaps) = (0, 0, Vec::new());
    while g < got.len() {
        let same = got[g..].iter().zip(&want[w..]).take_while(|(a, b)| a == b).count();
        g += same;
        w += same;
        if g == got.len() {
            break;
        }
        let probe = &got[g..(g + 64).min(got.len())];
        let skip = want[w..].windows(probe.len()).position(|x| x == probe)?;
        gaps.push(skip);
        w += skip;
    }
    if w < want.len() {
        gaps.push(want.len() - w);
    }
    Some(gaps)
}
