//! Bad input, from the command line and over ttrpc: each gets a clear error naming the cause, and
//! leaves nothing behind (no socket, daemon, mount, runc state, child process, fd growth in the
//! shim). The ttrpc cases talk to a shim daemon started by hand (`harness::shim::DirectShim`),
//! without containerd.

mod harness;

use std::path::Path;
use std::time::Duration;

use containerd_shim_rustrunc_v2::bootstrap::{socket_path, SOCKET_DIR};
use containerd_shim_rustrunc_v2::protos::shim::mount::Mount;
use containerd_shim_rustrunc_v2::protos::shim::oci::Options as RuncOptions;
use containerd_shim_rustrunc_v2::protos::shim::shim::*;
use harness::procs;
use harness::shim::{busybox_rootfs, ctx, run_shim, spec_json, DirectShim};
use harness::ttrpc_raw::{self, TASK_SERVICE};
use protobuf::well_known_types::any::Any;
use protobuf::Message;

/// (code, message) of a failed RPC; panics on success.
fn rpc_err<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn any(type_url: &str, value: Vec<u8>) -> Any {
    let mut a = Any::new();
    a.type_url = type_url.into();
    a.value = value;
    a
}

fn create_req(id: &str, bundle: &Path) -> CreateTaskRequest {
    CreateTaskRequest {
        id: id.into(),
        bundle: bundle.to_string_lossy().into_owned(),
        ..Default::default()
    }
}

// ---- the command line ----------------------------------------------------------------------------

