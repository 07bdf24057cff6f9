"""The crash-safe move protocol: archive, restore and migrate as one skeleton.

Every move (archive, restore, migrate) is:
  1. mark: compare-and-swap the file's state (online -> archiving,
     archived -> restoring) on its content version; migrate marks nothing;
  2. record the destination key in the job *before* writing it, so a crash
     can clean it up;
  3. copy the source object to a fresh key on the destination, hashing it;
  4. verify: read the destination back (or let the tier verify) and compare
     the sha256 with the source's and with the recorded checksum;
  5. switch: one Catalog.switch(Transition), a compare-and-swap on the
     content version, points the file at the new copy and puts the
     superseded object in `garbage`;
  6. the garbage collector deletes the superseded object later.
A crash at any step leaves the file readable from the old location or the
new one; re-running the job is safe (steps are idempotent). A write during
the copy bumps the content version, so the switch fails and the job retries.
Fault points (tierfs/faults.py) sit between the steps.

Step 1 and what comes before it differ per kind (Mover.archive / restore /
migrate); each returns a `Move`, which holds every difference of steps 2-5,
and Mover.move runs those steps once for all three. A release and the crash
recovery are single switches (release_now, Mover.recover).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import time
from dataclasses import dataclass, replace
from typing import Callable

import trio

from . import errors, faults, storage_class
from .catalog.base import (READABLE_STATES, Changes, FileQuery, Inode, Job, JobKind, JobState, State, Transition,
                           copies_changes, copies_of, missing_targets, now_ns, targets_of)
from .policy.rules import rule_of
from .tiers.base import HashingReader, Tier, new_key
from .tiers.disk import RELEASED_ORIGINAL, DiskTier, in_place_key, releases_originals
from .units import fmt_size

log = logging.getLogger(__name__)

BUSY_RETRY_S = 2.0       # file open for writing: try the move again soon


class BadCopy(Exception):
    """A restore's source, one archive copy, is missing or fails its checksum,
    or its tier went away during the copy: the restore goes on with the next
    copy (Mover.run); `cause` says which (Mover._readable_copy)."""

    def __init__(self, cause: errors.TierfsError):
        super().__init__(str(cause))
        self.cause = cause


class Retry(Exception):
    """Put the job back in the queue (not a failure of the job itself)."""

    def __init__(self, msg: str, delay: float, count: bool = True):
        super().__init__(msg)
        self.delay = delay
        self.count = count  # counts towards job_max_attempts


def busy(fs, ino: int) -> str | None:
    """Why this mount must not switch the file's bytes to another object now
    (None: it may). Open for writing: the writes would go to the old object.
    Open with FUSE passthrough: the kernel reads and writes the old object
    itself and cannot be pointed at another one until the handles close
    (openfiles.py)."""
    if fs.files.writing(ino):
        return "file is open for writing"
    if fs.files.in_passthrough(ino):
        return "file is open with FUSE passthrough (the kernel uses its current object until it is closed)"
    return None


def retry_if_busy(fs, ino: int) -> None:
    """A job's move of a busy file (busy()) goes back to the queue, uncounted."""
    why = busy(fs, ino)
    if why:
        raise Retry(why, BUSY_RETRY_S, count=False)


def settled(inode: Inode) -> State:
    """The stable state a file left in a move's in-between state returns to
    when the move stops: archiving -> online (dual when it kept an older
    archive copy), restoring -> archived."""
    if inode.state == State.RESTORING:
        return State.ARCHIVED
    return State.DUAL if inode.archive_tier else State.ONLINE


@dataclass(frozen=True)
class Move:
    """One copy of a file's bytes to another tier, and its commit: what
    archive, restore and migrate do differently in the steps they share."""
    inode: Inode                  # as of the mark (the commit expects its data_version)
    src: Tier
    src_key: str | None           # None: a file never written on a remote tier (its content is empty)
    dst: Tier
    changes: Callable[[str, int, str], Changes]   # (sha256, bytes, destination key) -> what the commit changes
    garbage: tuple[tuple[str, str], ...] = ()     # objects the commit leaves unreferenced (empty entries dropped)
    #: the in-between state the move set (archiving, restoring): the commit expects it and a stopped move
    #: settles the file back from it (settled()); None (migrate): the commit expects the state as read
    marked: State | None = None
    #: the commit needs the file closed for writing, on every mount; a restore does not: an opener waits for it
    exclusive: bool = True
    #: a content change during the copy makes the copy stale: copy again; a restore's copy is simply not
    #: needed then (the file was truncated or rewritten: its bytes no longer come from the archive)
    conflict_retries: bool = True
    #: the source is one archive copy (restore): found missing or corrupt, it is reported (BadCopy) and the
    #: restore tries the file's next copy; the file is lost only when no copy is left (Mover.restore)
    source_copy: bool = False
    #: further destinations (an archive to several tiers): the same bytes go to each under the same key,
    #: each verified, and the one commit points the file at all of them
    more: tuple[Tier, ...] = ()
    #: the commit leaves the file archived with its first `stub` bytes online (partial-state files)
    stub: int = 0
    #: restore of a released in-place original: the verified copy is also put back at this path of
    #: `dst` (DiskTier.put_back), and the file points there
    origin: str | None = None
    garbage_reason: str = ""      # the collector's reason for `garbage` (default: the cause)
    note: str = ""                # added to the history's detail

    @property
    def expect(self) -> State:
        return self.marked or self.inode.state

    @property
    def dsts(self) -> tuple[Tier, ...]:
        return (self.dst, *self.more)


