//! `hvm_start_info`: what the PVH loader tells the kernel (Xen public `arch-x86/hvm/start_info.h`).
//!
//! Parsed once, before the heap exists, into fixed-capacity storage: the memory map, the
//! command line (copied) and the module list (PVH modules, used later to hand components to the
//! kernel). Everything the loader wrote is treated as untrusted-in-shape: counts are bounded,
//! strings are length-limited and must be UTF-8.

const START_INFO_MAGIC: u32 = 0x336e_c578;
const MAX_REGIONS: usize = 64;
const MAX_MODULES: usize = 16;
const MAX_CMDLINE: usize = 4096;
/// E820 type of usable RAM.
const E820_RAM: u32 = 1;

#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryRegion {
    pub start: u64,
    pub len: u64,
    /// E820 type; 1 = RAM.
    pub kind: u32,
}

impl MemoryRegion {
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
    pub fn is_ram(&self) -> bool {
        self.kind == E820_RAM
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Module {
    pub start: u64,
    pub len: u64,
}

/// What the boot loader handed over, copied out of guest memory.
pub struct BootInfo {
    regions: [MemoryRegion; MAX_REGIONS],
    region_count: usize,
    modules: [Module; MAX_MODULES],
    module_count: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Where the loader put `hvm_start_info` (reserved from the allocator).
    pub start_info: u64,
}

#[derive(Debug)]
pub enum BootInfoError {
    BadMagic(u32),
    NoMemoryMap(u32),
    ModuleOutsideRam(u64, u64),
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadMagic(m) => write!(
                f,
                "hvm_start_info magic is {m:#x}, expected {START_INFO_MAGIC:#x}: not booted by a PVH loader"
            ),
            Self::NoMemoryMap(v) => write!(
                f,
                "hvm_start_info version {v} has no memory map (need version >= 1: QEMU >= 4.2 or Xen >= 4.12)"
            ),
            Self::ModuleOutsideRam(start, len) => write!(
                f,
                "PVH module at {start:#x} ({len} bytes) is not inside RAM above 1 MiB: refusing it"
            ),
        }
    }
}

/// Proof that the loader's structures are readable: low memory is identity-mapped by the boot
/// page tables. Only `BootInfo::parse` creates one.
struct LoaderMemory(());

impl LoaderMemory {
    fn read<T: Copy>(&self, addr: u64) -> T {
        // SAFETY: `LoaderMemory` exists only while the boot tables identity-map the first GiB,
        // where PVH loaders place `hvm_start_info`, the module list, the memory map and the
        // command line. Reads tolerate misalignment.
        unsafe { (addr as *const T).read_unaligned() }
    }
}

impl Module {
    /// The module's bytes. PVH modules are RAM the loader filled before entry; `paging::init`
    /// maps them (read-only after `protect`), the allocator never hands them out.
    pub fn bytes(&self) -> &'static [u8] {
        // SAFETY: the range was validated against the memory map by `BootInfo::parse` (it lies
        // in RAM), is identity-mapped by the final page tables and excluded from the heap
        // (`mem::FreeRam`), so nothing writes it for the kernel's lifetime.
        unsafe { core::slice::from_raw_parts(self.start as *const u8, self.len as usize) }
    }
}

impl BootInfo {
    /// Parses the structure at physical address `addr`.
    ///
    /// # Safety
    /// Must be called while the first GiB is identity mapped (the boot page tables), with the
    /// address passed in EBX by the PVH loader.
    pub unsafe fn parse(addr: u64) -> Result<BootInfo, BootInfoError> {
        let mem = LoaderMemory(());
        let magic: u32 = mem.read(addr);
        if magic != START_INFO_MAGIC {
            return Err(BootInfoError::BadMagic(magic));
        }
        let version: u32 = mem.read(addr + 4);
        let nr_modules: u32 = mem.read(addr + 12);
        let modlist: u64 = mem.read(addr + 16);
        let cmdline_paddr: u64 = mem.read(addr + 24);
        if version < 1 {
            return Err(BootInfoError::NoMemoryMap(version));
        }
        let memmap: u64 = mem.read(addr + 40);
        let memmap_entries: u32 = mem.read(addr + 48);

        let mut info = BootInfo {
            regions: [MemoryRegion::default(); MAX_REGIONS],
            region_count: 0,
            modules: [Module::default(); MAX_MODULES],
            module_count: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            start_info: addr,
        };
        for i in 0..(memmap_entries as usize).min(MAX_REGIONS) {
            let e = memmap + 24 * i as u64;
            info.regions[i] = MemoryRegion {
                start: mem.read(e),
                len: mem.read(e + 8),
                kind: mem.read(e + 16),
            };
            info.region_count += 1;
        }
        for i in 0..(nr_modules as usize).min(MAX_MODULES) {
            let e = modlist + 32 * i as u64;
            let module = Module {
                start: mem.read(e),
                len: mem.read(e + 8),
            };
            let end = module.start.checked_add(module.len);
            let in_ram = info.regions().iter().any(|r| {
                r.is_ram() && module.start >= r.start && end.is_some_and(|e| e <= r.end())
            });
            if !in_ram || module.start < 0x10_0000 {
                return Err(BootInfoError::ModuleOutsideRam(module.start, module.len));
            }
            info.modules[i] = module;
            info.module_count += 1;
        }
        if cmdline_paddr != 0 {
            while info.cmdline_len < MAX_CMDLINE {
                let b: u8 = mem.read(cmdline_paddr + info.cmdline_len as u64);
                if b == 0 {
                    break;
                }
                info.cmdline[info.cmdline_len] = b;
                info.cmdline_len += 1;
            }
        }
        Ok(info)
    }

    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count]
    }

    pub fn modules(&self) -> &[Module] {
        &self.modules[..self.module_count]
    }

    /// The kernel command line; non-UTF-8 bytes make it empty (and are reported by the caller).
    pub fn cmdline(&self) -> Result<&str, core::str::Utf8Error> {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len])
    }
}
