"""The garbage collector: deletes tier objects nothing references any more
(after an unlink, or the superseded copy of a move); a background service."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from . import errors, faults
from .catalog.base import Catalog, Garbage
from .openfiles import OpenFiles
from .tiers.base import Tier
from .tiers.disk import RELEASED_ORIGINAL, DiskTier, in_place_key

log = logging.getLogger("tierfs")

#: the collector waits this long after a deletion wakes it, to batch the next ones
GC_BATCH_S = 0.2
#: ... and looks at the catalog's garbage at least this often
GC_POLL_S = 2.0


class GarbageCollector:
    def __init__(self, catalog: Catalog, call: Callable[..., Awaitable], tiers: dict[str, Tier], files: OpenFiles):
        self.catalog = catalog
        self.call = call             # runs a blocking catalog call (FileSystem.cat)
        self.tiers = tiers
        self.files = files           # objects a handle uses are pinned: left alone
        self._event = trio.Event()
        self._urgent = False         # a move (not a deletion) woke the collector: no batching delay

    def wake(self) -> None:
        """A move finished: collect its garbage now (its space may be awaited)."""
        self._urgent = True
        self._event.set()

    def deleted(self) -> None:
        """Objects became garbage (a file was deleted): collect them in a batch."""
        self._event.set()

    async def stop(self) -> None:
        pass

    async def run(self) -> None:
        while True:
            self._event = trio.Event()
            try:
                await self.collect()
            except errors.TierfsError as e:
                log.warning("garbage collection: %s", e)
            except Exception:  # noqa: BLE001 - keep the loop alive, log the bug
                log.exception("garbage collection failed")
            with trio.move_on_after(GC_POLL_S):
                await self._event.wait()
                if not self._urgent:
                    await trio.sleep(GC_BATCH_S)  # an rm -r deletes thousands: collect them in batches
            self._urgent = False

    async def collect(self) -> int:
        done = 0
        while True:
            items = await self.call(self.catalog.garbage, 200)
            items = [g for g in items if not self.files.is_pinned(g.tier, g.key)]
            if not items:
                return done
            removed = []
            doomed: list[tuple[int, Tier, str]] = []
            originals: list[tuple[Garbage, DiskTier]] = []
            for g in items:
                tier = self.tiers.get(g.tier)
                if tier is None:
                    continue  # a tier another mount has; it will collect it
                if in_place_key(g.key) and g.reason == RELEASED_ORIGINAL and isinstance(tier, DiskTier):
                    originals.append((g, tier))
                    continue
                if await self.call(self.catalog.references, g.tier, g.key, further=tier.archive):
                    log.warning("garbage entry %s/%s is still referenced; keeping the object", g.tier, g.key)
                elif in_place_key(g.key) and g.reason != "file deleted":
                    # The original of an imported file (tierfs import --in-place): moving the file's bytes
                    # elsewhere never deletes the user's own file; only deleting the file through tierfs does.
                    log.info("keeping %s/%s, the original of an imported file (%s)", g.tier, g.key, g.reason)
                else:
                    doomed.append((g.id, tier, g.key))
                    continue
                removed.append(g.id)
            deleted: list[int] = []
            try:
                # One worker thread for the batch: a hand-off costs ~115 µs here, a local delete ~15
                # (a thread per object made dbench's Unlink 2.6x the pyfuse3 floor's, issue 16).
                await trio.to_thread.run_sync(_delete_all, doomed, deleted)
                if originals:
                    await self._delete_originals(originals, deleted)
            finally:
                removed += deleted   # what was deleted before a failure leaves the catalog too
                if removed:
                    await self.call(self.catalog.remove_garbage, removed)
            if not removed:
                return done
            done += len(removed)

    async def _delete_originals(self, originals: list[tuple[Garbage, DiskTier]], done: list[int]) -> None:
        """Delete the in-place originals of released files (release_originals), appending each garbage
        id once it is settled. Under `originals` lock: a restore may be putting a file back at one of
        these paths (its link and its switch happen together under it), and the check that nothing
        references the path must still hold when the file goes."""
        async with self.files.originals:
            doomed = []
            for g, tier in originals:
                if await self.call(self.catalog.references, g.tier, g.key):
                    log.info("keeping %s/%s: a restore put its file back there", g.tier, g.key)
                    done.append(g.id)
                else:
                    doomed.append((g, tier))

            def delete() -> None:
                for g, tier in doomed:
                    faults.point("gc.before_delete")
                    if not tier.delete_original(g.key, g.created_ns):
                        log.warning("keeping %s/%s: the file at that path changed after its release (another "
                                    "file put there?); not the released original", g.tier, g.key)
                    done.append(g.id)
            await trio.to_thread.run_sync(delete)


def _delete_all(doomed: list[tuple[int, Tier, str]], deleted: list[int]) -> None:
    """Delete each (garbage id, tier, key), appending the id once its object is
    gone; the first failure stops the batch (the rest stay garbage)."""
    for gid, tier, key in doomed:
        faults.point("gc.before_delete")
        tier.delete(key)
        deleted.append(gid)
