//! tuk-linux-host: the Linux baseline's `/init` (docs/baseline.md). Debian's kernel boots it
//! from an initramfs; it serves the same compiled components as the tuk kernel, with the same
//! engine configuration (`tuk-engine`), WIT world, host imports, routing and HTTP engine
//! (`tuk-http`), so that a benchmark compares the platforms and not two implementations.
//!
//! Boot order, as PID 1:
//! 1. mount /proc, /sys and /dev (devtmpfs);
//! 2. configuration from /proc/cmdline (tuk's keys), logging on the console;
//! 3. load the kernel modules listed in /lib/modules/load.order (virtio transport, virtio-net)
//!    with any `module.param=value` from the command line, as modprobe would;
//! 4. bring up `lo` and `eth0` with the static address (default 10.0.2.15/24 via 10.0.2.2, QEMU
//!    user networking's), and the default route;
//! 5. load and instantiate every /components/<name>.cwasm;
//! 6. listen, print `tuk: ready listen=<ip>:<port> guest_boot_us=<N> init_start_us=<N>
//!    tsc_boot_us=<N> kernel=linux-<release>` and serve. `guest_boot_us` and `init_start_us`
//!    are the kernel's clock (CLOCK_BOOTTIME, as in its log) when the server listened and when
//!    /init started; `tsc_boot_us` is the TSC, which QEMU starts at zero with the VM: the time
//!    from VM start to listening, firmware and early kernel included (tuk's `guest_boot_us`
//!    counts from its PVH entry, a few instructions after VM start).
//!
//! A `shutdown` line on the console or SIGTERM stops accepting, lets in-flight responses drain
//! (at most 2 s), prints `tuk: shutdown clean` and ends the VM with the tuk kernel's exit
//! status (33 through `isa-debug-exit`, or a plain power-off without that device).
//!
//! Run as an ordinary process (not PID 1) it skips steps 1, 3 and 4 and reads its command line
//! from `TUK_CMDLINE` and its components from `TUK_COMPONENTS` (a directory): handy on the host.

mod config;
mod logger;
mod routes;
mod runtime;
mod server;
#[allow(unsafe_code)]
mod sys;

use std::fs::{self, File};
use std::io::BufRead;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use config::Config;
use routes::{BootFacts, HttpStats, Router};
use server::Shared;

const MODULE_DIR: &str = "/lib/modules";
const COMPONENT_DIR: &str = "/components";
const INTERFACE: &str = "eth0";
/// How long to wait for the NIC to appear after its driver loaded.
const INTERFACE_WAIT: Duration = Duration::from_secs(10);
/// How long a clean shutdown waits for in-flight responses (the kernel's value).
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
/// `isa-debug-exit` values: QEMU exits with 33 (clean) or 3 (failure), as with tuk.
const EXIT_CLEAN: u8 = 0x10;
const EXIT_FAULT: u8 = 0x01;

macro_rules! fail {
    ($($arg:tt)*) => {{
        logger::console_line(format_args!("FATAL: {}", format_args!($($arg)*)));
        sys::end_vm(EXIT_FAULT)
    }};
}

