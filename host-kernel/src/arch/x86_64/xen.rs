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
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use spin::Once;
pub use tuk_xen::cpuid::Hypervisor;
pub use tuk_xen::hypercall::Errno;
use tuk_xen::hypercall::{
    evtchn_port_block, evtchnop, hvmop, schedop, upcall_vector, xenmem, AddToPhysmap, HvmParam,
    EVENT_CHANNEL_OP, HVM_OP, MEMORY_OP, SCHED_OP,
};
use tuk_xen::shared_info::{
    port_word, EVTCHN_MASK, EVTCHN_PENDING, EVTCHN_WORDS, VCPU_PENDING_SEL, VCPU_UPCALL_MASK,
    VCPU_UPCALL_PENDING,
};

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
    let mut line = [0u8; 96];
    let mut len = 0;
    let tail: &[u8] = if clean {
        b"), SCHEDOP_shutdown poweroff\n"
    } else {
        b"), SCHEDOP_shutdown crash\n"
    };
    for part in [
        &b"tuk: exit code "[..],
        &digits[first..],
        b" (",
        what.as_bytes(),
        tail,
    ] {
        let n = part.len().min(line.len() - len);
        line[len..len + n].copy_from_slice(&part[..n]);
        len += n;
    }
    debug_write(&line[..len]);
    let hook = EXIT_HOOK.swap(0, Ordering::AcqRel);
    if hook != 0 {
        // SAFETY: the value was stored from a `fn(u8, &[u8])` by `set_exit_hook`; swapping it
        // out means a fault inside the hook does not run it again.
        let hook: fn(u8, &[u8]) =
            unsafe { core::mem::transmute::<usize, fn(u8, &[u8])>(hook as usize) };
        hook(code, &line[..len]);
    }
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

// ---------------------------------------------------------------------------------------------
// shared_info and 2-level event channels (docs/xen.md, "Events").

/// One page-aligned page of .bss: RW+NX in the kernel's tables (data/bss), never executable,
/// outside text and rodata. `XENMEM_add_to_physmap` puts shared_info at its frame.
#[repr(C, align(4096))]
struct SharedPage([u8; 4096]);

static mut SHARED_INFO: SharedPage = SharedPage([0; 4096]);
/// Set once shared_info is mapped and the upcall vector installed.
static EVENTS_UP: AtomicBool = AtomicBool::new(false);

fn shared_info_addr() -> u64 {
    &raw const SHARED_INFO as u64
}

/// The 64-bit word of shared_info at byte offset `off`, for atomic access (Xen writes the
/// page concurrently; the kernel never holds a plain reference into it).
fn si_word(off: usize) -> &'static AtomicU64 {
    debug_assert!(off.is_multiple_of(8) && off + 8 <= tuk_xen::shared_info::SIZE);
    // SAFETY: the page is a static that lives forever, `off` is an aligned offset inside it
    // (callers pass offsets from `tuk_xen::shared_info`), and every access to it goes through
    // atomics.
    unsafe { AtomicU64::from_ptr((shared_info_addr() as usize + off) as *mut u64) }
}

fn si_byte(off: usize) -> &'static AtomicU8 {
    // SAFETY: as for `si_word` (a byte needs no alignment).
    unsafe { AtomicU8::from_ptr((shared_info_addr() as usize + off) as *mut u8) }
}

fn call(op: u64, cmd: u64, block: *const u8) -> Result<u64, Errno> {
    // SAFETY: every caller passes a block encoded by `tuk_xen::hypercall` for `op`/`cmd`,
    // living on its stack frame for the duration of the call.
    tuk_xen::hypercall::result(unsafe { hypercall2(op, cmd, block as u64) })
}

