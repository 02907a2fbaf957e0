//! Interrupt controllers: the legacy 8259 PICs are masked; the local APIC provides the one-shot
//! timer that wakes the idle loop; the I/O APIC routes device lines (virtio-net, UART) to
//! vectors. Handlers only set a bit in `PENDING` and acknowledge: all work happens in the main
//! loop, so no driver state is ever touched from interrupt context.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::cpu::{rdmsr, rdtsc};
use super::idt::{IRQ_BASE, SPURIOUS_VECTOR};
use super::paging::map_mmio;
use super::port::outb;
use super::time;

/// Device interrupts the kernel knows; the discriminant is the offset from `IRQ_BASE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Irq {
    Timer = 0,
    Net = 1,
    Serial = 2,
    /// Xen's event-channel upcall (`HVMOP_set_evtchn_upcall_vector`; docs/xen.md).
    Xen = 3,
}

/// A set of pending interrupts, as returned by [`take_pending`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqSet(u32);

impl IrqSet {
    pub fn contains(self, irq: Irq) -> bool {
        self.0 & (1 << irq as u32) != 0
    }
}

static PENDING: AtomicU32 = AtomicU32::new(0);
/// Interrupts taken since boot (reported in health).
static COUNT: AtomicU64 = AtomicU64::new(0);

const IA32_APIC_BASE: u32 = 0x1b;
const IOAPIC_BASE: u64 = 0xfec0_0000;

// Local APIC register offsets (xAPIC MMIO).
const LAPIC_EOI: usize = 0xb0;
const LAPIC_SVR: usize = 0xf0;
const LAPIC_TPR: usize = 0x80;
const LAPIC_LVT_TIMER: usize = 0x320;
const LAPIC_TIMER_INIT: usize = 0x380;
const LAPIC_TIMER_CURRENT: usize = 0x390;
const LAPIC_TIMER_DIVIDE: usize = 0x3e0;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;

static LAPIC: AtomicU64 = AtomicU64::new(0);
/// LAPIC timer ticks (divide-by-16) per millisecond.
static LAPIC_TICKS_PER_MS: AtomicU64 = AtomicU64::new(0);

fn lapic_write(reg: usize, value: u32) {
    let base = LAPIC.load(Ordering::Relaxed) as usize;
    // SAFETY: `base` is the LAPIC MMIO page mapped uncached by `init`; `reg` is a valid,
    // 16-byte aligned register offset within that page.
    unsafe { core::ptr::write_volatile((base + reg) as *mut u32, value) }
}

fn lapic_read(reg: usize) -> u32 {
    let base = LAPIC.load(Ordering::Relaxed) as usize;
    // SAFETY: as for `lapic_write`.
    unsafe { core::ptr::read_volatile((base + reg) as *const u32) }
}

fn ioapic_write(index: u32, value: u32) {
    // SAFETY: the I/O APIC's two registers (select at +0, window at +0x10) are mapped by `init`.
    unsafe {
        core::ptr::write_volatile(IOAPIC_BASE as *mut u32, index);
        core::ptr::write_volatile((IOAPIC_BASE + 0x10) as *mut u32, value);
    }
}

pub fn init() {
    // A Xen PVH domU has neither 8259 PICs nor an I/O APIC (only the local APIC).
    let legacy = !super::xen::on_xen();
    if legacy {
        // Mask both 8259 PICs: all device interrupts go through the I/O APIC.
        outb(0x21, 0xff);
        outb(0xa1, 0xff);
    }

    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
    let base = unsafe { rdmsr(IA32_APIC_BASE) } & 0xffff_f000;
    map_mmio(base, 4096);
    if legacy {
        map_mmio(IOAPIC_BASE, 4096);
    }
    LAPIC.store(base, Ordering::Relaxed);
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_SVR, 0x100 | u32::from(SPURIOUS_VECTOR)); // software enable
    lapic_write(LAPIC_TIMER_DIVIDE, 0b0011); // divide by 16
    lapic_write(
        LAPIC_LVT_TIMER,
        LVT_MASKED | u32::from(IRQ_BASE + Irq::Timer as u8),
    );
}

