//! Which Rust toolchain builds components for `wasm32-unknown-unknown` on this machine.
//!
//! Two kinds work (docs/platform.md):
//! - [`Toolchain::Rustup`]: the machine's own rustup toolchain, when
//!   `rustup target list --installed` lists `wasm32-unknown-unknown` (a prebuilt standard
//!   library; rustup's `rust-lld` links). Preferred.
//! - [`Toolchain::Debian`]: Debian's `rustc-web`/`cargo-web` with `rust-web-src` (the library
//!   sources) and `lld` (`wasm-ld`). It has no prebuilt wasm32 library, so cargo builds `core`
//!   and `alloc` itself (`-Zbuild-std`, allowed on a stable compiler by `RUSTC_BOOTSTRAP=1`).
//!
//! `TUK_WASM_TOOLCHAIN=rustup` or `=debian` forces one.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TARGET: &str = "wasm32-unknown-unknown";

/// Debian's toolchain, called by full path: rustup's `~/.cargo/bin` shadows `/usr/bin`.
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_PACKAGES: &str = "rustc-web cargo-web rust-web-src lld";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Toolchain {
    /// The machine's (rustup's) toolchain with the wasm32 target installed.
    Rustup,
    /// Debian's toolchain with build-std, linking with `wasm_ld`.
    Debian { wasm_ld: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    #[error(
        "no Rust toolchain here can build {TARGET}: either `rustup target add {TARGET}`, or \
         install Debian's toolchain: `apt-get install {DEBIAN_PACKAGES}` ({missing})"
    )]
    NoneFound { missing: String },
    #[error("TUK_WASM_TOOLCHAIN={0:?} is not a toolchain: use `rustup` or `debian`")]
    BadOverride(String),
    #[error("TUK_WASM_TOOLCHAIN=rustup, but `rustup target list --installed` has no {TARGET}: run `rustup target add {TARGET}`")]
    RustupMissing,
    #[error("TUK_WASM_TOOLCHAIN=debian, but {missing}: `apt-get install {DEBIAN_PACKAGES}`")]
    DebianMissing { missing: String },
}

impl Toolchain {
    /// The toolchain to use: the override if set, else the machine's if it has the target,
    /// else Debian's if complete.
    pub fn detect() -> Result<Toolchain, ToolchainError> {
        match std::env::var("TUK_WASM_TOOLCHAIN").ok().as_deref() {
            Some("rustup") => machine_has_target()
                .then_some(Toolchain::Rustup)
                .ok_or(ToolchainError::RustupMissing),
            Some("debian") => debian().map_err(|missing| ToolchainError::DebianMissing { missing }),
            Some(other) if !other.is_empty() => Err(ToolchainError::BadOverride(other.into())),
            _ if machine_has_target() => Ok(Toolchain::Rustup),
            _ => debian().map_err(|missing| ToolchainError::NoneFound { missing }),
        }
    }

    /// A short stable name for machine-readable output (as `tuk kernel build` uses).
    pub fn id(&self) -> &'static str {
        match self {
            Toolchain::Rustup => "rustup",
            Toolchain::Debian { .. } => "debian-rustc-web",
        }
    }

    /// One line for the user: which toolchain builds and how.
    pub fn describe(&self) -> String {
        match self {
            Toolchain::Rustup => {
                format!("the machine's rustup toolchain (target {TARGET} installed)")
            }
            Toolchain::Debian { wasm_ld } => {
                format!(
                    "Debian's toolchain ({DEBIAN_RUSTC}, build-std, linker {})",
                    wasm_ld.display()
                )
            }
        }
    }

    /// A `cargo` command with this toolchain's environment, run in `dir` (so that the
    /// workspace's `.cargo/config.toml` applies).
    pub fn cargo(&self, dir: &Path) -> Command {
        let mut cmd;
        match self {
            Toolchain::Rustup => cmd = Command::new("cargo"),
            Toolchain::Debian { wasm_ld } => {
                cmd = Command::new(DEBIAN_CARGO);
                let mut path = OsString::from("/usr/bin:/bin");
                if let Some(old) = std::env::var_os("PATH") {
                    path.push(":");
                    path.push(old);
                }
                cmd.env("PATH", path)
                    .env("RUSTC", DEBIAN_RUSTC)
                    .env("RUSTC_BOOTSTRAP", "1")
                    .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", wasm_ld)
                    // A rustup-selected toolchain (set when tuk runs under `cargo`) must not
                    // leak into Debian's cargo.
                    .env_remove("RUSTUP_TOOLCHAIN")
                    .env_remove("RUSTC_WRAPPER");
            }
        }
        cmd.current_dir(dir);
        cmd
    }

    /// The arguments of a release build for [`TARGET`].
    pub fn build_args(&self) -> Vec<&'static str> {
        let mut args = vec!["build", "--release", "--target", TARGET];
        if let Toolchain::Debian { .. } = self {
            args.push("-Zbuild-std=core,alloc,panic_abort");
        }
        args
    }
}

fn machine_has_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l.trim() == TARGET)
        })
}

/// Debian's toolchain if all of it is installed, else what is missing.
fn debian() -> Result<Toolchain, String> {
    let mut missing = Vec::new();
    for (file, package) in [(DEBIAN_CARGO, "cargo-web"), (DEBIAN_RUSTC, "rustc-web")] {
        if !Path::new(file).is_file() {
            missing.push(format!("no {file} ({package})"));
        }
    }
    if Path::new(DEBIAN_RUSTC).is_file() {
        let sysroot = Command::new(DEBIAN_RUSTC)
            .args(["--print", "sysroot"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        let src = sysroot.map(|s| s.join("lib/rustlib/src/rust/library/core/Cargo.toml"));
        if !src.as_deref().is_some_and(Path::is_file) {
            missing.push("no standard library source (rust-web-src)".into());
        }
    }
    let wasm_ld = find_in_path("wasm-ld");
    if wasm_ld.is_none() {
        missing.push("no wasm-ld (lld)".into());
    }
    match (missing.is_empty(), wasm_ld) {
        (true, Some(wasm_ld)) => Ok(Toolchain::Debian { wasm_ld }),
        _ => Err(missing.join(", ")),
    }
}

/// `name` in `/usr/bin` or on `PATH`.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(PathBuf::from("/usr/bin"))
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_builds_std_and_machine_does_not() {
        let debian = Toolchain::Debian {
            wasm_ld: "/usr/bin/wasm-ld".into(),
        };
        assert!(debian
            .build_args()
            .contains(&"-Zbuild-std=core,alloc,panic_abort"));
        assert!(!Toolchain::Rustup
            .build_args()
            .iter()
            .any(|a| a.starts_with("-Z")));
        let cmd = debian.cargo(Path::new("/tmp"));
        assert_eq!(cmd.get_program(), DEBIAN_CARGO);
        assert!(cmd
            .get_envs()
            .any(|(k, v)| k == "RUSTC_BOOTSTRAP" && v == Some("1".as_ref())));
    }
}
