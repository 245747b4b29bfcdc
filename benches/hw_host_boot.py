#!/usr/bin/env python3
"""Linux boot to init on the emulated AMD-V host (resources/hw-host/README.md): plainvm beside
QEMU microvm (`-accel kvm`), both run the same way inside the same level-1 host (QEMU TCG with
nested SVM, Debian's kvm-amd), so both guests are at level 2 and see the same CPU.

Measured per run, in wall time taken on this machine as the L1 console prints the lines: from
the VMM's start (the L1 script's marker just before it runs the VMM) to the guest kernel's first
console line, and on to the initramfs's `GUEST-INIT-REACHED` line. (The guest kernels' own
uptimes are not comparable: under QEMU the kernel's clock starts on tsc-early, under plainvm on
kvm-clock.) Payloads: the project's kernel for hardware
hosts (vmlinux-hw) and Debian's stock kernel (bzImage), each with the 64-bit busybox initramfs,
1 vCPU, 128 MiB (stock: 256 MiB), command line `console=ttyS0 reboot=k panic=-1` (stock: plus
the initcall_blacklist the tests use, for both VMMs). Rounds alternate which VMM goes first.
These are EMULATED timings: TCG runs both L1 and L2 code, several times slower than hardware and
dependent on the machine's load; only the side-by-side ratio means something.

Usage: benches/hw_host_boot.py [--runs N] [--stock-runs N]
Needs: cargo build --release, resources/build-guest.sh outputs (incl. hw-host/l1-qemu.cpio).
"""
import argparse, os, re, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAINVM = os.environ.get("PLAINVM_BIN", os.path.join(ROOT, "target/release/plainvm"))
HWC = os.path.join(os.environ.get("PLAINVM_CACHE", "/var/cache/plainvm"), "hw-host")
RES = os.path.join(ROOT, "resources/hw-host")
STOCK_EXTRA = "initcall_blacklist=i8042_init,cmos_init"

SCRIPT = r"""
QEMU="qemu-system-x86_64 -accel kvm -cpu host -M microvm,acpi=off -device i8042 -smp 1 \
  -nodefaults -no-user-config -display none -serial stdio -no-reboot"
info l1-cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
info l1-qemu="$(qemu-system-x86_64 --version | head -n1)"
one() { # one KIND VMM I
    case $1 in
        own) k=$HW/vmlinux-hw mem=128M cl="$CMDLINE" ;;
        stock) k=$HW/vmlinuz mem=256M cl="$CMDLINE $STOCK_EXTRA" ;;
    esac
    if [ $2 = plainvm ]; then
        run $1-plainvm-$3 600 plainvm run --kernel $k --initrd $HW/initramfs.cpio --memory $mem --cmdline "$cl"
    else
        run $1-qemu-$3 600 $QEMU -m $mem -kernel $k -initrd $HW/initramfs.cpio -append "$cl"
    fi
}
for kind in own stock; do
    [ $kind = own ] && n=$RUNS || n=$STOCK_RUNS
    i=1
    while [ $i -le $n ]; do
        if [ $((i % 2)) = 1 ]; then one $kind plainvm $i; one $kind qemu $i
        else one $kind qemu $i; one $kind plainvm $i; fi
        i=$((i + 1))
    done
done
"""


