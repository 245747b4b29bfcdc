#!/usr/bin/env python3
"""Network benchmark: virtio-net throughput of plainvm side by side with QEMU microvm.

Both VMMs run the same ring-3 test guest (`plainvm export-testguest`) with its polling virtio-net
driver (`net-bench=<MiB>`, see guest/testguest/src/net_workload.rs), so the guest's emulated
kernel is not what is measured. The tap lives in a network namespace this script creates.
  tx: the guest sends <MiB> of 1514-byte frames (to a MAC nobody has: the host kernel counts them on
      the tap and drops them); the guest times it with the TSC, from the first frame queued until the
      device has completed the last one. The tap's rx counter is checked against the frame count.
  rx: a host process in the namespace (benches/net_blaster.c: AF_PACKET, 64 frames per sendmmsg)
      sends 1514-byte frames into the tap as fast as it can; the guest counts <MiB> of them, timed
      from the first frame to the last.
Usage: benches/net.py [--mib N] [--runs N]
Needs: root, a release build (cargo build --release), qemu-system-x86, gcc.
"""
import argparse, json, os, re, statistics, subprocess, sys, tempfile, time

from bench_jail import jail_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAINVM = os.environ.get("PLAINVM_BIN", os.path.join(ROOT, "target/release/plainvm"))
QEMU_CPU = "qemu64,-cx16,-xsave,-smap,-smep,+xsaveerptr"
NS = f"plainvm-netbench-{os.getpid()}"
TAP = "pvbench0"
MAC = "02:00:00:00:00:05"
FRAME = 1514

BLASTER_SRC = os.path.join(ROOT, "benches/net_blaster.c")


def sh(*cmd):
    subprocess.run(cmd, check=True)


def tap_stats():
    out = subprocess.run(["ip", "-n", NS, "-s", "-j", "link", "show", TAP], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)[0]["stats64"]


def tap_rx_packets():
    return tap_stats()["rx"]["packets"]


def run_one(cmd, mib, blaster_bin):
    """Run a VMM with the bench guest; returns (tx MB/s, rx MB/s, share of the host's frames
    the tap dropped during rx because the VMM did not read them in time)."""
    p = subprocess.Popen(["ip", "netns", "exec", NS] + cmd, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    blaster = None
    tx = rx = None
    drop = 0.0
    rx_before = tap_rx_packets()  # before the guest can send anything
    log = []
    try:
        for line in p.stdout:
            log.append(line)
            m = re.search(r"NET-BENCH tx bytes=(\d+) us=(\d+)", line)
            if m:
                b, us = int(m[1]), int(m[2])
                tx = b / us  # bytes per us = MB/s
                got = tap_rx_packets() - rx_before
                want = -(-b // FRAME)
                if got < want:
                    raise RuntimeError(f"the tap counted {got} frames, the guest sent {want}")
            if "NET-BENCH-START rx" in line:
                before = tap_stats()["tx"]
                blaster = subprocess.Popen(["ip", "netns", "exec", NS, blaster_bin, TAP, MAC])
            m = re.search(r"NET-BENCH rx bytes=(\d+) us=(\d+)", line)
            if m:
                rx = int(m[1]) / max(int(m[2]), 1)
                after = tap_stats()["tx"]
                sent = after["packets"] - before["packets"]
                dropped = after["dropped"] - before["dropped"]
                drop = dropped / max(sent + dropped, 1)
            if "NET-BENCH-DONE" in line or "NET-FAIL" in line:
                break
    finally:
        if blaster:
            blaster.kill()
            blaster.wait()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if tx is None or rx is None:
        raise RuntimeError("bench did not complete:\n" + "".join(log[-20:]))
    return tx, rx, drop


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not os.path.exists(PLAINVM):
        sys.exit("build first: cargo build --release")
    tmp = tempfile.mkdtemp(prefix="plainvm-netbench-")
    elf = os.path.join(tmp, "testguest.elf")
    sh(PLAINVM, "export-testguest", "--out", elf)
    blaster_bin = os.path.join(tmp, "net_blaster")
    sh("gcc", "-O2", "-o", blaster_bin, BLASTER_SRC)
    append = f"net-bench={args.mib}"
    vmms = {
        "plainvm": [PLAINVM, "run", "--kernel", elf, "--memory", "128M", "--cmdline", append,
                    "--net", f"tap={TAP},mac={MAC}"] + jail_args(),
        "qemu": ["qemu-system-x86_64", "-enable-kvm", "-cpu", QEMU_CPU,
                 "-M", "microvm,acpi=off,pit=on,pic=on,rtc=on", "-m", "128", "-smp", "1",
                 "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot",
                 "-global", "virtio-mmio.force-legacy=false",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                 "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                 "-device", f"virtio-net-device,netdev=n0,mac={MAC}",
                 "-kernel", elf, "-append", append],
    }
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "-n", NS, "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr")
        sh("ip", "-n", NS, "link", "set", TAP, "up")
        samples = {name: ([], []) for name in vmms}
        for _ in range(args.runs):  # interleaved, so load changes hit both alike
            for name, cmd in vmms.items():
                tx, rx, drop = run_one(cmd, args.mib, blaster_bin)
                samples[name][0].append(tx)
                samples[name][1].append(rx)
                print(f"{name}: tx {tx:.0f} MB/s, rx {rx:.0f} MB/s "
                      f"(tap dropped {100 * drop:.0f}% of the host's frames)", flush=True)
        results = {n: (statistics.median(t), statistics.median(r)) for n, (t, r) in samples.items()}
        print(f"\nmedian of {args.runs} runs, {args.mib} MiB each way, 1514-byte frames (MB/s = 10^6 B/s)")
        print(f"{'':8} {'tx MB/s':>9} {'rx MB/s':>9}")
        for name, (tx, rx) in results.items():
            print(f"{name:8} {tx:9.0f} {rx:9.0f}")
        p, q = results["plainvm"], results["qemu"]
        print(f"{'ratio':8} {p[0] / q[0]:9.2f} {p[1] / q[1]:9.2f}   (plainvm / qemu)")
        # Each plainvm run next to the QEMU run right after it: drifts of the host's speed
        # (this nested host swings by +-15 % between runs) hit both halves of a pair alike.
        pairs = [[a / b for a, b in zip(samples["plainvm"][i], samples["qemu"][i])] for i in (0, 1)]
        print(f"{'paired':8} {statistics.median(pairs[0]):9.2f} {statistics.median(pairs[1]):9.2f}"
              f"   (median of the {args.runs} run-by-run ratios; plainvm faster in "
              f"{sum(r > 1 for r in pairs[0])} tx and {sum(r > 1 for r in pairs[1])} rx runs)")
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


if __name__ == "__main__":
    main()
