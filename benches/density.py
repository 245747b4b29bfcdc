#!/usr/bin/env python3
"""Density benchmark: how many idle VMs fit on this host, and what each costs.

For each N: start N idle 128 MiB test guests (`plainvm run --name dI --cmdline idle`), wait until
every one printed TESTGUEST-IDLE and answers its API (`GET /vm`), then measure
  - VMs started per second: N / (first spawn -> last VM idle and answering),
  - host memory per VM: summed PSS of the VMM processes (/proc/PID/smaps_rollup) / N, and the drop
    in MemAvailable / N (which also counts KVM's kernel memory: page tables, vCPU structures),
  - VMM overhead per VM: PSS minus the resident part of the guest-RAM mapping (from smaps),
  - CPU use when idle: time on a CPU of all the VMM processes' threads over 3 s (schedstat), as a
    share of one host CPU (halted vCPUs block in KVM and cost nothing),
  - `plainvm ls --json` lists exactly the N VMs (and how long it took).
Then all are killed. Side by side: QEMU microvm with the same test guest ELF. A few Linux guests
(plainvm only) with the guest agent, ended with `plainvm stop` (graceful), are measured as well.

Safety: before each step, MemAvailable must exceed (N x the worst per-VM cost seen so far, or an
initial estimate) plus a reserve; otherwise the step is skipped. Guest processes run under
`nice -n 19` so that starting hundreds of them does not starve other work.

Usage: benches/density.py [--counts 10,50,100,300] [--qemu-counts 10,50,100] [--linux 2]
Needs: a release build (cargo build --release), qemu-system-x86, resources/build-guest.sh outputs.
"""
import argparse, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_ref import Qmp, qemu_cmd  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAINVM = os.environ.get("PLAINVM_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release/plainvm")
CACHE = os.environ.get("PLAINVM_CACHE", "/var/cache/plainvm")
MEM_MIB = 128
RESERVE_MIB = 3072          # never let MemAvailable fall below this
FIRST_ESTIMATE_MIB = 40     # per-VM cost assumed before anything was measured
NICE = ["nice", "-n", "19"]


def meminfo(key="MemAvailable"):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # KiB
    raise KeyError(key)


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def guest_ram_pss_kib(pid, mem_mib=MEM_MIB):
    """PSS of the guest-RAM mapping: the one anonymous mapping of (about) the guest's size."""
    size = guest = 0
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    a, b = line.split()[0].split("-")
                    size = int(b, 16) - int(a, 16)
                elif line.startswith("Pss:") and mem_mib << 20 <= size <= (mem_mib + 4) << 20:
                    guest += int(line.split()[1])
    except OSError:
        pass
    return guest


