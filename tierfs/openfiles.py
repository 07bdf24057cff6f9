"""The bytes behind open files: one binding per open inode, shared by all its handles.

Every handle of an inode reads and writes the same thing: the file's local
object (a kept fd: pread/pwrite, the throughput path), the staged copy of a
file on a remote tier that is being written (staging.py), or a remote object
read by range. Binding per inode rather than per handle is what makes every
handle see every write: with per-handle objects, a reader opened before a
migrate or an archive + restore kept reading the old object while writers
wrote the new one (found by tests/mount/test_fsx_handles.py).

When a move gives an open file a new location (migrate, restore, a truncate
to 0 of an archived file), `follow` rebinds it; a release (the file becomes
archived) keeps the old object bound: its bytes are the file's content, and
it stays pinned. Bound objects are pinned: the garbage collector leaves them
alone while a handle uses them.

FUSE passthrough (passthrough.py) is decided per binding, when its first
handle opens it: a binding whose bytes are in a local file (an object of a
disk tier or an in-place original, opened read-write; a staged copy) gets a
backing id, and every handle of it is then served by the kernel from that
file; a binding without one (a remote object read by range, no passthrough on
this mount) keeps all its handles on the daemon's read/write path. The kernel
requires exactly that: every concurrent open of an inode uses the same backing
file, and cached and passthrough opens of one inode cannot coexist. The
kernel's backing file cannot be swapped under open handles, so a binding with
a backing id never follows a move: movers of this mount leave such files alone
(`in_passthrough`), and a move made by another mount marks the binding `stale`:
readers go on reading the bytes they opened, a new writer gets EBUSY until
they close. The daemon sees no reads or writes of such files: `backing_changed`
tells fs.py when the backing file's size or times moved.

`OpenFiles` is everything this mount knows about files in use: handles, the
open/writer counts per inode, the kernel's lookup counts, the bindings
(`OpenObjects`) and the per-inode locks. Other modules ask it questions
(`writing`, `in_use`, `is_pinned`, ...) instead of reading its counters.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from typing import Callable

import trio

from . import errors
from .catalog.base import READABLE_STATES, Inode
from .passthrough import NoPassthrough
from .staging import Staging
from .tiers.base import Tier

log = logging.getLogger(__name__)


@dataclass
class Bound:
    """What the handles of one open inode read and write."""

    ino: int
    tier: Tier | None          # tier of the object (None: the file has no bytes anywhere yet)
    key: str | None            # object key; None: no object yet (reads zeros up to the size)
    fd: int | None = None      # local object or staged copy: pread/pwrite on it
    fd_writable: bool = False  # fd was opened O_RDWR
    staged: bool = False       # fd is the staged copy of a remote-tier file
    users: int = 0             # handles using it
    backing_id: int | None = None   # FUSE passthrough: the kernel reads and writes fd itself
    seen: tuple[int, int] | None = None   # (size, mtime_ns) of fd when fs.py last looked (passthrough)
    stale: bool = False        # passthrough, and the catalog moved the file elsewhere meanwhile
    changes: int = 0           # passthrough: kernel writes to fd seen while bound (fs.py's _take_kernel_writes)

    @property
    def where(self) -> str:
        return f"object {self.key} on tier {self.tier.name}" if self.tier is not None else "no object"


class OpenObjects:
    def __init__(self, staging: Staging, tier_of: Callable[[str | None], Tier],
                 passthrough: NoPassthrough | None = None):
        self.staging = staging
        self.tier_of = tier_of
        self.passthrough = passthrough or NoPassthrough()
        self.bound: dict[int, Bound] = {}
        self._pins: dict[tuple[str, str], int] = {}

    def get(self, ino: int) -> Bound:
        return self.bound[ino]

    def is_pinned(self, tier: str, key: str) -> bool:
        return (tier, key) in self._pins

    def backing_id(self, ino: int) -> int:
        """The backing id the open of `ino` answers with (0: none; the caller holds its lock)."""
        b = self.bound.get(ino)
        return b.backing_id or 0 if b is not None else 0

    def in_passthrough(self, ino: int) -> bool:
        """Handles of `ino` are served by the kernel from a backing file: the
        file must not be moved while they are open (the kernel keeps that file)."""
        b = self.bound.get(ino)
        return b is not None and b.backing_id is not None

    def passthrough_writers(self, writing: Callable[[int], bool]) -> list[int]:
        """Inodes served by the kernel that `writing` says are open for writing."""
        return [ino for ino, b in self.bound.items() if b.backing_id is not None and writing(ino)]

    def backing_changed(self, ino: int) -> os.stat_result | None:
        """The backing file's fstat when its size or mtime moved since the
        last call (the kernel wrote it), else None."""
        b = self.bound.get(ino)
        if b is None or b.backing_id is None:
            return None
        before = b.seen
        st = self._look(b)
        return None if b.seen == before else st

    def backing_settled(self, ino: int) -> None:
        """The daemon itself changed the backing file (truncate, fallocate)
        and put the result in the cache: not a change the kernel made."""
        b = self.bound.get(ino)
        if b is not None and b.backing_id is not None:
            self._look(b)

    @staticmethod
    def _look(b: Bound) -> os.stat_result:
        """fstat of a backing file, remembered as what the daemon last saw of it."""
        st = os.fstat(b.fd)
        b.seen = (st.st_size, st.st_mtime_ns)
        return st

    # ---- binding (the caller holds the inode's lock) ------------------------------
    async def acquire(self, inode: Inode, writable: bool, truncating: bool = False) -> Bound:
        """The binding of a readable file for one more handle (`truncating`:
        an O_TRUNC open, which needs no copy of a remote object's bytes)."""
        b = self.bound.get(inode.ino)
        if b is None:
            b = await self._bind(inode, writable, truncating)
            self.bound[inode.ino] = b
        elif b.stale and writable:
            raise errors.TierfsError(
                f"inode {inode.ino} was moved by another mount while open here with FUSE passthrough; it can be "
                f"opened for writing once its {b.users} open handle(s) here close", err=errno.EBUSY)
        elif writable and not b.staged and self._remote(b.tier, b.key):
            await self._stage(b, inode, truncating)  # readers bound to the remote object now see the writer's copy
        elif writable and b.fd is not None and not b.fd_writable:
            self._swap(b, b.tier, b.key, writable=True)
        b.users += 1
        return b

    def release(self, ino: int) -> None:
        """One handle fewer; the last one closes the binding."""
        b = self.bound.get(ino)
        if b is None:
            return
        b.users -= 1
        if b.users > 0:
            return
        del self.bound[ino]
        if b.backing_id is not None:
            self.passthrough.unregister(b.backing_id)
        if b.staged:
            self.staging.release(ino)
        else:
            self._close(b)

    def follow(self, inode: Inode) -> None:
        """The catalog gave an open file a new location: bind it there."""
        b = self.bound.get(inode.ino)
        if b is None or b.staged or inode.state not in READABLE_STATES:
            return
        if (b.tier.name if b.tier else None, b.key) == (inode.tier, inode.location):
            return
        if b.backing_id is not None:
            if not b.stale:
                b.stale = True
                log.info("inode %d moved to %s/%s while open with FUSE passthrough: its %d handle(s) keep %s "
                         "until they close", inode.ino, inode.tier, inode.location, b.users, b.where)
            return
        try:
            self._swap(b, self.tier_of(inode.tier) if inode.tier else None, inode.location, b.fd_writable)
        except errors.TierfsError as e:
            log.error("inode %d moved to %s/%s but it cannot be opened there (%s); its open handles keep "
                      "reading %s", inode.ino, inode.tier, inode.location, e, b.where)

    # ---- internals -------------------------------------------------------------------
    @staticmethod
    def _remote(tier: Tier | None, key: str | None) -> bool:
        return tier is not None and (key is None or tier.local_path(key) is None)

    async def _bind(self, inode: Inode, writable: bool, truncating: bool) -> Bound:
        tier = self.tier_of(inode.tier) if inode.tier else None
        b = Bound(inode.ino, tier, inode.location)
        if self.staging.get(inode.ino) is not None or (writable and self._remote(tier, inode.location)):
            await self._stage(b, inode, truncating)
        else:
            # With passthrough every handle writes through the kernel's one backing file: open it
            # read-write even for a reader, so a writer opening later can share it.
            self._open(b, writable, try_writable=self.passthrough.active)
        # A writer opening a file with an archive copy stays on the daemon's path: its first write()
        # ends the archive copy, where passthrough would have to end it at the open, whether it writes or
        # not (fs.py, _passthrough_writer; fallocate --keep-size opens for writing and changes nothing).
        if b.fd is not None and b.fd_writable and not (writable and inode.archive_tier):
            b.backing_id = self.passthrough.register(b.fd)
            if b.backing_id is not None:
                self._look(b)
        return b

    async def _stage(self, b: Bound, inode: Inode, truncating: bool = False) -> None:
        c = await self.staging.acquire(inode, fetch=not truncating)
        self._close(b)
        b.fd, b.fd_writable, b.staged = c.fd, True, True

    def _open(self, b: Bound, writable: bool, try_writable: bool = False) -> None:
        """Open b's object (local tiers) and pin it; `try_writable`: read-write
        if the object allows it (a read-only file system, an immutable or
        running file: read-only, and no passthrough for this binding)."""
        if b.tier is not None and b.key is not None:
            path = b.tier.local_path(b.key)
            if path is not None:
                try:
                    if try_writable and not writable:
                        try:
                            b.fd = os.open(path, os.O_RDWR)
                            writable = True
                        except OSError as e:
                            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ETXTBSY):
                                raise
                    if b.fd is None:
                        b.fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
                except OSError as e:
                    log.error("open inode %d: %s: %s", b.ino, b.where, e.strerror)
                    raise errors.TierfsError(f"{b.where}: {e.strerror}", err=e.errno or errno.EIO) from e
                b.fd_writable = writable
            k = (b.tier.name, b.key)
            self._pins[k] = self._pins.get(k, 0) + 1

    def _close(self, b: Bound) -> None:
        if b.fd is not None and not b.staged:
            os.close(b.fd)
        b.fd = None
        if b.tier is not None and b.key is not None and not b.staged:
            k = (b.tier.name, b.key)
            left = self._pins.get(k, 1) - 1
            if left:
                self._pins[k] = left
            else:
                self._pins.pop(k, None)

    def _swap(self, b: Bound, tier: Tier | None, key: str | None, writable: bool) -> None:
        """Bind b to (tier, key), opening the new object before letting go of the old one."""
        new = Bound(b.ino, tier, key)
        self._open(new, writable)
        self._close(b)
        b.tier, b.key, b.fd, b.fd_writable = new.tier, new.key, new.fd, new.fd_writable


