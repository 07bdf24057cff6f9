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

import io
import logging
import time

import trio

from . import errors, faults
from .catalog.base import READABLE_STATES, Inode, Job, JobKind, JobState, State, now_ns
from .tiers.base import HashingReader, Tier, new_key
from .units import fmt_size

log = logging.getLogger(__name__)

POLL_S = 1.0
BUSY_RETRY_S = 2.0       # file open for writing: try the move again soon


class Retry(Exception):
    """Put the job back in the queue (not a failure of the job itself)."""

    def __init__(self, msg: str, delay: float, count: bool = True):
        super().__init__(msg)
        self.delay = delay
        self.count = count  # counts towards job_max_attempts


def remember_move(fs, new: Inode) -> Inode:
    """Cache the catalog's copy of a file a move read or switched, keeping the
    cached size and times: moves never change them, and the copy may predate a
    size this mount wrote and is persisting right now (remembering it as is
    made the kernel see the old size: reads stopped short, found by fsx)."""
    c = fs.cache.get(new.ino)
    if c is not None:
        new = new.copy(size=c.inode.size, mtime_ns=c.inode.mtime_ns, ctime_ns=c.inode.ctime_ns)
    return fs.remember(new)


async def release_now(fs, inode: Inode, cause: str) -> Inode:
    """Drop the online copy of a dual file (instant: one catalog switch)."""
    async with fs.lock(inode.ino):
        inode = await fs.get(inode.ino)
        if inode.state != State.DUAL:
            return inode
        if fs.writers.get(inode.ino):
            raise errors.TryAgain(f"inode {inode.ino} is open for writing")
        faults.point("release.before_switch")
        new = await fs.cat(fs.catalog.switch, inode.ino, inode.data_version, [State.DUAL],
                           dict(state=State.ARCHIVED, tier=None, location=None),
                           [(inode.tier, inode.location)], (cause, f"online copy on {inode.tier} released"),
                           no_writers_except=fs.session_id)
        remember_move(fs, new)
    await fs.invalidate(inode.ino)
    log.info("released inode %d: online copy on %s dropped, archive copy on %s (%s)",
             inode.ino, inode.tier, inode.archive_tier, cause)
    if fs.on_change:
        fs.on_change()
    return new


