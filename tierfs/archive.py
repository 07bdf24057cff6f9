"""The offline-file contract: what happens when someone touches a file whose
bytes are (also) on an archive tier.

- Opening an archived file restores it: `restore_mode = "block"` waits (all
  openers of one file share one restore; bounded by `block_timeout`, then
  EAGAIN while the restore goes on); `"error"`, or O_NONBLOCK in either
  mode, fails at once with EAGAIN after queueing the restore (DMAPI style).
- Partial-state files: an archived file with a stub (its first stub_size
  bytes kept online, Catalog.stub) opened for reading is not restored at
  the open: reads within the stub are served from it, and the first read
  beyond it restores as above (fs.py, `serves_stub`).
- O_TRUNC / truncate to 0 of an archived file needs no restore: the file
  gets a new empty online object and the archive copy is dropped.
- The first write to a `dual` file makes it `online` (the archive copy is
  no longer current and goes to garbage).
- Access tracking: opens (or reads, with track = "read") set the cached
  atime at once; the catalog gets them in batches (`flush_atimes`, run by
  the `AtimeFlusher` service).

The requests users make (user.tierfs.request, .info) are requests.py.
A FileSystem without archive machinery gets `NoArchive`.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import TYPE_CHECKING

import trio

from . import errors
from .catalog.base import (ACTIVE_JOB_STATES, JobKind, JobState, READABLE_STATES, Changes, Inode, State, Transition,
                           copies_changes, copies_of, now_ns)
from .attrcache import AttrCache
from .tiers.base import new_key

if TYPE_CHECKING:
    from .fs import FileSystem
    from .requests import Requests

log = logging.getLogger(__name__)

POLL_S = 1.0


def serves_stub(inode: Inode) -> bool:
    """Reads of this offline file within its first stub_size bytes need no
    restore (archived or restoring with a stub; a lost file reads EIO)."""
    return inode.stub_size > 0 and inode.state in (State.ARCHIVED, State.RESTORING)


class Offline:
    """Restore-on-open, content changes of archived files, and access tracking for one FileSystem."""

    def __init__(self, fs: FileSystem, cache: AttrCache, requests: Requests):
        self.fs = fs
        self.cache = cache              # the FileSystem's attribute cache (accesses set atime there first)
        self.requests = requests        # an open of an archived file queues its restore there
        self.cfg = fs.cfg               # the daemon's live Config (a SIGHUP reload changes it in place)
        self.restore_events: dict[int, trio.Event] = {}
        self.restore_full: dict[int, errors.NoSpace] = {}  # restores waiting for space on their online tier
        self.waiters = 0
        self.max_waiters = 512          # blocked opens beyond this get EAGAIN at once
        self.atimes: dict[int, int] = {}  # ino -> latest access not yet in the catalog
        self.atime_flushed: dict[int, float] = {}  # ino -> monotonic time of its last catalog write

    @property
    def track_reads(self) -> bool:
        return self.cfg.track == "read"

    # ---- access tracking -------------------------------------------------
    def accessed(self, inode: Inode, flags: int) -> None:
        if flags & os.O_ACCMODE == os.O_WRONLY:
            return  # only reading counts as an access (a write updates mtime instead)
        t = now_ns()
        cached = self.cache.peek(inode.ino)
        if cached is not None and t - cached.atime_ns > 1_000_000:
            self.cache.set(inode.ino, atime_ns=t)
        self.atimes[inode.ino] = t

    def forget_access(self, ino: int) -> None:
        """An explicit atime (touch -a) was stored: the pending access must not overwrite it."""
        self.atimes.pop(ino, None)

    def stats(self) -> dict:
        return {"restore_waiters": self.waiters, "pending_atimes": len(self.atimes)}

    async def flush_atimes(self, force: bool = False) -> int:
        """Write pending access times: at most one catalog write per file per
        `atime_flush` interval (all of them when force, e.g. at unmount)."""
        if not self.atimes:
            return 0
        now = time.monotonic()
        due = {ino: t for ino, t in self.atimes.items()
               if force or now - self.atime_flushed.get(ino, 0.0) >= self.cfg.atime_flush}
        if not due:
            return 0
        for ino in due:
            del self.atimes[ino]
            self.atime_flushed[ino] = now
        try:
            await self.fs.cat(self.fs.catalog.set_atimes, due)
        except errors.TierfsError:
            for ino, t in due.items():
                self.atimes.setdefault(ino, t)
            raise
        if len(self.atime_flushed) > 100000:
            self.atime_flushed = {k: v for k, v in self.atime_flushed.items() if now - v < self.cfg.atime_flush}
        return len(due)

    # ---- restore on open -------------------------------------------------
    async def ensure_online(self, inode: Inode, flags: int, caller) -> Inode:
        if inode.state == State.LOST:
            log.error("open inode %d: its archive copy is lost (missing or failed its checksum)", inode.ino)
            raise errors.TierfsError(f"inode {inode.ino} is lost", err=errno.EIO)
        await self.requests.queue(inode, "restore", {}, caller, cause=f"open by uid {caller.uid} (pid {caller.pid})",
                         check_perm=False)
        self._raise_if_full(inode.ino)
        if self.cfg.restore_mode == "error" or flags & os.O_NONBLOCK:
            raise errors.TryAgain(f"inode {inode.ino} is archived; restore queued")
        if self.waiters >= self.max_waiters:
            raise errors.TryAgain("too many opens waiting for restores")
        self.waiters += 1
        t0 = time.monotonic()
        outcome = "error"
        try:
            with trio.move_on_after(self.cfg.block_timeout):
                while True:
                    ev = self.restore_events.setdefault(inode.ino, trio.Event())
                    with trio.move_on_after(POLL_S):
                        await ev.wait()
                    self._raise_if_full(inode.ino)
                    fresh = await self.fs.fetch(self.fs.catalog.get, inode.ino)
                    if fresh.state in READABLE_STATES:
                        outcome = "restored"
                        return fresh
                    if fresh.state == State.LOST:
                        raise errors.TierfsError(f"inode {inode.ino} is lost", err=errno.EIO)
                    jobs = await self.fs.cat(self.fs.catalog.jobs, ACTIVE_JOB_STATES, inode.ino)
                    if not any(j.kind == JobKind.RESTORE for j in jobs):
                        failed = [j for j in await self.fs.cat(self.fs.catalog.jobs, (JobState.FAILED,), inode.ino)
                                  if j.kind == JobKind.RESTORE]
                        if failed:
                            raise errors.TierfsError(f"restore of inode {inode.ino} failed: {failed[-1].last_error}",
                                                     err=errno.EIO)
                        await self.requests.queue(fresh, "restore", {}, caller, cause="open (requeue)", check_perm=False)
            outcome = "timeout"
            raise errors.TryAgain(f"restore of inode {inode.ino} did not finish within block_timeout")
        finally:
            self.waiters -= 1
            self.fs.events.restore_waited(time.monotonic() - t0, outcome)

    def _raise_if_full(self, ino: int) -> None:
        """A restore that waits for space on its online tier fails its openers
        at once with ENOSPC (waiting would block them until block_timeout for
        nothing); the job retries when space appears."""
        full = self.restore_full.get(ino)
        if full is not None:
            raise errors.NoSpace(f"restore of inode {ino}: {full}")

    def restore_finished(self, ino: int, full: errors.NoSpace | None = None) -> None:
        """A restore run ended: waiting openers look again (`full`: it waits
        for space on its tier)."""
        if full is None:
            self.restore_full.pop(ino, None)
        else:
            self.restore_full[ino] = full
        ev = self.restore_events.pop(ino, None)
        if ev is not None:
            ev.set()

    # ---- content changes of offline / dual files ---------------------------
    async def drop_archived(self, inode: Inode, caller, why: str) -> Inode:
        """Give an archived file a new empty online object (O_TRUNC, truncate 0)."""
        tier = await self.fs.placement_of(inode.ino, caller)
        key = new_key()
        await trio.to_thread.run_sync(tier.create_empty, key)
        t = now_ns()
        changes = Changes(state=State.ONLINE, tier=tier.name, location=key, **copies_changes(()),
                          size=0, mtime_ns=t, ctime_ns=t, checksum=None, data_version=inode.data_version + 1)
        try:
            new = await self.fs.fetch(self.fs.catalog.switch, Transition(
                inode.ino, inode.data_version, (inode.state,), changes, f"{why} by uid {caller.uid}",
                "archive copy dropped", garbage=tuple(copies_of(inode))))
        except BaseException:
            await trio.to_thread.run_sync(tier.delete, key)
            raise
        await self.fs.cat(self.fs.catalog.cancel_jobs, [j.id for j in await self.fs.cat(
            self.fs.catalog.jobs, (JobState.PENDING,), inode.ino)])
        log.info("inode %d: %s of an archived file: now online on %s, archive copy dropped", inode.ino, why, tier.name)
        self.restore_finished(inode.ino)
        return new

    async def dirty_dual(self, inode: Inode) -> Inode:
        """First write to a dual file: the archive copy is stale. Caller holds the inode lock."""
        state = State.ONLINE if inode.state == State.DUAL else inode.state
        new = await self.fs.fetch(self.fs.catalog.switch, Transition(
            inode.ino, inode.data_version, (inode.state,), Changes(state=state, **copies_changes(())),
            "write", f"archive copy on {inode.archive_tier} superseded", garbage=tuple(copies_of(inode))))
        log.info("inode %d: written while dual: now online, archive copy on %s dropped", inode.ino, inode.archive_tier)
        return new


class NoArchive:
    """The offline contract of a FileSystem without archive machinery: no
    file can be archived there, so nothing is restored or tracked."""

    track_reads = False

    def __init__(self, fs: FileSystem, cache: AttrCache, requests):
        pass

    def accessed(self, inode: Inode, flags: int) -> None:
        pass

    def forget_access(self, ino: int) -> None:
        pass

    async def flush_atimes(self, force: bool = False) -> int:
        return 0

    def stats(self) -> dict:
        return {"restore_waiters": 0, "pending_atimes": 0}

    async def ensure_online(self, inode: Inode, flags: int, caller) -> Inode:
        raise errors.TierfsError(f"inode {inode.ino} is {inode.state}", err=errno.EIO)

    async def drop_archived(self, inode: Inode, caller, why: str) -> Inode:
        raise errors.TierfsError(f"inode {inode.ino} is {inode.state}", err=errno.EIO)

    async def dirty_dual(self, inode: Inode) -> Inode:
        return inode

    def restore_finished(self, ino: int, full: errors.NoSpace | None = None) -> None:
        pass


class AtimeFlusher:
    """The service that writes batched access times (a background service).

    Pending atimes reach the catalog here, and the size and mtime of files
    open for writing, at most once per file per atime_flush: a log a daemon
    keeps open and appends to for months is in use, and policies must see
    its mtime move (it reached the catalog only at close, so the catalog
    showed it idle since it was opened). `stop` writes every pending access."""

    def __init__(self, offline: Offline | NoArchive, flush_all, cfg):
        self.offline = offline
        self.flush_all = flush_all      # FileSystem.flush_all: cached sizes/mtimes to the catalog
        self.cfg = cfg

    async def run(self) -> None:
        written = time.monotonic()
        while True:
            await trio.sleep(min(self.cfg.atime_flush, 5.0))
            try:
                await self.offline.flush_atimes()
                if time.monotonic() - written >= self.cfg.atime_flush:
                    written = time.monotonic()
                    await self.flush_all()
            except errors.TierfsError as e:
                log.warning("writing access times: %s", e)

    def wake(self) -> None:
        pass

    async def stop(self) -> None:
        try:
            await self.offline.flush_atimes(force=True)
        except errors.TierfsError as e:
            log.error("writing access times at unmount: %s", e)
