//! `tuk`: the command line. Thin by design: the work is in `tuk-launcher` (and later crates);
//! this file parses arguments, prints, and maps outcomes to exit codes.
//!
//! Output discipline: machine-readable JSON lines (one object per event) on stdout, human
//! messages on stderr. Exit codes: 0 success, 1 the VM stopped uncleanly or by itself,
//! 2 usage or launch errors, 3 `tuk run` stopped the VM on an integrity violation
//! (`--monitor-policy stop`). `tuk attest` prints its result on stdout and exits 1 for a
//! result that is not affirming.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tuk_launcher::monitor::{self, MonitorThread, Violation};
use tuk_launcher::monitor_report;
use tuk_launcher::{kernel, qemu, Accel, Instance, KernelSource, RunConfig};

mod attest;
mod component;
mod gateway;
mod registry;
mod sign;
mod tamper;
mod verifier;

#[derive(Parser)]
#[command(
    name = "tuk",
    version,
    about = "Trusted WebAssembly microservices on a unikernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build and inspect the host-kernel image.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Boot a host-kernel under QEMU and serve until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Build WebAssembly components from Rust crates.
    #[command(subcommand)]
    Component(component::ComponentCommand),
    /// Compile a component ahead of time for the host-kernel (writes a .cwasm).
    Compile(component::CompileArgs),
    /// Push a signed bundle to an OCI registry as a Wasm OCI artifact.
    Publish(registry::PublishArgs),
    /// Pull a signed bundle from an OCI registry, verifying every blob's digest.
    Pull(registry::PullArgs),
    /// Generate an ed25519 signing key: NAME.key (private) and NAME.pub (to trust).
    Keygen(sign::KeygenArgs),
    /// Compile a component and sign it into a bundle (component + code + DSSE statement).
    Sign(sign::SignArgs),
    /// Verify a bundle against trusted keys or a trust policy, as the kernel will.
    Verify(sign::VerifyArgs),
    /// Write a trust policy (trusted keys, allowed names, minimum versions).
    Policy(sign::PolicyArgs),
    /// ATTACK TOOL, for testing detection only: writes bytes into a running guest's RAM.
    ///
    /// Does what an attacker with hypervisor-level access could: opens the instance's
    /// guest-RAM file (QEMU's shared memory backend, named in <STATE_DIR>/instance.json) and
    /// overwrites bytes of the kernel's text or read-only data (located from the kernel image)
    /// or of a component's code image or immutable data (located from the guest's
    /// GET /_tuk/status). The in-guest monitor (/_tuk/status, PCR 10) and `tuk run`'s
    /// out-of-guest monitor must detect it. Prints a `tampered` JSON event.
    #[command(hide = true)]
    Tamper(tamper::TamperArgs),
    /// Attest a running instance once: EK certificate, credential activation, a quote for a
    /// fresh nonce, the event log and the run-time report against reference values.
    ///
    /// Prints the result (affirming, warning or contraindicated, per submodule: the kernel and
    /// each component, with reasons) on stdout; --json prints it as an EAR claims set. Exit
    /// status 0 affirming, 1 warning or contraindicated, 2 the instance could not be attested.
    Attest(attest::AttestArgs),
    /// The verifier service (docs/verifier.md).
    #[command(subcommand)]
    Verifier(verifier::VerifierCommand),
    /// A reverse proxy that forwards to an instance only while the verifier's latest signed
    /// result for it (pinned key) is affirming, unexpired and about this instance, URL and AK;
    /// else 503 with why.
    Gateway(gateway::GatewayArgs),
}