/// Routes I/O APIC input `gsi` (edge-triggered, active high) to `irq`'s vector on CPU 0.
/// No-op on Xen (no I/O APIC; Xen devices signal through event channels).
pub fn route(gsi: u8, irq: Irq) {
    if super::xen::on_xen() {
        return;
    }
    let index = 0x10 + 2 * u32::from(gsi);
    ioapic_write(index + 1, 0); // destination: APIC ID 0
    ioapic_write(index, u32::from(IRQ_BASE + irq as u8));
}

/// Measures the LAPIC timer against the (already calibrated) TSC.
pub fn calibrate_timer() {
    lapic_write(
        LAPIC_LVT_TIMER,
        LVT_MASKED | u32::from(IRQ_BASE + Irq::Timer as u8),
    );
    lapic_write(LAPIC_TIMER_INIT, u32::MAX);
    let start = rdtsc();
    let window = time::tsc_khz() * 10; // 10 ms of TSC ticks
    while rdtsc() - start < window {}
    let elapsed = u64::from(u32::MAX - lapic_read(LAPIC_TIMER_CURRENT));
    lapic_write(LAPIC_TIMER_INIT, 0);
    LAPIC_TICKS_PER_MS.store((elapsed / 10).max(1), Ordering::Relaxed);
}

/// Arms the one-shot timer to fire `delay_us` from now (clamped to [1 µs, ~max counter]).
pub fn arm_timer(delay_us: u64) {
    let per_ms = LAPIC_TICKS_PER_MS.load(Ordering::Relaxed);
    let ticks = (delay_us.saturating_mul(per_ms) / 1000).clamp(1, u64::from(u32::MAX));
    lapic_write(LAPIC_LVT_TIMER, u32::from(IRQ_BASE + Irq::Timer as u8)); // one-shot, unmasked
    lapic_write(LAPIC_TIMER_INIT, ticks as u32);
}

/// Makes the timer fire every `period_us` until the next [`arm_timer`] (used as the
/// preemption tick while Wasm runs).
pub fn start_periodic_timer(period_us: u64) {
    let per_ms = LAPIC_TICKS_PER_MS.load(Ordering::Relaxed);
    let ticks = (period_us.saturating_mul(per_ms) / 1000).clamp(1, u64::from(u32::MAX));
    lapic_write(
        LAPIC_LVT_TIMER,
        LVT_PERIODIC | u32::from(IRQ_BASE + Irq::Timer as u8),
    );
    lapic_write(LAPIC_TIMER_INIT, ticks as u32);
}

/// Stops the timer (until the next [`arm_timer`] or [`start_periodic_timer`]).
pub fn stop_timer() {
    lapic_write(LAPIC_TIMER_INIT, 0);
}

/// A function the timer interrupt calls (in interrupt context: it must not allocate, lock or
/// block). Used to advance wasmtime's epoch.
static TIMER_HOOK: AtomicU64 = AtomicU64::new(0);

pub fn set_timer_hook(hook: fn()) {
    TIMER_HOOK.store(hook as usize as u64, Ordering::Release);
}

/// Called from the interrupt handlers: record and acknowledge.
pub fn interrupt_arrived(irq: Irq) {
    if irq == Irq::Timer {
        let hook = TIMER_HOOK.load(Ordering::Acquire);
        if hook != 0 {
            // SAFETY: the value was stored from a `fn()` by `set_timer_hook`.
            let hook: fn() = unsafe { core::mem::transmute::<usize, fn()>(hook as usize) };
            hook();
        }
    }
    PENDING.fetch_or(1 << irq as u32, Ordering::AcqRel);
    COUNT.fetch_add(1, Ordering::Relaxed);
    lapic_write(LAPIC_EOI, 0);
}

/// Takes (and clears) the set of interrupts that arrived since the last call.
pub fn take_pending() -> IrqSet {
    IrqSet(PENDING.swap(0, Ordering::AcqRel))
}

/// True if an interrupt arrived and has not been taken yet (checked with interrupts off
/// before halting).
pub fn has_pending() -> bool {
    PENDING.load(Ordering::Acquire) != 0
}

pub fn interrupt_count() -> u64 {
    COUNT.load(Ordering::Relaxed)
}
