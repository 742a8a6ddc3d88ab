// Generates the protobuf messages and the sync ttrpc client/server code from protos/
// with ttrpc-codegen's pure-Rust parser (no protoc needed).
use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

/// Generated modules: containerd's events/task.proto and types/task/task.proto share a file stem, so the
/// events get a module of their own (as in rust-extensions' shim-protos).
const MODULES: &[(&str, &[&str])] = &[
    (
        "shim",
        &[
            "protos/types/mount.proto",
            "protos/types/task/task.proto",
            "protos/types/event.proto",
            "protos/types/introspection.proto",
            "protos/types/runc/options/oci.proto",
            "protos/types/runtimeoptions/v1/api.proto",
            "protos/runtime/linux/runctypes/runc.proto",
            "protos/runtime/task/v2/shim.proto",
            "protos/runtime/bootstrap/v1/bootstrap.proto",
            "protos/services/ttrpc/events/v1/events.proto",
        ],
    ),
    ("events", &["protos/types/mount.proto", "protos/events/task.proto"]),
    // Stats metrics: both files are metrics.proto, so each gets a module of its own.
    (
        "cgroups_v1",
        &["protos/github.com/containerd/cgroups/stats/v1/metrics.proto"],
    ),
    (
        "cgroups_v2",
        &["protos/github.com/containerd/cgroups/cgroup2/stats/metrics.proto"],
    ),
];

fn main() {
    let root = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for (name, inputs) in MODULES {
        let out = root.join(name);
        std::fs::create_dir_all(&out).unwrap();
        for p in *inputs {
            println!("cargo:rerun-if-changed={p}");
        }
        Codegen::new()
            .out_dir(&out)
            .inputs(*inputs)
            .include("protos")
            .rust_protobuf()
            .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(true))
            .customize(Customize::default())
            .run()
            .unwrap_or_else(|e| panic!("generating {name} protos: {e}"));
        write_module(&root, name, &out);
    }
}

/// Writes `<OUT_DIR>/<name>.rs`: one inline module per generated file. The generated files carry inner
/// attributes (`#![...]`, `//!`), which `include!` does not accept, so those lines are dropped.
fn write_module(root: &std::path::Path, name: &str, dir: &std::path::Path) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs") && !p.ends_with("mod.rs"))
        .collect();
    files.sort();
    let mut wrapper = String::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&f, kept.join("\n")).unwrap();
        let stem = f.file_stem().unwrap().to_str().unwrap();
        wrapper += &format!("pub mod {stem} {{ include!({:?}); }}\n", f.display().to_string());
    }
    std::fs::write(root.join(format!("{name}.rs")), wrapper).unwrap();
}
