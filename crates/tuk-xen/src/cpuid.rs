//! Hypervisor detection from the CPUID leaves `0x4000_0000..=0x4001_0000` (step `0x100`) and
//! the layout of Xen's leaves (`arch-x86/cpuid.h`).
//!
//! Sans-IO: [`detect`] takes a function that executes CPUID (`(leaf, subleaf) -> [eax, ebx,
//! ecx, edx]`), so the kernel passes the instruction and the tests pass tables. Xen's leaves
//! move to `0x4000_0100` when it also offers Viridian (Hyper-V) leaves at `0x4000_0000`, so the
//! whole range is scanned and Xen wins over any other signature found.

/// The first hypervisor leaf.
pub const LEAF_FIRST: u32 = 0x4000_0000;
/// The last base scanned (inclusive).
pub const LEAF_LAST: u32 = 0x4001_0000;
/// The distance between candidate bases.
pub const LEAF_STEP: u32 = 0x100;
/// Xen's signature in EBX, ECX, EDX of the base leaf.
pub const XEN_SIGNATURE: [u8; 12] = *b"XenVMMXenVMM";
/// `XEN_CPUID_SIGNATURE_EBX/ECX/EDX` as registers.
pub const XEN_SIGNATURE_REGS: [u32; 3] = [0x566e_6558, 0x6558_4d4d, 0x4d4d_566e];
/// KVM's signature.
pub const KVM_SIGNATURE: [u8; 12] = *b"KVMKVMKVM\0\0\0";
/// QEMU's TCG accelerator's signature (QEMU's `tcg-cpuid` property, on by default).
pub const TCG_SIGNATURE: [u8; 12] = *b"TCGTCGTCGTCG";
/// Microsoft Hyper-V (and Xen's Viridian) signature.
pub const HYPERV_SIGNATURE: [u8; 12] = *b"Microsoft Hv";
/// `XEN_HVM_CPUID_VCPU_ID_PRESENT` in leaf +4 EAX.
pub const HVM_VCPU_ID_PRESENT: u32 = 1 << 3;
/// `XEN_HVM_CPUID_DOMID_PRESENT` in leaf +4 EAX.
pub const HVM_DOMID_PRESENT: u32 = 1 << 4;

/// The bases scanned, in order.
pub fn leaf_bases() -> impl Iterator<Item = u32> {
    (LEAF_FIRST..=LEAF_LAST).step_by(LEAF_STEP as usize)
}

/// The 12 signature bytes of a base leaf (EBX, ECX, EDX in that order).
pub fn signature(regs: [u32; 4]) -> [u8; 12] {
    let mut s = [0u8; 12];
    s[0..4].copy_from_slice(&regs[1].to_le_bytes());
    s[4..8].copy_from_slice(&regs[2].to_le_bytes());
    s[8..12].copy_from_slice(&regs[3].to_le_bytes());
    s
}

/// What the CPU says it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypervisor {
    /// Xen, with its leaves read.
    Xen(XenInfo),
    /// KVM (QEMU with `-accel kvm`).
    Kvm,
    /// QEMU's TCG.
    Tcg,
    /// Hyper-V's signature without Xen behind it.
    HyperV,
    /// A hypervisor with a signature tuk does not know.
    Other([u8; 12]),
    /// No hypervisor bit and no known signature.
    None,
}

impl Hypervisor {
    /// The short name used in logs and the health document.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Xen(_) => "xen",
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
            Self::HyperV => "hyperv",
            Self::Other(_) => "unknown",
            Self::None => "none",
        }
    }

    pub fn is_xen(&self) -> bool {
        matches!(self, Self::Xen(_))
    }
}

/// Xen's leaves, read at the base where its signature was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenInfo {
    /// The base leaf (`0x4000_0000` unless Viridian is on).
    pub base: u32,
    /// EAX of the base leaf: the highest Xen leaf.
    pub max_leaf: u32,
    /// Leaf +1 EAX bits 31:16.
    pub major: u16,
    /// Leaf +1 EAX bits 15:0.
    pub minor: u16,
    /// Leaf +2: the MSR that installs the hypercall page (tuk does not use the page).
    pub hypercall_msr: u32,
    /// Leaf +3 sub-leaf 0, if present.
    pub time: Option<XenTime>,
    /// Leaf +4 ECX when EAX has `HVM_DOMID_PRESENT`.
    pub domid: Option<u16>,
}

