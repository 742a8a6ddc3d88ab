//! Checks the test harness itself with Debian's Go shim
//! (io.containerd.runc.v2, containerd's default runtime), independently of
//! our shim: a private containerd starts, the busybox image imports and
//! runs, and a full `ctr run --rm` lifecycle leaves nothing behind.

mod harness;

use harness::{Containerd, IMAGE};

#[test]
fn default_runtime_echo_hello_leaves_nothing() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let id = harness::unique_id("smoke");
    // No --runtime: containerd's default, the Go io.containerd.runc.v2 shim.
    let out = c.ctr_ok(&["run", "--rm", IMAGE, &id, "echo", "hello"]);
    assert_eq!(out, "hello\n");
    assert_eq!(
        c.leftovers(),
        Vec::<String>::new(),
        "containerd.log:\n{}",
        c.log_tail(40)
    );
}
