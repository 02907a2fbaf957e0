//! tuk host-kernel: a PVH unikernel that serves HTTP (and, in later issues, WebAssembly
//! components), measured into a vTPM.
//!
//! Boot order (each step needs the ones before it):
//! 1. `arch::init_early`: GDT/TSS (IST stacks) and IDT, so any fault prints a diagnosis;
//! 2. hypervisor detection (on Xen the console is port 0xe9, the clock Xen's time leaf and the
//!    exit `SCHEDOP_shutdown`: docs/xen.md), the console, boot information (memory map,
//!    command line), configuration, logging;
//! 3. heap on the RAM the boot page tables map, then the final W^X page tables, then the rest
//!    of RAM;
//! 4. interrupt controllers and the TSC clock;
//! 5. virtio-net, smoltcp, the HTTP server; then the event loop, which halts whenever there is
//!    nothing to do until an interrupt (NIC, console) or the timer for the next deadline.
//!
//! Unsafe code is confined to `arch`, `drivers`, `mem` and `wasm::platform` (the hardware fence).

#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]
#![deny(unsafe_code)]

extern crate alloc;

#[allow(unsafe_code)]
mod arch;
mod attestation;
mod config;
mod deploy;
#[allow(unsafe_code)]
mod drivers;
mod integrity;
mod logger;
mod measured;
#[allow(unsafe_code)]
mod mem;
mod net;
mod routes;
mod wasm;

use alloc::string::String;
use core::panic::PanicInfo;

use arch::{ExitCode, Irq};
use config::Config;
use drivers::serial;
use drivers::virtio_net::{slots_from_cmdline, NetDevice};
use net::server::HttpServer;
use net::Stack;
use routes::{BootFacts, Plane, RateLimit, Router};

/// The longest the loop sleeps even with nothing scheduled (a safety net, not a tick).
const MAX_SLEEP_US: u64 = 1_000_000;
/// How long a clean shutdown waits for in-flight responses.
const SHUTDOWN_DRAIN_US: u64 = 2_000_000;

macro_rules! fail {
    ($($arg:tt)*) => {{
        logger::console_line(format_args!("FATAL: {}", format_args!($($arg)*)));
        arch::exit_qemu(ExitCode::Fault)
    }};
}

