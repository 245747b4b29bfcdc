//! Batched transmit: the frames of one pass over the transmit queue reach the tap with one
//! io_uring submission (one system call for up to `BATCH` frames) instead of one `writev` each.
//! The ring is made with the device (before any thread is filtered) and restricted before it is
//! enabled: `writev` to the tap (registered as fixed file 0) is the only thing it can do, so a
//! seccomp filter can let `io_uring_enter` through without letting the ring do what the filter
//! forbids. Where io_uring is unavailable (an old kernel, memory limits) every frame gets its own
//! `writev`, as before.

use super::Tap;
use io_uring::{opcode, register::Restriction, squeue, types, IoUring};
use std::ops::Range;
use std::os::fd::AsRawFd;

/// Most frames per submission (and the ring's size).
pub const BATCH: usize = 32;

enum State {
    Ready(Box<IoUring>),
    /// io_uring is not available here (or failed once): `writev` per frame.
    Off,
}

/// The transmit side's io_uring, or the knowledge that there is none.
pub struct TxRing {
    state: State,
}

impl TxRing {
    /// A ring for `tap` that can only `writev` to it (the plain path if one cannot be made).
    pub fn new(tap: &Tap) -> Self {
        Self {
            state: match restricted_ring(tap) {
                Ok(ring) => State::Ready(Box::new(ring)),
                Err(_) => State::Off,
            },
        }
    }

    /// Never use io_uring (tests of the fallback).
    pub fn without_io_uring() -> Self {
        Self { state: State::Off }
    }

    /// Whether frames go through io_uring (false on the fallback).
    pub fn uses_io_uring(&self) -> bool {
        matches!(self.state, State::Ready(_))
    }

    /// Write each frame (a range of `iov`, header included) to the tap, at most `BATCH` of them;
    /// `sent[i]` tells whether frame `i` went out (a refused frame is dropped, as a full or
    /// down link drops it). Every write has completed when this returns.
    ///
    /// # Safety
    /// Every iovec must describe memory readable for its `iov_len` bytes during the call.
    pub unsafe fn write(
        &mut self,
        tap: &mut Tap,
        iov: &[libc::iovec],
        frames: &[Range<usize>],
        sent: &mut Vec<bool>,
    ) {
        sent.clear();
        sent.resize(frames.len(), false);
        if let State::Ready(ring) = &mut self.state {
            // SAFETY: passed on from the caller.
            if unsafe { submit(ring, iov, frames, sent) }.is_ok() {
                return;
            }
            // The ring broke (it does not, short of a kernel bug): frames not reported sent are
            // lost, later ones take the plain path.
            self.state = State::Off;
            return;
        }
        for (i, r) in frames.iter().enumerate() {
            // SAFETY: passed on from the caller.
            sent[i] = unsafe { tap.write_frame_iov(&iov[r.clone()]) }.is_ok();
        }
    }
}

/// A ring of `BATCH` entries, made disabled, given `tap` as fixed file 0, restricted to `writev`
/// on fixed files (no other operation, no other file, no registering anything later), then
/// enabled.
fn restricted_ring(tap: &Tap) -> std::io::Result<IoUring> {
    let ring = IoUring::builder().setup_r_disabled().build(BATCH as u32)?;
    let submitter = ring.submitter();
    submitter.register_files(&[tap.as_raw_fd()])?;
    let fixed = squeue::Flags::FIXED_FILE.bits();
    submitter.register_restrictions(&mut [
        Restriction::sqe_op(opcode::Writev::CODE),
        Restriction::sqe_flags_allowed(fixed),
        Restriction::sqe_flags_required(fixed),
    ])?;
    submitter.register_enable_rings()?;
    Ok(ring)
}

/// One submission of every frame, then their completions.
///
/// # Safety
/// As for `TxRing::write`.
unsafe fn submit(
    ring: &mut IoUring,
    iov: &[libc::iovec],
    frames: &[Range<usize>],
    sent: &mut [bool],
) -> std::io::Result<()> {
    // The tap, fixed file 0 of the ring.
    let fd = types::Fixed(0);
    let n = frames.len().min(BATCH);
    {
        let mut sq = ring.submission();
        for (i, r) in frames[..n].iter().enumerate() {
            let cnt = u32::try_from(r.len()).unwrap_or(u32::MAX);
            let sqe = opcode::Writev::new(fd, iov[r.clone()].as_ptr(), cnt)
                .build()
                .user_data(i as u64);
            // SAFETY: the iovecs and the memory they name stay valid until the completions are
            // reaped below, before this function returns.
            if unsafe { sq.push(&sqe) }.is_err() {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
    }
    let mut done = 0;
    while done < n {
        match ring.submit_and_wait(n - done) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        for cqe in ring.completion() {
            if let Some(s) = sent.get_mut(cqe.user_data() as usize) {
                *s = cqe.result() >= 0;
            }
            done += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::FromRawFd;

    #[test]
    fn the_ring_can_only_writev_to_the_tap() {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into the two-element array.
        let rc =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let (a, b) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let tap = Tap::from_file(a, "test0");
        let Ok(mut ring) = restricted_ring(&tap) else {
            eprintln!("no restricted io_uring here");
            return; // no io_uring (or no restrictions) on this kernel: the plain path is used
        };
        let other = types::Fd(b.as_raw_fd());
        let data = [7u8; 16];
        let iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut buf = [0u8; 16];
        let entries = [
            // Allowed: writev to fixed file 0.
            opcode::Writev::new(types::Fixed(0), &iov, 1)
                .build()
                .user_data(0),
            // Not: writev to a plain descriptor, a read, a no-op.
            opcode::Writev::new(other, &iov, 1).build().user_data(1),
            opcode::Read::new(types::Fixed(0), buf.as_mut_ptr(), 16)
                .build()
                .user_data(2),
            opcode::Nop::new().build().user_data(3),
        ];
        for e in &entries {
            // SAFETY: `iov`, `data` and `buf` outlive the submission, reaped below.
            unsafe { ring.submission().push(e) }.unwrap();
        }
        ring.submit_and_wait(entries.len()).unwrap();
        let mut results: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        results.sort();
        assert_eq!(results[0], (0, 16));
        for r in &results[1..] {
            assert_eq!(r.1, -libc::EACCES, "{results:?}");
        }
        // Nothing can be registered on it any more.
        assert!(ring.submitter().register_files(&[b.as_raw_fd()]).is_err());
    }
}