#[test]
fn start_and_delete_refuse_ids_that_escape_or_overflow() {
    if harness::skip_if_unsupported() {
        return;
    }
    let dir = std::env::temp_dir().join(harness::unique_id("rr-badid"));
    std::fs::create_dir_all(&dir).unwrap();
    let address = dir.join("fake.sock").to_string_lossy().into_owned();
    let long = "x".repeat(256);
    // (flag, value, what the error must say). NUL cannot travel in argv at all (execve takes C
    // strings): it is covered over ttrpc below.
    let cases: &[(&str, &str, &str)] = &[
        ("-id", "a/b", "contains '/'"),
        ("-id", "../x", "'/'"),
        ("-id", "..", "contains '..'"),
        ("-id", "x..y", "contains '..'"),
        ("-id", &long, "longer than 255 bytes"),
        ("-id", "-rf", "starts with '-'"),
        ("-id", "", "empty"),
        ("-namespace", "../etc", "invalid namespace"),
        ("-namespace", &long, "longer than 255 bytes"),
    ];
    for action in ["start", "delete"] {
        for (flag, value, why) in cases {
            let (ns, id) = match *flag {
                "-id" => ("rr-badid", *value),
                _ => (*value, "ok"),
            };
            let o = run_shim(
                &[
                    "-namespace",
                    ns,
                    "-address",
                    &address,
                    "-id",
                    id,
                    "-bundle",
                    &dir.to_string_lossy(),
                    action,
                ],
                &dir,
                b"",
                &[("TTRPC_ADDRESS", "/nonexistent.ttrpc")],
            );
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{action} {flag} {value:?}: {o:?}");
            assert!(
                err.contains(why),
                "{action} {flag} {value:?}: stderr {err:?} does not say {why:?}"
            );
            assert!(o.stdout.is_empty(), "{action} {flag} {value:?}: stdout {:?}", o.stdout);
            // Nothing spawned, nothing bound.
            assert!(
                !Path::new(&socket_path(SOCKET_DIR, &address, ns, id)).exists(),
                "{action} {flag} {value:?} left a socket"
            );
        }
    }
    assert_eq!(procs::shims_of(&address), Vec::<u32>::new(), "a daemon was started");
    assert_eq!(
        procs::entries(&dir),
        Vec::<std::path::PathBuf>::new(),
        "files written into the bundle"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn start_rejects_garbage_on_stdin_and_leaves_nothing() {
    if harness::skip_if_unsupported() {
        return;
    }
    let dir = std::env::temp_dir().join(harness::unique_id("rr-stdin"));
    std::fs::create_dir_all(&dir).unwrap();
    let address = dir.join("fake.sock").to_string_lossy().into_owned();
    let ns = "rr-stdin";
    let id = harness::unique_id("c");
    let toml = |body: &str| {
        let mut o = containerd_shim_rustrunc_v2::protos::shim::api::Options::new();
        o.config_body = body.as_bytes().to_vec();
        any("runtimeoptions.v1.Options", o.write_to_bytes().unwrap())
            .write_to_bytes()
            .unwrap()
    };
    let missing_file = {
        let mut o = containerd_shim_rustrunc_v2::protos::shim::api::Options::new();
        o.config_path = "/no/such/runtime.toml".into();
        any("runtimeoptions.v1.Options", o.write_to_bytes().unwrap())
            .write_to_bytes()
            .unwrap()
    };
    let mut noise = vec![0u8; 1 << 20];
    let mut x: u64 = 0x2545f4914f6cdd1d;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    noise[0] = 0xff; // an invalid protobuf key, whatever follows
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"\xff\xff\xff\xff".to_vec(),
            "neither BootstrapParams nor a runtime options Any",
        ),
        (
            "1 MiB of noise",
            noise,
            "neither BootstrapParams nor a runtime options Any",
        ),
        ("text", b"BinaryName = \"crun\"\n".to_vec(), "stdin"),
        (
            "unknown options type",
            any("foo.Bar", b"x".to_vec()).write_to_bytes().unwrap(),
            "unsupported runtime options type \"foo.Bar\"",
        ),
        (
            "undecodable runc options",
            any("containerd.runc.v1.Options", vec![0xff, 0xff, 0xff])
                .write_to_bytes()
                .unwrap(),
            "decoding containerd.runc.v1.Options",
        ),
        (
            "bad TOML value",
            toml("SystemdCgroup = maybe"),
            "expected true or false",
        ),
        (
            "unterminated TOML string",
            toml("BinaryName = \"crun"),
            "unterminated string",
        ),
        ("missing TOML file", missing_file, "/no/such/runtime.toml"),
    ];
    let before = procs::sockets_in(Path::new(SOCKET_DIR));
    for (what, input, why) in &cases {
        let o = run_shim(
            &["-namespace", ns, "-address", &address, "-id", &id, "start"],
            &dir,
            input,
            &[("TTRPC_ADDRESS", "/nonexistent.ttrpc")],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {o:?}");
        assert!(err.contains(why), "{what}: stderr {err:?} does not say {why:?}");
        assert!(
            o.stdout.is_empty(),
            "{what}: printed an address {:?}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert!(
            !Path::new(&socket_path(SOCKET_DIR, &address, ns, &id)).exists(),
            "{what}: socket left"
        );
    }
    let after = procs::sockets_in(Path::new(SOCKET_DIR));
    let new: Vec<_> = after.iter().filter(|s| !before.contains(s)).collect();
    assert!(
        !new.contains(&&std::path::PathBuf::from(socket_path(SOCKET_DIR, &address, ns, &id))),
        "{new:?}"
    );
    assert_eq!(procs::shims_of(&address), Vec::<u32>::new(), "a daemon was started");
    assert!(!dir.join("address").exists(), "address file written for a failed start");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- ttrpc: ids, bundles, mounts, options ------------------------------------------------------

#[test]
fn ttrpc_ids_with_slash_dots_nul_or_overlong_are_refused() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let client = shim.client();
    let bundle = shim.bundle("ok", Some(&spec_json(&shim.namespace, "ok", &["sleep", "1000"])));
    busybox_rootfs(&bundle);
    let before = steady_figures(&shim);
    let long = "y".repeat(256);
    let bad_ids = ["a/b", "..", "../x", "x\0y", long.as_str(), "", "-x"];
    for id in bad_ids {
        let (code, msg) = rpc_err(client.create(ctx(), &create_req(id, &bundle)));
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "Create {id:?}: {msg}");
        assert!(msg.contains("invalid container id"), "Create {id:?}: {msg}");
        // Requests for such a container find nothing, and say so.
        let (code, msg) = rpc_err(client.state(
            ctx(),
            &StateRequest {
                id: id.into(),
                ..Default::default()
            },
        ));
        assert_eq!(code, ttrpc::Code::NOT_FOUND, "State {id:?}: {msg}");
        let (code, _) = rpc_err(client.kill(
            ctx(),
            &KillRequest {
                id: id.into(),
                signal: 9,
                ..Default::default()
            },
        ));
        assert_eq!(code, ttrpc::Code::NOT_FOUND, "Kill {id:?}");
        let (code, _) = rpc_err(client.delete(
            ctx(),
            &DeleteRequest {
                id: id.into(),
                ..Default::default()
            },
        ));
        assert_eq!(code, ttrpc::Code::NOT_FOUND, "Delete {id:?}");
    }
    assert_eq!(shim.residue(), Vec::<String>::new());

    // A real container, to aim bad exec ids at.
    let pid = client.create(ctx(), &create_req("ok", &bundle)).expect("Create ok").pid;
    client
        .start(
            ctx(),
            &StartRequest {
                id: "ok".into(),
                ..Default::default()
            },
        )
        .expect("Start ok");
    let spec = any(
        "types.containerd.io/opencontainers/runtime-spec/1/Process",
        br#"{"args":["true"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}}"#.to_vec(),
    );
    for exec_id in bad_ids {
        let (code, msg) = rpc_err(client.exec(
            ctx(),
            &ExecProcessRequest {
                id: "ok".into(),
                exec_id: exec_id.into(),
                spec: Some(spec.clone()).into(),
                ..Default::default()
            },
        ));
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "Exec {exec_id:?}: {msg}");
        assert!(msg.contains("invalid exec id"), "Exec {exec_id:?}: {msg}");
        if exec_id.is_empty() {
            continue; // Start with no exec id starts init (already running: FailedPrecondition)
        }
        let (code, _) = rpc_err(client.start(
            ctx(),
            &StartRequest {
                id: "ok".into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        ));
        assert_eq!(code, ttrpc::Code::NOT_FOUND, "Start exec {exec_id:?}");
    }
    // An exec spec that is not JSON, or not an object.
    for (what, value) in [("not JSON", b"{nope".to_vec()), ("not an object", b"[1,2]".to_vec())] {
        let (code, msg) = rpc_err(client.exec(
            ctx(),
            &ExecProcessRequest {
                id: "ok".into(),
                exec_id: "e1".into(),
                spec: Some(any("x", value)).into(),
                ..Default::default()
            },
        ));
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{what}: {msg}");
        assert!(msg.contains("exec process spec"), "{what}: {msg}");
    }
    assert!(bundle
        .read_dir()
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().ends_with(".pid") || e.file_name() == "init.pid"));
    client
        .kill(
            ctx(),
            &KillRequest {
                id: "ok".into(),
                signal: 9,
                ..Default::default()
            },
        )
        .expect("Kill ok");
    let w = client
        .wait(
            ctx(),
            &WaitRequest {
                id: "ok".into(),
                ..Default::default()
            },
        )
        .expect("Wait ok");
    assert_eq!(w.exit_status, 137);
    client
        .delete(
            ctx(),
            &DeleteRequest {
                id: "ok".into(),
                ..Default::default()
            },
        )
        .expect("Delete ok");
    assert!(!procs::alive(pid));
    assert_eq!(shim.residue(), Vec::<String>::new());
    drop(client);
    assert_no_fd_growth(&shim, before);
}

