//! The fuzz targets as plain tests, on stable Rust without libFuzzer: every seed in seeds/<target>/,
//! every input libFuzzer saved in corpus/<target>/ and artifacts/<target>/ (if any), and a few
//! thousand mutations of the seeds made here with a fixed PRNG.
//!
//! `cargo test -- --ignored write_seeds` rewrites seeds/ from `seeds()` below.

use std::path::{Path, PathBuf};

use containerd_shim_rustrunc_v2::frame;
use containerd_shim_rustrunc_v2::protos::shim::api::Options as RuntimeOptions;
use containerd_shim_rustrunc_v2::protos::shim::bootstrap::{BootstrapParams, Extension};
use containerd_shim_rustrunc_v2::protos::shim::oci::Options as RuncOptions;
use containerd_shim_rustrunc_v2::protos::shim::runc::CreateOptions;
use containerd_shim_rustrunc_v2_fuzz as targets;
use protobuf::well_known_types::any::Any;
use protobuf::Message;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("start_stdin", targets::start_stdin),
    ("options_any", targets::options_any),
    ("options_toml", targets::options_toml),
    ("cli_parse", targets::cli_parse),
    ("ttrpc_frames", targets::ttrpc_frames),
];

fn any<M: Message>(url: &str, m: &M) -> Any {
    let mut a = Any::new();
    a.type_url = url.into();
    a.value = m.write_to_bytes().unwrap();
    a
}

fn runc_options() -> RuncOptions {
    let mut o = RuncOptions::new();
    o.binary_name = "/usr/bin/crun".into();
    o.root = "/run/containerd/runc".into();
    o.systemd_cgroup = true;
    o.shim_cgroup = "/shim".into();
    o.io_uid = 1000;
    o.io_gid = 1000;
    o.criu_image_path = "/img".into();
    o
}

fn toml_options(body: &str) -> RuntimeOptions {
    let mut r = RuntimeOptions::new();
    r.type_url = "io.containerd.runc.v1.Options".into();
    r.config_body = body.as_bytes().to_vec();
    r
}

const TOML: &str = "# CRI runtime handler options\n[options]\nBinaryName = \"/usr/bin/crun\" # comment\n\
                    SystemdCgroup = true\nNoPivotRoot = false\nIoUid = 1000\nroot = '/run/x'\nTypeUrl = \"x\"\n";