fn main() {
    let init_start = sys::since_boot();
    let pid1 = std::process::id() == 1;
    std::panic::set_hook(Box::new(|info| {
        logger::console_line(format_args!("PANIC: {info}"));
        sys::end_vm(EXIT_FAULT);
    }));
    // Before any thread starts, so every thread inherits the mask and the signal thread takes
    // SIGTERM synchronously.
    if let Err(e) = sys::block_termination_signals() {
        fail!("cannot block SIGTERM: {e}");
    }
    if pid1 {
        for (source, target, fstype) in [
            ("proc", "/proc", "proc"),
            ("sysfs", "/sys", "sysfs"),
            ("devtmpfs", "/dev", "devtmpfs"),
        ] {
            if let Err(e) = sys::mount(source, target, fstype) {
                fail!("cannot mount {fstype} on {target}: {e}");
            }
        }
    }
    let cmdline = if pid1 {
        fs::read_to_string("/proc/cmdline").unwrap_or_default()
    } else {
        std::env::var("TUK_CMDLINE").unwrap_or_default()
    };
    let cmdline = cmdline.trim().to_owned();
    let (config, warnings) = Config::parse(&cmdline);
    logger::init(config.log_level);
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    log::info!(
        "tuk-linux-host {} starting as PID {} on Linux {release} at {} us of kernel time; cmdline: {cmdline}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        init_start.as_micros()
    );
    for w in &warnings {
        log::warn!("{w}");
    }
    if let Some(ms) = config.unix_time_ms {
        // Without an RTC the clock starts in 1970: then the launcher's start time plus the
        // time the guest has been up (the tuk kernel's wall clock has the same origin). With
        // an RTC (which Linux read at boot) the clock is already right.
        let now = Duration::from_millis(ms) + sys::since_boot();
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if pid1 && clock < Duration::from_millis(ms) {
            if let Err(e) = sys::set_wall_clock(now) {
                log::warn!("cannot set the wall clock: {e}");
            }
        }
    }

    if pid1 {
        let t = Instant::now();
        load_modules(&cmdline);
        log::info!("kernel modules loaded in {} us", t.elapsed().as_micros());
        let t = Instant::now();
        if let Err(e) = network_up(&config) {
            fail!("{e}");
        }
        log::info!(
            "network: {INTERFACE} {}/{} gw {} up in {} us",
            config.ip,
            config.prefix_len,
            config
                .gateway
                .map_or_else(|| "none".to_owned(), |g| g.to_string()),
            t.elapsed().as_micros()
        );
    }

    let mut runtime = match runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => fail!("{e}"),
    };
    let dir = if pid1 {
        PathBuf::from(COMPONENT_DIR)
    } else {
        std::env::var_os("TUK_COMPONENTS")
            .map_or_else(|| PathBuf::from(COMPONENT_DIR), PathBuf::from)
    };
    deploy_all(&mut runtime, &dir, &config);

    let listen_on = SocketAddr::from(([0, 0, 0, 0], config.port));
    let listener = match TcpListener::bind(listen_on) {
        Ok(l) => l,
        Err(e) => fail!("cannot listen on {listen_on}: {e}"),
    };
    let boot_us = sys::since_boot().as_micros() as u64;
    let boot_tsc = sys::tsc();
    let stats: &'static HttpStats = Box::leak(Box::default());
    let shared: &'static Shared = Box::leak(Box::new(Shared {
        router: Mutex::new(Router::new(
            BootFacts {
                boot_us,
                kernel_release: release.clone(),
            },
            runtime,
            stats,
        )),
        stats,
        limits: config.http,
        max_connections: config.max_connections as u64,
        shutting_down: AtomicBool::new(false),
        in_flight: AtomicU64::new(0),
    }));
    if let Err(e) = thread::Builder::new()
        .name("accept".into())
        .spawn(move || server::accept_loop(listener, shared))
    {
        fail!("cannot start the accept thread: {e}");
    }

    let (stop_tx, stop_rx) = mpsc::channel::<&'static str>();
    let console_tx = stop_tx.clone();
    let console = thread::Builder::new()
        .name("console".into())
        .spawn(move || console_commands(console_tx));
    let signals = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = sys::wait_for_termination();
            let _ = stop_tx.send(if sig == libc::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            });
        });
    if let Err(e) = console.and(signals) {
        fail!("cannot start the console and signal threads: {e}");
    }

    let tsc_boot = tsc_khz()
        .map(|khz| format!(" tsc_boot_us={}", boot_tsc.saturating_mul(1000) / khz))
        .unwrap_or_default();
    logger::console_line(format_args!(
        "tuk: ready listen={}:{} guest_boot_us={boot_us} init_start_us={}{tsc_boot} kernel=linux-{release}",
        config.ip,
        config.port,
        init_start.as_micros()
    ));

    let why = stop_rx.recv().unwrap_or("all shutdown sources closed");
    log::info!("shutdown requested ({why})");
    shared.shutting_down.store(true, Ordering::Relaxed);
    let started = Instant::now();
    while shared.in_flight.load(Ordering::Relaxed) > 0 && started.elapsed() < SHUTDOWN_DRAIN {
        thread::sleep(Duration::from_millis(10));
    }
    // Wait for a request still running in a component, too (bounded by its deadline).
    drop(shared.router.lock());
    logger::console_line(format_args!("tuk: shutdown clean"));
    sys::end_vm(EXIT_CLEAN)
}