/// Waits (≤ 20 s: the shim tears a closed connection's threads down asynchronously, slowly on a
/// loaded machine) for the shim's fds and threads to come back to `before`; returns the last figures.
/// The shim's figures once two readings 300 ms apart agree (≤ 5 s): a connection just made or
/// dropped is still being set up or torn down on the shim's side.
fn steady_figures(shim: &DirectShim) -> procs::Figures {
    let mut last = shim.figures();
    for _ in 0..16 {
        std::thread::sleep(Duration::from_millis(300));
        let f = shim.figures();
        if f == last {
            return f;
        }
        last = f;
    }
    last
}

/// Waits for the shim's figures to settle, prints them, and fails if it holds more fds than `before`.
fn assert_no_fd_growth(shim: &DirectShim, before: procs::Figures) -> procs::Figures {
    let after = settle_figures(shim, before);
    println!("shim before {before}\nshim after  {after}");
    assert!(
        after.fds <= before.fds,
        "fds grew: {before} -> {after}\n{:#?}",
        procs::fd_targets(shim.pid)
    );
    after
}

fn settle_figures(shim: &DirectShim, before: procs::Figures) -> procs::Figures {
    harness::eventually(Duration::from_secs(20), || {
        let f = shim.figures();
        (f.fds <= before.fds && f.threads <= before.threads).then_some(f)
    })
    .unwrap_or_else(|| shim.figures())
}

