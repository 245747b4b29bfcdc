//! Batched transmit: the frames of one pass over the transmit queue reach the tap with one
//! io_uring submission (one system call for up to `BATCH` frames) instead of one `writev` each.
//! Where io_uring is unavailable (an old kernel, a seccomp filter, memory limits) every frame
//! gets its own `writev`, as before.

use super::Tap;
use io_uring::{opcode, types, IoUring};
use std::ops::Range;
use std::os::fd::AsRawFd;

/// Most frames per submission (and the ring's size).
pub const BATCH: usize = 32;

enum State {
    /// No frame sent yet: the ring is made on first use, so a VM that never transmits has none.
    Untried,
    Ready(Box<IoUring>),
    /// io_uring is not available here (or failed once): `writev` per frame.
    Off,
}

/// The transmit side's io_uring, or the knowledge that there is none.
pub struct TxRing {
    state: State,
}

impl Default for TxRing {
    fn default() -> Self {
        Self::new()
    }
}

impl TxRing {
    /// A ring made on first use.
    pub fn new() -> Self {
        Self {
            state: State::Untried,
        }
    }

    /// Never use io_uring (tests of the fallback).
    pub fn without_io_uring() -> Self {
        Self { state: State::Off }
    }

    /// Whether frames go through io_uring (false before the first write and on the fallback).
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
        if matches!(self.state, State::Untried) {
            self.state = match IoUring::new(BATCH as u32) {
                Ok(ring) => State::Ready(Box::new(ring)),
                Err(_) => State::Off,
            };
        }
        if let State::Ready(ring) = &mut self.state {
            // SAFETY: passed on from the caller.
            if unsafe { submit(ring, tap, iov, frames, sent) }.is_ok() {
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

/// One submission of every frame, then their completions.
///
/// # Safety
/// As for `TxRing::write`.
unsafe fn submit(
    ring: &mut IoUring,
    tap: &Tap,
    iov: &[libc::iovec],
    frames: &[Range<usize>],
    sent: &mut [bool],
) -> std::io::Result<()> {
    let fd = types::Fd(tap.as_raw_fd());
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