def cpu_ns(pids):
    """Nanoseconds on a CPU used so far by the threads of the processes `pids`.

    From /proc/PID/task/TID/schedstat, which the scheduler keeps exactly; utime and stime in
    /proc/PID/stat are sampled at timer ticks and miss most of many short wake-ups."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                pass
    return total


def idle_cpu(pids, seconds=3.0):
    """Share of one host CPU the processes used together over `seconds`."""
    t, a = time.perf_counter(), cpu_ns(pids)
    time.sleep(seconds)
    return (cpu_ns(pids) - a) / 1e9 / (time.perf_counter() - t)


def api_get(sock, path="/vm", timeout=5.0):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(sock)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return json.loads(body)


def qmp_status(sock):
    q = Qmp(sock)
    try:
        return q.cmd("query-status").get("return", {}).get("status")
    finally:
        q.s.close()


class Fleet:
    """N VMs of one kind, started in one go and killed at the end."""

    def __init__(self, kind, n, work, elf):
        self.kind, self.n, self.work, self.elf = kind, n, work, elf
        self.procs, self.logs, self.socks = [], [], []
        self.rt = os.path.join(work, f"rt-{kind}-{n}")
        os.makedirs(self.rt, exist_ok=True)

    def cmd(self, i, log, sock):
        if self.kind == "plainvm":
            return NICE + [PLAINVM, "run", "--name", f"d{i}", "--memory", f"{MEM_MIB}M",
                           "--cmdline", "idle"]
        return NICE + qemu_cmd(self.elf, MEM_MIB, "idle",
                               ["-serial", f"file:{log}", "-qmp", f"unix:{sock},server=on,wait=off"])

    def start(self, timeout=600):
        env = dict(os.environ, PLAINVM_RUNTIME_DIR=self.rt)
        t0 = time.perf_counter()
        for i in range(self.n):
            log = os.path.join(self.work, f"{self.kind}-{self.n}-{i}.log")
            sock = (os.path.join(self.rt, f"d{i}", "api.sock") if self.kind == "plainvm"
                    else os.path.join(self.rt, f"q{i}.qmp"))
            out = open(log, "wb") if self.kind == "plainvm" else subprocess.DEVNULL
            self.procs.append(subprocess.Popen(self.cmd(i, log, sock), stdin=subprocess.DEVNULL,
                                               stdout=out, stderr=subprocess.STDOUT, env=env))
            self.logs.append(log)
            self.socks.append(sock)
        pending = set(range(self.n))
        while pending:
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{len(pending)} {self.kind} VMs did not come up in {timeout} s")
            for i in list(pending):
                if self.procs[i].poll() is not None:
                    raise RuntimeError(f"{self.kind} VM {i} exited: {open(self.logs[i], 'rb').read()[-500:]}")
                try:
                    if b"TESTGUEST-IDLE" in open(self.logs[i], "rb").read():
                        pending.discard(i)
                except OSError:
                    pass
            time.sleep(0.05)
        return time.perf_counter() - t0

    def all_respond(self):
        ok = 0
        for s in self.socks:
            try:
                if self.kind == "plainvm":
                    ok += api_get(s).get("state") == "Running"
                else:
                    ok += qmp_status(s) == "running"
            except (OSError, ValueError):
                pass
        return ok

    def pids(self):
        """The VMM processes (children of `nice`, which execs: same pid)."""
        return [p.pid for p in self.procs]

    def kill(self):
        for p in self.procs:
            try:
                p.send_signal(signal.SIGKILL)
            except OSError:
                pass
        for p in self.procs:
            p.wait()
        shutil.rmtree(self.rt, ignore_errors=True)


def settle_mem(seconds=3.0):
    time.sleep(seconds)
    return meminfo()


def step(kind, n, work, elf, worst_mib):
    avail = meminfo()
    need = n * worst_mib * 1024 + RESERVE_MIB * 1024
    if avail < need:
        print(f"  {kind} N={n}: SKIPPED: MemAvailable {avail >> 10} MiB < {need >> 10} MiB needed "
              f"({worst_mib:.0f} MiB/VM + {RESERVE_MIB} MiB reserve)", flush=True)
        return None
    before = settle_mem(2.0)
    fleet = Fleet(kind, n, work, elf)
    try:
        secs = fleet.start()
        time.sleep(2.0)
        after = meminfo()
        pids = fleet.pids()
        cpu = idle_cpu(pids)
        responding = fleet.all_respond()
        pss = sum(pss_kib(p) for p in pids)
        guest = sum(guest_ram_pss_kib(p) for p in pids)
        listed = None
        ls_secs = None
        if kind == "plainvm":
            t = time.perf_counter()
            out = subprocess.run([PLAINVM, "ls", "--json"], capture_output=True, text=True,
                                 env=dict(os.environ, PLAINVM_RUNTIME_DIR=fleet.rt), timeout=300)
            ls_secs = time.perf_counter() - t
            rows = json.loads(out.stdout)
            listed = sum(r["state"] == "Running" for r in rows)
        r = {
            "kind": kind, "n": n, "start_s": secs, "vms_per_s": n / secs,
            "pss_per_vm_mib": pss / n / 1024, "overhead_per_vm_mib": (pss - guest) / n / 1024,
            "guest_ram_per_vm_mib": guest / n / 1024,
            "memavail_drop_per_vm_mib": (before - after) / n / 1024,
            "idle_cpu": cpu, "responding": responding, "listed_running": listed, "ls_s": ls_secs,
        }
        print(f"  {kind:8} N={n:4}: up in {secs:6.2f} s ({r['vms_per_s']:6.1f} VMs/s); per VM: PSS "
              f"{r['pss_per_vm_mib']:5.2f} MiB (VMM overhead {r['overhead_per_vm_mib']:5.2f}, guest RAM "
              f"{r['guest_ram_per_vm_mib']:5.2f}), MemAvailable drop {r['memavail_drop_per_vm_mib']:5.2f} MiB; "
              f"idle CPU {cpu * 100:.1f}% of one CPU in all; responding {responding}/{n}"
              + (f"; ls lists {listed} running in {ls_secs:.2f} s" if listed is not None else ""),
              flush=True)
        return r
    finally:
        fleet.kill()
        settle_mem(1.0)


def linux_step(n, work):
    """n Linux guests with the guest agent; stopped gracefully with `plainvm stop`."""
    vmlinux, initrd = os.path.join(CACHE, "vmlinux"), os.path.join(CACHE, "initramfs.cpio")
    if not (os.path.exists(vmlinux) and os.path.exists(initrd)):
        print("  linux: SKIPPED: build the guest with resources/build-guest.sh")
        return None
    cmdline = open(os.path.join(ROOT, "resources/cmdline")).read().strip()
    cmdline += " plainvm.agent=on plainvm.cmd=wait"
    rt = os.path.join(work, "rt-linux")
    env = dict(os.environ, PLAINVM_RUNTIME_DIR=rt)
    before = settle_mem(2.0)
    procs, logs = [], []
    t0 = time.perf_counter()
    try:
        for i in range(n):
            log = os.path.join(work, f"linux-{i}.log")
            logs.append(log)
            procs.append(subprocess.Popen(
                NICE + [PLAINVM, "run", "--name", f"lx{i}", "--kernel", vmlinux, "--initrd", initrd,
                        "--memory", f"{MEM_MIB}M", "--cmdline", cmdline],
                stdin=subprocess.DEVNULL, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env))
        pending = set(range(n))
        while pending and time.perf_counter() - t0 < 900:
            for i in list(pending):
                if b"guest agent announced itself" in open(logs[i], "rb").read():
                    pending.discard(i)
            time.sleep(0.5)
        up = time.perf_counter() - t0
        if pending:
            print(f"  linux: {len(pending)} guests did not come up in 900 s")
            return None
        time.sleep(2.0)
        after = meminfo()
        pss = sum(pss_kib(p.pid) for p in procs)
        guest = sum(guest_ram_pss_kib(p.pid) for p in procs)
        t = time.perf_counter()
        stops = [subprocess.run([PLAINVM, "stop", f"lx{i}", "--timeout-s", "60"], capture_output=True,
                                text=True, env=env) for i in range(n)]
        stop_s = time.perf_counter() - t
        graceful = sum(s.returncode == 0 and "gracefully" in s.stdout for s in stops)
        r = {"kind": "plainvm-linux", "n": n, "start_s": up, "pss_per_vm_mib": pss / n / 1024,
             "overhead_per_vm_mib": (pss - guest) / n / 1024, "guest_ram_per_vm_mib": guest / n / 1024,
             "memavail_drop_per_vm_mib": (before - after) / n / 1024, "graceful_stops": graceful,
             "stop_s": stop_s}
        print(f"  linux    N={n:4}: agents up after {up:6.1f} s; per VM: PSS {r['pss_per_vm_mib']:5.2f} MiB "
              f"(VMM overhead {r['overhead_per_vm_mib']:5.2f}, guest RAM {r['guest_ram_per_vm_mib']:5.2f}), "
              f"MemAvailable drop {r['memavail_drop_per_vm_mib']:5.2f} MiB; graceful stops {graceful}/{n} "
              f"in {stop_s:.1f} s", flush=True)
        return r
    finally:
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except OSError:
                pass
            p.wait()
        shutil.rmtree(rt, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="10,50,100,300")
    ap.add_argument("--qemu-counts", default="10,50,100")
    ap.add_argument("--linux", type=int, default=2, help="Linux guests (0: none)")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    if not os.path.exists(PLAINVM):
        sys.exit(f"{PLAINVM} is missing: cargo build --release (or set PLAINVM_BIN)")
    work = tempfile.mkdtemp(prefix="plainvm-density-")
    elf = os.path.join(work, "testguest.elf")
    subprocess.run([PLAINVM, "export-testguest", "--out", elf], check=True)
    print(f"host: {os.cpu_count()} CPUs, MemTotal {meminfo('MemTotal') >> 10} MiB, "
          f"MemAvailable {meminfo() >> 10} MiB; guests {MEM_MIB} MiB, test guest `idle` (halts)")
    results = []
    try:
        for kind, counts in (("plainvm", a.counts), ("qemu", a.qemu_counts)):
            if kind == "qemu" and not shutil.which("qemu-system-x86_64"):
                print("  qemu: SKIPPED: qemu-system-x86_64 not installed")
                continue
            worst = FIRST_ESTIMATE_MIB
            for n in [int(x) for x in counts.split(",") if x]:
                r = step(kind, n, work, elf, worst)
                if r is None:
                    break
                results.append(r)
                worst = max(r["pss_per_vm_mib"], r["memavail_drop_per_vm_mib"]) * 1.5 + 1
        if a.linux:
            r = linux_step(a.linux, work)
            if r:
                results.append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