/// Line-buffered console commands (tuk's console protocol: `shutdown`).
fn console_commands(stop: mpsc::Sender<&'static str>) {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "" => {}
            "shutdown" => {
                let _ = stop.send("console");
                return;
            }
            other => log::warn!("console: unknown command `{other}` (known: shutdown)"),
        }
    }
    // The console closed: keep serving (QEMU's stdin may be /dev/null); SIGTERM still works.
}

/// Loads the modules named in /lib/modules/load.order, in that order (the build resolved
/// their dependencies). A module that fails to load is logged; the NIC check that follows
/// says whether it mattered.
fn load_modules(cmdline: &str) {
    let order = Path::new(MODULE_DIR).join("load.order");
    let Ok(list) = fs::read_to_string(&order) else {
        log::info!("no {}: no modules to load", order.display());
        return;
    };
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = Path::new(MODULE_DIR).join(format!("{name}.ko"));
        let params = Config::module_params(cmdline, name);
        let t = Instant::now();
        let result = File::open(&path).and_then(|f| sys::load_module(&f, &params));
        match result {
            Ok(()) => log::debug!(
                "module {name} loaded in {} us{}",
                t.elapsed().as_micros(),
                if params.is_empty() {
                    String::new()
                } else {
                    format!(" ({params})")
                }
            ),
            Err(e) => log::error!("module {name} ({}): {e}", path.display()),
        }
    }
}

fn network_up(config: &Config) -> Result<(), String> {
    sys::interface_up("lo").map_err(|e| format!("cannot bring up lo: {e}"))?;
    let started = Instant::now();
    while !sys::interface_exists(INTERFACE) {
        if started.elapsed() > INTERFACE_WAIT {
            return Err(format!(
                "no network interface {INTERFACE} after {} s: is the virtio-net device there and \
                 its driver (and the virtio transport's) in /lib/modules/load.order?",
                INTERFACE_WAIT.as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
    sys::configure_interface(INTERFACE, config.ip, config.prefix_len)
        .map_err(|e| format!("cannot configure {INTERFACE}: {e}"))?;
    if let Some(gw) = config.gateway {
        sys::add_default_route(gw).map_err(|e| format!("cannot add the route via {gw}: {e}"))?;
    }
    Ok(())
}

/// The TSC's rate as the kernel determined it (`cpu MHz` in /proc/cpuinfo), in kHz.
fn tsc_khz() -> Option<u64> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz"))?
        .trim_start_matches([' ', '\t', ':'])
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64).filter(|k| *k > 0)
}

/// Resident memory of this process (bytes), from /proc/self/statm.
fn resident_bytes() -> u64 {
    fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Deploys every `<name>.cwasm` in `dir` (in name order), with metadata from
/// `<name>.meta` (`key=value` lines, tuk's boot-pack keys) and then the command line.
fn deploy_all(runtime: &mut runtime::Runtime, dir: &Path, config: &Config) {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect(),
        Err(e) => {
            log::warn!("no components: cannot read {}: {e}", dir.display());
            return;
        }
    };
    files.sort();
    for path in files {
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let meta_text = fs::read_to_string(path.with_extension("meta")).unwrap_or_default();
        let mut meta: Vec<(String, String)> = meta_text
            .lines()
            .filter_map(|l| l.trim().split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        meta.extend(config.components.get(&name).cloned().unwrap_or_default());
        let (limits, component_config) = match tuk_service_host::deployment_from_meta(
            meta.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ) {
            Ok(x) => x,
            Err(e) => {
                log::error!("component {name} refused: {e}");
                continue;
            }
        };
        let started = Instant::now();
        let rss_before = resident_bytes();
        let code = match fs::read(&path) {
            Ok(c) => c,
            Err(e) => {
                log::error!(
                    "component {name} refused: cannot read {}: {e}",
                    path.display()
                );
                continue;
            }
        };
        match runtime.deploy(&name, &code, limits, component_config) {
            Ok(d) => log::info!(
                "component {name} ({} bytes of code): loaded and instantiated in {} us, memory +{} KiB",
                d.code_bytes,
                started.elapsed().as_micros(),
                resident_bytes().saturating_sub(rss_before) >> 10
            ),
            Err(e) => log::error!("component {name} refused: {e}"),
        }
    }
}
