//! The QEMU command line, built in one place exactly as docs/contracts.md writes it.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;

use crate::LaunchError;

/// The guest port the kernel listens on unless `port=` says otherwise (contracts.md).
pub const DEFAULT_GUEST_PORT: u16 = 80;
/// The guest port of the kernel's admin listener unless `admin.port=` says otherwise
/// (contracts.md: every `/_tuk/*` endpoint is served there).
pub const DEFAULT_ADMIN_GUEST_PORT: u16 = 8081;
/// `-M`: part of the measured boot configuration (PCR 5). Guest RAM is the memory backend
/// [`MEMORY_BACKEND_ID`] (see [`memory_backend`]).
pub const MACHINE: &str = "microvm,x-option-roms=off,rtc=off,acpi=off,memory-backend=ram";
/// The `id=` of the `-object memory-backend-file` that is guest RAM.
pub const MEMORY_BACKEND_ID: &str = "ram";
/// Guest-physical addresses below this are at the same offset in the memory file: microvm
/// maps the first 3 GiB of RAM at 0 (RAM beyond that goes above 4 GiB, which tuk never
/// configures). Verified for the kernel's segments at 1 MiB (docs/platform.md).
pub const LOW_RAM_LIMIT: u64 = 3 << 30;
/// `-cpu`: must have the CPU features the AOT-compiled components use (tuk-engine); measured.
pub const CPU: &str = "max";

/// Which accelerator QEMU uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM if `/dev/kvm` is usable and a probe boot succeeds, otherwise TCG.
    #[default]
    Auto,
    /// QEMU's binary translator: slow, works everywhere.
    Tcg,
    /// Hardware virtualisation; no fallback when asked for explicitly.
    Kvm,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Accel::Auto),
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            other => Err(format!(
                "unknown accelerator `{other}` (expected auto, tcg or kvm)"
            )),
        }
    }
}

/// The QEMU binary: `TUK_QEMU` if set, else `qemu-system-x86_64` from `PATH`.
pub fn qemu_program() -> OsString {
    std::env::var_os("TUK_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into())
}

/// Checks that the QEMU binary runs at all (`--version`), so a missing package is reported as
/// such rather than as a failed boot.
pub fn check_qemu(program: &OsString) -> Result<(), LaunchError> {
    let not_found = |cause| LaunchError::QemuNotFound {
        program: program.to_string_lossy().into_owned(),
        cause,
    };
    let status = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(not_found)?;
    if status.success() {
        Ok(())
    } else {
        Err(not_found(std::io::Error::other(format!(
            "`--version` exited with {status}"
        ))))
    }
}

/// Joins `key=value` pairs into the kernel command line, refusing what the kernel's
/// space-separated parser (or QEMU's `-append`) could not carry.
pub fn kernel_cmdline(args: &[(String, String)]) -> Result<String, LaunchError> {
    let mut out = Vec::with_capacity(args.len());
    for (k, v) in args {
        let arg = format!("{k}={v}");
        let bad = |reason| LaunchError::BadKernelArg {
            arg: arg.clone(),
            reason,
        };
        if k.is_empty() {
            return Err(bad("the key is empty"));
        }
        if k.contains('=') {
            return Err(bad("the key contains `=`"));
        }
        if arg
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"')
        {
            return Err(bad(
                "keys and values cannot contain spaces, quotes or control characters",
            ));
        }
        out.push(arg);
    }
    Ok(out.join(" "))
}

/// Parses `KEY=VALUE` (as given to `--kernel-arg`).
pub fn parse_kernel_arg(s: &str) -> Result<(String, String), LaunchError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(LaunchError::BadKernelArg {
            arg: s.to_owned(),
            reason: "expected KEY=VALUE",
        }),
    }
}

