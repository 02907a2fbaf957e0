//! One running host-kernel VM: boot, readiness, console, shutdown.
//!
//! Contract (docs/contracts.md): QEMU's stdin/stdout are the serial console; readiness is the
//! first `200` from `GET /_tuk/health` on the forwarded port; `shutdown\n` on the console stops
//! the kernel, which exits QEMU with status 33. An [`Instance`] owns its QEMU process: dropping
//! it kills QEMU, so no VM outlives its owner (a `SIGKILL` of the owner itself excepted).
//!
//! Every VM has a vTPM (docs/measurement.md): before QEMU starts, the launcher manufactures the
//! VM's swtpm state on first use, measures the kernel image (PCR 4) and the boot configuration
//! (PCR 5) into it after its own TPM2_Startup(CLEAR) and stores the running TPM (swtpm's
//! volatile state); then a fresh swtpm serves QEMU's `tpm-crb` device, already started: the
//! guest cannot send a TPM2_Startup of its own (TPM_RC_INITIALIZE), so it cannot reset PCR 4/5
//! (tuk_vtpm::measured_launch). The state directory and everything the launcher creates in it
//! are private (0700 directories, 0600 files; [`prepare_state_dir`]). The launcher's
//! event-log records reach the kernel as the boot pack's `_eventlog` entry, so a boot pack is
//! always passed.
//!
//! Guest RAM is a file QEMU maps shared ([`crate::memory_file`]), removed as soon as the
//! launcher sees QEMU exit (any wait, shutdown or kill, or dropping the [`Instance`]). Once the VM is ready, `<state_dir>/instance.json` ([`InstanceInfo`]) tells other
//! processes (`tuk tamper`) where it is; it is removed when the VM ends.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::console::Capture;
use crate::error::tail;
use crate::health::{self, Health, HEALTH_PATH};
use crate::measured::{self, BootConfig, LauncherMeasurements, Record, EVENTLOG_FILE};
use crate::memory_file::{self, MemoryFile};
use crate::monitor::{KernelImage, Monitor, MonitorError};
use crate::qemu::{self, Accel};
use crate::LaunchError;
use serde::{Deserialize, Serialize};
use tuk_vtpm::{Swtpm, Tools, VtpmPaths};

/// The console copy inside the state directory.
pub const CONSOLE_LOG: &str = "console.log";
/// QEMU's own stderr inside the state directory.
pub const STDERR_LOG: &str = "qemu-stderr.log";
/// The files QEMU loads, inside the state directory: the kernel image (a copy of
/// [`RunConfig::kernel`], so the bytes measured into PCR 4 are the bytes loaded) and the boot
/// pack with the `_eventlog` entry.
pub const BOOT_DIR: &str = "boot";
pub const BOOT_KERNEL: &str = "tuk-kernel";
pub const BOOT_PACK: &str = "initrd.pack";
/// Where a running instance is described for other processes ([`InstanceInfo`]).
pub const INSTANCE_FILE: &str = "instance.json";
/// QEMU's exit status after the kernel wrote 0x10 to isa-debug-exit.
pub const EXIT_CLEAN: i32 = 33;
/// QEMU's exit status after a kernel fault or panic (0x01 to isa-debug-exit).
pub const EXIT_FAULT: i32 = 3;
/// How long [`Accel::Auto`] gives KVM before falling back to TCG.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// How often the boot loop looks at QEMU and the console.
const POLL: Duration = Duration::from_millis(50);
/// Per-try limit of a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Before the kernel prints its ready line, probe only this often: QEMU's user networking
/// accepts every host connection at once and then holds it while the guest does not answer,
/// so early probes only cost time and leave half-open connections for the guest to reap.
const PROBE_BEFORE_READY: Duration = Duration::from_secs(1);
/// How long to wait for the capture threads to drain after QEMU exits.
const DRAIN: Duration = Duration::from_secs(1);
/// How long swtpm gets to exit by itself after QEMU has.
const SWTPM_GRACE: Duration = Duration::from_secs(2);

/// How to boot one VM.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub kernel: PathBuf,
    pub accel: Accel,
    pub memory_mib: u32,
    /// Host address QEMU forwards to the guest's HTTP port (IPv4): the service listener
    /// (components, and the read-only `/_tuk/health`, `/_tuk/components`,
    /// `/_tuk/attestation/identity`).
    pub listen: SocketAddr,
    /// Host address QEMU forwards to the kernel's admin listener (every `/_tuk/*` endpoint:
    /// status, event log, quotes, activation, publishing). `None`: 127.0.0.1 with a free port,
    /// chosen at boot ([`Instance::admin_addr`]).
    pub admin_listen: Option<SocketAddr>,
    /// Appended to `-append` as `key=value`, in order.
    pub kernel_args: Vec<(String, String)>,
    /// Holds `console.log` and `qemu-stderr.log`, the vTPM and the boot files; created 0700 if
    /// missing, refused unless it is a directory (not a symbolic link) of ours with mode 0700.
    pub state_dir: PathBuf,
    /// Spawn → first healthy answer.
    pub boot_timeout: Duration,
    /// The boot pack (components to serve), built by `tuk_compose::boot_pack`. The launcher
    /// adds its `_eventlog` entry and hands the result to the kernel as its PVH module (QEMU
    /// `-initrd`); with `None`, a pack with no components is passed.
    pub boot_pack: Option<PathBuf>,
    /// The CA that issues the vTPM's EK certificates on first use of a state directory
    /// (default [`tuk_vtpm::default_ca_dir`]: per user).
    pub vtpm_ca_dir: PathBuf,
    /// When set (e.g. by a signal handler), a boot in progress is abandoned: QEMU is killed and
    /// [`LaunchError::Cancelled`] returned.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Where guest RAM's file goes (default [`memory_file::default_dir`]: `$TUK_MEMORY_DIR`,
    /// else `/dev/shm`). Must be tmpfs: the file holds all guest memory.
    pub memory_dir: PathBuf,
}

