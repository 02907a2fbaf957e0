//! PVH entry: from 32-bit protected mode (paging off, EBX = `hvm_start_info`) to Rust.
//!
//! The PVH ABI (Xen's `XEN_ELFNOTE_PHYS32_ENTRY`, also used by QEMU `-kernel` and Firecracker)
//! enters at a 32-bit physical address with flat segments and paging off. This stub:
//! 1. reads the TSC first, so the kernel can report guest-only boot time;
//! 2. builds temporary identity page tables for the first 1 GiB (2 MiB pages); the final,
//!    W^X-enforcing tables are built in Rust by `paging::init`;
//! 3. enables SSE (CR0.EM=0, TS=0, MP=1; CR4.OSFXSR|OSXMMEXCPT), PAE, long mode and NXE;
//! 4. loads a minimal 64-bit GDT, switches to the boot stack, executes one SSE instruction
//!    (so a platform that cannot run SSE fails at boot) and calls `kernel_entry`.
//!
//! The boot stack has a guard page below it, unmapped by `paging::init`, so an overflow is a
//! page fault (handled on its own IST stack) instead of silent corruption.

use core::arch::global_asm;

/// Size of the boot (and only) kernel stack.
/// Wasm runs on it too: it must exceed `tuk_engine::MAX_WASM_STACK` with room for the kernel.
pub const BOOT_STACK_SIZE: usize = 1024 * 1024;

global_asm!(
    r#"
.section .note.Xen, "a"
.align 4
.long 4                 /* namesz */
.long 4                 /* descsz */
.long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
.asciz "Xen"
.align 4
.long pvh_start32

.section .text.boot, "ax"
.code32
.global pvh_start32
pvh_start32:
    cld
    mov esi, ebx                    /* keep hvm_start_info */
    /* The PVH ABI leaves ESP undefined (Xen enters with 0; QEMU happens to pass a usable one):
       the far return below pushes, so take the boot stack (identity-mapped, below 4 GiB) now. */
    lea esp, [boot_stack_top]
    rdtsc
    mov [BOOT_TSC], eax
    mov [BOOT_TSC + 4], edx

    /* identity map 0..1 GiB with 2 MiB pages */
    lea eax, [early_pdpt]
    or eax, 3
    mov [early_pml4], eax
    lea eax, [early_pd]
    or eax, 3
    mov [early_pdpt], eax
    xor ecx, ecx
1:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83                    /* present | writable | huge */
    mov [early_pd + ecx*8], eax
    inc ecx
    cmp ecx, 512
    jne 1b
    lea eax, [early_pml4]
    mov cr3, eax

    mov eax, cr4
    or eax, 0x620                   /* PAE | OSFXSR | OSXMMEXCPT */
    mov cr4, eax
    mov ecx, 0xC0000080             /* IA32_EFER */
    rdmsr
    or eax, 0x900                   /* LME | NXE */
    wrmsr
    mov eax, cr0
    and eax, 0xFFFFFFF3             /* clear EM, TS */
    or eax, 0x80000002              /* PG | MP */
    mov cr0, eax

    lgdt [early_gdt_ptr]
    push 0x08
    lea eax, [pvh_start64]
    push eax
    retf

.code64
pvh_start64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor ax, ax
    mov fs, ax
    mov gs, ax
    lea rsp, [boot_stack_top]
    xor rbp, rbp
    /* Execute one SSE instruction now: compiled Wasm needs SSE, and a hypervisor that cannot
       run it (nested PVM KVM, docs/platform.md) must fail the boot, not a later request. */
    xorps xmm0, xmm0
    mov edi, esi                    /* arg 0: physical address of hvm_start_info */
    call kernel_entry
2:  cli
    hlt
    jmp 2b

.section .data.boot, "aw"
.align 16
early_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF        /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF        /* 0x10: data */
early_gdt_ptr:
    .word early_gdt_ptr - early_gdt - 1
    .long early_gdt

.global BOOT_TSC
.align 8
BOOT_TSC:
    .quad 0

.section .bss.boot, "aw", @nobits
.align 4096
early_pml4: .space 4096
early_pdpt: .space 4096
early_pd:   .space 4096
.global boot_stack_guard
boot_stack_guard: .space 4096
boot_stack_bottom: .space {stack_size}
.global boot_stack_top
boot_stack_top:
"#,
    stack_size = const BOOT_STACK_SIZE,
);

extern "C" {
    static BOOT_TSC: u64;
    static boot_stack_guard: u8;
}

/// TSC value read at the first instruction of the PVH entry.
pub fn boot_tsc() -> u64 {
    // SAFETY: written once by the entry stub before any Rust code runs; read-only afterwards.
    unsafe { core::ptr::read_volatile(&raw const BOOT_TSC) }
}

/// Address of the boot stack's guard page (left unmapped by paging).
pub fn stack_guard_page() -> u64 {
    &raw const boot_stack_guard as u64
}