def stub_bytes(cfg, archive_tier: str | None, cause: str) -> int:
    """How many first bytes of a file going archived on `archive_tier` stay
    online as its stub: the stub_bytes of the policy rule that queued the
    move (its cause), else the archive tier's."""
    rule = rule_of(cause, cfg)
    if rule is not None and rule.stub_bytes is not None:
        return rule.stub_bytes
    return getattr(cfg.tiers.get(archive_tier or ""), "stub_bytes", 0)


async def _head(fs, inode: Inode, cause: str) -> bytes | None:
    """The stub a release keeps: the online copy's first bytes (None: no stub).
    Read under the inode lock, before the switch that compares the same
    data_version: a write in between bumps it, and the switch fails."""
    n = min(stub_bytes(fs.cfg, inode.archive_tier, cause), inode.size)
    if not n:
        return None
    if inode.location is None:
        return b"\0" * n   # no object: the file reads as zeros
    return await trio.to_thread.run_sync(fs.tier(inode.tier).read, inode.location, 0, n)
def kept_original(fs, inode: Inode) -> str | None:
    """Why a release must keep this file's online copy (None: it may drop it): the copy is a file
    imported in place, the user's own, on a tier without release_originals."""
    if inode.location is None or not in_place_key(inode.location):
        return None
    tier = fs.tiers.get(inode.tier or "")
    if releases_originals(tier):
        return None
    where = f"tier {inode.tier}" + (" (not configured on this mount)" if tier is None else "")
    return (f"its online copy is the in-place original {inode.location} on {where}, which keeps originals: "
            f"set release_originals = true in [tiers.{inode.tier}] to let a release delete them")


def released_original(inode: Inode) -> Changes:
    """What the switch that drops an in-place original records: where a restore puts it back."""
    return Changes(origin_tier=inode.tier, origin_location=inode.location)


async def _verify_archive_copy(fs, inode: Inode) -> None:
    """Before an in-place original goes: the archive copy still matches the recorded checksum
    (tier.verify; an archive tier that cannot read back cheaply trusts its manifest)."""
    tier = fs.tier(inode.archive_tier)
    if not inode.checksum:
        raise errors.Invalid(f"inode {inode.ino} has no recorded checksum to verify its archive copy against")
    if not await trio.to_thread.run_sync(tier.verify, inode.archive_location, inode.checksum, inode.size):
        raise errors.ChecksumMismatch(f"inode {inode.ino}: archive copy {tier.name}/{inode.archive_location} does "
                                      "not match the recorded sha256; the in-place original is kept")


async def release_now(fs, inode: Inode, cause: str) -> Inode:
    """Drop the online copy of a dual file (one catalog switch). An in-place original goes only
    from a tier with release_originals (else Invalid: kept_original) and only once the archive
    copy verifies; the switch records where it was (a restore puts it back there) and hands it to
    the collector (RELEASED_ORIGINAL)."""
    verified = None
    if inode.state == State.DUAL and inode.location and in_place_key(inode.location):
        why = kept_original(fs, inode)
        if why:
            raise errors.Invalid(f"inode {inode.ino} not released: {why}")
        await _verify_archive_copy(fs, inode)
        verified = inode
    async with fs.lock(inode.ino):
        inode = await fs.get(inode.ino)
        if inode.state != State.DUAL:
            return inode
        why = busy(fs, inode.ino)
        if why:
            raise errors.TierfsError(f"inode {inode.ino}: {why}: its online copy is in use", err=errno.EBUSY)
        changes = Changes(state=State.ARCHIVED, tier=None, location=None)
        original = inode.location is not None and in_place_key(inode.location)
        if original:
            if verified is None or (verified.data_version, verified.archive_location, verified.location) != \
                    (inode.data_version, inode.archive_location, inode.location):
                raise errors.VersionConflict(f"inode {inode.ino} changed while its archive copy was verified")
            changes.update(released_original(inode))
        stub = await _head(fs, inode, cause)
        faults.point("release.before_switch")
        new = await fs.fetch(fs.catalog.switch, Transition(
            inode.ino, inode.data_version, (State.DUAL,), changes,
            cause, f"online copy on {inode.tier} released" + (f" (in-place original {inode.location}: the collector deletes it)"
                                                              if original else ""),
            garbage=((inode.tier, inode.location),), garbage_reason=RELEASED_ORIGINAL if original else "",
            no_writers_except=fs.session_id, stub=stub))
    await fs.invalidate(inode.ino)
    log.info("released inode %d: online copy on %s dropped, archive copy on %s (%s)",
             inode.ino, inode.tier, inode.archive_tier, cause)
    _wake(fs)
    return new