class JobRunner:
    """Claims jobs from the catalog and runs them (a daemon extension)."""

    def __init__(self, fs, cfg, session_id: str):
        self.fs = fs
        self.cfg = cfg
        self.session_id = session_id
        self.busy: dict[str, int] = {}      # destination tier -> running jobs
        self.running = 0
        self._wake = trio.Event()
        if fs.offline is not None:
            fs.offline.wake_jobs = self.wake

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        await self.recover()
        async with trio.open_nursery() as nursery:
            while True:
                started = False
                if self.running < self.cfg.workers:
                    busy = [t for t, n in self.busy.items() if n >= self.cfg.tier_concurrency]
                    try:
                        job = await self.fs.cat(self.fs.catalog.claim, self.session_id, None, busy)
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
                    await fs.cat(fs.catalog.switch, inode.ino, inode.data_version, [state],
                                 dict(state=back), [], ("recovery", "no job was running it"))
                    log.warning("recovery: inode %d was %s with no job; now %s", inode.ino, state, back)
                except errors.VersionConflict:
                    pass

    async def _run_one(self, job: Job, tier: str) -> None:
        t0 = time.monotonic()
        try:
            await self.execute(job)
            await self.fs.cat(self.fs.catalog.finish_job, job.id, JobState.DONE)
        except Retry as r:
            if r.count and job.attempts >= self.cfg.job_max_attempts:
                await self._fail(job, f"{r} (after {job.attempts} attempts)")
            else:
                log.info("job %d (%s inode %d): %s; retrying in %.0fs", job.id, job.kind, job.ino, r, r.delay)
                await self.fs.cat(self.fs.catalog.retry_job, job.id, str(r), r.delay)
        except errors.Pending as e:
            log.info("job %d (%s inode %d) pending: %s", job.id, job.kind, job.ino, e)
            await self.fs.cat(self.fs.catalog.retry_job, job.id, f"pending: {e}", self.cfg.job_retry_delay)
        except (errors.TierUnavailable, errors.CatalogUnavailable, errors.NoSpace) as e:
            if job.attempts >= self.cfg.job_max_attempts:
                await self._fail(job, str(e))
            else:
                log.warning("job %d (%s inode %d): %s; retrying in %.0fs", job.id, job.kind, job.ino, e,
                            self.cfg.job_retry_delay)
                await self.fs.cat(self.fs.catalog.retry_job, job.id, str(e), self.cfg.job_retry_delay)
        except errors.TierfsError as e:
            await self._fail(job, str(e))
        except Exception as e:  # noqa: BLE001 - a bug must not kill the runner
            log.exception("job %d (%s inode %d) crashed", job.id, job.kind, job.ino)
            await self._fail(job, f"internal error: {e!r}")
        finally:
            self.running -= 1
            self.busy[tier] -= 1
            self.wake()
            if job.kind == JobKind.RESTORE and self.fs.offline is not None:
                self.fs.offline.restore_finished(job.ino)
            log.debug("job %d took %.2fs", job.id, time.monotonic() - t0)

    async def _fail(self, job: Job, msg: str) -> None:
        log.error("job %d (%s inode %d) failed: %s", job.id, job.kind, job.ino, msg)
        try:
            await self.fs.cat(self.fs.catalog.finish_job, job.id, JobState.FAILED, msg)
        except errors.TierfsError as e:
            log.error("recording failure of job %d: %s", job.id, e)

    # ---- the moves ---------------------------------------------------------
    async def execute(self, job: Job) -> None:
        fs = self.fs
        try:
            inode = remember_move(fs, await fs.cat(fs.catalog.get, job.ino))
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
            await trio.to_thread.run_sync(tier.delete, job.dst_key)
        await self.fs.cat(self.fs.catalog.update_job, job.id, {"dst_key": None})

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
                new = await fs.cat(fs.catalog.switch, inode.ino, inode.data_version, [inode.state],
                                   dict(state=to_state), [], (cause, detail), no_writers_except=fs.session_id)
            except errors.VersionConflict as e:
                raise Retry(str(e), BUSY_RETRY_S, count=False) from None  # changed, or written on another mount
            return remember_move(fs, new)

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
        src = fs.tier(inode.tier)
        t0 = time.monotonic()
        if inode.state != State.ARCHIVING:
            inode = await self._mark(inode, (State.ONLINE, State.DUAL), State.ARCHIVING, job.cause,
                                     f"to {dst.name}")
        else:  # a re-run after a crash: read the version under the lock too (see migrate)
            async with fs.lock(inode.ino):
                inode = remember_move(fs, await fs.cat(fs.catalog.get, inode.ino))
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
        except BaseException:
            await self._abandon(job, inode, dst, dst_key, State.ONLINE, "copy failed")
            raise
        faults.point("archive.after_verify")
        final = State.DUAL if job.keep_online else State.ARCHIVED
        changes = dict(state=final, archive_tier=dst.name, archive_location=dst_key, checksum=sha)
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
                new = await fs.cat(fs.catalog.switch, inode.ino, version, [State.ARCHIVING], changes, garbage,
                                   (job.cause, f"{src.name} -> {dst.name}, {n} bytes"), job.id,
                                   no_writers_except=fs.session_id)
            except errors.VersionConflict:
                await self._abandon(job, inode, dst, dst_key, State.ONLINE, "changed during the copy")
                raise Retry("file changed during the copy", BUSY_RETRY_S, count=False)
            except errors.NotFound:  # deleted (and purged) during the copy: nothing to archive
                await self._abandon(job, inode, dst, dst_key, State.ONLINE, "deleted during the copy")
                return
            remember_move(fs, new)
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
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(dst.delete, dst_key)
                await fs.cat(fs.catalog.update_job, job.id, {"dst_key": None})
            except errors.TierfsError as e:
                log.warning("job %d: could not delete %s/%s (%s); fsck will find it", job.id, dst.name, dst_key, e)
            try:
                cur = await fs.cat(fs.catalog.get, inode.ino)
                mid = State.RESTORING if back == State.ARCHIVED else State.ARCHIVING
                if mid == State.ARCHIVING:
                    back = State.DUAL if cur.archive_tier else State.ONLINE
                if cur.state == mid:
                    remember_move(fs, await fs.cat(fs.catalog.switch, inode.ino, cur.data_version, [mid],
                                             dict(state=back), [], (job.cause, why)))
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
        try:
            sha, n = await self._copy(src, inode.archive_location, dst, dst_key, expect_sha=inode.checksum,
                                      fault="restore.after_copy")
        except (errors.ChecksumMismatch, errors.ObjectMissing) as e:
            await trio.to_thread.run_sync(dst.delete, dst_key)
            await fs.cat(fs.catalog.switch, inode.ino, inode.data_version, [State.RESTORING],
                         dict(state=State.LOST), [], ("restore", str(e)))
            remember_move(fs, await fs.cat(fs.catalog.get, inode.ino))
            log.error("inode %d is lost: %s", inode.ino, e)
            raise
        except BaseException:
            await self._abandon(job, inode, dst, dst_key, State.ARCHIVED, "restore copy failed")
            raise
        async with fs.lock(inode.ino):
            try:
                new = await fs.cat(fs.catalog.switch, inode.ino, inode.data_version, [State.RESTORING],
                                   dict(state=State.DUAL, tier=dst.name, location=dst_key, checksum=sha,
                                        atime_ns=now_ns()),
                                   [], (job.cause, f"{src.name} -> {dst.name}, {n} bytes"), job.id)
            except (errors.VersionConflict, errors.NotFound):
                # Truncated (O_TRUNC) or deleted while restoring: this copy is not needed.
                await trio.to_thread.run_sync(dst.delete, dst_key)
                return
            remember_move(fs, new)
        await fs.invalidate(inode.ino)
        faults.point("restore.after_switch")
        await self._log_done("restored", inode, src.name, dst.name, n, t0, job.cause)

    async def migrate(self, job: Job, inode: Inode) -> None:
        fs = self.fs
        # Read the version under the inode lock, as archive's _mark does: a truncate bumps the
        # version before it shrinks the object (both under the lock), so a version read in
        # between let the copy take the old bytes and the switch succeed (fsx, under load).
        async with fs.lock(inode.ino):
            inode = remember_move(fs, await fs.cat(fs.catalog.get, inode.ino))
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
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(dst.delete, dst_key)
            if isinstance(e, errors.ChecksumMismatch) and await self._changed_since(inode, version):
                raise Retry("file changed during the copy", BUSY_RETRY_S, count=False) from None
            raise
        async with fs.lock(inode.ino):
            if fs.writers.get(inode.ino):
                await trio.to_thread.run_sync(dst.delete, dst_key)
                raise Retry("file was opened for writing during the copy", BUSY_RETRY_S, count=False)
            try:
                # The version moves on with the location: a concurrent archive of the same file
                # (which copied from the old location) must fail its compare-and-swap, or it would
                # switch to its own copy and strand this one on the destination tier.
                new = await fs.cat(fs.catalog.switch, inode.ino, version, [inode.state],
                                   dict(tier=dst.name, location=dst_key, checksum=sha, data_version=version + 1),
                                   [(src.name, inode.location)], (job.cause, f"{src.name} -> {dst.name}, {n} bytes"),
                                   job.id, no_writers_except=fs.session_id)
            except errors.VersionConflict:
                await trio.to_thread.run_sync(dst.delete, dst_key)
                raise Retry("file changed during the copy", BUSY_RETRY_S, count=False)
            except errors.NotFound:  # deleted (and purged) during the copy: nothing to migrate
                await trio.to_thread.run_sync(dst.delete, dst_key)
                return
            remember_move(fs, new)
        faults.point("migrate.after_switch")
        await self._log_done("migrated", inode, src.name, dst.name, n, t0, job.cause)
        if fs.on_change:
            fs.on_change()
