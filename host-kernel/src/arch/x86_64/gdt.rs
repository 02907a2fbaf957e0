//! The kernel's GDT and TSS. The TSS carries the interrupt stack table (IST): exceptions that
//! can arrive on a broken stack (double fault, page fault from a stack overflow, NMI, machine
//! check) run on their own stacks so their diagnosis still prints.

use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slot (0-based index into the TSS's table) for #DF.
pub const IST_DOUBLE_FAULT: u16 = 0;
/// IST slot for #PF (a kernel stack overflow faults on the guard page).
pub const IST_PAGE_FAULT: u16 = 1;
/// IST slot for NMI and #MC.
pub const IST_NMI_MC: u16 = 2;

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

// The IST stacks are only ever touched by the CPU when it delivers an exception.
static mut IST_STACKS: [IstStack; 3] = [const { IstStack([0; IST_STACK_SIZE]) }; 3];

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(
    GlobalDescriptorTable,
    SegmentSelector,
    SegmentSelector,
    SegmentSelector,
)> = Once::new();

pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        for (slot, index) in [IST_DOUBLE_FAULT, IST_PAGE_FAULT, IST_NMI_MC]
            .into_iter()
            .enumerate()
        {
            let base = (&raw const IST_STACKS) as u64 + (slot * IST_STACK_SIZE) as u64;
            tss.interrupt_stack_table[usize::from(index)] =
                VirtAddr::new(base + IST_STACK_SIZE as u64);
        }
        tss
    });
    let (gdt, code, data, tss_sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        (gdt, code, data, tss_sel)
    });
    gdt.load();
    // SAFETY: the selectors come from the GDT just loaded and describe flat 64-bit kernel
    // segments; the TSS selector points at a 'static TSS.
    unsafe {
        CS::set_reg(*code);
        SS::set_reg(*data);
        DS::set_reg(*data);
        ES::set_reg(*data);
        load_tss(*tss_sel);
    }
}

/// The TSS's bytes (its interrupt stack table), for the integrity monitor's fingerprint.
pub fn tss_bytes() -> Option<&'static [u8]> {
    let tss = TSS.get()?;
    // SAFETY: the TSS is a 'static value initialised once at boot and never written again
    // by the kernel; reading its bytes is a plain read of initialised memory.
    Some(unsafe {
        core::slice::from_raw_parts(
            (tss as *const TaskStateSegment).cast::<u8>(),
            core::mem::size_of::<TaskStateSegment>(),
        )
    })
}
