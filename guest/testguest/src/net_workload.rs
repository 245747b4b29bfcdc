//! `net-selftest` and `net-bench=<MiB>`: virtio-net checks and throughput through the polling driver.
//!
//! Selftest: print `NET-MAC` and `NET-MTU`, send one broadcast frame of ethertype 0x88b5 whose payload is
//! `PVNET-GUEST` then bytes `i as u8`, then wait for a frame from the host with payload
//! `PVNET-HOST` then bytes `(i * 7) as u8` and check every byte (`NET-SELFTEST-OK`).
//! Bench: `NET-BENCH-START tx`, send `MiB` of 1514-byte frames to 02:00:00:00:00:01 (a MAC
//! nobody has: the host kernel counts and drops them), `NET-BENCH tx bytes= us=`; then
//! `NET-BENCH-START rx`, count frames of ethertype 0x88b5 from the host until `MiB` arrived,
//! `NET-BENCH rx bytes= us= frames=` (timed from the first frame).

use crate::virtio::net::{Net, MAX_FRAME};
use crate::virtio::Error;
use crate::{clock, power, serial};

/// Local experimental ethertype used by tests.
pub const ETHERTYPE: u16 = 0x88b5;
const FRAME: usize = 1514;

fn fail(what: &str, e: Option<Error>) -> ! {
    let mut out = serial::lock();
    out.s("NET-FAIL ").s(what);
    if let Some(e) = e {
        out.s(" virtio=").s(e.name());
    }
    out.s("\n");
    drop(out);
    power::off(1);
}

fn open(line: &[u8]) -> Net {
    match Net::open(line, 0) {
        Some(Ok(n)) => n,
        Some(Err(e)) => fail("init", Some(e)),
        None => fail("no virtio-net device", None),
    }
}

fn header(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
}

fn is_ours(f: &[u8]) -> bool {
    f.len() >= 14 && f[12..14] == ETHERTYPE.to_be_bytes()
}

/// One frame each way with the host; powers off (0: passed).
pub fn selftest(line: &[u8]) -> ! {
    let mut net = open(line);
    let m = net.mac;
    let mut out = serial::lock();
    out.s("NET-MAC ");
    for (i, b) in m.iter().enumerate() {
        if i > 0 {
            out.s(":");
        }
        out.bytes(&[hex(b >> 4), hex(b & 15)]);
    }
    out.s("\nNET-MTU ").u(u64::from(net.mtu)).s("\n");
    drop(out);

    let mut frame = [0u8; 14 + 11 + 100];
    header(&mut frame, [0xff; 6], m);
    frame[14..25].copy_from_slice(b"PVNET-GUEST");
    for (i, b) in frame[25..].iter_mut().enumerate() {
        *b = i as u8;
    }
    if let Err(e) = net.send(&frame, 5000) {
        fail("send", Some(e));
    }
    serial::lock().s("NET-SELFTEST-SENT\n");

    let start = clock::rdtsc();
    let limit = clock::ms_to_ticks(60_000);
    loop {
        match net.recv() {
            Err(e) => fail("recv", Some(e)),
            Ok(Some(f)) if is_ours(f) && f[14..].starts_with(b"PVNET-HOST") => {
                let body = &f[24..];
                let bad = body
                    .iter()
                    .enumerate()
                    .position(|(i, &b)| b != (i * 7) as u8);
                let mut out = serial::lock();
                out.s("NET-SELFTEST-RX len=").u(f.len() as u64);
                if let Some(i) = bad {
                    out.s(" CORRUPT at ").u(i as u64).s("\n");
                    drop(out);
                    power::off(1);
                }
                out.s("\nNET-SELFTEST-OK\n");
                drop(out);
                power::off(0);
            }
            Ok(_) => {}
        }
        if clock::rdtsc().wrapping_sub(start) > limit {
            fail("no frame from the host within 60 s", Some(Error::Timeout));
        }
        core::hint::spin_loop();
    }
}

fn hex(n: u8) -> u8 {
    if n < 10 {
        b'0' + n
    } else {
        b'a' + n - 10
    }
}

fn micros(ticks: u64) -> u64 {
    ticks.saturating_mul(1_000_000) / clock::hz().max(1)
}

/// Transmit then receive throughput; powers off (0: both phases completed).
pub fn bench(line: &[u8], mib: u64) -> ! {
    let mut net = open(line);
    let total = mib << 20;
    let mut frame = [0u8; FRAME];
    header(&mut frame, [2, 0, 0, 0, 0, 1], net.mac);
    for (i, b) in frame[14..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let _ = MAX_FRAME;

    serial::lock().s("NET-BENCH-START tx\n");
    let start = clock::rdtsc();
    let mut sent = 0u64;
    while sent < total {
        let mut queued = false;
        while sent < total {
            match net.push_tx(&frame) {
                Ok(()) => {
                    sent += FRAME as u64;
                    queued = true;
                }
                Err(Error::QueueFull) => break,
                Err(e) => fail("tx", Some(e)),
            }
        }
        if queued {
            net.kick_tx();
        }
        if let Err(e) = net.reap_tx() {
            fail("tx reap", Some(e));
        }
    }
    let deadline = clock::ms_to_ticks(30_000);
    while net.tx_in_flight() > 0 {
        if let Err(e) = net.reap_tx() {
            fail("tx reap", Some(e));
        }
        if clock::rdtsc().wrapping_sub(start) > deadline.saturating_mul(10) {
            fail("tx did not complete", Some(Error::Timeout));
        }
    }
    let us = micros(clock::rdtsc().wrapping_sub(start));
    serial::lock()
        .s("NET-BENCH tx bytes=")
        .u(sent)
        .s(" us=")
        .u(us)
        .s("\n");

    serial::lock().s("NET-BENCH-START rx\n");
    let wait = clock::rdtsc();
    let mut got = 0u64;
    let mut frames = 0u64;
    let mut first = 0u64;
    let mut last = clock::rdtsc();
    while got < total {
        match net.recv() {
            Err(e) => fail("rx", Some(e)),
            Ok(Some(f)) if is_ours(f) => {
                if frames == 0 {
                    first = clock::rdtsc();
                }
                frames += 1;
                got += f.len() as u64;
                last = clock::rdtsc();
            }
            Ok(_) => {
                let now = clock::rdtsc();
                if frames == 0 && now.wrapping_sub(wait) > deadline {
                    fail("no frames from the host within 30 s", Some(Error::Timeout));
                }
                if frames > 0 && now.wrapping_sub(last) > deadline {
                    fail("the host stopped sending", Some(Error::Timeout));
                }
            }
        }
    }
    let us = micros(clock::rdtsc().wrapping_sub(first));
    serial::lock()
        .s("NET-BENCH rx bytes=")
        .u(got)
        .s(" us=")
        .u(us)
        .s(" frames=")
        .u(frames)
        .s("\n");
    serial::lock().s("NET-BENCH-DONE\n");
    power::off(0);
}