impl RunConfig {
    pub const DEFAULT_MEMORY_MIB: u32 = 64;
    pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);

    /// Defaults: [`Accel::Auto`], 64 MiB, no kernel arguments, 60 s boot timeout, state in
    /// [`RunConfig::default_state_dir`].
    pub fn new(kernel: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            kernel: kernel.into(),
            accel: Accel::Auto,
            memory_mib: Self::DEFAULT_MEMORY_MIB,
            listen,
            admin_listen: None,
            kernel_args: Vec::new(),
            state_dir: Self::default_state_dir(listen),
            boot_timeout: Self::DEFAULT_BOOT_TIMEOUT,
            boot_pack: None,
            vtpm_ca_dir: tuk_vtpm::default_ca_dir(),
            cancel: None,
            memory_dir: memory_file::default_dir(),
        }
    }

    /// `<base>/<pid>-<port>`, base = [`RunConfig::default_state_base`]: private to the user,
    /// never a shared temporary directory.
    pub fn default_state_dir(listen: SocketAddr) -> PathBuf {
        Self::default_state_base().join(format!("{}-{}", std::process::id(), listen.port()))
    }

    /// `$XDG_RUNTIME_DIR/tuk` (a per-user 0700 directory), else `~/.local/state/tuk`; only with
    /// neither `XDG_RUNTIME_DIR` nor `HOME` set, `$TMPDIR/tuk` (which [`Instance::start`] then
    /// refuses unless it is ours and 0700).
    pub fn default_state_base() -> PathBuf {
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(run) = env("XDG_RUNTIME_DIR") {
            return PathBuf::from(run).join("tuk");
        }
        if let Some(home) = env("HOME") {
            return PathBuf::from(home).join(".local/state/tuk");
        }
        std::env::temp_dir().join("tuk")
    }

    pub fn kernel_arg(mut self, key: &str, value: impl fmt::Display) -> Self {
        self.kernel_args.push((key.to_owned(), value.to_string()));
        self
    }
}

/// How a VM ended.
#[derive(Debug, Clone)]
pub enum ExitKind {
    /// Status 33: the kernel shut down cleanly.
    Clean,
    /// Status 3: the kernel faulted or panicked; the console says why.
    Fault { console_tail: Vec<String> },
    /// Any other status: QEMU failed or was killed by someone else.
    Failed {
        status: ExitStatus,
        console_tail: Vec<String>,
        stderr_tail: Vec<String>,
    },
    /// It did not exit within the shutdown timeout and was killed (SIGKILL).
    Killed { console_tail: Vec<String> },
}

impl ExitKind {
    pub fn is_clean(&self) -> bool {
        matches!(self, ExitKind::Clean)
    }

    /// QEMU's exit code, when it exited by itself.
    pub fn code(&self) -> Option<i32> {
        match self {
            ExitKind::Clean => Some(EXIT_CLEAN),
            ExitKind::Fault { .. } => Some(EXIT_FAULT),
            ExitKind::Failed { status, .. } => status.code(),
            ExitKind::Killed { .. } => None,
        }
    }

    fn classify(status: ExitStatus, console: &Capture, stderr: &Capture) -> Self {
        match status.code() {
            Some(EXIT_CLEAN) => ExitKind::Clean,
            Some(EXIT_FAULT) => ExitKind::Fault {
                console_tail: console.tail(),
            },
            _ => ExitKind::Failed {
                status,
                console_tail: console.tail(),
                stderr_tail: stderr.tail(),
            },
        }
    }
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitKind::Clean => write!(f, "clean shutdown (status {EXIT_CLEAN})"),
            ExitKind::Fault { console_tail } => write!(
                f,
                "the kernel faulted or panicked (status {EXIT_FAULT}){}",
                tail("console (last lines)", console_tail)
            ),
            ExitKind::Failed {
                status,
                console_tail,
                stderr_tail,
            } => write!(
                f,
                "QEMU ended with {status}{}{}",
                tail("console (last lines)", console_tail),
                tail("QEMU stderr", stderr_tail)
            ),
            ExitKind::Killed { console_tail } => write!(
                f,
                "the VM did not stop in time and was killed{}",
                tail("console (last lines)", console_tail)
            ),
        }
    }
}