#[derive(Subcommand)]
enum KernelCommand {
    /// Build host-kernel/ for x86_64-unknown-none and print the image's path, size and SHA-256.
    Build {
        /// The tuk checkout to build (default: found from the current directory upwards).
        #[arg(long, value_name = "DIR")]
        source: Option<PathBuf>,
        /// Sign the kernel's reference manifest with this key (a `tuk keygen` .key file):
        /// writes IMAGE.ref.json, which verifiers take with --kernel-ref.
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Kernel image (default: $TUK_KERNEL, else the checkout's release build).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Host address forwarded to the kernel's service listener (components, and the read-only
    /// GET /_tuk/health, /_tuk/components, /_tuk/attestation/identity), e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// Host address forwarded to the kernel's admin listener (every /_tuk/* endpoint: status,
    /// event log, attestation, publishing). Default: 127.0.0.1 with a free port, kept across
    /// --monitor-policy restart; the ready event's "admin" says which. Keep it off networks
    /// the service listener is exposed to.
    #[arg(long, value_name = "IP:PORT")]
    admin_listen: Option<SocketAddr>,
    /// auto (KVM if it works here, else TCG), tcg or kvm.
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = RunConfig::DEFAULT_MEMORY_MIB)]
    memory: u32,
    /// Kernel command-line argument (repeatable), e.g. --kernel-arg log=debug.
    #[arg(long = "kernel-arg", value_name = "KEY=VALUE", value_parser = parse_kernel_arg)]
    kernel_args: Vec<(String, String)>,
    /// The VM's state: console.log, qemu-stderr.log, the vTPM (tpm/, created on first use and
    /// kept: reuse the directory to keep the TPM's identity), eventlog.launcher.json
    /// (default: $XDG_RUNTIME_DIR/tuk/<pid>-<port>, else ~/.local/state/tuk/<pid>-<port>;
    /// created 0700, and refused if it is a link, another user's or open to others). Every VM
    /// gets a vTPM (swtpm); the launcher
    /// measures the kernel (PCR 4) and boot configuration (PCR 5) into it before boot.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Seconds from starting QEMU to the first healthy answer.
    #[arg(long, value_name = "SECS", default_value_t = RunConfig::DEFAULT_BOOT_TIMEOUT.as_secs())]
    boot_timeout: u64,
    /// Seconds a clean shutdown may take before QEMU is killed.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    shutdown_timeout: u64,
    /// A component to serve at /NAME/ (repeatable). With --trust/--policy: a signed bundle
    /// (`tuk sign`) as a file or a registry reference (HOST:PORT/REPO:TAG, pulled here).
    /// Without: a component .wasm (compiled here) or the .cwasm `tuk compile` wrote
    /// (development mode: measured, but not trusted).
    #[arg(long = "component", value_name = "NAME=PATH|REF")]
    components: Vec<String>,
    /// Trust components signed by this key (a `tuk keygen` .pub file; repeatable). The kernel
    /// then refuses anything not signed by a trusted key, at boot and when published.
    #[arg(long = "trust", value_name = "KEY.pub", conflicts_with = "policy")]
    trust: Vec<PathBuf>,
    /// A full trust policy (`tuk policy`: keys, allowed names, minimum versions).
    #[arg(long = "policy", value_name = "POLICY.json")]
    policy: Option<PathBuf>,
    /// A configuration value for a component's `config` import (repeatable).
    #[arg(long = "config", value_name = "NAME.KEY=VALUE")]
    configs: Vec<String>,
    /// A component's linear-memory limit in MiB (default 16).
    #[arg(long = "memory-limit", value_name = "NAME=MiB")]
    memory_limits: Vec<String>,
    /// How long one request to a component may run, in ms, before it is stopped with 503
    /// (default 2000).
    #[arg(long = "deadline", value_name = "NAME=MS")]
    deadlines: Vec<String>,
    /// Out-of-guest measurement: every MS milliseconds, compare the kernel's text and
    /// read-only data in guest RAM (read from the host) with the image QEMU loaded; 0 = off.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    monitor_interval: u64,
    /// What a change the out-of-guest monitor finds does (each distinct change is reported
    /// once, as an `integrity-violation` event): report only, stop the VM (clean shutdown,
    /// else kill; exit status 3), or restart it (kill, then boot a fresh VM with the same
    /// configuration and vTPM).
    #[arg(long, value_enum, value_name = "POLICY", default_value = "report")]
    monitor_policy: MonitorPolicy,
    /// Serve the out-of-guest monitor's latest signed report at http://IP:PORT/report (port 0:
    /// a free one; the ready event's "monitor_report" says which). After every check the
    /// launcher signs a report (verdict, findings, the instance's AK and boot) with the
    /// per-user monitor key ($TUK_MONITOR_KEY_DIR, else ~/.local/share/tuk/monitor; a verifier
    /// trusts its monitor.pub with --monitor-key) and writes it to <state>/monitor-report.json
    /// (also without this option, while the monitor runs).
    #[arg(long, value_name = "IP:PORT")]
    monitor_report_listen: Option<SocketAddr>,
    /// In-guest measurement: every MS milliseconds the kernel re-measures its text, read-only
    /// data and page tables, and every component's code and invariants (kernel argument
    /// `integrity.interval_ms`; 0 = off; at least 10).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    integrity_interval: u64,
    /// What the kernel does with a component whose check fails (after recording it in PCR
    /// 10): rebuild it from its verified bytes, keep it answering 503 until a newer version
    /// is published, or stop the VM (exit status 65).
    #[arg(
        long,
        value_enum,
        value_name = "POLICY",
        default_value = "reinstantiate"
    )]
    integrity_policy: IntegrityPolicy,
}

