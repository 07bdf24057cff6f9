"""The filesystem engine: POSIX semantics over the catalog and the tiers.

fuse_ops.py translates pyfuse3 calls into calls on FileSystem and domain
exceptions into errno; everything with meaning lives here.

Concurrency model (pyfuse3 runs each request as a trio task):
- Catalog calls block, so they run in worker threads (`self.cat`), limited
  by a CapacityLimiter sized by the catalog (1 for SQLite), except those the
  catalog names cheap and local (catalog.inline_calls: the SQLite fast path),
  which run on the event loop: a thread round trip costs more than they do.
- Between two awaits anything can happen, so read-modify-write of one inode
  holds that inode's trio.Lock (`self.lock(ino)`, kept by openfiles.OpenFiles);
  moves (jobs) take the same lock for their final compare-and-swap, so an
  open-for-write and a move's switch never interleave.
- Reads and writes of a local object use os.pread/os.pwrite on an fd kept
  per open inode (page-cache fast; this is the throughput path); every
  handle of an inode uses the same binding (tierfs/openfiles.py).
- Inode attributes are cached (`self.cache`, tierfs/attrcache.py). For a
  catalog used by one mount the cache is authoritative; for a shared catalog
  entries expire after attr_timeout. Size/mtime of files being written live
  in the cache and reach the catalog on flush/fsync/release; attrcache.py
  states the two rules that keep an older catalog copy from replacing them.
  Catalog calls that return an inode go through `fetch`, which applies them.

Collaborators come in at construction, typed: the offline contract
(archive.Offline, or archive.NoArchive for a mount without archive machinery)
and the user.tierfs.request handling (requests.Requests / NoRequests) as
classes FileSystem instantiates with itself (they call back into it), and the
`Events` the background services hear (services.py). tierfs/engine.py builds
the whole engine.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import functools
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import trio

from . import errors, xattrs
from .attrcache import AttrCache
from .checksums import Checksums
from .catalog.base import READABLE_STATES, Catalog, DirEntry, Inode, State, now_ns
from .archive import NoArchive, serves_stub
from .openfiles import Handle, InodeLock, OpenFiles, OpenObjects, StubRead
from .passthrough import NoPassthrough
from .placement import Placer
from .requests import NoRequests
from .staging import Staging
from .settings import archives_in_place
from .services import Events, NoEvents
from .tiers.base import Tier, new_key

if TYPE_CHECKING:
    from .archive import Offline
    from .requests import Requests

log = logging.getLogger(__name__)

NAME_MAX = 255
#: fallocate(2) modes (linux/falloc.h). The kernel refuses COLLAPSE_RANGE,
#: INSERT_RANGE and UNSHARE_RANGE on FUSE itself; ZERO_RANGE reaches us.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOCATE_MODES = frozenset({0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE})
#: Files up to this size get their checksum when their only writer closes them
#: (in the same catalog transaction as size/mtime); larger ones in the background.
INLINE_CHECKSUM_MAX = 256 * 1024
#: How long a statfs answer is reused (fs.statfs): free space a second old, as df on NFS shows it.
STATFS_TTL_S = 1.0
#: passthrough: a writer's close that leaves less than this free where its bytes are says in the log that
#: the tier is full (the kernel's ENOSPC went to the application without the daemon seeing it); at most
#: once per FULL_TELL_S per tier
FULL_BELOW = 1 << 20
FULL_TELL_S = 60.0
#: user.tierfs.* attributes stored like any other (tierfs reads them: placement, policies)
STORED_XATTRS = frozenset({xattrs.PLACEMENT, xattrs.PIN, xattrs.INACTIVE_FOR})


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate64.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def fallocate(fd: int, mode: int, off: int, length: int) -> None:
    """fallocate(2) with its mode (os has only posix_fallocate, mode 0)."""
    if _libc.fallocate64(fd, mode, off, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def validate_stored_xattr(name: bytes, value: bytes) -> None:
    """Reject values tierfs could not interpret later (EINVAL at setxattr)."""
    text = value.decode("utf-8", "replace").strip()
    if name == xattrs.PIN and text not in ("0", "1"):
        raise errors.Invalid("user.tierfs.pin must be 0 or 1")
    if name == xattrs.INACTIVE_FOR:
        from .units import parse_duration
        try:
            parse_duration(text, "user.tierfs.inactive_for")
        except errors.ConfigError as e:
            raise errors.Invalid(str(e)) from None


def _user_namespace_only(name: bytes) -> None:
    """tierfs stores user.* attributes only: no ACLs, labels or capabilities
    (the kernel would not enforce what we stored), so others are EOPNOTSUPP."""
    if not name.startswith(b"user."):
        raise errors.TierfsError(f"only user.* attributes are supported, not {name!r}", err=errno.EOPNOTSUPP)


class WentOffline(errors.TryAgain):
    """A move archived the file between open()'s check and the handle: retry."""


@dataclass
class Caller:
    """Who makes a request (from pyfuse3's RequestContext)."""

    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0o022


