//! plainvm-testguest: a freestanding x86-64 test payload, started in ring 3 by plainvm or via PVH.
#![no_std]
#![no_main]

mod blk_loop;
mod blk_workload;
mod clock;
mod cmdline;
mod entry;
mod fill;
mod halt;
mod hypercall;
mod io;
mod mem;
mod net_workload;
mod power;
mod pvh;
mod serial;
mod smp;
mod spin;
mod virtio;
mod workload;

/// Highest number of vCPUs the guest has stacks for (see `entry.rs`).
pub const MAX_VCPUS: u64 = 8;

/// The shared ring-3 main, entered from `entry.rs` on every vCPU (plainvm) or on the boot vCPU (PVH).
///
/// Arguments follow the plainvm ring-3 register contract: vCPU index, vCPU count, RAM size below
/// 4 GiB in bytes, and the guest-physical address of the NUL-terminated command line (0: none).
#[unsafe(no_mangle)]
pub extern "C" fn testguest_main(idx: u64, ncpus: u64, ram: u64, cmdline_addr: u64) -> ! {
    if idx != 0 {
        smp::secondary(idx);
    }
    let ncpus = ncpus.max(1);
    if ncpus > MAX_VCPUS {
        serial::lock()
            .s("TOO-MANY-VCPUS n=")
            .u(ncpus)
            .s(" max=")
            .u(MAX_VCPUS)
            .s("\n");
        power::off(1);
    }

    // SAFETY: the VMM (or the PVH start info) hands us either 0 or the address of a
    // NUL-terminated string in identity-mapped guest RAM; `parse` stops at NUL or 4 KiB.
    let opts = unsafe { cmdline::parse(cmdline_addr) };
    power::post(2);
    if opts.exit_now {
        power::off(0);
    }

    if ncpus > 1 {
        smp::wait_for_secondaries(ncpus);
    }
    serial::lock()
        .s("plainvm-testguest: hello from vCPU 0 of ")
        .u(ncpus)
        .s("\n");

    if opts.echo {
        echo();
    }
    if let Some(mib) = opts.fill_mib {
        fill::fill(mib, ram);
    }
    if opts.idle {
        serial::lock().s("TESTGUEST-IDLE\n");
        halt::forever();
    }
    if opts.blk_selftest {
        blk_workload::selftest(opts.line);
    }
    if let Some(mib) = opts.blk_bench_mib {
        blk_workload::bench(opts.line, mib);
    }
    if opts.blk_loop {
        blk_loop::run(opts.line, opts.passes, opts.show_gen);
    }
    if opts.net_selftest {
        net_workload::selftest(opts.line);
    }
    if let Some(mib) = opts.net_bench_mib {
        net_workload::bench(opts.line, mib);
    }
    if opts.spin != 0 || opts.agent_flood {
        spin::run(opts.line, opts.spin, opts.agent_flood);
    }
    if opts.hypercall_selftest {
        hypercall::selftest(ram);
    }
    if opts.agent {
        hypercall::agent();
    }
    if let Some(mib) = opts.memwrite_mib {
        workload::memwrite(
            mib,
            opts.passes,
            opts.dirty,
            opts.delay_us,
            opts.show_gen,
            ram,
        );
    }

    power::post(3);
    serial::lock().s("TESTGUEST-OK\n");
    if let Some(code) = opts.exit_code {
        hypercall::exit(code);
    }
    power::off(0);
}

/// Echo console input back upper-cased until `q` arrives (tests the host's stdin path).
fn echo() {
    serial::lock().s("ECHO-READY\n");
    loop {
        let b = serial::read_byte();
        if b == b'q' {
            serial::lock().s("\nECHO-DONE\n");
            return;
        }
        let c = [b.to_ascii_uppercase()];
        serial::lock().bytes(&c);
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // No lock: the panicking vCPU may already hold it.
    serial::write_unlocked("TESTGUEST-PANIC\n");
    power::off(2);
}

/// Personality routine named by the unwind tables of the precompiled `core` (unoptimised builds
/// keep references to it). Never called: panics abort and nothing unwinds.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
