//! The hypervisor under the kernel, from the CPUID leaves `0x4000_0000..=0x4001_0000` (the leaf
//! layout and the scan are `tuk_xen::cpuid`'s; this module only executes CPUID), and the early
//! Xen path (issue 13, docs/xen.md): the debug console, the clock source and the exit.
//!
//! Detected once, first thing after the descriptor tables (before the console): the same image
//! runs on QEMU (TCG or KVM) and on Xen as a PVH domU, choosing its console, clock and exit path
//! from this at run time. On Xen:
//! - console output goes to the debug port 0xe9 (Xen prints each line as `(dN) ...` on its
//!   console and in `xl dmesg`); a PVH domU has no UART;
//! - the TSC frequency comes from Xen's time leaf (base + 3), not from the PIT a PVH domU does
//!   not have; the 8259 PICs and the I/O APIC (absent too) are left alone;
//! - hypercalls are issued directly with `vmcall` (Intel) or `vmmcall` (AMD, Hygon), chosen from
//!   the CPU vendor: no hypercall page is installed, so `.text` stays immutable and measured;
//! - leaving the VM is `SCHEDOP_shutdown` (poweroff for a clean exit, crash for a fault or an
//!   integrity halt) after a `tuk: exit code N (...)` line on the debug port.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use spin::Once;
pub use tuk_xen::cpuid::Hypervisor;
use tuk_xen::hypercall::{schedop, SCHED_OP};

use super::port::outb;

static HYPERVISOR: Once<Hypervisor> = Once::new();
/// Set once by [`detect`] when the kernel runs on Xen (read on every console write).
static ON_XEN: AtomicBool = AtomicBool::new(false);
/// The hypercall instruction: 0 unknown, 1 `vmcall`, 2 `vmmcall`.
static HYPERCALL_INSN: AtomicU8 = AtomicU8::new(0);

/// Xen's debug console port (`XEN_HVM_DEBUGCONS_IOPORT`).
const DEBUG_PORT: u16 = 0xe9;

fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Scans the hypervisor leaves (once; later calls return the first answer). Needs no heap, so
/// it runs before the console is chosen.
pub fn detect() -> Hypervisor {
    *HYPERVISOR.call_once(|| {
        let h = tuk_xen::cpuid::detect(cpuid);
        if h.is_xen() {
            let amd = tuk_xen::cpuid::HypercallInsn::from_leaf0(cpuid(0, 0))
                == tuk_xen::cpuid::HypercallInsn::Vmmcall;
            HYPERCALL_INSN.store(if amd { 2 } else { 1 }, Ordering::Relaxed);
            ON_XEN.store(true, Ordering::Release);
        }
        h
    })
}

/// The hypervisor found at boot ([`Hypervisor::None`] if [`detect`] has not run).
pub fn hypervisor() -> Hypervisor {
    HYPERVISOR.get().copied().unwrap_or(Hypervisor::None)
}

/// True when [`detect`] found Xen.
pub fn on_xen() -> bool {
    ON_XEN.load(Ordering::Acquire)
}

/// The TSC frequency Xen reports in its time leaf, when running on Xen and the leaf says it.
pub fn tsc_khz() -> Option<u64> {
    match hypervisor() {
        Hypervisor::Xen(x) => x.time.map(|t| u64::from(t.tsc_khz)).filter(|&khz| khz != 0),
        _ => None,
    }
}

/// Writes to Xen's debug port. Xen buffers per domain until `\n`; `\r` is dropped.
pub fn debug_write(bytes: &[u8]) {
    for &b in bytes {
        if b != b'\r' {
            outb(DEBUG_PORT, b);
        }
    }
}

/// A two-argument hypercall (RDI, RSI; Xen may clobber argument registers, as debug builds
/// do on purpose). Returns RAX (a negative errno on failure, see
/// `tuk_xen::hypercall::result`). Only valid after [`detect`] found Xen.
///
/// # Safety
/// `arg1`/`arg2` must be what hypercall `op` expects; pointers among them must point to memory
/// laid out as the hypercall's argument block and valid for the accesses Xen makes.
pub unsafe fn hypercall2(op: u64, arg1: u64, arg2: u64) -> u64 {
    let ret: u64;
    // SAFETY: the caller vouches for the arguments; the instruction matches the CPU vendor
    // (Xen also accepts the other one by emulation, but the native one avoids a fault).
    unsafe {
        if HYPERCALL_INSN.load(Ordering::Relaxed) == 2 {
            asm!(
                "vmmcall",
                inlateout("rax") op => ret,
                inlateout("rdi") arg1 => _,
                inlateout("rsi") arg2 => _,
                options(nostack)
            );
        } else {
            asm!(
                "vmcall",
                inlateout("rax") op => ret,
                inlateout("rdi") arg1 => _,
                inlateout("rsi") arg2 => _,
                options(nostack)
            );
        }
    }
    ret
}

/// Reports the exit to the toolstack and leaves: a `tuk: exit code N (what)` line on the debug
/// port (so `xl dmesg` and the Xen console have tuk's code), then `SCHEDOP_shutdown` with
/// poweroff for `clean`, crash otherwise. Never returns; if Xen refuses, the CPU halts.
pub fn shutdown(code: u8, what: &str, clean: bool) -> ! {
    let digits = [b'0' + code / 100, b'0' + code / 10 % 10, b'0' + code % 10];
    let first = digits.iter().take(2).take_while(|&&d| d == b'0').count();
    debug_write(b"tuk: exit code ");
    debug_write(&digits[first..]);
    debug_write(b" (");
    debug_write(what.as_bytes());
    debug_write(if clean {
        b"), SCHEDOP_shutdown poweroff\n"
    } else {
        b"), SCHEDOP_shutdown crash\n"
    });
    let reason = if clean {
        schedop::SHUTDOWN_POWEROFF
    } else {
        schedop::SHUTDOWN_CRASH
    };
    let arg = tuk_xen::hypercall::sched_shutdown(reason);
    loop {
        // SAFETY: SCHEDOP_shutdown reads a 4-byte `struct sched_shutdown` at the pointer, which
        // is on this stack frame; Xen does not return to a shut-down domain.
        unsafe { hypercall2(SCHED_OP, schedop::SHUTDOWN, arg.as_ptr() as u64) };
        // SAFETY: halting with interrupts off stops this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