@dataclass
class StubRead:
    """A reader of an offline file's stub (partial-state files): no binding,
    no backing id; fs.py serves reads within the stub from `data` and binds
    the handle at its first read beyond (restoring the file)."""

    data: bytes                   # the file's first stub_size bytes, as of the open
    version: int                  # the file's data_version they are of
    caller: object                # the opener (fs.Caller): the restore a read beyond the stub queues is theirs


@dataclass
class Handle:
    """An open file and whether it wrote; the bytes are its inode's binding."""

    fh: int
    ino: int
    flags: int
    writable: bool
    dirty: bool = False           # wrote since open (version already bumped, or bump_pending)
    seen_changes: int = 0         # passthrough: its binding's `changes` when it opened or last became dirty
    bump_pending: bool = False    # the version bump of this handle's writes rides on its next persist
    stub: StubRead | None = None  # reads an offline file's stub, bound to no object yet


class InodeLock:
    """`async with files.lock(ino)`: a trio.Lock whose uncontended acquire does
    not yield. trio's acquire always passes through the scheduler (a round
    of ~20-40 us here), and creating one file takes four inode locks."""

    __slots__ = ("lock",)

    def __init__(self):
        self.lock = trio.Lock()

    async def __aenter__(self) -> None:
        try:
            self.lock.acquire_nowait()
        except trio.WouldBlock:
            await self.lock.acquire()

    async def __aexit__(self, *exc) -> None:
        self.lock.release()

    def idle(self) -> bool:
        return not self.lock.locked() and self.lock.statistics().tasks_waiting == 0


