"""A randomized model test of several open handles on one file (fsx-style).

test_fsx.py opens and closes a file around every operation, so it never
truncates while a write through another handle is still unflushed: it missed
the truncate that lost its size (a cached size written back over a newer
one at the next flush). This one keeps up to four handles open on each file
(read-write, read-only, write-only, append) and interleaves, on them and on
the path: pwrite, append, ftruncate and truncate(path) up and down (to 0
too), pread, mmap reads, fstat/stat, fsync, close/reopen (O_TRUNC sometimes),
and archive / restore / release / migrate requests that the job workers run
underneath. Every read and every stat is checked against an in-memory model;
at the end every file is checked again, then after a remount (what reached
the catalog), and fsck --verify-data must be clean.

TIERFS_FSX_HANDLE_SEEDS sets the number of seeds (slow mode: a few thousand).
A failure prints the seed and the operations that led to it.
"""

from __future__ import annotations

import mmap
import os
import random
import time

from tests.reliability_util import errors_of, fsck, home_of, mk, start, stop, tiers_config, wait_idle  # noqa: F401
from tests.mount.test_fsx import REQ, REQUESTS, _first_diff

MAX_SIZE = 64 * 1024
MAX_HANDLES = 4
SEEDS = int(os.environ.get("TIERFS_FSX_HANDLE_SEEDS", "300"))
OPS = 40

OPEN_MODES = {
    "rw": os.O_RDWR,
    "r": os.O_RDONLY,
    "w": os.O_WRONLY,
    "a": os.O_WRONLY | os.O_APPEND,
}


class Handle:
    def __init__(self, fd: int, name: str, mode: str):
        self.fd, self.name, self.mode = fd, name, mode

    @property
    def readable(self) -> bool:
        return self.mode in ("rw", "r")

    @property
    def writable(self) -> bool:
        return self.mode != "r"

    def __repr__(self) -> str:
        return f"fd{self.fd}({self.name},{self.mode})"


