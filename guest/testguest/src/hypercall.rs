//! The hypercall device from ring 3: `hypercall-selftest` (every call, malformed ones included),
//! `agent` (announce, then obey host requests) and `exit-code=N` (POWER off with that code);
//! `hello` and `take_request` for `agent-flood` (`spin/mod.rs`).

use crate::{clock, serial};
use core::ptr::{read_volatile, write_volatile};
use plainvm_guest_proto::call::probe;
use plainvm_guest_proto::{
    agent as caps, call, nr, power, regs, request, stage, status, Error, Registers, BASE, LOG_MAX,
    MAGIC, VERSION,
};

/// The register page, identity-mapped and user-accessible.
struct Mmio;

impl Registers for Mmio {
    fn read32(&mut self, offset: u64) -> u32 {
        // SAFETY: BASE..BASE+4 KiB is the device page, identity-mapped for ring 3; reads have no
        // effect on guest memory.
        unsafe { read_volatile((BASE + offset) as *const u32) }
    }
    fn write32(&mut self, offset: u64, value: u32) {
        // SAFETY: as in read32; the write goes to the device, not to RAM.
        unsafe { write_volatile((BASE + offset) as *mut u32, value) }
    }
}

/// The GENERATION register (bumped by plainvm on every restore and migration).
pub fn generation() -> u32 {
    Mmio.read32(regs::GENERATION)
}

/// POWER(off, code): ends the VM with that exit status.
pub fn exit(code: u64) -> ! {
    let code = u32::try_from(code).unwrap_or(u32::MAX);
    let r = call(&mut Mmio, nr::POWER, [power::OFF, code, 0, 0]);
    serial::lock()
        .s("EXIT-CODE-REFUSED code=")
        .u(u64::from(code))
        .s(" status=")
        .u(u64::from(status_of(r)))
        .s("\n");
    crate::power::off(1);
}

/// AGENT_HELLO with capability bits `caps`, as cheaply as the interface allows (three register
/// accesses, each a VM exit: ARG0, CALL, STATUS; the call reads no other argument); returns the
/// call's status.
pub fn hello(caps: u32) -> u32 {
    Mmio.write32(regs::ARG[0], caps);
    Mmio.write32(regs::CALL, nr::AGENT_HELLO);
    Mmio.read32(regs::STATUS)
}

/// The oldest pending host request as (kind, argument), if one is waiting.
pub fn take_request() -> Option<(u32, u32)> {
    if Mmio.read32(regs::PENDING) == 0 {
        return None;
    }
    call(&mut Mmio, nr::REQUEST, [0; 4])
        .ok()
        .map(|[kind, arg, ..]| (kind, arg))
}

/// Announce as an agent that handles power requests, then poll for requests forever.
pub fn agent() -> ! {
    let hello = call(
        &mut Mmio,
        nr::AGENT_HELLO,
        [caps::POWER | caps::TIME_SYNC, 0, 0, 0],
    );
    serial::lock()
        .s("AGENT-READY status=")
        .u(u64::from(status_of(hello)))
        .s("\n");
    loop {
        if Mmio.read32(regs::PENDING) == 0 {
            sleep_ms(5);
            continue;
        }
        let Ok([kind, arg, id, _]) = call(&mut Mmio, nr::REQUEST, [0; 4]) else {
            continue;
        };
        serial::lock()
            .s("AGENT-REQUEST id=")
            .u(u64::from(id))
            .s(" kind=")
            .u(u64::from(kind))
            .s(" arg=")
            .u(u64::from(arg))
            .s("\n");
        match kind {
            request::POWER_OFF => exit(u64::from(arg)),
            request::REBOOT => {
                let _ = call(&mut Mmio, nr::POWER, [power::REBOOT, arg, 0, 0]);
            }
            _ => {}
        }
    }
}

fn status_of(r: Result<[u32; 4], Error>) -> u32 {
    match r {
        Ok(_) => status::OK,
        Err(Error::Status(s)) => s,
        Err(Error::NoDevice) => u32::MAX,
    }
}

/// Host wall clock in ns (HOST_TIME), for timing calls; 0 if the call fails.
fn host_ns(m: &mut Mmio) -> u64 {
    call(m, nr::HOST_TIME, [0; 4]).map_or(0, |[lo, hi, ns, _]| {
        (u64::from(lo) | (u64::from(hi) << 32)) * 1_000_000_000 + u64::from(ns)
    })
}

