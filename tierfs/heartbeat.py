"""The session heartbeat: a background service that renews this mount's
session in the catalog and reaps the sessions of mounts that died.

A mount that could not reach the catalog for longer than session_timeout
(a network partition) may have been reaped meanwhile: its running jobs went
back to the queue, maybe on to another mount, and its open-file records
were dropped. Its next heartbeat finds the session ended; it then registers
a new session (a new id: the next generation) instead of bringing the old
one back. Its jobs still in flight carry the old id (Job.session), so
every commit and every record of them is refused (fencing, errors.Fenced)
and the runner abandons them; the files it has open are recorded again
under the new session."""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import TYPE_CHECKING

import trio

from . import errors
from .catalog.base import Session, now_ns
from .services import Events

if TYPE_CHECKING:
    from .fs import FileSystem

log = logging.getLogger("tierfs")


class Heartbeat:
    def __init__(self, fs: "FileSystem", cfg, events: Events):
        self.fs = fs                 # its session_id is the mount's (renewed here after a reap)
        self.catalog = fs.catalog
        self.call = fs.cat           # runs a blocking catalog call
        self.cfg = cfg               # the daemon's live Config
        self.files = fs.files        # unlinked files still in use here are not purged
        self.events = events         # a reaped session's jobs return to the queue

    @property
    def session_id(self) -> str:
        return self.fs.session_id

    def wake(self) -> None:
        pass

    async def renew(self) -> None:
        """Our session was reaped: register a new one (same host, pid and
        mountpoint, a new id) and record our open files under it."""
        old = self.session_id
        mine = [s for s in await self.call(self.catalog.sessions) if s.id == old]
        new = uuid.uuid4().hex[:16]
        t = now_ns()
        base = mine[0] if mine else Session(id=old, host=os.uname().nodename, pid=os.getpid(), mountpoint="",
                                            started_ns=t, heartbeat_ns=t)
        await self.call(self.catalog.register_session, Session(
            id=new, host=base.host, pid=base.pid, mountpoint=base.mountpoint, started_ns=t, heartbeat_ns=t))
        self.fs.renew_session(new)
        log.warning("session %s was reaped by another mount (this one could not reach the catalog for "
                    "session_timeout); its jobs in flight here are abandoned; new session %s", old, new)
        if self.catalog.shared:
            for ino in self.files.open_inodes():
                try:
                    await self.call(self.catalog.set_open, ino, new, True, self.files.writing(ino))
                except errors.NotFound:
                    pass
        self.events.changed()

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
                if not await self.call(self.catalog.heartbeat, self.session_id):
                    await self.renew()
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
