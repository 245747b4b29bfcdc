//! Boot parameters handed to the guest: the PVH start_info or the Linux zero page, with the e820
//! map, the command line and the initrd.

use crate::memory::{E820Entry, BOOT_PARAMS_ADDR, CMDLINE_ADDR, PVH_INFO_ADDR, PVH_MODLIST_ADDR};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use plainvm_devices::GuestRam;
use vm_memory::GuestAddress;

/// Errors writing boot parameters.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("cannot write boot parameters into guest memory: {0}")]
    Write(linux_loader::configurator::Error),
    #[error("the e820 map has {0} entries, more than the zero page holds")]
    TooManyE820(usize),
}

/// Where the initrd was put.
#[derive(Clone, Copy, Debug)]
pub struct InitrdPlace {
    pub addr: u64,
    pub size: u64,
}

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Write the PVH `hvm_start_info` (with module list and memory map).
pub fn write_pvh(
    mem: &GuestRam,
    e820: &[E820Entry],
    initrd: Option<InitrdPlace>,
) -> Result<(), ParamsError> {
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: BOOT_PARAMS_ADDR,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if initrd.is_some() {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
    let map: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();
    params.set_sections(&map, GuestAddress(BOOT_PARAMS_ADDR));
    if let Some(i) = initrd {
        let m = hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        };
        params.set_modules(&[m], GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<GuestRam>(&params, mem).map_err(ParamsError::Write)
}

/// Write the Linux zero page for the 64-bit boot protocol.
pub fn write_zero_page(
    mem: &GuestRam,
    header: Option<setup_header>,
    e820: &[E820Entry],
    cmdline_len: usize,
    initrd: Option<InitrdPlace>,
) -> Result<(), ParamsError> {
    let mut p = boot_params::default();
    if let Some(h) = header {
        p.hdr = h;
    }
    p.hdr.type_of_loader = 0xff;
    p.hdr.boot_flag = 0xaa55;
    p.hdr.header = 0x5372_6448; // "HdrS"
    p.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    p.hdr.cmdline_size = cmdline_len as u32 + 1;
    p.hdr.kernel_alignment = 0x100_0000;
    if let Some(i) = initrd {
        p.hdr.ramdisk_image = i.addr as u32;
        p.hdr.ramdisk_size = i.size as u32;
    }
    if e820.len() > p.e820_table.len() {
        return Err(ParamsError::TooManyE820(e820.len()));
    }
    for (slot, e) in p.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    p.e820_entries = e820.len() as u8;
    let params = BootParams::new(&p, GuestAddress(BOOT_PARAMS_ADDR));
    LinuxBootConfigurator::write_bootparams::<GuestRam>(&params, mem).map_err(ParamsError::Write)
}
