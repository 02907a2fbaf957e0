//! Physical memory and the kernel heap.
//!
//! All usable RAM (from the PVH memory map, minus the first MiB, the kernel image, the boot
//! structures and any PVH modules) is handed to one allocator (talc). RAM is identity-mapped,
//! so heap pointers are physical addresses: page-aligned heap allocations serve as DMA buffers
//! and page tables, and (later) as Wasm memories whose permissions change per page.

use talc::{ErrOnOom, Span, Talc, Talck};

use crate::arch::BootInfo;

#[global_allocator]
static ALLOCATOR: Talck<spin::Mutex<()>, ErrOnOom> = Talc::new(ErrOnOom).lock();

/// RAM the boot page tables map (and therefore usable before `paging::init`).
const EARLY_MAPPED: u64 = 1 << 30;
const LOW_MEMORY: u64 = 1 << 20;
const MAX_RANGES: usize = 64;

/// Free RAM ranges `[start, end)`, computed once from the boot information.
pub struct FreeRam {
    ranges: [(u64, u64); MAX_RANGES],
    count: usize,
}

impl FreeRam {
    /// RAM minus everything reserved. `kernel` is the image's `[start, end)`.
    pub fn from_boot_info(info: &BootInfo, kernel: (u64, u64)) -> FreeRam {
        let mut reserved: [(u64, u64); 20] = [(0, 0); 20];
        reserved[0] = (0, LOW_MEMORY);
        reserved[1] = kernel;
        reserved[2] = (
            info.start_info & !0xfff,
            (info.start_info & !0xfff) + 0x1000,
        );
        for (slot, m) in reserved[3..].iter_mut().zip(info.modules()) {
            *slot = (m.start & !0xfff, (m.start + m.len).next_multiple_of(0x1000));
        }
        let mut out = FreeRam {
            ranges: [(0, 0); MAX_RANGES],
            count: 0,
        };
        for r in info.regions().iter().filter(|r| r.is_ram()) {
            out.add_minus(
                r.start.next_multiple_of(0x1000),
                r.end() & !0xfff,
                &reserved,
            );
        }
        out
    }

    /// Adds `[start, end)` minus every reserved range (recursively splitting).
    fn add_minus(&mut self, start: u64, end: u64, reserved: &[(u64, u64)]) {
        if start >= end {
            return;
        }
        match reserved
            .iter()
            .position(|&(a, b)| a < end && start < b && a < b)
        {
            Some(i) => {
                let (a, b) = reserved[i];
                let rest = &reserved[i + 1..];
                self.add_minus(start, a.min(end), rest);
                self.add_minus(b.max(start), end, rest);
            }
            None if self.count < MAX_RANGES => {
                self.ranges[self.count] = (start, end);
                self.count += 1;
            }
            None => {}
        }
    }

    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges[..self.count].iter().copied()
    }

    pub fn total(&self) -> u64 {
        self.ranges().map(|(a, b)| b - a).sum()
    }
}

fn claim(start: u64, end: u64) {
    if end <= start {
        return;
    }
    // SAFETY: the range is RAM that nothing else uses (see `FreeRam`), identity-mapped by the
    // page tables active at this point, and claimed exactly once.
    let _ = unsafe {
        ALLOCATOR.lock().claim(Span::from_base_size(
            start as *mut u8,
            (end - start) as usize,
        ))
    };
}

/// Gives the allocator the RAM the boot page tables map. Call before `paging::init`.
pub fn init_early(free: &FreeRam) {
    for (a, b) in free.ranges() {
        claim(a, b.min(EARLY_MAPPED));
    }
}

/// Gives the allocator the rest of RAM. Call after `paging::init` mapped it.
pub fn init_late(free: &FreeRam) {
    for (a, b) in free.ranges() {
        claim(a.max(EARLY_MAPPED), b);
    }
}

/// Heap usage for the health report.
#[derive(Clone, Copy, Debug)]
pub struct HeapStats {
    pub claimed_bytes: usize,
    pub allocated_bytes: usize,
}

pub fn heap_stats() -> HeapStats {
    let talc = ALLOCATOR.lock();
    let c = talc.get_counters();
    HeapStats {
        claimed_bytes: c.claimed_bytes,
        allocated_bytes: c.allocated_bytes,
    }
}
