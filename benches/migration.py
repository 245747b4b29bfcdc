#!/usr/bin/env python3
"""Live-migration benchmark: plainvm side by side with QEMU microvm, same test guest and workload.

For each guest size and dirty rate, one migration over loopback; reports downtime and total time.
With `--link-mbit N` the source and destination run in two network namespaces joined by a veth
pair shaped to N Mbit/s (tc tbf; needs root), the link's TCP bandwidth is measured first, and
each row also shows total time against the ideal: MiB sent divided by that bandwidth.
Workloads (the ring-3 test guest's `memwrite`): idle (memory touched once, then no writes) and
`dirty=N delay=D` rewriting N pages every D microseconds.
Usage: benches/migration.py [--sizes 512,2048] [--downtime-ms 20] [--link-mbit N]
Needs a release build (cargo build --release) and qemu-system-x86.
"""
import argparse, json, os, re, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_ref import Qmp, qemu_cmd, wait_line  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAINVM = os.path.join(ROOT, "target/release/plainvm")
PORT = 47000
# Where the destination listens, and the command prefixes of the two "hosts" (loopback: none).
DST_ADDR = "127.0.0.1"
SRC_NS, DST_NS = [], []


def sh(*cmd):
    subprocess.run(cmd, check=True)


def make_link(mbit):
    """Two namespaces joined by a veth pair shaped to `mbit`; returns their names."""
    global DST_ADDR, SRC_NS, DST_NS
    a, b = f"pvmiga{os.getpid()}", f"pvmigb{os.getpid()}"
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    sh("ip", "link", "add", "va", "netns", a, "type", "veth", "peer", "name", "vb", "netns", b)
    for ns, dev, addr in ((a, "va", "10.232.0.1/24"), (b, "vb", "10.232.0.2/24")):
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    # Source to destination is where the memory goes; shape that direction.
    sh("ip", "netns", "exec", a, "tc", "qdisc", "add", "dev", "va", "root", "tbf", "rate",
       f"{mbit}mbit", "burst", "1mb", "latency", "100ms")
    DST_ADDR, SRC_NS, DST_NS = "10.232.0.2", ["ip", "netns", "exec", a], ["ip", "netns", "exec", b]
    return a, b


def link_mib_s():
    """TCP bandwidth from the source's namespace to the destination's: 128 MiB, one stream."""
    port = 46999
    srv = subprocess.Popen(DST_NS + [sys.executable, "-c", (
        "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('{DST_ADDR}', {port})); s.listen(1); c, _ = s.accept()\n"
        "while c.recv(1 << 20): pass")])
    time.sleep(0.5)
    out = subprocess.run(SRC_NS + [sys.executable, "-c", (
        "import socket, time\n"
        f"c = socket.create_connection(('{DST_ADDR}', {port})); b = bytes(1 << 20); t = time.time()\n"
        "for _ in range(128): c.sendall(b)\n"
        "c.shutdown(socket.SHUT_WR); c.recv(1); print(128 / (time.time() - t))")],
        capture_output=True, text=True, check=True).stdout
    srv.wait()
    return float(out)


def workloads(mib):
    region = mib - 16
    return [
        ("idle", f"memwrite={region} passes=0 delay=600000000"),
        ("2k pages/10ms (~800 MiB/s)", f"memwrite={region} passes=0 dirty=2048 delay=10000"),
        ("8k pages/10ms (~3 GiB/s)", f"memwrite={region} passes=0 dirty=8192 delay=10000"),
    ]


