//! The hypercall register page mapped from /dev/mem.

use plainvm_guest_proto::{call::probe, Registers, BASE, SIZE};

/// Errors opening the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot open /dev/mem: {0} (needs root and CONFIG_DEVMEM)")]
    Open(std::io::Error),
    #[error("cannot map the hypercall page at {BASE:#x}: {0} (is STRICT_DEVMEM on?)")]
    Map(std::io::Error),
    #[error("no plainvm hypercall device at {BASE:#x}: not running under plainvm?")]
    Missing,
}

/// The mapped page, and /dev/mem kept open: other helper processes (the `watch` agent and a
/// one-shot command) use the same registers, and a call holds `flock` on it.
pub struct DevMem {
    page: *mut u32,
    fd: libc::c_int,
}

impl DevMem {
    /// Map the page and check the magic.
    pub fn open() -> Result<Self, DeviceError> {
        let path = c"/dev/mem";
        // SAFETY: a NUL-terminated path; the result is checked.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_SYNC) };
        if fd < 0 {
            return Err(DeviceError::Open(std::io::Error::last_os_error()));
        }
        // SAFETY: maps one page of /dev/mem at the device's physical address; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                BASE as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            // SAFETY: fd is ours and used nowhere else.
            unsafe { libc::close(fd) };
            return Err(DeviceError::Map(err));
        }
        let mut dev = Self { page: p.cast(), fd };
        probe(&mut dev).map_err(|_| DeviceError::Missing)?;
        Ok(dev)
    }
}

impl Drop for DevMem {
    fn drop(&mut self) {
        // SAFETY: fd is ours; the mapping stays valid after closing it.
        unsafe { libc::close(self.fd) };
    }
}

/// `flock(fd, op)`, retried when a signal interrupts it.
fn flock(fd: libc::c_int, op: libc::c_int) {
    // SAFETY: flock takes a descriptor we own and an operation; no memory is passed.
    while unsafe { libc::flock(fd, op) } < 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
}

impl Registers for DevMem {
    fn lock(&mut self) {
        flock(self.fd, libc::LOCK_EX);
    }
    fn unlock(&mut self) {
        flock(self.fd, libc::LOCK_UN);
    }
    fn read32(&mut self, offset: u64) -> u32 {
        // SAFETY: offset is a register offset inside the mapped page (callers use regs::*).
        unsafe {
            self.page
                .add((offset as usize % SIZE as usize) / 4)
                .read_volatile()
        }
    }
    fn write32(&mut self, offset: u64, value: u32) {
        // SAFETY: as in read32.
        unsafe {
            self.page
                .add((offset as usize % SIZE as usize) / 4)
                .write_volatile(value)
        }
    }
}