fn sleep_ms(ms: u64) {
    let end = clock::rdtsc() + clock::ms_to_ticks(ms);
    while clock::rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Counts and prints PASS/FAIL lines.
struct Report {
    passed: u64,
    failed: u64,
}

impl Report {
    fn check(&mut self, name: &str, ok: bool, got: u64) {
        let mut out = serial::lock();
        if ok {
            self.passed += 1;
            out.s("HC PASS ").s(name).s("\n");
        } else {
            self.failed += 1;
            out.s("HC FAIL ").s(name).s(" got=").x(got).s("\n");
        }
    }

    /// The call must fail with `want`.
    fn refused(&mut self, name: &str, r: Result<[u32; 4], Error>, want: u32) {
        let s = status_of(r);
        self.check(name, s == want, u64::from(s));
    }
}

static HELLO: &[u8] = b"hello from the hypercall selftest";

/// Exercise every call; `ram` is the RAM size below 4 GiB. The VM must keep running throughout.
pub fn selftest(ram: u64) {
    let mut r = Report {
        passed: 0,
        failed: 0,
    };
    let m = &mut Mmio;
    let magic = m.read32(regs::MAGIC);
    r.check("magic", magic == MAGIC, u64::from(magic));
    r.check("probe", probe(m) == Ok(VERSION), 0);

    let v = call(m, nr::VERSION, [0; 4]);
    let all = (1u32 << nr::COUNT) - 1;
    r.check("version", v.map(|x| (x[0], x[1])) == Ok((VERSION, all)), 0);

    r.check(
        "mark",
        call(m, nr::BOOT_MARK, [stage::READY, 0, 0, 0]).is_ok(),
        0,
    );
    r.check(
        "mark-any-stage",
        call(m, nr::BOOT_MARK, [77, 0, 0, 0]).is_ok(),
        0,
    );

    let addr = HELLO.as_ptr() as u64;
    let (lo, hi) = (addr as u32, (addr >> 32) as u32);
    let len = HELLO.len() as u32;
    let logged = call(m, nr::LOG, [lo, hi, len, 0]);
    r.check(
        "log",
        logged.map(|x| x[0]) == Ok(len),
        u64::from(status_of(logged)),
    );
    r.refused(
        "log-empty",
        call(m, nr::LOG, [lo, hi, 0, 0]),
        status::INVALID_ARGUMENT,
    );
    r.refused(
        "log-too-long",
        call(m, nr::LOG, [lo, hi, LOG_MAX + 1, 0]),
        status::INVALID_ARGUMENT,
    );
    r.refused(
        "log-huge-length",
        call(m, nr::LOG, [lo, hi, u32::MAX, 0]),
        status::INVALID_ARGUMENT,
    );
    r.refused(
        "log-mmio-address",
        call(m, nr::LOG, [BASE as u32, 0, 16, 0]),
        status::BAD_ADDRESS,
    );
    r.refused(
        "log-address-above-ram",
        call(m, nr::LOG, [0, 0x100, 16, 0]),
        status::BAD_ADDRESS,
    );
    r.refused(
        "log-address-wraps",
        call(m, nr::LOG, [u32::MAX - 3, u32::MAX, 16, 0]),
        status::BAD_ADDRESS,
    );
    let end = ram.min(BASE) - 4;
    r.refused(
        "log-crosses-ram-end",
        call(m, nr::LOG, [end as u32, (end >> 32) as u32, 16, 0]),
        status::BAD_ADDRESS,
    );

    // A flood: the burst gets through, the rest is refused with RATE_LIMITED.
    let (mut ok, mut limited) = (0u64, 0u64);
    let t0 = host_ns(m);
    for _ in 0..500 {
        match status_of(call(m, nr::LOG, [lo, hi, len, 0])) {
            status::OK => ok += 1,
            status::RATE_LIMITED => limited += 1,
            _ => {}
        }
    }
    // Each call is 6 MMIO exits (4 ARG writes, CALL, STATUS read).
    let ns_per_call = host_ns(m).saturating_sub(t0) / 500;
    serial::lock()
        .s("HC log-flood ok=")
        .u(ok)
        .s(" limited=")
        .u(limited)
        .s(" ns-per-call=")
        .u(ns_per_call)
        .s("\n");
    // The device allows a burst of 32, then 8 per second: how many got through depends on how
    // long the flood took (a loaded host runs it slower), never more than that. The log calls
    // above took from the same burst (`log` one token, at most a few more had time to come
    // back), so fewer than 32 may get through: 31 did once on a quick host.
    let secs = (ns_per_call * 500).div_ceil(1_000_000_000);
    r.check("log-flood", ok >= 24 && ok <= 32 + 8 * secs + 1, ok);

    match call(m, nr::HOST_TIME, [0; 4]) {
        Ok([lo, hi, ns, _]) => {
            let secs = u64::from(lo) | (u64::from(hi) << 32);
            serial::lock().s("HC host-time secs=").u(secs).s("\n");
            r.check(
                "host-time",
                secs > 1_600_000_000 && ns < 1_000_000_000,
                secs,
            );
        }
        Err(e) => r.check("host-time", false, u64::from(status_of(Err(e)))),
    }

    let g = call(m, nr::GENERATION, [0; 4]).map(|x| x[0]);
    r.check("generation", g == Ok(m.read32(regs::GENERATION)), 0);

    let kib = ram >> 11;
    r.check(
        "mem-hint",
        call(m, nr::MEM_HINT, [kib as u32, (kib >> 32) as u32, 0, 0]).is_ok(),
        0,
    );
    r.refused(
        "mem-hint-more-than-ram",
        call(m, nr::MEM_HINT, [0, 1, 0, 0]),
        status::INVALID_ARGUMENT,
    );

    r.refused(
        "heartbeat-too-fast",
        call(m, nr::HEARTBEAT, [5, 0, 0, 0]),
        status::INVALID_ARGUMENT,
    );
    r.refused(
        "heartbeat-too-slow",
        call(m, nr::HEARTBEAT, [u32::MAX, 0, 0, 0]),
        status::INVALID_ARGUMENT,
    );
    r.check(
        "heartbeat",
        call(m, nr::HEARTBEAT, [200, 0, 0, 0]).is_ok(),
        0,
    );
    // Go silent for longer than the interval (and the VMM's idle check period of 1 s): the VMM
    // logs the miss, then the resumption.
    sleep_ms(1500);
    r.check(
        "heartbeat-resume",
        call(m, nr::HEARTBEAT, [200, 0, 0, 0]).is_ok(),
        0,
    );
    r.check(
        "heartbeat-stop",
        call(m, nr::HEARTBEAT, [0, 0, 0, 0]).is_ok(),
        0,
    );

    let req = call(m, nr::REQUEST, [0; 4]).map(|x| x[0]);
    r.check("request-none", req == Ok(request::NONE), 0);
    r.check("pending-none", m.read32(regs::PENDING) == 0, 0);

    r.refused(
        "agent-bad-caps",
        call(m, nr::AGENT_HELLO, [0xff, 0, 0, 0]),
        status::INVALID_ARGUMENT,
    );
    r.check(
        "agent-hello",
        call(m, nr::AGENT_HELLO, [caps::TIME_SYNC, 0, 0, 0]).is_ok(),
        0,
    );

    r.refused(
        "unknown-call",
        call(m, nr::COUNT, [0; 4]),
        status::UNKNOWN_CALL,
    );
    r.refused(
        "unknown-call-max",
        call(m, u32::MAX, [0; 4]),
        status::UNKNOWN_CALL,
    );
    r.refused(
        "power-bad-action",
        call(m, nr::POWER, [7, 0, 0, 0]),
        status::INVALID_ARGUMENT,
    );
    r.refused(
        "power-bad-code",
        call(m, nr::POWER, [power::OFF, 256, 0, 0]),
        status::INVALID_ARGUMENT,
    );

    // Register accesses of the wrong size, alignment or direction.
    // SAFETY: byte and word accesses inside the device page; the device answers each.
    unsafe { write_volatile((BASE + regs::CALL) as *mut u8, 0) };
    r.check(
        "byte-write",
        m.read32(regs::STATUS) == status::BAD_ACCESS,
        0,
    );
    m.write32(regs::MAGIC, 0);
    r.check(
        "write-read-only",
        m.read32(regs::STATUS) == status::BAD_ACCESS,
        0,
    );
    m.write32(0x800, 1);
    r.check(
        "write-unmapped",
        m.read32(regs::STATUS) == status::BAD_ACCESS,
        0,
    );
    // SAFETY: as above.
    let half = unsafe { read_volatile((BASE + 1) as *const u16) };
    r.check(
        "unaligned-read",
        half == u16::from_le_bytes(*b"LV"),
        u64::from(half),
    );
    r.check("read-beyond", m.read32(0xffc) == 0, 0);
    r.check("still-alive", call(m, nr::VERSION, [0; 4]).is_ok(), 0);

    serial::lock()
        .s("HYPERCALL-SELFTEST passed=")
        .u(r.passed)
        .s(" failed=")
        .u(r.failed)
        .s("\n");
}
