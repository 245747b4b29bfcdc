//! `blk-selftest` and `blk-bench=<MiB>`: virtio-blk checks and throughput through the polling driver.
//!
//! Selftest, per disk: print capacity and id (`BLK-ID`); a read-write disk gets a pattern written
//! to sectors 0..64 (`pattern_byte`, which host tests recompute), a flush, a read-back compare, and
//! reads at and across the end of the disk that must fail; a read-only disk must refuse a write.
//! Bench: sequential 1 MiB writes then reads, random 4 KiB writes then reads over the first `MiB`
//! of disk 0; each phase prints a `BLK-BENCH-START` line before and a `BLK-BENCH` result after it
//! (the host can time phases by when those lines arrive).

use crate::virtio::blk::{Blk, BlkError, Kind, ID_BYTES, MAX_IN_FLIGHT, SECTOR};
use crate::virtio::dma_alloc;
use crate::{clock, power, serial};

/// Sectors the selftest writes (from sector 0).
const PATTERN_SECTORS: u64 = 64;

/// Byte `i` of sector `sector` of the selftest pattern: "PVBLKSEC", the sector number (u64 LE),
/// then `(sector * 31) ^ i`.
pub fn pattern_byte(sector: u64, i: usize) -> u8 {
    match i {
        0..8 => b"PVBLKSEC"[i],
        8..16 => sector.to_le_bytes()[i - 8],
        _ => (sector as u8).wrapping_mul(31) ^ (i as u8),
    }
}

fn fail(what: &str, disk: usize, e: BlkError) -> ! {
    let mut out = serial::lock();
    out.s("BLK-SELFTEST-FAIL disk=")
        .u(disk as u64)
        .s(" ")
        .s(what);
    match e {
        BlkError::Virtio(v) => out.s(" virtio=").s(v.name()),
        BlkError::Status(s) => out.s(" status=").u(u64::from(s)),
        BlkError::Busy => out.s(" busy"),
        BlkError::TooLarge => out.s(" too-large"),
        BlkError::Unknown => out.s(" unknown-tag"),
    };
    out.s("\n");
    drop(out);
    power::off(1);
}

fn buffer(len: usize) -> &'static mut [u8] {
    match dma_alloc(len) {
        Some(b) => b,
        None => {
            serial::lock().s("BLK-FAIL out of DMA memory\n");
            power::off(1);
        }
    }
}