/// Inputs a real caller sends, per target.
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut v = Vec::new();
    // start_stdin
    v.push(("start_stdin", "empty", Vec::new()));
    v.push((
        "start_stdin",
        "legacy-any-runc",
        any("containerd.runc.v1.Options", &runc_options())
            .write_to_bytes()
            .unwrap(),
    ));
    let mut legacy = CreateOptions::new();
    legacy.no_pivot_root = true;
    legacy.shim_cgroup = "/x".into();
    v.push((
        "start_stdin",
        "legacy-any-create-options",
        any("containerd.linux.runc.CreateOptions", &legacy)
            .write_to_bytes()
            .unwrap(),
    ));
    v.push((
        "start_stdin",
        "legacy-any-toml",
        any("runtimeoptions.v1.Options", &toml_options(TOML))
            .write_to_bytes()
            .unwrap(),
    ));
    let mut b = BootstrapParams::new();
    b.instance_id = "id".into();
    b.namespace = "ns".into();
    b.socket_dir = Some("/run/containerd/s".into());
    b.containerd_ttrpc_address = "/run/containerd/containerd.sock.ttrpc".into();
    let mut ext = Extension::new();
    ext.value = Some(any("containerd.runc.v1.Options", &runc_options())).into();
    b.extensions = vec![ext];
    v.push(("start_stdin", "bootstrap-params", b.write_to_bytes().unwrap()));
    b.instance_id = "other".into();
    v.push(("start_stdin", "bootstrap-params-other-id", b.write_to_bytes().unwrap()));
    // options_any: byte 0 selects the type (0 runc, 1 legacy, 2 runtimeoptions, 3 prefixed runc, 4 custom)
    let mut with = |sel: u8, name: &'static str, value: Vec<u8>| {
        let mut d = vec![sel];
        d.extend(value);
        v.push(("options_any", name, d));
    };
    with(0, "runc", runc_options().write_to_bytes().unwrap());
    with(1, "legacy", legacy.write_to_bytes().unwrap());
    with(2, "toml-inline", toml_options(TOML).write_to_bytes().unwrap());
    with(3, "runc-prefixed", runc_options().write_to_bytes().unwrap());
    let mut custom = vec![4u8, 7];
    custom.extend(b"foo.Bar");
    custom.extend(b"payload");
    v.push(("options_any", "unknown-type", custom));
    // options_toml
    v.push(("options_toml", "cri-handler", TOML.as_bytes().to_vec()));
    v.push((
        "options_toml",
        "snake-case",
        b"binary_name = \"runc\"\nsystemd_cgroup = false\nio_gid = 7\n".to_vec(),
    ));
    v.push(("options_toml", "bad-bool", b"SystemdCgroup = yes\n".to_vec()));
    v.push((
        "options_toml",
        "escapes",
        b"BinaryName = \"a\\\\b\\\"c\" # x\n".to_vec(),
    ));
    // cli_parse
    let argv = |words: &[&str]| words.join("\0").into_bytes();
    v.push((
        "cli_parse",
        "start",
        argv(&[
            "-namespace",
            "default",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "c1",
            "-debug",
            "start",
        ]),
    ));
    v.push((
        "cli_parse",
        "delete",
        argv(&["--namespace=k8s.io", "-id=x", "-bundle", "/b", "-debug=false", "delete"]),
    ));
    v.push((
        "cli_parse",
        "daemon",
        argv(&["-namespace", "n", "-id", "i", "-socket", "/s"]),
    ));
    v.push(("cli_parse", "version", argv(&["-v"])));
    v.push(("cli_parse", "bad", argv(&["-bogus", "--", "-x", "stop"])));
    // ttrpc_frames: a cut byte, then frames as a client sends them.
    let frames = |list: &[(u32, u8, &[u8])]| {
        let mut v = vec![128u8];
        for (sid, ty, p) in list {
            frame::encode_into(*sid, *ty, 0, p, &mut v);
        }
        v
    };
    v.push((
        "ttrpc_frames",
        "requests",
        frames(&[(1, 1, b"\x0a\x01x"), (3, 1, b""), (5, 3, b"data")]),
    ));
    let mut over = frames(&[(1, 1, b"ok")]);
    over.extend(frame::Header::new(3, 1, frame::MAX_LENGTH + 1).encode());
    over.extend([0u8; 64]);
    v.push(("ttrpc_frames", "oversize", over));
    let mut partial = frames(&[(7, 2, b"answer")]);
    partial.extend(&[0, 0, 0, 9, 0, 0]);
    v.push(("ttrpc_frames", "partial", partial));
    v
}

fn seed_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// xorshift64: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(d.len() + 1);
                let b = [0u8, 0x0a, 0x12, 0x22, 0x80, 0xff, b'"', b'=', b'#', b'-'][rng.below(10)];
                d.insert(i, b);
            }
            3 if !d.is_empty() => {
                let i = rng.below(d.len());
                d.truncate(i);
            }
            _ if !d.is_empty() => {
                let i = rng.below(d.len());
                d.remove(i);
            }
            _ => d.push(rng.next() as u8),
        }
    }
    d
}

#[test]
fn targets_accept_their_seeds_and_mutations() {
    let generated = seeds();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for (name, target) in TARGETS {
        let mut inputs: Vec<Vec<u8>> = generated
            .iter()
            .filter(|(t, _, _)| *t == name)
            .map(|(_, _, d)| d.clone())
            .collect();
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in [
            seed_dir(name),
            base.join("corpus").join(name),
            base.join("artifacts").join(name),
        ] {
            inputs.extend(files(&dir).iter().filter_map(|p| std::fs::read(p).ok()));
        }
        assert!(!inputs.is_empty(), "no seeds for {name}");
        let seeds = inputs.clone();
        for _ in 0..2000 {
            let s = &seeds[rng.below(seeds.len())];
            inputs.push(mutate(&mut rng, s));
        }
        for input in &inputs {
            target(input);
        }
        println!("{name}: {} inputs", inputs.len());
    }
}

#[test]
fn seed_files_are_current() {
    for (target, name, data) in seeds() {
        let path = seed_dir(target).join(name);
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (cargo test -- --ignored write_seeds)", path.display()));
        assert!(
            on_disk == data,
            "{} is stale (cargo test -- --ignored write_seeds)",
            path.display()
        );
    }
}

#[test]
#[ignore = "writes seeds/"]
fn write_seeds() {
    for (target, name, data) in seeds() {
        let dir = seed_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    }
}
