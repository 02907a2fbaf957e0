//! `struct shared_info` and `struct vcpu_info` offsets (`xen.h`, `arch-x86/xen-x86_64.h`).
//!
//! The page Xen maps with `XENMEM_add_to_physmap(XENMAPSPACE_shared_info)`. tuk runs one vCPU,
//! so `vcpu_info[0]` in the page is its vcpu_info. The 2-level event-channel ABI: port `p` is
//! bit `p % 64` of word `p / 64` in `evtchn_pending` and `evtchn_mask`; Xen sets pending bits
//! and `evtchn_pending_sel` bits concurrently, so the kernel clears them with atomic
//! instructions at the byte offsets [`port_word`] gives. The readers here take snapshots.

use crate::bytes::{u32_at, u64_at};

/// `XEN_LEGACY_MAX_VCPUS` on x86.
pub const LEGACY_MAX_VCPUS: usize = 32;
/// `sizeof(struct vcpu_info)`.
pub const VCPU_INFO_SIZE: usize = 64;
/// Byte offsets inside `vcpu_info`.
pub const VCPU_UPCALL_PENDING: usize = 0;
pub const VCPU_UPCALL_MASK: usize = 1;
pub const VCPU_PENDING_SEL: usize = 8;
pub const VCPU_ARCH: usize = 16;
pub const VCPU_TIME: usize = 32;
/// `struct vcpu_time_info` offsets (32 bytes).
pub const TIME_VERSION: usize = 0;
pub const TIME_TSC_TIMESTAMP: usize = 8;
pub const TIME_SYSTEM_TIME: usize = 16;
pub const TIME_TSC_TO_SYSTEM_MUL: usize = 24;
pub const TIME_TSC_SHIFT: usize = 28;
pub const TIME_FLAGS: usize = 29;
pub const TIME_INFO_SIZE: usize = 32;
/// `shared_info` offsets.
pub const EVTCHN_PENDING: usize = LEGACY_MAX_VCPUS * VCPU_INFO_SIZE;
/// 64 words of 64 bits: 4096 ports.
pub const EVTCHN_WORDS: usize = 64;
pub const EVTCHN_MASK: usize = EVTCHN_PENDING + EVTCHN_WORDS * 8;
pub const WC_VERSION: usize = EVTCHN_MASK + EVTCHN_WORDS * 8;
pub const WC_SEC: usize = WC_VERSION + 4;
pub const WC_NSEC: usize = WC_SEC + 4;
pub const WC_SEC_HI: usize = WC_NSEC + 4;
pub const ARCH: usize = WC_SEC_HI + 4;
/// `sizeof(struct shared_info)` on x86_64 (arch part: 6 × u64).
pub const SIZE: usize = ARCH + 48;
/// Ports in the 2-level ABI.
pub const MAX_PORTS: u32 = (EVTCHN_WORDS * 64) as u32;

/// Where port `port`'s bit lives: (byte offset of its 64-bit word from the start of the
/// `evtchn_pending` array, bit), or `None` for a port beyond the 2-level ABI. Add
/// [`EVTCHN_PENDING`] or [`EVTCHN_MASK`].
pub fn port_word(port: u32) -> Option<(usize, u32)> {
    (port < MAX_PORTS).then(|| ((port / 64) as usize * 8, port % 64))
}

/// A read-only view of shared_info for snapshots.
#[derive(Clone, Copy, Debug)]
pub struct SharedInfo<'a>(&'a [u8]);

impl<'a> SharedInfo<'a> {
    /// `None` if the slice is shorter than the structure.
    pub fn new_checked(page: &'a [u8]) -> Option<Self> {
        (page.len() >= SIZE).then_some(Self(page))
    }

    fn vcpu(&self, vcpu: usize) -> usize {
        (vcpu % LEGACY_MAX_VCPUS) * VCPU_INFO_SIZE
    }

    pub fn upcall_pending(&self, vcpu: usize) -> bool {
        self.0[self.vcpu(vcpu) + VCPU_UPCALL_PENDING] != 0
    }

    pub fn upcall_mask(&self, vcpu: usize) -> bool {
        self.0[self.vcpu(vcpu) + VCPU_UPCALL_MASK] != 0
    }

    pub fn pending_sel(&self, vcpu: usize) -> u64 {
        u64_at(self.0, self.vcpu(vcpu) + VCPU_PENDING_SEL)
    }

