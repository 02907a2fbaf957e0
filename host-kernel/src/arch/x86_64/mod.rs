//! x86_64 support: PVH boot, GDT/TSS/IDT, paging with W^X, LAPIC/IOAPIC, TSC clock, hypervisor
//! detection (xen.rs).

pub mod apic;
pub mod boot;
pub mod boot_info;
pub mod control;
pub mod cpu;
mod gdt;
mod idt;
pub mod paging;
pub mod port;
pub mod time;
pub mod xen;

/// The vector Xen's event-channel upcall arrives on.
pub const XEN_UPCALL_VECTOR: u8 = idt::IRQ_BASE + apic::Irq::Xen as u8;

/// First stage: descriptor tables and exception handlers, so any fault from here on prints a
/// diagnosis instead of triple-faulting. Needs no heap.
pub fn init_early() {
    gdt::init();
    idt::init();
}

/// Second stage (after the heap and paging): interrupt controllers and the calibrated clock.
/// Returns the TSC frequency in kHz.
pub fn init_interrupts() -> u64 {
    apic::init();
    let khz = time::calibrate();
    apic::calibrate_timer();
    cpu::enable_interrupts();
    khz
}

/// Reads `hvm_start_info` at the physical address the PVH loader passed in EBX.
///
/// Must be called once, from `kernel_entry`, before [`init_paging`] (the boot page tables
/// identity-map the low memory where loaders put the structure).
pub fn parse_boot_info(addr: u64) -> Result<boot_info::BootInfo, boot_info::BootInfoError> {
    // SAFETY: `kernel_entry` calls this first thing with the loader's address, while the boot
    // tables map the first GiB.
    unsafe { boot_info::BootInfo::parse(addr) }
}

/// Switches to the final W^X page tables (see `paging`). The heap must already own RAM in the
/// first GiB.
pub fn init_paging(ram: impl Iterator<Item = (u64, u64)>) {
    paging::init(ram);
}