#[test]
fn create_with_a_missing_or_malformed_bundle_says_why() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let client = shim.client();
    let before = steady_figures(&shim);
    let no_config = shim.bundle("noconfig", None);
    busybox_rootfs(&no_config);
    let not_a_spec = shim.bundle("notaspec", Some("[1, 2, 3]"));
    busybox_rootfs(&not_a_spec);
    let no_rootfs = shim.bundle("norootfs", Some(&spec_json(&shim.namespace, "norootfs", &["true"])));
    let cases: Vec<(&str, CreateTaskRequest, ttrpc::Code, Vec<&str>)> = vec![
        (
            "empty bundle path",
            create_req("c1", Path::new("")),
            ttrpc::Code::INVALID_ARGUMENT,
            vec!["bundle", "not an existing absolute directory"],
        ),
        (
            "relative bundle path",
            create_req("c2", Path::new("relative/bundle")),
            ttrpc::Code::INVALID_ARGUMENT,
            vec!["relative/bundle", "not an existing absolute directory"],
        ),
        (
            "bundle does not exist",
            create_req("c3", &shim.dir.join("nosuchbundle")),
            ttrpc::Code::INVALID_ARGUMENT,
            vec!["nosuchbundle", "not an existing absolute directory"],
        ),
        (
            "no config.json",
            create_req("noconfig", &no_config),
            ttrpc::Code::INVALID_ARGUMENT,
            vec!["has no config.json"],
        ),
        (
            "config.json that is not a spec",
            create_req("notaspec", &not_a_spec),
            ttrpc::Code::INVALID_ARGUMENT,
            vec!["notaspec/config.json", "not a JSON object"],
        ),
        (
            "no rootfs",
            create_req("norootfs", &no_rootfs),
            ttrpc::Code::UNKNOWN,
            vec!["rootfs"],
        ),
    ];
    for (what, req, want, words) in cases {
        let (code, msg) = rpc_err(client.create(ctx(), &req));
        println!("{what}: {code:?} {msg}");
        assert_eq!(code, want, "{what}: {msg}");
        for w in words {
            assert!(
                msg.to_lowercase().contains(&w.to_lowercase()),
                "{what}: {msg:?} does not mention {w:?}"
            );
        }
        assert_eq!(shim.residue(), Vec::<String>::new(), "{what}");
        assert!(shim.alive(), "{what} killed the shim");
    }
    drop(client);
    assert_no_fd_growth(&shim, before);
}

#[test]
fn create_with_a_truncated_config_json_names_it() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let client = shim.client();
    let malformed = shim.bundle("malformed", Some("{\"ociVersion\": \"1.0.2\", \"process\": "));
    busybox_rootfs(&malformed);
    let (code, msg) = rpc_err(client.create(ctx(), &create_req("malformed", &malformed)));
    println!("truncated config.json: {code:?} {msg}");
    assert!(msg.contains("config.json"), "{msg:?} does not name config.json");
    assert_eq!(shim.residue(), Vec::<String>::new());
}

