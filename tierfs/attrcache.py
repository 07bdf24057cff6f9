"""The mount's cache of inode attributes, and which of them are ahead of the catalog.

Content changes (write, truncate, fallocate) change a file's size and times
here first (`change`); they reach the catalog on flush/fsync/release, or at
once for a truncate (`to_persist` / `persisted`). For a catalog only this
mount uses the cache is authoritative; for a shared one entries expire
after `ttl` (attr_timeout) unless they are dirty.

Two rules keep a newer cached size, mtime or ctime from ever being replaced
by an older one (a truncate's size was undone by the flush of the size an
earlier write had cached; a catalog read overlapping a flush put the old
size back for attr_timeout):

1. A local change marks the inode dirty with a fresh sequence number. A
   flush writes the cached values and clears the mark only if no newer
   change came meanwhile (the mark is still the one it wrote); the mark
   stays set while the flush is in flight, so reads serve the cache, not a
   catalog row the flush has not replaced yet.
2. A catalog copy fetched by a call that started before the newest local
   change of its inode, or before the newest flush of such a change
   completed (`since`: the sequence number when the call started; a
   completed flush takes a sequence number too), may predate it: it
   refreshes every field but size, mtime and ctime. An access time never
   moves backwards here. (A job's state switch that started while a close
   was flushing a larger size read the row before the flush committed and
   returned after it: with only the change numbered, that old size replaced
   the flushed one in the cache for good; fsx seed 103.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .catalog.base import Inode

#: what a write, truncate or fallocate changes (and a flush persists)
CONTENT_FIELDS = ("size", "mtime_ns", "ctime_ns")


@dataclass
class Cached:
    inode: Inode
    fetched: float      # time.monotonic() when last refreshed from the catalog
    changed: int = 0    # sequence number of its newest local content change (0: none)


class AttrCache:
    def __init__(self, ttl: float):
        self.ttl = ttl
        self.entries: dict[int, Cached] = {}
        self.dirty: dict[int, int] = {}   # ino -> sequence number of its newest unpersisted change
        self.seq = 0

    def __contains__(self, ino: int) -> bool:
        return ino in self.entries

    def fresh(self, ino: int) -> Inode | None:
        """The cached inode if it may be served without asking the catalog."""
        c = self.entries.get(ino)
        if c is not None and (ino in self.dirty or time.monotonic() - c.fetched < self.ttl):
            return c.inode
        return None

    @property
    def fresh_set(self) -> "FreshSet":
        """The inode numbers fresh() serves, as a container (`ino in cache.fresh_set`)."""
        return FreshSet(self)

    def peek(self, ino: int) -> Inode | None:
        """The cached inode however old (None if not cached)."""
        c = self.entries.get(ino)
        return None if c is None else c.inode

    def remember(self, inode: Inode, since: int | None = None) -> Inode:
        """Take a catalog copy of an inode (rule 2 above; `since` None: the
        copy is at least as new as every local change but unpersisted ones)."""
        c = self.entries.get(inode.ino)
        now = time.monotonic()
        if c is None:
            self.entries[inode.ino] = Cached(inode, now)
            return inode
        keep = {}
        if inode.ino in self.dirty or (since is not None and c.changed > since):
            keep = {f: getattr(c.inode, f) for f in CONTENT_FIELDS}
        if c.inode.atime_ns > inode.atime_ns:
            keep["atime_ns"] = c.inode.atime_ns
        c.inode = inode.copy(**keep) if keep else inode
        c.fetched = now
        return c.inode

    def set(self, ino: int, **fields) -> None:
        """Mirror in the cache a change the catalog already has (or that
        does not need persisting here, such as a batched access time)."""
        c = self.entries.get(ino)
        if c is not None:
            c.inode = c.inode.copy(**fields)

    def change(self, ino: int, **fields) -> Inode:
        """A local content change (CONTENT_FIELDS) the catalog does not have yet."""
        c = self.entries[ino]
        c.inode = c.inode.copy(**fields)
        self.seq += 1
        c.changed = self.dirty[ino] = self.seq
        return c.inode

    def is_dirty(self, ino: int) -> bool:
        return ino in self.dirty

    def dirty_inos(self) -> list[int]:
        return list(self.dirty)

    def to_persist(self, ino: int) -> tuple[dict, int] | None:
        """(values, token) a flush writes, or None when nothing is dirty."""
        token = self.dirty.get(ino)
        if token is None:
            return None
        inode = self.entries[ino].inode
        return {f: getattr(inode, f) for f in CONTENT_FIELDS}, token

    def persisted(self, ino: int, token: int) -> int:
        """The flush that wrote `token` succeeded: clean, unless a newer change
        came meanwhile. Returns the `since` to remember the flush's own result
        with: a call that started before this moment may return a row from
        before the flush (rule 2), the flush's result is not older than it."""
        if self.dirty.get(ino) != token:
            return token
        del self.dirty[ino]
        self.seq += 1
        c = self.entries.get(ino)
        if c is not None:
            c.changed = self.seq
        return self.seq

    def forget_dirty(self, ino: int) -> None:
        """The inode is gone (purged): nothing left to persist."""
        self.dirty.pop(ino, None)

    def evict(self, ino: int) -> None:
        if ino not in self.dirty:
            self.entries.pop(ino, None)

    def pop(self, ino: int) -> None:
        self.entries.pop(ino, None)
        self.dirty.pop(ino, None)


class FreshSet:
    """`ino in FreshSet(cache)`: cache.fresh(ino) would serve it."""

    __slots__ = ("cache",)

    def __init__(self, cache: AttrCache):
        self.cache = cache

    def __contains__(self, ino: int) -> bool:
        return self.cache.fresh(ino) is not None
