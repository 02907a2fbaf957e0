//! The kernel's page tables: an identity map of RAM with W^X.
//!
//! Contract (later issues rely on it):
//! - kernel text is present + executable + read-only; rodata is read-only + NX; data and bss
//!   are writable + NX; the boot stack's guard page and the first MiB are not mapped;
//! - all other RAM is identity-mapped writable + NX (heap, DMA buffers, page tables);
//! - MMIO is mapped on request by [`map_mmio`], uncached + NX;
//! - CR0.WP is set, so the kernel itself faults on writes to read-only pages;
//! - no page is ever writable and executable at once; [`audit_wx`] walks the live tables and
//!   counts violations (it is reported in `/_tuk/health` and checked at boot).
//!
//! Everything uses 4 KiB pages so that permissions can later change per page (Wasm code).

use core::alloc::Layout;

use spin::Mutex;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr3, Cr3Flags};
use x86_64::structures::paging::mapper::MapToError;
use x86_64::structures::paging::page_table::PageTableEntry;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as F, PhysFrame,
    Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use super::boot::stack_guard_page;

const PAGE: u64 = 4096;

extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __kernel_end: u8;
}

/// The kernel image's section boundaries, from the linker script.
#[derive(Clone, Copy, Debug)]
pub struct KernelSections {
    pub text: (u64, u64),
    pub rodata: (u64, u64),
    pub data: (u64, u64),
}

pub fn kernel_sections() -> KernelSections {
    KernelSections {
        text: (&raw const __text_start as u64, &raw const __text_end as u64),
        rodata: (
            &raw const __rodata_start as u64,
            &raw const __rodata_end as u64,
        ),
        data: (
            &raw const __data_start as u64,
            &raw const __kernel_end as u64,
        ),
    }
}

/// The kernel's text as mapped (read+execute), for re-measurement.
pub fn kernel_text() -> &'static [u8] {
    let (start, end) = kernel_sections().text;
    // SAFETY: the linker script's text bounds; the range is mapped present for the kernel's
    // whole life and never written (read-only pages, CR0.WP set).
    unsafe { core::slice::from_raw_parts(start as *const u8, (end - start) as usize) }
}

/// The kernel's read-only data as mapped, for re-measurement.
pub fn kernel_rodata() -> &'static [u8] {
    let (start, end) = kernel_sections().rodata;
    // SAFETY: as for `kernel_text`: mapped present and read-only for the kernel's life.
    unsafe { core::slice::from_raw_parts(start as *const u8, (end - start) as usize) }
}

/// Page-table frames come from the kernel heap (identity-mapped, so virtual = physical).
struct HeapFrames;

// SAFETY: every frame returned is a fresh, zeroed, page-aligned heap allocation that is never
// freed, so it is unused by anything else.
unsafe impl FrameAllocator<Size4KiB> for HeapFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let layout = Layout::from_size_align(PAGE as usize, PAGE as usize).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return None;
        }
        Some(PhysFrame::containing_address(PhysAddr::new(ptr as u64)))
    }
}

static TABLES: Mutex<Option<OffsetPageTable<'static>>> = Mutex::new(None);

fn identity_map(
    mapper: &mut OffsetPageTable<'static>,
    start: u64,
    end: u64,
    flags: F,
) -> Result<(), MapToError<Size4KiB>> {
    let mut addr = start & !(PAGE - 1);
    while addr < end {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(addr));
        let frame = PhysFrame::containing_address(PhysAddr::new(addr));
        // SAFETY: identity mapping keeps every existing pointer valid; the flags follow the
        // W^X contract of this module.
        match unsafe { mapper.map_to(page, frame, flags, &mut HeapFrames) } {
            // The new tables are not live yet (or the caller flushes): no per-page flush.
            Ok(flush) => flush.ignore(),
            Err(MapToError::PageAlreadyMapped(f)) if f == frame => {}
            Err(e) => return Err(e),
        }
        addr += PAGE;
    }
    Ok(())
}

