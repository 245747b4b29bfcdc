//! Guest memory as one flat image (regions back to back), and the page batches that carry it.

use crate::memory::slots::DirtyBitmap;
use plainvm_devices::GuestRam;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Page size.
pub const PAGE: usize = 4096;
/// Pages per batch frame (1 MiB of data).
pub const BATCH: usize = 256;

/// Errors applying received pages.
#[derive(Debug, thiserror::Error)]
pub enum PagesError {
    #[error("a page batch is malformed ({0})")]
    Malformed(&'static str),
    #[error("the stream names page offset {0:#x}, outside this VM's memory")]
    OutOfRange(u64),
}

/// Guest memory regions as (host address, length), in image order.
pub struct MemoryImage {
    regions: Vec<(usize, usize)>,
    total: u64,
    file_backed: bool,
}

// SAFETY: the image only holds addresses of mappings owned by a GuestRam that the user
// keeps alive; access is coordinated by the migration protocol (one writer).
unsafe impl Send for MemoryImage {}

impl MemoryImage {
    /// The image of `mem`.
    pub fn new(mem: &GuestRam) -> Self {
        let regions: Vec<(usize, usize)> = mem
            .iter()
            .filter_map(|r| {
                let host = mem.get_host_address(r.start_addr()).ok()?;
                Some((host as usize, r.len() as usize))
            })
            .collect();
        let total = regions.iter().map(|r| r.1 as u64).sum();
        Self {
            regions,
            total,
            file_backed: false,
        }
    }

    /// Bytes in the image.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True for an image without memory.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The page at image offset `off`, if it is a whole page inside guest memory.
    fn page(&self, off: u64) -> Option<*mut u8> {
        if !off.is_multiple_of(PAGE as u64) {
            return None;
        }
        // Offsets come from the stream: every sum is checked (a wrapping offset must not land
        // just below guest RAM).
        let end = off.checked_add(PAGE as u64)?;
        let mut base = 0u64;
        for &(host, len) in &self.regions {
            let region_end = base.checked_add(len as u64)?;
            if off >= base && end <= region_end {
                let at = usize::try_from(off - base).ok()?;
                return Some(host.checked_add(at)? as *mut u8);
            }
            base = region_end;
        }
        None
    }

    /// Read the page at `off` (valid offsets only; the sender produces them).
    pub fn read(&self, off: u64) -> Option<&[u8]> {
        // SAFETY: `page` checked the whole page lies inside a live guest mapping.
        self.page(off)
            .map(|p| unsafe { std::slice::from_raw_parts(p as *const u8, PAGE) })
    }

    /// Mark the memory as mapping a snapshot's memory file (a restored VM): a page that is not
    /// in the page cache still holds data.
    pub fn file_backed(mut self, yes: bool) -> Self {
        self.file_backed = yes;
        self
    }

    /// Every page offset that may hold data on the first pass: not all zero, and resident unless
    /// the memory is file-backed (then every page is read).
    pub fn first_pass_pages(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut base = 0u64;
        for &(host, len) in &self.regions {
            let mut resident = vec![0u8; len / PAGE];
            // SAFETY: `host` is the page-aligned start of a live mapping of `len` bytes, and
            // `resident` has one byte per page.
            let ok =
                unsafe { libc::mincore(host as *mut libc::c_void, len, resident.as_mut_ptr()) }
                    == 0;
            for (i, r) in resident.iter().enumerate() {
                if ok && !self.file_backed && r & 1 == 0 {
                    continue; // never touched: the destination's fresh memory is zero too
                }
                let off = base + (i * PAGE) as u64;
                if self.read(off).is_some_and(|p| p.iter().any(|&b| b != 0)) {
                    out.push(off);
                }
            }
            base += len as u64;
        }
        out
    }

