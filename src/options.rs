//! Runtime options in every encoding containerd sends them:
//! - `containerd.runc.v1.Options` (containerd 2.x clients, CRI for io.containerd.runc.v2),
//! - `containerd.linux.runc.CreateOptions` (containerd 1.6/1.7 clients for runtimes not named io.containerd.runc*),
//! - `runtimeoptions.v1.Options` with TOML inline (`config_body`, CRI) or in a file (`config_path`, ctr),
//! - wrapped in a 2.3+ `BootstrapParams` on `start`'s stdin.
//!
//! The TOML forms also carry this shim's own keys, beside the runc ones: `OutputBuffer` (per stream),
//! `OutputBufferTotal` (per shim) and `OutputPolicy` (stdio/backlog.rs).

use protobuf::well_known_types::any::Any;
use protobuf::Message;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::protos::shim::api::Options as RuntimeOptions;
use crate::protos::shim::bootstrap::BootstrapParams;
use crate::protos::shim::oci::Options as RuncOptions;
use crate::protos::shim::runc::CreateOptions;
use crate::stdio::backlog::{self, Policy};

/// The options this shim acts on. Serialized to `<bundle>/options.json` with the Go shim's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Options {
    #[serde(skip_serializing_if = "is_false")]
    pub no_pivot_root: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub no_new_keyring: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub shim_cgroup: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub io_uid: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub io_gid: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub binary_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub root: String,
    #[serde(skip_serializing_if = "is_false")]
    pub systemd_cgroup: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub criu_image_path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub criu_work_path: String,
    /// Bytes each output stream may buffer while its destination does not read (None: the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_buffer: Option<usize>,
    /// Bytes all the shim's streams may buffer together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_buffer_total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_policy: Option<Policy>,
}

fn is_false(b: &bool) -> bool {
    !b
}
fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
pub const LEGACY_CREATE_OPTIONS: &str = "containerd.linux.runc.CreateOptions";
pub const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

fn bad(what: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("decoding {what}: {e}"))
}

/// Decodes a runtime options Any by its type URL (with or without a `types.googleapis.com/`-style prefix).
pub fn from_any(type_url: &str, value: &[u8]) -> Result<Options> {
    let name = type_url.rsplit('/').next().unwrap_or_default();
    match name {
        "" if value.is_empty() => Ok(Options::default()),
        RUNC_OPTIONS => {
            let o = RuncOptions::parse_from_bytes(value).map_err(|e| bad(RUNC_OPTIONS, e))?;
            Ok(Options {
                no_pivot_root: o.no_pivot_root,
                no_new_keyring: o.no_new_keyring,
                shim_cgroup: o.shim_cgroup,
                io_uid: o.io_uid,
                io_gid: o.io_gid,
                binary_name: o.binary_name,
                root: o.root,
                systemd_cgroup: o.systemd_cgroup,
                criu_image_path: o.criu_image_path,
                criu_work_path: o.criu_work_path,
                ..Default::default()
            })
        }
        LEGACY_CREATE_OPTIONS => {
            let o = CreateOptions::parse_from_bytes(value).map_err(|e| bad(LEGACY_CREATE_OPTIONS, e))?;
            Ok(Options {
                no_pivot_root: o.no_pivot_root,
                no_new_keyring: o.no_new_keyring,
                shim_cgroup: o.shim_cgroup,
                io_uid: o.io_uid,
                io_gid: o.io_gid,
                criu_image_path: o.criu_image_path,
                criu_work_path: o.criu_work_path,
                ..Default::default()
            })
        }
        RUNTIME_OPTIONS => {
            let o = RuntimeOptions::parse_from_bytes(value).map_err(|e| bad(RUNTIME_OPTIONS, e))?;
            let text = if !o.config_path.is_empty() {
                std::fs::read_to_string(&o.config_path)
                    .map_err(|e| Error::InvalidArgument(format!("reading runtime config {:?}: {e}", o.config_path)))?
            } else {
                String::from_utf8(o.config_body).map_err(|e| bad("runtime options TOML", e))?
            };
            from_toml(&text)
        }
        _ => Err(Error::InvalidArgument(format!(
            "unsupported runtime options type {type_url:?} (want {RUNC_OPTIONS}, {LEGACY_CREATE_OPTIONS} or {RUNTIME_OPTIONS})"
        ))),
    }
}

