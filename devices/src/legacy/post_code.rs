//! Port 0x80 POST codes: the guest marks boot milestones, the VMM timestamps them.

use crate::bus::BusDevice;
use crate::lock;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Shared list of (code, time) milestones, readable by the VMM while the guest runs.
pub type Milestones = Arc<Mutex<Vec<(u8, Instant)>>>;

/// Records every byte written to port 0x80 with the time it arrived (first 256 only: a guest
/// that writes the port in a loop, as Linux's I/O delay does, must not grow memory).
pub struct PostCode {
    marks: Milestones,
}

/// How many milestones are kept.
pub const MAX_MARKS: usize = 256;

impl PostCode {
    /// A device that appends to `marks`.
    pub fn new(marks: Milestones) -> Self {
        Self { marks }
    }
}

impl BusDevice for PostCode {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let now = Instant::now();
        let mut marks = lock(&self.marks);
        if marks.len() < MAX_MARKS {
            marks.push((data.first().copied().unwrap_or(0), now));
        }
    }
}
