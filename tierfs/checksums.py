"""The backlog of files whose content is final but whose sha256 is not recorded yet.

A file gets its checksum when its last writer closes it: small local files in
the close transaction itself (fs.py), the others here, in the background. The
backlog is a set, not a bounded queue: adding to it never fails or blocks a
FUSE request (a full 10,000-entry queue made release() answer EIO under load,
and those files never got a checksum). It is also rebuilt from the catalog
when the daemon starts (`FileQuery(checksum_missing=True)`, an indexed query),
so a file closed just before a crash or an unmount gets its checksum too.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from . import errors, faults
from .catalog.base import Catalog, FileQuery, State

log = logging.getLogger(__name__)

PAGE = 1000


class Checksums:
    def __init__(self, catalog: Catalog, call: Callable[..., Awaitable], compute: Callable[[int], Awaitable]):
        self.catalog = catalog
        self.call = call            # runs a blocking catalog call (FileSystem.cat)
        self.compute = compute      # FileSystem.compute_checksum: records it (compare-and-swap on the version)
        self.backlog: set[int] = set()
        self._wake = trio.Event()
        self.done = 0

    def want(self, ino: int) -> None:
        """`ino` was closed after a write: compute its checksum soon. Never blocks or fails."""
        self.backlog.add(ino)
        self._wake.set()

    async def run(self) -> None:
        await self._from_catalog()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self.backlog:
                ino = self.backlog.pop()
                faults.point("checksum.before_compute")
                try:
                    await self.compute(ino)
                    self.done += 1
                except Exception as e:  # noqa: BLE001 - one file's failure must not stop the others
                    log.warning("checksum of inode %d: %s", ino, e)

    async def _from_catalog(self) -> None:
        """Files left without a checksum by an earlier run of the daemon."""
        after = 0
        found = 0
        while True:
            try:
                page = await self.call(lambda a=after: list(self.catalog.query(FileQuery(
                    states=(State.ONLINE, State.DUAL), checksum_missing=True, limit=PAGE, after_ino=a))))
            except errors.TierfsError as e:
                log.warning("listing files without a checksum: %s", e)
                return
            if not page:
                break
            for inode in page:
                if inode.location:
                    self.backlog.add(inode.ino)
                    found += 1
            after = page[-1].ino
        if found:
            log.info("%d file(s) closed before the last stop have no checksum yet: computing them", found)
            self._wake.set()

    def stats(self) -> dict:
        return {"checksum_backlog": len(self.backlog), "checksums_computed": self.done}
