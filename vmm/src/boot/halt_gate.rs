//! The ring-3 boot mode's halt gate: `int3` from ring 3 halts that vCPU inside KVM for good.
//!
//! Ring-3 code cannot execute `hlt`, so a test guest with nothing left to do would have to spin.
//! Instead it executes `int3`: the IDT's breakpoint vector is an interrupt gate of DPL 3 that leads
//! (through the ring-0 64-bit code segment of the boot GDT, on the stack the TSS's RSP0 names) to
//! three bytes of ring-0 code, `1: hlt; jmp 1b`. With IF=0 only an NMI or INIT ends a `hlt`, so the
//! vCPU blocks in KVM_RUN and costs no host CPU; kicks from the VMM (pause, snapshot, stop) leave
//! it halted, and if anything does wake it, it halts again. The gate never returns, so every vCPU
//! may share the one ring-0 stack: the interrupt frames written there are never read.
//!
//! Why the breakpoint vector: on hosts whose KVM emulates guest ring 0 (kvm_pvm), `int3` is the one
//! software interrupt from ring 3 that reaches the guest's IDT; `int n` goes to KVM's instruction
//! emulator, which does not implement it in protected mode and raises #UD instead. The other IDT
//! entries are absent, so an exception still ends in a triple fault, as it did without an IDT.
//! The contract is documented in docs/ring3-boot.md.

use crate::memory::{HALT_CODE_ADDR, IDT_ADDR, RING0_STACK_TOP, TSS_ADDR};
use plainvm_devices::GuestRam;
use vm_memory::{Bytes, GuestAddress};

/// The interrupt vector of the halt gate: #BP, raised by `int3`.
pub const VECTOR: u8 = 3;
/// Size of the IDT in bytes: 16-byte gates up to and including `VECTOR`.
pub const IDT_SIZE: usize = (VECTOR as usize + 1) * 16;
/// The ring-0 code the gate leads to: `1: hlt; jmp 1b`.
pub const CODE: [u8; 3] = [0xf4, 0xeb, 0xfd];
/// Offset of RSP0 in the 64-bit TSS.
const TSS_RSP0: u64 = 4;

/// Errors writing the halt gate.
#[derive(Debug, thiserror::Error)]
pub enum HaltGateError {
    #[error("cannot write the halt gate into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// A present 64-bit interrupt gate of DPL 3 to `offset` in code segment `selector`.
fn gate(selector: u16, offset: u64) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(offset as u16).to_le_bytes());
    g[2..4].copy_from_slice(&selector.to_le_bytes());
    g[5] = 0xee; // present, DPL 3, 64-bit interrupt gate
    g[6..8].copy_from_slice(&((offset >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((offset >> 32) as u32).to_le_bytes());
    g
}

/// The IDT: only `VECTOR` is present, leading to `HALT_CODE_ADDR` in ring 0.
pub fn idt() -> [u8; IDT_SIZE] {
    let mut idt = [0u8; IDT_SIZE];
    let at = usize::from(VECTOR) * 16;
    idt[at..at + 16].copy_from_slice(&gate(super::gdt::CODE64, HALT_CODE_ADDR));
    idt
}

/// Write the IDT and the ring-0 code into guest memory, and RSP0 into the TSS (which must be
/// written at `TSS_ADDR` already).
pub fn write(mem: &GuestRam) -> Result<(), HaltGateError> {
    mem.write_slice(&idt(), GuestAddress(IDT_ADDR))
        .map_err(HaltGateError::Write)?;
    mem.write_slice(&CODE, GuestAddress(HALT_CODE_ADDR))
        .map_err(HaltGateError::Write)?;
    mem.write_obj(RING0_STACK_TOP, GuestAddress(TSS_ADDR + TSS_RSP0))
        .map_err(HaltGateError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_leads_ring_3_to_the_halt_code_in_ring_0() {
        let idt = idt();
        let g = &idt[usize::from(VECTOR) * 16..];
        let offset = u64::from(u16::from_le_bytes([g[0], g[1]]))
            | u64::from(u16::from_le_bytes([g[6], g[7]])) << 16
            | u64::from(u32::from_le_bytes([g[8], g[9], g[10], g[11]])) << 32;
        assert_eq!(offset, HALT_CODE_ADDR);
        assert_eq!(u16::from_le_bytes([g[2], g[3]]), super::super::gdt::CODE64);
        assert_eq!(g[5] >> 7, 1, "present");
        assert_eq!((g[5] >> 5) & 3, 3, "DPL 3");
        assert_eq!(g[5] & 0xf, 0xe, "64-bit interrupt gate");
        assert!(idt[..usize::from(VECTOR) * 16].iter().all(|&b| b == 0));
    }

    #[test]
    fn idt_code_and_stack_do_not_overlap() {
        assert!(IDT_ADDR + IDT_SIZE as u64 <= HALT_CODE_ADDR);
        // The interrupt frame (SS, RSP, RFLAGS, CS, RIP) stays above the code.
        assert!(HALT_CODE_ADDR + CODE.len() as u64 <= RING0_STACK_TOP - 5 * 8);
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write(&mem).unwrap();
        let rsp0: u64 = mem.read_obj(GuestAddress(TSS_ADDR + TSS_RSP0)).unwrap();
        assert_eq!(rsp0, RING0_STACK_TOP);
    }
}
