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
    /// Executable pages outside the expected set (the kernel's text and the ranges [`protect`]
    /// made read+execute: component code): must be 0.
    pub unexpected_executable_pages: u64,
    /// The first unexpected executable page's virtual address.
    pub first_unexpected_executable: Option<u64>,
    /// Pages of the expected executable set that are not mapped executable (text or code
    /// made non-executable, or remapped: the identity check then also counts it).
    pub missing_executable_pages: u64,
    /// Present leaf entries that do not map their own frame (virtual != physical: an alias or
    /// a remapping): must be 0.
    pub non_identity_pages: u64,
    /// The first such entry's virtual address.
    pub first_non_identity: Option<u64>,
    /// Pages of the expected executable set (kernel text plus component code).
    pub expected_executable_pages: u64,
    /// Pages [`seal`]ed (the integrity monitor's reference values and secret).
    pub sealed_pages: u64,
    /// Sealed pages whose entry is not present, writable, executable or not the identity:
    /// must be 0.
    pub unsealed_pages: u64,
    /// The first such page's address.
    pub first_unsealed: Option<u64>,
}

/// The page ranges [`seal`] made read-only for good.
static SEALED: Mutex<alloc::vec::Vec<(u64, u64)>> = Mutex::new(alloc::vec::Vec::new());

/// Copies `value` into fresh pages of its own and makes them read-only (and no-execute) for
/// the kernel's life; the page-table audit checks on every round that they stay so (present,
/// not writable, identity-mapped). With CR0.WP set (also checked every round), no code in the
/// guest can change a sealed value without first changing its page-table entry or CR0.
/// `T: Copy` has no interior mutability (no `UnsafeCell`), so nothing writes through the
/// returned reference. Call after [`init`]. The pages are never freed.
pub fn seal<T: Copy + Send + Sync + 'static>(value: T) -> &'static T {
    let size = core::mem::size_of::<T>()
        .max(1)
        .next_multiple_of(PAGE as usize);
    let layout = Layout::from_size_align(size, PAGE as usize).expect("a page-aligned layout");
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) }.cast::<T>();
    assert!(!ptr.is_null(), "out of memory sealing {size} bytes");
    // SAFETY: `ptr` is a fresh allocation large enough and aligned for `T` (page alignment
    // exceeds any `T`'s alignment here).
    unsafe { ptr.write(value) };
    let start = ptr as u64;
    protect(start, size as u64, Protection::ReadOnly).expect("sealing heap pages");
    SEALED.lock().push((start, start + size as u64));
    // SAFETY: the value was written above and is never written or freed again (read-only
    // pages, leaked allocation).
    unsafe { &*ptr }
}

/// The sealed page ranges, for the status report.
pub fn sealed_ranges() -> alloc::vec::Vec<(u64, u64)> {
    SEALED.lock().clone()
}

/// The live last-level entry (raw) mapping `vaddr`, walking from `pml4`; `None` if a level is
/// not present or a huge page maps it.
fn leaf_entry(pml4: &PageTable, vaddr: u64) -> Option<u64> {
    let mut table = pml4;
    for level in (1..=4u32).rev() {
        let index = ((vaddr >> (12 + 9 * (level - 1))) & 0x1ff) as usize;
        let entry = &table[index];
        let f = entry.flags();
        if !f.contains(F::PRESENT) {
            return None;
        }
        if level == 1 {
            return Some(f.bits() | entry.addr().as_u64());
        }
        if f.contains(F::HUGE_PAGE) {
            return None;
        }
        // SAFETY: a present non-leaf entry points at a page table; memory is identity-mapped.
        table = unsafe { &*(entry.addr().as_u64() as *const PageTable) };
    }
    None
}

/// The executable page ranges `[start, end)` the kernel made itself, beyond its text: what
/// [`protect`] made read+execute (wasmtime's code memory, through `wasm::platform`). Any other
/// protection of a page removes it. The audit compares the live tables against this set.
static EXECUTABLE: Mutex<alloc::vec::Vec<(u64, u64)>> = Mutex::new(alloc::vec::Vec::new());

