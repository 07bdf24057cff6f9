"""Job workers and the crash-safe move protocol.

Every move (archive, restore, migrate) is:
  1. mark: compare-and-swap the file's state (online -> archiving,
     archived -> restoring) on its content version; record the destination
     key in the job *before* writing it, so a crash can clean it up;
  2. copy the source object to a fresh key on the destination, hashing it;
  3. verify: read the destination back (or let the tier verify) and compare
     the sha256 with the source's and with the recorded checksum;
  4. switch: one catalog compare-and-swap on the content version points the
     file at the new copy and puts the superseded object in `garbage`;
  5. the garbage collector deletes the superseded object later.
A crash at any step leaves the file readable from the old location or the
new one; re-running the job is safe (steps are idempotent). A write during
the copy bumps the content version, so the switch fails and the job retries.
Fault points (tierfs/faults.py) sit between the steps.

Restores run before everything else (priority 0); at most
`tier_concurrency` jobs per destination tier run at once.
"""

from __future__ import annotations

import errno
import io
import logging
import time

import trio

from . import errors, faults
from .catalog.base import READABLE_STATES, Changes, Inode, Job, JobKind, JobState, State, Transition, now_ns
from .tierhealth import TierHealth
from .tiers.base import HashingReader, Tier, new_key
from .units import fmt_size

log = logging.getLogger(__name__)

POLL_S = 1.0
BUSY_RETRY_S = 2.0       # file open for writing: try the move again soon
#: last_error of a job that waits for a tier (or space) to come back: `tierfs queue` shows it as waiting
WAITING = "waiting: "


class Retry(Exception):
    """Put the job back in the queue (not a failure of the job itself)."""

    def __init__(self, msg: str, delay: float, count: bool = True):
        super().__init__(msg)
        self.delay = delay
        self.count = count  # counts towards job_max_attempts


async def release_now(fs, inode: Inode, cause: str) -> Inode:
    """Drop the online copy of a dual file (instant: one catalog switch)."""
    async with fs.lock(inode.ino):
        inode = await fs.get(inode.ino)
        if inode.state != State.DUAL:
            return inode
        if fs.writers.get(inode.ino):
            raise errors.TierfsError(f"inode {inode.ino} is open for writing: its online copy is in use",
                                     err=errno.EBUSY)
        faults.point("release.before_switch")
        new = await fs.fetch(fs.catalog.switch, Transition(
            inode.ino, inode.data_version, (State.DUAL,), Changes(state=State.ARCHIVED, tier=None, location=None),
            cause, f"online copy on {inode.tier} released", garbage=((inode.tier, inode.location),),
            no_writers_except=fs.session_id))
    await fs.invalidate(inode.ino)
    log.info("released inode %d: online copy on %s dropped, archive copy on %s (%s)",
             inode.ino, inode.tier, inode.archive_tier, cause)
    if fs.on_change:
        fs.on_change()
    return new