/// Builds the final page tables and switches to them.
///
/// `ram` lists RAM ranges `[start, end)` to identity-map (the kernel image is mapped with its
/// own permissions whether or not it is listed). Page-table frames are taken from the heap,
/// which must therefore live in memory the boot tables map (the first GiB).
pub fn init(ram: impl Iterator<Item = (u64, u64)>) {
    let s = kernel_sections();
    let pml4_frame = HeapFrames
        .allocate_frame()
        .expect("out of memory for the top-level page table");
    // SAFETY: the frame is a fresh zeroed heap page, identity-mapped and never freed.
    let pml4: &'static mut PageTable =
        unsafe { &mut *(pml4_frame.start_address().as_u64() as *mut PageTable) };
    // SAFETY: physical memory is identity-mapped, so the physical offset is 0.
    let mut mapper = unsafe { OffsetPageTable::new(pml4, VirtAddr::new(0)) };

    let guard = stack_guard_page();
    let sections = [
        (s.text, F::PRESENT),
        (s.rodata, F::PRESENT | F::NO_EXECUTE),
        ((s.data.0, guard), F::PRESENT | F::WRITABLE | F::NO_EXECUTE),
        (
            (guard + PAGE, s.data.1),
            F::PRESENT | F::WRITABLE | F::NO_EXECUTE,
        ),
    ];
    for ((start, end), flags) in sections {
        identity_map(&mut mapper, start, end, flags).expect("mapping the kernel image");
    }
    let kernel = s.text.0..s.data.1;
    for (start, end) in ram {
        let start = start.max(0x10_0000).next_multiple_of(PAGE);
        let end = end & !(PAGE - 1);
        // Split around the kernel image, which keeps its own permissions.
        for (a, b) in [(start, end.min(kernel.start)), (start.max(kernel.end), end)] {
            if a < b {
                identity_map(&mut mapper, a, b, F::PRESENT | F::WRITABLE | F::NO_EXECUTE)
                    .expect("mapping RAM");
            }
        }
    }
    // SAFETY: the new tables identity-map everything the kernel uses from here on: its image
    // (code, data, stack), the heap (RAM) and, on request, MMIO.
    unsafe {
        Cr3::write(pml4_frame, Cr3Flags::empty());
        Cr0::update(|f| f.insert(Cr0Flags::WRITE_PROTECT));
    }
    *TABLES.lock() = Some(mapper);
}

/// Identity-maps an MMIO range uncached, writable, never executable. Idempotent.
pub fn map_mmio(phys: u64, len: u64) {
    let mut tables = TABLES.lock();
    let mapper = tables.as_mut().expect("map_mmio before paging::init");
    let flags = F::PRESENT | F::WRITABLE | F::NO_EXECUTE | F::NO_CACHE | F::WRITE_THROUGH;
    identity_map(mapper, phys, phys + len, flags).expect("mapping MMIO");
    let mut addr = phys & !(PAGE - 1);
    while addr < phys + len {
        x86_64::instructions::tlb::flush(VirtAddr::new(addr));
        addr += PAGE;
    }
}

/// Result of walking the live page tables.
#[derive(Clone, Copy, Debug, Default)]
pub struct WxAudit {
    /// Present 4 KiB-equivalent pages.
    pub mapped_pages: u64,
    /// Pages executable from the kernel's view.
    pub executable_pages: u64,
    /// Pages both writable and executable: must be 0.
    pub writable_executable_pages: u64,
}

fn walk(table: &PageTable, level: u8, writable: bool, executable: bool, out: &mut WxAudit) {
    for entry in table
        .iter()
        .filter(|e: &&PageTableEntry| e.flags().contains(F::PRESENT))
    {
        let f = entry.flags();
        let w = writable && f.contains(F::WRITABLE);
        let x = executable && !f.contains(F::NO_EXECUTE);
        if level == 2 && !f.contains(F::HUGE_PAGE) {
            // SAFETY: a present non-leaf entry points at a page table; memory is identity-mapped.
            let leaves = unsafe { &*(entry.addr().as_u64() as *const PageTable) };
            count_leaves(leaves, w, x, out);
        } else if level == 1 || f.contains(F::HUGE_PAGE) {
            let pages = 1u64 << (9 * (u32::from(level) - 1));
            out.mapped_pages += pages;
            if x {
                out.executable_pages += pages;
            }
            if w && x {
                out.writable_executable_pages += pages;
            }
        } else {
            // SAFETY: a present non-leaf entry points at a page table; memory is identity-mapped.
            let next = unsafe { &*(entry.addr().as_u64() as *const PageTable) };
            walk(next, level - 1, w, x, out);
        }
    }
}