/// Runs the selftest on every virtio-blk disk and powers off (0: all passed).
pub fn selftest(line: &[u8]) -> ! {
    let len = (PATTERN_SECTORS * SECTOR) as usize;
    let wbuf = buffer(len);
    let rbuf = buffer(len);
    let mut disks = 0;
    while let Some(opened) = Blk::open(line, disks) {
        let disk = disks;
        disks += 1;
        let mut blk = opened.unwrap_or_else(|e| fail("init", disk, e));
        let mut id = [0u8; ID_BYTES];
        blk.get_id(&mut id)
            .unwrap_or_else(|e| fail("get-id", disk, e));
        let id_len = id.iter().position(|&c| c == 0).unwrap_or(ID_BYTES);
        serial::lock()
            .s("BLK-ID disk=")
            .u(disk as u64)
            .s(" id=")
            .bytes(&id[..id_len])
            .s(" capacity=")
            .u(blk.capacity)
            .s(" ro=")
            .u(u64::from(blk.read_only))
            .s(" flush=")
            .u(u64::from(blk.has_flush))
            .s(" seg_max=")
            .u(u64::from(blk.seg_max))
            .s(" size_max=")
            .u(u64::from(blk.size_max))
            .s("\n");

        if blk.read_only {
            blk.read(0, &mut rbuf[..512])
                .unwrap_or_else(|e| fail("ro-read", disk, e));
            match blk.write(0, &wbuf[..512]) {
                Err(BlkError::Status(s)) => {
                    serial::lock()
                        .s("BLK-RO-REFUSED disk=")
                        .u(disk as u64)
                        .s(" status=")
                        .u(u64::from(s))
                        .s("\n");
                }
                Ok(()) => fail("ro-write-accepted", disk, BlkError::Status(0)),
                Err(e) => fail("ro-write", disk, e),
            }
            continue;
        }

        if blk.capacity < PATTERN_SECTORS {
            fail("too-small", disk, BlkError::TooLarge);
        }
        for (i, b) in wbuf.iter_mut().enumerate() {
            *b = pattern_byte(i as u64 / SECTOR, i % SECTOR as usize);
        }
        // One big write, then sector-sized writes over the second half (many small requests).
        blk.write(0, wbuf)
            .unwrap_or_else(|e| fail("write", disk, e));
        let half = PATTERN_SECTORS / 2;
        for s in half..PATTERN_SECTORS {
            let at = (s * SECTOR) as usize;
            blk.write(s, &wbuf[at..at + SECTOR as usize])
                .unwrap_or_else(|e| fail("write-sector", disk, e));
        }
        if blk.has_flush {
            blk.flush().unwrap_or_else(|e| fail("flush", disk, e));
        }
        rbuf.fill(0);
        blk.read(0, rbuf).unwrap_or_else(|e| fail("read", disk, e));
        if rbuf != wbuf {
            let at = rbuf.iter().zip(wbuf.iter()).position(|(a, b)| a != b);
            serial::lock()
                .s("BLK-SELFTEST-FAIL disk=")
                .u(disk as u64)
                .s(" mismatch at byte ")
                .u(at.unwrap_or(0) as u64)
                .s("\n");
            power::off(1);
        }
        // The last sector reads; reads at or across the end must fail.
        blk.read(blk.capacity - 1, &mut rbuf[..512])
            .unwrap_or_else(|e| fail("read-last", disk, e));
        match blk.read(blk.capacity, &mut rbuf[..512]) {
            Err(BlkError::Status(_)) => {}
            Ok(()) => fail("read-past-end-accepted", disk, BlkError::Status(0)),
            Err(e) => fail("read-past-end", disk, e),
        }
        match blk.read(blk.capacity - 1, &mut rbuf[..1024]) {
            Err(BlkError::Status(_)) => {}
            Ok(()) => fail("read-across-end-accepted", disk, BlkError::Status(0)),
            Err(e) => fail("read-across-end", disk, e),
        }
        serial::lock()
            .s("BLK-RW-OK disk=")
            .u(disk as u64)
            .s(" bytes=")
            .u(len as u64)
            .s("\n");
    }
    serial::lock()
        .s("BLK-SELFTEST-OK disks=")
        .u(disks as u64)
        .s("\n");
    power::off(0);
}

