//! Checkpoint through runc + CRIU. Where CRIU cannot work (`criu check` fails, as on this machine), the
//! real checkpoint is skipped with the reason, and the failure path is tested instead: a clear error
//! naming CRIU's complaint, its dump log kept in the bundle, the task unharmed.

mod harness;

use harness::events::wait_status;
use harness::{unique_id, Containerd, IMAGE, RUNTIME};

fn criu_works() -> Result<(), String> {
    match std::process::Command::new("criu").arg("check").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr)
            .lines()
            .last()
            .unwrap_or("criu check failed")
            .to_string()),
        Err(e) => Err(format!("criu: {e}")),
    }
}

#[test]
fn checkpoint_a_running_task() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = unique_id("ckpt");
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, &id, "sleep", "1000"]);
    let image = c.dir.join("ckpt-image");
    let work = c.dir.join("ckpt-work");
    let o = c.ctr(&[
        "task",
        "checkpoint",
        "--image-path",
        &image.to_string_lossy(),
        "--work-path",
        &work.to_string_lossy(),
        &id,
    ]);
    match criu_works() {
        Ok(()) => {
            assert!(o.status.success(), "{o:?}");
            assert!(
                std::fs::read_dir(&image).map(|d| d.count() > 0).unwrap_or(false),
                "empty checkpoint image"
            );
        }
        Err(why) => {
            println!("skipped: a real checkpoint: criu check fails here ({why}); testing the failure path");
            assert!(
                !o.status.success(),
                "checkpoint succeeded although criu check fails: {o:?}"
            );
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("checkpoint"), "{err}");
            assert!(
                work.join("dump.log").exists() || err.to_lowercase().contains("criu"),
                "{err}"
            );
            // As the Go shim's: the error ends with where CRIU's log is kept, in the bundle.
            let log = c.bundle(&id).join("criu-dump.log");
            assert!(
                err.contains(&format!("path= {}", log.display())),
                "the error does not name {}: {err}",
                log.display()
            );
            if work.join("dump.log").exists() {
                assert!(log.exists(), "CRIU's dump.log was not kept in the bundle");
            }
        }
    }
    // Either way the task keeps running (checkpoint without --exit leaves it running).
    wait_status(&c, &id, "RUNNING");
    // A stopped task cannot be checkpointed.
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&c, &id, "STOPPED");
    let o = c.ctr(&["task", "checkpoint", "--image-path", &image.to_string_lossy(), &id]);
    assert!(!o.status.success());
    c.ctr_ok(&["task", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}