/// Counts one last-level table's 512 entries under the permissions its parents allow. Most
/// of an audit is spent here (every 4 KiB page of RAM is one entry), so it counts with
/// arithmetic instead of branches, 8 entries at a time: under TCG every branch ends a
/// translation block, and this form made a 128 MiB audit about 4× faster (1.0 ms to
/// 0.2–0.3 ms under TCG, in `/_tuk/status`'s `last_round_parts_us.wx_audit`).
fn count_leaves(table: &PageTable, writable: bool, executable: bool, out: &mut WxAudit) {
    let parent_w = u64::from(writable);
    let parent_x = u64::from(executable);
    let (mut mapped, mut exec, mut wx) = (0u64, 0u64, 0u64);
    for chunk in 0..512 / 8 {
        for i in chunk * 8..chunk * 8 + 8 {
            let bits = table[i].flags().bits();
            let present = bits & F::PRESENT.bits();
            let w = (bits & F::WRITABLE.bits()) >> 1;
            let x = present & !(bits >> 63) & parent_x;
            mapped += present;
            exec += x;
            wx += x & w & parent_w;
        }
    }
    out.mapped_pages += mapped;
    out.executable_pages += exec;
    out.writable_executable_pages += wx;
}

/// The guest-physical address of the live top-level page table (CR3), for the status report.
pub fn root() -> u64 {
    Cr3::read().0.start_address().as_u64()
}

/// Walks the live page tables and counts writable+executable pages.
pub fn audit_wx() -> WxAudit {
    let (frame, _) = Cr3::read();
    // SAFETY: CR3 points at the live, identity-mapped top-level table.
    let pml4 = unsafe { &*(frame.start_address().as_u64() as *const PageTable) };
    let mut out = WxAudit::default();
    walk(pml4, 4, true, true, &mut out);
    out
}

/// Page permissions a caller may ask for. There is deliberately no writable+executable value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Not accessible (the entry keeps its frame but is not present).
    None,
    ReadOnly,
    ReadWrite,
    ReadExecute,
}

/// Changes the permissions of the identity-mapped RAM pages covering `[start, start + len)`.
/// `start` must be page-aligned and the pages must have been mapped by [`init`] (RAM).
pub fn protect(start: u64, len: u64, prot: Protection) -> Result<(), ProtectError> {
    if !start.is_multiple_of(PAGE) {
        return Err(ProtectError::Unaligned(start));
    }
    let flags = match prot {
        Protection::None => F::NO_EXECUTE,
        Protection::ReadOnly => F::PRESENT | F::NO_EXECUTE,
        Protection::ReadWrite => F::PRESENT | F::WRITABLE | F::NO_EXECUTE,
        Protection::ReadExecute => F::PRESENT,
    };
    let mut tables = TABLES.lock();
    let mapper = tables.as_mut().ok_or(ProtectError::NoTables)?;
    let end = start
        .checked_add(len)
        .ok_or(ProtectError::NotMapped(start))?;
    let mut addr = start;
    while addr < end {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(addr));
        // SAFETY: only RAM pages owned by the caller (heap allocations it was handed) change;
        // the kernel image and page tables are never passed here (callers own their ranges).
        match unsafe { mapper.update_flags(page, flags) } {
            Ok(flush) => flush.flush(),
            Err(_) => return Err(ProtectError::NotMapped(addr)),
        }
        addr += PAGE;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtectError {
    Unaligned(u64),
    NotMapped(u64),
    NoTables,
}
