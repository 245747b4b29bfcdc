//! Command-line parsing: space-separated words, `key=value` with decimal values, unknown words ignored.

use crate::serial;

/// Longest command line we look at.
const MAX_LEN: usize = 4096;

/// What the command line asked for.
pub struct Options {
    /// `exit-now`: power off right after parsing.
    pub exit_now: bool,
    /// `echo`: echo console input upper-cased until `q`, then power off.
    pub echo: bool,
    /// `idle`: after the greeting, stay up doing nothing (for memory measurements).
    pub idle: bool,
    /// `fill=<MiB>`: write a fixed non-zero pattern into this many MiB first (see `fill.rs`).
    pub fill_mib: Option<u64>,
    /// `memwrite=<MiB>`: run the memory-writing workload over this many MiB.
    pub memwrite_mib: Option<u64>,
    /// `passes=<P>`: workload passes; 0 means forever (default 1).
    pub passes: u64,
    /// `dirty=<pages>`: pages touched per pass (default: every page of the region).
    pub dirty: Option<u64>,
    /// `delay=<µs>`: pause between passes, to set the dirty rate (default 0).
    pub delay_us: u64,
    /// `show-gen`: memwrite progress lines also show the hypercall GENERATION register.
    pub show_gen: bool,
    /// `hypercall-selftest`: exercise every hypercall, malformed ones included.
    pub hypercall_selftest: bool,
    /// `agent`: announce as guest agent and obey host requests (power off) forever.
    pub agent: bool,
    /// `exit-code=N`: end through the hypercall POWER call with exit status N.
    pub exit_code: Option<u64>,
    /// The whole command line (virtio drivers look for `virtio_mmio.device=` words in it).
    pub line: &'static [u8],
    /// `blk-selftest`: write, flush, read back and check every virtio-blk disk; get-id; read-only.
    pub blk_selftest: bool,
    /// `blk-bench=<MiB>`: virtio-blk throughput over this many MiB of the first disk.
    pub blk_bench_mib: Option<u64>,
    /// `blk-loop`: the verifiable disk workload on the first disk (`passes=`, `show-gen` apply).
    pub blk_loop: bool,
    /// `net-selftest`: one frame each way through the first virtio-net device.
    pub net_selftest: bool,
    /// `net-bench=<MiB>`: virtio-net transmit then receive throughput over this many MiB.
    pub net_bench_mib: Option<u64>,
    /// `spin=<dev>[,<dev>...]` (rng, balloon, vsock; the word may repeat): keep those devices'
    /// queues busy for ever (`spin/mod.rs`). Bits of `spin::RNG`, `BALLOON`, `VSOCK`.
    pub spin: u8,
    /// `agent-flood`: AGENT_HELLO with changing capabilities in a tight loop, for ever.
    pub agent_flood: bool,
}

/// Parses the NUL-terminated command line at guest-physical address `addr` (0: none).
///
/// # Safety
/// `addr` must be 0 or point at readable memory up to a NUL byte or `MAX_LEN` bytes, which stays
/// unchanged for the rest of the run (`Options::line` keeps referring to it).
pub unsafe fn parse(addr: u64) -> Options {
    let mut opts = Options {
        exit_now: false,
        echo: false,
        idle: false,
        fill_mib: None,
        memwrite_mib: None,
        passes: 1,
        dirty: None,
        delay_us: 0,
        show_gen: false,
        hypercall_selftest: false,
        agent: false,
        exit_code: None,
        line: &[],
        blk_selftest: false,
        blk_bench_mib: None,
        blk_loop: false,
        net_selftest: false,
        net_bench_mib: None,
        spin: 0,
        agent_flood: false,
    };
    if addr == 0 {
        return opts;
    }
    let base = addr as *const u8;
    let mut len = 0;
    // SAFETY: the caller guarantees the bytes up to the NUL (or MAX_LEN) are readable.
    while len < MAX_LEN && unsafe { base.add(len).read_volatile() } != 0 {
        len += 1;
    }
    // SAFETY: the `len` bytes just scanned are readable and nothing writes them meanwhile.
    let line = unsafe { core::slice::from_raw_parts(base, len) };
    opts.line = line;

    for word in line
        .split(|&c| c == b' ' || c == b'\t' || c == b'\n')
        .filter(|w| !w.is_empty())
    {
        if word == b"exit-now" {
            opts.exit_now = true;
        } else if word == b"echo" {
            opts.echo = true;
        } else if word == b"idle" {
            opts.idle = true;
        } else if let Some(v) = value(word, b"fill=") {
            opts.fill_mib = Some(v);
        } else if let Some(v) = value(word, b"memwrite=") {
            opts.memwrite_mib = Some(v);
        } else if let Some(v) = value(word, b"passes=") {
            opts.passes = v;
        } else if let Some(v) = value(word, b"dirty=") {
            opts.dirty = Some(v);
        } else if word == b"show-gen" {
            opts.show_gen = true;
        } else if let Some(v) = value(word, b"delay=") {
            opts.delay_us = v;
        } else if word == b"hypercall-selftest" {
            opts.hypercall_selftest = true;
        } else if word == b"agent" {
            opts.agent = true;
        } else if let Some(v) = value(word, b"exit-code=") {
            opts.exit_code = Some(v);
        } else if word == b"blk-selftest" {
            opts.blk_selftest = true;
        } else if let Some(v) = value(word, b"blk-bench=") {
            opts.blk_bench_mib = Some(v);
        } else if word == b"blk-loop" {
            opts.blk_loop = true;
        } else if word == b"net-selftest" {
            opts.net_selftest = true;
        } else if let Some(v) = value(word, b"net-bench=") {
            opts.net_bench_mib = Some(v);
        } else if let Some(names) = word.strip_prefix(b"spin=") {
            opts.spin |= crate::spin::parse(names);
        } else if word == b"agent-flood" {
            opts.agent_flood = true;
        }
    }
    opts
}

/// If `word` is `key` followed by a decimal number, returns the number; warns on a bad number.
fn value(word: &[u8], key: &[u8]) -> Option<u64> {
    let digits = word.strip_prefix(key)?;
    let parsed = if digits.is_empty() {
        None
    } else {
        digits.iter().try_fold(0u64, |acc, &c| {
            if c.is_ascii_digit() {
                acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
            } else {
                None
            }
        })
    };
    if parsed.is_none() {
        serial::lock()
            .s("cmdline: ignoring bad value: ")
            .bytes(word)
            .s("\n");
    }
    parsed
}
