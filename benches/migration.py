#!/usr/bin/env python3
"""Live-migration benchmark: plainvm side by side with QEMU microvm, same test guest and workload.

For each guest size and dirty rate, one migration over loopback; reports downtime, total time,
and total time against the ideal (memory touched / measured link bandwidth).
Workloads (the ring-3 test guest's `memwrite`): idle (memory touched once, then no writes) and
`dirty=N delay=D` rewriting N pages every D microseconds.
Usage: benches/migration.py [--sizes 512,2048] [--downtime-ms 20]
Needs a release build (cargo build --release) and qemu-system-x86.
"""
import argparse, json, os, re, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_ref import Qmp, qemu_cmd, wait_line  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAINVM = os.path.join(ROOT, "target/release/plainvm")
PORT = 47000


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
    d = subprocess.Popen([PLAINVM, "receive", "--listen", f"tcp:127.0.0.1:{PORT}"],
                         stdout=open(dout, "w"), stderr=subprocess.STDOUT)
    wait_line(dout, "waiting for a migration")
    s = subprocess.Popen([PLAINVM, "run", "--kernel", tg, "--memory", f"{mib}M", "--api-sock", sock,
                          "--cmdline", cmdline], stdout=open(out, "w"), stderr=subprocess.STDOUT)
    wait_line(out, "memwrite pass=1 ok")
    r = subprocess.run([PLAINVM, "migrate", "--api-sock", sock, "--to", f"tcp:127.0.0.1:{PORT}",
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
    d = subprocess.Popen(qemu_cmd(tg, mib, cmdline, ["-serial", "null", "-qmp", f"unix:{dq},server=on,wait=off",
                                                     "-incoming", f"tcp:127.0.0.1:{PORT}"]))
    s = subprocess.Popen(qemu_cmd(tg, mib, cmdline, ["-serial", f"file:{out}", "-qmp", f"unix:{sq},server=on,wait=off"]))
    wait_line(out, "memwrite pass=1 ok")
    q = Qmp(sq)
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": "auto-converge", "state": True}])
    q.cmd("migrate-set-parameters", **{"downtime-limit": downtime, "max-bandwidth": 100 << 30})
    q.cmd("migrate", uri=f"tcp:127.0.0.1:{PORT}")
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
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="plainvm-migbench-")
    tg = os.path.join(tmp, "tg.elf")
    subprocess.run([PLAINVM, "export-testguest", "--out", tg], check=True)
    print("| guest | workload | plainvm downtime | plainvm total | passes | MiB sent | throttle | qemu downtime | qemu total | ratio total |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mib in [int(x) for x in args.sizes.split(",")]:
        for name, cmdline in workloads(mib):
            pv = plainvm_once(tmp, tg, mib, cmdline, args.downtime_ms)
            q = qemu_once(tmp, tg, mib, cmdline, args.downtime_ms)
            qd, qt = (f"{q[0]:.0f} ms", f"{q[1]:.0f} ms") if q else ("failed", "failed")
            ratio = f"{pv[1] / q[1]:.2f}" if q and q[1] else "-"
            print(f"| {mib} MiB | {name} | {pv[0]:.1f} ms | {pv[1]:.0f} ms | {pv[2]} | {pv[3]:.0f} | {pv[4]}% | {qd} | {qt} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
