//! The architecture fence: everything that touches the CPU lives below this module, and the
//! rest of the kernel names only what is re-exported here (never `x86_64::` directly).

mod x86_64;

pub use self::x86_64::{
    apic::{
        arm_timer, has_pending, interrupt_count, route, set_timer_hook, start_periodic_timer,
        stop_timer, take_pending, Irq,
    },
    boot_info::BootInfo,
    control::{control_state, descriptor_tables, tss_bytes, ControlState},
    cpu::{
        disable_interrupts, enable_interrupts, exit_qemu, halt_until_interrupt, has_feature,
        random_source, random_u64, ExitCode,
    },
    init_early, init_interrupts, init_paging,
    paging::{
        audit_wx, kernel_rodata, kernel_sections, kernel_text, map_mmio, protect,
        root as page_table_root, seal, sealed_ranges, Protection, WxAudit,
    },
    parse_boot_info, port,
    time::{now_us, set_wall_clock, tsc_khz, wall_clock_ns},
    xen::{
        debug_write as xen_debug_write, detect as detect_hypervisor, events_up as xen_events_up,
        hvm_param as xen_hvm_param, hypervisor, init_events as xen_init_events,
        notify as xen_notify, on_xen, set_exit_hook as xen_set_exit_hook,
        take_events as xen_take_events, unmask as xen_unmask, yield_cpu as xen_yield, Hypervisor,
    },
    XEN_UPCALL_VECTOR,
};
