//! `hvm_start_info` (`arch-x86/hvm/start_info.h`), checked.
//!
//! [`StartInfo::parse`] reads the fixed structure: magic, version (0, or 1 and later with the
//! memory map; unknown later versions are read as 1, as the header promises compatible
//! extension), `reserved` zero, and counts within tuk's limits. [`StartInfo::parse_region`]
//! also reads the module list, the memory map and the command line when the loader put them
//! in the same region as the structure (Xen's libxc does: one start-info segment), refusing
//! any address, count or length that does not lie inside the region.

use crate::bytes::{u32_at, u64_at};

pub const MAGIC: u32 = 0x336e_c578;
/// The structure's size in version 0 (up to and including `rsdp_paddr`).
pub const SIZE_V0: usize = 40;
/// The structure's size from version 1 (with `memmap_paddr`, `memmap_entries`, `reserved`).
pub const SIZE_V1: usize = 56;
/// `struct hvm_modlist_entry`.
pub const MODLIST_ENTRY_SIZE: usize = 32;
/// `struct hvm_memmap_table_entry`.
pub const MEMMAP_ENTRY_SIZE: usize = 24;
/// tuk takes at most this many modules (it uses one: the boot pack).
pub const MAX_MODULES: u32 = 16;
/// And at most this many memory-map entries.
pub const MAX_MEMMAP_ENTRIES: u32 = 128;

pub const MEMMAP_TYPE_RAM: u32 = 1;
pub const MEMMAP_TYPE_RESERVED: u32 = 2;
pub const MEMMAP_TYPE_ACPI: u32 = 3;

/// Why a start info was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    Truncated {
        len: usize,
        need: usize,
    },
    BadMagic(u32),
    ReservedNotZero(u32),
    TooManyModules(u32),
    TooManyMemmapEntries(u32),
    /// A table or string the structure points to is not inside the region.
    OutsideRegion {
        what: &'static str,
        paddr: u64,
    },
    /// The command line has no NUL before the region ends.
    CmdlineUnterminated,
    /// A module's `paddr + size` overflows.
    ModuleOverflow {
        index: u32,
    },
}

impl core::fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated { len, need } => write!(f, "hvm_start_info: {len} bytes, need {need}"),
            Self::BadMagic(m) => write!(
                f,
                "hvm_start_info: magic {m:#x}, expected {MAGIC:#x}; boot the kernel with a PVH loader"
            ),
            Self::ReservedNotZero(v) => write!(f, "hvm_start_info: reserved field is {v:#x}, must be 0"),
            Self::TooManyModules(n) => write!(f, "hvm_start_info: {n} modules, at most {MAX_MODULES}"),
            Self::TooManyMemmapEntries(n) => {
                write!(f, "hvm_start_info: {n} memory-map entries, at most {MAX_MEMMAP_ENTRIES}")
            }
            Self::OutsideRegion { what, paddr } => {
                write!(f, "hvm_start_info: the {what} at {paddr:#x} is outside the start-info region")
            }
            Self::CmdlineUnterminated => write!(f, "hvm_start_info: the command line is not NUL-terminated"),
            Self::ModuleOverflow { index } => write!(f, "hvm_start_info: module {index} wraps the address space"),
        }
    }
}

/// The fixed structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartInfo {
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    /// 0 in version 0.
    pub memmap_paddr: u64,
    /// 0 in version 0.
    pub memmap_entries: u32,
}

/// A module (`struct hvm_modlist_entry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    pub paddr: u64,
    pub size: u64,
    pub cmdline_paddr: u64,
}

