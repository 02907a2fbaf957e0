//! Host tooling for tuk components, shared by the `tuk` CLI's `component build`, `compile` and
//! `run --component`:
//!
//! - [`build`]: a guest crate (Rust, `wit-bindgen`, `wasm32-unknown-unknown`) → core module
//!   (with whichever toolchain this machine has, see [`toolchain`]) → component
//!   ([`build::componentize`], with `wit-component`).
//! - [`compile`]: a component → the host-kernel's ahead-of-time compiled code, with the engine
//!   configuration the kernel itself uses ([`tuk_engine::config`]).
//!
//! Every step reads and writes bytes or files and reports an [`Artifact`] (path, size,
//! SHA-256), the identity `tuk` prints and the kernel will measure.
#![forbid(unsafe_code)]

pub mod build;
pub mod compile;
pub mod deploy;
pub mod toolchain;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use build::{build, componentize, BuildError, BuildOptions, Built};
pub use compile::{compile, compile_file, detect, CompileError, WasmKind};
pub use deploy::{boot_pack, DeployError, Deployment, Packed};
pub use toolchain::{Toolchain, ToolchainError};

/// A file tuk wrote, with what identifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub path: PathBuf,
    pub size: u64,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
}

impl Artifact {
    /// Describes `bytes`, which were (or will be) written to `path`.
    pub fn of(path: &Path, bytes: &[u8]) -> Artifact {
        Artifact {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        }
    }
}

impl std::fmt::Display for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}  sha256:{}  {} bytes",
            self.path.display(),
            self.sha256,
            self.size
        )
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` to `path`, creating its parent directories.
fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            super::sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