class HandleFsx:
    """One seed: random operations through several handles, checked against a model."""

    def __init__(self, root: str, seed: int, ops: int):
        self.root = root
        self.rnd = random.Random(seed)
        self.seed = seed
        self.ops = ops
        self.files: dict[str, bytearray] = {}
        self.handles: list[Handle] = []
        self.log: list[str] = []
        self.requests = 0

    # ---- plumbing ------------------------------------------------------------------------
    def p(self, name: str) -> str:
        return os.path.join(self.root, name)

    def fail(self, msg: str):
        raise AssertionError(f"seed {self.seed}: {msg}\nlast operations:\n  " + "\n  ".join(self.log[-30:]))

    def state(self, name: str) -> str:
        try:
            return os.getxattr(self.p(name), "user.tierfs.state").decode()
        except OSError as e:
            return f"? ({e})"

    def pick_handle(self, want: str) -> Handle | None:
        hs = [h for h in self.handles if (h.readable if want == "r" else h.writable)]
        return self.rnd.choice(hs) if hs else None

    # ---- the run ---------------------------------------------------------------------------
    def run(self) -> None:
        os.mkdir(self.root)
        for name in ("f", "g")[: self.rnd.randint(1, 2)]:
            data = bytearray(self.rnd.randbytes(self.rnd.randint(0, 30000)))
            with open(self.p(name), "wb") as f:
                f.write(data)
            self.files[name] = data
        ops = ["open", "close", "pwrite", "append", "ftruncate", "truncate", "pread", "mmap_read", "fstat",
               "stat", "fsync", "request", "reopen_all", "pause"]
        weights = [10, 6, 20, 5, 9, 5, 14, 5, 6, 3, 4, 9, 2, 2]
        for _ in range(self.ops):
            op = self.rnd.choices(ops, weights)[0]
            if not self.handles and op not in ("open", "truncate", "stat", "request", "pause"):
                op = "open"
            getattr(self, op)()
        self.close_all()
        for name in sorted(self.files):
            self.check_file(name)

    # ---- operations --------------------------------------------------------------------------
    def open(self) -> None:
        if len(self.handles) >= MAX_HANDLES:
            return self.close()
        name = self.rnd.choice(sorted(self.files))
        mode = self.rnd.choice(list(OPEN_MODES))
        flags = OPEN_MODES[mode]
        trunc = mode in ("rw", "w") and self.rnd.random() < 0.1
        if trunc:
            flags |= os.O_TRUNC
        self.log.append(f"open {name} {mode}{' O_TRUNC' if trunc else ''} (state {self.state(name)})")
        try:
            fd = os.open(self.p(name), flags)
        except OSError as e:
            self.fail(f"open {name} {mode}: {e}; state {self.state(name)}")
        if trunc:
            del self.files[name][:]
        self.handles.append(Handle(fd, name, mode))
        self.log[-1] += f" -> fd{fd}"

    def close(self) -> None:
        if not self.handles:
            return
        h = self.handles.pop(self.rnd.randrange(len(self.handles)))
        self.log.append(f"close {h}")
        try:
            os.close(h.fd)
        except OSError as e:
            self.fail(f"close {h}: {e}")

    def close_all(self) -> None:
        while self.handles:
            h = self.handles.pop()
            self.log.append(f"close {h}")
            os.close(h.fd)

    def reopen_all(self) -> None:
        self.log.append("reopen all")
        modes = [(h.name, h.mode) for h in self.handles]
        self.close_all()
        for name, mode in modes:
            self.handles.append(Handle(os.open(self.p(name), OPEN_MODES[mode]), name, mode))

    def pwrite(self) -> None:
        h = self.pick_handle("w")
        if h is None or h.mode == "a":
            return self.append() if h is not None else None
        data = self.files[h.name]
        off = self.rnd.randint(0, min(len(data) + 4096, MAX_SIZE - 1))
        buf = self.rnd.randbytes(self.rnd.randint(1, min(8192, MAX_SIZE - off)))
        self.log.append(f"pwrite {h} off={off} len={len(buf)}")
        try:
            n = os.pwrite(h.fd, buf, off)
        except OSError as e:
            self.fail(f"pwrite {h}: {e}; state {self.state(h.name)}")
        if n != len(buf):
            self.fail(f"pwrite {h}: short write {n} of {len(buf)}")
        if off > len(data):
            data.extend(b"\0" * (off - len(data)))
        data[off:off + len(buf)] = buf

    def append(self) -> None:
        hs = [h for h in self.handles if h.mode == "a"]
        if not hs:
            return
        h = self.rnd.choice(hs)
        data = self.files[h.name]
        buf = self.rnd.randbytes(self.rnd.randint(1, 3000))
        if len(data) + len(buf) > MAX_SIZE:
            return
        self.log.append(f"append {h} len={len(buf)}")
        try:
            n = os.write(h.fd, buf)
        except OSError as e:
            self.fail(f"append {h}: {e}; state {self.state(h.name)}")
        if n != len(buf):
            self.fail(f"append {h}: short write {n}")
        data.extend(buf)

    def _new_size(self, data: bytearray) -> int:
        return self.rnd.choice([0, self.rnd.randint(0, MAX_SIZE), max(0, len(data) - self.rnd.randint(1, 5000)),
                                min(MAX_SIZE, len(data) + self.rnd.randint(1, 20000))])

    def _truncate_model(self, name: str, size: int) -> None:
        data = self.files[name]
        if size < len(data):
            del data[size:]
        else:
            data.extend(b"\0" * (size - len(data)))

    def ftruncate(self) -> None:
        h = self.pick_handle("w")
        if h is None:
            return
        size = self._new_size(self.files[h.name])
        self.log.append(f"ftruncate {h} {size}")
        try:
            os.ftruncate(h.fd, size)
        except OSError as e:
            self.fail(f"ftruncate {h} {size}: {e}; state {self.state(h.name)}")
        self._truncate_model(h.name, size)

    def truncate(self) -> None:
        name = self.rnd.choice(sorted(self.files))
        size = self._new_size(self.files[name])
        self.log.append(f"truncate {name} {size} (path; state {self.state(name)})")
        try:
            os.truncate(self.p(name), size)
        except OSError as e:
            self.fail(f"truncate {name} {size}: {e}; state {self.state(name)}")
        self._truncate_model(name, size)

    def pread(self) -> None:
        h = self.pick_handle("r")
        if h is None:
            return
        data = self.files[h.name]
        off = self.rnd.randint(0, len(data) + 100)
        n = self.rnd.randint(1, 20000)
        self.log.append(f"pread {h} off={off} len={n}")
        try:
            got = os.pread(h.fd, n, off)
        except OSError as e:
            self.fail(f"pread {h}: {e}; state {self.state(h.name)}")
        want = bytes(data[off:off + n])
        if got != want:
            self.fail(f"pread {h} [{off}:{off + n}]: {len(got)} bytes differ from the model's {len(want)} "
                      f"(first difference at {_first_diff(got, want)}); state {self.state(h.name)}")

    def mmap_read(self) -> None:
        h = self.pick_handle("r")
        if h is None:
            return
        want = bytes(self.files[h.name])
        if not want:
            return
        self.log.append(f"mmap_read {h} len={len(want)}")
        size = os.fstat(h.fd).st_size
        if size != len(want):   # mapping past the kernel's end of file would raise SIGBUS: fail cleanly
            self.fail(f"mmap {h}: fstat size {size}, model {len(want)}; state {self.state(h.name)}")
        try:
            with mmap.mmap(h.fd, len(want), access=mmap.ACCESS_READ) as mm:
                got = mm[:]
        except (OSError, ValueError) as e:
            self.fail(f"mmap {h}: {e}; state {self.state(h.name)}")
        if got != want:
            self.fail(f"mmap {h}: differs at {_first_diff(got, want)}; state {self.state(h.name)}")

    def fstat(self) -> None:
        if not self.handles:
            return
        h = self.rnd.choice(self.handles)
        self.log.append(f"fstat {h}")
        size = os.fstat(h.fd).st_size
        if size != len(self.files[h.name]):
            self.fail(f"fstat {h}: size {size}, model {len(self.files[h.name])}; state {self.state(h.name)}")

    def stat(self) -> None:
        name = self.rnd.choice(sorted(self.files))
        self.log.append(f"stat {name}")
        size = os.stat(self.p(name)).st_size
        if size != len(self.files[name]):
            self.fail(f"stat {name}: size {size}, model {len(self.files[name])}; state {self.state(name)}")

    def fsync(self) -> None:
        h = self.pick_handle("w")
        if h is None:
            return
        self.log.append(f"fsync {h}")
        try:
            os.fsync(h.fd)
        except OSError as e:
            self.fail(f"fsync {h}: {e}")

    def request(self) -> None:
        name = self.rnd.choice(sorted(self.files))
        verb = self.rnd.choice(sorted(REQUESTS))
        self.log.append(f"request {name} {verb} (state {self.state(name)})")
        self.requests += 1
        try:
            os.setxattr(self.p(name), REQ, verb.encode())
        except OSError as e:
            if e.errno not in REQUESTS[verb]:
                self.fail(f"request {verb!r} on {name}: {e}")

    def pause(self) -> None:
        self.log.append("pause")
        time.sleep(self.rnd.choice([0.01, 0.05, 0.2]))

    def check_file(self, name: str, when: str = "") -> None:
        want = bytes(self.files[name])
        size = os.stat(self.p(name)).st_size
        if size != len(want):
            self.fail(f"{when}stat {name}: size {size}, model {len(want)}; state {self.state(name)}")
        with open(self.p(name), "rb") as f:
            got = f.read()
        if got != want:
            self.fail(f"{when}{name}: content differs at {_first_diff(got, want)} ({len(got)} vs {len(want)} "
                      f"bytes); state {self.state(name)}")