/// xorshift64 step.
fn next_rand(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// Shortest phase (by the guest's TSC estimate, which may be off by the fallback frequency).
const MIN_PHASE_MS: u64 = 500;

/// One benchmark phase: `count` requests of `len` bytes, `depth` in flight.
struct Phase {
    name: &'static str,
    kind: Kind,
    len: u32,
    count: u64,
    depth: usize,
    random: bool,
}

/// Runs the throughput benchmark over the first `mib` MiB of disk 0 and powers off.
pub fn bench(line: &[u8], mib: u64) -> ! {
    let mut blk = match Blk::open(line, 0) {
        Some(Ok(b)) => b,
        Some(Err(e)) => fail("bench-init", 0, e),
        None => {
            serial::lock().s("BLK-BENCH-FAIL no virtio-blk disk\n");
            power::off(1);
        }
    };
    let bytes = mib << 20;
    if mib == 0 || blk.read_only || blk.capacity * SECTOR < bytes {
        serial::lock()
            .s("BLK-BENCH-FAIL need a writable disk of at least ")
            .u(mib)
            .s(" MiB (capacity ")
            .u(blk.capacity * SECTOR)
            .s(" bytes)\n");
        power::off(1);
    }
    const BIG: u32 = 1 << 20;
    const SMALL: u32 = 4096;
    let seq_depth = 4;
    let rand_depth = 32;
    let big_bufs = buffer(BIG as usize * seq_depth);
    for (i, b) in big_bufs.iter_mut().enumerate() {
        *b = (i as u8) ^ 0x5a;
    }
    let small_bufs = buffer(SMALL as usize * rand_depth);
    serial::lock()
        .s("BLK-BENCH-BEGIN mib=")
        .u(mib)
        .s(" tsc_hz=")
        .u(clock::hz())
        .s("\n");
    let phases = [
        Phase {
            name: "seq-write-1m",
            kind: Kind::Write,
            len: BIG,
            count: mib,
            depth: seq_depth,
            random: false,
        },
        Phase {
            name: "seq-read-1m",
            kind: Kind::Read,
            len: BIG,
            count: mib,
            depth: seq_depth,
            random: false,
        },
        Phase {
            name: "rand-write-4k",
            kind: Kind::Write,
            len: SMALL,
            count: mib * 256,
            depth: rand_depth,
            random: true,
        },
        Phase {
            name: "rand-read-4k",
            kind: Kind::Read,
            len: SMALL,
            count: mib * 256,
            depth: rand_depth,
            random: true,
        },
    ];
    for p in &phases {
        let base = if p.len == BIG {
            big_bufs.as_ptr() as u64
        } else {
            small_bufs.as_ptr() as u64
        };
        run_phase(&mut blk, p, base, bytes);
    }
    serial::lock().s("BLK-BENCH-DONE\n");
    power::off(0);
}

fn run_phase(blk: &mut Blk, p: &Phase, buf_base: u64, bytes: u64) {
    serial::lock().s("BLK-BENCH-START ").s(p.name).s("\n");
    let depth = p.depth.min(MAX_IN_FLIGHT);
    let mut free_bufs = [0u8; MAX_IN_FLIGHT];
    for (i, f) in free_bufs.iter_mut().enumerate().take(depth) {
        *f = i as u8;
    }
    let mut n_free = depth;
    let mut buf_of_tag = [0u8; 256];
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let blocks = bytes / u64::from(p.len);
    let (mut issued, mut done) = (0u64, 0u64);
    let stall = clock::ms_to_ticks(10_000);
    // Short phases are noisy: keep issuing until both `count` requests and MIN_PHASE_MS passed.
    let min_ticks = clock::ms_to_ticks(MIN_PHASE_MS);
    let start = clock::rdtsc();
    let mut last_progress = start;
    let more = |issued: u64| issued < p.count || clock::rdtsc().wrapping_sub(start) < min_ticks;
    loop {
        let mut started = false;
        while n_free > 0 && more(issued) {
            let block = if p.random {
                next_rand(&mut rng) % blocks
            } else {
                issued % blocks
            };
            n_free -= 1;
            let b = free_bufs[n_free];
            let addr = buf_base + u64::from(b) * u64::from(p.len);
            let sector = block * u64::from(p.len) / SECTOR;
            match blk.start_raw(p.kind, sector, addr, p.len, false) {
                Ok(tag) => buf_of_tag[usize::from(tag)] = b,
                Err(e) => fail(p.name, 0, e),
            }
            issued += 1;
            started = true;
        }
        if started {
            blk.kick();
        }
        while let Some(r) = blk.complete() {
            match r {
                Ok((tag, 0)) => {
                    free_bufs[n_free] = buf_of_tag[usize::from(tag)];
                    n_free += 1;
                    done += 1;
                }
                Ok((_, status)) => fail(p.name, 0, BlkError::Status(status)),
                Err(e) => fail(p.name, 0, e),
            }
            last_progress = clock::rdtsc();
        }
        if done == issued && !more(issued) {
            break;
        }
        if clock::rdtsc().wrapping_sub(last_progress) > stall {
            fail(p.name, 0, BlkError::Virtio(crate::virtio::Error::Timeout));
        }
        core::hint::spin_loop();
    }
    if p.kind == Kind::Write && blk.has_flush {
        blk.flush().unwrap_or_else(|e| fail("bench-flush", 0, e));
    }
    let ticks = clock::rdtsc().wrapping_sub(start).max(1);
    let hz = clock::hz();
    let total = done * u64::from(p.len);
    let us = (ticks / (hz / 1_000_000).max(1)).max(1);
    serial::lock()
        .s("BLK-BENCH ")
        .s(p.name)
        .s(" bytes=")
        .u(total)
        .s(" ops=")
        .u(done)
        .s(" depth=")
        .u(depth as u64)
        .s(" ticks=")
        .u(ticks)
        .s(" us=")
        .u(us)
        .s(" MBps=")
        .u(total / us)
        .s(" IOPS=")
        .u(done * 1_000_000 / us)
        .s("\n");
}