    /// Word `w` (0..64) of pending & !mask; 0 for a word beyond the array.
    pub fn deliverable(&self, w: usize) -> u64 {
        if w >= EVTCHN_WORDS {
            return 0;
        }
        u64_at(self.0, EVTCHN_PENDING + w * 8) & !u64_at(self.0, EVTCHN_MASK + w * 8)
    }

    /// The ports pending and unmasked in the words `sel` names, lowest first.
    pub fn deliverable_ports(&self, sel: u64) -> impl Iterator<Item = u32> + '_ {
        (0..64u32)
            .filter(move |w| sel & (1 << w) != 0)
            .flat_map(move |w| {
                let bits = self.deliverable(w as usize);
                (0..64u32)
                    .filter(move |b| bits & (1 << b) != 0)
                    .map(move |b| w * 64 + b)
            })
    }

    pub fn time(&self, vcpu: usize) -> TimeInfo {
        let t = &self.0[self.vcpu(vcpu) + VCPU_TIME..self.vcpu(vcpu) + VCPU_TIME + TIME_INFO_SIZE];
        TimeInfo {
            version: u32_at(t, TIME_VERSION),
            tsc_timestamp: u64_at(t, TIME_TSC_TIMESTAMP),
            system_time: u64_at(t, TIME_SYSTEM_TIME),
            tsc_to_system_mul: u32_at(t, TIME_TSC_TO_SYSTEM_MUL),
            tsc_shift: t[TIME_TSC_SHIFT] as i8,
            flags: t[TIME_FLAGS],
        }
    }

    /// The wall clock at Xen system time 0: (version, seconds, nanoseconds).
    pub fn wall_clock(&self) -> (u32, u64, u32) {
        let sec = u64::from(u32_at(self.0, WC_SEC)) | (u64::from(u32_at(self.0, WC_SEC_HI)) << 32);
        (u32_at(self.0, WC_VERSION), sec, u32_at(self.0, WC_NSEC))
    }
}

/// A snapshot of `vcpu_time_info`. Valid only if `version` is even and unchanged across the
/// read (the kernel re-reads until it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeInfo {
    pub version: u32,
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    pub flags: u8,
}

impl TimeInfo {
    /// Xen system time in ns at TSC value `tsc` (pvclock's formula).
    pub fn system_time_ns(&self, tsc: u64) -> u64 {
        let mut delta = tsc.wrapping_sub(self.tsc_timestamp);
        let shift = self.tsc_shift;
        if shift < 0 {
            delta = delta
                .checked_shr(u32::from(shift.unsigned_abs()))
                .unwrap_or(0);
        } else {
            delta = delta.checked_shl(shift as u32).unwrap_or(0);
        }
        let scaled = ((u128::from(delta) * u128::from(self.tsc_to_system_mul)) >> 32) as u64;
        self.system_time.wrapping_add(scaled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_map_to_words_and_bits() {
        assert_eq!(port_word(0), Some((0, 0)));
        assert_eq!(port_word(65), Some((8, 1)));
        assert_eq!(port_word(4095), Some((504, 63)));
        assert_eq!(port_word(4096), None);
    }

    #[test]
    fn deliverable_ports_respect_the_mask() {
        let mut page = vec![0u8; 4096];
        page[EVTCHN_PENDING] = 0b1010; // ports 1 and 3
        page[EVTCHN_PENDING + 8] = 1; // port 64
        page[EVTCHN_MASK] = 0b1000; // port 3 masked
        page[VCPU_UPCALL_PENDING] = 1;
        page[VCPU_PENDING_SEL] = 0b11;
        let s = SharedInfo::new_checked(&page).unwrap();
        assert!(s.upcall_pending(0));
        let ports: Vec<_> = s.deliverable_ports(s.pending_sel(0)).collect();
        assert_eq!(ports, [1, 64]);
        assert!(SharedInfo::new_checked(&page[..SIZE - 1]).is_none());
    }

    #[test]
    fn pvclock_scales_the_tsc() {
        // 2 GHz TSC: mul = 2^32 / 2 with shift 0 gives 0.5 ns per tick.
        let t = TimeInfo {
            version: 2,
            tsc_timestamp: 1000,
            system_time: 5_000,
            tsc_to_system_mul: 1 << 31,
            tsc_shift: 0,
            flags: 0,
        };
        assert_eq!(t.system_time_ns(3000), 6_000);
        let t = TimeInfo { tsc_shift: -1, ..t };
        assert_eq!(t.system_time_ns(3000), 5_500);
        let t = TimeInfo { tsc_shift: 1, ..t };
        assert_eq!(t.system_time_ns(3000), 7_000);
    }
}
