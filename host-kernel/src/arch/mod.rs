//! The architecture fence: everything that touches the CPU lives below this module, and the
//! rest of the kernel names only what is re-exported here (never `x86_64::` directly).

mod x86_64;

pub use self::x86_64::{
    apic::{arm_timer, has_pending, interrupt_count, route, take_pending, Irq},
    boot_info::BootInfo,
    cpu::{disable_interrupts, enable_interrupts, exit_qemu, halt_until_interrupt, ExitCode},
    init_early, init_interrupts, init_paging,
    paging::{audit_wx, kernel_sections, map_mmio, WxAudit},
    parse_boot_info, port,
    time::{now_us, tsc_khz},
};