/// Xen's time leaf (+3, sub-leaf 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenTime {
    /// EAX bit 0: Xen emulates RDTSC (every RDTSC is a VM exit).
    pub tsc_emulated: bool,
    /// EBX: 0 default, 1 always emulate, 2 never emulate, 3 never emulate + TSC_AUX.
    pub tsc_mode: u32,
    /// ECX: the guest TSC frequency in kHz (0 if Xen does not say).
    pub tsc_khz: u32,
}

/// Finds the hypervisor. `cpuid(leaf, subleaf)` returns `[eax, ebx, ecx, edx]`.
pub fn detect(mut cpuid: impl FnMut(u32, u32) -> [u32; 4]) -> Hypervisor {
    let hypervisor_bit = cpuid(1, 0)[2] & (1 << 31) != 0;
    let mut other = None;
    for base in leaf_bases() {
        let regs = cpuid(base, 0);
        let sig = signature(regs);
        if sig == XEN_SIGNATURE {
            return Hypervisor::Xen(read_xen(base, regs[0], &mut cpuid));
        }
        if other.is_none() && base == LEAF_FIRST && hypervisor_bit {
            other = Some(match sig {
                KVM_SIGNATURE => Hypervisor::Kvm,
                TCG_SIGNATURE => Hypervisor::Tcg,
                HYPERV_SIGNATURE => Hypervisor::HyperV,
                s => Hypervisor::Other(s),
            });
        }
    }
    other.unwrap_or(Hypervisor::None)
}

fn read_xen(base: u32, max_leaf: u32, cpuid: &mut impl FnMut(u32, u32) -> [u32; 4]) -> XenInfo {
    let has = |i: u32| max_leaf >= base + i;
    let version = if has(1) { cpuid(base + 1, 0)[0] } else { 0 };
    let hypercall_msr = if has(2) { cpuid(base + 2, 0)[1] } else { 0 };
    let time = has(3).then(|| {
        let r = cpuid(base + 3, 0);
        XenTime {
            tsc_emulated: r[0] & 1 != 0,
            tsc_mode: r[1],
            tsc_khz: r[2],
        }
    });
    let domid = if has(4) {
        let r = cpuid(base + 4, 0);
        (r[0] & HVM_DOMID_PRESENT != 0).then_some(r[2] as u16)
    } else {
        None
    };
    XenInfo {
        base,
        max_leaf,
        major: (version >> 16) as u16,
        minor: version as u16,
        hypercall_msr,
        time,
        domid,
    }
}

/// The instruction that enters Xen directly (no hypercall page, so the guest's code stays
/// immutable): `vmcall` on Intel VT-x, `vmmcall` on AMD SVM (AMD and Hygon). Xen emulates the
/// other one, but only after a fault and an instruction decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallInsn {
    Vmcall,
    Vmmcall,
}

