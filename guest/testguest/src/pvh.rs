//! PVH entry (Xen "PHYS32_ENTRY" note): 32-bit protected mode -> long mode -> iretq to ring 3.
//!
//! All of this runs in ring 0, which this host emulates at about 2 MIPS, so it is a few hundred
//! instructions plus two short loops: zero 6 page-table pages, fill 2048 PD entries (2 MiB pages,
//! identity 0-4 GiB, User bit at every level), load a GDT (kernel code/data, user data/code DPL3,
//! TSS) and a 32-vector IDT whose stubs print the vector, RIP, CS and RFLAGS and power off, read the
//! `hvm_start_info` (cmdline, and RAM size = highest RAM end below 4 GiB from the v1 memmap), run
//! the optional `int3` self-test, make vector 3 the halt gate of the plainvm ring-3 boot mode (a
//! DPL-3 gate to `hlt` forever, see halt.rs), then `iretq` to `testguest_pvh_ring3` with IOPL=3,
//! IF=0 and RDI=0, RSI=1, RDX=RAM size, RCX=cmdline, like the plainvm ring-3 entry.
//!
//! The TSS carries an I/O permission bitmap that allows every port: on the nested PVM KVM of the
//! development hosts the IOPL=3 in the `iretq` frame is dropped (ring 3 then sees IOPL=0) and IOPL
//! is not what grants ring-3 port I/O there anyway; the TSS bitmap is (see io.rs).
//!
//! hvm_start_info (Xen public/arch-x86/hvm/start_info.h): magic u32 @0 (0x336ec578), version u32
//! @4, cmdline_paddr u64 @24, rsdp_paddr u64 @32, memmap_paddr u64 @40, memmap_entries u32 @48
//! (version >= 1); memmap entries are {addr u64, size u64, type u32 (1 = RAM), reserved u32}.

use core::arch::global_asm;

global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 4                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32           /* desc: 32-bit entry address */
    .popsection

    .pushsection .data.pvh, "aw", @progbits
    .balign 16
pvh_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff    /* 0x10 kernel data */
    .quad 0x00cff2000000ffff    /* 0x18 user data, DPL3 */
    .quad 0x00affa000000ffff    /* 0x20 user code, 64-bit, DPL3 */
    .word 104 + 8192, 0         /* 0x28 TSS: limit (TSS + I/O bitmap + 0xff), base 15:0 */
    .byte 0, 0x89, 0, 0         /*      base 23:16, present available 64-bit TSS, base 31:24 */
    .quad 0                     /*      base 63:32, reserved */
pvh_gdt_end:
    .balign 8
pvh_gdt_ptr:
    .word pvh_gdt_end - pvh_gdt - 1
    .quad pvh_gdt
    .balign 8
pvh_idt_ptr:
    .word 32 * 16 - 1
    .quad pvh_idt
    .popsection

    .pushsection .bss.pagetables, "aw", @nobits
    .balign 4096
pvh_pml4:
    .skip 4096
pvh_pdpt:
    .skip 4096
pvh_pd:
    .skip 4 * 4096
pvh_tss:                        /* 64-bit TSS, then an I/O bitmap allowing every port, then 0xff */
    .skip 104 + 8192 + 1
    .popsection

    .pushsection .bss.pvh, "aw", @nobits
    .balign 16
pvh_idt:
    .skip 32 * 16
    .balign 16
pvh_r0_stack:
    .skip 4096
pvh_r0_stack_top:
    .popsection

    .pushsection .rodata.pvh, "a", @progbits
pvh_msg_bp:
    .asciz "BP-HANDLER-RAN\n"
pvh_msg_int3ok:
    .asciz "INT3-OK\n"
pvh_msg_badmagic:
    .asciz "PVH-BAD-START-INFO\n"
pvh_msg_exc:
    .asciz "TESTGUEST-EXCEPTION vector=0x"
pvh_msg_rip:
    .asciz " rip=0x"
pvh_msg_cs:
    .asciz " cs=0x"
pvh_msg_rflags:
    .asciz " rflags=0x"
pvh_msg_nl:
    .asciz "\n"
    .popsection

    .pushsection .text.pvh, "ax", @progbits
    .code32
    .globl pvh_start32
    .type pvh_start32, @function
pvh_start32:
    cld
    movl $pvh_r0_stack_top, %esp
    movl %ebx, %ebp                     /* hvm_start_info */

    /* Zero PML4, PDPT, 4 PDs, TSS and I/O bitmap; link the tables; fill 2048 2 MiB entries. */
    movl $pvh_pml4, %edi
    xorl %eax, %eax
    movl $((6 * 4096 + 104 + 8192) / 4), %ecx
    rep stosl
    movl $(pvh_pdpt + 7), pvh_pml4      /* P | RW | US */
    movl $(pvh_pd + 7), pvh_pdpt
    movl $(pvh_pd + 0x1007), pvh_pdpt + 8
    movl $(pvh_pd + 0x2007), pvh_pdpt + 16
    movl $(pvh_pd + 0x3007), pvh_pdpt + 24
    movl $pvh_pd, %edi
    movl $0x87, %eax                    /* P | RW | US | PS */
    movl $2048, %ecx
