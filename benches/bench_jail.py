"""`PLAINVM_BENCH_JAIL=UID:GID`: run the benchmarks' plainvm processes jailed (`--jail`).

Each plainvm process gets its own jail directory under one temporary directory; `jail_dir()`
tells a benchmark where its next process's jail is, so snapshots can be written inside it.
"""
import os, tempfile

IDS = os.environ.get("PLAINVM_BENCH_JAIL", "")
_BASE = tempfile.mkdtemp(prefix="plainvm-bench-jails-") if IDS else None
_count = 0


def jail_dir():
    """The jail directory the next `jail_args()` will use (None when not jailed)."""
    return os.path.join(_BASE, f"j{_count}") if IDS else None


def jail_args():
    """The flags that jail one plainvm run/restore ([] when PLAINVM_BENCH_JAIL is unset)."""
    global _count
    if not IDS:
        return []
    d = jail_dir()
    _count += 1
    return ["--jail", IDS, "--jail-dir", d]
