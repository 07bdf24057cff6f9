"""An in-process tierfs engine for tests: no FUSE, no /dev/fuse, a fake clock.

`engine(tmp_path, **settings)` builds the engine exactly as a mount does
(daemon.Daemon.open: SQLite catalog, disk + disk2 + vault tiers, the
FileSystem, the offline contract, the job runner, the policy scheduler) and
runs the daemon's background services (job workers, collector, checksummer,
heartbeat, atime batching, staging) in a trio nursery; instead of the kernel
the test calls the FileSystem, either directly (`eng.fs`) or through `Posix`,
which resolves paths and turns domain errors into OSError like the kernel's
answer to a syscall (fuse_ops.py maps the same errno).

Time: tests run on a fake clock (`EngineClock`) that jumps to the next
timer as soon as every task waits, so job retry delays, block_timeout,
atime_flush and the job poll take no real time: an hour of daemon time runs
in milliseconds. The engine's wall and monotonic clocks (`now_ns`,
`time.monotonic`, which the catalog, archive.py and jobs.py read for retry
times, atimes and batching) follow the same clock for the test's duration
(`fake_time`). Tier copies that sleep (vault archive_delay) sleep in real
time: the clock stands still while a worker thread runs.

Entry point the lead adapts when the engine's construction changes: `engine()`.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import inspect
import os
import stat
import sys
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

import trio
import trio.testing

from tierfs import config as config_mod, errors
from tierfs.catalog import base as catalog_base
from tierfs.daemon import Daemon
from tierfs.fs import Caller, FileSystem

ROOT_INO = 1   # pyfuse3.ROOT_INODE
REAL_NOW_NS = catalog_base.now_ns
REQUEST = b"user.tierfs.request"


# ---- the fake clock ------------------------------------------------------------------------
class EngineClock(trio.abc.Clock):
    """trio.testing.MockClock's autojump, except while a worker thread runs.

    MockClock(autojump_threshold=0) jumps whenever no task is runnable, and a
    task waiting for trio.to_thread (every catalog call but SQLite's inline
    ones, every tier copy) is not runnable: the clock ran ahead by a timer per
    thread call (600 s of block_timeout passed during one restore's dozen
    catalog calls). This clock jumps to the next deadline only when no worker
    thread is running (trio.testing.active_thread_count), so fake time passes
    only when the engine really waits for a timer; deterministic.
    """

    def __init__(self):
        self.now = 0.0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self.now   # read from worker threads too (the catalog's now_ns): a float, no lock needed

    def deadline_to_sleep_time(self, deadline: float) -> float:
        # trio asks only when no task is runnable: every task waits for a timer, I/O or a thread.
        if deadline <= self.now:
            return 0.0
        if trio.testing.active_thread_count():
            return 0.1   # real seconds; the thread's result wakes the loop as soon as it is there
        if deadline == float("inf"):
            return 1.0   # nothing will ever wake anyone: let trio notice (a test's fail_after usually does)
        self.now = deadline
        return 0.0

    def jump(self, seconds: float) -> None:
        self.now += seconds


class FakeTime:
    """The `time` module as the engine sees it during a test: monotonic and
    wall time follow the EngineClock; everything else (sleep in a tier's
    thread, perf_counter) is the real module."""

    def __init__(self, clock: EngineClock):
        self.clock = clock
        self.wall0_ns = time.time_ns()

    def __getattr__(self, name):
        return getattr(time, name)

    def monotonic(self) -> float:
        return self.clock.current_time()

    def monotonic_ns(self) -> int:
        return int(self.clock.current_time() * 1e9)

    def time_ns(self) -> int:
        return self.wall0_ns + int(self.clock.current_time() * 1e9)

    def time(self) -> float:
        return self.time_ns() / 1e9


@contextlib.contextmanager
def fake_time(clock: EngineClock):
    """Point every tierfs module's `time` and `now_ns` at `clock` (and back).
    Call the yielded function again after code that imports modules lazily
    (Daemon.open imports jobs, archive, the policy scheduler) to cover them too;
    a module imported meanwhile may have copied the fake `now_ns` from
    catalog.base: the way back restores every module, not only those patched."""
    fake = FakeTime(clock)
    swaps = (("time", time, fake), ("now_ns", REAL_NOW_NS, fake.time_ns))

    def tierfs_modules():
        return [m for n, m in list(sys.modules.items()) if n.startswith("tierfs") and m is not None]

    def cover() -> None:
        for mod in tierfs_modules():
            for attr, real, new in swaps:
                if getattr(mod, attr, None) is real:
                    setattr(mod, attr, new)
    cover()
    try:
        yield cover
    finally:
        for mod in tierfs_modules():
            for attr, real, new in swaps:
                if getattr(mod, attr, None) == new:
                    setattr(mod, attr, real)


# ---- the engine -----------------------------------------------------------------------------
@dataclass
class Engine:
    """A running engine: the FileSystem and what runs around it."""

    daemon: Daemon
    fs: FileSystem
    clock: EngineClock
    home: str                     # tier directories live under it (disk, disk2, vault)
    nursery: trio.Nursery

    @property
    def jobs(self):
        return self.daemon.engine.jobs

    @property
    def catalog(self):
        return self.fs.catalog

    def now(self) -> float:
        return trio.current_time()

    async def idle(self, timeout: float = 600.0) -> None:
        """Wait (in fake time) until no job is pending or running."""
        from tierfs.catalog.base import ACTIVE_JOB_STATES
        deadline = trio.current_time() + timeout
        while active := await self.fs.cat(self.fs.catalog.jobs, ACTIVE_JOB_STATES):
            if trio.current_time() > deadline:
                raise AssertionError(f"jobs still active after {timeout:.0f}s (fake time): {active}")
            await trio.sleep(0.2)


def settings(home: str, **values) -> dict:
    """A configuration like the mount tests' (tests/reliability_util.tiers_config):
    disk (default), disk2 and vault tiers under `home`; `vault_opts` go to the vault."""
    vault_opts = values.pop("vault_opts", {})
    for d in ("disk", "disk2", "vault", "state"):
        os.makedirs(os.path.join(home, d), exist_ok=True)
    return {"catalog": f"sqlite:///{home}/catalog.db", "state_dir": f"{home}/state",
            "tiers": {"disk": {"kind": "disk", "path": f"{home}/disk"},
                      "disk2": {"kind": "disk", "path": f"{home}/disk2"},
                      "vault": {"kind": "vault", "path": f"{home}/vault", **vault_opts}},
            **values}


@contextlib.asynccontextmanager
async def engine(tmp_path, **values) -> AsyncIterator[Engine]:
    """THE harness entry: build the engine as daemon.py does and run its services.

    `values` are configuration keys (block_timeout=5, job_retry_delay=30,
    vault_opts={"archive_delay": 1}, ...). Must run under trio with an
    EngineClock (`run()`); the engine's clocks follow it while it runs.
    """
    home = os.path.join(str(tmp_path), "home")
    cfg = config_mod.parse(settings(home, **values), os.path.join(home, "tierfs.toml"))
    daemon = Daemon(cfg, os.path.join(str(tmp_path), "mnt"))   # never mounted: no pyfuse3.init
    clock = trio.lowlevel.current_clock()
    with fake_time(clock) as cover:
        daemon.open()
        cover()
        fs = daemon.fs
        # daemon._main without the signal loop and pyfuse3.main (the kernel is the test)
        try:
            async with trio.open_nursery() as nursery:
                daemon.engine.start(nursery)
                yield Engine(daemon=daemon, fs=fs, clock=clock, home=home, nursery=nursery)
                await daemon.engine.stop()
                nursery.cancel_scope.cancel()
        finally:
            daemon.catalog.end_session(daemon.session_id, clean=True)
            daemon.catalog.close()


def run(fn: Callable[..., Awaitable], *args):
    """trio.run(fn, *args) on a fresh EngineClock."""
    return trio.run(fn, *args, clock=EngineClock())


def with_engine(**values):
    """Decorator for `async def test_x(eng, tmp_path, ...)`: a plain pytest test
    (its other arguments stay fixtures / parameters) that runs the body with a
    fresh engine on a fresh EngineClock."""
    def deco(fn):
        def wrapper(tmp_path, **kwargs):
            async def main():
                async with engine(tmp_path, **values) as eng:
                    return await fn(eng, tmp_path, **kwargs)
            return run(main)
        params = list(inspect.signature(fn).parameters.values())[1:]   # without `eng`
        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        wrapper.__module__ = fn.__module__
        return wrapper
    return deco


# ---- POSIX calls by path, as the kernel makes them ------------------------------------------
def oserror(e: errors.TierfsError, what: str) -> OSError:
    return OSError(e.errno, f"{os.strerror(e.errno)}: {what} ({e})")


class Posix:
    """Path-level calls on a FileSystem with the kernel's sequence of requests
    (lookup per component, the victim of unlink/rmdir/rename looked up
    first, create or open, flush + release at close) and its errors (OSError
    with the errno fuse_ops.py would answer). Like the kernel's dentry cache
    it keeps the lookups it took while the names exist, and forgets an
    inode's once its name is gone (then an unlinked directory is purged);
    `forget_all()` is the kernel dropping its caches."""

    def __init__(self, fs: FileSystem, caller: Caller | None = None):
        self.fs = fs
        self.caller = caller or Caller(uid=os.getuid(), gid=os.getgid(), pid=os.getpid())
        self.held: collections.Counter[int] = collections.Counter()   # lookups the "kernel" holds

    @contextlib.asynccontextmanager
    async def _call(self, what: str):
        try:
            yield
        except errors.TierfsError as e:
            raise oserror(e, what) from None

    async def _forget(self, ino: int | None) -> None:
        n = self.held.pop(ino, 0) if ino is not None else 0
        if n:
            await self.fs.forget([(ino, n)])

    async def forget_all(self) -> None:
        held, self.held = self.held, collections.Counter()
        await self.fs.forget(list(held.items()))

    def _took(self, node) -> int:
        self.held[node.ino] += 1
        return node.ino

    async def _walk(self, path: str) -> int:
        ino = ROOT_INO
        for part in [p for p in path.split("/") if p]:
            ino = self._took(await self.fs.lookup(ino, os.fsencode(part)))
        return ino

    async def _parent(self, path: str) -> tuple[int, bytes]:
        head, _, name = path.rstrip("/").rpartition("/")
        return await self._walk(head), os.fsencode(name)

    async def _exists(self, parent: int, name: bytes) -> int | None:
        try:
            return self._took(await self.fs.lookup(parent, name))
        except errors.NotFound:
            return None

    # files
    async def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        async with self._call(f"open {path!r}"):
            parent, name = await self._parent(path)
            ino = await self._exists(parent, name)
            if ino is None:
                if not flags & os.O_CREAT:
                    raise errors.NotFound(path)
                fh, node = await self.fs.create(parent, name, mode, flags & ~os.O_CREAT, self.caller)
                self._took(node)
                return fh
            if flags & os.O_CREAT and flags & os.O_EXCL:
                raise errors.TierfsError(path, err=errno.EEXIST)
            return await self.fs.open(ino, flags & ~(os.O_CREAT | os.O_EXCL), self.caller)

    async def pwrite(self, fh: int, data: bytes, off: int) -> int:
        async with self._call("write"):
            return await self.fs.write(fh, off, data)

    async def pread(self, fh: int, n: int, off: int) -> bytes:
        async with self._call("read"):
            return await self.fs.read(fh, off, n)

    async def close(self, fh: int) -> None:
        async with self._call("close"):
            try:
                await self.fs.flush(fh)
            finally:
                await self.fs.release(fh)

    async def read_file(self, path: str) -> bytes:
        fh = await self.open(path, os.O_RDONLY)
        out = bytearray()
        try:
            while chunk := await self.pread(fh, 128 * 1024, len(out)):
                out += chunk
        finally:
            await self.close(fh)
        return bytes(out)

    async def write_file(self, path: str, data: bytes) -> None:
        fh = await self.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            if data:
                await self.pwrite(fh, data, 0)
        finally:
            await self.close(fh)

    async def truncate(self, path: str, size: int) -> None:
        async with self._call(f"truncate {path!r}"):
            await self.fs.setattr(await self._walk(path), {"size": size}, None, self.caller)

    async def stat(self, path: str):
        async with self._call(f"stat {path!r}"):
            return await self.fs.getattr(await self._walk(path))

    async def size(self, path: str) -> int:
        return (await self.stat(path)).size

    async def chmod(self, path: str, mode: int) -> None:
        async with self._call(f"chmod {path!r}"):
            ino = await self._walk(path)
            node = await self.fs.getattr(ino)
            await self.fs.setattr(ino, {"mode": stat.S_IFMT(node.mode) | mode}, None, self.caller)

    # namespace
    async def mkdir(self, path: str, mode: int = 0o755) -> None:
        async with self._call(f"mkdir {path!r}"):
            parent, name = await self._parent(path)
            self._took(await self.fs.mkdir(parent, name, mode, self.caller))

    async def rmdir(self, path: str) -> None:
        async with self._call(f"rmdir {path!r}"):
            parent, name = await self._parent(path)
            victim = await self._exists(parent, name)   # the kernel looks it up first
            await self.fs.rmdir(parent, name)
            await self._forget(victim)                  # and forgets it once the name is gone

    async def unlink(self, path: str) -> None:
        async with self._call(f"unlink {path!r}"):
            parent, name = await self._parent(path)
            victim = await self._exists(parent, name)
            await self.fs.unlink(parent, name)
            await self._forget(victim)

    async def rename(self, src: str, dst: str, *, noreplace: bool = False, exchange: bool = False) -> None:
        async with self._call(f"rename {src!r} {dst!r}"):
            sp, sn = await self._parent(src)
            dp, dn = await self._parent(dst)
            moved = await self._exists(sp, sn)
            victim = await self._exists(dp, dn)
            await self.fs.rename(sp, sn, dp, dn, noreplace=noreplace, exchange=exchange)
            if victim != moved and not exchange:
                await self._forget(victim)              # replaced: its name is gone

    async def link(self, src: str, dst: str) -> None:
        async with self._call(f"link {src!r} {dst!r}"):
            ino = await self._walk(src)
            dp, dn = await self._parent(dst)
            self._took(await self.fs.link(ino, dp, dn))

    async def symlink(self, target: str, path: str) -> None:
        async with self._call(f"symlink {path!r}"):
            parent, name = await self._parent(path)
            self._took(await self.fs.symlink(parent, name, os.fsencode(target), self.caller))

    async def readlink(self, path: str) -> str:
        async with self._call(f"readlink {path!r}"):
            return os.fsdecode(await self.fs.readlink(await self._walk(path)))

    async def listdir(self, path: str) -> list[str]:
        async with self._call(f"readdir {path!r}"):
            ino = await self._walk(path)
            names, pos = [], 0
            while entries := await self.fs.readdir(ino, pos):
                names += [os.fsdecode(e.name) for e in entries if e.name not in (b".", b"..")]
                pos = entries[-1].pos
            return names

    # xattrs
    async def setxattr(self, path: str, name: str, value: bytes) -> None:
        async with self._call(f"setxattr {path!r} {name}"):
            await self.fs.setxattr(await self._walk(path), os.fsencode(name), value, self.caller)

    async def getxattr(self, path: str, name: str) -> bytes:
        async with self._call(f"getxattr {path!r} {name}"):
            return await self.fs.getxattr(await self._walk(path), os.fsencode(name), self.caller)

    async def listxattr(self, path: str) -> list[str]:
        async with self._call(f"listxattr {path!r}"):
            return [os.fsdecode(n) for n in await self.fs.listxattr(await self._walk(path))]

    async def removexattr(self, path: str, name: str) -> None:
        async with self._call(f"removexattr {path!r} {name}"):
            await self.fs.removexattr(await self._walk(path), os.fsencode(name), self.caller)

    async def request(self, path: str, verb: str) -> None:
        await self.setxattr(path, REQUEST.decode(), verb.encode())

    async def state(self, path: str) -> str:
        return (await self.getxattr(path, "user.tierfs.state")).decode()

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)