impl HypercallInsn {
    /// From CPUID leaf 0 (`[eax, ebx, ecx, edx]`; the vendor string is EBX, EDX, ECX).
    /// Unknown vendors get `vmcall`.
    pub fn from_leaf0(regs: [u32; 4]) -> Self {
        let mut vendor = [0u8; 12];
        vendor[0..4].copy_from_slice(&regs[1].to_le_bytes());
        vendor[4..8].copy_from_slice(&regs[3].to_le_bytes());
        vendor[8..12].copy_from_slice(&regs[2].to_le_bytes());
        match &vendor {
            b"AuthenticAMD" | b"HygonGenuine" => Self::Vmmcall,
            _ => Self::Vmcall,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(sig: &[u8; 12], eax: u32) -> [u32; 4] {
        let w = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
        [eax, w(0), w(4), w(8)]
    }

    #[test]
    fn xen_signature_registers_spell_the_signature() {
        let r = [
            0,
            XEN_SIGNATURE_REGS[0],
            XEN_SIGNATURE_REGS[1],
            XEN_SIGNATURE_REGS[2],
        ];
        assert_eq!(&signature(r), b"XenVMMXenVMM");
    }

    #[test]
    fn finds_xen_behind_viridian_and_reads_its_leaves() {
        let h = detect(|leaf, _| match leaf {
            1 => [0, 0, 1 << 31, 0],
            0x4000_0000 => regs(&HYPERV_SIGNATURE, 0x4000_0005),
            0x4000_0100 => regs(&XEN_SIGNATURE, 0x4000_0105),
            0x4000_0101 => [(4 << 16) | 17, 0, 0, 0],
            0x4000_0102 => [1, 0x4000_0000, 0, 0],
            0x4000_0103 => [1, 0, 2_500_000, 0],
            0x4000_0104 => [HVM_DOMID_PRESENT, 0, 7, 0],
            _ => [0; 4],
        });
        let Hypervisor::Xen(x) = h else {
            panic!("{h:?}")
        };
        assert_eq!(
            (x.base, x.major, x.minor, x.hypercall_msr),
            (0x4000_0100, 4, 17, 0x4000_0000)
        );
        assert_eq!(
            x.time,
            Some(XenTime {
                tsc_emulated: true,
                tsc_mode: 0,
                tsc_khz: 2_500_000
            })
        );
        assert_eq!(x.domid, Some(7));
        assert_eq!(h.name(), "xen");
    }

    #[test]
    fn short_xen_leaf_range_reads_nothing_beyond_it() {
        let h = detect(|leaf, _| match leaf {
            1 => [0, 0, 1 << 31, 0],
            0x4000_0000 => regs(&XEN_SIGNATURE, 0x4000_0001),
            0x4000_0001 => [(4 << 16) | 2, 0, 0, 0],
            l if l > 0x4000_0001 => panic!("read leaf {l:#x} beyond the maximum"),
            _ => [0; 4],
        });
        let Hypervisor::Xen(x) = h else {
            panic!("{h:?}")
        };
        assert_eq!((x.major, x.minor, x.time, x.domid), (4, 2, None, None));
    }

    #[test]
    fn kvm_tcg_and_bare_metal() {
        let with = |sig: [u8; 12], bit: bool| {
            detect(move |leaf, _| match leaf {
                1 => [0, 0, if bit { 1 << 31 } else { 0 }, 0],
                0x4000_0000 => regs(&sig, 0x4000_0001),
                _ => [0; 4],
            })
        };
        assert_eq!(with(KVM_SIGNATURE, true), Hypervisor::Kvm);
        assert_eq!(with(TCG_SIGNATURE, true), Hypervisor::Tcg);
        assert_eq!(with(*b"GenuineIntel", false), Hypervisor::None);
        assert_eq!(with(*b"SomethingNew", true).name(), "unknown");
        // Xen's signature counts even without the hypervisor bit.
        assert!(with(XEN_SIGNATURE, false).is_xen());
    }

    #[test]
    fn hypercall_instruction_follows_the_cpu_vendor() {
        let leaf0 = |v: &[u8; 12]| {
            let w = |i: usize| u32::from_le_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
            [0x10, w(0), w(8), w(4)]
        };
        assert_eq!(
            HypercallInsn::from_leaf0(leaf0(b"AuthenticAMD")),
            HypercallInsn::Vmmcall
        );
        assert_eq!(
            HypercallInsn::from_leaf0(leaf0(b"HygonGenuine")),
            HypercallInsn::Vmmcall
        );
        assert_eq!(
            HypercallInsn::from_leaf0(leaf0(b"GenuineIntel")),
            HypercallInsn::Vmcall
        );
        assert_eq!(
            HypercallInsn::from_leaf0(leaf0(b"SomethingNew")),
            HypercallInsn::Vmcall
        );
        // The registers in EBX, ECX, EDX order would spell "AuthcAMDenti": not AMD.
        let wrong_order = {
            let r = leaf0(b"AuthenticAMD");
            [r[0], r[1], r[3], r[2]]
        };
        assert_eq!(
            HypercallInsn::from_leaf0(wrong_order),
            HypercallInsn::Vmcall
        );
    }
}