/// What the launcher measured for one boot, and where the vTPM lives.
#[derive(Clone, Debug)]
pub struct MeasuredBoot {
    /// The launcher's event-log records (recnum 0: PCR 4, 1: PCR 5).
    pub records: Vec<Record>,
    /// The boot configuration document measured into PCR 5.
    pub boot_config: BootConfig,
    /// `<state_dir>/eventlog.launcher.json`.
    pub eventlog: PathBuf,
    /// The vTPM's files (swtpm state, certificates, sockets, log).
    pub vtpm: VtpmPaths,
    /// The CA that issued the EK certificates.
    pub ca_dir: PathBuf,
    /// True if this start manufactured the vTPM (first use of the state directory).
    pub manufactured: bool,
    /// swtpm_setup's time (0 when the state existed).
    pub manufacture_ms: u64,
    /// The measured launch (swtpm, Startup, 2 extends, store the running TPM, exit) plus starting
    /// the swtpm QEMU uses: what the vTPM adds to every boot.
    pub launch_ms: u64,
}

/// `<state_dir>/instance.json`: a ready instance, for other processes (`tuk tamper`). Written
/// when the VM answers health, removed when it ends (docs/contracts.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// `http://<ip>:<port>`: the service listener.
    pub url: String,
    /// `http://<ip>:<port>`: the admin listener (every `/_tuk/*` endpoint). Empty in files
    /// written before there was one.
    #[serde(default)]
    pub admin: String,
    /// QEMU's pid.
    pub pid: u32,
    /// The pid of the process that owns the [`Instance`] (`tuk run`, a test).
    pub launcher_pid: u32,
    /// The kernel image QEMU loaded (the measured copy in the state directory).
    pub kernel: PathBuf,
    /// Its SHA-256 (hex): PCR 4's event digest.
    pub kernel_sha256: String,
    /// Guest RAM: guest-physical address P (below 3 GiB) is file offset P.
    pub memory_file: PathBuf,
    pub memory_bytes: u64,
    pub state_dir: PathBuf,
}

