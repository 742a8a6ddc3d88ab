//! The command line, exactly as containerd builds it: Go `flag`-style single-dash long flags
//! (`-flag value`, `-flag=value`, `--flag`), parsing stops at the first positional, which is the action.

use std::fmt;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    pub namespace: String,
    pub id: String,
    pub address: String,
    pub publish_binary: String,
    pub bundle: String,
    pub socket: String,
    pub debug: bool,
    pub version: bool,
    pub info: bool,
    pub action: Action,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Action {
    /// No action: run as the shim daemon.
    #[default]
    Daemon,
    Start,
    Delete,
}

#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn parse_bool(name: &str, v: &str) -> Result<bool, UsageError> {
    // Go's strconv.ParseBool
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(UsageError(format!("invalid boolean value {v:?} for -{name}"))),
    }
}

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Flags, UsageError> {
    let mut f = Flags::default();
    let mut it = args.into_iter().peekable();
    let mut positional = Vec::new();
    while let Some(arg) = it.next() {
        if !positional.is_empty() || arg == "-" || !arg.starts_with('-') {
            positional.push(arg);
            continue;
        }
        if arg == "--" {
            positional.extend(it.by_ref());
            break;
        }
        let body = arg.trim_start_matches('-');
        if arg.starts_with("---") || body.is_empty() {
            return Err(UsageError(format!("bad flag syntax: {arg}")));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let boolean = |f: &mut bool| -> Result<(), UsageError> {
            *f = match &inline {
                Some(v) => parse_bool(name, v)?,
                None => true,
            };
            Ok(())
        };
        match name {
            "debug" => boolean(&mut f.debug)?,
            "v" | "version" => boolean(&mut f.version)?,
            "info" => boolean(&mut f.info)?,
            "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket" => {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .ok_or_else(|| UsageError(format!("flag needs an argument: -{name}")))?,
                };
                let slot = match name {
                    "namespace" => &mut f.namespace,
                    "id" => &mut f.id,
                    "address" => &mut f.address,
                    "publish-binary" => &mut f.publish_binary,
                    "bundle" => &mut f.bundle,
                    _ => &mut f.socket,
                };
                *slot = value;
            }
            _ => return Err(UsageError(format!("flag provided but not defined: -{name}"))),
        }
    }
    f.action = match positional.first().map(String::as_str) {
        None => Action::Daemon,
        Some("start") => Action::Start,
        Some("delete") => Action::Delete,
        Some(other) => return Err(UsageError(format!("unknown action {other:?}"))),
    };
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Flags, UsageError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn containerd_start_argv() {
        let f = p(&[
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
        ])
        .unwrap();
        assert_eq!(f.namespace, "default");
        assert_eq!(f.address, "/run/containerd/containerd.sock");
        assert_eq!(f.publish_binary, "/usr/bin/containerd");
        assert_eq!(f.id, "c1");
        assert!(f.debug);
        assert_eq!(f.action, Action::Start);
    }

    #[test]
    fn delete_with_bundle_and_equals_forms() {
        let f = p(&["--namespace=k8s.io", "-id=x", "-bundle", "/b", "-debug=false", "delete"]).unwrap();
        assert_eq!(
            (f.namespace.as_str(), f.id.as_str(), f.bundle.as_str()),
            ("k8s.io", "x", "/b")
        );
        assert!(!f.debug);
        assert_eq!(f.action, Action::Delete);
    }

    #[test]
    fn daemon_version_info() {
        assert_eq!(p(&["-namespace", "n", "-id", "i"]).unwrap().action, Action::Daemon);
        assert!(p(&["-v"]).unwrap().version);
        assert!(p(&["-version"]).unwrap().version);
        assert!(p(&["-info"]).unwrap().info);
    }

    #[test]
    fn flags_after_the_action_are_positional() {
        // Go's flag package stops at the first non-flag argument.
        let f = p(&["-id", "a", "start", "-debug"]).unwrap();
        assert!(!f.debug);
    }

    #[test]
    fn errors_are_clear() {
        assert_eq!(p(&["-bogus"]).unwrap_err().0, "flag provided but not defined: -bogus");
        assert_eq!(p(&["-id"]).unwrap_err().0, "flag needs an argument: -id");
        assert_eq!(
            p(&["-debug=maybe"]).unwrap_err().0,
            "invalid boolean value \"maybe\" for -debug"
        );
        assert_eq!(p(&["stop"]).unwrap_err().0, "unknown action \"stop\"");
    }
}