// The PVH entry stub (arch/x86_64/boot.rs) calls this symbol.
#[allow(unsafe_code)]
#[no_mangle]
extern "C" fn kernel_entry(start_info: u32) -> ! {
    arch::init_early();
    // Before the console: on Xen it is the debug port, not the UART (docs/xen.md).
    let hypervisor = arch::detect_hypervisor();
    serial::init();
    let info = match arch::parse_boot_info(u64::from(start_info)) {
        Ok(info) => info,
        Err(e) => fail!("{e}"),
    };
    let cmdline = match info.cmdline() {
        Ok(c) => c,
        Err(e) => fail!("the boot command line is not UTF-8 ({e}); pass ASCII key=value words"),
    };

    let sections = arch::kernel_sections();
    let free = mem::FreeRam::from_boot_info(&info, (sections.text.0, sections.data.1));
    mem::init_early(&free);
    let ram = info
        .regions()
        .iter()
        .filter(|r| r.is_ram())
        .map(|r| (r.start, r.end()));
    arch::init_paging(ram);
    mem::init_late(&free);
    for m in info.modules() {
        // The boot pack is immutable from here on.
        if let Err(e) = arch::protect(
            m.start & !0xfff,
            m.len + (m.start & 0xfff),
            arch::Protection::ReadOnly,
        ) {
            fail!(
                "cannot write-protect the boot module at {:#x}: {e:?}",
                m.start
            );
        }
    }

    if hypervisor.is_xen() {
        // shared_info, the event upcall and the console ring (docs/xen.md).
        drivers::xen::init_early();
    }

    let cmdline = String::from(cmdline);
    let (config, warnings) = Config::parse(&cmdline);
    logger::init(config.log_level);
    if let Some(ms) = config.unix_time_ms {
        arch::set_wall_clock(ms);
    }
    let tsc_khz = arch::init_interrupts();
    log::info!(
        "tuk-kernel {} booting; cmdline: {cmdline}",
        env!("CARGO_PKG_VERSION")
    );
    for w in &warnings {
        log::warn!("{w}");
    }
    log::info!(
        "memory: {} MiB free RAM in {} range(s); TSC {} kHz",
        free.total() >> 20,
        free.ranges().count(),
        tsc_khz
    );
    match hypervisor {
        arch::Hypervisor::Xen(x) => log::info!(
            "platform: Xen {}.{} (CPUID leaves at {:#x}, domid {:?}, {:?})",
            x.major,
            x.minor,
            x.base,
            x.domid,
            x.time
        ),
        h => log::info!("platform: hypervisor {}", h.name()),
    }
    let xenstore = hypervisor.is_xen() && drivers::xen::init_store();
    let wx = arch::audit_wx();
    if wx.writable_executable_pages != 0 {
        fail!(
            "paging: {} pages are writable and executable",
            wx.writable_executable_pages
        );
    }
    log::info!(
        "paging: {} pages mapped, {} executable, 0 writable+executable",
        wx.mapped_pages,
        wx.executable_pages
    );

    if hypervisor.is_xen() {
        // Until netfront exists (docs/xen.md, next steps) there is nothing to serve on: say
        // so, then wait for the toolstack's `xl shutdown` (or stop at once without XenStore).
        if !xenstore {
            logger::console_line(format_args!(
                "tuk: no network device on Xen yet (netfront not built, issue 13); stopping"
            ));
            arch::exit_qemu(ExitCode::Fault);
        }
        logger::console_line(format_args!(
            "tuk: no network device on Xen yet (netfront not built, issue 13); waiting for \
             control/shutdown (xl shutdown)"
        ));
        wait_for_xen_shutdown();
    }
    let slots = slots_from_cmdline(&cmdline);
    let device = match NetDevice::probe(&slots) {
        Ok(d) => d,
        Err(e) => fail!("{e}"),
    };
    arch::route(device.gsi, Irq::Net);
    arch::route(serial::COM1_GSI, Irq::Serial);
    let mac = device.mac();
    log::info!(
        "virtio-net at {:#x} irq {} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        device.slot.addr,
        device.gsi,
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );

    let runtime = match wasm::Runtime::new() {
        Ok(r) => r,
        Err(e) => fail!("{e}"),
    };
    // The boot pack (PVH module 0): components, and the launcher's event log and trust policy.
    let pack_bytes = info.modules().first().map(|m| m.bytes());
    let pack = pack_bytes.and_then(|b| match tuk_bootpack::Pack::parse(b) {
        Ok(p) => Some(p),
        Err(e) => {
            log::error!("boot module refused: {e}");
            None
        }
    });
    let reserved = |name| pack.as_ref().and_then(|p| p.reserved(name)).map(|e| e.data);
    let measurements = measured::Measurements::init(reserved(tuk_bootpack::EVENTLOG));
    match measurements.problem() {
        Some(p) => log::warn!("tpm: {} ({p})", measurements.state_name()),
        None => log::info!("tpm: {}", measurements.state_name()),
    }
    let mut deployer = deploy::Deployer::new(runtime, measurements, reserved(tuk_bootpack::POLICY));
    for entry in pack.iter().flat_map(|p| &p.entries) {
        let started = arch::now_us();
        let heap_before = mem::heap_stats().allocated_bytes;
        match deployer.deploy(
            entry.name,
            entry.data,
            &entry.meta,
            false,
            deploy::Reset::default(),
        ) {
            Ok(summary) => log::info!(
                "component {summary}: verified, measured, loaded and instantiated in {} us, heap +{} KiB",
                arch::now_us() - started,
                mem::heap_stats().allocated_bytes.saturating_sub(heap_before) >> 10
            ),
            Err(r) => log::error!("component {} refused: {}", entry.name, r.reason),
        }
    }

    let mut stack = Stack::new(device, &config, arch::now_us());
    let mut server = HttpServer::new(
        config.port,
        config.http,
        config.listeners,
        config.max_connections,
    )
    .with_buffer_budget(
        config.service_buffer_budget(free.total()),
        &net::stats::SERVICE_BUFFERS,
    );
    server.replenish(&mut stack.sockets);
    // The admin plane: its own listener and socket pool (routes.rs says what each serves).
    let mut admin = HttpServer::new(
        config.admin_port,
        config.http,
        config.admin_listeners,
        config.admin_max_connections,
    )
    .with_buffer_budget(
        config.admin_buffer_budget(free.total()),
        &net::stats::ADMIN_BUFFERS,
    );
    admin.replenish(&mut stack.sockets);
    let boot_us = arch::now_us();
    let identity = attestation::Identity::setup(&mut deployer.measurements);
    match &identity {
        Ok(_) => log::info!("attestation: AK created (endorsement hierarchy), EK certificate read"),
        Err(e) => log::warn!("attestation unavailable: {e}"),
    }
    let monitor = integrity::Monitor::new(config.integrity, arch::now_us());
    log::info!(
        "integrity: re-measuring every {} ms (policy {})",
        config.integrity.interval_ms,
        config.integrity.policy.name()
    );
    let mut router = Router::new(
        BootFacts {
            boot_us,
            memory_total_bytes: free.total(),
            wx,
        },
        deployer,
        monitor,
        identity,
        RateLimit::new(config.tpm_per_s, config.tpm_burst),
        config.admin_port,
    );
    logger::console_line(format_args!(
        "tuk: ready listen={}:{} admin={}:{} guest_boot_us={boot_us}",
        config.ip, config.port, config.ip, config.admin_port
    ));
    run(&mut stack, &mut [server, admin], &mut router)
}

