//! Log URIs: `binary://` (a logging binary reads the container's stdout and stderr itself) and
//! `file://` (the shim appends both streams to a file).

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use harness::{unique_id, Containerd, IMAGE, RUNTIME};

fn wait_for_file(p: &std::path::Path, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = std::fs::read_to_string(p).unwrap_or_default();
        if s.contains(want) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn binary_logger_gets_stdout_and_stderr() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let logger = c.dir.join("logger.sh");
    let out = c.dir.join("logged");
    // fd 3 = stdout, fd 4 = stderr, fd 5 = ready (closing it says ready).
    std::fs::write(
        &logger,
        "#!/bin/sh\nout=$2\necho \"$CONTAINER_NAMESPACE/$CONTAINER_ID\" > \"$out.env\"\nexec 5>&-\ncat <&3 > \"$out.stdout\" &\ncat <&4 > \"$out.stderr\" &\nwait\n",
    )
    .unwrap();
    std::fs::set_permissions(&logger, std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = unique_id("binlog");
    let uri = format!("binary://{}?out={}", logger.display(), out.display());
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--log-uri",
        &uri,
        IMAGE,
        &id,
        "sh",
        "-c",
        "echo to-out; echo to-err >&2",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert!(o.stdout.is_empty(), "output went to the logger, not ctr: {o:?}");
    let p = |ext: &str| out.with_extension(ext);
    assert_eq!(wait_for_file(&p("stdout"), "to-out"), "to-out\n");
    assert_eq!(wait_for_file(&p("stderr"), "to-err"), "to-err\n");
    assert_eq!(
        std::fs::read_to_string(p("env")).unwrap().trim(),
        format!("{}/{id}", c.namespace)
    );
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn file_log_uri_appends_both_streams() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let file = c.dir.join("logs/container.log");
    let id = unique_id("filelog");
    let uri = format!("file://{}", file.display());
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--log-uri",
        &uri,
        IMAGE,
        &id,
        "sh",
        "-c",
        "echo one; sleep 0.1; echo two >&2",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "one\ntwo\n");
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn a_logger_that_cannot_start_is_a_clear_error() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("nologger");
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--log-uri",
        "binary:///no/such/logger",
        IMAGE,
        &id,
        "true",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/no/such/logger"), "{err}");
    let _ = c.ctr(&["containers", "rm", &id]);
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}