fn exec_remove(set: &mut alloc::vec::Vec<(u64, u64)>, start: u64, end: u64) {
    let mut out = alloc::vec::Vec::with_capacity(set.len() + 1);
    for &(a, b) in set.iter() {
        if b <= start || a >= end {
            out.push((a, b));
            continue;
        }
        if a < start {
            out.push((a, start));
        }
        if b > end {
            out.push((end, b));
        }
    }
    *set = out;
}

fn exec_add(set: &mut alloc::vec::Vec<(u64, u64)>, start: u64, end: u64) {
    exec_remove(set, start, end);
    let at = set.partition_point(|&(a, _)| a < start);
    set.insert(at, (start, end));
}

/// What one audit compares against: the expected executable ranges, sorted.
struct Expected<'a> {
    text: (u64, u64),
    code: &'a [(u64, u64)],
}

impl Expected<'_> {
    fn contains(&self, addr: u64) -> bool {
        if (self.text.0..self.text.1).contains(&addr) {
            return true;
        }
        let i = self.code.partition_point(|&(a, _)| a <= addr);
        i > 0 && addr < self.code[i - 1].1
    }
}

/// The virtual address an entry maps: `base` of its table plus its index (level 4 entries in
/// the upper half are sign-extended, as the CPU does).
fn entry_vaddr(base: u64, index: usize, level: u8) -> u64 {
    let v = base + ((index as u64) << (12 + 9 * (u32::from(level) - 1)));
    if level == 4 && index >= 256 {
        v | 0xffff_0000_0000_0000
    } else {
        v
    }
}

fn walk(
    table: &PageTable,
    level: u8,
    base: u64,
    writable: bool,
    executable: bool,
    expected: &Expected<'_>,
    out: &mut WxAudit,
) {
    for (i, entry) in table.iter().enumerate() {
        let f = entry.flags();
        if !f.contains(F::PRESENT) {
            continue;
        }
        let vaddr = entry_vaddr(base, i, level);
        let w = writable && f.contains(F::WRITABLE);
        let x = executable && !f.contains(F::NO_EXECUTE);
        if level == 2 && !f.contains(F::HUGE_PAGE) {
            // SAFETY: a present non-leaf entry points at a page table; memory is identity-mapped.
            let leaves = unsafe { &*(entry.addr().as_u64() as *const PageTable) };
            count_leaves(leaves, vaddr, w, x, expected, out);
        } else if level == 1 || f.contains(F::HUGE_PAGE) {
            // Only a tampered table has a huge leaf (the kernel maps 4 KiB pages only).
            let pages = 1u64 << (9 * (u32::from(level) - 1));
            out.mapped_pages += pages;
            if entry.addr().as_u64() != vaddr {
                out.non_identity_pages += pages;
                out.first_non_identity.get_or_insert(vaddr);
            }
            if x {
                out.executable_pages += pages;
                out.unexpected_executable_pages += pages;
                out.first_unexpected_executable.get_or_insert(vaddr);
            }
            if w && x {
                out.writable_executable_pages += pages;
            }
        } else {
            // SAFETY: a present non-leaf entry points at a page table; memory is identity-mapped.
            let next = unsafe { &*(entry.addr().as_u64() as *const PageTable) };
            walk(next, level - 1, vaddr, w, x, expected, out);
        }
    }
}

