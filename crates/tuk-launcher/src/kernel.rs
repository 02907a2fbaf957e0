//! Finding, building and measuring the host-kernel image.
//!
//! The kernel is built for `x86_64-unknown-none` with build-std (host-kernel/.cargo/config.toml),
//! which needs a toolchain that carries the standard library's source. Two are looked for, in
//! this order (docs/platform.md): the machine's own (`rustc` on PATH, e.g. rustup nightly with
//! `rust-src`), then Debian's `rustc-web`/`cargo-web`/`rust-web-src` under /usr/bin.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::LaunchError;

/// The kernel's folder inside the source tree.
pub const KERNEL_DIR: &str = "host-kernel";
/// The image, relative to the source tree.
pub const IMAGE_REL: &str = "host-kernel/target/x86_64-unknown-none/release/tuk-kernel";
/// Where the library source sits inside a sysroot.
const SYSROOT_LIBRARY_SRC: &str = "lib/rustlib/src/rust/library";
/// Environment a surrounding cargo (`cargo run`, `cargo test`) sets that must not leak into the
/// kernel's build: it would retarget, re-flag or relocate it.
const CARGO_LEAKS: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_MAKEFLAGS",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_PRIMARY_PACKAGE",
    "__CARGO_FIX_PLZ",
];

/// The toolchain a kernel build used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Toolchain {
    /// The machine's own `cargo`/`rustc` from PATH (rustup), whose sysroot has `rust-src`.
    Rustup { sysroot: PathBuf },
    /// Debian's `rustc-web` + `cargo-web` + `rust-web-src` in /usr/bin.
    DebianRustcWeb,
}

impl Toolchain {
    /// The name used in `tuk kernel build`'s JSON line.
    pub fn id(&self) -> &'static str {
        match self {
            Toolchain::Rustup { .. } => "rustup",
            Toolchain::DebianRustcWeb => "debian-rustc-web",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Toolchain::Rustup { sysroot } => {
                format!(
                    "the machine's own toolchain (rustup, sysroot {})",
                    sysroot.display()
                )
            }
            Toolchain::DebianRustcWeb => {
                "Debian's rustc-web (/usr/bin/cargo, /usr/bin/rustc)".to_owned()
            }
        }
    }

    /// The `cargo build --release` command for this toolchain, run in `kernel_dir`.
    pub fn build_command(&self, kernel_dir: &Path) -> Command {
        let mut cmd = Command::new(match self {
            Toolchain::Rustup { .. } => "cargo",
            Toolchain::DebianRustcWeb => "/usr/bin/cargo",
        });
        for var in CARGO_LEAKS {
            cmd.env_remove(var);
        }
        if let Toolchain::DebianRustcWeb = self {
            cmd.env("PATH", debian_path())
                .env("RUSTC", "/usr/bin/rustc");
        }
        cmd.env("RUSTC_BOOTSTRAP", "1")
            .args(["build", "--release"])
            .current_dir(kernel_dir);
        cmd
    }
}

/// `PATH=/usr/bin:/bin:$PATH`, so Debian's cargo finds Debian's tools (and `ld.lld`) first.
fn debian_path() -> OsString {
    let mut p = OsString::from("/usr/bin:/bin");
    if let Some(old) = std::env::var_os("PATH") {
        p.push(":");
        p.push(old);
    }
    p
}

/// The sysroot `rustc` reports, run as a kernel build would run it.
fn sysroot_of(rustc: &str, kernel_dir: &Path, path: Option<&OsString>) -> Option<PathBuf> {
    let mut cmd = Command::new(rustc);
    cmd.args(["--print", "sysroot"])
        .current_dir(kernel_dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    for var in CARGO_LEAKS {
        cmd.env_remove(var);
    }
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(s.trim()))
}

fn has_library_src(sysroot: &Path) -> bool {
    sysroot.join(SYSROOT_LIBRARY_SRC).join("core").is_dir()
}

