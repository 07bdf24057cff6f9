"""The session heartbeat: a background service that renews this mount's
session in the catalog and reaps the sessions of mounts that died."""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

import trio

from . import errors
from .catalog.base import Catalog, now_ns
from .openfiles import OpenFiles
from .services import Events

log = logging.getLogger("tierfs")


class Heartbeat:
    def __init__(self, catalog: Catalog, call: Callable[..., Awaitable], session_id: str, cfg, files: OpenFiles,
                 events: Events):
        self.catalog = catalog
        self.call = call             # runs a blocking catalog call (FileSystem.cat)
        self.session_id = session_id
        self.cfg = cfg               # the daemon's live Config
        self.files = files           # unlinked files still in use here are not purged
        self.events = events         # a reaped session's jobs return to the queue

    def wake(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def run(self) -> None:
        """Renew our session; reap sessions silent for session_timeout. We
        reap only after reaching the catalog for a whole timeout ourselves:
        after a catalog outage every heartbeat is stale, and live mounts need
        that long to renew theirs."""
        # Never shorter than two heartbeats, so a live mount is not reaped.
        dead_s = max(self.cfg.session_timeout, 2 * self.cfg.heartbeat_interval)
        reachable_since: float | None = time.monotonic()  # open() just used the catalog
        while True:
            await trio.sleep(self.cfg.heartbeat_interval)
            try:
                await self.call(self.catalog.heartbeat, self.session_id)
                reachable_since = reachable_since or time.monotonic()
                if time.monotonic() - reachable_since < dead_s:
                    continue
                reaped = await self.call(self.catalog.reap_sessions, now_ns() - int(dead_s * 1e9))
                for sid in reaped:
                    log.warning("reaped dead session %s: its jobs return to the queue", sid)
                    self.events.changed()
                if reaped:
                    await self.purge_unlinked()
            except errors.TierfsError as e:
                reachable_since = None
                log.warning("heartbeat: %s", e)

    async def purge_unlinked(self) -> None:
        """Unlinked files nobody has open any more (a dead mount held them) go."""
        for inode in await self.call(self.catalog.unlinked):
            if not self.files.in_use(inode.ino):
                if await self.call(self.catalog.purge, inode.ino) is not None:
                    self.events.changed()