class FileSystem:
    """POSIX operations over a Catalog and a set of Tiers."""

    def __init__(self, cfg, catalog: Catalog, tiers: dict[str, Tier], session_id: str = "local",
                 staging_dir: str | None = None, *, events: Events | None = None,
                 offline: Callable[..., Offline | NoArchive] | None = None,
                 requests: Callable[..., Requests | NoRequests] | None = None,
                 passthrough: NoPassthrough | None = None):
        """`offline(fs, cache, requests)` and `requests(fs, events)` build the
        offline contract and the request handling (default: none, archive.NoArchive
        and requests.NoRequests); `events` hears moves, deletions and queued jobs;
        `passthrough` lets the kernel read and write local bytes itself (passthrough.py)."""
        self.cfg = cfg
        self.catalog = catalog
        self.tiers = tiers
        self.session_id = session_id   # renewed (renew_session) if another mount reaps it
        self._renewed: list[Callable[[str], None]] = []
        self.events: Events = events or NoEvents()
        self.cat_limiter = trio.CapacityLimiter(catalog.concurrency)
        self.cache_ttl = cfg.attr_timeout if catalog.shared else float("inf")
        self._cache = AttrCache(self.cache_ttl)
        self._op_counts: collections.Counter[str] = collections.Counter()  # FUSE requests by operation (stats)
        self._statfs: tuple[float, tuple[int, int, int]] | None = None   # (valid until, answer)
        self._failover_told = float("-inf")   # time.monotonic() the last failover wait was logged
        self._full_told: dict[str, float] = {}   # where -> trio time it was last said full (passthrough)
        self.placer = Placer(self)
        self.staging = Staging(self, self._cache, self.events, staging_dir or os.path.join(cfg.state_dir, "staging"))
        self.passthrough = passthrough or NoPassthrough()
        self.files = OpenFiles(OpenObjects(self.staging, self.tier, self.passthrough))
        self._objects = self.files.objects   # what open files' handles read and write
        self.checksums = Checksums(catalog, self.cat, self.compute_checksum)  # a background service runs its backlog
        self.requests = (requests or NoRequests)(self, self.events)
        self.offline = (offline or NoArchive)(self, self._cache, self.requests)

    # ---- plumbing --------------------------------------------------------
    async def cat(self, fn, *args, **kwargs):
        """Run a blocking catalog call: on the event loop when the catalog
        names it cheap and local (catalog.inline_calls), else in a worker thread.
        During a failover of the catalog's primary (errors.CatalogFailover) the
        call is repeated until catalog.failover_wait_s: the syscall waits for
        the election (10-11 s) instead of failing with EIO."""
        if getattr(fn, "__self__", None) is self.catalog and fn.__name__ in self.catalog.inline_calls:
            return fn(*args, **kwargs)
        give_up: float | None = None
        while True:
            try:
                return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.cat_limiter)
            except errors.CatalogFailover as e:
                now = time.monotonic()
                if give_up is None:
                    give_up = now + self.catalog.failover_wait_s
                    if now - self._failover_told > 10:   # once per failover, not once per waiting call
                        self._failover_told = now
                        log.warning("%s; waiting up to %.0f s for a new primary", e, self.catalog.failover_wait_s)
                if now >= give_up:
                    raise
                await trio.sleep(0.2)

    def on_session_renewed(self, fn: Callable[[str], None]) -> None:
        """Call fn(new session id) when the session is renewed: for those who
        publish the id (the runtime record, the metrics); the rest read
        session_id when they need it."""
        self._renewed.append(fn)

    def renew_session(self, new: str) -> None:
        """Our session was reaped and `new` registered (heartbeat.Heartbeat.renew)."""
        self.session_id = new
        for fn in self._renewed:
            fn(new)

    def lock(self, ino: int) -> InodeLock:
        return self.files.lock(ino)

    def tier(self, name: str | None) -> Tier:
        t = self.tiers.get(name) if name else None
        if t is None:
            raise errors.UnknownTier(f"tier {name!r} is not configured on this mount")
        return t

    def remember(self, inode: Inode, since: int | None = None) -> Inode:
        """Put a catalog copy in the cache (attrcache.AttrCache.remember);
        an open file the catalog moved follows its bytes (openfiles.py)."""
        inode = self._cache.remember(inode, since)
        self._objects.follow(inode)
        return inode

    async def fetch(self, fn, *args, **kwargs) -> Inode:
        """Run a catalog call that returns an inode and cache its result; a
        content change made here while it ran is kept (attrcache.py, rule 2)."""
        since = self._cache.seq
        return self.remember(await self.cat(fn, *args, **kwargs), since)

    async def invalidate(self, ino: int) -> None:
        """Tell the kernel to drop cached attributes of `ino` (after a move
        changed st_blocks or state); runs in a thread, as pyfuse3 requires."""
        if not self.files.known(ino):
            return
        try:
            import pyfuse3
            await trio.to_thread.run_sync(functools.partial(pyfuse3.invalidate_inode, ino, attr_only=True))
        except Exception as e:  # noqa: BLE001 - not mounted (unit tests) or the kernel forgot it
            log.debug("invalidate inode %d: %s", ino, e)

    def cached(self, ino: int) -> Inode | None:
        """The cached copy of `ino` however old, without asking the catalog (None if not cached)."""
        return self._cache.peek(ino)

    async def get(self, ino: int) -> Inode:
        inode = self._cache.fresh(ino)
        if inode is not None:
            return inode
        return await self.fetch(self.catalog.get, ino)

    def _evict(self, ino: int) -> None:
        if not self.files.in_use(ino) and not self._cache.is_dirty(ino):
            self._cache.evict(ino)
            self.files.drop_lock(ino)

    def _check_name(self, name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise errors.TierfsError(f"name of {len(name)} bytes is longer than {NAME_MAX}", err=errno.ENAMETOOLONG)
        if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
            raise errors.Invalid(f"invalid name {name!r}")

    def _count_lookup(self, inode: Inode, since: int | None = None) -> Inode:
        self.files.looked_up(inode.ino)
        return self.remember(inode, since)

    # ---- namespace -------------------------------------------------------
    async def lookup(self, parent: int, name: bytes) -> Inode:
        if len(name) > NAME_MAX:
            raise errors.TierfsError("name too long", err=errno.ENAMETOOLONG)
        since = self._cache.seq
        if name == b".":
            inode = await self.get(parent)
        elif name == b"..":
            inode = await self.get(await self.cat(self.catalog.parent_of, parent))
        else:
            inode = await self.cat(self.catalog.lookup, parent, name)
        inode = self._count_lookup(inode, since)
        if self.files.writing(inode.ino):
            await self._note_kernel_writes(inode.ino)   # (passthrough) the kernel would take an old size back
            inode = self._cache.peek(inode.ino)
        return inode

    async def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, n in items:
            if not self.files.forget(ino, n):
                continue
            await self._maybe_purge(ino)
            self._evict(ino)

    async def _maybe_purge(self, ino: int, refresh: bool = False) -> None:
        """Delete an unlinked inode once nothing here references it any more.
        An unlinked regular file goes at its last close (the kernel's lookup
        count only matters for directories, which may be a cwd); with a shared
        catalog `refresh` re-reads nlink (another mount may have unlinked it)
        and the catalog keeps it while another mount has it open."""
        if self.files.is_open(ino):
            return
        inode = self._cache.peek(ino)
        if refresh and self.catalog.shared:
            try:
                inode = await self.fetch(self.catalog.get, ino)
            except errors.NotFound:
                self._cache.pop(ino)
                return
        elif inode is None:
            return
        if inode.nlink > 0 or self._held_here(inode):
            return
        self._cache.forget_dirty(ino)
        purged = await self.cat(self.catalog.purge, ino)
        self._cache.pop(ino)
        if purged is not None:
            self.events.garbage()

    def _held_here(self, inode: Inode) -> bool:
        """This mount still uses the inode: open here, or a non-file the kernel
        holds (a directory may be a cwd; a regular file is only used open)."""
        return self.files.is_open(inode.ino) or (not inode.is_reg() and self.files.known(inode.ino))

    async def purge_if_unused(self, ino: int, refresh: bool = False) -> None:
        """A file lost its last name elsewhere (a policy deleted it): purge it
        now, or at its last close / when the kernel forgets it."""
        await self._maybe_purge(ino, refresh)

    def known_unlinked(self, ino: int) -> bool:
        """This mount knows `ino` has no name left (it purges it on release/forget)."""
        inode = self._cache.peek(ino)
        return inode is not None and inode.nlink == 0

    def kernel_knows(self, ino: int) -> bool:
        """The kernel holds a lookup on `ino` (worth invalidating its entries)."""
        return self.files.known(ino)

    def _new_inode(self, parent: Inode, mode: int, caller: Caller, **kw) -> Inode:
        t = now_ns()
        gid = caller.gid
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return Inode(ino=0, mode=mode, uid=caller.uid, gid=gid, nlink=2 if stat.S_ISDIR(mode) else 1,
                     atime_ns=t, mtime_ns=t, ctime_ns=t, crtime_ns=t, state_ns=t, state_cause="create", **kw)

    async def _create_entry(self, parent_ino: int, name: bytes, inode: Inode) -> Inode:
        self._check_name(name)
        async with self.lock(parent_ino):
            created = await self.cat(self.catalog.create, parent_ino, name, inode)
            self._touch_parent(parent_ino, created.ctime_ns, dirs=1 if created.is_dir() else 0)
        return self._count_lookup(created)

    def _touch_parent(self, parent: int, t: int, dirs: int = 0) -> None:
        p = self._cache.peek(parent)
        if p is not None:
            self._cache.set(parent, mtime_ns=t, ctime_ns=t, nlink=p.nlink + dirs)

    async def placement(self, parent: Inode, caller: Caller) -> Tier:
        """The online tier that new files under `parent` go to."""
        return await self.placer.for_new_file(parent, caller)

    async def placement_of(self, ino: int, caller: Caller | None = None) -> Tier:
        """The online tier a new copy of an existing file goes to (restores)."""
        try:
            parent = await self.get(await self.cat(self.catalog.parent_of, ino))
        except errors.NotFound:
            return self.tier(self.cfg.default_tier)
        return await self.placement(parent, caller or Caller())

    async def mkdir(self, parent: int, name: bytes, mode: int, caller: Caller) -> Inode:
        p = await self.get(parent)
        return await self._create_entry(parent, name, self._new_inode(p, stat.S_IFDIR | (mode & 0o7777), caller))

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, caller: Caller) -> Inode:
        p = await self.get(parent)
        if stat.S_ISREG(mode):
            fh, inode = await self.create(parent, name, mode, os.O_WRONLY, caller)
            await self.release(fh)
            return inode
        return await self._create_entry(parent, name, self._new_inode(p, mode, caller, rdev=rdev))

    async def symlink(self, parent: int, name: bytes, target: bytes, caller: Caller) -> Inode:
        p = await self.get(parent)
        inode = self._new_inode(p, stat.S_IFLNK | 0o777, caller, target=target, size=len(target))
        return await self._create_entry(parent, name, inode)

    async def readlink(self, ino: int) -> bytes:
        inode = await self.get(ino)
        if not inode.is_symlink():
            raise errors.Invalid("not a symlink")
        return inode.target or b""

    async def link(self, ino: int, parent: int, name: bytes) -> Inode:
        self._check_name(name)
        async with self.lock(ino):
            inode = await self.fetch(self.catalog.link, ino, parent, name, now_ns())
            self._touch_parent(parent, inode.ctime_ns)
            return self._count_lookup(inode)

    async def unlink(self, parent: int, name: bytes) -> None:
        # The name and, when it was the last one of an inode nothing here holds,
        # the inode in one catalog transaction (_maybe_purge's rule).
        async with self.lock(parent):
            inode, purged = await self.cat(self.catalog.remove, parent, name, now_ns(), self._held_here)
            self._touch_parent(parent, inode.ctime_ns)
        if purged:
            self._cache.forget_dirty(inode.ino)
            self._cache.pop(inode.ino)
            self.events.garbage()
            return
        self._forget_name(inode)
        await self._maybe_purge(inode.ino)

    def _forget_name(self, inode: Inode) -> None:
        """Refresh the cached copy of an inode that just lost a name."""
        if inode.ino in self._cache:
            self._cache.set(inode.ino, nlink=inode.nlink, ctime_ns=inode.ctime_ns)
        elif self.files.in_use(inode.ino):
            self.remember(inode)

    async def rmdir(self, parent: int, name: bytes) -> None:
        async with self.lock(parent):
            inode = await self.cat(self.catalog.rmdir, parent, name, now_ns())
            self._touch_parent(parent, inode.ctime_ns, dirs=-1)
        self._forget_name(inode)
        await self._maybe_purge(inode.ino)

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     noreplace: bool = False, exchange: bool = False) -> None:
        self._check_name(new_name)
        t = now_ns()
        replaced = await self.cat(self.catalog.rename, old_parent, old_name, new_parent, new_name,
                                  noreplace=noreplace, exchange=exchange, ctime_ns=t)
        if old_parent != new_parent:
            self.placer.forget()  # a moved directory inherits from its new parent
        # Directory nlinks and times changed in the catalog: drop cached parents.
        for p in {old_parent, new_parent}:
            if p in self._cache:
                await self.fetch(self.catalog.get, p)
        if replaced is not None:
            self._forget_name(replaced)
            await self._maybe_purge(replaced.ino)

    async def readdir(self, ino: int, after_pos: int, batch: int = 1000) -> list[DirEntry]:
        """Entries after `after_pos`; empty only at the end of the directory."""
        cache = self._cache
        while True:
            since = cache.seq
            entries = await self.cat(self.catalog.readdir, ino, after_pos, batch, cache.fresh_set)
            out = []
            for e in entries:
                # readdirplus hands these attributes to the kernel: what getattr would
                # answer (a file being written shows its size), a cached copy as it is.
                cached = cache.fresh(e.ino)
                if cached is not None:
                    e.inode = cached
                elif not e.has_inode():   # no longer fresh (the catalog call ran in a thread): ask again
                    try:
                        e.inode = await self.fetch(self.catalog.get, e.ino)
                    except errors.NotFound:
                        continue   # deleted meanwhile
                elif e.ino in cache:
                    e.inode = self.remember(e.inode, since)
                out.append(e)
            if out or not entries:
                return out
            after_pos = entries[-1].pos   # every entry of this batch went meanwhile: the next ones

    def readdir_accepted(self, entry: DirEntry) -> None:
        """The kernel took an entry (readdirplus): it holds a lookup on it."""
        self.files.looked_up(entry.ino)
        if entry.ino not in self._cache:
            self.remember(entry.inode)

    # ---- attributes ------------------------------------------------------
    async def getattr(self, ino: int) -> Inode:
        if self.files.writing(ino):
            await self._note_kernel_writes(ino)
        return await self.get(ino)

    async def setattr(self, ino: int, changes: dict, fh: int | None, caller: Caller) -> Inode:
        """changes: any of mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns."""
        for attempt in range(5):
            try:
                return await self._setattr(ino, dict(changes), fh, caller)
            except WentOffline:
                continue  # archived again between the restore and the lock: restore again
        raise errors.TryAgain(f"inode {ino} keeps going offline while truncating")

    async def _setattr(self, ino: int, changes: dict, fh: int | None, caller: Caller) -> Inode:
        if changes.get("size"):
            inode = await self.get(ino)
            if inode.is_reg() and inode.state not in READABLE_STATES:
                # Restore first, without holding the inode lock (the restore job needs it).
                await self._need_online(inode, os.O_WRONLY, caller)
        async with self.lock(ino):
            # (passthrough) the kernel's writes come before this change: an explicit mtime must not be
            # replaced by the time of a write made before it
            self._take_kernel_writes(ino)
            inode = await self.get(ino)
            t = now_ns()
            if "size" in changes:
                if not inode.is_reg():
                    raise errors.IsDir("cannot truncate a non-file") if inode.is_dir() else errors.Invalid("not a file")
                inode = await self._truncate(inode, changes.pop("size"), caller)
            if "mode" in changes:
                changes["mode"] = (inode.mode & ~0o7777) | (changes["mode"] & 0o7777)
            if "uid" in changes or "gid" in changes:
                # chown clears setuid/setgid on non-directories (as the kernel's own filesystems do)
                if not inode.is_dir() and caller.uid != 0:
                    changes["mode"] = changes.get("mode", inode.mode) & ~(stat.S_ISUID | stat.S_ISGID)
            if changes:
                changes.setdefault("ctime_ns", t)
                inode = await self._store(ino, self.catalog.update, changes)
                if "atime_ns" in changes:
                    # An explicit atime (touch -a) beats earlier accesses: the cache keeps atimes from moving
                    # backwards, and the pending batched access time must not overwrite it either.
                    self._cache.set(ino, atime_ns=changes["atime_ns"])
                    inode = self._cache.peek(ino)
                    self.offline.forget_access(ino)
            return inode

    async def _store(self, ino: int, fn, changes: dict, **kw) -> Inode:
        """Write `changes` and every size/time cached ahead of the catalog
        with the catalog call `fn` (update or bump_version) in one transaction;
        the cache takes the result, keeping what changed here meanwhile."""
        since = self._cache.seq
        # Bytes still in a staged copy: the catalog gets their size with the object (staging.py).
        pending = None if self.staging.unuploaded(ino) else self._cache.to_persist(ino)
        values = dict(changes)
        if pending is not None:
            for k, v in pending[0].items():
                values.setdefault(k, v)
        try:
            result = await self.cat(fn, ino, values, **kw)
        except errors.NotFound:
            self._cache.forget_dirty(ino)  # purged (by another mount): nothing left to write
            raise
        if pending is not None:
            since = self._cache.persisted(ino, pending[1])
        return self.remember(result, since)

    async def _truncate(self, inode: Inode, size: int, caller: Caller) -> Inode:
        if size < 0:
            raise errors.Invalid("negative size")
        if inode.state not in READABLE_STATES:
            if size == 0:
                return await self.offline.drop_archived(inode, caller, "truncate to 0")
            # setattr restored it before taking the lock; it went offline again meanwhile
            raise WentOffline(f"inode {inode.ino} went offline while truncating")
        await self._begin_write(inode.ino)
        self._take_kernel_writes(inode.ino)   # (passthrough) what came before the truncate
        inode = self._cache.peek(inode.ino)
        tier = self.tier(inode.tier)
        path = tier.local_path(inode.location) if inode.location else None
        try:
            if path is None:
                await self.staging.truncate(inode, size)
            else:
                await trio.to_thread.run_sync(os.truncate, path, size)
        except OSError as e:
            raise errors.TierfsError(f"truncate on tier {tier.name}: {e.strerror}", err=e.errno) from e
        # A content change like a write: it supersedes every size a write cached before it
        # (the size those writes' flush would have persisted over this one: issue 13).
        t = now_ns()
        self._cache.change(inode.ino, size=size, mtime_ns=t, ctime_ns=t)
        self._objects.backing_settled(inode.ino)   # our own change, not the kernel's
        return await self._store(inode.ino, self.catalog.update, {})

    async def statfs(self) -> tuple[int, int, int]:
        """(block size, total blocks, free blocks) of the default tier, at most
        STATFS_TTL_S old: df, dbench and file managers call statvfs constantly,
        and asking the tier (a thread hand-off, a syscall or a remote call)
        each time cost 243 µs a call against mergerfs's 6 (issue 16)."""
        now = trio.current_time()
        if self._statfs is None or now >= self._statfs[0]:
            tier = self.tier(self.cfg.default_tier)
            usage = await trio.to_thread.run_sync(tier.usage)
            bs = 4096
            if usage is None:
                answer = (bs, 1 << 40, 1 << 40)
            else:
                total, free = usage
                answer = (bs, total // bs, free // bs)
            self._statfs = (trio.current_time() + STATFS_TTL_S, answer)
        return self._statfs[1]

    # ---- xattrs ----------------------------------------------------------
    # user.tierfs.* names (xattrs.py): the read-only ones are computed from the catalog entry;
    # user.tierfs.request is a write-only verb (archive.py); STORED_XATTRS are
    # ordinary stored attributes that tierfs itself interprets (validated here).
    async def getxattr(self, ino: int, name: bytes, caller: Caller) -> bytes:
        _user_namespace_only(name)
        if name.startswith(xattrs.PREFIX) and name not in STORED_XATTRS:
            if self.files.writing(ino):
                await self._note_kernel_writes(ino)
            return await self._virtual_xattr(await self.get(ino), name, caller)
        return await self.cat(self.catalog.getxattr, ino, name)

    async def _virtual_xattr(self, inode: Inode, name: bytes, caller: Caller) -> bytes:
        if name == xattrs.STATE:
            return str(inode.state).encode()
        if name == xattrs.TIER:
            return (inode.tier or inode.archive_tier or "").encode()
        if name == xattrs.CHECKSUM:
            if inode.checksum is None:
                raise errors.NoAttr("checksum not computed yet")
            return inode.checksum.encode()
        if name == xattrs.EFFECTIVE_PLACEMENT:
            tier, src = await self.placer.effective(inode.ino if inode.is_dir() else
                                                    await self.cat(self.catalog.parent_of, inode.ino))
            where = "/" + (await self.cat(self.catalog.path_of, src)).decode(errors="replace") if src else "default_tier"
            return f"{tier} {where}".encode()
        return await self.requests.getxattr(inode, name, caller)

    async def setxattr(self, ino: int, name: bytes, value: bytes, caller: Caller,
                       create: bool = False, replace: bool = False) -> None:
        _user_namespace_only(name)
        if name.startswith(xattrs.PREFIX) and name not in STORED_XATTRS:
            if await self.requests.setxattr(ino, name, value, caller):
                return
            raise errors.TierfsError(f"{name.decode(errors='replace')} is read-only", err=errno.EPERM)
        if name in STORED_XATTRS:
            await self._check_stored(await self.get(ino), name, value, caller)
        t = now_ns()
        await self.cat(self.catalog.setxattr, ino, name, value, create=create, replace=replace, ctime_ns=t)
        self._cache.set(ino, ctime_ns=t)   # stat shows the change (POSIX: setxattr changes ctime)
        if name == xattrs.PLACEMENT:
            self.placer.forget()

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self.cat(self.catalog.listxattr, ino)

    async def _check_stored(self, inode: Inode, name: bytes, value: bytes | None, caller: Caller) -> None:
        """Who may set (value) or remove (None) a user.tierfs.* attribute that tierfs
        interprets, and which values it takes: write permission on the file is not
        enough, since each exempts or steers it (a pin exempts it from every policy,
        compliance deletion included)."""
        if value is not None and name != xattrs.PLACEMENT:
            validate_stored_xattr(name, value)
        if name == xattrs.PLACEMENT:
            if value is not None:
                await self.placer.validate(inode, value, caller)
            elif caller.uid not in (0, inode.uid):
                raise errors.PermissionDenied("only the directory's owner or root may clear its placement",
                                              err=errno.EPERM)
        elif name == xattrs.INACTIVE_FOR:
            self._check_override(inode, caller)
        elif name == xattrs.PIN and not self.requests.may_manage(inode, caller):
            log.warning("uid %d may not %s the pin of inode %d: not the owner, root or in the archivers group",
                        caller.uid, "set" if value is not None else "clear", inode.ino)
            raise errors.PermissionDenied("only the owner, root or the archivers group may pin or unpin",
                                          err=errno.EPERM)

    def _check_override(self, inode: Inode, caller: Caller) -> None:
        """Only a directory's owner (or root) sets its policy lifetime."""
        if not inode.is_dir():
            raise errors.Invalid("user.tierfs.inactive_for applies to directories")
        if caller.uid not in (0, inode.uid):
            raise errors.PermissionDenied("only the directory's owner may set user.tierfs.inactive_for", err=errno.EPERM)

    async def removexattr(self, ino: int, name: bytes, caller: Caller | None = None) -> None:
        _user_namespace_only(name)
        if name.startswith(xattrs.PREFIX) and name not in STORED_XATTRS:
            raise errors.TierfsError(f"{name.decode(errors='replace')} is read-only", err=errno.EPERM)
        if name in STORED_XATTRS:
            await self._check_stored(await self.get(ino), name, None, caller or Caller())
        t = now_ns()
        await self.cat(self.catalog.removexattr, ino, name, t)
        self._cache.set(ino, ctime_ns=t)
        if name == xattrs.PLACEMENT:
            self.placer.forget()

    # ---- files -----------------------------------------------------------
    async def create(self, parent: int, name: bytes, mode: int, flags: int, caller: Caller) -> tuple[int, Inode]:
        p = await self.get(parent)
        tier = await self.placement(p, caller)
        key = new_key()
        if tier.local_path(key) is not None:
            tier.create_empty(key)  # one local open(), like the pwrite()s of write(): no thread hop
        else:
            key = None  # remote tiers get an object at the first flush (staging.py)
        inode = self._new_inode(p, stat.S_IFREG | (mode & 0o7777), caller, tier=tier.name, location=key)
        try:
            inode = await self._create_entry(parent, name, inode)
        except BaseException:
            if key:
                await trio.to_thread.run_sync(tier.delete, key)
            raise
        fh = await self._open_handle(inode, flags)
        return fh, inode

    async def open(self, ino: int, flags: int, caller: Caller) -> int:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        for _ in range(5):  # a move may take the file offline between the check and the open
            inode = await self.get(ino)
            if inode.is_dir():
                raise errors.IsDir()
            if inode.state not in READABLE_STATES:
                if writable and flags & os.O_TRUNC:
                    async with self.lock(ino):
                        inode = await self.offline.drop_archived(inode, caller, "open with O_TRUNC")
                elif writable or not serves_stub(inode):
                    inode = await self._need_online(inode, flags, caller)
                # else a reader of a file with a stub: the restore waits for its first read beyond the stub
            self.offline.accessed(inode, flags)
            try:
                fh = await self._open_handle(inode, flags, caller)
            except WentOffline:
                continue
            if writable and self._objects.in_passthrough(ino):
                try:
                    await self._passthrough_writer(fh)
                except BaseException:
                    await self.release(fh)
                    raise
            if writable and flags & os.O_TRUNC and inode.size:
                # libfuse enables atomic_o_trunc: the kernel leaves O_TRUNC to us
                try:
                    await self.setattr(ino, {"size": 0}, fh, caller)
                except BaseException:
                    await self.release(fh)
                    raise
            return fh
        raise errors.TryAgain(f"inode {ino} keeps going offline while opening")

    async def _need_online(self, inode: Inode, flags: int, caller: Caller) -> Inode:
        """Make an offline file readable (restore), or raise TryAgain/EIO."""
        return await self.offline.ensure_online(inode, flags, caller)

    async def _open_handle(self, inode: Inode, flags: int, caller: Caller | None = None) -> int:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        async with self.lock(inode.ino):
            ino = inode.ino
            first = self.files.opened(ino, writable)
            try:
                fresh = await self._publish_open(ino, first)
                inode = fresh or await self.get(ino)
                if inode.state not in READABLE_STATES:
                    if writable or not serves_stub(inode):
                        raise WentOffline(f"inode {ino} went offline while opening")
                    return await self._attach_stub(inode, flags, caller or Caller())
                return await self._attach_handle(inode, flags, writable)
            except BaseException:
                await self._drop_open(ino, writable)
                raise

    async def _publish_open(self, ino: int, first: bool) -> Inode | None:
        """Shared catalogs: tell the other mounts this file is open here (and
        whether for writing); returns the inode as of that moment."""
        if not self.catalog.shared or not first:
            return None
        return await self.fetch(self.catalog.set_open, ino, self.session_id,
                                self.files.is_open(ino), self.files.writing(ino))

    async def _drop_open(self, ino: int, writable: bool) -> None:
        """Undo the counts of one handle (and the catalog record when they reach 0)."""
        last_open, last_writer = self.files.closed(ino, writable)
        if self.catalog.shared and (last_open or last_writer):
            try:
                await self.cat(self.catalog.set_open, ino, self.session_id, not last_open, False)
            except errors.NotFound:
                pass

    async def _attach_handle(self, inode: Inode, flags: int, writable: bool) -> int:
        """A handle on the binding of a readable file; the caller holds the lock."""
        b = await self._objects.acquire(inode, writable, truncating=writable and bool(flags & os.O_TRUNC))
        h = self.files.add_handle(inode.ino, flags, writable)
        h.seen_changes = b.changes   # (passthrough) writes made before it opened are not its own
        return h.fh

    async def _attach_stub(self, inode: Inode, flags: int, caller: Caller) -> int:
        """A handle reading an offline file's stub, bound to no object (the
        caller holds the lock). The stub is read between two reads of the
        inode: another mount's switch in between (a restore, a new stub) is
        seen, and the open starts again."""
        ino = inode.ino
        before = await self.fetch(self.catalog.get, ino)
        data = await self.cat(self.catalog.stub, ino)
        now = await self.fetch(self.catalog.get, ino)
        if (now.data_version, now.state_ns) != (before.data_version, before.state_ns) or not serves_stub(now) \
                or len(data) != now.stub_size:
            raise WentOffline(f"inode {ino} changed while its stub was read")
        h = self.files.add_handle(ino, flags, False)
        h.stub = StubRead(data, now.data_version, caller)
        return h.fh

    def handle(self, fh: int) -> Handle:
        return self.files.handle(fh)

    def reads_stub(self, fh: int) -> bool:
        """The handle reads an offline file's stub (fuse_ops answers its open with direct_io)."""
        return self.handle(fh).stub is not None

    def backing_id(self, fh: int) -> int:
        """The FUSE passthrough backing id an open/create of `fh` answers with (0: none)."""
        h = self.handle(fh)
        return 0 if h.stub is not None else self._objects.backing_id(h.ino)

    # ---- passthrough: the kernel writes, the daemon only hears of it -------
    async def _passthrough_writer(self, fh: int) -> None:
        """A handle that will write through the kernel: the daemon cannot do
        a first write's work before the first byte changes (write() is never
        called). A file with an archive copy gets it at the open (as Lustre
        HSM marks a file dirty at an open for writing): the archive copy
        stops counting, so no release can drop the online bytes the kernel
        is about to change, crash or not. Every other file gets it at the
        close (or fsync, or stat) that finds it written (_kernel_writes): a
        version bump and a cleared checksum for an open that wrote nothing
        would make the checksum be read back again for nothing. Moves of this
        mount and of others leave the file alone while it is open for
        writing, so only a daemon crash between a write and the close can
        leave its checksum behind the bytes (README, "What a crash can lose")."""
        h = self.handle(fh)
        inode = await self.get(h.ino)
        if inode.archive_tier or inode.state != State.ONLINE:
            await self._first_write(h)

    def _take_kernel_writes(self, ino: int) -> bool:
        """Take what the kernel wrote to a passthrough file since the daemon
        last looked (its size and mtime, from fstat of the backing file) into
        the cache, as write() would have (before the daemon changes the file
        itself; _note_kernel_writes and _kernel_writes otherwise). True when
        there was something."""
        st = self._objects.backing_changed(ino)
        if st is None:
            return False
        b = self._objects.get(ino)
        b.changes += 1
        if b.staged:
            self.staging.mark_dirty(ino)
        self._cache.change(ino, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
        return True

    async def _note_kernel_writes(self, ino: int) -> None:
        """_take_kernel_writes for whoever looks at a file open for writing
        (stat, lookup, user.tierfs.* attributes, the periodic attribute
        flush): and a recorded checksum goes at once, as at a first write(),
        so nobody is shown a checksum of bytes the file no longer has."""
        if self._take_kernel_writes(ino) and self._cache.peek(ino).checksum is not None:
            async with self.lock(ino):
                if self._cache.peek(ino).checksum is not None:
                    await self._begin_write(ino)

    def _tell_if_full(self, ino: int) -> None:
        """A passthrough writer closes where (almost) no space is left: its
        writes may have got ENOSPC from the kernel, which the daemon never
        sees; one log line says which tier is full, as write() says it."""
        b = self._objects.bound.get(ino)
        if b is None or b.backing_id is None:
            return
        try:
            st = os.fstatvfs(b.fd)
        except OSError:
            return
        free = st.f_bfree * st.f_frsize   # (root's view: the kernel writes with the daemon's credentials)
        if free >= FULL_BELOW:
            return
        where = "the staging directory" if b.staged else f"tier {b.tier.name}"
        now = trio.current_time()
        if now - self._full_told.get(where, -FULL_TELL_S) < FULL_TELL_S:
            return
        self._full_told[where] = now
        log.error("%s is full (%d bytes free): writes to it get ENOSPC (FUSE passthrough: from the kernel, "
                  "not logged one by one)", where, free)

    async def _kernel_writes(self, ino: int, h: Handle) -> None:
        """_take_kernel_writes, and a writer handle of a file the kernel wrote
        while it was open becomes dirty, as at its first write() (its close
        persists size and mtime and queues the checksum). Which of several
        writers wrote is not known: each one open meanwhile is taken as one."""
        self._take_kernel_writes(ino)
        b = self._objects.bound.get(ino)
        if b is not None and b.changes > h.seen_changes and h.writable and not h.dirty:
            await self._first_write(h)
            h.seen_changes = b.changes

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handle(fh)
        if self.offline.track_reads:
            self.offline.accessed(self._cache.peek(h.ino), os.O_RDONLY)
        if h.stub is not None:
            data = await self._read_stub(h, off, size)
            if data is not None:
                return data
        b = self._objects.get(h.ino)
        if b.fd is not None:
            try:
                return os.pread(b.fd, size, off)
            except OSError as e:  # fuse_ops logs it (one line)
                raise errors.TierfsError(f"inode {h.ino}, {b.where}: {e.strerror}", err=e.errno or errno.EIO) from e
        if b.key is None:  # no object: a sparse file that was never written
            inode = self._cache.peek(h.ino)
            return b"\0" * max(0, min(size, inode.size - off))
        return await trio.to_thread.run_sync(b.tier.read, b.key, off, size)

    async def _read_stub(self, h: Handle, off: int, size: int) -> bytes | None:
        """A read of a stub handle: served from the stub when it lies within
        it; else (or the file was restored or changed meanwhile) the handle
        moves to the online copy, restoring the file as an open would, and
        None says read that. An O_NONBLOCK reader gets what the stub has of
        a read that starts in it (a short read, which the open's direct_io
        hands over as it is), where a blocking one would wait: file(1) opens
        so and reads 7 MiB at once for a header. A blocking read is never cut
        short: the page cache (mmap, exec) takes a short read for the end of
        the file, shrinks the size it caches and zero-fills the rest."""
        inode = await self.get(h.ino)
        if inode.state not in READABLE_STATES and inode.data_version == h.stub.version:
            end = min(off + size, inode.size)
            if off >= end:
                return b""
            if off < len(h.stub.data) and (end <= len(h.stub.data) or h.flags & os.O_NONBLOCK):
                return h.stub.data[off:end]
        await self._leave_stub(h)
        return None

    async def _leave_stub(self, h: Handle) -> None:
        """Bind a stub handle to the file's online copy, restoring it first
        (block mode waits; error mode and O_NONBLOCK: EAGAIN, restore queued)."""
        for _ in range(5):
            inode = await self.get(h.ino)
            if inode.state not in READABLE_STATES:
                await self._need_online(inode, h.flags, h.stub.caller)
            async with self.lock(h.ino):
                if h.stub is None:
                    return   # a concurrent read of the same handle did it
                inode = await self.get(h.ino)
                if inode.state in READABLE_STATES:
                    await self._objects.acquire(inode, False)
                    h.stub = None
                    return
        raise errors.TryAgain(f"inode {h.ino} keeps going offline while reading")

    def _can_defer_bump(self, h: Handle, inode: Inode) -> bool:
        """True when the first write of a handle need not bump the version
        before the bytes change: an in-place write, nobody else shares the
        catalog, no checksum to clear and no archive copy to invalidate (a
        new file). Movers of this mount never switch a file open for writing,
        and the bump still happens before the handle closes (_persist_attrs)."""
        b = self._objects.get(h.ino)
        return (not self.catalog.shared and not b.staged and b.fd is not None and inode.state == State.ONLINE
                and inode.checksum is None and not inode.archive_tier)

    async def _begin_write(self, ino: int) -> None:
        """First write of a handle: bump the content version so a concurrent
        move's compare-and-swap fails, and invalidate a dual file's archive copy.
        The caller holds lock(ino)."""
        inode = await self.get(ino)
        if inode.archive_tier and inode.state in (State.DUAL, State.ARCHIVING):
            await self.offline.dirty_dual(inode)
        await self.fetch(self.catalog.bump_version, ino, {})

    def _writable(self, fh: int) -> Handle:
        h = self.handle(fh)
        if not h.writable:
            raise errors.TierfsError("file not open for writing", err=errno.EBADF)
        return h

    async def _first_write(self, h: Handle) -> None:
        """Before a handle first changes the bytes: bump the version now, or
        defer the bump to its next persist (_can_defer_bump)."""
        if not h.dirty:
            async with self.lock(h.ino):
                if not h.dirty:
                    if self._can_defer_bump(h, await self.get(h.ino)):
                        h.bump_pending = True
                    else:
                        await self._begin_write(h.ino)
                    h.dirty = True

    def _wrote(self, h: Handle, end: int) -> None:
        """After bytes changed through `h` up to offset `end`: the staged copy
        needs an upload, and size/mtime live in the cache until the next persist."""
        if self._objects.get(h.ino).staged:
            self.staging.mark_dirty(h.ino)
        t = now_ns()
        self._cache.change(h.ino, size=max(self._cache.peek(h.ino).size, end), mtime_ns=t, ctime_ns=t)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._writable(fh)
        await self._first_write(h)
        if h.flags & os.O_APPEND:
            off = self._cache.peek(h.ino).size
        b = self._objects.get(h.ino)
        try:
            n = os.pwrite(b.fd, buf, off)
        except OSError as e:
            # fuse_ops logs these (one line each)
            where = "the staging directory" if b.staged else f"tier {b.tier.name}"
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise errors.NoSpace(f"inode {h.ino}: {where} is full") from e
            raise errors.TierfsError(f"inode {h.ino}, {b.where}: {e.strerror}", err=e.errno or errno.EIO) from e
        self._wrote(h, off + n)
        return n

    async def fallocate(self, fh: int, mode: int, off: int, length: int) -> None:
        """fallocate(2) through an open handle, passed to the object file (or
        the staged copy of a remote tier): mode 0 and FALLOC_FL_KEEP_SIZE
        allocate, PUNCH_HOLE|KEEP_SIZE deallocates (reads then return zeros);
        every other mode is EOPNOTSUPP. One that grows the size or punches into
        the content is a write (version bump, a dual file goes online, a staged
        copy gets uploaded); one that only allocates changes nothing visible."""
        h = self._writable(fh)
        if mode not in FALLOCATE_MODES:
            raise errors.TierfsError(f"fallocate mode {mode:#x} is not supported", err=errno.EOPNOTSUPP)
        await self._kernel_writes(h.ino, h)   # (passthrough) the size the kernel's writes left
        # The kernel holds the inode lock for the modes that change size or
        # bytes (as for write and truncate), so the size cannot move meanwhile.
        size = self._cache.peek(h.ino).size
        grows = not mode & FALLOC_FL_KEEP_SIZE and off + length > size
        changes = grows or (mode & FALLOC_FL_PUNCH_HOLE and off < size)
        if changes:
            await self._first_write(h)
        b = self._objects.get(h.ino)
        try:
            await trio.to_thread.run_sync(fallocate, b.fd, mode, off, length)
        except OSError as e:
            if grows:
                # ext4 grows the file chunk by chunk and keeps what it got at ENOSPC:
                # the object must not end up longer than the file.
                with contextlib.suppress(OSError):
                    os.ftruncate(b.fd, size)
            where = f"staging copy for tier {b.tier.name}" if b.staged else f"tier {b.tier.name}"
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise errors.NoSpace(f"{where} is full (fallocate of {length} bytes, inode {h.ino})") from e
            raise errors.TierfsError(f"fallocate on {where}: {e.strerror}", err=e.errno or errno.EIO) from e
        if changes:
            self._wrote(h, 0 if mode & FALLOC_FL_KEEP_SIZE else off + length)
        self._objects.backing_settled(h.ino)

    def _small_checksum(self, h: Handle, inode: Inode) -> str | None:
        """The sha256 of a small local file its only writer is closing (read
        back from the page cache: ~0.1 ms for 256 KiB), so size, version and
        checksum go to the catalog in one transaction instead of a later
        checksum task's two; None when another path must compute it."""
        b = self._objects.get(h.ino)
        if (b.fd is None or b.staged or not self.files.sole_writer(h.ino) or inode.state != State.ONLINE
                or inode.size > INLINE_CHECKSUM_MAX):
            return None
        try:
            data = os.pread(b.fd, inode.size + 1, 0)
        except OSError:
            return None  # the background checksum reports it
        return hashlib.sha256(data).hexdigest() if len(data) == inode.size else None

    async def _persist_with_checksum(self, h: Handle) -> bool:
        """Size/mtime, a pending version bump and the checksum of a small file
        in one compare-and-swap update; False (nothing written) when the
        content version moved or the file is not eligible. Under the inode's
        lock with h.dirty cleared first, so a concurrent write waits, then
        bumps the version again (clearing this checksum) as a first write."""
        async with self.lock(h.ino):
            inode = self._cache.peek(h.ino)
            sha = self._small_checksum(h, inode)
            if sha is None:
                return False
            values = dict(checksum=sha)   # size and times: _store adds the cached ones
            if h.bump_pending:
                values["data_version"] = inode.data_version + 1
            h.dirty = False
            try:
                await self._store(h.ino, self.catalog.update, values, expect_version=inode.data_version)
            except errors.VersionConflict:
                h.dirty = True
                return False
            except BaseException:
                h.dirty = True
                raise
            h.bump_pending = False
            return True

    async def _persist_attrs(self, ino: int, h: Handle | None = None, checksum: bool = False) -> None:
        """Write cached size/mtime to the catalog; for a handle whose version
        bump is pending, bump the version in the same transaction; with
        `checksum` (a close), a small file's checksum rides along too."""
        bump = h is not None and h.bump_pending
        if (not self._cache.is_dirty(ino) and not bump) or self.staging.unuploaded(ino):
            return
        try:
            if checksum and h is not None and await self._persist_with_checksum(h):
                return
            if bump:
                await self._store(ino, self.catalog.bump_version, {})
                h.bump_pending = False
            else:
                await self._store(ino, self.catalog.update, {})
        except errors.NotFound:
            pass   # purged meanwhile (unlinked on another mount)

    async def flush(self, fh: int) -> None:
        h = self.handle(fh)
        if h.writable:
            await self._kernel_writes(h.ino, h)
        if h.writable and self._objects.get(h.ino).staged:  # a reader's close must not fail for a writer's upload
            await self.staging.upload(h.ino)
        if h.dirty:
            await self._persist_attrs(h.ino, h, checksum=True)

    async def fsync(self, fh: int, datasync: bool) -> None:
        """The bytes and the catalog's size and times on disk when it returns:
        the catalog commits, then one worker thread syncs the object and the
        catalog's log (catalog.sync: an SQLite commit is on disk only at its
        next checkpoint otherwise). Two threads syncing at once were slower
        here (1-byte pwrite + fsync 966-1,051 µs against 703)."""
        h = self.handle(fh)
        if h.stub is not None:
            return   # a reader of an offline file's stub: nothing of it to make durable
        b = self._objects.get(h.ino)
        await self._kernel_writes(h.ino, h)
        if b.staged:
            await self.staging.upload(h.ino)
        await self._persist_attrs(h.ino, h)
        fd = b.fd if not b.staged and b.fd is not None and h.writable else None

        def sync() -> None:
            if fd is not None:
                try:
                    (os.fdatasync if datasync else os.fsync)(fd)
                except OSError as e:
                    raise errors.TierfsError(f"fsync: {e.strerror}", err=e.errno or errno.EIO) from e
            self.catalog.sync()
        await trio.to_thread.run_sync(sync)

    async def sync_catalog(self) -> None:
        """What the catalog committed, on disk (fsyncdir: names live in the catalog only)."""
        await trio.to_thread.run_sync(self.catalog.sync)

    async def release(self, fh: int) -> None:
        h = self.files.pop_handle(fh)
        if h is None:
            return
        try:
            if self.offline.track_reads and self._objects.in_passthrough(h.ino) and \
                    h.flags & os.O_ACCMODE != os.O_WRONLY:
                # track = "read": the kernel read it without telling us; its close is the last read we can know
                self.offline.accessed(self._cache.peek(h.ino), os.O_RDONLY)
            if h.writable:
                await self._kernel_writes(h.ino, h)
                self._tell_if_full(h.ino)
            if h.writable and self._objects.get(h.ino).staged:
                await self.staging.upload(h.ino)
            if h.dirty:
                await self._persist_attrs(h.ino, h)
                self.checksums.want(h.ino)
        finally:
            if h.stub is None:   # a stub handle has no binding
                self._objects.release(h.ino)
            await self._drop_open(h.ino, h.writable)
            await self._maybe_purge(h.ino, refresh=True)
            self._evict(h.ino)

    async def persist_attrs(self, ino: int) -> None:
        """Write what the cache holds ahead of the catalog for `ino` (after a
        background upload of its staged copy)."""
        await self._persist_attrs(ino)

    async def flush_all(self) -> None:
        """Write every cached size/mtime to the catalog (unmount, and every
        atime_flush: a file held open for writing gets its mtime there)."""
        for ino in self._objects.passthrough_writers(self.files.writing):
            try:
                await self._note_kernel_writes(ino)
            except Exception as e:  # noqa: BLE001 - best effort, logged
                log.error("taking the kernel's writes to inode %d: %s", ino, e)
        for ino in self._cache.dirty_inos():
            try:
                await self._persist_attrs(ino)
            except Exception as e:  # noqa: BLE001 - best effort at shutdown, logged
                log.error("flushing attributes of inode %d: %s", ino, e)

    # ---- counters ----------------------------------------------------------
    def count_request(self, op: str) -> None:
        """One FUSE request of kind `op` (fuse_ops.py; user.tierfs.stats shows them)."""
        self._op_counts[op] += 1

    def stats(self) -> dict:
        """Counters of this daemon (user.tierfs.stats: tests, benchmarks and `tierfs status`)."""
        return {
            "session": self.session_id,
            "tiers": {n: {"kind": t.kind, "reads": t.reads, "archives_in_place": archives_in_place(t.settings)}
                      for n, t in self.tiers.items()},
            "catalog": {"atime_writes": self.catalog.atime_writes, "rows_read": self.catalog.rows_read},
            "open_files": self.files.handle_count(),
            "passthrough": self.passthrough.describe(),
            **self.offline.stats(),
            **self.staging.stats(),
            **self.checksums.stats(),
            "requests": dict(self._op_counts),
        }

    # ---- checksums -------------------------------------------------------
    async def compute_checksum(self, ino: int) -> None:
        """Record the sha256 of a file's content after it was written, with a
        compare-and-swap on the content version (a later write wins)."""
        if self.files.writing(ino):
            return  # still being written; the last release queues it again
        try:
            # The cache is authoritative for an unshared catalog: no catalog read.
            inode = await (self.get(ino) if not self.catalog.shared else self.cat(self.catalog.get, ino))
        except errors.NotFound:
            return
        if inode.checksum or not inode.location or inode.state not in READABLE_STATES:
            return
        tier = self.tier(inode.tier)
        from .tiers.base import sha256_stream

        def digest():
            with tier.open_reader(inode.location) as r:
                return sha256_stream(r)
        try:
            sha, n = await trio.to_thread.run_sync(digest)
        except errors.TierfsError as e:
            log.warning("checksum of inode %d: %s", ino, e)
            return
        if n != inode.size:
            return  # a sparse tail or a concurrent change; the mover computes it later
        try:
            async with self.lock(ino):
                await self.fetch(self.catalog.update, ino, {"checksum": sha}, expect_version=inode.data_version)
        except (errors.VersionConflict, errors.NotFound):
            pass
