#!/usr/bin/env python3
"""Block throughput: plainvm's virtio-blk side by side with QEMU microvm's, same guest, same image.

The ring-3 test guest's polling virtio-blk driver runs `blk-bench=<MiB>` (see
guest/testguest/src/blk_workload.rs): sequential 1 MiB writes (4 in flight, then one flush) and
reads, then random 4 KiB writes and reads (32 in flight), each phase over the first <MiB> of the
disk and lasting at least ~0.5 s. The guest prints TSC ticks per phase; throughput is computed
here with the host's TSC frequency (both VMMs run on the same KVM, so the ratios do not depend on
it). Both VMMs use the host page cache for the image (plainvm: buffered preadv/pwritev; QEMU:
its default cache=writeback, aio=threads), and the image is the same file, written in full
before the first run so that neither VMM reads holes.

Usage: benches/block.py [--mib N] [--runs N] [--qemu-cache writeback|none]
Needs: a release build (cargo build --release) and qemu-system-x86.
"""
import argparse, os, re, statistics, subprocess, sys, tempfile

from bench_jail import jail_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAINVM = os.environ.get("PLAINVM_BIN", os.path.join(ROOT, "target/release/plainvm"))
QEMU_CPU = "qemu64,-cx16,-xsave,-smap,-smep,+xsaveerptr"
PHASES = ["seq-write-1m", "seq-read-1m", "rand-write-4k", "rand-read-4k"]
LINE = re.compile(r"BLK-BENCH (\S+) bytes=(\d+) ops=(\d+) depth=(\d+) ticks=(\d+)")


def tsc_hz():
    """The host TSC frequency: the kernel's calibration from dmesg, else /proc/cpuinfo."""
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout
        for pat in (r"Refined TSC clocksource calibration: ([\d.]+) MHz", r"tsc: Detected ([\d.]+) MHz"):
            m = re.findall(pat, log)
            if m:
                return float(m[-1]) * 1e6
    except (OSError, subprocess.SubprocessError):
        pass
    with open("/proc/cpuinfo") as f:
        m = re.search(r"cpu MHz\s*:\s*([\d.]+)", f.read())
    return float(m.group(1)) * 1e6


def plainvm_cmd(guest, img, mib):
    return [PLAINVM, "run", "--kernel", guest, "--memory", "256M", "--cmdline", f"blk-bench={mib}",
            "--disk", f"path={img}"] + jail_args()


def qemu_cmd(guest, img, mib, cache):
    return ["qemu-system-x86_64", "-enable-kvm", "-cpu", QEMU_CPU,
            "-M", "microvm,acpi=off,pit=on,pic=on,rtc=on", "-m", "256", "-smp", "1",
            "-nodefaults", "-nographic", "-serial", "stdio", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-global", "virtio-mmio.force-legacy=false",
            "-kernel", guest, "-append", f"blk-bench={mib}",
            "-drive", f"id=d0,file={img},format=raw,if=none,cache={cache}",
            "-device", "virtio-blk-device,drive=d0"]


def run(cmd, hz):
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    if "BLK-BENCH-DONE" not in p.stdout:
        sys.exit(f"benchmark failed: {' '.join(cmd)}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    res = {}
    for m in LINE.finditer(p.stdout):
        name, nbytes, ops, _depth, ticks = m.group(1), *map(int, m.groups()[1:])
        secs = ticks / hz
        res[name] = (nbytes / secs / 1e6, ops / secs)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64, help="disk region the phases cover (MiB)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--qemu-cache", default="writeback", choices=["writeback", "none"])
    args = ap.parse_args()
    hz = tsc_hz()
    with tempfile.TemporaryDirectory(prefix="plainvm-blk-bench-") as tmp:
        guest = os.path.join(tmp, "testguest.elf")
        subprocess.run([PLAINVM, "export-testguest", "--out", guest], check=True)
        img = os.path.join(tmp, "disk.img")
        with open(img, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        results = {"plainvm": [], "qemu": []}
        for _ in range(args.runs):  # alternate, so both see the same host conditions
            results["plainvm"].append(run(plainvm_cmd(guest, img, args.mib), hz))
            results["qemu"].append(run(qemu_cmd(guest, img, args.mib, args.qemu_cache), hz))

    load = os.getloadavg()[0]
    print(f"TSC {hz / 1e6:.0f} MHz, {args.mib} MiB region, {args.runs} runs each, "
          f"QEMU cache={args.qemu_cache}, host load average {load:.1f} on {os.cpu_count()} CPUs")
    # Median is the typical run; best-of-N is the least disturbed one (shared, noisy hosts).
    for label, pick in (("median", statistics.median), ("best", max)):
        print(f"\n{label} of {args.runs}")
        print(f"{'phase':<15} {'plainvm MB/s':>13} {'QEMU MB/s':>10} {'plainvm IOPS':>13} "
              f"{'QEMU IOPS':>10} {'ratio':>6}")
        for phase in PHASES:
            p_mb = pick(r[phase][0] for r in results["plainvm"])
            q_mb = pick(r[phase][0] for r in results["qemu"])
            p_io = pick(r[phase][1] for r in results["plainvm"])
            q_io = pick(r[phase][1] for r in results["qemu"])
            print(f"{phase:<15} {p_mb:>13.0f} {q_mb:>10.0f} {p_io:>13.0f} {q_io:>10.0f} "
                  f"{p_mb / q_mb:>6.2f}")


if __name__ == "__main__":
    main()
