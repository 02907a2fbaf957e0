//! The monotonic clock: the TSC, calibrated at boot against the 8254 PIT.
//!
//! The PIT's channel 0 counts down at a fixed 1.193182 MHz; it is read back with latch
//! commands (no speaker gate on port 0x61 is needed, which `-M microvm` does not emulate) over a
//! ~10 ms window, against the TSC. Time zero is the PVH entry (the first instruction reads the
//! TSC), so `now_us()` is also the guest's uptime. Under KVM, kvmclock would avoid the
//! calibration; under TCG the TSC follows QEMU's virtual clock.

use core::sync::atomic::{AtomicU64, Ordering};

use super::boot::boot_tsc;
use super::cpu::rdtsc;
use super::port::{inb, outb};

const PIT_HZ: u64 = 1_193_182;
const PIT_CH0: u16 = 0x40;
const PIT_CMD: u16 = 0x43;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

fn pit_read() -> u16 {
    outb(PIT_CMD, 0x00); // latch channel 0
    let lo = inb(PIT_CH0);
    let hi = inb(PIT_CH0);
    u16::from_le_bytes([lo, hi])
}

/// At most this many calibration windows when the host keeps preempting the vCPU.
const CALIBRATION_TRIES: u32 = 8;

/// One ~10 ms window: TSC cycles, PIT ticks counted, and the longest TSC gap between two
/// consecutive PIT reads.
fn calibration_window() -> (u64, u64, u64) {
    let target = PIT_HZ / 100; // 10 ms
    let mut last = pit_read();
    let mut elapsed: u64 = 0;
    let start = rdtsc();
    let mut prev = start;
    let mut longest: u64 = 0;
    while elapsed < target {
        let now = pit_read();
        let t = rdtsc();
        longest = longest.max(t - prev);
        prev = t;
        // Counting down; a reload makes `now` larger than `last`.
        elapsed += u64::from(last.wrapping_sub(now));
        last = now;
    }
    (rdtsc() - start, elapsed, longest)
}

/// Calibrates the TSC and returns its frequency in kHz. On Xen the frequency is Xen's time
/// leaf's (a PVH domU has no PIT).
///
/// Under TCG the vCPU is a host thread: if the host deschedules it for longer than one PIT
/// period (55 ms) between two reads, whole periods are lost, the PIT count is too small and
/// the frequency too high, so the guest's clock would run slow for its whole life (seen on a
/// loaded 2-core host: uptime advanced 97 ms over 250 ms). A window in which one gap between
/// reads took more than a quarter of the window's cycles was interrupted by the host; it is
/// measured again, up to [`CALIBRATION_TRIES`] times. A lost period can only make the estimate
/// too high, so if every window was interrupted the lowest estimate is kept.
pub fn calibrate() -> u64 {
    if let Some(khz) = super::xen::tsc_khz() {
        TSC_KHZ.store(khz, Ordering::Relaxed);
        return khz;
    }
    // Channel 0, lobyte/hibyte, mode 2 (rate generator), reload 0xffff.
    outb(PIT_CMD, 0x34);
    outb(PIT_CH0, 0xff);
    outb(PIT_CH0, 0xff);
    let mut khz = u64::MAX;
    for _ in 0..CALIBRATION_TRIES {
        let (cycles, elapsed, longest) = calibration_window();
        let estimate =
            (u128::from(cycles) * u128::from(PIT_HZ) / (u128::from(elapsed) * 1000)) as u64;
        khz = khz.min(estimate);
        if longest.saturating_mul(4) < cycles {
            khz = estimate;
            break;
        }
    }
    // Stop the PIT: mode 0 with a count of 1 fires once (masked) and then stays idle.
    outb(PIT_CMD, 0x30);
    outb(PIT_CH0, 1);
    outb(PIT_CH0, 0);
    let khz = khz.max(1);
    TSC_KHZ.store(khz, Ordering::Relaxed);
    khz
}

/// TSC frequency in kHz (0 before calibration).
pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Microseconds since the PVH entry. Monotonic; 0 before calibration.
pub fn now_us() -> u64 {
    let khz = tsc_khz();
    if khz == 0 {
        return 0;
    }
    let ticks = rdtsc().saturating_sub(boot_tsc());
    (u128::from(ticks) * 1000 / u128::from(khz)) as u64
}

/// Unix time (ns) at TSC zero, from the launcher (`time.unix_ms=` on the command line).
static WALL_AT_BOOT_NS: AtomicU64 = AtomicU64::new(0);

/// Sets the wall clock: `unix_ms` was the Unix time when the launcher started the VM (close to
/// TSC zero; the error is the launcher-to-entry delay, a few milliseconds).
pub fn set_wall_clock(unix_ms: u64) {
    WALL_AT_BOOT_NS.store(unix_ms.saturating_mul(1_000_000), Ordering::Relaxed);
}

/// Nanoseconds since the Unix epoch (since boot if the launcher gave no time).
pub fn wall_clock_ns() -> u128 {
    u128::from(WALL_AT_BOOT_NS.load(Ordering::Relaxed)) + u128::from(now_us()) * 1000
}
