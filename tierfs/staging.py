"""Local staged copies for writing files whose tier has no in-place access
(S3, GridFS): open-for-write fetches the object into a local file under
state_dir/staging, writes go there, and flush/fsync upload it as a NEW
object, then one catalog compare-and-swap points the file at it and sends
the old object to garbage (never an in-place overwrite of the only copy).

One staged copy per inode, shared by every handle open on it meanwhile, so
readers in this mount see their own writes. Data written but not yet
flushed is lost if the daemon dies, as with any write-back cache; fsync and
close (flush) make it durable on the tier.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import trio

from . import errors, private
from .catalog.base import READABLE_STATES, Inode
from .tiers.base import CHUNK, Tier, new_key

log = logging.getLogger(__name__)


@dataclass
class StagedCopy:
    ino: int
    tier: Tier                 # tier the uploads go to
    path: str                  # local staging file
    fd: int                    # read/write fd on it
    users: int = 0             # handles using it
    dirty: bool = False        # changed since the last upload


class Staging:
    def __init__(self, fs, directory: str):
        self.fs = fs
        self.dir = directory
        self.copies: dict[int, StagedCopy] = {}
        private.makedirs(directory)  # 0700 (with state_dir/staging if missing): staged copies are file bytes
        for f in os.listdir(directory):  # leftovers of a crash: never uploaded, never referenced
            try:
                os.unlink(os.path.join(directory, f))
            except OSError:
                pass

    def get(self, ino: int) -> StagedCopy | None:
        return self.copies.get(ino)

    async def acquire(self, inode: Inode, fetch: bool = True) -> StagedCopy:
        """The staged copy of `inode`, made (and filled from its object) if needed.
        The caller holds the inode lock."""
        c = self.copies.get(inode.ino)
        if c is None:
            tier = self.fs.tier(inode.tier)
            path = os.path.join(self.dir, f"{inode.ino}-{new_key()[:8]}")
            fd = private.create(path, os.O_RDWR)
            c = StagedCopy(inode.ino, tier, path, fd)
            try:
                if fetch and inode.location and inode.size:
                    await trio.to_thread.run_sync(self._download, tier, inode.location, fd)
                os.ftruncate(fd, inode.size if fetch else 0)
            except BaseException:
                os.close(fd)
                os.unlink(path)
                raise
            self.copies[inode.ino] = c
        c.users += 1
        return c

    @staticmethod
    def _download(tier: Tier, key: str, fd: int) -> None:
        with tier.open_reader(key) as r:
            off = 0
            while True:
                b = r.read(CHUNK * 4)
                if not b:
                    return
                os.pwrite(fd, b, off)
                off += len(b)

    async def upload(self, ino: int, locked: bool = False) -> None:
        """Store the staged copy as a new object and switch the file to it."""
        if locked:
            await self._upload(ino)
        else:
            async with self.fs.lock(ino):
                await self._upload(ino)

    async def _upload(self, ino: int) -> None:
        fs = self.fs
        c = self.copies.get(ino)
        if c is None or not c.dirty:
            return
        c.dirty = False
        key = new_key()
        try:
            def put():
                with os.fdopen(os.dup(c.fd), "rb") as f:
                    f.seek(0)
                    return c.tier.put(key, f)
            n = await trio.to_thread.run_sync(put)
            inode = await fs.get(ino)
            garbage = [(inode.tier, inode.location)] if inode.location else []
            new = await fs.cat(fs.catalog.switch, ino, inode.data_version, list(READABLE_STATES),
                               dict(tier=c.tier.name, location=key, size=max(inode.size, 0)), garbage,
                               ("write", f"uploaded {n} bytes to {c.tier.name}"))
            fs.remember(new)
        except BaseException:
            c.dirty = True
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(c.tier.delete, key)
                except errors.TierfsError:
                    pass
            raise
        if fs.on_change:
            fs.on_change()

    def release(self, ino: int) -> bool:
        """Drop one user; returns True when the copy is gone (caller uploaded it)."""
        c = self.copies.get(ino)
        if c is None:
            return True
        c.users -= 1
        if c.users > 0:
            return False
        if c.dirty:
            log.error("inode %d: discarding a staged copy that was never uploaded", ino)
        del self.copies[ino]
        os.close(c.fd)
        try:
            os.unlink(c.path)
        except OSError:
            pass
        return True

    async def truncate(self, inode: Inode, size: int) -> None:
        """Truncate a file on a non-local tier (caller holds the inode lock)."""
        fs = self.fs
        c = self.copies.get(inode.ino)
        if c is not None:
            os.ftruncate(c.fd, size)
            c.dirty = True
            return
        if size == 0:
            garbage = [(inode.tier, inode.location)] if inode.location else []
            new = await fs.cat(fs.catalog.switch, inode.ino, inode.data_version, list(READABLE_STATES),
                               dict(location=None, size=0), garbage, ("truncate", "to 0"))
            fs.remember(new)
            return
        c = await self.acquire(inode)
        try:
            os.ftruncate(c.fd, size)
            c.dirty = True
            fs.remember(inode.copy(size=size))
            await self.upload(inode.ino, locked=True)
        finally:
            self.release(inode.ino)