/// The runc options' TOML form: the Go field names (`BinaryName = "crun"`, `SystemdCgroup = true`), as
/// written in a CRI runtime handler's `options` table. snake_case names are accepted too.
pub fn from_toml(text: &str) -> Result<Options> {
    let mut o = Options::default();
    for (n, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if line.is_empty() || line.starts_with('[') {
            continue;
        }
        let err = |what: &str| Error::InvalidArgument(format!("runtime options TOML line {}: {what}: {raw:?}", n + 1));
        let (key, value) = line.split_once('=').ok_or_else(|| err("expected key = value"))?;
        let key = key.trim().trim_matches('"');
        let value = value.trim();
        let string = || -> Result<String> {
            let q = value
                .chars()
                .next()
                .filter(|c| *c == '"' || *c == '\'')
                .ok_or_else(|| err("expected a string"))?;
            let inner = value
                .strip_prefix(q)
                .and_then(|v| v.strip_suffix(q))
                .ok_or_else(|| err("unterminated string"))?;
            if q == '"' {
                unescape(inner).map_err(|e| err(&e))
            } else {
                Ok(inner.to_string())
            }
        };
        let boolean = || match value {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(err("expected true or false")),
        };
        let number = || value.parse::<u32>().map_err(|_| err("expected a non-negative integer"));
        // Bytes, as an integer or a string with a binary suffix ("8Mi").
        let size = || {
            let text = if value.starts_with(['"', '\'']) {
                string()?
            } else {
                value.to_string()
            };
            backlog::parse_size(&text).map_err(|e| err(&e))
        };
        match key.to_ascii_lowercase().replace('_', "").as_str() {
            "nopivotroot" => o.no_pivot_root = boolean()?,
            "nonewkeyring" => o.no_new_keyring = boolean()?,
            "shimcgroup" => o.shim_cgroup = string()?,
            "iouid" => o.io_uid = number()?,
            "iogid" => o.io_gid = number()?,
            "binaryname" => o.binary_name = string()?,
            "root" => o.root = string()?,
            "systemdcgroup" => o.systemd_cgroup = boolean()?,
            "criuimagepath" => o.criu_image_path = string()?,
            "criuworkpath" => o.criu_work_path = string()?,
            "outputbuffer" => o.output_buffer = Some(size()?),
            "outputbuffertotal" => o.output_buffer_total = Some(size()?),
            "outputpolicy" => o.output_policy = Some(string()?.parse().map_err(|e: String| err(&e))?),
            // Options of other shims (TypeUrl, ConfigPath, ...) are not ours to refuse.
            _ => {}
        }
    }
    Ok(o)
}

fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            // In a basic ("...") string a backslash escapes the next character, quotes included.
            (Some('"'), _) if escaped => escaped = false,
            (Some('"'), '\\') => escaped = true,
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The escapes of a TOML basic string (what containerd writes when a value needs them).
fn unescape(s: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            return Err("unescaped quote inside a string".into());
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = chars.next().ok_or("a string ends in a lone backslash")?;
        let hex = |n: usize, chars: &mut std::str::Chars| {
            let digits: String = chars.by_ref().take(n).collect();
            u32::from_str_radix(&digits, 16)
                .ok()
                .filter(|_| digits.len() == n)
                .and_then(char::from_u32)
                .ok_or(format!("bad unicode escape \\{e}{digits}"))
        };
        out.push(match e {
            'b' => '\u{8}',
            't' => '\t',
            'n' => '\n',
            'f' => '\u{c}',
            'r' => '\r',
            'e' => '\u{1b}',
            '"' => '"',
            '\\' => '\\',
            'u' => hex(4, &mut chars)?,
            'U' => hex(8, &mut chars)?,
            other => return Err(format!("unknown escape \\{other}")),
        });
    }
    Ok(out)
}

/// What `shim start` read on its stdin.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StartInput {
    pub options: Options,
    /// containerd >= 2.3 sent BootstrapParams.
    pub bootstrap: bool,
    pub socket_dir: Option<String>,
}

