//! The launcher's one error type. Every message names the next step for the operator.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::qemu::Accel;

/// Everything that can go wrong while building, booting or stopping a host-kernel.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "no tuk source tree found from {start} upwards (looked for host-kernel/Cargo.toml); \
         run inside a tuk checkout or pass --source DIR"
    )]
    SourceNotFound { start: PathBuf },

    #[error("{dir} is not a tuk source tree: {dir}/host-kernel/Cargo.toml is missing; pass the checkout's top directory to --source")]
    NotASourceTree { dir: PathBuf },

    #[error(
        "no Rust toolchain with the standard library's source is available to build the \
         kernel ({detail}); install the Debian packages `rustc-web cargo-web rust-web-src lld` \
         (apt-get install rustc-web cargo-web rust-web-src lld), or rustup nightly with \
         `rustup component add rust-src` plus `lld`"
    )]
    NoKernelToolchain { detail: String },

    #[error("the kernel build failed ({status}) with the {toolchain} toolchain; cargo's messages are above")]
    BuildFailed {
        status: ExitStatus,
        toolchain: &'static str,
    },

    #[error("the kernel build succeeded but {path} does not exist; check host-kernel/Cargo.toml's [[bin]] name (must be tuk-kernel)")]
    BuildOutputMissing { path: PathBuf },

    #[error("kernel image {path} does not exist: run `tuk kernel build` first (or set TUK_KERNEL / pass --kernel PATH)")]
    KernelImageMissing { path: PathBuf },

    #[error("QEMU is not runnable as `{program}` ({cause}): install it with `apt-get install qemu-system-x86`, or set TUK_QEMU to a qemu-system-x86_64 binary")]
    QemuNotFound { program: String, cause: io::Error },

    #[error("cannot listen on {addr}: port {port} is not free ({cause}); pick another port with --listen", port = addr.port())]
    PortInUse { addr: SocketAddr, cause: io::Error },

    #[error("cannot listen on {addr}: {reason}")]
    BadListen {
        addr: SocketAddr,
        reason: &'static str,
    },

    #[error("invalid kernel argument `{arg}`: {reason}")]
    BadKernelArg { arg: String, reason: &'static str },

    #[error("KVM was asked for but /dev/kvm cannot be opened read-write ({cause}); use --accel tcg (or auto), or give this user access to /dev/kvm")]
    KvmUnavailable { cause: io::Error },

    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },

    #[error(
        "QEMU ({accel}) exited during boot with {status}{hint}{}{}",
        tail("console (last lines)", .console_tail),
        tail("QEMU stderr", .stderr_tail),
        hint = died_hint(.status, .stderr_tail)
    )]
    DiedDuringBoot {
        accel: Accel,
        status: ExitStatus,
        console_tail: Vec<String>,
        stderr_tail: Vec<String>,
    },

    #[error(
        "the kernel ({accel}) did not answer GET /_tuk/health within {timeout:?}; QEMU was killed. \
         Raise --boot-timeout if the machine is slow, else read the console{}{}",
        tail("console (last lines)", .console_tail),
        tail("QEMU stderr", .stderr_tail)
    )]
    BootTimeout {
        accel: Accel,
        timeout: Duration,
        console_tail: Vec<String>,
        stderr_tail: Vec<String>,
    },

    #[error("the boot was cancelled; QEMU was stopped")]
    Cancelled,

    #[error("cannot control QEMU (pid {pid}): {cause}")]
    Process { pid: u32, cause: io::Error },

    #[error("vTPM: {0}")]
    Vtpm(#[from] tuk_vtpm::VtpmError),

    #[error("boot pack {path}: {reason}")]
    BadBootPack { path: PathBuf, reason: String },

    #[error("guest RAM is a file in {path}, which is not a directory: mount a tmpfs there, or set TUK_MEMORY_DIR to a tmpfs directory (not a disk: the file holds all guest memory)")]
    MemoryDir { path: PathBuf },
}

impl LaunchError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            cause,
        }
    }
}

/// Formats a block of captured lines for an error message: a title line and the lines, each
/// on a new line (empty when there are none).
pub(crate) fn tail(title: &str, lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut out = format!("\n--- {title} ---");
    for line in lines {
        let _ = write!(out, "\n  | {line}");
    }
    out
}

fn died_hint(status: &ExitStatus, stderr: &[String]) -> &'static str {
    if stderr.iter().any(|l| l.contains("host forwarding rule")) {
        "; QEMU could not forward the listen port: pick another port with --listen"
    } else if stderr.iter().any(|l| l.contains("KVM internal error")) {
        "; KVM cannot run this kernel here (nested/paravirtual KVM): use --accel tcg"
    } else if status.code() == Some(3) {
        "; the kernel reported a fault or panic (status 3), see FATAL:/PANIC: below"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn messages_say_what_to_do() {
        let e = LaunchError::KernelImageMissing {
            path: "/x/tuk-kernel".into(),
        };
        assert!(e.to_string().contains("tuk kernel build"), "{e}");

        let e = LaunchError::QemuNotFound {
            program: "qemu-system-x86_64".into(),
            cause: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(
            e.to_string().contains("apt-get install qemu-system-x86"),
            "{e}"
        );

        let e = LaunchError::PortInUse {
            addr: "127.0.0.1:8123".parse().unwrap(),
            cause: io::Error::from(io::ErrorKind::AddrInUse),
        };
        let s = e.to_string();
        assert!(
            s.contains("port 8123") && s.contains("pick another port"),
            "{s}"
        );

        let e = LaunchError::NoKernelToolchain {
            detail: "none".into(),
        };
        assert!(
            e.to_string()
                .contains("rustc-web cargo-web rust-web-src lld"),
            "{e}"
        );
    }

    #[test]
    fn died_during_boot_prints_console_tail_and_hint() {
        let e = LaunchError::DiedDuringBoot {
            accel: Accel::Tcg,
            status: ExitStatus::from_raw(3 << 8),
            console_tail: vec!["PANIC: out of memory".into()],
            stderr_tail: vec![],
        };
        let s = e.to_string();
        assert!(s.contains("tcg"), "{s}");
        assert!(s.contains("  | PANIC: out of memory"), "{s}");
        assert!(s.contains("fault or panic"), "{s}");
        assert!(!s.contains("QEMU stderr"), "{s}");
    }
}
