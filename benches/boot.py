#!/usr/bin/env python3
"""Boot benchmarks: plainvm side by side with QEMU microvm on the same payloads.

Measures (see docs/benchmarks.md for results and method):
  1. process start -> guest's first instruction: wall time of a run whose guest powers off at once
     (`exit-now`), and plainvm's own timestamp of the guest's first POST code;
  2. Linux boot: process start -> the initramfs init's `GUEST-INIT-REACHED` line;
  3. VMM memory overhead: process RSS minus the resident pages of guest RAM (from smaps), with the
     test guest idle after boot.
Usage: benches/boot.py [--runs N] [--linux-runs N] [--skip-linux]
Needs: a release build (cargo build --release), qemu-system-x86, resources/build-guest.sh outputs.
"""
import argparse, os, re, statistics, subprocess, sys, tempfile, time

from bench_jail import jail_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAINVM = os.path.join(ROOT, "target/release/plainvm")
CACHE = os.environ.get("PLAINVM_CACHE", "/var/cache/plainvm")
QEMU_CPU = "qemu64,-cx16,-xsave,-smap,-smep,+xsaveerptr"
MEM_MIB = 128


def qemu_cmd(kernel, append, initrd=None, debug_exit=True):
    cmd = ["qemu-system-x86_64", "-enable-kvm", "-cpu", QEMU_CPU, "-M", "microvm,pit=on,pic=on,rtc=on",
           "-m", str(MEM_MIB), "-smp", "1", "-nographic", "-nodefaults", "-serial", "stdio",
           "-no-reboot", "-kernel", kernel, "-append", append]
    if debug_exit:
        cmd += ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    if initrd:
        cmd += ["-initrd", initrd]
    return cmd


def plainvm_cmd(kernel, append, initrd=None, verbose=False):
    cmd = [PLAINVM, "run", "--kernel", kernel, "--memory", f"{MEM_MIB}M", "--cmdline", append]
    cmd += jail_args()
    if initrd:
        cmd += ["--initrd", initrd]
    if verbose:
        cmd.append("--verbose")
    return cmd


def wall(cmd):
    t = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    return time.perf_counter() - t, p


def until_line(cmd, marker, timeout=900):
    """Seconds from spawn until a stdout line contains `marker`; the process is then killed."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        for line in p.stdout:
            if marker in line.decode(errors="replace"):
                return time.perf_counter() - t
            if time.perf_counter() - t > timeout:
                break
        raise RuntimeError(f"{marker} never appeared: {' '.join(cmd)}")
    finally:
        p.kill()
        p.wait()


def overhead_kib(cmd, settle=1.0):
    """RSS of the process minus the resident part of its guest-RAM mapping, in KiB."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(settle)
        total = guest = 0
        size = 0
        with open(f"/proc/{p.pid}/smaps") as f:
            for line in f:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    a, b = line.split()[0].split("-")
                    size = int(b, 16) - int(a, 16)
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
                    total += rss
                    # Guest RAM is the one anonymous mapping of (about) the guest's size.
                    if MEM_MIB << 20 <= size <= (MEM_MIB + 4) << 20:
                        guest += rss
        return total - guest, total, guest
    finally:
        p.kill()
        p.wait()


def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--linux-runs", type=int, default=2)
    ap.add_argument("--skip-linux", action="store_true")
    args = ap.parse_args()
    for need in (PLAINVM,):
        if not os.path.exists(need):
            sys.exit(f"{need} missing: run `cargo build --release` first")
    tmp = tempfile.mkdtemp(prefix="plainvm-bench-")
    tg = os.path.join(tmp, "testguest.elf")
    subprocess.run([PLAINVM, "export-testguest", "--out", tg], check=True)

    print("## start to first instruction (test guest, exit-now)")
    pv, pv_first, qm = [], [], []
    for _ in range(args.runs):
        t, p = wall(plainvm_cmd(tg, "exit-now", verbose=True))
        assert p.returncode == 0, p.stderr
        pv.append(t)
        m = re.search(r"milestone 1 at ([0-9.]+) ms", p.stderr)
        pv_first.append(float(m.group(1)) / 1000)
        t, p = wall(qemu_cmd(tg, "exit-now"))
        assert p.returncode == 1, p.stderr
        qm.append(t)
    print(f"plainvm: wall to exit {med(pv)*1000:.1f} ms (first instruction at {med(pv_first)*1000:.2f} ms after main)")
    print(f"qemu:    wall to exit {med(qm)*1000:.1f} ms")
    print(f"ratio plainvm/qemu (wall to exit): {med(pv)/med(qm):.3f}")

    print("## VMM memory overhead (test guest idle, 128 MiB)")
    o_pv = overhead_kib(plainvm_cmd(tg, "idle"))
    o_qm = overhead_kib(qemu_cmd(tg, "idle"))
    print(f"plainvm: overhead {o_pv[0]} KiB (RSS {o_pv[1]} KiB, guest RAM resident {o_pv[2]} KiB)")
    print(f"qemu:    overhead {o_qm[0]} KiB (RSS {o_qm[1]} KiB, guest RAM resident {o_qm[2]} KiB)")
    print(f"ratio plainvm/qemu (overhead): {o_pv[0]/o_qm[0]:.3f}")

    if args.skip_linux:
        return
    vmlinux = os.path.join(CACHE, "vmlinux-noint3")
    initrd = os.path.join(CACHE, "initramfs.cpio")
    with open(os.path.join(ROOT, "resources/cmdline")) as f:
        append = f.read().strip()
    # QEMU's CPUID goes through the same host rewrite as plainvm's (kvm_pvm puts XSAVE, POPCNT and
    # leaf 7 back), and QEMU hides nothing more, so its guest needs clearcpuid=. Both VMMs get the
    # same line: plainvm adds no clearcpuid= of its own when the line has one.
    append += " clearcpuid=smap,smep,xsave,cx16,umip,popcnt"
    print("## Linux boot to the userspace marker (same vmlinux-noint3, initramfs, command line)")
    lp, lq = [], []
    for _ in range(args.linux_runs):
        lp.append(until_line(plainvm_cmd(vmlinux, append, initrd), "GUEST-INIT-REACHED"))
        lq.append(until_line(qemu_cmd(vmlinux, append, initrd, debug_exit=False), "GUEST-INIT-REACHED"))
        print(f"  run: plainvm {lp[-1]:.2f} s, qemu {lq[-1]:.2f} s", flush=True)
    print(f"plainvm: {med(lp):.2f} s  qemu: {med(lq):.2f} s  ratio plainvm/qemu: {med(lp)/med(lq):.3f}")


if __name__ == "__main__":
    main()
