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

/// The leftover scan counts a listener-less shim socket as this test's only when it is the socket
/// of an id this containerd was given; another containerd's (a test running beside it) is not.
#[test]
fn leftover_sockets_are_scoped_to_this_containerds_ids() {
    if harness::skip_if_unsupported() {
        return;
    }
    let c = Containerd::start();
    let other = Containerd::start();
    let id = harness::unique_id("sock");
    // A container id this containerd is given (the command fails: there is no such task).
    let _ = c.ctr(&["task", "rm", &id]);
    let path = |c: &Containerd| {
        containerd_shim_rustrunc_v2::bootstrap::socket_path("/run/containerd/s", &c.address, &c.namespace, &id)
    };
    // What a shim killed before it could remove its socket leaves: a socket nothing listens on.
    let dead = |p: &str| {
        std::fs::create_dir_all("/run/containerd/s").unwrap();
        drop(std::os::unix::net::UnixListener::bind(p).unwrap());
        Removed(p.to_string())
    };
    let _ours = dead(&path(&c));
    let _theirs = dead(&path(&other));
    let left = c.leftovers_now();
    assert_eq!(left.len(), 1, "{left:#?}");
    assert!(left[0].contains(&path(&c)), "{left:#?}");
    assert_eq!(
        other.leftovers_now(),
        Vec::<String>::new(),
        "the other's id was never given to it"
    );
}

/// Removes the socket file when dropped, also when the test fails.
struct Removed(String);
impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
