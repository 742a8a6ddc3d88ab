//! The bodies of the fuzz targets, as plain functions: the libFuzzer binaries in fuzz_targets/ call
//! them, and so does `cargo test` (tests/targets.rs) over the seeds on stable Rust.
//!
//! Beyond "never panics", each checks a property the shim relies on:
//! - whatever runtime options decode also survive `<bundle>/options.json` (Create writes it with
//!   serde, `shim delete` reads it back): the JSON round trip gives the same options;
//! - decoding is deterministic;
//! - `cli::parse` accepts the argv it would print back for the flags it parsed, with the same result;
//! - the ttrpc frame decoder gives the same frames however the bytes are cut, and each frame it
//!   gives encodes back to the bytes it came from.
//!
//! Not fuzzed: `mount`'s option parsing is private (`parse_options`) and only reachable through
//! `Mount::mount_at`, which calls mount(2).

use containerd_shim_rustrunc_v2::cli::{self, Action, Flags};
use containerd_shim_rustrunc_v2::options::{self, Options};
use containerd_shim_rustrunc_v2::protos::shim::api::Options as RuntimeOptions;
use protobuf::Message;

/// The runtime option type URLs the shim knows; the first input byte picks one (or none).
pub const TYPE_URLS: [&str; 4] = [
    options::RUNC_OPTIONS,
    options::LEGACY_CREATE_OPTIONS,
    options::RUNTIME_OPTIONS,
    "types.containerd.io/containerd.runc.v1.Options",
];

fn json_round_trip(o: &Options) {
    let json = serde_json::to_vec(o).expect("options serialize");
    let back: Options = serde_json::from_slice(&json).expect("options.json reads back");
    assert_eq!(
        &back,
        o,
        "options.json round trip changed the options: {}",
        String::from_utf8_lossy(&json)
    );
}

/// `shim start`'s stdin: BootstrapParams (instance id "id", namespace "ns"), a legacy Any, or junk.
pub fn start_stdin(data: &[u8]) {
    let first = options::from_start_stdin(data, "id", "ns");
    let again = options::from_start_stdin(data, "id", "ns");
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "not deterministic"),
        (Err(a), Err(b)) => assert_eq!(a, b, "not deterministic"),
        _ => panic!("not deterministic: {first:?} vs {again:?}"),
    }
    match first {
        Ok(s) => {
            json_round_trip(&s.options);
            if !s.bootstrap {
                assert!(s.socket_dir.is_none(), "a legacy Any has no socket dir");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error without a message"),
    }
}

/// A runtime options Any: byte 0 chooses the type URL (a known one, or the next byte-counted
/// string), the rest is the value.
pub fn options_any(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (type_url, value): (String, &[u8]) = match sel as usize % 5 {
        i @ 0..=3 => (TYPE_URLS[i].to_string(), rest),
        _ => {
            let n = rest
                .first()
                .map(|&n| n as usize)
                .unwrap_or(0)
                .min(rest.len().saturating_sub(1));
            let url = rest.get(1..1 + n).unwrap_or_default();
            (
                String::from_utf8_lossy(url).into_owned(),
                rest.get(1 + n..).unwrap_or_default(),
            )
        }
    };
    // runtimeoptions.v1.Options may name a TOML file to read: that is containerd's to choose (a
    // trusted path), and reading arbitrary files (/dev/zero, a fifo) is not what is being tested.
    if type_url.ends_with(options::RUNTIME_OPTIONS) {
        if let Ok(r) = RuntimeOptions::parse_from_bytes(value) {
            if !r.config_path.is_empty() {
                return;
            }
        }
    }
    match options::from_any(&type_url, value) {
        Ok(o) => {
            json_round_trip(&o);
            assert_eq!(options::from_any(&type_url, value), Ok(o), "not deterministic");
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error without a message"),
    }
}

/// The runc options' TOML form (a CRI handler's `options` table, `ctr --runtime-config-path`).
pub fn options_toml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match options::from_toml(&text) {
        Ok(o) => json_round_trip(&o),
        Err(e) => assert!(
            e.to_string().contains("runtime options TOML line"),
            "unclear error: {e}"
        ),
    }
}

/// The argv containerd gives the shim, as `\0`-separated words.
pub fn cli_parse(data: &[u8]) {
    if data.len() > 4096 {
        return;
    }
    let args: Vec<String> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    };
    match cli::parse(args.clone()) {
        Ok(f) => {
            let again = cli::parse(render(&f)).unwrap_or_else(|e| panic!("{args:?} -> {f:?} -> {e}"));
            assert_eq!(again, f, "argv {args:?} parsed, printed back and parsed again differs");
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error without a message"),
    }
}

/// The argv that states exactly `f`.
pub fn render(f: &Flags) -> Vec<String> {
    let mut v = Vec::new();
    for (name, value) in [
        ("namespace", &f.namespace),
        ("id", &f.id),
        ("address", &f.address),
        ("publish-binary", &f.publish_binary),
        ("bundle", &f.bundle),
        ("socket", &f.socket),
    ] {
        if !value.is_empty() {
            v.push(format!("-{name}"));
            v.push(value.clone());
        }
    }
    for (name, set) in [("debug", f.debug), ("v", f.version), ("info", f.info)] {
        if set {
            v.push(format!("-{name}"));
        }
    }
    match f.action {
        Action::Daemon => {}
        Action::Start => v.push("start".into()),
        Action::Delete => v.push("delete".into()),
    }
    v
}

/// A byte stream read by the ttrpc server: the first byte says where the stream is cut in two.
pub fn ttrpc_frames(data: &[u8]) {
    use containerd_shim_rustrunc_v2::frame::{self, Decoded, Decoder};
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let decode = |pieces: &[&[u8]]| {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for p in pieces {
            d.feed(p);
            while let Some(f) = d.next_frame() {
                out.push(f);
            }
        }
        (out, d.buffered())
    };
    let whole = decode(&[stream]);
    let at = (cut as usize * stream.len()) / 255;
    assert_eq!(decode(&[&stream[..at], &stream[at..]]), whole, "cut at {at}");
    // Frames and skipped payloads account for every byte but a partial frame at the end.
    let mut again = Vec::new();
    let mut skipped = false;
    for f in &whole.0 {
        match f {
            Decoded::Frame(h, p) => {
                assert_eq!(h.length as usize, p.len());
                assert!(p.len() <= frame::MAX_LENGTH);
                again.extend(frame::encode(h.stream_id, h.type_, h.flags, p));
            }
            Decoded::TooLong(h) => {
                assert!(h.too_long());
                again.extend(h.encode());
                skipped = true;
                break; // its payload is skipped as it comes: nothing after it is comparable here
            }
        }
    }
    if !skipped {
        assert_eq!(again.len() + whole.1, stream.len());
    }
    assert_eq!(&stream[..again.len()], &again[..]);
}
