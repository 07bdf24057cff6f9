"""Cases 1 and 2, run on every system through its mount: sequential
read/write of a big file, and metadata (ls -l, stat, small-file create,
rm -r, untar).

Each function returns {metric: [seconds of each run]}; main.py takes the
medians and turns them into rates and ratios.
"""

from __future__ import annotations

import io
import os
import random
import tarfile

from .util import DaemonRequests, MiB, Timer, drop_caches, rmtree, run_timed

BLOCK = MiB


def _pattern() -> bytes:
    """1 MiB of incompressible, deterministic bytes (written over and over)."""
    return random.Random(1).randbytes(BLOCK)


def write_file(path: str, size: int, fsync: bool = True) -> float:
    """Seconds to write `size` bytes in 1 MiB writes, fsync and close."""
    buf = _pattern()
    with Timer() as t:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            left = size
            while left > 0:
                n = os.write(fd, buf[:min(left, BLOCK)])
                left -= n
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    return t.s


def read_file(path: str) -> tuple[float, int]:
    """Seconds to read a whole file in 1 MiB reads, and the bytes read."""
    buf = bytearray(BLOCK)
    total = 0
    with Timer() as t:
        fd = os.open(path, os.O_RDONLY)
        try:
            while True:
                n = os.readv(fd, [buf])
                if not n:
                    break
                total += n
        finally:
            os.close(fd)
    return t.s, total


def seq_io(system, size: int, runs: int) -> tuple[dict, dict]:
    """Case 1: write with fsync (runs times), then cold and cached reads.
    Returns (figures, the daemon's read/write requests during each timed step: see DaemonRequests)."""
    path = os.path.join(system.path, "big.bin")
    out = {"write": [], "read_cold": [], "read_cached": [], "background_after_write": []}
    requests = DaemonRequests(system)
    for _ in range(runs):
        if os.path.exists(path):
            os.unlink(path)
        drop_caches()
        with requests.counting("write"):
            out["write"].append(write_file(path, size))
        # Work the system does after the write returned (tierfs: the sha256 of
        # the new content) is timed apart, so it does not land in the next figure.
        out["background_after_write"].append(system.quiesce(path))
    for _ in range(runs):
        drop_caches()
        with requests.counting("read_cold"):
            s, n = read_file(path)
        assert n == size, f"{system.name}: read {n} bytes of {size}"
        out["read_cold"].append(s)
    read_file(path)  # fill the cache
    for _ in range(runs):
        with requests.counting("read_cached"):
            out["read_cached"].append(read_file(path)[0])
    os.unlink(path)
    return out, requests.by_step


# ---- metadata -------------------------------------------------------------------
def make_tree_tar(path: str, files: int, seed: int = 8) -> dict:
    """A deterministic synthetic source tree as an uncompressed tarball:
    `files` files of text-like content (log-normal sizes, median ~4 KiB)
    spread over directories two levels deep. Returns its description."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10)))
             for _ in range(500)]
    per_dir = 15
    ndirs = max(1, (files + per_dir - 1) // per_dir)
    total = 0
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        made_dirs = set()
        for i in range(files):
            d = i // per_dir
            top, sub = f"pkg{d // 10:03d}", f"mod{d % 10:02d}"
            for dn in (top, f"{top}/{sub}"):
                if dn not in made_dirs:
                    made_dirs.add(dn)
                    ti = tarfile.TarInfo(dn)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                    tar.addfile(ti)
            size = min(256 * 1024, int(rng.lognormvariate(8.3, 1.0)))
            line = b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
            data = (line * (size // len(line) + 1))[:size]
            ti = tarfile.TarInfo(f"{top}/{sub}/file{i:05d}.py")
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(ti, io.BytesIO(data))
            total += len(data)
    return {"files": files, "dirs": len(made_dirs), "bytes": total}


def create_files(d: str, n: int, size: int = 4096) -> float:
    """Seconds to create n files of `size` bytes in directory d (open, write, close)."""
    buf = _pattern()[:size]
    with Timer() as t:
        for i in range(n):
            fd = os.open(os.path.join(d, f"f{i:06d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, buf)
            os.close(fd)
    return t.s


def stat_all(d: str, n: int) -> float:
    with Timer() as t:
        for i in range(n):
            os.stat(os.path.join(d, f"f{i:06d}"))
    return t.s


def listing(system, d: str, nfiles: int, runs: int) -> dict:
    """ls -l cold (after dropping the caches) and warm (after one untimed ls),
    and n stats warm (after one untimed pass), `runs` times."""
    out = {"ls_cold": [], "ls_warm": [], "stat_warm": []}
    ls = ["ls", "-l", "--color=never", d]
    for _ in range(runs):
        drop_caches()
        out["ls_cold"].append(run_timed(ls))
        run_timed(ls)
        out["ls_warm"].append(run_timed(ls))
        stat_all(d, nfiles)
        out["stat_warm"].append(stat_all(d, nfiles))
    return out


def metadata(system, nfiles: int, tarball: str, runs: int, variants=()) -> tuple[dict, dict]:
    """Case 2: create n small files in `runs` directories (timed), list the
    first one (see listing), rm -r each (timed), untar the synthetic tree
    `runs` times (timed). `variants` are (name, options): the system is
    remounted with those options for the listing part only (tierfs with
    xattrs = false, mergerfs with xattr=nosys), then back.
    Returns (figures, {variant name: listing figures})."""
    out = {"create": [], "rm": [], "untar": []}
    dirs = []
    for r in range(runs):
        d = os.path.join(system.path, f"small{r}")
        os.mkdir(d)
        dirs.append(d)
        out["create"].append(create_files(d, nfiles))
    out.update(listing(system, dirs[0], nfiles, runs))
    extra = {}
    if variants:
        original = system.variant_options()
        for name, opts in variants:
            system.remount_with(opts)
            extra[name] = listing(system, dirs[0], nfiles, runs)
        system.remount_with(original)
    for d in dirs:
        out["rm"].append(run_timed(["rm", "-r", d]))
    for r in range(runs):
        u = os.path.join(system.path, f"untar{r}")
        os.mkdir(u)
        out["untar"].append(run_timed(["tar", "-xf", tarball, "-C", u]))
    return out, extra


def cleanup(system) -> None:
    for name in os.listdir(system.path):
        rmtree(os.path.join(system.path, name))
