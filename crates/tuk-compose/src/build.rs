//! `tuk component build`: a guest crate → a core module → a component.
//!
//! The crate (or every `cdylib` member of a workspace) is built in release mode for
//! `wasm32-unknown-unknown` with the [`Toolchain`] found on this machine. `wit-bindgen` in the
//! guest embeds the world the module implements (a `component-type` custom section);
//! [`componentize`] reads it and wraps the module into a component with `wit-component`,
//! validating the result.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::toolchain::{Toolchain, ToolchainError, TARGET};
use crate::Artifact;

#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Where components are written as `<package name>.wasm`.
    pub out_dir: PathBuf,
    /// The output file instead, when exactly one component is built.
    pub out: Option<PathBuf>,
    /// Pass `--locked` to cargo (CI: fail instead of changing `Cargo.lock`).
    pub locked: bool,
    /// The toolchain to use; `None` detects it ([`Toolchain::detect`]).
    pub toolchain: Option<Toolchain>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            out_dir: PathBuf::from("target/components"),
            out: None,
            locked: false,
            toolchain: None,
        }
    }
}

/// One component written by [`build`].
#[derive(Clone, Debug)]
pub struct Built {
    /// The cargo package's name, also the component's file name.
    pub name: String,
    /// The core module cargo produced.
    pub core_module: PathBuf,
    /// The component.
    pub artifact: Artifact,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Toolchain(#[from] ToolchainError),
    #[error(
        "{0} has no Cargo.toml: give the directory of a component crate or of a workspace of them"
    )]
    NotACrate(PathBuf),
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`cargo metadata` failed in {dir}: {stderr}")]
    Metadata { dir: PathBuf, stderr: String },
    #[error("crate {0:?} is not a component: add `[lib] crate-type = [\"cdylib\"]` and implement the world with wit-bindgen")]
    NotCdylib(String),
    #[error("{0} has no component crates (no member with `crate-type = [\"cdylib\"]`)")]
    NoComponents(PathBuf),
    #[error("--out names one file, but {0} components were built: use an output directory")]
    OutForMany(usize),
    #[error("cargo build failed ({status}) with {toolchain}; its messages are above")]
    Cargo {
        status: std::process::ExitStatus,
        toolchain: String,
    },
    #[error("cannot make a component of {name}: {message}")]
    Componentize { name: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Wraps a core module built with wit-bindgen into a component, validated.
pub fn componentize(core_module: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(core_module)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|e| format!("{e:#}"))
}

/// A cargo package with a `cdylib` target.
#[derive(Debug)]
struct Package {
    name: String,
    /// The library's file stem (`-` becomes `_`).
    lib_name: String,
}

struct Metadata {
    target_dir: PathBuf,
    packages: Vec<Package>,
}

/// Builds the component crate in `dir`, or every component crate of the workspace rooted
/// there, and writes the components. Returns the toolchain used and what was written.
pub fn build(dir: &Path, opts: &BuildOptions) -> Result<(Toolchain, Vec<Built>), BuildError> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::NotACrate(dir.to_path_buf()));
    }
    let toolchain = match &opts.toolchain {
        Some(t) => t.clone(),
        None => Toolchain::detect()?,
    };
    let meta = metadata(&toolchain, dir, &manifest)?;
    if opts.out.is_some() && meta.packages.len() > 1 {
        return Err(BuildError::OutForMany(meta.packages.len()));
    }

    let mut cargo = toolchain.cargo(dir);
    cargo.args(toolchain.build_args());
    for p in &meta.packages {
        cargo.args(["-p", &p.name]);
    }
    if opts.locked {
        cargo.arg("--locked");
    }
    let status = cargo.status().map_err(spawn_error(&cargo))?;
    if !status.success() {
        return Err(BuildError::Cargo {
            status,
            toolchain: toolchain.describe(),
        });
    }

    let mut built = Vec::new();
    for p in meta.packages {
        let core_module = meta
            .target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", p.lib_name));
        let bytes = std::fs::read(&core_module).map_err(|source| BuildError::Io {
            path: core_module.clone(),
            source,
        })?;
        let component = componentize(&bytes).map_err(|message| BuildError::Componentize {
            name: p.name.clone(),
            message,
        })?;
        let out = opts
            .out
            .clone()
            .unwrap_or_else(|| opts.out_dir.join(format!("{}.wasm", p.name)));
        crate::write_file(&out, &component).map_err(|source| BuildError::Io {
            path: out.clone(),
            source,
        })?;
        built.push(Built {
            name: p.name,
            core_module,
            artifact: Artifact::of(&out, &component),
        });
    }
    Ok((toolchain, built))
}

fn spawn_error(cmd: &Command) -> impl FnOnce(std::io::Error) -> BuildError {
    let program = cmd.get_program().to_string_lossy().into_owned();
    move |source| BuildError::Spawn { program, source }
}

/// The target directory and the component packages to build: the package whose manifest is
/// `manifest`, or, for a virtual workspace, every member with a `cdylib` target.
fn metadata(toolchain: &Toolchain, dir: &Path, manifest: &Path) -> Result<Metadata, BuildError> {
    let mut cmd = toolchain.cargo(dir);
    cmd.args(["metadata", "--format-version", "1", "--no-deps"]);
    let out = cmd.output().map_err(spawn_error(&cmd))?;
    if !out.status.success() {
        return Err(BuildError::Metadata {
            dir: dir.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let bad = |what: &str| BuildError::Metadata {
        dir: dir.to_path_buf(),
        stderr: format!("unexpected output: {what}"),
    };
    let json: Value = serde_json::from_slice(&out.stdout).map_err(|_| bad("not JSON"))?;
    let target_dir = json["target_directory"]
        .as_str()
        .ok_or_else(|| bad("no target_directory"))?
        .into();
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let manifest = canonical(manifest);

    let mut all = Vec::new();
    for pkg in json["packages"]
        .as_array()
        .ok_or_else(|| bad("no packages"))?
    {
        let name = pkg["name"]
            .as_str()
            .ok_or_else(|| bad("a package without a name"))?
            .to_owned();
        let is_root = pkg["manifest_path"]
            .as_str()
            .is_some_and(|m| canonical(Path::new(m)) == manifest);
        let lib_name = pkg["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|t| {
                let cdylib = t["crate_types"].as_array()?.iter().any(|c| c == "cdylib");
                cdylib
                    .then(|| t["name"].as_str().map(|n| n.replace('-', "_")))
                    .flatten()
            });
        all.push((name, is_root, lib_name));
    }
    let packages = match all.iter().position(|(_, is_root, _)| *is_root) {
        // A crate directory: that crate, which must be a component.
        Some(i) => {
            let (name, _, lib_name) = all.swap_remove(i);
            vec![Package {
                lib_name: lib_name.ok_or_else(|| BuildError::NotCdylib(name.clone()))?,
                name,
            }]
        }
        // A virtual workspace: its component members.
        None => all
            .into_iter()
            .filter_map(|(name, _, lib_name)| {
                Some(Package {
                    name,
                    lib_name: lib_name?,
                })
            })
            .collect(),
    };
    if packages.is_empty() {
        return Err(BuildError::NoComponents(dir.to_path_buf()));
    }
    Ok(Metadata {
        target_dir,
        packages,
    })
}
