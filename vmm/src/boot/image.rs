//! Loading the kernel image: ELF (plainvm ring-3 note, PVH note, or 64-bit entry) or bzImage.

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use plainvm_devices::GuestRam;
use std::io::{Cursor, Read, Seek, SeekFrom};
use vm_memory::GuestAddress;

use crate::memory::HIMEM_START;

/// ELF note name and type that mark a plainvm test guest; the descriptor is its ring-3 entry.
pub const PLAINVM_NOTE_NAME: &[u8] = b"plainvm\0";
/// Note type of the ring-3 entry point.
pub const PLAINVM_NOTE_RING3_ENTRY: u32 = 1;

/// Errors loading a kernel image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read kernel image: {0}")]
    Read(std::io::Error),
    #[error("the kernel is neither an ELF vmlinux nor a bzImage (no ELF magic, no 'HdrS' header): give --kernel a vmlinux or bzImage")]
    UnknownFormat,
    #[error("cannot load the ELF kernel: {0} (is it a 64-bit x86 vmlinux that fits in --memory?)")]
    Elf(linux_loader::loader::Error),
    #[error("cannot load the bzImage: {0} (does it fit in --memory?)")]
    BzImage(linux_loader::loader::Error),
    #[error(
        "the plainvm note of this ELF is malformed: its descriptor must be an 8-byte entry address"
    )]
    BadNote,
}

/// How the loaded image wants to be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Start every vCPU in 64-bit ring 3 at this address (plainvm test guests).
    Ring3(u64),
    /// Xen PVH: 32-bit protected mode at this address, EBX = start_info.
    Pvh(u64),
    /// Linux 64-bit boot protocol: long mode at this address, RSI = zero page.
    Linux64(u64),
}

/// What loading produced.
#[derive(Clone, Copy, Debug)]
pub struct Loaded {
    pub entry: Entry,
    /// First byte after the kernel in guest memory.
    pub end: u64,
    /// The bzImage setup header (for the zero page), if this was a bzImage.
    pub setup_header: Option<setup_header>,
}

/// The bytes of an image: a file or an embedded default.
pub trait Image: Read + Seek + vm_memory::ReadVolatile {}
impl Image for std::fs::File {}
impl Image for Cursor<&[u8]> {}

/// Load `image` into `mem`.
pub fn load(mem: &GuestRam, image: &mut impl Image) -> Result<Loaded, ImageError> {
    let mut magic = [0u8; 0x206];
    image.rewind().map_err(ImageError::Read)?;
    let n = read_up_to(image, &mut magic)?;
    let high = Some(GuestAddress(HIMEM_START));
    if n >= 4 && &magic[..4] == b"\x7fELF" {
        let ring3 = find_plainvm_note(image)?;
        let r = Elf::load(mem, None, image, high).map_err(ImageError::Elf)?;
        let entry = match (ring3, r.pvh_boot_cap) {
            (Some(e), _) => Entry::Ring3(e),
            (None, PvhBootCapability::PvhEntryPresent(a)) => Entry::Pvh(a.0),
            (None, _) => Entry::Linux64(r.kernel_load.0),
        };
        Ok(Loaded {
            entry,
            end: r.kernel_end,
            setup_header: None,
        })
    } else if n == magic.len() && &magic[0x202..0x206] == b"HdrS" {
        let r = BzImage::load(mem, None, image, high).map_err(ImageError::BzImage)?;
        Ok(Loaded {
            entry: Entry::Linux64(r.kernel_load.0 + 0x200),
            end: r.kernel_end,
            setup_header: r.setup_header,
        })
    } else {
        Err(ImageError::UnknownFormat)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, ImageError> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).map_err(ImageError::Read)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Find the plainvm ring-3 entry note in the ELF's PT_NOTE segments (headers already checked
/// only for magic; every offset read here is bounds-checked by the reads themselves).
fn find_plainvm_note(f: &mut (impl Read + Seek)) -> Result<Option<u64>, ImageError> {
    let mut eh = [0u8; 64];
    f.seek(SeekFrom::Start(0)).map_err(ImageError::Read)?;
    if read_up_to(f, &mut eh)? < 64 || eh[4] != 2 {
        return Ok(None); // not ELF64: the ELF loader reports the real problem
    }
    let phoff = u64::from_le_bytes(eh[32..40].try_into().unwrap_or_default());
    let phentsize = u64::from(u16::from_le_bytes([eh[54], eh[55]]));
    let phnum = u64::from(u16::from_le_bytes([eh[56], eh[57]]));
    for i in 0..phnum.min(64) {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff.saturating_add(i * phentsize)))
            .map_err(ImageError::Read)?;
        if read_up_to(f, &mut ph)? < 56 || u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != 4 {
            continue; // not PT_NOTE
        }
        let off = u64::from_le_bytes(ph[8..16].try_into().unwrap_or_default());
        let size = u64::from_le_bytes(ph[32..40].try_into().unwrap_or_default()).min(1 << 16);
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off)).map_err(ImageError::Read)?;
        let got = read_up_to(f, &mut notes)?;
        if let Some(e) = scan_notes(&notes[..got])? {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

fn scan_notes(mut n: &[u8]) -> Result<Option<u64>, ImageError> {
    let align4 = |x: usize| (x + 3) & !3;
    while n.len() >= 12 {
        let word = |i: usize| u32::from_le_bytes([n[i], n[i + 1], n[i + 2], n[i + 3]]) as usize;
        let (namesz, descsz, ty) = (word(0), word(4), word(8) as u32);
        let name_end = 12 + align4(namesz);
        let desc_end = name_end.saturating_add(align4(descsz));
        if desc_end > n.len() {
            break;
        }
        if &n[12..12 + namesz] == PLAINVM_NOTE_NAME && ty == PLAINVM_NOTE_RING3_ENTRY {
            let d: [u8; 8] = n[name_end..name_end + descsz]
                .try_into()
                .map_err(|_| ImageError::BadNote)?;
            return Ok(Some(u64::from_le_bytes(d)));
        }
        n = &n[desc_end..];
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], ty: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((name.len() as u32).to_le_bytes());
        v.extend((desc.len() as u32).to_le_bytes());
        v.extend(ty.to_le_bytes());
        v.extend(name);
        v.resize(v.len().next_multiple_of(4), 0);
        v.extend(desc);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    #[test]
    fn finds_the_ring3_note_among_others() {
        let mut n = note(b"Xen\0", 18, &0x10_0000u32.to_le_bytes());
        n.extend(note(PLAINVM_NOTE_NAME, 1, &0x10_1000u64.to_le_bytes()));
        assert_eq!(scan_notes(&n).unwrap(), Some(0x10_1000));
        assert_eq!(scan_notes(&n[..20]).unwrap(), None);
        let bad = note(PLAINVM_NOTE_NAME, 1, &[1, 2, 3, 4]);
        assert!(scan_notes(&bad).is_err());
        // A note claiming a huge size must not read past the buffer.
        let mut huge = note(PLAINVM_NOTE_NAME, 1, &[0; 8]);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(scan_notes(&huge).unwrap(), None);
    }

    #[test]
    fn text_file_is_not_a_kernel() {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut c = Cursor::new(&b"#!/bin/sh\necho hello\n"[..]);
        assert!(matches!(load(&mem, &mut c), Err(ImageError::UnknownFormat)));
    }
}