/// A memory-map entry (`struct hvm_memmap_table_entry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl StartInfo {
    pub fn parse(bytes: &[u8]) -> Result<Self, StartInfoError> {
        if bytes.len() < SIZE_V0 {
            return Err(StartInfoError::Truncated {
                len: bytes.len(),
                need: SIZE_V0,
            });
        }
        let magic = u32_at(bytes, 0);
        if magic != MAGIC {
            return Err(StartInfoError::BadMagic(magic));
        }
        let version = u32_at(bytes, 4);
        let mut info = Self {
            version,
            flags: u32_at(bytes, 8),
            nr_modules: u32_at(bytes, 12),
            modlist_paddr: u64_at(bytes, 16),
            cmdline_paddr: u64_at(bytes, 24),
            rsdp_paddr: u64_at(bytes, 32),
            memmap_paddr: 0,
            memmap_entries: 0,
        };
        if version >= 1 {
            if bytes.len() < SIZE_V1 {
                return Err(StartInfoError::Truncated {
                    len: bytes.len(),
                    need: SIZE_V1,
                });
            }
            info.memmap_paddr = u64_at(bytes, 40);
            info.memmap_entries = u32_at(bytes, 48);
            let reserved = u32_at(bytes, 52);
            if reserved != 0 {
                return Err(StartInfoError::ReservedNotZero(reserved));
            }
        }
        if info.nr_modules > MAX_MODULES {
            return Err(StartInfoError::TooManyModules(info.nr_modules));
        }
        if info.memmap_entries > MAX_MEMMAP_ENTRIES {
            return Err(StartInfoError::TooManyMemmapEntries(info.memmap_entries));
        }
        Ok(info)
    }

    /// Parses the structure at the start of `region` (found at guest-physical `region_paddr`)
    /// and everything it points to, which must lie inside the region.
    pub fn parse_region(region: &[u8], region_paddr: u64) -> Result<Region<'_>, StartInfoError> {
        let info = Self::parse(region)?;
        let slice = |what, paddr: u64, len: u64| -> Result<&[u8], StartInfoError> {
            let out = StartInfoError::OutsideRegion { what, paddr };
            let start = paddr.checked_sub(region_paddr).ok_or(out)?;
            let end = start.checked_add(len).ok_or(out)?;
            if end > region.len() as u64 {
                return Err(out);
            }
            Ok(&region[start as usize..end as usize])
        };
        let modlist = if info.nr_modules == 0 {
            &[][..]
        } else {
            slice(
                "module list",
                info.modlist_paddr,
                u64::from(info.nr_modules) * MODLIST_ENTRY_SIZE as u64,
            )?
        };
        let memmap = if info.memmap_entries == 0 {
            &[][..]
        } else {
            slice(
                "memory map",
                info.memmap_paddr,
                u64::from(info.memmap_entries) * MEMMAP_ENTRY_SIZE as u64,
            )?
        };
        let cmdline = if info.cmdline_paddr == 0 {
            &[][..]
        } else {
            let rest = slice("command line", info.cmdline_paddr, 0)
                .map(|_| &region[(info.cmdline_paddr - region_paddr) as usize..])?;
            let nul = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or(StartInfoError::CmdlineUnterminated)?;
            &rest[..nul]
        };
        let region = Region {
            info,
            modlist,
            memmap,
            cmdline,
        };
        for (index, m) in region.modules().enumerate() {
            if m.paddr.checked_add(m.size).is_none() {
                return Err(StartInfoError::ModuleOverflow {
                    index: index as u32,
                });
            }
        }
        Ok(region)
    }
}

/// A start info with its tables, all checked to lie inside the region.
#[derive(Clone, Copy, Debug)]
pub struct Region<'a> {
    pub info: StartInfo,
    modlist: &'a [u8],
    memmap: &'a [u8],
    cmdline: &'a [u8],
}