def cpio(entries):
    """newc archive of (name, mode, bytes or None for a directory)."""
    out = bytearray()

    def entry(ino, name, mode, data):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        out.extend(b"070701" + b"".join(b"%08x" % f for f in fields) + name.encode() + b"\0")
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for i, (name, mode, data) in enumerate(entries, 1):
        entry(i, name, (0o100000 if data is not None else 0o040000) | mode, data or b"")
    entry(0, "TRAILER!!!", 0, b"")
    return bytes(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="boots of the project's kernel per VMM")
    ap.add_argument("--stock-runs", type=int, default=1, help="boots of Debian's kernel per VMM")
    ap.add_argument("--log", help="write L1's whole console (with times) to this file")
    args = ap.parse_args()
    for f in (PLAINVM, f"{HWC}/vmlinux-l1", f"{HWC}/l1.cpio", f"{HWC}/l1-qemu.cpio"):
        if not os.path.exists(f):
            sys.exit(f"{f} is missing: cargo build --release; resources/build-guest.sh")
    read = lambda p: open(p, "rb").read()
    script = f"RUNS={args.runs}\nSTOCK_RUNS={args.stock_runs}\nSTOCK_EXTRA='{STOCK_EXTRA}'\n{SCRIPT}"
    extra = cpio([("init", 0o755, read(f"{RES}/l1-init")), ("hw-run", 0o755, None),
                  ("hw-run/lib.sh", 0o644, read(f"{RES}/l1-lib.sh")),
                  ("hw-run/script.sh", 0o644, script.encode()),
                  ("bin/plainvm", 0o755, read(PLAINVM))])
    with tempfile.TemporaryDirectory() as d:
        initrd = os.path.join(d, "initrd")
        with open(initrd, "wb") as f:
            f.write(read(f"{HWC}/l1.cpio"))
            f.write(read(f"{HWC}/l1-qemu.cpio"))
            f.write(extra)
        cmd = ["nice", "-n", "10", "qemu-system-x86_64", "-accel", "tcg,thread=multi",
               "-cpu", "EPYC,+svm,+npt", "-smp", "2", "-m", "2G", "-nodefaults", "-no-user-config",
               "-display", "none", "-serial", "stdio", "-no-reboot",
               "-kernel", f"{HWC}/vmlinux-l1", "-initrd", initrd,
               "-append", "console=ttyS0 panic=-1 no_timer_check loglevel=2"]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        start, first, init, info, status = {}, {}, {}, {}, {}
        log = open(args.log, "w") if args.log else None
        try:
            for raw in p.stdout:
                t = time.perf_counter() - t0
                line = raw.decode(errors="replace").rstrip("\r\n")
                if log:
                    print(f"[{t:8.3f}] {line}", file=log, flush=True)
                if m := re.match(r"HWHOST-RUN-START (\S+)", line):
                    start[m[1]] = t
                elif m := re.match(r"@(\S+) GUEST-INIT-REACHED", line):
                    init.setdefault(m[1], t)
                elif m := re.match(r"@(\S+) \[ *\d+\.\d+\] ", line):
                    first.setdefault(m[1], t)
                elif m := re.match(r"HWHOST-RUN (\S+) status=(\S+)", line):
                    status[m[1]] = m[2]
                    print(f"{m[1]}: status {m[2]}, init after "
                          f"{init.get(m[1], float('nan')) - start.get(m[1], 0):.2f} s", flush=True)
                elif m := re.match(r"HWHOST-INFO ([^=]+)=(.*)", line):
                    info[m[1]] = m[2].strip()
                elif line.startswith("HWHOST-L1-READY"):
                    print(f"L1 ready after {t:.1f} s", flush=True)
                elif line.startswith("HWHOST-L1-EXIT"):
                    break
        finally:
            p.kill()
            p.wait()
    print(f"\nL1: {info.get('l1-cpu', '?')}; QEMU inside L1: {info.get('l1-qemu', '?')}")
    when = time.strftime("%H:%M on %Y-%m-%d")
    print(f"taken at {when}, load average {os.getloadavg()[0]:.1f}\n")
    print("| payload | measure | plainvm | QEMU microvm | ratio |")
    print("|---|---|---|---|---|")
    for kind, label in (("own", "vmlinux-hw, 1 vCPU, 128 MiB"), ("stock", "Debian 6.1 bzImage, 1 vCPU, 256 MiB")):
        wall, console, boot = {}, {}, {}
        for vmm in ("plainvm", "qemu"):
            names = [n for n in init if n.startswith(f"{kind}-{vmm}-") and n in first]
            wall[vmm] = [init[n] - start[n] for n in names]
            console[vmm] = [first[n] - start[n] for n in names]
            boot[vmm] = [init[n] - first[n] for n in names]
        if not wall["plainvm"] or not wall["qemu"]:
            if any(n.startswith(kind) for n in status):
                print(f"| {label} | no result: {[(n, s) for n, s in status.items() if n.startswith(kind)]} | | | |")
            continue
        for measure, v in (("VMM start to init", wall), ("VMM start to the kernel's first console line", console),
                           ("first console line to init", boot)):
            a, b = statistics.median(v["plainvm"]), statistics.median(v["qemu"])
            print(f"| {label} | {measure}, median of {len(v['plainvm'])}/{len(v['qemu'])} "
                  f"| {a:.2f} s | {b:.2f} s | {a / b:.2f} |")


if __name__ == "__main__":
    main()
