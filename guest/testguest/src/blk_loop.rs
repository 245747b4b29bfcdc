//! `blk-loop`: a verifiable disk workload for snapshot and migration tests of virtio-blk.
//!
//! The first `2 * BURST` 4 KiB chunks of disk 0 are the area. Pass p reads it all and checks that
//! every chunk holds what the last pass that wrote it wrote (none yet: zeros, so start on a zeroed
//! image), then writes pass p's pattern into the chunks of p's parity as `BURST` concurrent
//! requests, so requests are often in flight when the VM is paused, and half of what the next
//! pass reads was written a pass earlier. Prints `blkloop pass=N ok[ gen=G]` like `memwrite`,
//! `BLKLOOP-CORRUPT` on a mismatch (power-off 1).

use crate::virtio::blk::{Blk, Kind, SECTOR};
use crate::virtio::dma_alloc;
use crate::{clock, power, serial};

/// Bytes written per request.
const CHUNK: usize = 4096;
/// Requests started before waiting for any.
const BURST: usize = 16;

/// Chunks in the area.
const CHUNKS: usize = 2 * BURST;

/// The last pass up to `pass` that wrote `chunk` (0: none).
fn writer(chunk: usize, pass: u64) -> u64 {
    if pass % 2 == chunk as u64 % 2 {
        pass
    } else {
        pass.saturating_sub(1)
    }
}

/// Byte `i` of sector `sector` as pass `pass` wrote it (pass 0: never written).
fn expected(sector: u64, pass: u64, i: usize) -> u8 {
    if pass == 0 {
        return 0;
    }
    let word = (sector << 40) ^ (pass << 8) ^ (i as u64 / 8);
    (word.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> ((i % 8) * 8)) as u8
}

fn fail(what: &str) -> ! {
    serial::lock().s("BLKLOOP-FAIL ").s(what).s("\n");
    power::off(1);
}

/// Runs the workload on disk 0 and powers off (status 0 when all `passes` complete; 0: forever).
pub fn run(line: &[u8], passes: u64, show_gen: bool) -> ! {
    let mut blk = match Blk::open(line, 0) {
        Some(Ok(b)) => b,
        Some(Err(_)) => fail("init"),
        None => {
            serial::lock().s("BLKLOOP-FAIL no disk\n");
            power::off(1);
        }
    };
    let len = CHUNK * CHUNKS;
    let Some(buf) = dma_alloc(len) else {
        serial::lock().s("BLKLOOP-FAIL out of DMA memory\n");
        power::off(1);
    };
    let print_gap = clock::ms_to_ticks(100);
    let mut last_print = clock::rdtsc();
    let mut pass: u64 = 0;
    loop {
        pass += 1;
        buf.fill(0xa5); // a read that does not land cannot pass for last pass's data
        if blk.read(0, buf).is_err() {
            fail("read");
        }
        for (i, &b) in buf.iter().enumerate() {
            let sector = i as u64 / SECTOR;
            let by = writer(i / CHUNK, pass - 1);
            if b != expected(sector, by, i % SECTOR as usize) {
                serial::lock()
                    .s("BLKLOOP-CORRUPT pass=")
                    .u(pass)
                    .s(" sector=")
                    .u(sector)
                    .s("\n");
                power::off(1);
            }
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = expected(i as u64 / SECTOR, pass, i % SECTOR as usize);
        }
        for k in 0..BURST {
            let chunk = 2 * k + (pass % 2) as usize;
            let at = buf.as_ptr() as u64 + (chunk * CHUNK) as u64;
            let sector = (chunk * CHUNK) as u64 / SECTOR;
            if blk
                .start_raw(Kind::Write, sector, at, CHUNK as u32, false)
                .is_err()
            {
                fail("start");
            }
        }
        blk.kick();
        let mut done = 0;
        let since = clock::rdtsc();
        while done < BURST {
            match blk.complete() {
                Some(Ok((_, 0))) => done += 1,
                Some(Ok(_)) => fail("write status"),
                Some(Err(_)) => fail("write"),
                None if clock::rdtsc().wrapping_sub(since) > clock::ms_to_ticks(30_000) => {
                    fail("write timeout")
                }
                None => core::hint::spin_loop(),
            }
        }
        let now = clock::rdtsc();
        if pass <= 10 || pass == passes || now.wrapping_sub(last_print) >= print_gap {
            last_print = now;
            let mut out = serial::lock();
            out.s("blkloop pass=").u(pass).s(" ok");
            if show_gen {
                out.s(" gen=").u(u64::from(crate::hypercall::generation()));
            }
            out.s("\n");
        }
        if pass == passes {
            break;
        }
    }
    serial::lock().s("BLKLOOP-DONE passes=").u(passes).s("\n");
    power::off(0);
}
