"""Case "ops": the latency of each metadata operation, one at a time, through
each system's mount (issue 16), and case "dbench": a file-server workload.

Every operation runs `n` times on its own fresh objects (n files in a fresh
directory), timed one by one with perf_counter_ns; a run keeps the median and
the mean per operation in microseconds. The report takes the median of the
runs' medians. What each operation means exactly:

- create: open(O_CREAT|O_WRONLY) + write 4 KiB + close of a new name
- stat_cold: lstat of a file the kernel does not hold (dentries and inodes
  dropped with /proc/sys/vm/drop_caches = 2 first): a lookup through FUSE
- stat_missing: lstat of a name that does not exist (a new name each time)
- rename, unlink, link, symlink, mkdir, rmdir: of distinct names in one directory
- listdir / listdir_big: os.listdir of a directory of n (500) / big_listing
  (10,000) files (the kernel does not cache directory contents: each listing
  reaches the filesystem); n / 50 listings of the first, 3 of the second
- statvfs: os.statvfs of the mount
- setxattr / getxattr: one user.* name (16 bytes) on each of n files
- read_small: open + read 4 KiB + close of a file whose bytes are cached
- pwrite_fsync: 1-byte pwrite at a random offset + fsync of one open 1 MiB file
- setxattr_4096: 4,096 distinct user.* names on one file, the total seconds
  (ext4 keeps all of a file's xattrs in one 4 KiB block, so native and the
  passthroughs over it stop with ENOSPC: they report that)
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import statistics
import subprocess
import time

from .util import drop_caches, rmtree

OPS = ["create", "stat_cold", "stat_missing", "rename", "unlink", "listdir", "listdir_big", "statvfs",
       "setxattr", "getxattr", "link", "symlink", "mkdir", "rmdir", "read_small", "pwrite_fsync"]
LABELS = {
    "create": "create + 4 KiB write + close", "stat_cold": "stat, not in the kernel's cache",
    "stat_missing": "stat of a missing name", "rename": "rename", "unlink": "unlink",
    "listdir": "listdir of {n} entries (per listing)", "listdir_big": "listdir of {big} entries (per listing)",
    "statvfs": "statvfs",
    "setxattr": "setxattr user.*", "getxattr": "getxattr user.*", "link": "link", "symlink": "symlink",
    "mkdir": "mkdir", "rmdir": "rmdir", "read_small": "open + read 4 KiB + close (cached)",
    "pwrite_fsync": "1-byte pwrite + fsync"}
PAYLOAD = random.Random(2).randbytes(4096)
XVALUE = b"0123456789abcdef"


def _timed(fn, items) -> list[float]:
    """Microseconds of fn(item) for each item."""
    out = []
    pc = time.perf_counter_ns
    for it in items:
        t0 = pc()
        fn(it)
        out.append((pc() - t0) / 1000)
    return out


def _create(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, PAYLOAD)
    finally:
        os.close(fd)


def _lstat_missing(path: str) -> None:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return
    raise AssertionError(f"{path} exists")


def _read_small(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 4096)
    finally:
        os.close(fd)


def one_run(root: str, n: int, big_listing: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Every operation once per item, in a fresh directory under root:
    ({op: [µs each]}, {op: why it failed}). A system that lacks an operation
    (rclone has no hard links or xattrs, no random writes without its cache)
    reports the error for that operation and goes on with the others."""
    d = os.path.join(root, f"ops-{time.monotonic_ns()}")
    os.mkdir(d)
    names = [os.path.join(d, f"f{i:06d}") for i in range(n)]
    out: dict[str, list[float]] = {}
    failed: dict[str, str] = {}

    def op(name: str, fn, items) -> bool:
        try:
            out[name] = _timed(fn, items)
            return True
        except OSError as e:
            failed[name] = f"{e.strerror or e}"
            out[name] = []
            return False

    op("create", _create, names)
    drop_caches(level=2)
    op("stat_cold", os.lstat, names)
    op("stat_missing", _lstat_missing, [os.path.join(d, f"missing{i:06d}") for i in range(n)])
    if op("setxattr", lambda p: os.setxattr(p, "user.bench", XVALUE), names):
        op("getxattr", lambda p: os.getxattr(p, "user.bench"), names)
    op("read_small", _read_small, names)
    op("statvfs", os.statvfs, [d] * n)
    op("listdir", os.listdir, [d] * max(3, n // 50))
    links = [os.path.join(d, f"l{i:06d}") for i in range(n)]
    op("link", lambda i: os.link(names[i], links[i]), range(n))
    syms = [os.path.join(d, f"s{i:06d}") for i in range(n)]
    op("symlink", lambda i: os.symlink(f"f{i:06d}", syms[i]), range(n))
    renamed = [os.path.join(d, f"r{i:06d}") for i in range(n)]
    if op("rename", lambda i: os.rename(names[i], renamed[i]), range(n)):
        op("unlink", os.unlink, renamed)
    dirs = [os.path.join(d, f"d{i:06d}") for i in range(n)]
    if op("mkdir", os.mkdir, dirs):
        op("rmdir", os.rmdir, dirs)
    big = os.path.join(d, "big")
    rnd = random.Random(3)
    offsets = [rnd.randrange(1 << 20) for _ in range(max(20, n // 5))]
    try:
        fd = os.open(big, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"\0" * (1 << 20))
            os.fsync(fd)
            op("pwrite_fsync", lambda off: (os.pwrite(fd, b"x", off), os.fsync(fd)), offsets)
        finally:
            os.close(fd)
    except OSError as e:
        failed["pwrite_fsync"] = f"{e.strerror or e}"
    if big_listing:
        ld = os.path.join(d, "listing")
        os.mkdir(ld)
        for i in range(big_listing):
            _create(os.path.join(ld, f"e{i:06d}"))
        os.listdir(ld)
        op("listdir_big", os.listdir, [ld] * 3)
    rmtree_in(d)
    return out, failed


def rmtree_in(d: str) -> None:
    try:
        shutil.rmtree(d)
    except OSError:
        rmtree(d)


def many_xattrs(root: str, count: int = 4096) -> dict:
    """Seconds for `count` distinct user.* names on one file, or why it stopped."""
    p = os.path.join(root, f"xattrs-{time.monotonic_ns()}")
    try:
        _create(p)
    except OSError as e:
        return {"seconds": 0.0, "done": 0, "error": f"create: {e.strerror or e}"}
    t0 = time.perf_counter()
    done = 0
    err = None
    try:
        for i in range(count):
            os.setxattr(p, f"user.k{i:05d}", XVALUE)
            done += 1
    except OSError as e:
        err = f"{e.strerror} after {done}"
    s = time.perf_counter() - t0
    with contextlib.suppress(OSError):
        os.unlink(p)
    return {"seconds": s, "done": done, "error": err}


def ops(system, n: int, big_listing: int, runs: int, log) -> dict:
    """Case "ops" on one system: {"runs": {op: [median µs of each run]}, "means": {...}, "xattrs_4096": [...]}."""
    med: dict[str, list[float]] = {k: [] for k in OPS}
    mean: dict[str, list[float]] = {k: [] for k in OPS}
    errors: dict[str, str] = {}
    for r in range(runs):
        res, failed = one_run(system.path, n, big_listing if r == 0 else 0)
        errors.update(failed)
        for k, v in res.items():
            if v:
                med[k].append(statistics.median(v))
                mean[k].append(statistics.fmean(v))
        log(f"  ops run {r + 1}: " + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in res.items() if v)
            + " (µs, median)")
    return {"runs": med, "means": mean, "n": n, "errors": errors,
            "xattrs_4096": [many_xattrs(system.path) for _ in range(runs)]}


# ---- dbench --------------------------------------------------------------------------------------
LOADFILE = "/usr/share/dbench/client.txt"


def dbench_available() -> str | None:
    if shutil.which("dbench") is None:
        return "dbench not installed (Debian package dbench)"
    if not os.path.exists(LOADFILE):
        return f"{LOADFILE} missing"
    return None


def dbench(system, seconds: int, clients: int = 2) -> dict:
    """`dbench -t SECONDS CLIENTS` in the mount: throughput MB/s and each operation's mean latency (ms)."""
    d = os.path.join(system.path, "dbench")
    os.makedirs(d, exist_ok=True)
    r = subprocess.run(["dbench", "-c", LOADFILE, "-D", d, "-t", str(seconds), str(clients)],
                       capture_output=True, text=True, timeout=seconds + 600)
    rmtree_in(d)
    text = r.stdout
    m = re.search(r"Throughput ([\d.]+) MB/sec", text)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"dbench exited {r.returncode}: {(r.stdout + r.stderr)[-1500:]}")
    lat = {}
    for line in text.splitlines():
        f = line.split()
        # " NTCreateX    1234     0.123   12.345"  (operation, count, avg ms, max ms)
        if len(f) == 4 and f[0][0].isupper() and f[1].isdigit():
            lat[f[0]] = {"count": int(f[1]), "avg_ms": float(f[2]), "max_ms": float(f[3])}
    return {"mb_s": float(m.group(1)), "ops": lat, "seconds": seconds, "clients": clients}
