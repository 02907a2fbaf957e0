//! The CPU state the integrity monitor compares with its boot-time values: control registers
//! (CR0, CR3, CR4), EFER, and where the descriptor tables are (IDTR, GDTR, the TSS), with
//! read-only views of the tables' bytes so their contents can be fingerprinted.

use x86_64::instructions::tables::{sgdt, sidt};
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::registers::model_specific::Efer;

/// One reading of the control registers and descriptor-table registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlState {
    pub cr0: u64,
    /// CR3 with its flag bits (PCD/PWT).
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub idtr_base: u64,
    pub idtr_limit: u16,
    pub gdtr_base: u64,
    pub gdtr_limit: u16,
}

/// Reads the registers (no side effects).
pub fn control_state() -> ControlState {
    let (frame, flags) = Cr3::read_raw();
    let idtr = sidt();
    let gdtr = sgdt();
    ControlState {
        cr0: Cr0::read_raw(),
        cr3: frame.start_address().as_u64() | u64::from(flags),
        cr4: Cr4::read_raw(),
        efer: Efer::read_raw(),
        idtr_base: idtr.base.as_u64(),
        idtr_limit: idtr.limit,
        gdtr_base: gdtr.base.as_u64(),
        gdtr_limit: gdtr.limit,
    }
}

/// The TSS's bytes (the IST stack pointers), for fingerprinting.
pub fn tss_bytes() -> Option<&'static [u8]> {
    super::gdt::tss_bytes()
}

/// The bytes of the live IDT and GDT, as the IDTR and GDTR locate them, for fingerprinting.
/// `None` for a table the registers place outside the kernel's own image (after tampering
/// with the registers, which the caller reports from the registers themselves).
pub fn descriptor_tables() -> (Option<&'static [u8]>, Option<&'static [u8]>) {
    let s = super::paging::kernel_sections();
    let view = |base: u64, limit: u16| {
        let len = u64::from(limit) + 1;
        (base >= s.text.0 && base.checked_add(len).is_some_and(|end| end <= s.data.1)).then(|| {
            // SAFETY: the range lies inside the kernel image, which is mapped present and
            // readable for the kernel's whole life; the tables are written only at boot.
            unsafe { core::slice::from_raw_parts(base as *const u8, len as usize) }
        })
    };
    let state = control_state();
    (
        view(state.idtr_base, state.idtr_limit),
        view(state.gdtr_base, state.gdtr_limit),
    )
}
