//! plainvm ring-3 entry: the "plainvm" ELF note, the per-vCPU stacks and the first instructions.
//!
//! plainvm starts every vCPU at `plainvm_ring3_entry` in 64-bit ring 3 with RSP=0 and
//! RDI=vCPU index, RSI=vCPU count, RDX=RAM size below 4 GiB, RCX=command-line address, and an IDT
//! whose breakpoint vector halts the vCPU for good (`int3`, halt.rs).
//! vCPU 0 writes POST code 1 first; then each vCPU takes its own 64 KiB stack (index < 8; vCPUs
//! beyond that halt through `int3`, which needs no stack of theirs, and vCPU 0 reports the error)
//! and calls `testguest_main(idx, ncpus, ram, cmdline)` with the registers unchanged.
//! The PVH path lands on `testguest_pvh_ring3` after its `iretq`, with the same registers.

use core::arch::global_asm;

use crate::MAX_VCPUS;

/// Stack bytes per vCPU.
const STACK_SIZE: u64 = 64 * 1024;

global_asm!(
    r#"
    .pushsection .note.plainvm, "a", @note
    .balign 4
    .long 8                     /* namesz: "plainvm\0" */
    .long 8                     /* descsz */
    .long 1                     /* type */
    .asciz "plainvm"
    .quad plainvm_ring3_entry   /* desc: guest-physical ring-3 entry, u64 LE */
    .popsection

    .pushsection .bss.stacks, "aw", @nobits
    .balign 4096
testguest_stacks:
    .skip {max} * {stack}
    .popsection

    .pushsection .text.entry, "ax", @progbits
    .globl plainvm_ring3_entry
    .type plainvm_ring3_entry, @function
plainvm_ring3_entry:
    testl %edi, %edi
    jnz .Lentry_common
    movb $1, %al
    outb %al, $0x80             /* POST 1: vCPU 0 reached ring-3 code */
.Lentry_common:
    cld
    cmpq ${max}, %rdi
    jae .Lentry_park
    leaq 1(%rdi), %rax
    shlq ${stack_shift}, %rax
    leaq testguest_stacks(%rip), %rsp
    addq %rax, %rsp             /* top of stack number RDI */
    xorl %ebp, %ebp
    call testguest_main         /* (rdi, rsi, rdx, rcx) as given; never returns */
.Lentry_park:
    int3                        /* the halt gate (halt.rs) */
    jmp .Lentry_park
    .size plainvm_ring3_entry, . - plainvm_ring3_entry

    .globl testguest_pvh_ring3
    .type testguest_pvh_ring3, @function
testguest_pvh_ring3:
    movb $1, %al
    outb %al, $0x80             /* POST 1 */
    jmp .Lentry_common
    .size testguest_pvh_ring3, . - testguest_pvh_ring3
    .popsection
"#,
    max = const MAX_VCPUS,
    stack = const STACK_SIZE,
    stack_shift = const STACK_SIZE.trailing_zeros(),
    options(att_syntax)
);