/// `--integrity-policy` (the kernel's `integrity.policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum IntegrityPolicy {
    Reinstantiate,
    Quarantine,
    Halt,
}

impl IntegrityPolicy {
    fn as_str(self) -> &'static str {
        match self {
            IntegrityPolicy::Reinstantiate => "reinstantiate",
            IntegrityPolicy::Quarantine => "quarantine",
            IntegrityPolicy::Halt => "halt",
        }
    }
}

/// `--monitor-policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum MonitorPolicy {
    Report,
    Stop,
    Restart,
}

impl MonitorPolicy {
    fn as_str(self) -> &'static str {
        match self {
            MonitorPolicy::Report => "report",
            MonitorPolicy::Stop => "stop",
            MonitorPolicy::Restart => "restart",
        }
    }
}

/// A `--component NAME=REF` naming no file but a registry reference: pulls the bundle (digests
/// checked while it streams) into the state directory.
fn resolve_reference(d: &mut tuk_compose::Deployment, state_dir: &std::path::Path) -> Result<()> {
    let spec = d.source.to_string_lossy().into_owned();
    if d.source.exists() {
        return Ok(());
    }
    let Ok(reference) = tuk_registry::Reference::parse(&spec) else {
        anyhow::bail!(
            "--component {}={spec}: no such file, and not a registry reference",
            d.name
        );
    };
    let bundle = tuk_registry::pull(&reference.to_string())
        .with_context(|| format!("cannot pull {spec} for component {}", d.name))?;
    // The state directory first, private (0700): create_dir_all would make it 0755, which the
    // launcher then refuses.
    tuk_launcher::instance::create_state_dir(state_dir)?;
    let dir = state_dir.join("pulled");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{}.bundle", d.name));
    std::fs::write(&path, &bundle).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("tuk: pulled {spec} → {}", path.display());
    d.source = path;
    Ok(())
}