/// The event loop. Never returns: a `shutdown` console command exits the VM. `servers` are the
/// service listener's and the admin listener's, in that order ([`Plane`]).
fn run(stack: &mut Stack, servers: &mut [HttpServer; 2], router: &mut Router) -> ! {
    const PLANES: [Plane; 2] = [Plane::Service, Plane::Admin];
    let mut console = ConsoleInput::default();
    let mut shutdown_at: Option<u64> = None;
    loop {
        let irqs = arch::take_pending();
        if irqs.contains(Irq::Net) {
            stack.device.ack_interrupt();
        }
        if irqs.contains(Irq::Xen) {
            drivers::xen::poll();
        }
        let xen_shutdown = drivers::xen::shutdown_requested();
        if let Some(what) = &xen_shutdown {
            log::info!("shutdown requested by the toolstack (control/shutdown = {what})");
        }
        if shutdown_at.is_none()
            && (xen_shutdown.is_some() || console.poll() == Some(Command::Shutdown))
        {
            if xen_shutdown.is_none() {
                log::info!("shutdown requested on the console");
            }
            for server in servers.iter_mut() {
                server.begin_shutdown(&mut stack.sockets);
            }
            shutdown_at = Some(arch::now_us());
        }

        // Alternate between the interface and the connections until both are quiet, so a
        // response leaves in the same wake-up as the request that caused it.
        for _ in 0..8 {
            let now = arch::now_us();
            let changed = stack.poll(now);
            let mut served = false;
            for (server, plane) in servers.iter_mut().zip(PLANES) {
                // A due integrity round runs before the next request, so requests postpone it
                // by at most one request's run time (docs/measurement.md, "Round schedule").
                let mut handler = |req: &tuk_http::Request, now_ms| {
                    router.integrity_tick(arch::now_us());
                    router.handle_on(plane, req, now_ms)
                };
                served |= server.poll(&mut stack.sockets, &mut handler, now / 1000);
                server.replenish(&mut stack.sockets);
            }
            let active: usize = servers.iter().map(HttpServer::active).sum();
            net::stats::CONNECTIONS_ACTIVE
                .store(active as u64, core::sync::atomic::Ordering::Relaxed);
            if !changed && !served {
                break;
            }
        }

        router.integrity_tick(arch::now_us());

        let now = arch::now_us();
        if let Some(started) = shutdown_at {
            let drained = servers.iter().all(|s| s.is_drained(&stack.sockets));
            if drained || now - started > SHUTDOWN_DRAIN_US {
                router.shutdown();
                logger::console_line(format_args!("tuk: shutdown clean"));
                arch::exit_qemu(ExitCode::Clean);
            }
        }

        let mut sleep = MAX_SLEEP_US;
        if let Some(d) = stack.poll_delay_us(now) {
            sleep = sleep.min(d);
        }
        for deadline_ms in servers.iter().filter_map(HttpServer::next_deadline) {
            sleep = sleep.min((deadline_ms * 1000).saturating_sub(now));
        }
        if let Some(due) = router.next_integrity_due_us() {
            sleep = sleep.min(due.saturating_sub(now));
        }
        if shutdown_at.is_some() {
            sleep = sleep.min(10_000);
        }
        if sleep == 0 {
            continue;
        }
        arch::disable_interrupts();
        if arch::has_pending() {
            arch::enable_interrupts();
            continue;
        }
        arch::arm_timer(sleep);
        arch::halt_until_interrupt();
    }
}

/// On Xen without a NIC: idles until `control/shutdown` says poweroff (or halt, reboot), then
/// leaves cleanly (exit code 33 in `data/tuk-exit`, `SCHEDOP_shutdown` poweroff).
fn wait_for_xen_shutdown() -> ! {
    loop {
        if arch::take_pending().contains(Irq::Xen) {
            drivers::xen::poll();
        }
        if let Some(what) = drivers::xen::shutdown_requested() {
            log::info!("shutdown requested by the toolstack (control/shutdown = {what})");
            logger::console_line(format_args!("tuk: shutdown clean"));
            arch::exit_qemu(ExitCode::Clean);
        }
        arch::disable_interrupts();
        if arch::has_pending() {
            arch::enable_interrupts();
            continue;
        }
        arch::arm_timer(MAX_SLEEP_US);
        arch::halt_until_interrupt();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Shutdown,
}

/// Line-buffered console commands (the launcher's control channel).
#[derive(Default)]
struct ConsoleInput {
    line: String,
}

impl ConsoleInput {
    const MAX_LINE: usize = 256;

    fn poll(&mut self) -> Option<Command> {
        while let Some(b) = serial::read_byte() {
            match b {
                b'\r' | b'\n' => {
                    let line = core::mem::take(&mut self.line);
                    match line.trim() {
                        "" => {}
                        "shutdown" => return Some(Command::Shutdown),
                        other => log::warn!("console: unknown command `{other}` (known: shutdown)"),
                    }
                }
                b if self.line.len() < Self::MAX_LINE && b.is_ascii() => self.line.push(b as char),
                _ => {}
            }
        }
        None
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    let _ = writeln!(serial::EmergencyWriter, "\nPANIC: {info}");
    arch::exit_qemu(ExitCode::Fault)
}