#[test]
fn create_with_unusable_stdio_says_why() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let client = shim.client();
    let before = steady_figures(&shim);
    let plain_file = shim.dir.join("plain-file");
    std::fs::write(&plain_file, b"").unwrap();
    let stdin_file = plain_file.to_string_lossy().into_owned();
    // (what, stdin, stdout, words the error must contain)
    let cases: Vec<(&str, &str, &str, Vec<&str>)> = vec![
        (
            "missing stdout fifo",
            "",
            "/no/such/dir/stdout",
            vec!["/no/such/dir/stdout"],
        ),
        (
            "missing stdin fifo",
            "/no/such/dir/stdin",
            "",
            vec!["/no/such/dir/stdin"],
        ),
        ("unknown uri scheme", "", "tcp://127.0.0.1:1", vec!["tcp"]),
        (
            "file uri in an unwritable place",
            "",
            "file:///proc/no/such/log",
            vec!["/proc/no/such"],
        ),
        ("stdin as a file uri", "file:///tmp/x", "", vec!["stdin", "fifo"]),
        (
            "binary logger that does not exist",
            "",
            "binary:///no/such/logger",
            vec!["/no/such/logger"],
        ),
        ("plain file as stdin", &stdin_file, "", vec![]),
    ];
    for (n, (what, stdin, stdout, words)) in cases.into_iter().enumerate() {
        let id = format!("io{n}");
        let bundle = shim.bundle(&id, Some(&spec_json(&shim.namespace, &id, &["true"])));
        busybox_rootfs(&bundle);
        let mut req = create_req(&id, &bundle);
        req.stdin = stdin.into();
        req.stdout = stdout.into();
        match client.create(ctx(), &req) {
            Err(ttrpc::Error::RpcStatus(st)) => {
                println!("{what}: {:?} {}", st.code(), st.message());
                for w in words {
                    assert!(
                        st.message().contains(w),
                        "{what}: {:?} does not mention {w:?}",
                        st.message()
                    );
                }
            }
            Ok(_) => {
                // Accepted (a plain file can be read as stdin): it must run and go away cleanly.
                println!("{what}: accepted");
                assert!(words.is_empty(), "{what}: accepted");
                for r in [
                    client
                        .start(
                            ctx(),
                            &StartRequest {
                                id: id.clone(),
                                ..Default::default()
                            },
                        )
                        .map(|_| ()),
                    client
                        .wait(
                            ctx(),
                            &WaitRequest {
                                id: id.clone(),
                                ..Default::default()
                            },
                        )
                        .map(|_| ()),
                    client
                        .delete(
                            ctx(),
                            &DeleteRequest {
                                id: id.clone(),
                                ..Default::default()
                            },
                        )
                        .map(|_| ()),
                ] {
                    r.unwrap_or_else(|e| panic!("{what}: {e:?}"));
                }
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
        assert_eq!(shim.residue(), Vec::<String>::new(), "{what}");
    }
    drop(client);
    assert_no_fd_growth(&shim, before);
}

#[test]
fn rootfs_mounts_of_unknown_type_or_bad_options_fail_cleanly() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let client = shim.client();
    let before = steady_figures(&shim);
    let lower = shim.dir.join("lower");
    std::fs::create_dir_all(lower.join("sub")).unwrap();
    let mount = |kind: &str, source: &str, target: &str, options: &[&str]| Mount {
        type_: kind.into(),
        source: source.into(),
        target: target.into(),
        options: options.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let cases: Vec<(&str, Vec<Mount>, Vec<&str>)> = vec![
        (
            "unknown type",
            vec![mount("nosuchfs", "none", "", &[])],
            vec!["nosuchfs", "not supported"],
        ),
        (
            "bad tmpfs option",
            vec![mount("tmpfs", "tmpfs", "", &["size=banana"])],
            vec!["tmpfs", "size=banana"],
        ),
        (
            "bind of a missing source",
            vec![mount("bind", "/no/such/source", "", &["rbind"])],
            vec!["/no/such/source"],
        ),
        (
            "overlay without its lowerdir",
            vec![mount("overlay", "overlay", "", &["lowerdir=/no/such/lower"])],
            vec!["overlay", "/no/such/lower"],
        ),
        (
            "target escaping the rootfs",
            vec![mount("tmpfs", "tmpfs", "../../../etc", &[])],
            vec!["escapes the rootfs"],
        ),
        (
            // The first mount works, the second fails: the first must be undone.
            "second of two mounts fails",
            vec![
                mount("bind", &lower.to_string_lossy(), "", &["rbind"]),
                mount("tmpfs", "tmpfs", "sub", &["nosuchoption=1", "size=banana"]),
            ],
            vec!["tmpfs"],
        ),
    ];
    for (n, (what, mounts, words)) in cases.into_iter().enumerate() {
        let id = format!("m{n}");
        let bundle = shim.bundle(&id, Some(&spec_json(&shim.namespace, &id, &["true"])));
        let mut req = create_req(&id, &bundle);
        req.rootfs = mounts;
        let (code, msg) = rpc_err(client.create(ctx(), &req));
        println!("{what}: {code:?} {msg}");
        assert_ne!(code, ttrpc::Code::OK);
        for w in words {
            assert!(msg.contains(w), "{what}: {msg:?} does not mention {w:?}");
        }
        assert_eq!(shim.residue(), Vec::<String>::new(), "{what}");
        assert!(shim.alive(), "{what} killed the shim");
    }
    drop(client);
    assert_no_fd_growth(&shim, before);
}

#[test]
fn create_with_a_missing_runc_or_bad_options_says_why() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let client = shim.client();
    let before = steady_figures(&shim);
    let runc_opts = |binary: &str| {
        let mut o = RuncOptions::new();
        o.binary_name = binary.into();
        any("containerd.runc.v1.Options", o.write_to_bytes().unwrap())
    };
    let cases: Vec<(&str, Any, ttrpc::Code, Vec<&str>)> = vec![
        (
            "missing runc binary",
            runc_opts("/no/such/runc"),
            ttrpc::Code::UNKNOWN,
            vec!["/no/such/runc", "not found"],
        ),
        (
            // The message names the binary; why it failed is the subject of
            // a_runc_binary_that_cannot_execute_says_why.
            "runc binary that is not executable",
            runc_opts("/etc/hostname"),
            ttrpc::Code::UNKNOWN,
            vec!["/etc/hostname"],
        ),
        (
            "unknown options type",
            any("example.com/Unknown", vec![1, 2, 3]),
            ttrpc::Code::INVALID_ARGUMENT,
            vec!["unsupported runtime options type"],
        ),
        (
            "undecodable runc options",
            any("containerd.runc.v1.Options", vec![0xff, 0xff, 0xff]),
            ttrpc::Code::INVALID_ARGUMENT,
            vec!["decoding containerd.runc.v1.Options"],
        ),
    ];
    for (n, (what, options, want, words)) in cases.into_iter().enumerate() {
        let id = format!("o{n}");
        let bundle = shim.bundle(&id, Some(&spec_json(&shim.namespace, &id, &["true"])));
        busybox_rootfs(&bundle);
        let mut req = create_req(&id, &bundle);
        req.options = Some(options).into();
        let (code, msg) = rpc_err(client.create(ctx(), &req));
        println!("{what}: {code:?} {msg}");
        // The code is secondary to the message for runc failures (the Go shim says Unknown too).
        if want != ttrpc::Code::UNKNOWN {
            assert_eq!(code, want, "{what}: {msg}");
        } else {
            assert_ne!(code, ttrpc::Code::OK);
        }
        for w in words {
            assert!(msg.contains(w), "{what}: {msg:?} does not mention {w:?}");
        }
        assert_eq!(shim.residue(), Vec::<String>::new(), "{what}");
    }
    drop(client);
    assert_no_fd_growth(&shim, before);
}

