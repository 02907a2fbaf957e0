//! Deployment: what `tuk run --component` hands the host-kernel at boot.
//!
//! Each component is given as `NAME=PATH`, where PATH is a component (`.wasm`, compiled here
//! with [`crate::compile`]) or code `tuk compile` already produced (`.cwasm`). Per-component
//! settings become the boot pack's metadata (see `tuk-bootpack`): `memory_limit_bytes`,
//! `deadline_ms`, and `config.<key>` values the component reads through its `config` import.

use std::path::{Path, PathBuf};

use tuk_bootpack::PackBuilder;

use crate::{detect, Artifact, CompileError, WasmKind};

/// One component to deploy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    pub name: String,
    pub source: PathBuf,
    /// Boot-pack metadata, in order.
    pub meta: Vec<(String, String)>,
}

/// What was packed for one component: its name, source file, and the identity of the code
/// the kernel will load.
#[derive(Clone, Debug)]
pub struct Packed {
    pub name: String,
    pub source: Artifact,
    pub code: Artifact,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("--component {0:?}: expected NAME=PATH, e.g. hello=target/components/hello.wasm")]
    Syntax(String),
    #[error("{arg:?}: expected NAME.KEY=VALUE for a component named with --component")]
    SettingSyntax { arg: String },
    #[error("{arg:?}: no component named {name:?} (name it with --component {name}=PATH first)")]
    UnknownComponent { arg: String, name: String },
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("component {name} ({path}): {source}")]
    Compile {
        name: String,
        path: String,
        source: CompileError,
    },
    #[error("component {name} ({path}): not a component or compiled code; build it with `tuk component build`")]
    NotWasm { name: String, path: String },
    #[error("component {name} ({path}): with --trust, components must be signed bundles: make one with `tuk sign`")]
    Unsigned { name: String, path: String },
    #[error("{0}")]
    Pack(#[from] tuk_bootpack::PackError),
}

/// Parses `NAME=PATH`.
pub fn parse_component_arg(arg: &str) -> Result<Deployment, DeployError> {
    let (name, path) = arg
        .split_once('=')
        .ok_or_else(|| DeployError::Syntax(arg.into()))?;
    if path.is_empty() {
        return Err(DeployError::Syntax(arg.into()));
    }
    if !tuk_bootpack::valid_name(name) {
        return Err(tuk_bootpack::PackError::BadName(name.into()).into());
    }
    Ok(Deployment {
        name: name.into(),
        source: PathBuf::from(path),
        meta: Vec::new(),
    })
}

/// The deployment called `name`, which `arg` (for the error message) refers to.
fn named<'a>(
    deployments: &'a mut [Deployment],
    arg: &str,
    name: &str,
) -> Result<&'a mut Deployment, DeployError> {
    deployments
        .iter_mut()
        .find(|d| d.name == name)
        .ok_or_else(|| DeployError::UnknownComponent {
            arg: arg.into(),
            name: name.into(),
        })
}

/// Applies `NAME.KEY=VALUE` to the deployment `NAME` as metadata `prefix` + `KEY` = `VALUE`.
pub fn apply_setting(
    deployments: &mut [Deployment],
    arg: &str,
    prefix: &str,
) -> Result<(), DeployError> {
    let syntax = || DeployError::SettingSyntax { arg: arg.into() };
    let (target, value) = arg.split_once('=').ok_or_else(syntax)?;
    let (name, key) = target.split_once('.').ok_or_else(syntax)?;
    if key.is_empty() {
        return Err(syntax());
    }
    named(deployments, arg, name)?
        .meta
        .push((format!("{prefix}{key}"), value.into()));
    Ok(())
}

/// Sets one metadata key of deployment `name` (`NAME=VALUE` arguments such as limits).
pub fn apply_value(
    deployments: &mut [Deployment],
    arg: &str,
    key: &str,
    convert: impl Fn(&str) -> Option<String>,
) -> Result<(), DeployError> {
    let syntax = || DeployError::SettingSyntax { arg: arg.into() };
    let (name, value) = arg.split_once('=').ok_or_else(syntax)?;
    let value = convert(value).ok_or_else(syntax)?;
    named(deployments, arg, name)?
        .meta
        .push((key.into(), value));
    Ok(())
}