impl InstanceInfo {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(INSTANCE_FILE)
    }

    /// Reads `<state_dir>/instance.json`.
    pub fn read(state_dir: &Path) -> io::Result<InstanceInfo> {
        let bytes = fs::read(Self::path(state_dir))?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The address in [`InstanceInfo::url`].
    pub fn addr(&self) -> Option<SocketAddr> {
        self.url.strip_prefix("http://")?.parse().ok()
    }

    /// The address in [`InstanceInfo::admin`].
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.strip_prefix("http://")?.parse().ok()
    }

    /// Written to a temporary name and renamed, so readers never see half a document.
    fn write(&self) -> io::Result<PathBuf> {
        let path = Self::path(&self.state_dir);
        let tmp = self.state_dir.join(format!("{INSTANCE_FILE}.tmp"));
        let mut json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        json.push(b'\n');
        fs::write(&tmp, json)?;
        fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

/// Inputs read once per [`Instance::start`] (not per boot attempt).
struct Prepared {
    tools: Tools,
    vtpm: VtpmPaths,
    /// The copy QEMU loads.
    kernel: PathBuf,
    kernel_name: String,
    kernel_size: u64,
    kernel_sha256: [u8; 32],
    /// The boot pack as given (or an empty one); `_eventlog` is added per boot.
    pack: Vec<u8>,
    pack_path: PathBuf,
    /// SHA-256 (hex) of the pack's components encoding: PCR 5's `boot_pack_sha256`.
    components_sha256: String,
    manufactured: bool,
    manufacture_ms: u64,
}

impl Prepared {
    fn new(cfg: &RunConfig) -> Result<Prepared, LaunchError> {
        let tools = Tools::find()?;
        let vtpm = VtpmPaths::new(&cfg.state_dir)?;
        let t = Instant::now();
        let manufactured = tuk_vtpm::manufacture(&tools, &vtpm, &cfg.vtpm_ca_dir)?
            == tuk_vtpm::Manufactured::Created;
        let manufacture_ms = if manufactured {
            t.elapsed().as_millis() as u64
        } else {
            0
        };

        let boot_dir = cfg.state_dir.join(BOOT_DIR);
        private_dir(&boot_dir)?;
        let source = fs::read(&cfg.kernel)
            .map_err(|e| LaunchError::io("cannot read the kernel image", &cfg.kernel, e))?;
        // The bytes measured are the copy's bytes, read back from the private copy QEMU loads
        // (not the source, which others may be able to change); every boot attempt re-checks
        // them (`verify_kernel_copy`).
        let kernel = boot_dir.join(BOOT_KERNEL);
        write_private(&kernel, &source)?;
        let image =
            fs::read(&kernel).map_err(|e| LaunchError::io("cannot read back", &kernel, e))?;

        let pack = match &cfg.boot_pack {
            Some(path) => fs::read(path).map_err(|e| LaunchError::io("cannot read", path, e))?,
            None => tuk_bootpack::PackBuilder::new().finish(),
        };
        let pack_path = cfg
            .boot_pack
            .clone()
            .unwrap_or_else(|| PathBuf::from("(no components)"));
        let bad = |reason: String| LaunchError::BadBootPack {
            path: pack_path.clone(),
            reason,
        };
        let parsed = tuk_bootpack::Pack::parse(&pack).map_err(|e| bad(e.to_string()))?;
        if parsed.reserved(tuk_bootpack::EVENTLOG).is_some() {
            return Err(bad(format!(
                "it already has an `{}` entry; the launcher adds its own",
                tuk_bootpack::EVENTLOG
            )));
        }
        let components_sha256 = measured::hex(&measured::sha256(&parsed.components_encoding()));
        Ok(Prepared {
            tools,
            vtpm,
            kernel,
            kernel_name: cfg
                .kernel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            kernel_size: image.len() as u64,
            kernel_sha256: measured::sha256(&image),
            pack,
            pack_path,
            components_sha256,
            manufactured,
            manufacture_ms,
        })
    }

    /// Fails unless the kernel copy QEMU is about to load still has the measured SHA-256.
    fn verify_kernel_copy(&self) -> Result<(), LaunchError> {
        let bytes =
            fs::read(&self.kernel).map_err(|e| LaunchError::io("cannot read", &self.kernel, e))?;
        if measured::sha256(&bytes) != self.kernel_sha256 {
            return Err(LaunchError::io(
                "refusing to boot",
                &self.kernel,
                io::Error::other(
                    "the kernel copy changed after it was measured into PCR 4; something else \
                     writes to the state directory: stop it and start again",
                ),
            ));
        }
        Ok(())
    }

    /// The boot pack QEMU loads: the given pack plus the `_eventlog` entry.
    fn pack_with_eventlog(&self, eventlog: &[u8]) -> Result<Vec<u8>, LaunchError> {
        let parsed =
            tuk_bootpack::Pack::parse(&self.pack).map_err(|e| LaunchError::BadBootPack {
                path: self.pack_path.clone(),
                reason: e.to_string(),
            })?;
        let mut builder = parsed.to_builder();
        builder
            .add_reserved(tuk_bootpack::EVENTLOG, &[("format", "cel-json")], eventlog)
            .map_err(|e| LaunchError::BadBootPack {
                path: self.pack_path.clone(),
                reason: e.to_string(),
            })?;
        Ok(builder.finish())
    }
}

/// A running (or finished) host-kernel VM.
pub struct Instance {
    child: Child,
    /// The swtpm behind QEMU's TPM; it exits with QEMU.
    swtpm: Option<Swtpm>,
    measured: MeasuredBoot,
    stdin: Option<ChildStdin>,
    status: Option<ExitStatus>,
    accel: Accel,
    addr: SocketAddr,
    /// The admin listener's host address (connectable).
    admin_addr: SocketAddr,
    boot_ms: u64,
    guest_boot_us: Option<u64>,
    console_log: PathBuf,
    console: Capture,
    stderr: Capture,
    pumps: Vec<JoinHandle<()>>,
    kvm_fallback: Option<String>,
    /// Guest RAM; removed when QEMU has exited.
    memory: MemoryFile,
    /// What `instance.json` says (written once the VM is ready).
    info: InstanceInfo,
    /// `instance.json`, while this instance's is there.
    info_file: Option<PathBuf>,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("pid", &self.child.id())
            .field("accel", &self.accel)
            .field("addr", &self.addr)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// Boots a VM and returns once it answers `GET /_tuk/health` with 200.
    ///
    /// Checks first that QEMU runs, the image exists, the arguments are valid and the listen
    /// port is free. With [`Accel::Auto`], KVM is tried first (when `/dev/kvm` opens read-write)
    /// with a short timeout; if that boot dies or hangs, the reason goes to stderr and TCG is
    /// used. [`Instance::accel`] says which accelerator runs the VM.
    pub fn start(cfg: RunConfig) -> Result<Instance, LaunchError> {
        // Argument errors first (the accelerator does not matter for validation).
        qemu::qemu_args(
            &cfg.kernel,
            Accel::Tcg,
            cfg.memory_mib,
            &cfg.memory_dir,
            cfg.listen,
            &cfg.kernel_args,
        )?;
        let program = qemu::qemu_program();
        qemu::check_qemu(&program)?;
        if !cfg.kernel.is_file() {
            return Err(LaunchError::KernelImageMissing {
                path: cfg.kernel.clone(),
            });
        }
        prepare_state_dir(&cfg.state_dir)?;
        memory_file::sweep_stale(&cfg.memory_dir);
        let prep = Prepared::new(&cfg)?;
        match cfg.accel {
            Accel::Tcg => Self::boot(&cfg, &prep, &program, Accel::Tcg, cfg.boot_timeout),
            Accel::Kvm => {
                open_kvm().map_err(|cause| LaunchError::KvmUnavailable { cause })?;
                Self::boot(&cfg, &prep, &program, Accel::Kvm, cfg.boot_timeout)
            }
            Accel::Auto => {
                if open_kvm().is_err() {
                    return Self::boot(&cfg, &prep, &program, Accel::Tcg, cfg.boot_timeout);
                }
                let kvm_timeout = cfg.boot_timeout.min(KVM_PROBE_TIMEOUT);
                match Self::boot(&cfg, &prep, &program, Accel::Kvm, kvm_timeout) {
                    Ok(instance) => Ok(instance),
                    Err(
                        e @ (LaunchError::DiedDuringBoot { .. } | LaunchError::BootTimeout { .. }),
                    ) => {
                        let reason = e.to_string().lines().next().unwrap_or_default().to_owned();
                        eprintln!(
                            "tuk: KVM boot failed, falling back to TCG: {reason} (KVM console kept in {})",
                            cfg.state_dir.join("console-kvm.log").display()
                        );
                        for (from, to) in [
                            (CONSOLE_LOG, "console-kvm.log"),
                            (STDERR_LOG, "qemu-stderr-kvm.log"),
                        ] {
                            let _ = fs::rename(cfg.state_dir.join(from), cfg.state_dir.join(to));
                        }
                        let mut instance =
                            Self::boot(&cfg, &prep, &program, Accel::Tcg, cfg.boot_timeout)?;
                        instance.kvm_fallback = Some(reason);
                        Ok(instance)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// One boot attempt with a resolved accelerator: measured launch, swtpm, QEMU.
    fn boot(
        cfg: &RunConfig,
        prep: &Prepared,
        program: &std::ffi::OsStr,
        accel: Accel,
        timeout: Duration,
    ) -> Result<Instance, LaunchError> {
        check_port_free(cfg.listen)?;
        // The wall clock's origin (the kernel has no RTC): milliseconds since the Unix epoch.
        let mut kernel_args = cfg.kernel_args.clone();
        if !kernel_args.iter().any(|(k, _)| k == "time.unix_ms") {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            kernel_args.push(("time.unix_ms".into(), now.as_millis().to_string()));
        }
        let memory = MemoryFile::create(
            &cfg.memory_dir,
            cfg.listen.port(),
            u64::from(cfg.memory_mib) << 20,
        )?;
        let admin_listen = match cfg.admin_listen {
            Some(a) => {
                check_port_free(a)?;
                a
            }
            None => free_loopback_port()?,
        };
        let mut argv = qemu::qemu_args_admin(
            &prep.kernel,
            accel,
            cfg.memory_mib,
            memory.path(),
            cfg.listen,
            Some(admin_listen),
            &kernel_args,
        )?;

        // The measurements, from the argv itself, and their event log.
        let boot_config = BootConfig::from_argv(&argv, Some(prep.components_sha256.clone()))
            .expect("qemu_args has -append, -m, -M, -cpu and the memory backend exactly once");
        let m = LauncherMeasurements::new(
            &prep.kernel_name,
            prep.kernel_size,
            prep.kernel_sha256,
            boot_config,
        );
        let eventlog = m.eventlog_json();
        let eventlog_path = cfg.state_dir.join(EVENTLOG_FILE);
        fs::write(&eventlog_path, &eventlog)
            .map_err(|e| LaunchError::io("cannot write", &eventlog_path, e))?;
        let initrd = cfg.state_dir.join(BOOT_DIR).join(BOOT_PACK);
        write_private(&initrd, &prep.pack_with_eventlog(&eventlog)?)?;
        // The image QEMU loads on this attempt (the KVM→TCG retry too) is the one measured.
        prep.verify_kernel_copy()?;

        // Measured launch into the saved TPM state, then the swtpm QEMU talks to.
        let t = Instant::now();
        tuk_vtpm::measured_launch(&prep.tools, &prep.vtpm, &m.extends())?;
        let swtpm = tuk_vtpm::spawn_for_qemu(&prep.tools, &prep.vtpm)?;
        let launch_ms = t.elapsed().as_millis() as u64;
        argv.extend(qemu::vtpm_args(&prep.vtpm.qemu_ctrl));
        argv.push("-initrd".into());
        argv.push(initrd.into_os_string());
        let measured = MeasuredBoot {
            records: m.records,
            boot_config: m.boot_config,
            eventlog: eventlog_path,
            vtpm: prep.vtpm.clone(),
            ca_dir: cfg.vtpm_ca_dir.clone(),
            manufactured: prep.manufactured,
            manufacture_ms: prep.manufacture_ms,
            launch_ms,
        };

        let console_log = cfg.state_dir.join(CONSOLE_LOG);
        let stderr_log = cfg.state_dir.join(STDERR_LOG);
        let console_file = File::create(&console_log)
            .map_err(|e| LaunchError::io("cannot create", &console_log, e))?;
        let stderr_file = File::create(&stderr_log)
            .map_err(|e| LaunchError::io("cannot create", &stderr_log, e))?;

        let started = Instant::now();
        let mut child = Command::new(program)
            .args(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches only tuk, which then shuts the
            // kernel down through the console instead of QEMU dying on SIGINT.
            .process_group(0)
            .spawn()
            .map_err(|e| LaunchError::io("cannot start", program, e))?;

        let console = Capture::default();
        let stderr = Capture::default();
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let pumps = spawn_pump("tuk-console", &console, out, console_file).and_then(|a| {
            spawn_pump("tuk-qemu-stderr", &stderr, err, stderr_file).map(|b| vec![a, b])
        });
        let pumps = match pumps {
            Ok(pumps) => pumps,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::io(
                    "cannot start a thread for",
                    "the console",
                    e,
                ));
            }
        };

        let addr = connectable(cfg.listen);
        let admin_addr = connectable(admin_listen);
        let info = InstanceInfo {
            url: format!("http://{addr}"),
            admin: format!("http://{admin_addr}"),
            pid: child.id(),
            launcher_pid: std::process::id(),
            kernel: prep.kernel.clone(),
            kernel_sha256: measured::hex(&prep.kernel_sha256),
            memory_file: memory.path().to_owned(),
            memory_bytes: memory.bytes(),
            state_dir: cfg.state_dir.clone(),
        };
        let mut instance = Instance {
            stdin: child.stdin.take(),
            child,
            swtpm: Some(swtpm),
            measured,
            status: None,
            accel,
            addr,
            admin_addr,
            boot_ms: 0,
            guest_boot_us: None,
            console_log,
            console,
            stderr,
            pumps,
            kvm_fallback: None,
            memory,
            info,
            info_file: None,
        };
        // On error `instance` is dropped here, which kills QEMU (and removes its RAM file).
        instance.wait_ready(started, timeout, cfg.cancel.as_deref())?;
        let path = instance
            .info
            .write()
            .map_err(|e| LaunchError::io("cannot write", InstanceInfo::path(&cfg.state_dir), e))?;
        instance.info_file = Some(path);
        Ok(instance)
    }

    fn wait_ready(
        &mut self,
        started: Instant,
        timeout: Duration,
        cancel: Option<&AtomicBool>,
    ) -> Result<(), LaunchError> {
        let deadline = started + timeout;
        let mut last_probe: Option<Instant> = None;
        loop {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                self.kill()?;
                return Err(LaunchError::Cancelled);
            }
            let stalled = self.stderr.state().kvm_internal_error;
            if stalled {
                // QEMU stops the VM on a KVM internal error but does not exit.
                self.kill()?;
            }
            if let Some(status) = self.try_wait()? {
                return Err(LaunchError::DiedDuringBoot {
                    accel: self.accel,
                    status,
                    console_tail: self.console.tail(),
                    stderr_tail: self.stderr.tail(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                self.kill()?;
                return Err(LaunchError::BootTimeout {
                    accel: self.accel,
                    timeout,
                    console_tail: self.console.tail(),
                    stderr_tail: self.stderr.tail(),
                });
            }
            let ready_line = self.console.ready();
            let due = ready_line.is_some()
                || last_probe.is_none_or(|t| now.duration_since(t) >= PROBE_BEFORE_READY);
            if due {
                last_probe = Some(now);
                let limit = PROBE_TIMEOUT.min(deadline - now);
                if let Ok(reply) = health::get(self.addr, HEALTH_PATH, limit) {
                    if reply.status == 200 {
                        self.boot_ms = started.elapsed().as_millis() as u64;
                        // The ready line precedes listening; re-read in case it raced the probe.
                        self.guest_boot_us = self.console.ready().and_then(|r| r.guest_boot_us);
                        return Ok(());
                    }
                }
            }
            thread::sleep(POLL);
        }
    }

    /// Asks the kernel to stop (`shutdown` on the console) and waits up to `timeout` for QEMU to
    /// exit; after that QEMU is killed and [`ExitKind::Killed`] returned. If the VM had already
    /// ended, says how.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<ExitKind, LaunchError> {
        if let Some(status) = self.try_wait()? {
            return Ok(ExitKind::classify(status, &self.console, &self.stderr));
        }
        if let Some(stdin) = self.stdin.as_mut() {
            // A broken pipe means QEMU is already going away; the wait below tells how.
            let _ = stdin.write_all(b"shutdown\n").and_then(|()| stdin.flush());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(ExitKind::classify(status, &self.console, &self.stderr));
            }
            if Instant::now() >= deadline {
                self.kill()?;
                return Ok(ExitKind::Killed {
                    console_tail: self.console.tail(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills QEMU (SIGKILL) and reaps it. Does nothing if it has already exited.
    pub fn kill(&mut self) -> Result<ExitStatus, LaunchError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let pid = self.child.id();
        match self.child.kill() {
            Ok(()) => {}
            // Exited between try_wait and kill: wait() below reaps it.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
            Err(cause) => return Err(LaunchError::Process { pid, cause }),
        }
        self.wait()
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait(&mut self) -> Result<ExitStatus, LaunchError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let pid = self.child.id();
        let status = self
            .child
            .wait()
            .map_err(|cause| LaunchError::Process { pid, cause })?;
        self.exited(status);
        Ok(status)
    }

    /// QEMU's exit status if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, LaunchError> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let pid = self.child.id();
        let status = self
            .child
            .try_wait()
            .map_err(|cause| LaunchError::Process { pid, cause })?;
        if let Some(status) = status {
            self.exited(status);
        }
        Ok(status)
    }

    /// Records the exit, removes guest RAM's file and `instance.json`, and lets the capture
    /// threads drain what QEMU wrote last.
    fn exited(&mut self, status: ExitStatus) {
        self.status = Some(status);
        self.stdin = None;
        self.memory.remove();
        if let Some(path) = self.info_file.take() {
            let _ = fs::remove_file(path);
        }
        if let Some(swtpm) = self.swtpm.as_mut() {
            // QEMU's exit closed swtpm's command channel; `--terminate` ends swtpm.
            swtpm.reap(SWTPM_GRACE);
        }
        let until = Instant::now() + DRAIN;
        while Instant::now() < until && !(self.console.state().closed && self.stderr.state().closed)
        {
            thread::sleep(Duration::from_millis(5));
        }
        for handle in std::mem::take(&mut self.pumps) {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }

    /// How the VM ended, if it has.
    pub fn exit_kind(&mut self) -> Result<Option<ExitKind>, LaunchError> {
        Ok(self
            .try_wait()?
            .map(|status| ExitKind::classify(status, &self.console, &self.stderr)))
    }

    /// `http://<addr>`, where a wildcard listen address is replaced by 127.0.0.1.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>` of the admin listener (every `/_tuk/*` endpoint: status, event log,
    /// attestation, publishing).
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// The admin listener's address to connect to.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The accelerator actually running the VM (never [`Accel::Auto`]).
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Why KVM was abandoned for TCG under [`Accel::Auto`], if it was.
    pub fn kvm_fallback(&self) -> Option<&str> {
        self.kvm_fallback.as_deref()
    }

    /// Milliseconds from spawning QEMU to the first healthy answer.
    pub fn boot_ms(&self) -> u64 {
        self.boot_ms
    }

    /// The kernel's own boot time from its ready line (PVH entry → listening).
    pub fn guest_boot_us(&self) -> Option<u64> {
        self.guest_boot_us
    }

    pub fn console_log_path(&self) -> &Path {
        &self.console_log
    }

    /// The last console lines (at most [`crate::console::TAIL_LINES`]).
    pub fn console_tail(&self) -> Vec<String> {
        self.console.tail()
    }

    /// The last lines QEMU wrote to its stderr.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr.tail()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the launcher measured into the vTPM for this boot, and where the vTPM lives.
    pub fn measured_boot(&self) -> &MeasuredBoot {
        &self.measured
    }

    /// The pid of the swtpm behind the VM's TPM, while it runs.
    pub fn swtpm_pid(&mut self) -> Option<u32> {
        let swtpm = self.swtpm.as_mut()?;
        swtpm.try_wait().is_none().then(|| swtpm.pid())
    }

    /// How the swtpm behind the VM's TPM ended, once it has (normally: by itself, status 0,
    /// right after QEMU).
    pub fn swtpm_exit(&mut self) -> Option<ExitStatus> {
        self.swtpm.as_mut()?.try_wait()
    }

    /// `GET /_tuk/health`, parsed.
    pub fn health(&self, timeout: Duration) -> io::Result<Health> {
        health::fetch(self.addr, timeout)
    }

    /// What `instance.json` says about this instance (kept after the VM ended; the file is not).
    pub fn info(&self) -> &InstanceInfo {
        &self.info
    }

    /// The state directory (holds `instance.json` while the VM runs).
    pub fn state_dir(&self) -> &Path {
        &self.info.state_dir
    }

    /// Guest RAM's file (gone once the VM has ended).
    pub fn memory_file(&self) -> &Path {
        self.memory.path()
    }

    /// The kernel image QEMU loaded (the measured copy).
    pub fn kernel_image(&self) -> &Path {
        &self.info.kernel
    }

    /// An out-of-guest monitor for this VM: the loaded image against guest RAM
    /// (docs/measurement.md); [`Monitor::spawn`] runs it on an interval. The reference is the
    /// image measured into PCR 4: the file is refused if its SHA-256 changed since.
    pub fn monitor(&self) -> Result<Monitor, MonitorError> {
        let path = &self.info.kernel;
        let bytes = fs::read(path).map_err(|cause| MonitorError::Io {
            what: "cannot read the kernel image",
            path: path.clone(),
            cause,
        })?;
        if measured::hex(&measured::sha256(&bytes)) != self.info.kernel_sha256 {
            return Err(MonitorError::Elf {
                path: path.clone(),
                reason: "it changed since it was measured and loaded".into(),
            });
        }
        Monitor::with_image(KernelImage::parse(path, &bytes)?, self.memory.path())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.kill();
        }
    }
}

/// Copies `input` into `cap` and `log` on its own thread until QEMU closes it.
fn spawn_pump(
    name: &str,
    cap: &Capture,
    input: impl io::Read + Send + 'static,
    log: File,
) -> io::Result<JoinHandle<()>> {
    let cap = cap.clone();
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || cap.pump(input, Some(log)))
}

fn open_kvm() -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open("/dev/kvm")
}

/// Fails with [`LaunchError::PortInUse`] unless `addr` can be bound right now.
pub fn check_port_free(addr: SocketAddr) -> Result<(), LaunchError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|cause| LaunchError::PortInUse { addr, cause })
}

/// 127.0.0.1 with a port that is free right now (the OS picks it), for the admin listener.
fn free_loopback_port() -> Result<SocketAddr, LaunchError> {
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    TcpListener::bind(any)
        .and_then(|l| l.local_addr())
        .map_err(|cause| LaunchError::PortInUse { addr: any, cause })
}

fn connectable(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
    } else {
        listen
    }
}

/// [`tuk_vtpm::private_dir`], its refusal worded for the state directory.
fn private_dir(dir: &Path) -> Result<(), LaunchError> {
    tuk_vtpm::private_dir(dir).map_err(|e| match e {
        tuk_vtpm::VtpmError::UnsafeDir { path, reason } => LaunchError::io(
            "refusing to use the state directory",
            path,
            io::Error::other(format!(
                "{reason}; remove it, or pass another with --state-dir, so tuk can create it \
                 privately (0700)"
            )),
        ),
        other => other.into(),
    })
}

/// Replaces `path` with a new file of mode 0600 holding `bytes` (never writing through a link
/// someone left there: the old name is removed and the new file created exclusively).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), LaunchError> {
    use std::os::unix::fs::OpenOptionsExt;
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(LaunchError::io("cannot replace", path, e)),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| LaunchError::io("cannot write", path, e))
}

/// Creates the state directory 0700 (and, for the default location, its `tuk` parent), or
/// accepts an existing one only if it is ours, not a symbolic link, and 0700 (otherwise the
/// error says so and what to do).
pub fn create_state_dir(dir: &Path) -> Result<(), LaunchError> {
    let base = RunConfig::default_state_base();
    if dir.parent() == Some(base.as_path()) {
        private_dir(&base)?;
    }
    private_dir(dir)
}

/// [`create_state_dir`], then removes what an earlier run left.
pub fn prepare_state_dir(dir: &Path) -> Result<(), LaunchError> {
    create_state_dir(dir)?;
    for stale in [
        CONSOLE_LOG,
        STDERR_LOG,
        "console-kvm.log",
        "qemu-stderr-kvm.log",
        EVENTLOG_FILE,
        // Left by a launcher that was killed (SIGKILL): no instance runs here now.
        INSTANCE_FILE,
    ] {
        match fs::remove_file(dir.join(stale)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LaunchError::io("cannot remove", dir.join(stale), e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn port_check_names_the_port() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = check_port_free(addr).unwrap_err();
        assert!(
            e.to_string().contains(&format!("port {}", addr.port())),
            "{e}"
        );
        drop(held);
        check_port_free(addr).unwrap();
    }

    #[test]
    fn exit_kinds() {
        let (c, s) = (Capture::default(), Capture::default());
        assert!(ExitKind::classify(ExitStatus::from_raw(33 << 8), &c, &s).is_clean());
        let fault = ExitKind::classify(ExitStatus::from_raw(3 << 8), &c, &s);
        assert!(matches!(fault, ExitKind::Fault { .. }));
        assert_eq!(fault.code(), Some(3));
        let killed = ExitKind::classify(ExitStatus::from_raw(9), &c, &s);
        assert_eq!(killed.code(), None);
        assert!(killed.to_string().contains("signal"), "{killed}");
    }

    #[test]
    fn defaults_and_wildcards() {
        let listen: SocketAddr = "0.0.0.0:8088".parse().unwrap();
        let cfg = RunConfig::new("k", listen).kernel_arg("log", "debug");
        assert_eq!(cfg.memory_mib, 64);
        assert_eq!(cfg.accel, Accel::Auto);
        assert_eq!(cfg.kernel_args, [("log".to_owned(), "debug".to_owned())]);
        assert!(cfg
            .state_dir
            .ends_with(format!("tuk/{}-8088", std::process::id())));
        assert!(cfg.state_dir.starts_with(RunConfig::default_state_base()));
        if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| !d.is_empty())
            || std::env::var_os("HOME").is_some_and(|d| !d.is_empty())
        {
            assert!(
                !cfg.state_dir.starts_with(std::env::temp_dir()),
                "{}",
                cfg.state_dir.display()
            );
        }
        assert_eq!(connectable(listen), "127.0.0.1:8088".parse().unwrap());
    }
}