#[test]
fn a_runc_binary_that_cannot_execute_says_why() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let client = shim.client();
    let bundle = shim.bundle("noexec", Some(&spec_json(&shim.namespace, "noexec", &["true"])));
    busybox_rootfs(&bundle);
    // A regular file without an execute bit (not /etc/hostname: some hosts have it 0755).
    let not_exec = bundle.join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&not_exec, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut o = RuncOptions::new();
    o.binary_name = not_exec.to_string_lossy().into_owned();
    let mut req = create_req("noexec", &bundle);
    req.options = Some(any("containerd.runc.v1.Options", o.write_to_bytes().unwrap())).into();
    let (code, msg) = rpc_err(client.create(ctx(), &req));
    println!("non-executable BinaryName: {code:?} {msg}");
    let lower = msg.to_lowercase();
    assert!(
        lower.contains("permission denied") || lower.contains("not executable") || lower.contains("eacces"),
        "{msg:?} does not say why {} could not run",
        not_exec.display()
    );
    assert_eq!(shim.residue(), Vec::<String>::new());
}

// ---- ttrpc: the wire -------------------------------------------------------------------------

/// `Connect{id}` answered OK on a fresh connection: the shim still serves.
fn still_serves(shim: &DirectShim) {
    let mut conn = shim.raw().expect("connect");
    let mut req = Vec::new();
    ttrpc_raw::pb_bytes(1, shim.id.as_bytes(), &mut req);
    let r = conn.call(TASK_SERVICE, "Connect", &req).expect("Connect answered");
    assert_eq!(r.code, 0, "Connect: {r:?}");
}

