//! The register state each boot mode starts a vCPU with.

use super::image::Entry;
use super::BootInfo;
use super::{gdt, halt_gate};
use crate::memory::{BOOT_PARAMS_ADDR, CMDLINE_ADDR, GDT_ADDR, IDT_ADDR, PVH_INFO_ADDR, TSS_ADDR};
use kvm_bindings::{kvm_regs, kvm_sregs};

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is always set; IOPL=3 lets ring-3 code use port I/O.
const RFLAGS_RESERVED: u64 = 2;
const RFLAGS_IOPL3: u64 = 3 << 12;

/// Whether vCPU `index` starts running at once (true) or waits for INIT/SIPI from the BSP.
pub fn starts_runnable(entry: Entry, index: u8) -> bool {
    index == 0 || matches!(entry, Entry::Ring3(_))
}

/// General registers of vCPU `index` of `count`.
pub fn regs(boot: &BootInfo, index: u8, count: u8) -> kvm_regs {
    let mut r = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match boot.entry {
        Entry::Ring3(rip) => {
            r.rip = rip;
            r.rflags |= RFLAGS_IOPL3;
            r.rdi = u64::from(index);
            r.rsi = u64::from(count);
            r.rdx = boot.low_ram;
            r.rcx = if boot.has_cmdline { CMDLINE_ADDR } else { 0 };
        }
        Entry::Pvh(rip) => {
            r.rip = rip;
            r.rbx = PVH_INFO_ADDR;
        }
        Entry::Linux64(rip) => {
            r.rip = rip;
            r.rsi = BOOT_PARAMS_ADDR;
        }
    }
    r
}

/// Special registers: start from KVM's reset state `s` and set mode, segments and paging.
pub fn sregs(boot: &BootInfo, mut s: kvm_sregs) -> kvm_sregs {
    let table = gdt::table(TSS_ADDR);
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    (s.idt.base, s.idt.limit) = match boot.entry {
        Entry::Ring3(_) => (IDT_ADDR, (halt_gate::IDT_SIZE - 1) as u16),
        Entry::Linux64(_) | Entry::Pvh(_) => (0, 0),
    };
    s.tr = gdt::segment(&table, gdt::TSS);
    let (code, data) = match boot.entry {
        Entry::Ring3(_) => (gdt::USER_CODE64, gdt::USER_DATA),
        Entry::Linux64(_) => (gdt::CODE64, gdt::DATA),
        Entry::Pvh(_) => (gdt::CODE32, gdt::DATA),
    };
    s.cs = gdt::segment(&table, code);
    let d = gdt::segment(&table, data);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
    match boot.entry {
        Entry::Pvh(_) => {
            s.cr0 = CR0_PE | CR0_ET;
            s.cr4 = 0;
            s.efer = 0;
        }
        Entry::Ring3(_) | Entry::Linux64(_) => {
            s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
            s.cr3 = boot.cr3;
            s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
            s.efer = EFER_LME | EFER_LMA;
        }
    }
    s
}