/// Decodes `start`'s stdin: a 2.3+ `BootstrapParams` whose instance id and namespace match the flags,
/// otherwise the legacy runtime options `Any` (which also parses as a BootstrapParams, hence the check),
/// and nothing at all means defaults.
pub fn from_start_stdin(input: &[u8], id: &str, namespace: &str) -> Result<StartInput> {
    if input.is_empty() {
        return Ok(StartInput::default());
    }
    if let Ok(b) = BootstrapParams::parse_from_bytes(input) {
        if b.instance_id == id && b.namespace == namespace {
            let mut options = Options::default();
            for ext in &b.extensions {
                let Some(v) = ext.value.as_ref() else {
                    continue;
                };
                match from_any(&v.type_url, &v.value) {
                    Ok(o) => {
                        options = o;
                        break;
                    }
                    // Extensions of other kinds (CRI, NRI, ...) are not options.
                    Err(_) => continue,
                }
            }
            return Ok(StartInput {
                options,
                bootstrap: true,
                socket_dir: b.socket_dir.clone(),
            });
        }
    }
    let any = Any::parse_from_bytes(input).map_err(|e| {
        Error::InvalidArgument(format!(
            "start: stdin is neither BootstrapParams nor a runtime options Any: {e}"
        ))
    })?;
    Ok(StartInput {
        options: from_any(&any.type_url, &any.value)?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protos::shim::bootstrap::Extension;

    fn any<M: Message>(url: &str, m: &M) -> Any {
        let mut a = Any::new();
        a.type_url = url.into();
        a.value = m.write_to_bytes().unwrap();
        a
    }

    fn runc_opts() -> RuncOptions {
        let mut o = RuncOptions::new();
        o.binary_name = "crun".into();
        o.systemd_cgroup = true;
        o.io_uid = 1000;
        o.shim_cgroup = "/shim".into();
        o
    }

    #[test]
    fn runc_options() {
        let a = any(RUNC_OPTIONS, &runc_opts());
        let o = from_any(&a.type_url, &a.value).unwrap();
        assert_eq!(
            (
                o.binary_name.as_str(),
                o.systemd_cgroup,
                o.io_uid,
                o.shim_cgroup.as_str()
            ),
            ("crun", true, 1000, "/shim")
        );
        // Prefixed type URLs name the same type.
        assert_eq!(
            from_any("types.containerd.io/containerd.runc.v1.Options", &a.value).unwrap(),
            o
        );
    }

    #[test]
    fn legacy_create_options() {
        let mut c = CreateOptions::new();
        c.no_pivot_root = true;
        c.io_gid = 7;
        c.shim_cgroup = "/x".into();
        let a = any(LEGACY_CREATE_OPTIONS, &c);
        let o = from_any(&a.type_url, &a.value).unwrap();
        assert!(o.no_pivot_root);
        assert_eq!((o.io_gid, o.shim_cgroup.as_str()), (7, "/x"));
    }

    #[test]
    fn runtimeoptions_toml_inline_and_file() {
        let mut r = RuntimeOptions::new();
        r.config_body = b"# CRI handler options\nBinaryName = \"/usr/bin/crun\" # trailing\nSystemdCgroup = true\nIoUid = 5\nTypeUrl = \"x\"\n".to_vec();
        let o = from_any(RUNTIME_OPTIONS, &r.write_to_bytes().unwrap()).unwrap();
        assert_eq!(
            (o.binary_name.as_str(), o.systemd_cgroup, o.io_uid),
            ("/usr/bin/crun", true, 5)
        );
        // config_body (field 3) must never be misread as shim_cgroup (field 3 of runc Options).
        assert_eq!(o.shim_cgroup, "");

        let path = std::env::temp_dir().join(format!("rr-opts-{}.toml", std::process::id()));
        std::fs::write(&path, "[options]\nroot = '/run/x'\nno_pivot_root = true\n").unwrap();
        let mut r = RuntimeOptions::new();
        r.config_path = path.to_string_lossy().into();
        let o = from_any(RUNTIME_OPTIONS, &r.write_to_bytes().unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!((o.root.as_str(), o.no_pivot_root), ("/run/x", true));
    }

    #[test]
    fn toml_strings_unescape_like_toml() {
        let o =
            from_toml("BinaryName = \"/opt/a \\\"b\\\"\\\\c#d\\te\\u00e9\" # comment\nRoot = '/run/\\x'\n").unwrap();
        assert_eq!(o.binary_name, "/opt/a \"b\"\\c#d\te\u{e9}");
        assert_eq!(o.root, "/run/\\x");
        for bad in [
            r#"BinaryName = "a\q""#,
            r#"BinaryName = "a\u12""#,
            r#"BinaryName = "a\""#,
        ] {
            let e = from_toml(bad).unwrap_err().to_string();
            assert!(e.contains("line 1"), "{bad}: {e}");
        }
    }

    #[test]
    fn output_buffering_keys() {
        let o = from_toml("OutputBuffer = \"16Mi\"\nOutputBufferTotal = 134217728\nOutputPolicy = 'drop'\n").unwrap();
        assert_eq!(
            (o.output_buffer, o.output_buffer_total, o.output_policy),
            (Some(16 << 20), Some(128 << 20), Some(Policy::Drop))
        );
        // Through runtimeoptions too (CRI's ConfigBody), and snake_case.
        let mut r = RuntimeOptions::new();
        r.config_body = b"output_buffer = 0\noutput_policy = \"block\"".to_vec();
        let o = from_any(RUNTIME_OPTIONS, &r.write_to_bytes().unwrap()).unwrap();
        assert_eq!((o.output_buffer, o.output_policy), (Some(0), Some(Policy::Block)));
        assert_eq!(from_toml("BinaryName = 'crun'").unwrap().output_buffer, None);
        for (bad, want) in [
            ("OutputBuffer = \"lots\"", "line 1: size \"lots\""),
            ("OutputBuffer = -1", "line 1: size \"-1\""),
            ("OutputPolicy = \"newest\"", "line 1: output policy \"newest\""),
            ("OutputPolicy = drop", "line 1: expected a string"),
        ] {
            let e = from_toml(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_options_are_clear_errors() {
        let e = from_any("foo.Bar", b"").unwrap_err();
        assert!(
            e.to_string().contains("unsupported runtime options type \"foo.Bar\""),
            "{e}"
        );
        let e = from_toml("SystemdCgroup = yes").unwrap_err();
        assert!(e.to_string().contains("line 1: expected true or false"), "{e}");
        let e = from_toml("BinaryName = \"crun").unwrap_err();
        assert!(e.to_string().contains("unterminated string"), "{e}");
        assert!(matches!(
            from_any(RUNC_OPTIONS, &[0xff, 0xff]),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn start_stdin_forms() {
        // empty
        assert_eq!(from_start_stdin(b"", "id", "ns").unwrap(), StartInput::default());
        // legacy Any
        let a = any(RUNC_OPTIONS, &runc_opts());
        let s = from_start_stdin(&a.write_to_bytes().unwrap(), "id", "ns").unwrap();
        assert!(!s.bootstrap);
        assert_eq!(s.options.binary_name, "crun");
        // BootstrapParams with the options in an extension
        let mut b = BootstrapParams::new();
        b.instance_id = "id".into();
        b.namespace = "ns".into();
        b.socket_dir = Some("/run/s".into());
        let mut other = Extension::new();
        other.value = Some(any("containerd.io/cri.v1.PodSandboxConfig", &RuncOptions::new())).into();
        let mut ext = Extension::new();
        ext.value = Some(a.clone()).into();
        b.extensions = vec![other, ext];
        let s = from_start_stdin(&b.write_to_bytes().unwrap(), "id", "ns").unwrap();
        assert!(s.bootstrap);
        assert_eq!(s.options.binary_name, "crun");
        assert_eq!(s.socket_dir.as_deref(), Some("/run/s"));
        // runtimeoptions TOML Any
        let mut r = RuntimeOptions::new();
        r.config_body = b"BinaryName = \"crun\"".to_vec();
        let s = from_start_stdin(&any(RUNTIME_OPTIONS, &r).write_to_bytes().unwrap(), "id", "ns").unwrap();
        assert_eq!(s.options.binary_name, "crun");
        // garbage
        let e = from_start_stdin(b"\xff\xff\xff", "id", "ns").unwrap_err();
        assert!(
            e.to_string()
                .contains("neither BootstrapParams nor a runtime options Any"),
            "{e}"
        );
    }

    #[test]
    fn options_json_uses_go_keys_and_omits_defaults() {
        let o = Options {
            binary_name: "crun".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"{"binary_name":"crun","systemd_cgroup":true}"#
        );
        let back: Options = serde_json::from_str(r#"{"binary_name":"crun","task_api_version":2}"#).unwrap();
        assert_eq!(back.binary_name, "crun");
    }
}

/// Checkpoint options, from `containerd.runc.v1.CheckpointOptions` or the legacy
/// `containerd.linux.runc.CheckpointOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CheckpointOpts {
    pub exit: bool,
    pub open_tcp: bool,
    pub external_unix_sockets: bool,
    pub terminal: bool,
    pub file_locks: bool,
    pub empty_namespaces: Vec<String>,
    pub cgroups_mode: String,
    pub image_path: String,
    pub work_path: String,
    pub parent_path: String,
}

pub(crate) fn checkpoint_from_any(type_url: &str, value: &[u8]) -> Result<CheckpointOpts> {
    use crate::protos::shim::oci::CheckpointOptions as V1;
    use crate::protos::shim::runc::CheckpointOptions as Legacy;
    match type_url.rsplit('/').next().unwrap_or_default() {
        "" if value.is_empty() => Ok(CheckpointOpts::default()),
        "containerd.runc.v1.CheckpointOptions" => {
            let o = V1::parse_from_bytes(value).map_err(|e| bad("containerd.runc.v1.CheckpointOptions", e))?;
            Ok(CheckpointOpts {
                exit: o.exit,
                open_tcp: o.open_tcp,
                external_unix_sockets: o.external_unix_sockets,
                terminal: o.terminal,
                file_locks: o.file_locks,
                empty_namespaces: o.empty_namespaces,
                cgroups_mode: o.cgroups_mode,
                image_path: o.image_path,
                work_path: o.work_path,
                parent_path: o.parent_path,
            })
        }
        "containerd.linux.runc.CheckpointOptions" => {
            let o = Legacy::parse_from_bytes(value).map_err(|e| bad("containerd.linux.runc.CheckpointOptions", e))?;
            Ok(CheckpointOpts {
                exit: o.exit,
                open_tcp: o.open_tcp,
                external_unix_sockets: o.external_unix_sockets,
                terminal: o.terminal,
                file_locks: o.file_locks,
                empty_namespaces: o.empty_namespaces,
                cgroups_mode: o.cgroups_mode,
                image_path: o.image_path,
                work_path: o.work_path,
                parent_path: String::new(),
            })
        }
        other => Err(Error::InvalidArgument(format!(
            "unsupported checkpoint options type {other:?}"
        ))),
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;

    #[test]
    fn both_checkpoint_option_types() {
        use crate::protos::shim::oci::CheckpointOptions as V1;
        use crate::protos::shim::runc::CheckpointOptions as Legacy;
        let v1 = V1 {
            exit: true,
            image_path: "/img".into(),
            work_path: "/work".into(),
            ..Default::default()
        };
        let o = checkpoint_from_any("containerd.runc.v1.CheckpointOptions", &v1.write_to_bytes().unwrap()).unwrap();
        assert_eq!(
            (o.exit, o.image_path.as_str(), o.work_path.as_str()),
            (true, "/img", "/work")
        );
        // Same meaning, other field numbers.
        let legacy = Legacy {
            image_path: "/img".into(),
            work_path: "/work".into(),
            open_tcp: true,
            ..Default::default()
        };
        let o = checkpoint_from_any(
            "containerd.linux.runc.CheckpointOptions",
            &legacy.write_to_bytes().unwrap(),
        )
        .unwrap();
        assert_eq!(
            (o.open_tcp, o.image_path.as_str(), o.work_path.as_str()),
            (true, "/img", "/work")
        );
        assert_eq!(checkpoint_from_any("", b"").unwrap(), CheckpointOpts::default());
        assert!(checkpoint_from_any("x.Y", b"").is_err());
    }
}