/// Builds the boot pack for `--component`, `--trust` and friends; `None` without either.
fn deployment(args: &RunArgs, state_dir: &std::path::Path) -> Result<Option<PathBuf>> {
    use tuk_compose::deploy::{apply_setting, apply_value, parse_component_arg};
    if args.components.is_empty() {
        anyhow::ensure!(
            args.configs.is_empty() && args.memory_limits.is_empty() && args.deadlines.is_empty(),
            "--config, --memory-limit and --deadline need a --component to apply to"
        );
        if args.trust.is_empty() && args.policy.is_none() {
            return Ok(None);
        }
    }
    let policy: Option<Vec<u8>> = match (&args.policy, args.trust.is_empty()) {
        (Some(path), _) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the policy {}", path.display()))?;
            let policy = tuk_measure::policy::TrustPolicy::from_json(&bytes)
                .with_context(|| format!("{} is not a valid trust policy", path.display()))?;
            Some(policy.canonical_json())
        }
        (None, false) => Some(sign::policy_of_keys(&args.trust)?.canonical_json()),
        (None, true) => None,
    };
    let mut deployments = args
        .components
        .iter()
        .map(|a| parse_component_arg(a))
        .collect::<Result<Vec<_>, _>>()?;
    for arg in &args.configs {
        apply_setting(&mut deployments, arg, "config.")?;
    }
    let positive = |v: &str| v.parse::<u64>().ok().filter(|n| *n > 0);
    for arg in &args.memory_limits {
        apply_value(&mut deployments, arg, "memory_limit_bytes", |v| {
            positive(v).map(|mib| (mib << 20).to_string())
        })?;
    }
    for arg in &args.deadlines {
        apply_value(&mut deployments, arg, "deadline_ms", |v| {
            positive(v).map(|ms| ms.to_string())
        })?;
    }
    for d in &mut deployments {
        resolve_reference(d, state_dir)?;
    }
    let (pack, packed) = tuk_compose::boot_pack(&deployments, policy.as_deref())?;
    // Private (0700, ours, not a link): the launcher refuses anything else.
    tuk_launcher::instance::create_state_dir(state_dir)?;
    let path = state_dir.join("boot.pack");
    std::fs::write(&path, &pack).with_context(|| format!("cannot write {}", path.display()))?;
    for p in &packed {
        eprintln!(
            "tuk: component {:<12} {}  packed sha256:{} ({} bytes)",
            p.name,
            p.source.path.display(),
            p.code.sha256,
            p.code.size
        );
    }
    Ok(Some(path))
}