class OpenFiles:
    """Handles, open/writer/lookup counts, bindings and inode locks of one mount."""

    def __init__(self, objects: OpenObjects):
        self.objects = objects                 # what the handles read and write
        self._handles: dict[int, Handle] = {}
        self._opens: dict[int, int] = {}       # open handles per inode
        self._writers: dict[int, int] = {}     # open writable handles per inode
        self._lookups: dict[int, int] = {}     # kernel lookup counts
        self._locks: dict[int, InodeLock] = {}
        self._next_fh = 1
        #: held by a restore that puts a file back at its in-place path (link + switch, moves.py) and by the
        #: collector deleting released originals (check + unlink, gc.py): neither sees the other half-done
        self.originals = trio.Lock()

    # ---- questions ---------------------------------------------------------
    def writing(self, ino: int) -> bool:
        """A handle of this mount has `ino` open for writing."""
        return bool(self._writers.get(ino))

    def sole_writer(self, ino: int) -> bool:
        """Exactly one handle of this mount writes `ino`."""
        return self._writers.get(ino) == 1

    def is_open(self, ino: int) -> bool:
        return bool(self._opens.get(ino))

    def known(self, ino: int) -> bool:
        """The kernel holds a lookup on `ino` (a name or attributes of it are cached there)."""
        return bool(self._lookups.get(ino))

    def in_use(self, ino: int) -> bool:
        """Open here or known to the kernel."""
        return self.is_open(ino) or self.known(ino)

    def open_inodes(self) -> list[int]:
        """Every inode a handle of this mount has open."""
        return [ino for ino, n in self._opens.items() if n]

    def handle_count(self) -> int:
        return len(self._handles)

    def is_pinned(self, tier: str, key: str) -> bool:
        """A handle reads or writes object `key` of `tier`: the collector must leave it."""
        return self.objects.is_pinned(tier, key)

    def in_passthrough(self, ino: int) -> bool:
        """The kernel reads and writes `ino`'s object itself (FUSE passthrough): no move may switch it."""
        return self.objects.in_passthrough(ino)

    # ---- inode locks ---------------------------------------------------------
    def lock(self, ino: int) -> InodeLock:
        lk = self._locks.get(ino)
        if lk is None:
            lk = self._locks[ino] = InodeLock()
        return lk

    def drop_lock(self, ino: int) -> None:
        lk = self._locks.get(ino)
        if lk is not None and lk.idle():
            del self._locks[ino]

    # ---- kernel lookups --------------------------------------------------------
    def looked_up(self, ino: int) -> None:
        self._lookups[ino] = self._lookups.get(ino, 0) + 1

    def forget(self, ino: int, n: int) -> bool:
        """The kernel dropped `n` lookups; True when it holds none any more."""
        left = self._lookups.get(ino, 0) - n
        if left > 0:
            self._lookups[ino] = left
            return False
        self._lookups.pop(ino, None)
        return True

    # ---- open counts -------------------------------------------------------------
    def opened(self, ino: int, writable: bool) -> bool:
        """Count one more handle; True when it is the first one, or the first writer."""
        self._opens[ino] = self._opens.get(ino, 0) + 1
        if writable:
            self._writers[ino] = self._writers.get(ino, 0) + 1
        return self._opens[ino] == 1 or (writable and self._writers[ino] == 1)

    def closed(self, ino: int, writable: bool) -> tuple[bool, bool]:
        """Count one handle fewer: (it was the last one, it was the last writer)."""
        self._opens[ino] = self._opens.get(ino, 1) - 1
        last_open = not self._opens[ino]
        if last_open:
            del self._opens[ino]
        last_writer = False
        if writable:
            self._writers[ino] = self._writers.get(ino, 1) - 1
            last_writer = not self._writers[ino]
            if last_writer:
                del self._writers[ino]
        return last_open, last_writer

    # ---- handles -------------------------------------------------------------------
    def add_handle(self, ino: int, flags: int, writable: bool) -> Handle:
        h = Handle(fh=self._next_fh, ino=ino, flags=flags, writable=writable)
        self._next_fh += 1
        self._handles[h.fh] = h
        return h

    def handle(self, fh: int) -> Handle:
        h = self._handles.get(fh)
        if h is None:
            raise errors.TierfsError(f"bad file handle {fh}", err=errno.EBADF)
        return h

    def pop_handle(self, fh: int) -> Handle | None:
        return self._handles.pop(fh, None)