def _wake(fs) -> None:
    """A move finished: its garbage, the jobs and the policies may go on (the daemon's wake)."""
    fs.events.changed()


def _names(tiers: tuple[Tier, ...]) -> str:
    return ", ".join(t.name for t in tiers)


class Mover:
    """Runs one job's move (archive, restore, migrate, release) and the crash
    recovery of files left mid-move; the job runner (jobs.py) decides when."""

    def __init__(self, fs, cfg):
        self.fs = fs
        self.cfg = cfg

    async def run(self, job: Job) -> None:
        fs = self.fs
        try:
            inode = await fs.fetch(fs.catalog.get, job.ino)
        except errors.NotFound:
            return  # the file was deleted; nothing to move
        await self._cleanup_previous_attempt(job, inode)
        t0 = time.monotonic()
        if job.kind == JobKind.RELEASE:
            retry_if_busy(fs, inode.ino)
            await release_now(fs, inode, job.cause)
            return
        bad: dict[tuple[str, str], errors.TierfsError] = {}   # archive copies found missing, corrupt or away
        while True:
            if job.kind == JobKind.MIGRATE:
                mv = await self.migrate(job, inode)
            else:   # restore, archive (an archived file's further copies): both read an archive copy
                mv = await (self.archive if job.kind == JobKind.ARCHIVE else self.restore)(job, inode, bad)
            if mv is None:
                return
            try:
                await self.move(job, mv, t0)
                return
            except BadCopy as e:   # the next copy, if any (_readable_copy says when none is left)
                bad[(mv.src.name, mv.src_key)] = e.cause
                inode = mv.inode

    async def recover(self) -> None:
        """After a crash: files left mid-move with no active job go back to
        their stable state (archiving -> online, restoring -> archived)."""
        fs = self.fs
        active = {j.ino for j in await fs.cat(fs.catalog.jobs, (JobState.PENDING, JobState.RUNNING))}
        for state in (State.ARCHIVING, State.RESTORING):
            stuck = await fs.cat(lambda: list(fs.catalog.query(FileQuery(states=(state,)))))
            for inode in stuck:
                if inode.ino in active:
                    continue
                try:
                    back = await self._settle(inode, "recovery", "no job was running it")
                    log.warning("recovery: inode %d was %s with no job; now %s", inode.ino, state, back)
                except errors.VersionConflict:
                    pass

    # ---- what differs: the checks and the mark, per kind ------------------
    async def archive(self, job: Job, inode: Inode, bad: dict[tuple[str, str], errors.TierfsError]) -> Move | None:
        fs = self.fs
        here = fs.tiers.get(job.target_tier)
        # (a dual file whose archive copy is there already is released below, as for any archive tier)
        if here is not None and storage_class.in_place(here) and not (inode.state == State.DUAL
                                                               and inode.archive_tier == here.name):
            if job.more_targets:
                raise errors.Invalid(f"tier {here.name} archives in place: it cannot be one of several archive "
                                     "targets (archive there alone)")
            try:   # no copy: the object changes storage class
                await storage_class.archive(fs, job, inode, here, busy=lambda: busy(fs, inode.ino))
            except storage_class.Busy as e:
                raise Retry(str(e), BUSY_RETRY_S, count=False) from None
            return None
        if inode.state in (State.RESTORING, State.LOST):
            return None
        targets = targets_of(job)
        if inode.state == State.ARCHIVED:
            return await self._more_copies(job, inode, targets, bad)
        if inode.state == State.DUAL and not missing_targets(inode, targets):
            kept = None if job.keep_online else kept_original(fs, inode)
            if kept:
                log.info("job %d: inode %d stays dual: %s", job.id, inode.ino, kept)
            elif not job.keep_online:
                retry_if_busy(fs, inode.ino)
                await release_now(fs, inode, job.cause)
            return None
        retry_if_busy(fs, inode.ino)
        tiers = {name: fs.tier(name) for name in targets}
        if inode.state != State.ARCHIVING:
            inode = await self._mark(inode, (State.ONLINE, State.DUAL), State.ARCHIVING, job.cause,
                                     f"to {', '.join(targets)}")
        else:  # a re-run after a crash: read the version under the lock too (see migrate)
            async with fs.lock(inode.ino):
                inode = await fs.fetch(fs.catalog.get, inode.ino)
        # The source is where the file is as of the mark: a migrate that switched it between this job's
        # first read and the mark moved it to another tier (the copy failed "object missing": fsx-handles).
        src = fs.tier(inode.tier)
        faults.point("archive.after_mark")
        kept = None if job.keep_online else kept_original(fs, inode)   # as of the mark
        if kept:
            log.info("job %d: archiving inode %d, which stays dual: %s", job.id, inode.ino, kept)
        keep = job.keep_online or bool(kept)
        # An in-place original goes once this move's copy is verified (Mover._copy), from a tier with
        # release_originals; the switch records where it was.
        original = not keep and inode.location is not None and in_place_key(inode.location)
        # A dual file's verified copies on target tiers stay (the commit's compare-and-swap on the content
        # version proves they still hold these bytes); only the missing targets get a copy.
        have = {t: k for t, k in copies_of(inode) if t in tiers}
        new = [tiers[t] for t in missing_targets(inode, targets)]
        if not new:   # a re-run after a crash that finds every copy made (by another job): nothing to copy
            await self._settle(inode, job.cause, "every target already holds a copy")
            return None
        dst = new[0]

        def changes(sha: str, n: int, key: str) -> Changes:
            c = Changes(state=State.DUAL if keep else State.ARCHIVED, checksum=sha,
                        **copies_changes([(t, have.get(t, key)) for t in targets]))
            if not keep:
                c.update(tier=None, location=None)
            if original:
                c.update(released_original(inode))
            return c
        # The older archive copies not on a target (a re-archive to another tier), and the online copy unless kept.
        garbage = tuple(c for c in copies_of(inode) if c[0] not in tiers) + (
            () if keep else ((inode.tier, inode.location),))
        return Move(inode, src, inode.location, dst, changes, garbage, marked=State.ARCHIVING,
                    stub=0 if keep else stub_bytes(self.cfg, targets[0], job.cause),
                    garbage_reason=RELEASED_ORIGINAL if original else "",
                    note=f"; kept online: {kept}" if kept else "", more=tuple(new[1:]))

    async def _more_copies(self, job: Job, inode: Inode, targets: list[str],
                           bad: dict[tuple[str, str], errors.TierfsError]) -> Move | None:
        """An archived file gets the copies it lacks on `targets`, read from one
        of its archive copies; it stays archived, and keeps its copies on other
        tiers (nothing is re-archived). A restore meanwhile makes the commit's
        compare-and-swap fail: the job retries, from the online copy then."""
        new = [self.fs.tier(t) for t in missing_targets(inode, targets)]
        if not new:
            return None
        found = await self._readable_copy(inode, bad)
        if found is None:
            raise errors.TierfsError(f"inode {inode.ino}: no archive copy is good to copy from")
        src, key = found
        have = copies_of(inode)
        return Move(inode, src, key, new[0],
                    lambda sha, n, k: Changes(checksum=sha, **copies_changes(have + [(t.name, k) for t in new])),
                    exclusive=False, source_copy=True, more=tuple(new[1:]))

    async def restore(self, job: Job, inode: Inode, bad: dict[tuple[str, str], errors.TierfsError]) -> Move | None:
        """The restore from the file's first usable archive copy (primary first) not in `bad`: a copy whose
        tier is away or still recalling is passed over; none usable: the job waits for the first such
        copy, or, when every copy is missing or corrupt (`bad`), the file is lost."""
        fs = self.fs
        if inode.state in READABLE_STATES:
            return None
        if inode.state == State.LOST:
            raise errors.TierfsError(f"inode {inode.ino} is lost")
        if not self.cfg.allow_unarchive:
            raise errors.PermissionDenied("restores are disabled (allow_unarchive = false)")
        primary = fs.tiers.get(inode.archive_tier)
        same = primary is not None and storage_class.restores_in_place(primary, job.target_tier)
        dst, origin = (primary, None) if same else await self._restore_destination(job, inode)
        if inode.state != State.RESTORING:
            inode = await self._mark(inode, (State.ARCHIVED,), State.RESTORING, job.cause,
                                     f"from {inode.archive_tier}")
        if not bad:
            faults.point("restore.after_mark")
        if same:   # no copy: the object changes storage class back
            if not await trio.to_thread.run_sync(primary.prepare_restore, inode.archive_location):
                raise errors.Pending(f"tier {primary.name} is still recalling {inode.archive_location}")
            await storage_class.restore(fs, job, inode, primary)
            return None
        found = await self._readable_copy(inode, bad)
        if found is None:
            if not bad:
                raise errors.TierfsError(f"inode {inode.ino} has no archive copy")
            why = "; ".join(f"{t}/{k}: {e}" for (t, k), e in bad.items())
            await fs.fetch(fs.catalog.switch, Transition(inode.ino, inode.data_version, (State.RESTORING,),
                                                         Changes(state=State.LOST), str(job.kind), why))
            log.error("inode %d is lost: %s", inode.ino, why)
            # The file is lost now: no later attempt can restore it (fsck brings it back if a copy returns).
            raise errors.TierfsError(f"inode {inode.ino} is lost: {why}")
        src, key = found
        return Move(inode, src, key, dst,
                    lambda sha, n, key: Changes(state=State.DUAL, tier=dst.name, location=key, checksum=sha,
                                                atime_ns=now_ns(), origin_tier=None, origin_location=None),
                    marked=State.RESTORING, exclusive=False, conflict_retries=False, source_copy=True, origin=origin)

    async def _readable_copy(self, inode: Inode, bad: dict[tuple[str, str], errors.TierfsError]
                             ) -> tuple[Tier, str] | None:
        """The file's first archive copy (primary first) not in `bad` that can be read now: a copy whose
        tier is away or still recalling is passed over, one found missing goes to `bad` (and is reported).
        None when every copy is missing or corrupt; the first wait is raised (the job waits for it) when no
        copy is readable now but one may become so."""
        waits: list[errors.TierfsError] = []
        for name, key in copies_of(inode):
            if (name, key) in bad:
                continue
            try:
                src = self.fs.tier(name)
                if not await trio.to_thread.run_sync(src.prepare_restore, key):
                    raise errors.Pending(f"tier {name} is still recalling {key}")
            except (errors.ObjectMissing, errors.ChecksumMismatch) as e:
                bad[(name, key)] = e
                await self._bad_copy(inode, name, key, e)
                continue
            except errors.TierfsError as e:   # away, pending, not on this mount: the next copy may do
                waits.append(e)
                continue
            return src, key
        waits += [e for e in bad.values() if not isinstance(e, (errors.ObjectMissing, errors.ChecksumMismatch))]
        if waits:
            raise waits[0]
        return None

    async def _bad_copy(self, inode: Inode, tier: str, key: str, e: errors.TierfsError) -> None:
        """A read of one archive copy found it missing or corrupt: the log and the file's history say
        which, so `tierfs fsck --verify-data --repair` (or an operator) re-makes it from a good one."""
        log.error("inode %d: archive copy %s/%s is bad: %s", inode.ino, tier, key, e)
        try:
            await self.fs.cat(self.fs.catalog.add_event, inode.ino, str(inode.state), str(inode.state),
                              "restore", f"archive copy {tier}/{key} bad: {e}")
        except errors.TierfsError as e2:
            log.warning("inode %d: recording the bad copy: %s", inode.ino, e2)

    async def _restore_destination(self, job: Job, inode: Inode) -> tuple[Tier, str | None]:
        """Where a restore puts the bytes, and the in-place path it puts them back at (or None):
        `restore --to`'s tier; a released in-place original's own path when its tier is here with
        release_originals and nothing is at the path; else the placement (said in the log)."""
        fs = self.fs
        # (an earlier attempt recorded the tier it chose as the job's target: the origin's is no choice)
        if job.target_tier and job.target_tier != inode.origin_tier:
            return fs.tier(job.target_tier), None
        if not (inode.origin_tier and inode.origin_location):
            return await fs.placement_of(inode.ino), None
        tier = fs.tiers.get(inode.origin_tier)
        if not releases_originals(tier):
            why = f"tier {inode.origin_tier} is " + ("not configured here" if tier is None else
                                                     "no longer set to release_originals")
        else:
            why = await trio.to_thread.run_sync(tier.vacancy, inode.origin_location)
        if why is None:
            return tier, inode.origin_location
        dst = await fs.placement_of(inode.ino)
        log.warning("restore of inode %d goes to tier %s, not back to %s on tier %s: %s", inode.ino, dst.name,
                    inode.origin_location, inode.origin_tier, why)
        return dst, None

    async def migrate(self, job: Job, inode: Inode) -> Move | None:
        fs = self.fs
        # Read the version under the inode lock, as archive's _mark does: a truncate bumps the
        # version before it shrinks the object (both under the lock), so a version read in
        # between let the copy take the old bytes and the switch succeed (fsx, under load).
        async with fs.lock(inode.ino):
            inode = await fs.fetch(fs.catalog.get, inode.ino)
        if inode.state not in READABLE_STATES:
            raise errors.Invalid(f"inode {inode.ino} is {inode.state}; restore it before migrating")
        if inode.tier == job.target_tier:
            return None
        retry_if_busy(fs, inode.ino)
        src, dst = fs.tier(inode.tier), fs.tier(job.target_tier)
        version = inode.data_version
        # The version moves on with the location: a concurrent archive of the same file (which
        # copied from the old location) must fail its compare-and-swap, or it would switch to its
        # own copy and strand this one on the destination tier.
        return Move(inode, src, inode.location, dst,
                    lambda sha, n, key: Changes(tier=dst.name, location=key, checksum=sha, data_version=version + 1),
                    garbage=((src.name, inode.location),))

    async def _mark(self, inode: Inode, from_states, to_state: State, cause: str, detail: str) -> Inode:
        fs = self.fs
        async with fs.lock(inode.ino):
            inode = await fs.get(inode.ino)
            if inode.state not in from_states:
                raise Retry(f"file is {inode.state}", 0, count=False)
            try:
                new = await fs.fetch(fs.catalog.switch, Transition(
                    inode.ino, inode.data_version, (inode.state,), Changes(state=to_state), cause, detail,
                    no_writers_except=fs.session_id))
            except errors.VersionConflict as e:
                raise Retry(str(e), BUSY_RETRY_S, count=False) from None  # changed, or written on another mount
            return new

    # ---- what all moves share: record, copy, verify, switch ---------------
    async def move(self, job: Job, mv: Move, t0: float) -> None:
        fs, ino = self.fs, mv.inode.ino
        dst_key = new_key()   # the same key on every destination: the job records it once for all of them
        if job.kind != JobKind.ARCHIVE:   # an archive's target_tier is its first target (targets_of), kept
            job.target_tier = mv.dst.name   # a restore picks its tier only now: the tier a wait for space is about
        await fs.cat(fs.catalog.update_job, job.id, {"dst_key": dst_key, "target_tier": job.target_tier},
                     session=job.session)
        try:
            sha, n, head = await self._copy(mv, dst_key, fault=f"{job.kind}.after_copy")
            for more in mv.more:
                sha2, _, _ = await self._copy(replace(mv, dst=more, stub=0), dst_key, fault=f"{job.kind}.after_copy")
                if sha2 != sha:   # written between the copies (no checksum recorded to hold them to)
                    raise errors.ChecksumMismatch(f"copy on {more.name} differs from the one on {mv.dst.name}")
        except BaseException as e:
            await self._copy_failed(job, mv, dst_key, e)   # raises what the job should see instead, if anything
            raise
        if job.kind == JobKind.ARCHIVE:
            faults.point("archive.after_verify")   # (restore and migrate have no point here: faults.POINTS)
        # Putting a file back at its in-place path and the switch that points it there happen under the
        # lock the collector deletes released originals under (gc.py): the path is ours from the link on.
        async with fs.files.originals if mv.origin else contextlib.nullcontext():
            key = await self._put_back(mv, dst_key) if mv.origin else dst_key
            if not await self._commit(job, mv, sha, n, dst_key, key, head):
                return
        await fs.invalidate(ino)   # the kernel drops the attributes it cached (st_blocks)
        faults.point(f"{job.kind}.after_switch")
        await self._log_done(f"{job.kind}d", mv, n, t0, job.cause)
        _wake(fs)

    async def _put_back(self, mv: Move, dst_key: str) -> str:
        """Give the verified copy `dst_key` its released original's path too (DiskTier.put_back);
        the key the file will use: that path, or `dst_key` when the path was taken meanwhile or
        cannot be made (the copy stays where it is, on the same tier, and the log says so)."""
        inode = mv.inode
        try:
            await trio.to_thread.run_sync(mv.dst.put_back, dst_key, mv.origin, inode.mode, inode.uid, inode.gid,
                                          inode.atime_ns, inode.mtime_ns)
        except errors.TierfsError as e:
            log.warning("restore of inode %d: not put back at %s (%s); its bytes are object %s on tier %s",
                        inode.ino, mv.origin, e, dst_key, mv.dst.name)
            return dst_key
        return mv.origin

    async def _commit(self, job: Job, mv: Move, sha: str, n: int, dst_key: str, key: str,
                      head: bytes) -> bool:
        """The switch of a move whose copy `dst_key` is verified; the file points at `key` (`dst_key`,
        or the in-place path it was put back at, and then `dst_key` is a second name to collect).
        False: the move is not needed any more (a restore of a file rewritten or deleted meanwhile)."""
        fs, ino = self.fs, mv.inode.ino
        garbage = mv.garbage + (((mv.dst.name, dst_key),) if key != dst_key else ())
        commit = Transition(ino, mv.inode.data_version, (mv.expect,), mv.changes(sha, n, key), job.cause,
                            f"{mv.src.name} -> {_names(mv.dsts)}, {n} bytes{mv.note}", garbage=garbage,
                            garbage_reason=mv.garbage_reason, job_id=job.id, job_session=job.session,
                            ends_job=job.session is not None,
                            no_writers_except=fs.session_id if mv.exclusive else None,
                            stub=head if mv.stub else None)
        async with fs.lock(ino):
            why = busy(fs, ino) if mv.exclusive else None
            if why:
                await self._abandon(job, mv, dst_key, f"{why} (opened during the copy)")
                raise Retry(f"{why} (opened during the copy)", BUSY_RETRY_S, count=False)
            try:
                await fs.fetch(fs.catalog.switch, commit)
            except errors.VersionConflict:
                if not mv.conflict_retries:
                    await self._take_back(mv, key, dst_key)
                    await self._discard(job, mv.dsts, dst_key)
                    return False
                await self._abandon(job, mv, dst_key, "changed during the copy")
                raise Retry("file changed during the copy", BUSY_RETRY_S, count=False) from None
            except errors.NotFound:  # deleted (and purged) during the copy: nothing to move
                await self._take_back(mv, key, dst_key)
                await self._discard(job, mv.dsts, dst_key)
                return False
            except errors.Fenced:   # our session was reaped meanwhile: the job is another mount's now
                await self._take_back(mv, key, dst_key)
                await self._discard(job, mv.dsts, dst_key)
                raise
        return True

    async def _take_back(self, mv: Move, key: str, dst_key: str) -> None:
        """The switch did not happen: the in-place path the copy was put back at goes with it."""
        if key != dst_key:
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(mv.dst.take_back, key, dst_key)
                except errors.TierfsError as e:
                    log.warning("inode %d: could not remove %s/%s, put back for a restore that did not "
                                "complete (%s)", mv.inode.ino, mv.dst.name, key, e)

    async def _copy(self, mv: Move, dst_key: str, *, fault: str) -> tuple[str, int, bytes]:
        """Copy with hashing, then verify the destination. Returns (sha256,
        bytes, the first mv.stub bytes): the stub comes from the stream the
        checksum is of, so the commit's compare-and-swap covers it too."""
        src, dst, expect_sha = mv.src, mv.dst, mv.inode.checksum

        def copy():
            # A file never written on a remote tier has no object yet: its content is empty.
            with (io.BytesIO(b"") if mv.src_key is None else src.open_reader(mv.src_key)) as r:
                h = HashingReader(r, head=mv.stub)
                dst.put(dst_key, h)
                return h.hexdigest(), h.nbytes, bytes(h.first)
        sha, n, head = await trio.to_thread.run_sync(copy)
        faults.point(fault)
        if expect_sha and sha != expect_sha:
            raise errors.ChecksumMismatch(
                f"{src.name}/{mv.src_key}: content sha256 {sha[:12]}.. differs from the recorded {expect_sha[:12]}..")
        ok = await trio.to_thread.run_sync(dst.verify, dst_key, sha, n)
        if not ok:
            raise errors.ChecksumMismatch(f"copy on {dst.name}/{dst_key} does not match what was written")
        return sha, n, head

    async def _copy_failed(self, job: Job, mv: Move, dst_key: str, e: BaseException) -> None:
        """The copy or its verification failed with `e`: undo it, and raise
        what the job should see instead (a retry, the file lost), if not `e`."""
        if mv.source_copy and isinstance(e, (errors.ChecksumMismatch, errors.ObjectMissing)):
            await self._discard(job, mv.dsts, dst_key)
            await self._bad_copy(mv.inode, mv.src.name, mv.src_key, e)
            raise BadCopy(e) from e
        if mv.source_copy and isinstance(e, errors.TierUnavailable) and await self._away(mv.src):
            # The copy's own tier went away (not the destination): the next copy may be readable.
            await self._discard(job, mv.dsts, dst_key)
            log.warning("inode %d: archive copy %s/%s cannot be read now (%s); trying the next copy",
                        mv.inode.ino, mv.src.name, mv.src_key, e)
            raise BadCopy(e) from e
        bad = isinstance(e, errors.ChecksumMismatch)
        # A checksum that differs because the file was written during the copy is no corruption.
        changed = bad and await self._changed_since(mv.inode)
        await self._abandon(job, mv, dst_key, "changed during the copy" if changed else
                            "source failed its checksum" if bad else f"copy failed: {e}")
        if changed:
            raise Retry("file changed during the copy", BUSY_RETRY_S, count=False) from None

    @staticmethod
    async def _away(tier: Tier) -> bool:
        """True when `tier` does not answer its probe (unmounted, unreachable)."""
        try:
            await trio.to_thread.run_sync(tier.probe)
        except errors.TierfsError:
            return True
        return False

    async def _changed_since(self, inode: Inode) -> bool:
        """True when the file's content changed after `inode` was read (so a
        checksum mismatch is a concurrent write, not corruption)."""
        try:
            return (await self.fs.cat(self.fs.catalog.get, inode.ino)).data_version != inode.data_version
        except errors.NotFound:
            return True

    async def _abandon(self, job: Job, mv: Move, dst_key: str, why: str) -> None:
        """Undo a stopped move: the destination object goes, the marked state settles back."""
        fs = self.fs
        await self._discard(job, mv.dsts, dst_key)
        if mv.marked is None:
            return
        with trio.CancelScope(shield=True):
            try:
                cur = await fs.cat(fs.catalog.get, mv.inode.ino)
                if cur.state == mv.marked:
                    # The history says the move stopped and why; not that `job.cause` settled the file.
                    await self._settle(cur, f"{job.kind} not completed ({job.cause})", why)
            except errors.TierfsError:
                pass

    async def failed(self, job: Job, why: str) -> None:
        """A job failed for good: the file it left in its own in-between state
        goes back to its stable one. A copy that fails is undone by _abandon;
        this is for what fails before a copy starts (a copytool's
        restore_command exiting 3 left the file `restoring`, with no job, until
        the next mount's recovery). Only the job's own mark is settled
        (restoring for a restore, archiving for an archive): jobs coalesce per
        file and kind, so no other job of the kind can hold it."""
        own = {JobKind.RESTORE: State.RESTORING, JobKind.ARCHIVE: State.ARCHIVING}.get(job.kind)
        with trio.CancelScope(shield=True):
            try:
                inode = await self.fs.cat(self.fs.catalog.get, job.ino)
                if own is not None and inode.state == own:
                    back = await self._settle(inode, f"{job.kind} failed ({job.cause})", why)
                    log.info("inode %d: %s failed; the file is %s again", inode.ino, job.kind, back)
            except errors.TierfsError as e:
                log.debug("settling inode %d after job %d failed: %s", job.ino, job.id, e)

    async def _settle(self, inode: Inode, cause: str, detail: str) -> State:
        """Switch a file out of its in-between state back to its stable one."""
        back = settled(inode)
        await self.fs.fetch(self.fs.catalog.switch, Transition(inode.ino, inode.data_version, (inode.state,),
                                                               Changes(state=back), cause, detail))
        return back

    async def _discard(self, job: Job, dsts: tuple[Tier, ...], dst_key: str) -> None:
        """Delete the copies this job made (`dst_key` on each of `dsts`) and no
        longer needs. A failure here is logged, never raised: it must not
        replace the error that made the copy useless (a restore to S3 recorded
        "endpoint down" from this cleanup instead of the copy's own failure);
        fsck finds the object."""
        with trio.CancelScope(shield=True):
            try:
                for dst in dsts:
                    await trio.to_thread.run_sync(dst.delete, dst_key)
                await self.fs.cat(self.fs.catalog.update_job, job.id, {"dst_key": None}, session=job.session)
            except errors.Fenced:
                pass   # another mount runs the job now: its dst_key is that mount's (our copy is deleted)
            except errors.TierfsError as e:
                log.warning("job %d: could not delete %s/%s (%s); fsck will find it", job.id, dst.name, dst_key, e)

    async def _cleanup_previous_attempt(self, job: Job, inode: Inode) -> None:
        """A previous attempt died after writing job.dst_key: delete that copy
        unless the file already points at it (the switch happened)."""
        if not job.dst_key or job.dst_key in (inode.location, *(k for _, k in copies_of(inode))):
            return
        # An archive's key is on each of its targets (Mover.move); a job without a target restored to the default.
        for name in targets_of(job) or [self.cfg.default_tier]:
            tier = self.fs.tiers.get(name) or self.fs.tiers.get(self.cfg.default_tier)
            if tier is None:
                continue
            if isinstance(tier, DiskTier) and inode.origin_tier == tier.name and inode.origin_location:
                # a restore put the copy back at the original's path and died before its switch
                await trio.to_thread.run_sync(tier.take_back, inode.origin_location, job.dst_key)
            await trio.to_thread.run_sync(tier.delete, job.dst_key)  # raises: the tier is away, the job waits
        await self.fs.cat(self.fs.catalog.update_job, job.id, {"dst_key": None}, session=job.session)

    async def _log_done(self, verb: str, mv: Move, nbytes: int, t0: float, cause: str) -> None:
        try:
            path = "/" + (await self.fs.cat(self.fs.catalog.path_of, mv.inode.ino)).decode(errors="replace")
        except errors.TierfsError:
            path = f"inode {mv.inode.ino} (unlinked)"
        log.info("%s %s: %s -> %s, %s, %.2fs (%s)", verb, path, mv.src.name, _names(mv.dsts), fmt_size(nbytes),
                 time.monotonic() - t0, cause)