impl<'a> Region<'a> {
    pub fn modules(&self) -> impl Iterator<Item = Module> + 'a {
        self.modlist
            .chunks_exact(MODLIST_ENTRY_SIZE)
            .map(|e| Module {
                paddr: u64_at(e, 0),
                size: u64_at(e, 8),
                cmdline_paddr: u64_at(e, 16),
            })
    }

    pub fn memmap(&self) -> impl Iterator<Item = MemmapEntry> + 'a {
        self.memmap
            .chunks_exact(MEMMAP_ENTRY_SIZE)
            .map(|e| MemmapEntry {
                addr: u64_at(e, 0),
                size: u64_at(e, 8),
                kind: u32_at(e, 16),
            })
    }

    /// The command line's bytes, without the NUL (empty if none was given).
    pub fn cmdline(&self) -> &'a [u8] {
        self.cmdline
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A Xen-like start-info segment at `base`: struct, cmdline, modlist, memmap.
    pub(crate) fn sample(base: u64) -> Vec<u8> {
        let mut r = vec![0u8; 256];
        let put32 =
            |r: &mut Vec<u8>, o: usize, v: u32| r[o..o + 4].copy_from_slice(&v.to_le_bytes());
        let put64 =
            |r: &mut Vec<u8>, o: usize, v: u64| r[o..o + 8].copy_from_slice(&v.to_le_bytes());
        put32(&mut r, 0, MAGIC);
        put32(&mut r, 4, 1);
        put32(&mut r, 12, 1);
        put64(&mut r, 16, base + 96);
        put64(&mut r, 24, base + 64);
        put64(&mut r, 40, base + 128);
        put32(&mut r, 48, 2);
        r[64..75].copy_from_slice(b"port=8080 \0");
        put64(&mut r, 96, 0x20_0000);
        put64(&mut r, 104, 4096);
        put64(&mut r, 128, 0);
        put64(&mut r, 136, 0x4000_0000);
        put32(&mut r, 144, MEMMAP_TYPE_RAM);
        put64(&mut r, 152, 0xfeff_8000);
        put64(&mut r, 160, 0x8000);
        put32(&mut r, 168, MEMMAP_TYPE_RESERVED);
        r
    }

    #[test]
    fn honest_region_parses() {
        let base = 0x10_0000;
        let r = sample(base);
        let region = StartInfo::parse_region(&r, base).unwrap();
        assert_eq!(region.cmdline(), b"port=8080 ");
        let m: Vec<_> = region.modules().collect();
        assert_eq!(
            m,
            [Module {
                paddr: 0x20_0000,
                size: 4096,
                cmdline_paddr: 0
            }]
        );
        let mm: Vec<_> = region.memmap().map(|e| e.kind).collect();
        assert_eq!(mm, [MEMMAP_TYPE_RAM, MEMMAP_TYPE_RESERVED]);
    }

    #[test]
    fn refuses_what_a_loader_cannot_mean() {
        let base = 0x10_0000;
        let mut r = sample(base);
        r[0] ^= 1;
        assert!(matches!(
            StartInfo::parse(&r),
            Err(StartInfoError::BadMagic(_))
        ));
        let mut r = sample(base);
        r[48] = 200;
        assert_eq!(
            StartInfo::parse(&r),
            Err(StartInfoError::TooManyMemmapEntries(200))
        );
        let mut r = sample(base);
        r[48] = 9; // 9 entries run past the 256-byte region
        assert!(matches!(
            StartInfo::parse_region(&r, base),
            Err(StartInfoError::OutsideRegion {
                what: "memory map",
                ..
            })
        ));
        let mut r = sample(base);
        r[16..24].copy_from_slice(&(base - 8).to_le_bytes());
        assert!(matches!(
            StartInfo::parse_region(&r, base),
            Err(StartInfoError::OutsideRegion { .. })
        ));
        let mut r = sample(base);
        r[64..256].fill(b'x');
        r[128..].fill(b'x');
        assert!(StartInfo::parse_region(&r, base).is_err());
        let mut r = sample(base);
        r[52] = 1;
        assert_eq!(
            StartInfo::parse(&r),
            Err(StartInfoError::ReservedNotZero(1))
        );
        let mut r = sample(base);
        r[104..112].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            StartInfo::parse_region(&r, base).unwrap_err(),
            StartInfoError::ModuleOverflow { index: 0 }
        );
        assert!(matches!(
            StartInfo::parse(&r[..50]),
            Err(StartInfoError::Truncated { need: 56, .. })
        ));
        // Addresses near the top of the address space do not overflow the checks.
        let mut r = sample(base);
        r[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(StartInfo::parse_region(&r, base).is_err());
    }
}
