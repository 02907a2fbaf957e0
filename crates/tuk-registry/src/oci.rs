//! The artifact tuk pushes: an OCI image manifest in the CNCF TAG Runtime "Wasm OCI Artifact
//! layout" (config `application/vnd.wasm.config.v0+json`, the component as an
//! `application/wasm` layer), plus tuk's own layers for the compiled code and the signature.
//!
//! ```text
//! manifest (application/vnd.oci.image.manifest.v1+json)
//!   config    application/vnd.wasm.config.v0+json     {"created","architecture":"wasm",
//!                                                      "os":"wasip2","layerDigests":[..],
//!                                                      "component":{"exports","imports","target"}}
//!   layers[0] application/wasm                         the component, byte for byte
//!   layers[1] application/vnd.tuk.component.code.v1    its AOT-compiled code (.cwasm)
//!   layers[2] application/vnd.dsse.envelope.v1+json    the DSSE envelope signing both digests
//!   annotations: org.opencontainers.image.version, org.opencontainers.image.created,
//!                dev.tuk.name
//! ```
//!
//! Wasm tools that read the first (or the `application/wasm`) layer get the component. Tools
//! that insist on exactly one layer (Bytecode Alliance `oci-wasm`'s `WasmClient::pull`, and so
//! `wkg`) refuse the extra layers: see docs/registry.md.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
pub const CODE_LAYER_MEDIA_TYPE: &str = "application/vnd.tuk.component.code.v1";
pub const ENVELOPE_LAYER_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";

pub const ANNOTATION_VERSION: &str = "org.opencontainers.image.version";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
pub const ANNOTATION_NAME: &str = "dev.tuk.name";

/// `os` of the Wasm config for a component (WASI preview 2) and for a core module.
pub const COMPONENT_OS: &str = "wasip2";
pub const MODULE_OS: &str = "wasip1";

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: digest_of(bytes),
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
        }
    }

    fn titled(mut self, title: &str) -> Descriptor {
        self.annotations
            .insert(ANNOTATION_TITLE.to_owned(), title.to_owned());
        self
    }
}

/// An OCI image manifest (the fields tuk writes and reads; others are ignored on read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The Wasm OCI artifact's config blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// RFC 3339 creation time (optional in the layout; `oci-wasm` requires it, so tuk writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Always `wasm`.
    pub architecture: String,
    /// `wasip2` for a component, `wasip1` for a core module.
    pub os: String,
    /// The manifest's layer digests, in order.
    pub layer_digests: Vec<String>,
    /// Required when `os` is `wasip2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<ComponentInfo>,
}

/// The component's top-level imports and exports (interface names such as
/// `tuk:service/handler@0.1.0`) and, optionally, the world it targets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInfo {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// What `publish` writes into the artifact besides the three blobs.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    /// The component's name (`dev.tuk.name`), e.g. `hello`.
    pub name: String,
    /// Its version (`org.opencontainers.image.version`), e.g. `1.0.0`.
    pub version: String,
    /// The WIT world it targets (the config's `component.target`), e.g.
    /// `tuk:service/service@0.1.0`.
    pub target: Option<String>,
    /// Creation time (the config's `created` and `org.opencontainers.image.created`); passed
    /// in so that a publish is reproducible under test.
    pub created: SystemTime,
    /// Use http even for a non-loopback registry.
    pub insecure: bool,
}

/// The config, the manifest and their serialized bytes for one bundle.
pub(crate) struct Artifact {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

pub(crate) fn build_artifact(
    wasm: &[u8],
    code: &[u8],
    envelope: &[u8],
    opts: &PublishOptions,
) -> Result<Artifact, String> {
    let kind = wasm_kind(wasm)?;
    let name = &opts.name;
    let layers = vec![
        Descriptor::of(WASM_LAYER_MEDIA_TYPE, wasm).titled(&format!("{name}.wasm")),
        Descriptor::of(CODE_LAYER_MEDIA_TYPE, code).titled(&format!("{name}.cwasm")),
        Descriptor::of(ENVELOPE_LAYER_MEDIA_TYPE, envelope).titled(&format!("{name}.dsse.json")),
    ];
    let created = rfc3339(opts.created);
    let component = match kind {
        WasmKind::Component => Some(ComponentInfo {
            target: opts.target.clone(),
            ..component_info(wasm)?
        }),
        WasmKind::Module => None,
    };
    let config = WasmConfig {
        created: Some(created.clone()),
        author: None,
        architecture: "wasm".to_owned(),
        os: match kind {
            WasmKind::Component => COMPONENT_OS,
            WasmKind::Module => MODULE_OS,
        }
        .to_owned(),
        layer_digests: layers.iter().map(|l| l.digest.clone()).collect(),
        component,
    };
    let config = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.to_owned()),
        config: Descriptor::of(WASM_CONFIG_MEDIA_TYPE, &config),
        layers,
        annotations: BTreeMap::from([
            (ANNOTATION_CREATED.to_owned(), created),
            (ANNOTATION_NAME.to_owned(), opts.name.clone()),
            (ANNOTATION_VERSION.to_owned(), opts.version.clone()),
        ]),
    };
    let manifest = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    Ok(Artifact { config, manifest })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WasmKind {
    Component,
    Module,
}

/// Tells a component from a core module by the header (`\0asm`, then version and layer).
pub(crate) fn wasm_kind(wasm: &[u8]) -> Result<WasmKind, String> {
    match wasm.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Ok(WasmKind::Module),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(WasmKind::Component),
        _ => Err("the bundle's wasm section is not a WebAssembly module or component".into()),
    }
}

/// The names of a component's top-level imports and exports (types excluded), in order.
pub fn component_info(wasm: &[u8]) -> Result<ComponentInfo, String> {
    use wasmparser::{ComponentExternalKind, ComponentTypeRef, Parser, Payload};
    let mut info = ComponentInfo::default();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| format!("cannot read the component: {e}"))?;
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| format!("bad import section: {e}"))?;
                    if !matches!(import.ty, ComponentTypeRef::Type(_)) {
                        info.imports.push(import.name.name.to_owned());
                    }
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| format!("bad export section: {e}"))?;
                    if export.kind != ComponentExternalKind::Type {
                        info.exports.push(export.name.name.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) for `t`; times before 1970 print as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn wasm_kinds() {
        assert_eq!(wasm_kind(b"\0asm\x01\0\0\0"), Ok(WasmKind::Module));
        assert_eq!(wasm_kind(b"\0asm\x0d\0\x01\0"), Ok(WasmKind::Component));
        assert!(wasm_kind(b"\0asm").is_err());
        assert!(wasm_kind(b"not wasm at all").is_err());
    }

    #[test]
    fn an_empty_component_has_no_imports_or_exports() {
        assert_eq!(
            component_info(b"\0asm\x0d\0\x01\0").unwrap(),
            ComponentInfo::default()
        );
        assert!(component_info(b"\0asm\x0d\0\x01\0\x0a\x05junk").is_err());
    }
}
