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
#: A file's checksum is computed once it has been closed this long: one deleted or written again
#: meanwhile (temporary files, a build's outputs, dbench's files, appends in a loop) is not read
#: back for nothing, or is read once instead of once per close.
SETTLE_S = 1.0


class Checksums:
    def __init__(self, catalog: Catalog, call: Callable[..., Awaitable], compute: Callable[[int], Awaitable]):
        self.catalog = catalog
        self.call = call            # runs a blocking catalog call (FileSystem.cat)
        self.compute = compute      # FileSystem.compute_checksum: records it (compare-and-swap on the version)
        self.backlog: dict[int, float] = {}   # inode -> when it is due (insertion order = due order)
        self._wake = trio.Event()
        self.done = 0

    def want(self, ino: int) -> None:
        """`ino` was closed after a write: compute its checksum SETTLE_S from
        now (a later close postpones it). Never blocks or fails."""
        self.backlog.pop(ino, None)
        self.backlog[ino] = trio.current_time() + SETTLE_S
        self._wake.set()

    async def run(self) -> None:
        await self._from_catalog()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self.backlog:
                ino, due = next(iter(self.backlog.items()))
                if due > trio.current_time():
                    with trio.move_on_at(due):
                        await self._wake.wait()   # a new close does not hurry the oldest
                    if self._wake.is_set():
                        self._wake = trio.Event()
                    continue
                del self.backlog[ino]
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
                    self.backlog.setdefault(inode.ino, 0.0)   # due now: closed before this run
                    found += 1
            after = page[-1].ino
        if found:
            log.info("%d file(s) closed before the last stop have no checksum yet: computing them", found)
            self._wake.set()

    def stats(self) -> dict:
        return {"checksum_backlog": len(self.backlog), "checksums_computed": self.done}
