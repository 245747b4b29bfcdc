//! The Intel MultiProcessor table: how a Linux guest without ACPI finds its vCPUs and IOAPIC.

use crate::memory::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR, MPTABLE_FLOAT_ADDR};
use plainvm_devices::GuestRam;
use vm_memory::{Bytes, GuestAddress};

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// IRQ lines the IOAPIC offers (ISA IRQs map 1:1 to its pins).
const IOAPIC_PINS: u8 = 24;

/// Fix a structure's checksum byte at `at` so that all of `bytes` sums to zero.
fn checksum(bytes: &mut [u8], at: usize) {
    bytes[at] = 0;
    let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    bytes[at] = 0u8.wrapping_sub(sum);
}

/// Build the configuration table (header and entries) for `cpus` vCPUs.
fn config_table(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        entries.extend([0, id, 0x14, if id == 0 { 3 } else { 1 }]);
        entries.extend(0x600u32.to_le_bytes()); // signature: family 6
        entries.extend(0x201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([1, 0]);
    entries.extend(*b"ISA   ");
    entries.extend([2, ioapic_id, 0x11, 1]);
    entries.extend((IOAPIC_ADDR as u32).to_le_bytes());
    count += 2;
    for irq in 0..IOAPIC_PINS {
        entries.extend([3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend([4, 3, 0, 0, 0, 0, 0, 0]); // ExtINT to LINT0 of every CPU
    entries.extend([4, 1, 0, 0, 0, 0, 0xff, 1]); // NMI to LINT1 of every CPU
    count += 2;

    let mut t = Vec::with_capacity(44 + entries.len());
    t.extend(*b"PCMP");
    t.extend(((44 + entries.len()) as u16).to_le_bytes());
    t.extend([4, 0]); // spec revision 1.4, checksum
    t.extend(*b"PLAINVM ");
    t.extend(*b"plainvm     ");
    t.extend([0u8; 6]); // OEM table pointer and size
    t.extend(count.to_le_bytes());
    t.extend((LAPIC_ADDR as u32).to_le_bytes());
    t.extend([0u8; 4]); // extended table length, checksum, reserved
    t.extend(entries);
    checksum(&mut t, 7);
    t
}

/// Write the floating pointer and the configuration table for `cpus` vCPUs.
pub fn write(mem: &GuestRam, cpus: u8) -> Result<(), MptableError> {
    let table = config_table(cpus);
    debug_assert!(MPTABLE_ADDR + table.len() as u64 <= MPTABLE_FLOAT_ADDR);
    let mut fp = Vec::with_capacity(16);
    fp.extend(*b"_MP_");
    fp.extend((MPTABLE_ADDR as u32).to_le_bytes());
    fp.extend([1, 4, 0, 0, 0, 0, 0, 0]);
    checksum(&mut fp, 10);
    mem.write_slice(&table, GuestAddress(MPTABLE_ADDR))
        .and_then(|_| mem.write_slice(&fp, GuestAddress(MPTABLE_FLOAT_ADDR)))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_checksum_to_zero_and_fit() {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let max = crate::config::MAX_VCPUS;
        write(&mem, max).unwrap();
        let t = config_table(max);
        assert!(MPTABLE_ADDR + t.len() as u64 <= MPTABLE_FLOAT_ADDR);
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let mut fp = [0u8; 16];
        mem.read_slice(&mut fp, GuestAddress(MPTABLE_FLOAT_ADDR))
            .unwrap();
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(fp.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let entries = u16::from_le_bytes([t[34], t[35]]);
        assert_eq!(entries, u16::from(max) + 2 + 24 + 2);
    }
}
