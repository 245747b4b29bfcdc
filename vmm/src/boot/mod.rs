//! Boot: load the kernel and initrd, write the boot structures, and say how vCPUs start.

pub mod gdt;
pub mod halt_gate;
pub mod image;
pub mod mptable;
pub mod paging;
pub mod params;
pub mod regs;

use crate::config::{VmConfig, MAX_CMDLINE};
use crate::memory::{Layout, CMDLINE_ADDR, GDT_ADDR, TSS_ADDR};
pub use image::Entry;
use params::InitrdPlace;
use plainvm_devices::GuestRam;
use std::path::{Path, PathBuf};
use vm_memory::{Bytes, GuestAddress};

/// Errors preparing the guest to boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {path}: {source}")]
    Image {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("cannot open initrd {path}: {source}")]
    OpenInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit: only {room} bytes are free between the kernel and the end of low memory; give more --memory or a smaller initrd")]
    InitrdTooBig { path: PathBuf, size: u64, room: u64 },
    #[error("cannot read initrd {path} into guest memory: {source}")]
    ReadInitrd {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
    #[error("the kernel command line with the device entries plainvm adds is {0} bytes; the limit is {MAX_CMDLINE}: shorten --cmdline")]
    CmdlineTooLong(usize),
    #[error("cannot write boot data into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
    #[error(transparent)]
    Params(#[from] params::ParamsError),
    #[error(transparent)]
    Paging(#[from] paging::PagingError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    HaltGate(#[from] halt_gate::HaltGateError),
}

/// How the vCPUs start, once memory holds everything.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    pub entry: Entry,
    /// CR3 for the 64-bit modes.
    pub cr3: u64,
    /// Guest RAM below the MMIO gap (the test guest's RDX).
    pub low_ram: u64,
    /// Whether a command line was written (the test guest's RCX).
    pub has_cmdline: bool,
}

/// The bundled test guest, booted when no kernel is given.
pub static DEFAULT_GUEST: &[u8] = include_bytes!(env!("PLAINVM_TESTGUEST_ELF"));

/// Load kernel, initrd and command line for `cfg` into `mem` and write the boot structures.
/// `devices` are command-line entries the VMM adds (virtio-mmio devices); `clear` are CPU
/// features a Linux guest must ignore although its CPUID offers them (see
/// `vcpu::cpuid::forced_features`).
pub fn prepare(
    mem: &GuestRam,
    layout: &Layout,
    cfg: &VmConfig,
    devices: &[String],
    clear: &[&str],
) -> Result<BootInfo, BootError> {
    let loaded = match &cfg.kernel {
        Some(path) => {
            let mut f = std::fs::File::open(path).map_err(|source| BootError::OpenKernel {
                path: path.clone(),
                source,
            })?;
            image::load(mem, &mut f)
        }
        None => image::load(mem, &mut std::io::Cursor::new(DEFAULT_GUEST)),
    }
    .map_err(|source| BootError::Image {
        path: cfg
            .kernel
            .clone()
            .unwrap_or_else(|| "<bundled test guest>".into()),
        source,
    })?;

    let is_linux = !matches!(loaded.entry, Entry::Ring3(_));
    let cmdline = command_line(cfg.cmdline.as_deref(), is_linux, devices, clear);
    let cmdline = cmdline.as_str();
    if cmdline.len() > MAX_CMDLINE {
        return Err(BootError::CmdlineTooLong(cmdline.len()));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(BootError::Write)?;

    let initrd = match &cfg.initrd {
        Some(p) => Some(load_initrd(mem, layout, p, loaded.end)?),
        None => None,
    };

    let gdt = gdt::table(TSS_ADDR);
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write_slice(&gdt_bytes, GuestAddress(GDT_ADDR))
        .map_err(BootError::Write)?;
    let mut tss = vec![0u8; gdt::TSS_LIMIT as usize + 1];
    tss[0x66..0x68].copy_from_slice(&gdt::TSS_IOMAP_BASE.to_le_bytes());
    tss[gdt::TSS_LIMIT as usize] = 0xff;
    mem.write_slice(&tss, GuestAddress(TSS_ADDR))
        .map_err(BootError::Write)?;
    mptable::write(mem, cfg.cpus)?;

    let e820 = layout.e820();
    let top = match layout.high_size() {
        0 => layout.low_end(),
        high => crate::memory::MMIO_GAP_END + high,
    };
    let ram_gib = top.div_ceil(1 << 30);
    let cr3 = match loaded.entry {
        Entry::Ring3(_) => {
            halt_gate::write(mem)?;
            paging::identity_map(mem, ram_gib.max(4), true)?
        }
        Entry::Linux64(_) => {
            params::write_zero_page(mem, loaded.setup_header, &e820, cmdline.len(), initrd)?;
            paging::identity_map(mem, 4, false)?
        }
        Entry::Pvh(_) => {
            params::write_pvh(mem, &e820, initrd)?;
            0
        }
    };
    Ok(BootInfo {
        entry: loaded.entry,
        cr3,
        low_ram: layout.low_end(),
        has_cmdline: !cmdline.is_empty(),
    })
}

/// The guest's command line: the configured one (Linux gets a default), then what the VMM adds:
/// the device entries and, for Linux only, `clearcpuid=` with `clear` unless the line already
/// has a `clearcpuid=` (the user's choice stands). Added entries go before a `--`, which starts
/// init's arguments.
fn command_line(
    configured: Option<&str>,
    is_linux: bool,
    devices: &[String],
    clear: &[&str],
) -> String {
    let configured = match (configured, is_linux) {
        (Some(c), _) => c,
        (None, true) => crate::config::DEFAULT_CMDLINE,
        (None, false) => "",
    };
    let (kernel, init) = match init_args_at(configured) {
        Some(at) => configured.split_at(at),
        None => (configured, ""),
    };
    let mut line = match init {
        "" => kernel.to_string(),
        _ => kernel.trim_end().to_string(),
    };
    for d in devices {
        line.push(' ');
        line.push_str(d);
    }
    let has_clearcpuid = kernel
        .split_whitespace()
        .any(|w| w.starts_with("clearcpuid="));
    if is_linux && !clear.is_empty() && !has_clearcpuid {
        line.push_str(" clearcpuid=");
        line.push_str(&clear.join(","));
    }
    if !init.is_empty() {
        line.push(' ');
        line.push_str(init);
    }
    line.trim_start().to_string()
}

/// Where a standalone `--` (the start of init's arguments) begins in `cmdline`.
fn init_args_at(cmdline: &str) -> Option<usize> {
    let mut at = 0;
    for word in cmdline.split(' ') {
        if word == "--" {
            return Some(at);
        }
        at += word.len() + 1;
    }
    None
}

/// Put the initrd at the top of low memory, page-aligned, above the kernel.
fn load_initrd(
    mem: &GuestRam,
    layout: &Layout,
    path: &Path,
    kernel_end: u64,
) -> Result<InitrdPlace, BootError> {
    let mut f = std::fs::File::open(path).map_err(|source| BootError::OpenInitrd {
        path: path.to_path_buf(),
        source,
    })?;
    let size = f
        .metadata()
        .map_err(|source| BootError::OpenInitrd {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    // Linux's default initrd_addr_max: the initrd must end below 896 MiB.
    let top = layout.low_end().min(0x3800_0000);
    let room = top.saturating_sub(kernel_end.next_multiple_of(4096));
    if size > room {
        return Err(BootError::InitrdTooBig {
            path: path.to_path_buf(),
            size,
            room,
        });
    }
    let addr = (top - size) & !0xfff;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|source| BootError::ReadInitrd {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(InitrdPlace { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearcpuid_goes_to_linux_once_and_before_init_args() {
        let dev = vec!["virtio_mmio.device=4K@0xd0000000:5".to_string()];
        assert_eq!(
            command_line(Some("console=ttyS0"), true, &dev, &["popcnt"]),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 clearcpuid=popcnt"
        );
        assert_eq!(
            command_line(None, true, &[], &["popcnt", "xsave"]),
            format!("{} clearcpuid=popcnt,xsave", crate::config::DEFAULT_CMDLINE)
        );
        // The user's own clearcpuid= stands.
        assert_eq!(
            command_line(Some("clearcpuid=cx16 quiet"), true, &[], &["popcnt"]),
            "clearcpuid=cx16 quiet"
        );
        // Never for the bundled test guest, whose command line is its own.
        assert_eq!(command_line(Some("x"), false, &[], &["popcnt"]), "x");
        assert_eq!(command_line(None, false, &[], &["popcnt"]), "");
        // Nothing to clear: the line is as configured.
        assert_eq!(command_line(Some("a b"), true, &[], &[]), "a b");
        // Kernel parameters go before init's arguments.
        assert_eq!(
            command_line(Some("quiet -- single"), true, &dev, &["popcnt"]),
            "quiet virtio_mmio.device=4K@0xd0000000:5 clearcpuid=popcnt -- single"
        );
        // A clearcpuid= meant for init does not count as the kernel's.
        assert_eq!(
            command_line(Some("quiet -- clearcpuid=x"), true, &[], &["popcnt"]),
            "quiet clearcpuid=popcnt -- clearcpuid=x"
        );
    }
}