.Lpvh_pd_loop:
    movl %eax, (%edi)
    addl $8, %edi
    addl $0x200000, %eax
    loop .Lpvh_pd_loop

    movl $pvh_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x620, %eax                    /* PAE | OSFXSR | OSXMMEXCPT */
    movl %eax, %cr4
    movl $0xc0000080, %ecx              /* EFER.LME */
    rdmsr
    orl $0x100, %eax
    wrmsr
    lgdt pvh_gdt_ptr
    movl %cr0, %eax
    andl $0xfffffff3, %eax              /* clear EM, TS */
    orl $0x80000023, %eax               /* PG | NE | MP | PE */
    movl %eax, %cr0
    ljmp $0x08, $pvh_start64

    .code64
pvh_start64:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    leaq pvh_r0_stack_top(%rip), %rsp

    /* TSS: RSP0 = ring-0 stack (for exceptions from ring 3), no I/O bitmap. */
    movq %rsp, pvh_tss + 4(%rip)
    movw $104, pvh_tss + 102(%rip)
    movb $0xff, pvh_tss + 104 + 8192(%rip)
    leaq pvh_tss(%rip), %rax
    movw %ax, pvh_gdt + 0x2a(%rip)
    shrl $16, %eax
    movb %al, pvh_gdt + 0x2c(%rip)
    movb %ah, pvh_gdt + 0x2f(%rip)
    movw $0x28, %ax
    ltr %ax

    /* IDT: vectors 0-31 -> 16-byte stubs. */
    leaq pvh_exc_stubs(%rip), %rax
    xorl %edi, %edi
.Lpvh_idt_loop:
    call pvh_set_gate
    addq $16, %rax
    incl %edi
    cmpl $32, %edi
    jb .Lpvh_idt_loop
    lidt pvh_idt_ptr(%rip)

    /* hvm_start_info: r12 = cmdline, r13 = RAM size below 4 GiB. */
    xorl %r12d, %r12d
    xorl %r13d, %r13d
    cmpl $0x336ec578, (%rbp)
    je .Lpvh_magic_ok
    leaq pvh_msg_badmagic(%rip), %rsi
    call pvh_puts
    jmp .Lpvh_info_done
.Lpvh_magic_ok:
    movq 24(%rbp), %r12
    cmpl $1, 4(%rbp)
    jb .Lpvh_info_done
    movq 40(%rbp), %rsi
    movl 48(%rbp), %ecx
    movabsq $0x100000000, %r8
    testl %ecx, %ecx
    jz .Lpvh_info_done
.Lpvh_mmap_loop:
    cmpl $1, 16(%rsi)
    jne .Lpvh_mmap_next
    movq (%rsi), %rax
    cmpq %r8, %rax
    jae .Lpvh_mmap_next
    addq 8(%rsi), %rax
    cmpq %r8, %rax
    jbe .Lpvh_mmap_below
    movq %r8, %rax
.Lpvh_mmap_below:
    cmpq %r13, %rax
    jbe .Lpvh_mmap_next
    movq %rax, %r13
.Lpvh_mmap_next:
    addq $24, %rsi
    decl %ecx
    jnz .Lpvh_mmap_loop
.Lpvh_info_done:

    /* Optional int3 self-test: look for the word "int3" in the command line. */
    testq %r12, %r12
    jz .Lpvh_to_ring3
    movq %r12, %rsi
    movb $0x20, %cl                     /* previous character: start counts as a space */
.Lpvh_scan:
    movb (%rsi), %al
    testb %al, %al
    jz .Lpvh_to_ring3
    cmpb $0x20, %cl
    jne .Lpvh_scan_next
    cmpl $0x33746e69, (%rsi)            /* "int3" */
    jne .Lpvh_scan_next
    movb 4(%rsi), %dl
    testb %dl, %dl
    jz .Lpvh_int3
    cmpb $0x20, %dl
    je .Lpvh_int3
.Lpvh_scan_next:
    movb %al, %cl
    incq %rsi
    jmp .Lpvh_scan
.Lpvh_int3:
    leaq pvh_bp_handler(%rip), %rax
    movl $3, %edi
    call pvh_set_gate
    int3
    leaq pvh_msg_int3ok(%rip), %rsi
    call pvh_puts

