#!/usr/bin/env python3
"""Snapshot and restore benchmarks: plainvm side by side with QEMU microvm on the same test guest.

Measures, for 256 MiB and 2 GiB guests whose memory-writing workload has touched (nearly) all
of their RAM:
  * snapshot creation time (and per GiB of guest RAM);
  * restore-to-running latency: process start to vCPUs running (plainvm's own timestamp; for
    QEMU, process start to `query-status` answering "running" after `-incoming exec:cat FILE`);
  * the fixed cost of an empty VM here: process start to the test guest's first instruction.
Usage: benches/snapshot.py [--sizes 256,2048] [--runs N]
Needs a release build (cargo build --release) and qemu-system-x86.
"""
import argparse, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time

from bench_jail import jail_args, jail_dir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_ref import Qmp, qemu_cmd, wait_line  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAINVM = os.path.join(ROOT, "target/release/plainvm")


def workload(mib):
    # Touch almost all RAM once, then wait (a long delay between passes) so the state is stable.
    return f"memwrite={mib - 16} passes=0 delay=600000000"


def plainvm_api(sock, method, path, body=None):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    data = json.dumps(body) if body is not None else ""
    s.sendall(f"{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {len(data)}\r\n\r\n{data}".encode())
    resp = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        resp += c
    head, _, body = resp.decode().partition("\r\n\r\n")
    if " 200 " not in head.split("\r\n")[0]:
        sys.exit(f"API error: {resp!r}")
    return json.loads(body)


def plainvm_round(tmp, tg, mib):
    sock = os.path.join(tmp, "pv.sock")
    out = os.path.join(tmp, "pv.out")
    # Jailed (PLAINVM_BENCH_JAIL), the snapshot goes inside the VM's jail directory.
    snap = os.path.join(jail_dir() or tmp, "pv-snap")
    p = subprocess.Popen([PLAINVM, "run", "--kernel", tg, "--memory", f"{mib}M", "--api-sock", sock,
                          "--cmdline", workload(mib)] + jail_args(), stdout=open(out, "w"),
                         stderr=subprocess.STDOUT)
    wait_line(out, "memwrite pass=1 ok")
    r = plainvm_api(sock, "PUT", "/snapshot/create", {"path": snap})
    p.kill(); p.wait()
    latencies = []
    for _ in range(ARGS.runs):
        rp = subprocess.Popen([PLAINVM, "restore", snap, "--verbose"] + jail_args(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        rp.terminate()
        err = rp.communicate()[1]
        m = re.search(r"vCPUs running ([0-9.]+) ms after start", err)
        if not m:
            sys.exit(f"no restore timing in: {err}")
        latencies.append(float(m.group(1)))
    shutil.rmtree(snap)
    return r["total_ms"], r["memory_bytes_written"], statistics.median(latencies)


def qemu_round(tmp, tg, mib):
    out = os.path.join(tmp, "q.out")
    qmp = os.path.join(tmp, "q.qmp")
    state = os.path.join(tmp, "q.state")
    if os.path.exists(out):
        os.unlink(out)
    p = subprocess.Popen(qemu_cmd(tg, mib, workload(mib), ["-serial", f"file:{out}", "-qmp", f"unix:{qmp},server=on,wait=off"]))
    wait_line(out, "memwrite pass=1 ok")
    q = Qmp(qmp)
    t = time.perf_counter()
    q.cmd("migrate", uri=f"exec:cat > {state}")
    while True:
        st = q.cmd("query-migrate")["return"]
        if st.get("status") in ("completed", "failed"):
            break
        time.sleep(0.002)
    snap_ms = (time.perf_counter() - t) * 1000
    p.kill(); p.wait()
    latencies = []
    for _ in range(ARGS.runs):
        os.unlink(qmp) if os.path.exists(qmp) else None
        t = time.perf_counter()
        rp = subprocess.Popen(qemu_cmd(tg, mib, workload(mib), ["-serial", "null", "-qmp", f"unix:{qmp},server=on,wait=off",
                                                 "-incoming", f"exec:cat {state}"]))
        q = Qmp(qmp)
        while q.cmd("query-status")["return"].get("status") != "running":
            time.sleep(0.0005)
        latencies.append((time.perf_counter() - t) * 1000)
        rp.kill(); rp.wait()
    size = os.path.getsize(state)
    os.unlink(state)
    return snap_ms, size, statistics.median(latencies), st.get("status")


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,2048")
    ap.add_argument("--runs", type=int, default=5)
    ARGS = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="plainvm-snapbench-")
    tg = os.path.join(tmp, "tg.elf")
    subprocess.run([PLAINVM, "export-testguest", "--out", tg], check=True)
    first = []
    for _ in range(10):
        p = subprocess.run([PLAINVM, "run", "--kernel", tg, "--cmdline", "exit-now", "-v"], capture_output=True, text=True)
        first.append(float(re.search(r"milestone 1 at ([0-9.]+) ms", p.stderr).group(1)))
    print(f"fixed cost here: process start to the test guest's first instruction {statistics.median(first):.2f} ms (median of 10)")
    for mib in [int(x) for x in ARGS.sizes.split(",")]:
        pv_ms, pv_bytes, pv_lat = plainvm_round(tmp, tg, mib)
        q_ms, q_bytes, q_lat, q_status = qemu_round(tmp, tg, mib)
        gib = mib / 1024
        print(f"## {mib} MiB guest")
        print(f"plainvm: snapshot {pv_ms:.0f} ms ({pv_ms / gib:.0f} ms/GiB, {pv_bytes >> 20} MiB written); restore-to-running {pv_lat:.2f} ms")
        print(f"qemu:    snapshot {q_ms:.0f} ms ({q_ms / gib:.0f} ms/GiB, {q_bytes >> 20} MiB file, {q_status}); restore-to-running {q_lat:.2f} ms")
        print(f"ratio plainvm/qemu: snapshot {pv_ms / q_ms:.3f}, restore {pv_lat / q_lat:.3f}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