    /// The image offsets of the pages set in `dirty` (one bitmap per region, in order).
    pub fn dirty_pages(&self, dirty: &[DirtyBitmap]) -> Vec<u64> {
        let mut out = Vec::new();
        let mut base = 0u64;
        for (&(_, len), bitmap) in self.regions.iter().zip(dirty) {
            for (w, word) in bitmap.bits.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let page = w * 64 + b;
                    if page < len / PAGE {
                        out.push(base + (page * PAGE) as u64);
                    }
                }
            }
            base += len as u64;
        }
        out
    }

    /// Apply a `Pages` payload: count, offsets, then the pages' data.
    pub fn apply_pages(&self, payload: &[u8]) -> Result<usize, PagesError> {
        let (offs, data) = split_batch(payload, true)?;
        for (i, off) in offs.iter().enumerate() {
            let dst = self.page(*off).ok_or(PagesError::OutOfRange(*off))?;
            // SAFETY: `dst` is a whole page inside guest memory (checked by `page`), and the
            // source slice is exactly one page of the payload; the vCPUs do not run yet.
            unsafe {
                std::ptr::copy_nonoverlapping(data[i * PAGE..].as_ptr(), dst, PAGE);
            }
        }
        Ok(offs.len())
    }

    /// Apply a `Zeros` payload: count, then offsets of pages that are now all zero.
    pub fn apply_zeros(&self, payload: &[u8]) -> Result<usize, PagesError> {
        let (offs, _) = split_batch(payload, false)?;
        for off in &offs {
            let dst = self.page(*off).ok_or(PagesError::OutOfRange(*off))?;
            // SAFETY: as in `apply_pages`.
            unsafe { std::ptr::write_bytes(dst, 0, PAGE) };
        }
        Ok(offs.len())
    }
}

/// Encode the header of a batch: count and offsets.
pub fn batch_header(offsets: &[u64]) -> Vec<u8> {
    let mut h = Vec::with_capacity(4 + offsets.len() * 8);
    h.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
    for o in offsets {
        h.extend_from_slice(&o.to_le_bytes());
    }
    h
}

fn split_batch(payload: &[u8], with_data: bool) -> Result<(Vec<u64>, &[u8]), PagesError> {
    let count = payload
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(PagesError::Malformed("no page count"))?;
    if count > BATCH * 4 {
        return Err(PagesError::Malformed("too many pages in one batch"));
    }
    let offs_end = 4 + count * 8;
    let data_len = if with_data { count * PAGE } else { 0 };
    if payload.len() != offs_end + data_len {
        return Err(PagesError::Malformed(
            "length does not match the page count",
        ));
    }
    let offs = payload[4..offs_end]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    Ok((offs, &payload[offs_end..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn batches_outside_memory_or_malformed_are_refused() {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let img = MemoryImage::new(&mem);
        let mut p = batch_header(&[0x1000]);
        p.extend_from_slice(&[7u8; PAGE]);
        assert_eq!(img.apply_pages(&p).unwrap(), 1);
        assert_eq!(img.read(0x1000).unwrap()[5], 7);
        let mut p = batch_header(&[1 << 20]);
        p.extend_from_slice(&[7u8; PAGE]);
        assert!(matches!(
            img.apply_pages(&p),
            Err(PagesError::OutOfRange(_))
        ));
        let mut p = batch_header(&[0x1001]);
        p.extend_from_slice(&[7u8; PAGE]);
        assert!(img.apply_pages(&p).is_err(), "unaligned offset");
        let p = batch_header(&[0x1000]);
        assert!(img.apply_pages(&p).is_err(), "missing data");
        // An offset that wraps around: past the end of memory, not just below it.
        for off in [0xffff_ffff_ffff_f000, u64::MAX - 4095 + 1, u64::MAX] {
            let mut p = batch_header(&[off]);
            p.extend_from_slice(&[7u8; PAGE]);
            assert!(img.apply_pages(&p).is_err(), "{off:#x}");
            assert!(img.apply_zeros(&batch_header(&[off])).is_err(), "{off:#x}");
        }
        let mut p = batch_header(&[0x1000]);
        p[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(img.apply_zeros(&p).is_err(), "absurd count");
        assert!(img.apply_pages(&[1, 2]).is_err());
        assert_eq!(img.apply_zeros(&batch_header(&[0x1000])).unwrap(), 1);
        assert_eq!(img.read(0x1000).unwrap()[5], 0);
    }
}