/// Where inside the guest the host ports are forwarded to: `ip=`, `port=` and `admin.port=` from
/// the kernel arguments when given (so forwarding follows the kernel's configuration), else
/// QEMU user networking's default guest address, port 80 and admin port 8081.
fn guest_target(args: &[(String, String)]) -> Result<(String, u16, u16), LaunchError> {
    let mut ip = String::new(); // empty = slirp's default guest address (10.0.2.15)
    let mut port = DEFAULT_GUEST_PORT;
    let mut admin_port = DEFAULT_ADMIN_GUEST_PORT;
    for (k, v) in args {
        let bad = |reason| LaunchError::BadKernelArg {
            arg: format!("{k}={v}"),
            reason,
        };
        match k.as_str() {
            "port" => {
                port = v
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("port must be 1..=65535"))?
            }
            "admin.port" => {
                admin_port = v
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("admin.port must be 1..=65535"))?
            }
            "ip" => {
                let addr = v.split('/').next().unwrap_or_default();
                let parsed: std::net::Ipv4Addr = addr
                    .parse()
                    .map_err(|_| bad("ip must be an IPv4 address/prefix"))?;
                ip = parsed.to_string();
            }
            _ => {}
        }
    }
    if port == admin_port {
        return Err(LaunchError::BadKernelArg {
            arg: format!("admin.port={admin_port}"),
            reason: "the admin listener needs a guest port of its own (not port=)",
        });
    }
    Ok((ip, port, admin_port))
}