/// Counts one last-level table's 512 entries under the permissions its parents allow, and
/// checks that each present entry maps its own frame (`base` is the virtual address of entry
/// 0). Most of an audit is spent here (every 4 KiB page of RAM is one entry), so it counts with
/// arithmetic instead of branches, 8 entries at a time: under TCG every branch ends a
/// translation block, and this form made a 128 MiB audit about 4× faster (1.0 ms to
/// 0.2–0.3 ms under TCG, in `/_tuk/status`'s `last_round_parts_us.wx_audit`). Only a table
/// with executable or non-identity entries (the kernel's text, component code, or tampering)
/// is looked at entry by entry afterwards.
fn count_leaves(
    table: &PageTable,
    base: u64,
    writable: bool,
    executable: bool,
    expected: &Expected<'_>,
    out: &mut WxAudit,
) {
    const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
    let parent_w = u64::from(writable);
    let parent_x = u64::from(executable);
    let (mut mapped, mut exec, mut wx, mut moved) = (0u64, 0u64, 0u64, 0u64);
    for chunk in 0..512 / 8 {
        for i in chunk * 8..chunk * 8 + 8 {
            let bits = table[i].flags().bits() | table[i].addr().as_u64();
            let present = bits & F::PRESENT.bits();
            let w = (bits & F::WRITABLE.bits()) >> 1;
            let x = present & !(bits >> 63) & parent_x;
            let frame = bits & ADDRESS;
            mapped += present;
            exec += x;
            wx += x & w & parent_w;
            moved += present & u64::from(frame != base + (i as u64) * PAGE);
        }
    }
    out.mapped_pages += mapped;
    out.executable_pages += exec;
    out.writable_executable_pages += wx;
    out.non_identity_pages += moved;
    if exec == 0 && moved == 0 {
        return;
    }
    for (i, entry) in table.iter().enumerate() {
        let f = entry.flags();
        if !f.contains(F::PRESENT) {
            continue;
        }
        let vaddr = base + (i as u64) * PAGE;
        if entry.addr().as_u64() != vaddr {
            out.first_non_identity.get_or_insert(vaddr);
        }
        if executable && !f.contains(F::NO_EXECUTE) && !expected.contains(vaddr) {
            out.unexpected_executable_pages += 1;
            out.first_unexpected_executable.get_or_insert(vaddr);
        }
    }
}

/// The guest-physical address of the live top-level page table (CR3), for the status report.
pub fn root() -> u64 {
    Cr3::read().0.start_address().as_u64()
}

/// Walks the live page tables: counts writable+executable pages, compares the executable
/// pages with the expected set (the kernel's text plus the code [`protect`] made
/// read+execute), and checks that every present page maps its own frame.
pub fn audit_wx() -> WxAudit {
    let (frame, _) = Cr3::read();
    let code = EXECUTABLE.lock();
    let expected = Expected {
        text: kernel_sections().text,
        code: &code,
    };
    // SAFETY: CR3 points at the live, identity-mapped top-level table.
    let pml4 = unsafe { &*(frame.start_address().as_u64() as *const PageTable) };
    let mut out = WxAudit::default();
    walk(pml4, 4, 0, true, true, &expected, &mut out);
    let (t0, t1) = expected.text;
    out.expected_executable_pages = (t1.next_multiple_of(PAGE) - (t0 & !(PAGE - 1))) / PAGE
        + code.iter().map(|(a, b)| (b - a) / PAGE).sum::<u64>();
    let found_expected = out.executable_pages - out.unexpected_executable_pages;
    out.missing_executable_pages = out.expected_executable_pages.saturating_sub(found_expected);
    for &(start, end) in SEALED.lock().iter() {
        let mut addr = start;
        while addr < end {
            out.sealed_pages += 1;
            let sealed = leaf_entry(pml4, addr).is_some_and(|e| {
                e & (F::PRESENT | F::WRITABLE | F::NO_EXECUTE).bits()
                    == (F::PRESENT | F::NO_EXECUTE).bits()
                    && e & 0x000f_ffff_ffff_f000 == addr
            });
            if !sealed {
                out.unsealed_pages += 1;
                out.first_unsealed.get_or_insert(addr);
            }
            addr += PAGE;
        }
    }
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
    let mut executable = EXECUTABLE.lock();
    if prot == Protection::ReadExecute {
        exec_add(&mut executable, start, end.next_multiple_of(PAGE));
    } else {
        exec_remove(&mut executable, start, end.next_multiple_of(PAGE));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtectError {
    Unaligned(u64),
    NotMapped(u64),
    NoTables,
}