def plainvm_once(tmp, tg, mib, cmdline, downtime):
    global PORT
    PORT += 1
    sock, out, dout = (os.path.join(tmp, n) for n in ("pv.sock", "pv.out", "pvd.out"))
    d = subprocess.Popen(DST_NS + [PLAINVM, "receive", "--listen", f"tcp:{DST_ADDR}:{PORT}", "--insecure"],
                         stdout=open(dout, "w"), stderr=subprocess.STDOUT)
    wait_line(dout, "waiting for a migration")
    s = subprocess.Popen(SRC_NS + [PLAINVM, "run", "--kernel", tg, "--memory", f"{mib}M", "--api-sock", sock,
                                   "--cmdline", cmdline], stdout=open(out, "w"), stderr=subprocess.STDOUT)
    wait_line(out, "memwrite pass=1 ok")
    r = subprocess.run([PLAINVM, "migrate", "--api-sock", sock, "--to", f"tcp:{DST_ADDR}:{PORT}",
                        "--downtime-ms", str(downtime), "--timeout-s", "120", "--on-timeout", "force"],
                       capture_output=True, text=True)
    for p in (s, d):
        p.kill()
        p.wait()
    m = re.search(r"downtime ([0-9.]+) ms, total ([0-9.]+) ms, (\d+) passes, ([0-9.]+) MiB sent at ([0-9.]+) MiB/s, throttled up to (\d+)%", r.stdout)
    if not m:
        sys.exit(f"plainvm migration failed: {r.stdout} {r.stderr}")
    return float(m.group(1)), float(m.group(2)), int(m.group(3)), float(m.group(4)), int(m.group(6))


def qemu_once(tmp, tg, mib, cmdline, downtime):
    global PORT
    PORT += 1
    out, sq, dq = (os.path.join(tmp, n) for n in ("q.out", "qs.qmp", "qd.qmp"))
    for f in (sq, dq, out):
        if os.path.exists(f):
            os.unlink(f)
    d = subprocess.Popen(DST_NS + qemu_cmd(tg, mib, cmdline, ["-serial", "null", "-qmp", f"unix:{dq},server=on,wait=off",
                                                              "-incoming", f"tcp:{DST_ADDR}:{PORT}"]))
    s = subprocess.Popen(SRC_NS + qemu_cmd(tg, mib, cmdline, ["-serial", f"file:{out}", "-qmp", f"unix:{sq},server=on,wait=off"]))
    wait_line(out, "memwrite pass=1 ok")
    q = Qmp(sq)
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": "auto-converge", "state": True}])
    q.cmd("migrate-set-parameters", **{"downtime-limit": downtime, "max-bandwidth": 100 << 30})
    q.cmd("migrate", uri=f"tcp:{DST_ADDR}:{PORT}")
    t = time.time()
    while True:
        st = q.cmd("query-migrate")["return"]
        if st.get("status") in ("completed", "failed", "cancelled"):
            break
        if time.time() - t > 120:
            q.cmd("migrate_cancel")
        time.sleep(0.01)
    for p in (s, d):
        p.kill()
        p.wait()
    if st.get("status") != "completed":
        return None
    ram = st.get("ram", {})
    return float(st.get("downtime", 0)), float(st.get("total-time", 0)), int(ram.get("dirty-sync-count", 0)), ram.get("transferred", 0) / 1048576


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="512,2048")
    ap.add_argument("--downtime-ms", type=int, default=20)
    ap.add_argument("--link-mbit", type=int, default=0)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="plainvm-migbench-")
    tg = os.path.join(tmp, "tg.elf")
    subprocess.run([PLAINVM, "export-testguest", "--out", tg], check=True)
    namespaces = make_link(args.link_mbit) if args.link_mbit else ()
    try:
        link = link_mib_s() if namespaces else 0
        if link:
            print(f"link: {args.link_mbit} Mbit/s shaped, {link:.1f} MiB/s measured (TCP, one stream)")
        print("| guest | workload | plainvm downtime | plainvm total | passes | MiB sent | throttle | qemu downtime | qemu total | ratio total | plainvm total / ideal |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for mib in [int(x) for x in args.sizes.split(",")]:
            for name, cmdline in workloads(mib):
                pv = plainvm_once(tmp, tg, mib, cmdline, args.downtime_ms)
                q = qemu_once(tmp, tg, mib, cmdline, args.downtime_ms)
                qd, qt = (f"{q[0]:.0f} ms", f"{q[1]:.0f} ms") if q else ("failed", "failed")
                ratio = f"{pv[1] / q[1]:.2f}" if q and q[1] else "-"
                ideal = f"{pv[1] / (pv[3] / link * 1000):.2f}" if link else "-"
                print(f"| {mib} MiB | {name} | {pv[0]:.1f} ms | {pv[1]:.0f} ms | {pv[2]} | {pv[3]:.0f} | {pv[4]}% | {qd} | {qt} | {ratio} | {ideal} |", flush=True)
    finally:
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns])


if __name__ == "__main__":
    main()
