//! CPU control: interrupts, halting, MSRs and leaving the VM.

use core::arch::asm;

use super::port::outb;

/// Exit codes written to QEMU's `isa-debug-exit` (port 0xf4). QEMU exits with `(code << 1) | 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Clean shutdown: QEMU exit status 33.
    Clean = 0x10,
    /// Fatal exception or panic: QEMU exit status 3.
    Fault = 0x01,
    /// The integrity monitor's `halt` policy stopped the host: QEMU exit status 65.
    IntegrityHalt = 0x20,
}

/// Leaves the VM. On Xen: `SCHEDOP_shutdown` with tuk's exit status (the one QEMU would
/// exit with) on the debug port (`xen::shutdown`). On QEMU without an `isa-debug-exit` device
/// the CPU halts forever.
pub fn exit_qemu(code: ExitCode) -> ! {
    if super::xen::on_xen() {
        let what = match code {
            ExitCode::Clean => "clean",
            ExitCode::Fault => "fault",
            ExitCode::IntegrityHalt => "integrity halt",
        };
        super::xen::shutdown(((code as u8) << 1) | 1, what, code == ExitCode::Clean);
    }
    outb(0xf4, code as u8);
    loop {
        disable_interrupts();
        // SAFETY: halting with interrupts off stops this CPU; nothing else runs.
        unsafe { asm!("hlt", options(nomem, nostack)) }
    }
}

pub fn enable_interrupts() {
    // SAFETY: the IDT and interrupt controllers are set up before this is first called.
    unsafe { asm!("sti", options(nomem, nostack)) }
}

pub fn disable_interrupts() {
    // SAFETY: masking interrupts has no memory effects.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Atomically enables interrupts and halts until the next one (`sti; hlt`: the interrupt
/// shadow of `sti` guarantees no wake-up is lost between the check and the halt). The caller
/// disables interrupts, checks for pending work, then calls this.
pub fn halt_until_interrupt() {
    // SAFETY: see above; on return interrupts are enabled.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) }
}

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// # Safety
/// The MSR must exist on this CPU (reading an absent MSR raises #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// A 64-bit hardware random number (RDRAND), or `None` if the CPU has no RDRAND or it
/// failed ten times in a row (Intel's guidance for retry).
fn rdrand() -> Option<u64> {
    if !has_rdrand() {
        return None;
    }
    for _ in 0..10 {
        let value: u64;
        let ok: u8;
        // SAFETY: RDRAND is supported (checked above); it only writes the output registers.
        unsafe {
            asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack))
        }
        if ok == 1 {
            return Some(value);
        }
    }
    None
}

/// How many times [`random_u64`] found RDRAND present but failing (ten tries each) and fell
/// back to the TSC-seeded sequence.
static RDRAND_FAILURES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn has_rdrand() -> bool {
    core::arch::x86_64::__cpuid(1).ecx & (1 << 30) != 0
}

/// Where random numbers come from on this CPU (reported in health): `rdrand`; `rdrand-failing
/// (...)` once RDRAND has failed (the numbers since then include non-cryptographic ones); or
/// `tsc-splitmix (...)` when the CPU has no RDRAND.
pub fn random_source() -> &'static str {
    use core::sync::atomic::Ordering;
    if !has_rdrand() {
        "tsc-splitmix (not cryptographic: the CPU has no RDRAND)"
    } else if RDRAND_FAILURES.load(Ordering::Relaxed) > 0 {
        "rdrand-failing (RDRAND returned no number after ten tries; tsc-splitmix, not cryptographic, was used instead)"
    } else {
        "rdrand"
    }
}

/// A random 64-bit number: RDRAND; without it, a SplitMix64 sequence seeded from the TSC
/// (unpredictable to a remote peer only in a weak sense: see `random_source`). A failing RDRAND
/// is not silent: the first failure is logged and `random_source` says so from then on.
pub fn random_u64() -> u64 {
    use core::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    if let Some(v) = rdrand() {
        return v;
    }
    if has_rdrand() && RDRAND_FAILURES.fetch_add(1, Ordering::Relaxed) == 0 {
        log::error!(
            "random: RDRAND failed ten times in a row; falling back to tsc-splitmix (not \
             cryptographic); health's `random` reports it"
        );
    }
    let mut z = STATE.fetch_add(0x9e37_79b9_7f4a_7c15 ^ rdtsc(), Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether this CPU has an ISA feature, by the Rust standard library's name for it (what
/// wasmtime asks before running code compiled with that feature). `None` for names this
/// kernel does not know. AVX-family features report `false`: the kernel does not enable
/// XSAVE/YMM state, so they are unusable even where the CPU has them.
pub fn has_feature(name: &str) -> Option<bool> {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    let leaf7 = core::arch::x86_64::__cpuid_count(7, 0);
    let ext1 = core::arch::x86_64::__cpuid(0x8000_0001);
    let bit = |reg: u32, n: u32| reg & (1 << n) != 0;
    Some(match name {
        "sse" | "sse2" => true,
        "sse3" => bit(leaf1.ecx, 0),
        "ssse3" => bit(leaf1.ecx, 9),
        "sse4.1" => bit(leaf1.ecx, 19),
        "sse4.2" => bit(leaf1.ecx, 20),
        "popcnt" => bit(leaf1.ecx, 23),
        "bmi1" => bit(leaf7.ebx, 3),
        "bmi2" => bit(leaf7.ebx, 8),
        "lzcnt" => bit(ext1.ecx, 5),
        "avx" | "avx2" | "fma" | "avx512f" | "avx512vl" | "avx512dq" | "avx512bitalg"
        | "avx512vbmi" | "avx512bw" | "avx512cd" => false,
        _ => return None,
    })
}