#[test]
fn unknown_methods_and_services_get_an_error_naming_them() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let before = steady_figures(&shim);
    let mut conn = shim.raw().unwrap();
    for (service, method) in [
        (TASK_SERVICE, "Bogus"),
        (TASK_SERVICE, ""),
        ("containerd.task.v3.Task", "Bogus"),
        ("containerd.task.v1.Task", "Create"),
        ("no.such.Service", "Create"),
        ("", ""),
    ] {
        let r = conn
            .call(service, method, b"")
            .unwrap_or_else(|e| panic!("{service}/{method}: {e}"));
        println!("/{service}/{method}: code {} {:?}", r.code, r.message);
        assert_eq!(
            r.code, 12,
            "/{service}/{method}: want UNIMPLEMENTED, as containerd's ttrpc answers"
        );
        assert!(r.message.contains(&format!("/{service}/{method}")), "{r:?}");
    }
    // The connection is still usable after those errors.
    let mut req = Vec::new();
    ttrpc_raw::pb_bytes(1, shim.id.as_bytes(), &mut req);
    assert_eq!(conn.call(TASK_SERVICE, "Connect", &req).unwrap().code, 0);
    drop(conn);
    still_serves(&shim);
    assert_no_fd_growth(&shim, before);
}

#[test]
fn malformed_frames_never_take_the_shim_down() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let before = steady_figures(&shim);
    // A ttrpc.Request that is not protobuf: the server answers with an error status.
    let mut conn = shim.raw().unwrap();
    conn.frame(1, ttrpc_raw::TYPE_REQUEST, 0, b"\xff\xff\xff\xff").unwrap();
    let r = conn.response_for(1).expect("an answer to an undecodable ttrpc.Request");
    assert_ne!(r.code, 0, "{r:?}");
    println!("undecodable Request: code {} {:?}", r.code, r.message);
    // A response frame sent to the server, an even stream id, a data frame: ignored or refused,
    // never fatal; the connection still answers afterwards.
    conn.frame(3, ttrpc_raw::TYPE_RESPONSE, 0, b"\x0a\x00").unwrap();
    conn.frame(4, 3, 0, b"data").unwrap();
    let mut req = Vec::new();
    ttrpc_raw::pb_bytes(1, shim.id.as_bytes(), &mut req);
    assert_eq!(conn.call(TASK_SERVICE, "Connect", &req).unwrap().code, 0);
    drop(conn);

    // Over the 4 MiB message limit: refused (or the connection dropped), the shim unharmed.
    let mut conn = shim.raw().unwrap();
    let big = ttrpc_raw::encode_request(TASK_SERVICE, "State", &vec![0u8; 5 << 20], 0);
    let _ = conn.frame(1, ttrpc_raw::TYPE_REQUEST, 0, &big);
    match conn.response_for(1) {
        Ok(r) => {
            println!("5 MiB request: code {} {:?}", r.code, r.message);
            assert_ne!(r.code, 0);
        }
        Err(e) => println!("5 MiB request: connection dropped ({e})"),
    }
    drop(conn);

    // Headers that lie and connections that stop mid-frame.
    for bytes in [
        &b"\x00\x00"[..],                                    // half a header
        &b"\x00\x00\x00\x10\x00\x00\x00\x01\x01\x00abc"[..], // a body shorter than announced
        &b"\xff\xff\xff\xff\x00\x00\x00\x01\x01\x00"[..],    // 4 GiB announced
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],           // another protocol
    ] {
        let mut conn = shim.raw().unwrap();
        let _ = conn.raw(bytes);
        drop(conn);
    }
    // A payload that the Task service cannot decode as its request type: the caller must get an
    // answer rather than a silently closed connection (see malformed_payload_gets_an_error_status).
    still_serves(&shim);
    assert!(shim.alive());
    let after = assert_no_fd_growth(&shim, before);
    assert!(after.threads <= before.threads + 1, "threads grew: {before} -> {after}");
}

