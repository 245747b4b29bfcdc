//! Guest memory: the physical address layout, the RAM regions around the MMIO gap, the e820 map.

pub mod ksm;
pub mod slots;

use plainvm_devices::GuestRam;
use vm_memory::GuestAddress;

/// GDT shared by every boot mode.
pub const GDT_ADDR: u64 = 0x500;
/// The 64-bit TSS used by the ring-3 boot mode.
pub const TSS_ADDR: u64 = 0x1000;
/// The ring-3 boot mode's IDT, holding only the halt gate (`boot::halt_gate`).
pub const IDT_ADDR: u64 = 0x4000;
/// The ring-0 code the halt gate leads to, after the IDT.
pub const HALT_CODE_ADDR: u64 = 0x4800;
/// Top of the ring-0 stack (the TSS's RSP0) the halt gate's interrupt frame goes to.
pub const RING0_STACK_TOP: u64 = 0x5000;
/// PVH `hvm_start_info`, followed by its module list.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map, or the Linux zero page: a guest uses one boot protocol only.
pub const BOOT_PARAMS_ADDR: u64 = 0x7000;
/// Kernel command line (NUL-terminated).
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Identity-mapping page tables: PML4, PDPT, then page directories.
pub const PAGE_TABLES_ADDR: u64 = 0x30000;
/// End of the page-table area: the MP table follows.
pub const PAGE_TABLES_END: u64 = 0x9f000;
/// MP configuration table (the floating pointer sits at `MPTABLE_FLOAT_ADDR`).
pub const MPTABLE_ADDR: u64 = 0x9f000;
/// MP floating pointer: in the last KiB of base memory, where Linux looks for it.
pub const MPTABLE_FLOAT_ADDR: u64 = 0x9fc00;
/// End of base memory (the legacy VGA/BIOS hole follows up to 1 MiB).
pub const BASE_MEM_END: u64 = 0xa0000;
/// Start of "high" memory where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO gap below 4 GiB: no RAM from here to 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// IOAPIC registers.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// An e820 entry type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

/// One range of the guest's physical memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// Errors setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} MiB of guest memory: {source}; try a smaller --memory")]
    Map {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Where guest RAM lives for a VM of `size` bytes: below the MMIO gap, then above 4 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub size: u64,
}

impl Layout {
    /// The layout for `size` bytes of RAM.
    pub fn new(size: u64) -> Self {
        Self { size }
    }

    /// End of the RAM below the MMIO gap.
    pub fn low_end(&self) -> u64 {
        self.size.min(MMIO_GAP_START)
    }

    /// Bytes of RAM above 4 GiB.
    pub fn high_size(&self) -> u64 {
        self.size.saturating_sub(MMIO_GAP_START)
    }

    /// The RAM ranges as (guest address, length).
    pub fn ranges(&self) -> Vec<(GuestAddress, usize)> {
        let mut v = vec![(GuestAddress(0), self.low_end() as usize)];
        if self.high_size() > 0 {
            v.push((GuestAddress(MMIO_GAP_END), self.high_size() as usize));
        }
        v
    }

    /// Map the guest's RAM (anonymous, untouched until the guest uses it).
    pub fn create_memory(&self) -> Result<GuestRam, MemoryError> {
        GuestRam::from_ranges(&self.ranges()).map_err(|source| MemoryError::Map {
            size: self.size >> 20,
            source,
        })
    }

    /// The e820 map the guest is told about.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut v = vec![
            E820Entry {
                addr: 0,
                size: MPTABLE_ADDR,
                kind: E820Kind::Ram,
            },
            E820Entry {
                addr: MPTABLE_ADDR,
                size: BASE_MEM_END - MPTABLE_ADDR,
                kind: E820Kind::Reserved,
            },
            E820Entry {
                addr: HIMEM_START,
                size: self.low_end() - HIMEM_START,
                kind: E820Kind::Ram,
            },
        ];
        if self.high_size() > 0 {
            v.push(E820Entry {
                addr: MMIO_GAP_END,
                size: self.high_size(),
                kind: E820Kind::Ram,
            });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_vm_has_one_region_and_a_hole_at_640k() {
        let l = Layout::new(128 << 20);
        assert_eq!(l.ranges(), vec![(GuestAddress(0), 128 << 20)]);
        let e = l.e820();
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].addr + e[2].size, 128 << 20);
        assert!(e
            .iter()
            .all(|x| x.addr >= HIMEM_START || x.addr + x.size <= BASE_MEM_END));
    }

    #[test]
    fn large_vm_skips_the_mmio_gap() {
        let l = Layout::new(4 << 30);
        assert_eq!(
            l.ranges(),
            vec![
                (GuestAddress(0), MMIO_GAP_START as usize),
                (GuestAddress(1 << 32), (1 << 30) as usize)
            ]
        );
        let ram: u64 = l
            .e820()
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (4 << 30) - (HIMEM_START - MPTABLE_ADDR));
        let mem = l.create_memory().unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 4 << 30);
    }
}