class JobRunner:
    """Claims jobs from the catalog and runs them (a daemon extension).

    How a run ends decides what happens to the job:
    - done: finished (and the file's older failed jobs of the kind are superseded);
    - Retry: back to the queue soon (the file was busy), counted only if Retry.count;
    - a tier unavailable or full, the catalog unreachable, a copytool that says
      pending: the job waits, with exponential backoff from job_retry_delay up to
      job_retry_max_delay, for as long as that lasts, and the wait is no attempt;
      tierhealth.py probes the tiers and wakes the waiting jobs when they recover;
    - a copy that is missing or fails its checksum: retried up to job_max_attempts;
    - a tier this mount does not have: left to the mounts that have it;
    - anything else (a request that no longer applies): failed at once.
    """

    #: failures that heal by themselves: wait, however long it takes
    TRANSIENT = (errors.TierUnavailable, errors.CatalogUnavailable, errors.NoSpace, errors.Pending)
    #: failures a later attempt may not see (a copy put back, a re-read): counted towards job_max_attempts
    COUNTED = (errors.ObjectMissing, errors.ChecksumMismatch)
    DECLINE_S = 600.0   # how long a job needing a tier this mount lacks is left to others

    def __init__(self, fs, cfg, session_id: str):
        self.fs = fs
        self.cfg = cfg
        self.session_id = session_id
        self.busy: dict[str, int] = {}      # destination tier -> running jobs
        self.running = 0
        self._wake = trio.Event()
        self.health = TierHealth(fs.tiers, fs.cat, fs.catalog.set_meta, session_id)
        self.waits: dict[int, int] = {}      # job id -> consecutive waits (the backoff exponent)
        self.declined: dict[int, float] = {}  # job id -> monotonic time until which others may take it
        if fs.offline is not None:
            fs.offline.wake_jobs = self.wake

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        await self.recover()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.health.run, self._tier_back)
            while True:
                started = False
                if self.running < self.cfg.workers:
                    busy = [t for t, n in self.busy.items() if n >= self.cfg.tier_concurrency]
                    now = time.monotonic()
                    self.declined = {j: t for j, t in self.declined.items() if t > now}
                    try:
                        job = await self.fs.cat(self.fs.catalog.claim, self.session_id, None, busy,
                                                tiers=list(self.fs.tiers), skip=list(self.declined))
                    except errors.TierfsError as e:
                        log.warning("claiming jobs: %s", e)
                        job = None
                    if job is not None:
                        self.running += 1
                        tier = job.target_tier or ""
                        self.busy[tier] = self.busy.get(tier, 0) + 1
                        nursery.start_soon(self._run_one, job, tier)
                        started = True
                if not started:
                    with trio.move_on_after(POLL_S):
                        await self._wake.wait()
                    self._wake = trio.Event()

    async def _tier_back(self, name: str) -> None:
        """A tier recovered: the jobs waiting here run now, not at their backoff time."""
        for jid in list(self.waits):
            try:
                await self.fs.cat(self.fs.catalog.update_job, jid, {"not_before_ns": 0})
            except errors.TierfsError as e:
                log.debug("waking job %d: %s", jid, e)
        self.wake()

    async def recover(self) -> None:
        """After a crash: files left mid-move with no active job go back to
        their stable state (archiving -> online, restoring -> archived)."""
        fs = self.fs
        active = {j.ino for j in await fs.cat(fs.catalog.jobs, (JobState.PENDING, JobState.RUNNING))}
        from .catalog.base import FileQuery
        for state, back in ((State.ARCHIVING, State.ONLINE), (State.RESTORING, State.ARCHIVED)):
            stuck = await fs.cat(lambda: list(fs.catalog.query(FileQuery(states=(state,)))))
            for inode in stuck:
                if inode.ino in active:
                    continue
                if state == State.ARCHIVING and inode.archive_tier:
                    back = State.DUAL
                try:
                    await fs.cat(fs.catalog.switch, Transition(inode.ino, inode.data_version, (state,),
                                                               Changes(state=back), "recovery",
                                                               "no job was running it"))
                    log.warning("recovery: inode %d was %s with no job; now %s", inode.ino, state, back)
                except errors.VersionConflict:
                    pass

    async def _run_one(self, job: Job, tier: str) -> None:
        t0 = time.monotonic()
        waited: errors.TierfsError | None = None
        try:
            try:
                await self.execute(job)
            except self.TRANSIENT as e:
                waited = e
                await self._wait(job, e)
            except Retry as r:
                if r.count and job.attempts >= self.cfg.job_max_attempts:
                    await self._fail(job, f"{r} (after {job.attempts} attempts)")
                else:
                    log.info("job %d (%s inode %d): %s; retrying in %.0fs", job.id, job.kind, job.ino, r, r.delay)
                    await self._record(self.fs.catalog.retry_job, job.id, str(r), r.delay, count=r.count)
            except self.COUNTED as e:
                if job.attempts >= self.cfg.job_max_attempts:
                    await self._fail(job, f"{e} (after {job.attempts} attempts)")
                else:
                    log.warning("job %d (%s inode %d): %s; attempt %d of %d, retrying in %.0fs", job.id, job.kind,
                                job.ino, e, job.attempts, self.cfg.job_max_attempts, self.cfg.job_retry_delay)
                    await self._record(self.fs.catalog.retry_job, job.id, str(e), self.cfg.job_retry_delay)
            except errors.UnknownTier as e:
                self.declined[job.id] = time.monotonic() + self.DECLINE_S
                log.info("job %d (%s inode %d): %s; leaving it to a mount that has the tier", job.id, job.kind,
                         job.ino, e)
                await self._record(self.fs.catalog.retry_job, job.id, f"waiting for a mount with the tier: {e}", 0,
                                   count=False)
            except errors.TierfsError as e:
                await self._fail(job, str(e))
            except Exception as e:  # noqa: BLE001 - a bug must not kill the runner
                log.exception("job %d (%s inode %d) crashed", job.id, job.kind, job.ino)
                await self._fail(job, f"internal error: {e!r}")
            else:
                await self._record(self.fs.catalog.finish_job, job.id, JobState.DONE)
        finally:
            self.running -= 1
            self.busy[tier] -= 1
            self.wake()
            if waited is None:
                self.waits.pop(job.id, None)
            if job.kind == JobKind.RESTORE and self.fs.offline is not None:
                self.fs.offline.restore_finished(job.ino, waited if isinstance(waited, errors.NoSpace) else None)
            log.debug("job %d took %.2fs", job.id, time.monotonic() - t0)

    async def _wait(self, job: Job, e: errors.TierfsError) -> None:
        """A transient failure: back to the queue with backoff; not an attempt."""
        n = self.waits.get(job.id, 0)
        self.waits[job.id] = n + 1
        delay = min(self.cfg.job_retry_delay * 2 ** min(n, 30), max(self.cfg.job_retry_max_delay,
                                                                    self.cfg.job_retry_delay))
        why = None
        if isinstance(e, (errors.TierUnavailable, errors.NoSpace)):
            inode = self.fs.cache.peek(job.ino)
            need = inode.size if inode is not None and isinstance(e, errors.NoSpace) else 0
            names = [job.target_tier] + ([inode.tier, inode.archive_tier] if inode is not None else [])
            why = await self.health.diagnose(names, need)
        reason = why or str(e)
        # One line when the wait starts; the attempts while it lasts only at debug level.
        (log.warning if n == 0 else log.debug)("job %d (%s inode %d) waits: %s; next attempt in %.0fs", job.id,
                                               job.kind, job.ino, reason, delay)
        await self._record(self.fs.catalog.retry_job, job.id, f"{WAITING}{reason}", delay, count=False)

    async def _record(self, fn, *args, **kw) -> None:
        """Job bookkeeping in the catalog; while the catalog is unreachable, try
        again (the job stays ours meanwhile, running) rather than end the runner."""
        delay = 1.0
        while True:
            try:
                await self.fs.cat(fn, *args, **kw)
                return
            except errors.CatalogUnavailable as e:
                log.warning("recording job %s: %s; trying again in %.0fs", args[0], e, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _fail(self, job: Job, msg: str) -> None:
        log.error("job %d (%s inode %d) failed: %s", job.id, job.kind, job.ino, msg)
        try:
            await self._record(self.fs.catalog.finish_job, job.id, JobState.FAILED, msg)
        except errors.TierfsError as e:
            log.error("recording failure of job %d: %s", job.id, e)

    # ---- the moves ---------------------------------------------------------
    async def execute(self, job: Job) -> None:
        fs = self.fs
        try:
            inode = await fs.fetch(fs.catalog.get, job.ino)
        except errors.NotFound:
            return  # the file was deleted; nothing to move
        await self._cleanup_previous_attempt(job, inode)
        if job.kind == JobKind.ARCHIVE:
            await self.archive(job, inode)
        elif job.kind == JobKind.RESTORE:
            await self.restore(job, inode)
        elif job.kind == JobKind.RELEASE:
            await release_now(fs, inode, job.cause)
        elif job.kind == JobKind.MIGRATE:
            await self.migrate(job, inode)

    async def _cleanup_previous_attempt(self, job: Job, inode: Inode) -> None:
        """A previous attempt died after writing job.dst_key: delete that copy
        unless the file already points at it (the switch happened)."""
        if not job.dst_key or job.dst_key in (inode.location, inode.archive_location):
            return
        tier = self.fs.tiers.get(job.target_tier or "") or self.fs.tiers.get(self.cfg.default_tier)
        if tier is not None:
            await trio.to_thread.run_sync(tier.delete, job.dst_key)  # raises: the tier is away, the job waits
        await self.fs.cat(self.fs.catalog.update_job, job.id, {"dst_key": None})

    async def _discard(self, job: Job, dst: Tier, dst_key: str) -> None:
        """Delete a copy this job made and no longer needs. A failure here is
        logged, never raised: it must not replace the error that made the copy
        useless (a restore to S3 recorded "endpoint down" from this cleanup
        instead of the copy's own failure); fsck finds the object."""
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(dst.delete, dst_key)
                await self.fs.cat(self.fs.catalog.update_job, job.id, {"dst_key": None})
            except errors.TierfsError as e:
                log.warning("job %d: could not delete %s/%s (%s); fsck will find it", job.id, dst.name, dst_key, e)

    async def _log_done(self, verb: str, inode: Inode, src: str, dst: str, nbytes: int, t0: float,
                        cause: str) -> None:
        try:
            path = "/" + (await self.fs.cat(self.fs.catalog.path_of, inode.ino)).decode(errors="replace")
        except errors.TierfsError:
            path = f"inode {inode.ino} (unlinked)"
        log.info("%s %s: %s -> %s, %s, %.2fs (%s)", verb, path, src, dst, fmt_size(nbytes),
                 time.monotonic() - t0, cause)

    async def _copy(self, src: Tier, src_key: str, dst: Tier, dst_key: str, *, expect_sha: str | None,
                    fault: str) -> tuple[str, int]:
        """Copy with hashing, then verify the destination. Returns (sha256, bytes)."""
        def copy():
            # A file never written on a remote tier has no object yet: its content is empty.
            with (io.BytesIO(b"") if src_key is None else src.open_reader(src_key)) as r:
                h = HashingReader(r)
                dst.put(dst_key, h)
                return h.hexdigest(), h.nbytes
        sha, n = await trio.to_thread.run_sync(copy)
        faults.point(fault)
        if expect_sha and sha != expect_sha:
            raise errors.ChecksumMismatch(
                f"{src.name}/{src_key}: content sha256 {sha[:12]}.. differs from the recorded {expect_sha[:12]}..")
        ok = await trio.to_thread.run_sync(dst.verify, dst_key, sha, n)
        if not ok:
            raise errors.ChecksumMismatch(f"copy on {dst.name}/{dst_key} does not match what was written")
        return sha, n

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

    async def archive(self, job: Job, inode: Inode) -> None:
        fs = self.fs
        if inode.state in (State.ARCHIVED, State.RESTORING, State.LOST):
            return
        if inode.state == State.DUAL and inode.archive_tier == job.target_tier:
            if not job.keep_online:
                await release_now(fs, inode, job.cause)
            return
        if fs.writers.get(inode.ino):
            raise Retry("file is open for writing", BUSY_RETRY_S, count=False)
        dst = fs.tier(job.target_tier)
        t0 = time.monotonic()
        if inode.state != State.ARCHIVING:
            inode = await self._mark(inode, (State.ONLINE, State.DUAL), State.ARCHIVING, job.cause,
                                     f"to {dst.name}")
        else:  # a re-run after a crash: read the version under the lock too (see migrate)
            async with fs.lock(inode.ino):
                inode = await fs.fetch(fs.catalog.get, inode.ino)
        # The source is where the file is as of the mark: a migrate that switched it between this job's
        # first read and the mark moved it to another tier (the copy failed "object missing": fsx-handles).
        src = fs.tier(inode.tier)
        faults.point("archive.after_mark")
        version = inode.data_version
        dst_key = new_key()
        await fs.cat(fs.catalog.update_job, job.id, {"dst_key": dst_key})
        try:
            sha, n = await self._copy(src, inode.location, dst, dst_key, expect_sha=inode.checksum,
                                      fault="archive.after_copy")
        except errors.ChecksumMismatch:
            changed = await self._changed_since(inode, version)
            await self._abandon(job, inode, dst, dst_key, State.ONLINE,
                                "changed during the copy" if changed else "source failed its checksum")
            if changed:
                raise Retry("file changed during the copy", BUSY_RETRY_S, count=False) from None
            raise
        except BaseException as e:
            await self._abandon(job, inode, dst, dst_key, State.ONLINE, f"copy failed: {e}")
            raise
        faults.point("archive.after_verify")
        final = State.DUAL if job.keep_online else State.ARCHIVED
        changes = Changes(state=final, archive_tier=dst.name, archive_location=dst_key, checksum=sha)
        garbage = []
        if inode.archive_tier and inode.archive_location:
            garbage.append((inode.archive_tier, inode.archive_location))
        if not job.keep_online:
            changes.update(tier=None, location=None)
            garbage.append((inode.tier, inode.location))
        async with fs.lock(inode.ino):
            if fs.writers.get(inode.ino):
                await self._abandon(job, inode, dst, dst_key, State.ONLINE, "opened for writing during the copy")
                raise Retry("file was opened for writing during the copy", BUSY_RETRY_S, count=False)
            try:
                await fs.fetch(fs.catalog.switch, Transition(
                    inode.ino, version, (State.ARCHIVING,), changes, job.cause, f"{src.name} -> {dst.name}, {n} bytes",
                    garbage=tuple(garbage), job_id=job.id, no_writers_except=fs.session_id))
            except errors.VersionConflict:
                await self._abandon(job, inode, dst, dst_key, State.ONLINE, "changed during the copy")
                raise Retry("file changed during the copy", BUSY_RETRY_S, count=False)
            except errors.NotFound:  # deleted (and purged) during the copy: nothing to archive
                await self._abandon(job, inode, dst, dst_key, State.ONLINE, "deleted during the copy")
                return
        await fs.invalidate(inode.ino)
        faults.point("archive.after_switch")
        await self._log_done("archived", inode, src.name, dst.name, n, t0, job.cause)
        if fs.on_change:
            fs.on_change()

    async def _changed_since(self, inode: Inode, version: int) -> bool:
        """True when the file's content changed after the copy started (so a
        checksum mismatch is a concurrent write, not corruption)."""
        try:
            return (await self.fs.cat(self.fs.catalog.get, inode.ino)).data_version != version
        except errors.NotFound:
            return True

    async def _abandon(self, job: Job, inode: Inode, dst: Tier, dst_key: str, back: State, why: str) -> None:
        """Undo a failed copy: the destination object goes, the state returns."""
        fs = self.fs
        await self._discard(job, dst, dst_key)
        with trio.CancelScope(shield=True):
            try:
                cur = await fs.cat(fs.catalog.get, inode.ino)
                mid = State.RESTORING if back == State.ARCHIVED else State.ARCHIVING
                if mid == State.ARCHIVING:
                    back = State.DUAL if cur.archive_tier else State.ONLINE
                if cur.state == mid:
                    # The history says the move stopped and why; not that `job.cause` made the file `back`.
                    await fs.fetch(fs.catalog.switch, Transition(inode.ino, cur.data_version, (mid,),
                                                                 Changes(state=back),
                                                                 f"{job.kind} not completed ({job.cause})", why))
            except errors.TierfsError:
                pass

    async def restore(self, job: Job, inode: Inode) -> None:
        fs = self.fs
        if inode.state in READABLE_STATES:
            return
        if inode.state == State.LOST:
            raise errors.TierfsError(f"inode {inode.ino} is lost")
        if not self.cfg.allow_unarchive:
            raise errors.PermissionDenied("restores are disabled (allow_unarchive = false)")
        src = fs.tier(inode.archive_tier)
        dst = fs.tier(job.target_tier) if job.target_tier else await fs.placement_of(inode.ino)
        t0 = time.monotonic()
        if inode.state != State.RESTORING:
            inode = await self._mark(inode, (State.ARCHIVED,), State.RESTORING, job.cause, f"from {src.name}")
        faults.point("restore.after_mark")
        ready = await trio.to_thread.run_sync(src.prepare_restore, inode.archive_location)
        if not ready:
            raise errors.Pending(f"tier {src.name} is still recalling {inode.archive_location}")
        dst_key = new_key()
        await fs.cat(fs.catalog.update_job, job.id, {"dst_key": dst_key, "target_tier": dst.name})
        job.target_tier = dst.name   # the tier a wait for space is about
        try:
            sha, n = await self._copy(src, inode.archive_location, dst, dst_key, expect_sha=inode.checksum,
                                      fault="restore.after_copy")
        except (errors.ChecksumMismatch, errors.ObjectMissing) as e:
            await self._discard(job, dst, dst_key)
            await fs.cat(fs.catalog.switch, Transition(inode.ino, inode.data_version, (State.RESTORING,),
                                                       Changes(state=State.LOST), "restore", str(e)))
            await fs.fetch(fs.catalog.get, inode.ino)
            log.error("inode %d is lost: %s", inode.ino, e)
            # The file is lost now: no later attempt can restore it (fsck brings it back if the copy returns).
            raise errors.TierfsError(f"inode {inode.ino} is lost: {e}") from e
        except BaseException as e:
            await self._abandon(job, inode, dst, dst_key, State.ARCHIVED, f"copy failed: {e}")
            raise
        async with fs.lock(inode.ino):
            try:
                await fs.fetch(fs.catalog.switch, Transition(
                    inode.ino, inode.data_version, (State.RESTORING,),
                    Changes(state=State.DUAL, tier=dst.name, location=dst_key, checksum=sha, atime_ns=now_ns()),
                    job.cause, f"{src.name} -> {dst.name}, {n} bytes", job_id=job.id))
            except (errors.VersionConflict, errors.NotFound):
                # Truncated (O_TRUNC) or deleted while restoring: this copy is not needed.
                await self._discard(job, dst, dst_key)
                return
        await fs.invalidate(inode.ino)
        faults.point("restore.after_switch")
        await self._log_done("restored", inode, src.name, dst.name, n, t0, job.cause)

    async def migrate(self, job: Job, inode: Inode) -> None:
        fs = self.fs
        # Read the version under the inode lock, as archive's _mark does: a truncate bumps the
        # version before it shrinks the object (both under the lock), so a version read in
        # between let the copy take the old bytes and the switch succeed (fsx, under load).
        async with fs.lock(inode.ino):
            inode = await fs.fetch(fs.catalog.get, inode.ino)
        if inode.state not in READABLE_STATES:
            raise errors.Invalid(f"inode {inode.ino} is {inode.state}; restore it before migrating")
        if inode.tier == job.target_tier:
            return
        if fs.writers.get(inode.ino):
            raise Retry("file is open for writing", BUSY_RETRY_S, count=False)
        src, dst = fs.tier(inode.tier), fs.tier(job.target_tier)
        t0 = time.monotonic()
        version = inode.data_version
        dst_key = new_key()
        await fs.cat(fs.catalog.update_job, job.id, {"dst_key": dst_key})
        try:
            sha, n = await self._copy(src, inode.location, dst, dst_key, expect_sha=inode.checksum,
                                      fault="migrate.after_copy")
        except BaseException as e:
            await self._discard(job, dst, dst_key)
            if isinstance(e, errors.ChecksumMismatch) and await self._changed_since(inode, version):
                raise Retry("file changed during the copy", BUSY_RETRY_S, count=False) from None
            raise
        async with fs.lock(inode.ino):
            if fs.writers.get(inode.ino):
                await self._discard(job, dst, dst_key)
                raise Retry("file was opened for writing during the copy", BUSY_RETRY_S, count=False)
            try:
                # The version moves on with the location: a concurrent archive of the same file
                # (which copied from the old location) must fail its compare-and-swap, or it would
                # switch to its own copy and strand this one on the destination tier.
                await fs.fetch(fs.catalog.switch, Transition(
                    inode.ino, version, (inode.state,),
                    Changes(tier=dst.name, location=dst_key, checksum=sha, data_version=version + 1),
                    job.cause, f"{src.name} -> {dst.name}, {n} bytes", garbage=((src.name, inode.location),),
                    job_id=job.id, no_writers_except=fs.session_id))
            except errors.VersionConflict:
                await self._discard(job, dst, dst_key)
                raise Retry("file changed during the copy", BUSY_RETRY_S, count=False)
            except errors.NotFound:  # deleted (and purged) during the copy: nothing to migrate
                await self._discard(job, dst, dst_key)
                return
        faults.point("migrate.after_switch")
        await self._log_done("migrated", inode, src.name, dst.name, n, t0, job.cause)
        if fs.on_change:
            fs.on_change()