def test_fsx_handles(mk, catalog_url, tmp_path):
    """Several open handles per file, truncates between unflushed writes, moves underneath:
    every read and stat matches the model, and so does the remounted file system."""
    sqlite = catalog_url.startswith("sqlite")
    seeds = SEEDS if sqlite else max(20, SEEDS // 3)   # MongoDB majority writes: ~4x slower per operation here
    config = ("job_retry_delay = 1\nblock_timeout = 30\nlog_level = \"debug\"\n"
              + tiers_config(home_of(tmp_path), disk2=True))
    m = mk(config=config, catalog_url=catalog_url)
    t0 = time.monotonic()
    runs = []
    for seed in range(seeds):
        f = HandleFsx(m.path(f"s{seed}"), seed, OPS)
        f.run()
        runs.append(f)
    took = time.monotonic() - t0
    print(f"\nfsx-handles: {seeds} seeds x {OPS} ops ({sum(f.requests for f in runs)} move requests) "
          f"in {took:.1f}s on {catalog_url.split(':')[0]}")
    wait_idle(catalog_url, timeout=120)
    stop(m)
    start(m)
    for f in runs:
        for name in sorted(f.files):
            f.check_file(name, "after remount: ")
    stop(m)
    code, out = fsck(m.config_path, "--verify-data")
    assert code == 0 and not errors_of(out), out
