//! The interrupt descriptor table.
//!
//! Every CPU exception is fatal in this kernel (Wasm traps are explicit checks in compiled code,
//! never signals): the handler prints `FATAL: <name> vector=.. rip=.. cr2=.. error=..` on the
//! serial console, bypassing any lock the interrupted code may hold, and exits QEMU with
//! status 3. Device interrupts only record that work is pending (see `apic`).

use core::fmt::Write;

use spin::Once;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

use super::apic::{self, Irq};
use super::cpu::{exit_qemu, read_cr2, ExitCode};
use super::gdt::{IST_DOUBLE_FAULT, IST_NMI_MC, IST_PAGE_FAULT};
use crate::drivers::serial::EmergencyWriter;

static IDT: Once<InterruptDescriptorTable> = Once::new();

/// First vector used for device interrupts; `Irq as u8` is added to it.
pub const IRQ_BASE: u8 = 32;
pub const SPURIOUS_VECTOR: u8 = 0xff;

fn fatal(name: &str, vector: u8, frame: &InterruptStackFrame, error: Option<u64>) -> ! {
    let mut w = EmergencyWriter;
    let _ = write!(
        w,
        "\nFATAL: {name} vector={vector} rip={:#x} rsp={:#x} cr2={:#x}",
        frame.instruction_pointer.as_u64(),
        frame.stack_pointer.as_u64(),
        read_cr2(),
    );
    match error {
        Some(e) => {
            let _ = writeln!(w, " error={e:#x}");
        }
        None => {
            let _ = writeln!(w, " error=none");
        }
    }
    exit_qemu(ExitCode::Fault)
}

macro_rules! fatal_handler {
    ($fn:ident, $name:literal, $vec:literal) => {
        extern "x86-interrupt" fn $fn(frame: InterruptStackFrame) {
            fatal($name, $vec, &frame, None)
        }
    };
    ($fn:ident, $name:literal, $vec:literal, code) => {
        extern "x86-interrupt" fn $fn(frame: InterruptStackFrame, code: u64) {
            fatal($name, $vec, &frame, Some(code))
        }
    };
}

fatal_handler!(divide_error, "divide error (#DE)", 0);
fatal_handler!(debug, "debug (#DB)", 1);
fatal_handler!(nmi, "non-maskable interrupt", 2);
fatal_handler!(breakpoint, "breakpoint (#BP)", 3);
fatal_handler!(overflow, "overflow (#OF)", 4);
fatal_handler!(bound_range, "bound range exceeded (#BR)", 5);
fatal_handler!(invalid_opcode, "invalid opcode (#UD)", 6);
fatal_handler!(device_na, "device not available (#NM)", 7);
fatal_handler!(invalid_tss, "invalid TSS (#TS)", 10, code);
fatal_handler!(segment_np, "segment not present (#NP)", 11, code);
fatal_handler!(stack_segment, "stack-segment fault (#SS)", 12, code);
fatal_handler!(
    general_protection,
    "general protection fault (#GP)",
    13,
    code
);
fatal_handler!(x87_fp, "x87 floating-point exception (#MF)", 16);
fatal_handler!(alignment_check, "alignment check (#AC)", 17, code);
fatal_handler!(simd_fp, "SIMD floating-point exception (#XM)", 19);
fatal_handler!(virtualization, "virtualization exception (#VE)", 20);
fatal_handler!(cp_protection, "control protection (#CP)", 21, code);

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    fatal("double fault (#DF)", 8, &frame, Some(code))
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    fatal("machine check (#MC)", 18, &frame, None)
}

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    let guard = super::boot::stack_guard_page();
    let cr2 = read_cr2();
    let name = if (guard..guard + 4096).contains(&cr2) {
        "kernel stack overflow (#PF on the guard page)"
    } else if code.contains(PageFaultErrorCode::INSTRUCTION_FETCH) {
        "page fault (#PF, instruction fetch: W^X or unmapped)"
    } else if code.contains(PageFaultErrorCode::PROTECTION_VIOLATION)
        && code.contains(PageFaultErrorCode::CAUSED_BY_WRITE)
    {
        "page fault (#PF, write to a read-only page)"
    } else {
        "page fault (#PF)"
    };
    fatal(name, 14, &frame, Some(code.bits()))
}

macro_rules! irq_handler {
    ($fn:ident, $irq:expr) => {
        extern "x86-interrupt" fn $fn(_frame: InterruptStackFrame) {
            apic::interrupt_arrived($irq);
        }
    };
}

irq_handler!(irq_timer, Irq::Timer);
irq_handler!(irq_net, Irq::Net);
irq_handler!(irq_serial, Irq::Serial);
irq_handler!(irq_xen, Irq::Xen);

extern "x86-interrupt" fn spurious(_frame: InterruptStackFrame) {}

pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        idt.divide_error.set_handler_fn(divide_error);
        idt.debug.set_handler_fn(debug);
        idt.breakpoint.set_handler_fn(breakpoint);
        idt.overflow.set_handler_fn(overflow);
        idt.bound_range_exceeded.set_handler_fn(bound_range);
        idt.invalid_opcode.set_handler_fn(invalid_opcode);
        idt.device_not_available.set_handler_fn(device_na);
        idt.invalid_tss.set_handler_fn(invalid_tss);
        idt.segment_not_present.set_handler_fn(segment_np);
        idt.stack_segment_fault.set_handler_fn(stack_segment);
        idt.general_protection_fault
            .set_handler_fn(general_protection);
        idt.x87_floating_point.set_handler_fn(x87_fp);
        idt.alignment_check.set_handler_fn(alignment_check);
        idt.simd_floating_point.set_handler_fn(simd_fp);
        idt.virtualization.set_handler_fn(virtualization);
        idt.cp_protection_exception.set_handler_fn(cp_protection);
        // SAFETY: the IST indices name stacks installed in the TSS by `gdt::init`, which runs
        // first, and no other handler uses them.
        unsafe {
            idt.double_fault
                .set_handler_fn(double_fault)
                .set_stack_index(IST_DOUBLE_FAULT);
            idt.page_fault
                .set_handler_fn(page_fault)
                .set_stack_index(IST_PAGE_FAULT);
            idt.non_maskable_interrupt
                .set_handler_fn(nmi)
                .set_stack_index(IST_NMI_MC);
            idt.machine_check
                .set_handler_fn(machine_check)
                .set_stack_index(IST_NMI_MC);
        }
        idt[IRQ_BASE + Irq::Timer as u8].set_handler_fn(irq_timer);
        idt[IRQ_BASE + Irq::Net as u8].set_handler_fn(irq_net);
        idt[IRQ_BASE + Irq::Serial as u8].set_handler_fn(irq_serial);
        idt[IRQ_BASE + Irq::Xen as u8].set_handler_fn(irq_xen);
        idt[SPURIOUS_VECTOR].set_handler_fn(spurious);
        idt
    });
    idt.load();
}