/// Finds `name` in a PATH-style list.
fn which(name: &str, path: &OsString) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A tuk source tree (the directory holding `host-kernel/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSource {
    root: PathBuf,
}

impl KernelSource {
    /// `dir` if given (it must be a tuk tree); else the first directory from the current one
    /// upwards that holds `host-kernel/Cargo.toml`; else the tree this crate was built from.
    pub fn locate(dir: Option<&Path>) -> Result<Self, LaunchError> {
        if let Some(dir) = dir {
            return Self::at(dir);
        }
        let cwd = std::env::current_dir().map_err(|e| LaunchError::io("cannot read", ".", e))?;
        if let Some(root) = find_upwards(&cwd) {
            return Ok(Self { root });
        }
        let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        if is_source_tree(&built_from) {
            let root = built_from.canonicalize().unwrap_or(built_from);
            return Ok(Self { root });
        }
        Err(LaunchError::SourceNotFound { start: cwd })
    }

    /// The tree at `dir`, which must hold `host-kernel/Cargo.toml`.
    pub fn at(dir: &Path) -> Result<Self, LaunchError> {
        if is_source_tree(dir) {
            let root = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
            Ok(Self { root })
        } else {
            Err(LaunchError::NotASourceTree {
                dir: dir.to_owned(),
            })
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn kernel_dir(&self) -> PathBuf {
        self.root.join(KERNEL_DIR)
    }

    /// Where `cargo build --release` leaves the image.
    pub fn image_path(&self) -> PathBuf {
        self.root.join(IMAGE_REL)
    }

    /// Picks the toolchain: the machine's own if its sysroot has the library source, else
    /// Debian's rustc-web, else an error that says what to install.
    pub fn detect_toolchain(&self) -> Result<Toolchain, LaunchError> {
        let kdir = self.kernel_dir();
        let mut tried = Vec::new();
        match sysroot_of("rustc", &kdir, None) {
            Some(sysroot) if has_library_src(&sysroot) => {
                return Ok(Toolchain::Rustup { sysroot });
            }
            Some(sysroot) => tried.push(format!(
                "`rustc` on PATH (sysroot {}) has no rust-src",
                sysroot.display()
            )),
            None => tried.push("no `rustc` on PATH".to_owned()),
        }
        let dpath = debian_path();
        let debian_ok = Path::new("/usr/bin/cargo").is_file()
            && sysroot_of("/usr/bin/rustc", &kdir, Some(&dpath))
                .is_some_and(|s| has_library_src(&s));
        if debian_ok {
            if which("ld.lld", &dpath).is_none() {
                return Err(LaunchError::NoKernelToolchain {
                    detail: "Debian's rustc-web is there but `ld.lld` (package lld) is missing"
                        .to_owned(),
                });
            }
            return Ok(Toolchain::DebianRustcWeb);
        }
        tried.push("no /usr/bin/cargo + /usr/bin/rustc with /usr/lib/rustlib/src".to_owned());
        Err(LaunchError::NoKernelToolchain {
            detail: tried.join("; "),
        })
    }

    /// Builds the kernel with `cargo build --release` in `host-kernel/`. Cargo's output goes to
    /// this process's stderr (stdout stays free for machine-readable lines).
    pub fn build(&self, toolchain: &Toolchain) -> Result<KernelImage, LaunchError> {
        let mut cmd = toolchain.build_command(&self.kernel_dir());
        let to_stderr =
            stderr_stdio().map_err(|e| LaunchError::io("cannot duplicate", "stderr", e))?;
        cmd.stdin(Stdio::null()).stdout(to_stderr);
        let program = cmd.get_program().to_owned();
        let status = cmd
            .status()
            .map_err(|e| LaunchError::io("cannot run", program, e))?;
        if !status.success() {
            return Err(LaunchError::BuildFailed {
                status,
                toolchain: toolchain.id(),
            });
        }
        let path = self.image_path();
        if !path.is_file() {
            return Err(LaunchError::BuildOutputMissing { path });
        }
        KernelImage::read(&path)
    }
}

/// `Stdio` for this process's stderr, so a child's stdout lands there.
fn stderr_stdio() -> io::Result<Stdio> {
    use std::os::fd::AsFd;
    Ok(Stdio::from(io::stderr().as_fd().try_clone_to_owned()?))
}

fn is_source_tree(dir: &Path) -> bool {
    dir.join(KERNEL_DIR).join("Cargo.toml").is_file()
}

fn find_upwards(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| is_source_tree(d))
        .map(Path::to_path_buf)
}

/// The image the host side runs: `TUK_KERNEL` if set, else the located tree's build output.
pub fn default_image() -> Result<PathBuf, LaunchError> {
    if let Some(p) = std::env::var_os("TUK_KERNEL") {
        return Ok(PathBuf::from(p));
    }
    Ok(KernelSource::locate(None)?.image_path())
}

/// A kernel image on disk and its measurement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelImage {
    pub path: PathBuf,
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
}

impl KernelImage {
    /// Hashes the image (streamed; the file is read once).
    pub fn read(path: &Path) -> Result<Self, LaunchError> {
        let err = |e| LaunchError::io("cannot read kernel image", path, e);
        let mut f = File::open(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                LaunchError::KernelImageMissing {
                    path: path.to_owned(),
                }
            } else {
                err(e)
            }
        })?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut bytes = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        Ok(Self {
            path: path.to_owned(),
            bytes,
            sha256: hex(&hasher.finalize()),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("tuk-launcher-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn hashes_an_image() {
        let d = scratch("hash");
        let p = d.join("img");
        fs::write(&p, b"abc").unwrap();
        let img = KernelImage::read(&p).unwrap();
        assert_eq!(img.bytes, 3);
        assert_eq!(
            img.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let missing = KernelImage::read(&d.join("nope")).unwrap_err();
        assert!(
            missing.to_string().contains("tuk kernel build"),
            "{missing}"
        );
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn finds_the_tree_upwards_and_checks_overrides() {
        let d = scratch("tree");
        fs::create_dir_all(d.join("host-kernel")).unwrap();
        fs::write(d.join("host-kernel/Cargo.toml"), "").unwrap();
        let deep = d.join("a/b/c");
        fs::create_dir_all(&deep).unwrap();
        assert_eq!(find_upwards(&deep).unwrap(), d);
        let src = KernelSource::at(&d).unwrap();
        assert!(src.image_path().ends_with(IMAGE_REL));
        assert!(matches!(
            KernelSource::at(&deep),
            Err(LaunchError::NotASourceTree { .. })
        ));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn build_command_shapes() {
        let k = Path::new("/src/host-kernel");
        let deb = Toolchain::DebianRustcWeb.build_command(k);
        assert_eq!(deb.get_program(), "/usr/bin/cargo");
        let envs: Vec<_> = deb.get_envs().collect();
        let get = |name: &str| {
            envs.iter()
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| *v)
                .map(|v| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("RUSTC").as_deref(), Some("/usr/bin/rustc"));
        assert_eq!(get("RUSTC_BOOTSTRAP").as_deref(), Some("1"));
        assert!(get("PATH").unwrap().starts_with("/usr/bin:/bin"));
        let args: Vec<_> = deb.get_args().collect();
        assert_eq!(args, ["build", "--release"]);
        assert_eq!(deb.get_current_dir(), Some(k));

        let mine = Toolchain::Rustup {
            sysroot: "/x".into(),
        }
        .build_command(k);
        assert_eq!(mine.get_program(), "cargo");
        // RUSTC is removed (not set) so a surrounding cargo cannot redirect the build.
        assert!(mine.get_envs().any(|(k, v)| k == "RUSTC" && v.is_none()));
        assert_eq!(Toolchain::DebianRustcWeb.id(), "debian-rustc-web");
    }
}
