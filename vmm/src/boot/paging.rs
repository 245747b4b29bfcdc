//! Identity-mapping page tables (2 MiB pages) for the 64-bit boot modes.

use crate::memory::{PAGE_TABLES_ADDR, PAGE_TABLES_END};
use plainvm_devices::GuestRam;
use vm_memory::{Bytes, GuestAddress};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const USER: u64 = 4;
const HUGE: u64 = 0x80;

/// Errors writing page tables.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    #[error("cannot write the boot page tables into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// Most GiB the page-table area can identity-map (one page directory per GiB).
pub const MAX_MAPPED_GIB: u64 = (PAGE_TABLES_END - PAGE_TABLES_ADDR) / 4096 - 2;

/// Identity-map `[0, gib GiB)` (capped at `MAX_MAPPED_GIB`) and return CR3. With `user`, the pages
/// are accessible from ring 3.
pub fn identity_map(mem: &GuestRam, gib: u64, user: bool) -> Result<u64, PagingError> {
    let gib = gib.clamp(1, MAX_MAPPED_GIB);
    let flags = PRESENT | WRITABLE | if user { USER } else { 0 };
    let pml4 = PAGE_TABLES_ADDR;
    let pdpt = pml4 + 0x1000;
    let pd = pdpt + 0x1000;
    let mut tables = vec![0u64; (2 + gib as usize) * 512];
    tables[0] = pdpt | flags;
    for g in 0..gib {
        tables[512 + g as usize] = (pd + g * 0x1000) | flags;
        for i in 0..512 {
            let addr = (g << 30) | (i << 21);
            tables[1024 + (g * 512 + i) as usize] = addr | flags | HUGE;
        }
    }
    let bytes: Vec<u8> = tables.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(pml4))
        .map_err(PagingError::Write)?;
    Ok(pml4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_addresses_to_themselves() {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cr3 = identity_map(&mem, 4, true).unwrap();
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        let va: u64 = 0xfee0_0123;
        let pdpte = read((read(cr3) & !0xfff) + ((va >> 30) & 511) * 8);
        let pde = read((pdpte & !0xfff) + ((va >> 21) & 511) * 8);
        assert_eq!(pde & !0x1f_ffff_u64 & !0xfff, va & !0x1f_ffff);
        assert_eq!(pde & (USER | HUGE | PRESENT), USER | HUGE | PRESENT);
    }
}