/// Escapes a value for QEMU's option syntax (`,` is doubled).
fn qemu_value(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// The value of the `-object` that backs guest RAM: a file QEMU maps shared, so a host process
/// (the out-of-guest monitor, `tuk tamper`) sees guest RAM in it: guest-physical address `P`
/// (below [`LOW_RAM_LIMIT`]) is file offset `P`.
pub fn memory_backend(memory_mib: u32, memory_file: &Path) -> String {
    format!(
        "memory-backend-file,id={MEMORY_BACKEND_ID},size={memory_mib}M,mem-path={},share=on",
        qemu_value(memory_file)
    )
}

/// The arguments after the program name, exactly as docs/contracts.md lists them, forwarding
/// only the service listener (see [`qemu_args_admin`] for both).
pub fn qemu_args(
    kernel: &Path,
    accel: Accel,
    memory_mib: u32,
    memory_file: &Path,
    listen: SocketAddr,
    kernel_args: &[(String, String)],
) -> Result<Vec<OsString>, LaunchError> {
    qemu_args_admin(
        kernel,
        accel,
        memory_mib,
        memory_file,
        listen,
        None,
        kernel_args,
    )
}

/// A host address QEMU user networking can forward: IPv4, a real port.
fn check_forwardable(addr: SocketAddr) -> Result<std::net::Ipv4Addr, LaunchError> {
    let IpAddr::V4(ip) = addr.ip() else {
        return Err(LaunchError::BadListen {
            addr,
            reason:
                "QEMU user networking forwards IPv4 only; use an IPv4 address such as 127.0.0.1",
        });
    };
    if addr.port() == 0 {
        return Err(LaunchError::BadListen {
            addr,
            reason: "port 0 is not a port; pick a free one (e.g. 127.0.0.1:8080)",
        });
    }
    Ok(ip)
}

/// The arguments after the program name, exactly as docs/contracts.md lists them.
/// `accel` must be resolved (not [`Accel::Auto`]). `memory_file` backs guest RAM
/// ([`memory_backend`]); QEMU sizes it. `listen` is forwarded to the kernel's service listener
/// (`port=`), `admin` (if any) to its admin listener (`admin.port=`).
pub fn qemu_args_admin(
    kernel: &Path,
    accel: Accel,
    memory_mib: u32,
    memory_file: &Path,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    kernel_args: &[(String, String)],
) -> Result<Vec<OsString>, LaunchError> {
    assert!(
        accel != Accel::Auto,
        "qemu_args needs a resolved accelerator"
    );
    let listen_ip = check_forwardable(listen)?;
    let cmdline = kernel_cmdline(kernel_args)?;
    let (guest_ip, guest_port, guest_admin_port) = guest_target(kernel_args)?;
    let memory = memory_mib.to_string();
    let backend = memory_backend(memory_mib, memory_file);
    let mut netdev = format!(
        "user,id=net0,hostfwd=tcp:{listen_ip}:{}-{guest_ip}:{guest_port}",
        listen.port()
    );
    if let Some(admin) = admin {
        let admin_ip = check_forwardable(admin)?;
        if admin == listen {
            return Err(LaunchError::BadListen {
                addr: admin,
                reason: "the admin listener needs its own host address (not --listen's)",
            });
        }
        netdev.push_str(&format!(
            ",hostfwd=tcp:{admin_ip}:{}-{guest_ip}:{guest_admin_port}",
            admin.port()
        ));
    }
    #[rustfmt::skip]
    let head = [
        "-accel", accel.as_str(),
        "-M", MACHINE,
        "-cpu", CPU,
        "-smp", "1",
        "-m", &memory,
        "-object", &backend,
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-monitor", "none",
        "-serial", "stdio",
        "-no-reboot",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
        "-global", "virtio-mmio.force-legacy=false",
        "-netdev", &netdev,
        "-device", "virtio-net-device,netdev=net0",
        "-kernel",
    ];
    let mut argv: Vec<OsString> = head.iter().map(OsString::from).collect();
    argv.push(kernel.as_os_str().to_owned());
    argv.push("-append".into());
    argv.push(cmdline.into());
    Ok(argv)
}

/// The vTPM: a TPM 2.0 CRB device (MMIO 0xFED40000) backed by the VM's swtpm, reached over
/// its control socket. QEMU option values double commas to carry them.
pub fn vtpm_args(swtpm_ctrl: &Path) -> Vec<OsString> {
    let path = qemu_value(swtpm_ctrl);
    [
        "-chardev".to_owned(),
        format!("socket,id=chrtpm,path={path}"),
        "-tpmdev".to_owned(),
        "emulator,id=tpm0,chardev=chrtpm".to_owned(),
        "-device".to_owned(),
        "tpm-crb,tpmdev=tpm0".to_owned(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(argv: &[OsString]) -> Vec<&str> {
        argv.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn argv_matches_the_contract() {
        let args = vec![
            ("http.request_timeout_ms".to_owned(), "1500".to_owned()),
            ("log".to_owned(), "debug".to_owned()),
        ];
        let argv = qemu_args(
            Path::new("/k/tuk-kernel"),
            Accel::Tcg,
            64,
            Path::new("/dev/shm/tuk-1-8080-0.ram"),
            "127.0.0.1:8080".parse().unwrap(),
            &args,
        )
        .unwrap();
        assert_eq!(
            s(&argv),
            [
                "-accel",
                "tcg",
                "-M",
                "microvm,x-option-roms=off,rtc=off,acpi=off,memory-backend=ram",
                "-cpu",
                "max",
                "-smp",
                "1",
                "-m",
                "64",
                "-object",
                "memory-backend-file,id=ram,size=64M,mem-path=/dev/shm/tuk-1-8080-0.ram,share=on",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-monitor",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=4",
                "-global",
                "virtio-mmio.force-legacy=false",
                "-netdev",
                "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80",
                "-device",
                "virtio-net-device,netdev=net0",
                "-kernel",
                "/k/tuk-kernel",
                "-append",
                "http.request_timeout_ms=1500 log=debug",
            ]
        );
    }

    #[test]
    fn vtpm_device() {
        let v = vtpm_args(Path::new("/s/a,b/swtpm.sock"));
        assert_eq!(
            s(&v),
            [
                "-chardev",
                "socket,id=chrtpm,path=/s/a,,b/swtpm.sock",
                "-tpmdev",
                "emulator,id=tpm0,chardev=chrtpm",
                "-device",
                "tpm-crb,tpmdev=tpm0",
            ]
        );
    }

    #[test]
    fn kvm_memory_and_empty_cmdline() {
        let argv = qemu_args(
            Path::new("k"),
            Accel::Kvm,
            256,
            Path::new("/m/a,b.ram"),
            "0.0.0.0:9000".parse().unwrap(),
            &[],
        )
        .unwrap();
        let v = s(&argv);
        assert_eq!(&v[..2], ["-accel", "kvm"]);
        assert!(v.windows(2).any(|w| w == ["-m", "256"]));
        assert!(v.windows(2).any(|w| w
            == [
                "-object",
                "memory-backend-file,id=ram,size=256M,mem-path=/m/a,,b.ram,share=on"
            ]));
        assert!(v.contains(&"user,id=net0,hostfwd=tcp:0.0.0.0:9000-:80"));
        assert_eq!(&v[v.len() - 2..], ["-append", ""]);
    }

    #[test]
    fn forwarding_follows_guest_ip_and_port() {
        let args = vec![
            ("ip".to_owned(), "10.0.2.20/24".to_owned()),
            ("port".to_owned(), "8080".to_owned()),
        ];
        let argv = qemu_args(
            Path::new("k"),
            Accel::Tcg,
            64,
            Path::new("m"),
            "127.0.0.1:1234".parse().unwrap(),
            &args,
        )
        .unwrap();
        assert!(s(&argv).contains(&"user,id=net0,hostfwd=tcp:127.0.0.1:1234-10.0.2.20:8080"));
    }

    #[test]
    fn admin_listener_is_forwarded_to_its_own_guest_port() {
        let argv = qemu_args_admin(
            Path::new("k"),
            Accel::Tcg,
            64,
            Path::new("m"),
            "0.0.0.0:8080".parse().unwrap(),
            Some("127.0.0.1:9090".parse().unwrap()),
            &[],
        )
        .unwrap();
        assert!(s(&argv).contains(
            &"user,id=net0,hostfwd=tcp:0.0.0.0:8080-:80,hostfwd=tcp:127.0.0.1:9090-:8081"
        ));
        let args = vec![("admin.port".to_owned(), "9000".to_owned())];
        let argv = qemu_args_admin(
            Path::new("k"),
            Accel::Tcg,
            64,
            Path::new("m"),
            "127.0.0.1:8080".parse().unwrap(),
            Some("127.0.0.1:9090".parse().unwrap()),
            &args,
        )
        .unwrap();
        assert!(s(&argv).contains(
            &"user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:127.0.0.1:9090-:9000"
        ));
        // The same host address for both, or the same guest port for both, is refused.
        let same = qemu_args_admin(
            Path::new("k"),
            Accel::Tcg,
            64,
            Path::new("m"),
            "127.0.0.1:8080".parse().unwrap(),
            Some("127.0.0.1:8080".parse().unwrap()),
            &[],
        );
        assert!(matches!(same, Err(LaunchError::BadListen { .. })));
        let clash = vec![("admin.port".to_owned(), "80".to_owned())];
        let r = qemu_args(
            Path::new("k"),
            Accel::Tcg,
            64,
            Path::new("m"),
            "127.0.0.1:8080".parse().unwrap(),
            &clash,
        );
        assert!(matches!(r, Err(LaunchError::BadKernelArg { .. })));
    }

    #[test]
    fn rejects_what_cannot_be_carried() {
        let k = Path::new("k");
        let v6 = qemu_args(k, Accel::Tcg, 64, k, "[::1]:80".parse().unwrap(), &[]);
        assert!(matches!(v6, Err(LaunchError::BadListen { .. })));
        let p0 = qemu_args(k, Accel::Tcg, 64, k, "127.0.0.1:0".parse().unwrap(), &[]);
        assert!(matches!(p0, Err(LaunchError::BadListen { .. })));
        for (key, val) in [("log", "a b"), ("", "x"), ("k", "\"q\""), ("port", "0")] {
            let r = qemu_args(
                k,
                Accel::Tcg,
                64,
                k,
                "127.0.0.1:1".parse().unwrap(),
                &[(key.to_owned(), val.to_owned())],
            );
            assert!(
                matches!(r, Err(LaunchError::BadKernelArg { .. })),
                "{key}={val}"
            );
        }
    }

    #[test]
    fn parses_kernel_args_and_accel() {
        assert_eq!(
            parse_kernel_arg("http.max_body=10").unwrap(),
            ("http.max_body".into(), "10".into())
        );
        assert_eq!(
            parse_kernel_arg("a=b=c").unwrap(),
            ("a".into(), "b=c".into())
        );
        assert!(parse_kernel_arg("novalue").is_err());
        assert!(parse_kernel_arg("=x").is_err());
        assert_eq!("tcg".parse::<Accel>().unwrap(), Accel::Tcg);
        assert!("xen".parse::<Accel>().is_err());
    }
}