/// A payload that does not decode as its request type gets INVALID_ARGUMENT, and the connection goes
/// on serving. (With ttrpc-rust's server, request_handler! returned Err and the server quit the
/// connection without answering: no answer, then EOF at the next request.)
#[test]
fn malformed_payload_gets_an_error_status() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    let mut problems = Vec::new();
    for method in ["Create", "State", "Kill", "Exec", "Connect"] {
        let mut conn = shim.raw().unwrap();
        let _ = conn.stream.set_read_timeout(Some(Duration::from_secs(3)));
        match conn.call(TASK_SERVICE, method, b"\xff\xff\xff\xff\xff") {
            Ok(r) if r.code == 3 && !r.message.is_empty() => {}
            Ok(r) => problems.push(format!("{method}: want INVALID_ARGUMENT with a message, got {r:?}")),
            Err(e) => problems.push(format!("{method}: no answer ({e})")),
        }
        // The same connection must go on serving.
        let mut req = Vec::new();
        ttrpc_raw::pb_bytes(1, shim.id.as_bytes(), &mut req);
        match conn.call(TASK_SERVICE, "Connect", &req) {
            Ok(r) if r.code == 0 => {}
            other => problems.push(format!(
                "{method}: the connection no longer serves: Connect -> {other:?}"
            )),
        }
    }
    still_serves(&shim);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn hundreds_of_connections_leave_no_fds_or_threads() {
    if harness::skip_if_unsupported() {
        return;
    }
    let shim = DirectShim::start();
    // Warm-up: the first connections allocate what stays allocated.
    for _ in 0..5 {
        still_serves(&shim);
    }
    let before = harness::eventually(Duration::from_secs(5), || {
        let f = shim.figures();
        std::thread::sleep(Duration::from_millis(200));
        (shim.figures() == f).then_some(f)
    })
    .unwrap_or_else(|| shim.figures());
    let mut peak = before;
    for i in 0..300 {
        let mut conn = shim.raw().unwrap();
        match i % 3 {
            0 => {
                let mut req = Vec::new();
                ttrpc_raw::pb_bytes(1, b"nosuch", &mut req);
                let r = conn.call(TASK_SERVICE, "State", &req).unwrap();
                assert_eq!(r.code, 5, "State of an unknown id: {r:?}"); // NOT_FOUND
            }
            1 => {
                let _ = conn.raw(b"\x00\x00\x00\x40\x00\x00\x00\x01\x01\x00partial");
            }
            _ => {}
        }
        drop(conn);
        if i % 50 == 0 {
            let f = shim.figures();
            peak.fds = peak.fds.max(f.fds);
            peak.threads = peak.threads.max(f.threads);
        }
    }
    let after = settle_figures(&shim, before);
    println!("300 connections: before {before}\n                 peak   {peak}\n                 after  {after}");
    assert!(
        after.fds <= before.fds,
        "fds grew: {before} -> {after}\n{:#?}",
        procs::fd_targets(shim.pid)
    );
    assert!(after.threads <= before.threads, "threads grew: {before} -> {after}");
    assert!(after.rss_kib <= before.rss_kib + 2048, "RSS grew: {before} -> {after}");
    still_serves(&shim);
}
