"""Small helpers shared by the benchmark cases: timing, medians, page-cache
drops, load average and a description of the machine."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from contextlib import contextmanager

MiB = 1 << 20
GiB = 1 << 30


class Timer:
    """`with Timer() as t: ...` then t.s holds the elapsed seconds."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.s = 0.0
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def percentile(sorted_xs, p: float):
    """p in [0, 100] of an already sorted list (nearest rank)."""
    if not sorted_xs:
        return None
    k = max(0, min(len(sorted_xs) - 1, int(round(p / 100 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[k]


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


_drop_error: str | None = None


def drop_caches(level: int = 3) -> bool:
    """Write back dirty pages and drop the page, dentry and inode caches
    (level 3; 2 = dentries and inodes only) (root only). Returns False (once
    noted in drop_error()) if not permitted."""
    global _drop_error
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write(f"{level}\n")
        return True
    except OSError as e:
        _drop_error = f"cannot drop the page cache: {e.strerror}; cold figures are warm"
        return False


def drop_error() -> str | None:
    return _drop_error


def sh(cmd, check=True, timeout=600, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r


def run_timed(cmd, **kw) -> float:
    """Seconds one shell command takes (its output is discarded)."""
    with Timer() as t:
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    return t.s


def machine() -> dict:
    """nproc, memory, kernel, disk and filesystem of the bench directory."""
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        info["memory_gib"] = round(kb / (1 << 20), 1)
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    info["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return info


def disk_of(path: str) -> dict:
    """Device, filesystem type and mount options of the filesystem holding `path`."""
    r = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "-T", path], capture_output=True, text=True)
    parts = r.stdout.split()
    d = {"source": parts[0], "fstype": parts[1], "options": parts[2]} if len(parts) >= 3 else {}
    dev = os.path.basename(d.get("source", ""))
    try:
        with open(f"/sys/block/{dev}/queue/rotational") as f:
            d["rotational"] = f.read().strip() == "1"
        d["size_gib"] = round(int(open(f"/sys/block/{dev}/size").read()) * 512 / GiB)
        model = f"/sys/block/{dev}/device/model"
        d["model"] = open(model).read().strip() if os.path.exists(model) else ("virtio" if dev.startswith("vd") else "")
        d["read_ahead_kb"] = int(open(f"/sys/block/{dev}/queue/read_ahead_kb").read())
    except (OSError, ValueError):
        pass
    return d


#: FUSE requests that carry a file's bytes: with passthrough (issue 17) the kernel serves them from the
#: object file and the daemon sees none.
DATA_OPS = ("read", "write")


class DaemonRequests:
    """The daemon's read and write requests during each timed step of a case, for systems that count
    their requests (tierfs: `requests` in user.tierfs.stats; the others count nothing).
    `by_step` = {step: {"read": [count per run], "write": [...]}}."""

    def __init__(self, system):
        self.system = system
        self.by_step: dict[str, dict[str, list[int]]] = {}

    @contextmanager
    def counting(self, step: str):
        """Counts around the block (the stats are read outside the timer the block holds)."""
        before = self.system.request_counts()
        yield
        if before is None:
            return
        after = self.system.request_counts()
        counts = self.by_step.setdefault(step, {op: [] for op in DATA_OPS})
        for op in DATA_OPS:
            counts[op].append(after.get(op, 0) - before.get(op, 0))


@contextmanager
def cwd(path: str):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def rmtree(path: str) -> None:
    """rm -rf (faster than shutil for big trees, and handles read-only dirs)."""
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)
