//! `-info`: a bare `containerd.types.RuntimeInfo` protobuf on stdout (containerd decodes it directly,
//! not wrapped in an Any): our name and version, the options echoed, and `runc features` as Features.

use protobuf::well_known_types::any::Any;
use protobuf::Message;

use crate::error::{Error, Result};
use crate::options;
use crate::protos::shim::introspection::{RuntimeInfo, RuntimeVersion};

pub(crate) const NAME: &str = "io.containerd.rustrunc.v2";
const FEATURES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// Builds the RuntimeInfo for the runtime options Any given on stdin (may be empty).
pub fn runtime_info(stdin: &[u8]) -> Result<Vec<u8>> {
    let mut info = RuntimeInfo::new();
    info.name = NAME.to_string();
    info.version = Some(RuntimeVersion {
        version: env!("CARGO_PKG_VERSION").to_string(),
        revision: option_env!("GIT_REVISION").unwrap_or("unknown").to_string(),
        ..Default::default()
    })
    .into();
    let mut binary = "runc".to_string();
    if !stdin.is_empty() {
        let any = Any::parse_from_bytes(stdin)
            .map_err(|e| Error::InvalidArgument(format!("-info: stdin is not a runtime options Any: {e}")))?;
        let opts = options::from_any(&any.type_url, &any.value)?;
        if !opts.binary_name.is_empty() {
            binary = opts.binary_name;
        }
        info.options = Some(any).into();
    }
    let out = std::process::Command::new(&binary)
        .arg("features")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::FailedPrecondition(format!("-info: running {binary:?} features: {e}")))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "-info: {binary} features failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut features = Any::new();
    features.type_url = FEATURES_TYPE.to_string();
    features.value = out.stdout;
    info.features = Some(features).into();
    info.write_to_bytes()
        .map_err(|e| Error::Other(format!("-info: encoding RuntimeInfo: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_info_decodes_with_features_and_echoed_options() {
        if std::process::Command::new("runc").arg("--version").output().is_err() {
            println!("skipped: runc is not installed");
            return;
        }
        let bytes = runtime_info(b"").unwrap();
        let info = RuntimeInfo::parse_from_bytes(&bytes).unwrap();
        assert_eq!(info.name, NAME);
        assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.features.type_url, FEATURES_TYPE);
        let f: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
        assert!(f.get("ociVersionMax").is_some(), "{f}");
        assert!(info.options.is_none());

        let mut o = crate::protos::shim::oci::Options::new();
        o.binary_name = "runc".into();
        let any = crate::events::to_any(&o);
        let info = RuntimeInfo::parse_from_bytes(&runtime_info(&any.write_to_bytes().unwrap()).unwrap()).unwrap();
        assert_eq!(info.options.type_url, "containerd.runc.v1.Options");

        let e = runtime_info(b"\xff\xff").unwrap_err();
        assert!(e.to_string().contains("not a runtime options Any"), "{e}");
    }
}
