//! The hypervisor under the kernel, from the CPUID leaves `0x4000_0000..=0x4001_0000` (the leaf
//! layout and the scan are `tuk_xen::cpuid`'s; this module only executes CPUID).
//!
//! Detected once at boot, before the interrupt controllers and the clock, and kept: the same
//! image runs on QEMU (TCG or KVM) and, as issue 13 proceeds, on Xen as a PVH domU, choosing its
//! console, clock, NIC and exit path from this at run time. Today only the report uses it:
//! the boot log and `/_tuk/health`'s `platform`.

use spin::Once;
pub use tuk_xen::cpuid::Hypervisor;

static HYPERVISOR: Once<Hypervisor> = Once::new();

/// Scans the hypervisor leaves (once; later calls return the first answer).
pub fn detect() -> Hypervisor {
    *HYPERVISOR.call_once(|| {
        tuk_xen::cpuid::detect(|leaf, subleaf| {
            let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
            [r.eax, r.ebx, r.ecx, r.edx]
        })
    })
}

/// The hypervisor found at boot ([`Hypervisor::None`] if [`detect`] has not run).
pub fn hypervisor() -> Hypervisor {
    HYPERVISOR.get().copied().unwrap_or(Hypervisor::None)
}