/// Maps shared_info over the .bss page, masks every port and installs `vector` as the event
/// upcall (`HVMOP_set_evtchn_upcall_vector`, vCPU 0). The vector's handler only records that
/// it arrived (ARCHITECTURE.md: interrupts never run driver code); [`take_events`] does the
/// demux in the main loop. Returns the page's guest-physical address.
pub fn init_events(vector: u8) -> Result<u64, Errno> {
    let addr = shared_info_addr();
    let map = AddToPhysmap::shared_info(addr >> 12).encode();
    call(MEMORY_OP, xenmem::ADD_TO_PHYSMAP, map.as_ptr())?;
    // Every port masked; bound ports are unmasked one by one (`unmask`).
    for w in 0..EVTCHN_WORDS {
        si_word(EVTCHN_MASK + w * 8).store(!0, Ordering::SeqCst);
    }
    si_byte(VCPU_UPCALL_MASK).store(0, Ordering::SeqCst);
    let v = upcall_vector(0, vector);
    call(HVM_OP, hvmop::SET_EVTCHN_UPCALL_VECTOR, v.as_ptr())?;
    EVENTS_UP.store(true, Ordering::Release);
    Ok(addr)
}

/// True once [`init_events`] succeeded.
pub fn events_up() -> bool {
    EVENTS_UP.load(Ordering::Acquire)
}

/// The 2-level demux: clears `evtchn_upcall_pending` first (Xen raises the vector again only
/// on its 0 -> 1 edge), takes `evtchn_pending_sel`, and for each selected word clears and
/// reports the pending, unmasked ports, lowest first.
pub fn take_events(mut f: impl FnMut(u32)) {
    if !events_up() {
        return;
    }
    si_byte(VCPU_UPCALL_PENDING).store(0, Ordering::SeqCst);
    let sel = si_word(VCPU_PENDING_SEL).swap(0, Ordering::SeqCst);
    for w in 0..EVTCHN_WORDS {
        if sel & (1 << w) == 0 {
            continue;
        }
        let mask = si_word(EVTCHN_MASK + w * 8).load(Ordering::SeqCst);
        let pending = si_word(EVTCHN_PENDING + w * 8).load(Ordering::SeqCst);
        let bits = pending & !mask;
        if bits == 0 {
            continue;
        }
        si_word(EVTCHN_PENDING + w * 8).fetch_and(!bits, Ordering::SeqCst);
        for b in 0..64u32 {
            if bits & (1 << b) != 0 {
                f(w as u32 * 64 + b);
            }
        }
    }
}

/// Unmasks `port` (`EVTCHNOP_unmask`, which re-raises an event that came while masked).
pub fn unmask(port: u32) -> Result<(), Errno> {
    let Some((off, bit)) = port_word(port) else {
        return Err(Errno(-22));
    };
    si_word(EVTCHN_MASK + off).fetch_and(!(1 << bit), Ordering::SeqCst);
    let b = evtchn_port_block(port);
    call(EVENT_CHANNEL_OP, evtchnop::UNMASK, b.as_ptr()).map(|_| ())
}

/// Notifies the other end of `port` (`EVTCHNOP_send`).
pub fn notify(port: u32) -> Result<(), Errno> {
    let b = evtchn_port_block(port);
    call(EVENT_CHANNEL_OP, evtchnop::SEND, b.as_ptr()).map(|_| ())
}

/// `HVMOP_get_param` for this domain.
pub fn hvm_param(index: u32) -> Result<u64, Errno> {
    let p = HvmParam {
        domid: tuk_xen::DOMID_SELF,
        index,
        value: 0,
    }
    .encode();
    call(HVM_OP, hvmop::GET_PARAM, p.as_ptr())?;
    Ok(HvmParam::value(&p))
}

/// Gives the vCPU back to Xen (`SCHEDOP_yield`), for bounded waits on a backend.
pub fn yield_cpu() {
    // SAFETY: SCHEDOP_yield takes no argument block.
    unsafe { hypercall2(SCHED_OP, schedop::YIELD, 0) };
}

/// A function [`shutdown`] calls before `SCHEDOP_shutdown`, with tuk's exit code and the exit
/// line: the console-ring and XenStore drivers register one to put the line on the ring and
/// write `data/tuk-exit` (it must not block on a lock a faulting path may hold).
static EXIT_HOOK: AtomicU64 = AtomicU64::new(0);

pub fn set_exit_hook(hook: fn(u8, &[u8])) {
    EXIT_HOOK.store(hook as usize as u64, Ordering::Release);
}