fn parse_kernel_arg(s: &str) -> Result<(String, String), String> {
    qemu::parse_kernel_arg(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Kernel(KernelCommand::Build { source, sign }) => kernel_build(source, sign),
        Command::Run(args) => run(args),
        Command::Component(cmd) => component::component(cmd),
        Command::Compile(args) => component::compile(args),
        Command::Publish(args) => registry::publish(args),
        Command::Pull(args) => registry::pull(args),
        Command::Keygen(args) => sign::keygen(args),
        Command::Sign(args) => sign::sign(args),
        Command::Verify(args) => sign::verify(args),
        Command::Policy(args) => sign::policy(args),
        Command::Tamper(args) => tamper::tamper(args),
        Command::Attest(args) => attest::attest(args),
        Command::Verifier(cmd) => verifier::verifier(cmd),
        Command::Gateway(args) => gateway::gateway(args),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tuk: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The JSON lines `tuk` prints on stdout, one object per line, `event` first.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
enum Event<'a> {
    KernelBuilt {
        path: &'a std::path::Path,
        sha256: &'a str,
        bytes: u64,
        toolchain: &'a str,
        /// The signed reference manifest, with --sign.
        #[serde(skip_serializing_if = "Option::is_none")]
        reference: Option<&'a std::path::Path>,
    },
    Ready {
        url: String,
        /// The admin listener (every `/_tuk/*` endpoint).
        admin: String,
        accel: &'a str,
        boot_ms: u64,
        guest_boot_us: Option<u64>,
        console_log: &'a std::path::Path,
        /// `<state_dir>/instance.json` (docs/contracts.md).
        instance: std::path::PathBuf,
        /// `--monitor-report-listen`: where the monitor's signed report is served.
        #[serde(skip_serializing_if = "Option::is_none")]
        monitor_report: Option<String>,
    },
    Stopped {
        /// `signal` (we stopped it), `vm-exited` (it stopped by itself) or
        /// `integrity-violation` (`--monitor-policy stop`).
        reason: &'a str,
        clean: bool,
        exit_status: Option<i32>,
    },
    /// The out-of-guest monitor found a read-only kernel segment or a component's code image
    /// changed in guest RAM.
    IntegrityViolation {
        /// `out-of-guest` (the in-guest monitor reports in /_tuk/status).
        source: &'a str,
        /// `text`, `rodata`, or `component:NAME:code`.
        segment: &'a str,
        perm: &'a str,
        /// Guest-physical address of the first changed byte.
        paddr: u64,
        /// Its offset in the segment.
        offset: u64,
        segment_paddr: u64,
        segment_len: u64,
        expected_sha256: &'a str,
        observed_sha256: &'a str,
        /// Unix time (ms) of the check that found it.
        detected_ms: u64,
        check_us: u64,
        /// `--monitor-policy`.
        action: &'a str,
    },
    /// The out-of-guest monitor could not read guest RAM (reported once per distinct reason).
    MonitorError { reason: &'a str },
    /// `--monitor-policy restart`: the VM was killed; a `ready` event follows for the new one.
    Restarting {
        reason: &'a str,
        exit_status: Option<i32>,
    },
}

impl<'a> Event<'a> {
    fn violation(v: &'a Violation, policy: MonitorPolicy) -> Event<'a> {
        Event::IntegrityViolation {
            source: "out-of-guest",
            segment: &v.segment,
            perm: v.perm,
            paddr: v.paddr,
            offset: v.offset,
            segment_paddr: v.segment_paddr,
            segment_len: v.segment_len,
            expected_sha256: &v.expected_sha256,
            observed_sha256: &v.observed_sha256,
            detected_ms: v.detected_ms,
            check_us: v.check_us,
            action: policy.as_str(),
        }
    }
}

/// Prints one event on stdout and flushes it (consumers read line by line).
fn emit(event: &Event<'_>) -> Result<()> {
    let line = serde_json::to_string(event).context("cannot encode an event")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

fn kernel_build(source: Option<PathBuf>, sign_key: Option<PathBuf>) -> Result<ExitCode> {
    // Load the key first: a bad key fails in a second, not after a build.
    let sign_key = match &sign_key {
        Some(path) => Some(sign::load_signing_key(path)?),
        None => None,
    };
    let src = KernelSource::locate(source.as_deref())?;
    let toolchain = src.detect_toolchain()?;
    eprintln!(
        "tuk: building {} with {}",
        src.kernel_dir().display(),
        toolchain.describe()
    );
    let started = Instant::now();
    let image = src.build(&toolchain)?;
    eprintln!(
        "tuk: built in {:.1} s with the {} toolchain\ntuk: image   {}\ntuk: size    {} bytes\ntuk: sha256  {}",
        started.elapsed().as_secs_f64(),
        toolchain.id(),
        image.path.display(),
        image.bytes,
        image.sha256,
    );
    let reference = match &sign_key {
        Some(key) => {
            let bytes = std::fs::read(&image.path)
                .with_context(|| format!("cannot read {}", image.path.display()))?;
            let envelope = tuk_measure::kernel_ref::sign(
                key,
                &bytes,
                tuk_measure::kernel_ref::KernelPredicate {
                    version: env!("CARGO_PKG_VERSION").into(),
                    bytes: image.bytes,
                    toolchain: toolchain.id().into(),
                },
            );
            let path = kernel_ref_path(&image.path);
            std::fs::write(&path, envelope)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "tuk: reference {} (signed by {})",
                path.display(),
                key.keyid()
            );
            Some(path)
        }
        None => None,
    };
    emit(&Event::KernelBuilt {
        path: &image.path,
        sha256: &image.sha256,
        bytes: image.bytes,
        toolchain: toolchain.id(),
        reference: reference.as_deref(),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Where `tuk kernel build --sign` writes the image's signed reference: IMAGE.ref.json.
fn kernel_ref_path(image: &std::path::Path) -> PathBuf {
    let mut name = image.file_name().unwrap_or_default().to_os_string();
    name.push(".ref.json");
    image.with_file_name(name)
}

fn run(args: RunArgs) -> Result<ExitCode> {
    // Signals first, so that a Ctrl-C during boot stops QEMU instead of orphaning it.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install the signal handlers")?;
    }

    let kernel = match args.kernel.clone() {
        Some(path) => path,
        None => kernel::default_image()?,
    };
    let mut cfg = RunConfig::new(kernel, args.listen);
    // Chosen once, so a restarted VM keeps its admin address.
    cfg.admin_listen = Some(match args.admin_listen {
        Some(a) => a,
        None => std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .context("cannot find a free loopback port for the admin listener; pass --admin-listen IP:PORT")?,
    });
    cfg.accel = args.accel;
    cfg.memory_mib = args.memory;
    cfg.kernel_args = vec![
        (
            "integrity.interval_ms".to_owned(),
            args.integrity_interval.to_string(),
        ),
        (
            "integrity.policy".to_owned(),
            args.integrity_policy.as_str().to_owned(),
        ),
    ];
    // Explicit --kernel-arg words come last, so they win.
    cfg.kernel_args.extend(args.kernel_args.iter().cloned());
    cfg.boot_timeout = Duration::from_secs(args.boot_timeout);
    cfg.cancel = Some(Arc::clone(&stop));
    if let Some(dir) = &args.state_dir {
        cfg.state_dir = dir.clone();
    }
    cfg.boot_pack = deployment(&args, &cfg.state_dir)?;
    eprintln!(
        "tuk: booting {} ({}, {} MiB), console log in {}",
        cfg.kernel.display(),
        cfg.accel,
        cfg.memory_mib,
        cfg.state_dir
            .join(tuk_launcher::instance::CONSOLE_LOG)
            .display()
    );

    // The monitor's signed report: the key (per user), the latest report (served across
    // restarts), and seq (increasing across restarts and later runs: it starts at now in ms).
    let reports = if args.monitor_interval > 0 {
        let dir = monitor_report::default_key_dir();
        match monitor_report::MonitorKey::load_or_create(&dir) {
            Ok(key) => {
                eprintln!(
                    "tuk: monitor reports signed by {} (trust {} with --monitor-key)",
                    key.keyid(),
                    key.pub_path().display()
                );
                Some(Reports {
                    key: Arc::new(key),
                    latest: monitor_report::Latest::default(),
                    seq: Arc::new(std::sync::atomic::AtomicU64::new(monitor_unix_ms())),
                })
            }
            // Signed reports are what --monitor-report-listen serves: without it, the monitor
            // still runs and reports on stdout.
            Err(e) if args.monitor_report_listen.is_none() => {
                eprintln!("tuk: no signed monitor reports: {e}");
                None
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("cannot load or create the out-of-guest monitor's signing key"))
            }
        }
    } else {
        if args.monitor_report_listen.is_some() {
            anyhow::bail!(
                "--monitor-report-listen needs the out-of-guest monitor: drop --monitor-interval 0"
            );
        }
        None
    };
    let report_server = match (&reports, args.monitor_report_listen) {
        (Some(r), Some(addr)) => Some(serve_reports(addr, &r.latest)?),
        _ => None,
    };
    let report_url = report_server
        .as_ref()
        .map(|s| format!("http://{}/report", s.addr()));

    let mut vm = Instance::start(cfg.clone())?;
    announce(&vm, report_url.as_deref())?;
    let mut monitor = start_monitor(&vm, &args, reports.as_ref())?;
    let mut monitor_errors: Vec<String> = Vec::new();

    loop {
        if stop.load(Ordering::Relaxed) {
            drop(monitor.take());
            eprintln!("tuk: stopping (console: shutdown)");
            let exit = vm.shutdown(Duration::from_secs(args.shutdown_timeout))?;
            if !exit.is_clean() {
                eprintln!("tuk: unclean stop: {exit}");
            }
            emit(&Event::Stopped {
                reason: "signal",
                clean: exit.is_clean(),
                exit_status: exit.code(),
            })?;
            return Ok(if exit.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        if let Some(exit) = vm.exit_kind()? {
            drop(monitor.take());
            eprintln!("tuk: the VM stopped by itself: {exit}");
            if exit.is_clean() {
                eprintln!("--- console (last lines) ---");
                for line in vm.console_tail() {
                    eprintln!("  | {line}");
                }
            }
            emit(&Event::Stopped {
                reason: "vm-exited",
                clean: false,
                exit_status: exit.code(),
            })?;
            return Ok(ExitCode::from(1));
        }
        let event = match &monitor {
            Some((_, events)) => match events.recv_timeout(Duration::from_millis(100)) {
                Ok(event) => Some(event),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("the out-of-guest monitor's thread ended")
                }
            },
            None => {
                thread::sleep(Duration::from_millis(100));
                None
            }
        };
        match event {
            Some(monitor::Event::Violation(v)) => {
                let what = match v.segment.strip_prefix("component:") {
                    Some(c) => format!("component {}'s code image", c.trim_end_matches(":code")),
                    None => format!("the kernel's {} segment", v.segment),
                };
                eprintln!(
                    "tuk: INTEGRITY VIOLATION (out-of-guest): {what} ({}) \
                     differs from the image at paddr {:#x} (offset {:#x} of {} bytes), \
                     sha256 {} instead of {}; policy: {}",
                    v.perm,
                    v.paddr,
                    v.offset,
                    v.segment_len,
                    v.observed_sha256,
                    v.expected_sha256,
                    args.monitor_policy.as_str()
                );
                emit(&Event::violation(&v, args.monitor_policy))?;
                match args.monitor_policy {
                    MonitorPolicy::Report => {}
                    MonitorPolicy::Stop => {
                        drop(monitor.take());
                        eprintln!("tuk: stopping the VM (console: shutdown, then kill)");
                        let exit = vm.shutdown(Duration::from_secs(args.shutdown_timeout))?;
                        emit(&Event::Stopped {
                            reason: "integrity-violation",
                            clean: exit.is_clean(),
                            exit_status: exit.code(),
                        })?;
                        return Ok(ExitCode::from(3));
                    }
                    MonitorPolicy::Restart => {
                        drop(monitor.take());
                        let status = vm.kill()?;
                        eprintln!("tuk: killed the VM ({status}); booting a fresh one");
                        emit(&Event::Restarting {
                            reason: "integrity-violation",
                            exit_status: status.code(),
                        })?;
                        drop(vm);
                        vm = Instance::start(cfg.clone())?;
                        announce(&vm, report_url.as_deref())?;
                        monitor = start_monitor(&vm, &args, reports.as_ref())?;
                    }
                }
            }
            Some(monitor::Event::Error(reason)) => {
                if !monitor_errors.contains(&reason) {
                    eprintln!("tuk: the out-of-guest monitor cannot check: {reason}");
                    emit(&Event::MonitorError { reason: &reason })?;
                    monitor_errors.push(reason);
                }
            }
            Some(monitor::Event::Checked(_)) | None => {}
        }
    }
}

/// Says on stderr and as a `ready` event that `vm` serves.
fn announce(vm: &Instance, monitor_report: Option<&str>) -> Result<()> {
    let measured = vm.measured_boot();
    eprintln!(
        "tuk: vTPM {} ({}), measured launch {} ms: PCR 4 kernel sha256:{}, PCR 5 boot config sha256:{}; event log {}",
        measured.vtpm.state.display(),
        if measured.manufactured {
            format!("created in {} ms", measured.manufacture_ms)
        } else {
            "existing".to_owned()
        },
        measured.launch_ms,
        measured.records[0].digests[0].digest,
        measured.records[1].digests[0].digest,
        measured.eventlog.display()
    );
    eprintln!(
        "tuk: ready at {} (admin {}; accel {}, boot {} ms, pid {}); console log {}",
        vm.url(),
        vm.admin_url(),
        vm.accel(),
        vm.boot_ms(),
        vm.pid(),
        vm.console_log_path().display()
    );
    emit(&Event::Ready {
        url: vm.url(),
        admin: vm.admin_url(),
        accel: vm.accel().as_str(),
        boot_ms: vm.boot_ms(),
        guest_boot_us: vm.guest_boot_us(),
        console_log: vm.console_log_path(),
        instance: tuk_launcher::InstanceInfo::path(vm.state_dir()),
        monitor_report: monitor_report.map(str::to_owned),
    })
}

/// What signs and publishes the monitor's reports, shared by every VM of one `tuk run`.
struct Reports {
    key: Arc<monitor_report::MonitorKey>,
    latest: monitor_report::Latest,
    seq: Arc<std::sync::atomic::AtomicU64>,
}

fn monitor_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The signer of `vm`'s monitor reports: bound to its AK (from its identity document) and the
/// launcher's PCR 4/5 records of this boot.
fn reporter(vm: &Instance, args: &RunArgs, reports: &Reports) -> Result<monitor_report::Reporter> {
    let ak_name = monitor_report::ak_name(vm.admin_addr())
        .context("cannot bind the monitor's reports to the instance's attestation key")?;
    monitor_report::Reporter::new(
        Arc::clone(&reports.key),
        vm.admin_url(),
        ak_name,
        &vm.measured_boot().records,
        args.monitor_interval,
        vm.state_dir(),
        Arc::clone(&reports.latest),
    )
    .map_err(|e| anyhow::anyhow!("cannot digest the launcher's PCR 4/5 records: {e}"))
}

/// `--monitor-report-listen`: `GET /report` answers the latest signed report (503 before the
/// first check).
fn serve_reports(addr: SocketAddr, latest: &monitor_report::Latest) -> Result<tuk_httpd::Running> {
    let latest = Arc::clone(latest);
    let handler: Arc<tuk_httpd::Handler> = Arc::new(move |req: &tuk_httpd::Request| {
        if req.path != "/report" {
            return tuk_httpd::Response::error(
                404,
                "not found: the monitor report is at GET /report",
            );
        }
        if req.method != "GET" && req.method != "HEAD" {
            return tuk_httpd::Response::error(405, "only GET /report");
        }
        match latest.lock().ok().and_then(|l| l.clone()) {
            Some(body) => {
                tuk_httpd::Response::json(200, body).with_header("Cache-Control", "no-store")
            }
            None => tuk_httpd::Response::error(
                503,
                "no report yet: the monitor has not finished a check",
            ),
        }
    });
    tuk_httpd::Server::bind(addr)
        .with_context(|| format!("cannot listen on {addr} for --monitor-report-listen"))?
        .max_connections(32)
        .spawn(handler)
        .context("cannot start the monitor report server")
}

/// Starts the out-of-guest monitor for `vm` (unless `--monitor-interval 0`); its violations
/// and errors arrive on the returned channel (one channel per VM, so nothing from a VM that was
/// restarted reaches its successor).
fn start_monitor(
    vm: &Instance,
    args: &RunArgs,
    reports: Option<&Reports>,
) -> Result<Option<(MonitorThread, mpsc::Receiver<monitor::Event>)>> {
    if args.monitor_interval == 0 {
        return Ok(None);
    }
    let mut m = vm
        .monitor()
        .context("cannot start the out-of-guest monitor")?;
    m.watch_components(vm.admin_addr());
    let bytes: u64 = m.image().segments.iter().map(|s| s.len).sum();
    eprintln!(
        "tuk: out-of-guest monitor: kernel text and read-only data ({bytes} bytes) and component code images in {} every {} ms, policy {}",
        m.memory_file().display(),
        args.monitor_interval,
        args.monitor_policy.as_str()
    );
    let mut reporter = match reports {
        Some(reports) => match reporter(vm, args, reports) {
            Ok(r) => Some((r, Arc::clone(&reports.seq))),
            Err(e) if args.monitor_report_listen.is_none() => {
                eprintln!("tuk: no signed monitor reports: {e:#}");
                None
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    let (tx, rx) = mpsc::channel();
    let thread = m
        .spawn(Duration::from_millis(args.monitor_interval), move |e| {
            match (&e, &mut reporter) {
                (monitor::Event::Violation(v), Some((r, _))) => r.finding(v),
                (monitor::Event::Checked(report), Some((r, seq))) => {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    if let Err(err) = r.checked(report, n) {
                        let _ = tx.send(monitor::Event::Error(err.to_string()));
                    }
                    return;
                }
                (monitor::Event::Checked(_), None) => return,
                _ => {}
            }
            let _ = tx.send(e);
        })
        .context("cannot start the monitor thread")?;
    Ok(Some((thread, rx)))
}