.Lpvh_to_ring3:
    /* The halt gate: int3 from ring 3 halts for good (vector 3, DPL 3). */
    leaq pvh_halt(%rip), %rax
    movl $3, %edi
    call pvh_set_gate
    movb $0xee, pvh_idt + 3 * 16 + 5(%rip)
    movl $0x1b, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %fs
    movl %eax, %gs
    pushq $0x1b                         /* SS: user data | RPL3 */
    pushq $0                            /* RSP: the ring-3 entry picks its own stack */
    pushq $0x3002                       /* RFLAGS: IOPL=3 (see module doc), IF=0 */
    pushq $0x23                         /* CS: user code | RPL3 */
    leaq testguest_pvh_ring3(%rip), %rax
    pushq %rax
    xorl %edi, %edi                     /* vCPU index 0 */
    movl $1, %esi                       /* 1 vCPU */
    movq %r13, %rdx                     /* RAM size */
    movq %r12, %rcx                     /* command line */
    iretq
    .size pvh_start32, . - pvh_start32

/* IDT gate for vector %edi -> handler %rax (interrupt gate, DPL0, CS 0x08); keeps rax, rdi. */
pvh_set_gate:
    pushq %rax
    pushq %rdi
    shlq $4, %rdi
    leaq pvh_idt(%rip), %rdx
    addq %rdx, %rdi
    movw %ax, (%rdi)
    movw $0x08, 2(%rdi)
    movw $0x8e00, 4(%rdi)
    shrq $16, %rax
    movw %ax, 6(%rdi)
    shrq $16, %rax
    movl %eax, 8(%rdi)
    movl $0, 12(%rdi)
    popq %rdi
    popq %rax
    ret

/* Print the NUL-terminated string at %rsi on COM1 (clobbers rax, rdx, rsi). */
pvh_puts:
    movw $0x3f8, %dx
.Lpvh_puts_loop:
    lodsb
    testb %al, %al
    jz .Lpvh_puts_done
    outb %al, %dx
    jmp .Lpvh_puts_loop
.Lpvh_puts_done:
    ret

/* Print the low %ecx hex digits of %rax (clobbers rax, rcx, rdx, rsi). */
pvh_puthex:
    movq %rax, %rsi
    shll $2, %ecx
.Lpvh_hex_loop:
    subl $4, %ecx
    movq %rsi, %rax
    shrq %cl, %rax
    andl $15, %eax
    cmpb $10, %al
    jb .Lpvh_hex_digit
    addb $39, %al                       /* 'a' - '0' - 10 */
.Lpvh_hex_digit:
    addb $48, %al                       /* '0' */
    movw $0x3f8, %dx
    outb %al, %dx
    testl %ecx, %ecx
    jnz .Lpvh_hex_loop
    ret

/* The halt gate's target: halt with interrupts off, for good. */
pvh_halt:
    hlt
    jmp pvh_halt

pvh_bp_handler:
    pushq %rax
    pushq %rdx
    pushq %rsi
    leaq pvh_msg_bp(%rip), %rsi
    call pvh_puts
    popq %rsi
    popq %rdx
    popq %rax
    iretq

/* Exception stubs: push the vector, then report vector, RIP, CS and RFLAGS, and power off. */
    .balign 16
pvh_exc_stubs:
    .set pvh_vec, 0
    .rept 32
    .balign 16
    pushq $pvh_vec
    jmp pvh_exc_common
    .set pvh_vec, pvh_vec + 1
    .endr

pvh_exc_common:
    movq (%rsp), %rbx                   /* vector */
    leaq 8(%rsp), %rbp                  /* -> error code or RIP */
    movl $0x60227d00, %eax              /* vectors that push an error code */
    btl %ebx, %eax
    jnc .Lpvh_exc_noerr
    addq $8, %rbp
.Lpvh_exc_noerr:
    leaq pvh_msg_exc(%rip), %rsi
    call pvh_puts
    movq %rbx, %rax
    movl $2, %ecx
    call pvh_puthex
    leaq pvh_msg_rip(%rip), %rsi
    call pvh_puts
    movq (%rbp), %rax
    movl $16, %ecx
    call pvh_puthex
    leaq pvh_msg_cs(%rip), %rsi
    call pvh_puts
    movq 8(%rbp), %rax
    movl $4, %ecx
    call pvh_puthex
    leaq pvh_msg_rflags(%rip), %rsi
    call pvh_puts
    movq 16(%rbp), %rax
    movl $8, %ecx
    call pvh_puthex
    leaq pvh_msg_nl(%rip), %rsi
    call pvh_puts
    movb $0xfe, %al
    outb %al, $0x64
    movl $1, %eax
    outl %eax, $0xf4
.Lpvh_exc_halt:
    cli
    hlt
    jmp .Lpvh_exc_halt
    .popsection
"#,
    options(att_syntax)
);