/// The magic of a signed bundle (`tuk sign`, docs/measurement.md).
const BUNDLE_MAGIC: &[u8; 8] = b"TUKBNDL1";

/// Reads, compiles where needed, and packs every deployment into a boot pack.
///
/// With a trust `policy` (canonical JSON, `tuk policy`), every component must be a signed
/// bundle: bundles go into the pack as they are (the kernel verifies and measures them), and
/// the policy goes in as the reserved `_policy` entry. Without one, components are compiled
/// code (development mode: measured, never attestable as trusted).
pub fn boot_pack(
    deployments: &[Deployment],
    policy: Option<&[u8]>,
) -> Result<(Vec<u8>, Vec<Packed>), DeployError> {
    let mut builder = PackBuilder::new();
    if let Some(policy) = policy {
        builder.add_reserved(tuk_bootpack::POLICY, &[], policy)?;
    }
    let mut packed = Vec::with_capacity(deployments.len());
    for d in deployments {
        let path = d.source.display().to_string();
        let bytes = std::fs::read(&d.source).map_err(|source| DeployError::Read {
            path: path.clone(),
            source,
        })?;
        let signed = bytes.starts_with(BUNDLE_MAGIC);
        if policy.is_some() && !signed {
            return Err(DeployError::Unsigned {
                name: d.name.clone(),
                path,
            });
        }
        let code = match detect(&bytes) {
            _ if signed => bytes.clone(),
            WasmKind::Precompiled => bytes.clone(),
            WasmKind::Component | WasmKind::CoreModule => {
                crate::compile(&bytes).map_err(|source| DeployError::Compile {
                    name: d.name.clone(),
                    path: path.clone(),
                    source,
                })?
            }
            WasmKind::Unknown => {
                return Err(DeployError::NotWasm {
                    name: d.name.clone(),
                    path,
                })
            }
        };
        let meta: Vec<(&str, &str)> = d
            .meta
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        builder.add(&d.name, &meta, &code)?;
        packed.push(Packed {
            name: d.name.clone(),
            source: Artifact::of(&d.source, &bytes),
            code: Artifact::of(Path::new(&format!("boot-pack:{}", d.name)), &code),
        });
    }
    Ok((builder.finish(), packed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arguments() {
        let mut d = vec![parse_component_arg("hello=a/b.wasm").unwrap()];
        assert_eq!(d[0].name, "hello");
        assert_eq!(d[0].source, PathBuf::from("a/b.wasm"));
        assert!(parse_component_arg("hello").is_err());
        assert!(parse_component_arg("hello=").is_err());
        assert!(parse_component_arg("Bad=x").is_err());
        apply_setting(&mut d, "hello.greeting=hi there", "config.").unwrap();
        apply_value(&mut d, "hello=500", "deadline_ms", |v| {
            v.parse::<u64>().ok().map(|n| n.to_string())
        })
        .unwrap();
        assert_eq!(
            d[0].meta,
            vec![
                ("config.greeting".into(), "hi there".into()),
                ("deadline_ms".into(), "500".into())
            ]
        );
        assert!(matches!(
            apply_setting(&mut d, "other.k=v", "config."),
            Err(DeployError::UnknownComponent { .. })
        ));
        assert!(apply_setting(&mut d, "hello=v", "config.").is_err());
        assert!(apply_value(&mut d, "hello=abc", "deadline_ms", |v| v
            .parse::<u64>()
            .ok()
            .map(|n| n.to_string()))
        .is_err());
    }

    #[test]
    fn refuses_files_that_are_not_wasm() {
        let dir = std::env::temp_dir().join(format!("tuk-deploy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.wasm");
        std::fs::write(&path, b"not wasm").unwrap();
        let d = Deployment {
            name: "x".into(),
            source: path,
            meta: vec![],
        };
        assert!(matches!(
            boot_pack(&[d], None),
            Err(DeployError::NotWasm { .. })
        ));
        let missing = Deployment {
            name: "y".into(),
            source: dir.join("missing.wasm"),
            meta: vec![],
        };
        assert!(matches!(
            boot_pack(&[missing], None),
            Err(DeployError::Read { .. })
        ));
    }
}
