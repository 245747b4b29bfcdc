"""Shared helpers for the benchmarks: QEMU microvm command lines, a QMP client, waiting for output.

Imported by the benchmark scripts beside it; not run on its own.
"""
import json, os, socket, sys, time

QEMU_CPU = "qemu64,-cx16,-xsave,-smap,-smep,+xsaveerptr"


def qemu_cmd(kernel, mib, append, extra):
    """QEMU microvm running `kernel` (the test guest through its PVH entry) with `append`."""
    return ["qemu-system-x86_64", "-enable-kvm", "-cpu", QEMU_CPU, "-M", "microvm,pit=on,pic=on,rtc=on",
            "-m", str(mib), "-nodefaults", "-display", "none", "-no-reboot", "-kernel", kernel,
            "-append", append, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"] + extra


def wait_line(path, text, timeout=180):
    """Wait until the file at `path` contains `text`; exit with a message after `timeout` s."""
    t = time.time()
    while time.time() - t < timeout:
        if os.path.exists(path) and text in open(path, errors="replace").read():
            return
        time.sleep(0.02)
    sys.exit(f"timeout waiting for {text!r} in {path}")


class Qmp:
    """A minimal QMP client over a unix socket."""

    def __init__(self, path):
        for _ in range(2000):
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                time.sleep(0.002)
        self.f = self.s.makefile("rw")
        self.f.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r or "error" in r:
                return r
