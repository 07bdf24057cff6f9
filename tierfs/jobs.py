"""The job runner: claims jobs from the catalog and runs them as moves.

What a job does is the move protocol (tierfs/moves.py); this module decides
when it runs and what its outcome means for the job: restores run before
everything else (priority 0); at most `tier_concurrency` jobs per
destination tier run at once; failures wait, retry or fail the job (JobRunner).
"""

from __future__ import annotations

import logging
import time

import trio

from . import errors
from .catalog.base import Job, JobKind, JobState
from .moves import Mover, Retry
from .tierhealth import TierHealth

log = logging.getLogger(__name__)

POLL_S = 1.0
#: last_error of a job that waits for a tier (or space) to come back: `tierfs queue` shows it as waiting
WAITING = "waiting: "


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
    COUNTED = (errors.ObjectMissing, errors.ChecksumMismatch, errors.CopytoolFailed)
    DECLINE_S = 600.0   # how long a job needing a tier this mount lacks is left to others

    def __init__(self, fs, cfg, ended=None):
        self.fs = fs
        #: told of every job that ended, done (error None) or failed (notify.Notifier.job_ended); never blocks
        self.ended = ended or (lambda job, error: None)
        self.cfg = cfg
        self.moves = Mover(fs, cfg)
        self.busy: dict[str, int] = {}      # destination tier -> running jobs
        self.running = 0
        self._wake = trio.Event()
        self.health = TierHealth(fs.tiers, fs.cat, fs.catalog.set_meta, lambda: fs.session_id)
        self.waits: dict[int, int] = {}      # job id -> consecutive waits (the backoff exponent)
        self.declined: dict[int, float] = {}  # job id -> monotonic time until which others may take it

    @property
    def session_id(self) -> str:
        """This mount's session now (heartbeat.py registers a new one after a reap)."""
        return self.fs.session_id

    def wake(self) -> None:
        self._wake.set()

    def stop_waiting(self) -> None:
        """Unmount: jobs waiting inside a tier for a batch stop waiting (Tier.stop_waiting)."""
        for t in self.fs.tiers.values():
            t.stop_waiting()

    def _limit(self, tier: str) -> int:
        """Jobs that may run at once towards `tier`."""
        t = self.fs.tiers.get(tier)
        return max(self.cfg.tier_concurrency, t.batch_slots if t is not None else 0)

    def _parks(self, job: Job) -> bool:
        """An archive to a tier that batches them waits inside put() for its
        batch (tiers/command.py): it holds no worker, or two workers would
        make every batch a batch of two."""
        t = self.fs.tiers.get(job.target_tier or "")
        return job.kind == JobKind.ARCHIVE and t is not None and t.batch_slots > 0

    async def run(self) -> None:
        await self.moves.recover()
        # Parked archive jobs each hold a thread (put() waits in it): room for them beyond trio's 40.
        trio.to_thread.current_default_thread_limiter().total_tokens += sum(
            t.batch_slots for t in self.fs.tiers.values())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.health.run, self._tier_back)
            while True:
                started = False
                free = self.running < self.cfg.workers
                # Workers all busy: archives to a batching tier with room may still start.
                batching = [n for n, t in self.fs.tiers.items() if t.batch_slots > self.busy.get(n, 0)]
                if free or batching:
                    busy = [t for t, n in self.busy.items() if n >= self._limit(t)]
                    now = time.monotonic()
                    self.declined = {j: t for j, t in self.declined.items() if t > now}
                    try:
                        job = await self.fs.cat(self.fs.catalog.claim, self.session_id,
                                                None if free else [JobKind.ARCHIVE], busy,
                                                tiers=list(self.fs.tiers) if free else batching,
                                                skip=list(self.declined))
                    except errors.TierfsError as e:
                        log.warning("claiming jobs: %s", e)
                        job = None
                    if job is not None:
                        parked = self._parks(job)
                        self.running += not parked
                        tier = job.target_tier or ""
                        self.busy[tier] = self.busy.get(tier, 0) + 1
                        nursery.start_soon(self._run_one, job, tier, parked)
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

    async def _run_one(self, job: Job, tier: str, parked: bool = False) -> None:
        t0 = time.monotonic()
        waited: errors.TierfsError | None = None
        try:
            try:
                await self.moves.run(job)
            except errors.Fenced as e:
                log.warning("job %d (%s inode %d) abandoned: %s", job.id, job.kind, job.ino, e)
            except self.TRANSIENT as e:
                waited = e
                await self._wait(job, e)
            except Retry as r:
                if r.count and job.attempts >= self.cfg.job_max_attempts:
                    await self._fail(job, f"{r} (after {job.attempts} attempts)")
                else:
                    log.info("job %d (%s inode %d): %s; retrying in %.0fs", job.id, job.kind, job.ino, r, r.delay)
                    await self._record(self.fs.catalog.retry_job, job, str(r), r.delay, count=r.count)
            except self.COUNTED as e:
                if job.attempts >= self.cfg.job_max_attempts:
                    await self._fail(job, f"{e} (after {job.attempts} attempts)")
                else:
                    log.warning("job %d (%s inode %d): %s; attempt %d of %d, retrying in %.0fs", job.id, job.kind,
                                job.ino, e, job.attempts, self.cfg.job_max_attempts, self.cfg.job_retry_delay)
                    await self._record(self.fs.catalog.retry_job, job, str(e), self.cfg.job_retry_delay)
            except errors.UnknownTier as e:
                self.declined[job.id] = time.monotonic() + self.DECLINE_S
                log.info("job %d (%s inode %d): %s; leaving it to a mount that has the tier", job.id, job.kind,
                         job.ino, e)
                await self._record(self.fs.catalog.retry_job, job, f"waiting for a mount with the tier: {e}", 0,
                                   count=False)
            except errors.TierfsError as e:
                await self._fail(job, str(e))
            except Exception as e:  # noqa: BLE001 - a bug must not kill the runner
                log.exception("job %d (%s inode %d) crashed", job.id, job.kind, job.ino)
                await self._fail(job, f"internal error: {e!r}")
            else:
                if await self._record(self.fs.catalog.finish_job, job, JobState.DONE):
                    self.ended(job, None)
        finally:
            self.running -= not parked
            self.busy[tier] -= 1
            self.wake()
            if waited is None:
                self.waits.pop(job.id, None)
            if job.kind == JobKind.RESTORE:
                self.fs.offline.restore_finished(job.ino, waited if isinstance(waited, errors.NoSpace) else None)
            log.debug("job %d took %.2fs", job.id, time.monotonic() - t0)

    async def _wait(self, job: Job, e: errors.TierfsError) -> None:
        """A transient failure: back to the queue with backoff; not an attempt."""
        n = self.waits.get(job.id, 0)
        self.waits[job.id] = n + 1
        delay = min(self.cfg.job_retry_delay * 2 ** min(n, 30), max(self.cfg.job_retry_max_delay,
                                                                    self.cfg.job_retry_delay))
        hint = e.retry_s if isinstance(e, errors.Pending) else None
        if hint is not None:   # the tier knows when to ask again (a batch due in 3 s): no backoff
            delay = max(hint, 0.1)
        why = None
        if isinstance(e, (errors.TierUnavailable, errors.NoSpace)):
            inode = self.fs.cached(job.ino)
            need = inode.size if inode is not None and isinstance(e, errors.NoSpace) else 0
            names = [job.target_tier] + ([inode.tier, inode.archive_tier] if inode is not None else [])
            why = await self.health.diagnose(names, need)
        reason = why or str(e)
        # One line when the wait starts (a batch tier's "queued": info, the tier logs each batch); then debug.
        level = log.debug if n else log.info if hint is not None else log.warning
        level("job %d (%s inode %d) waits: %s; next attempt in %.0fs", job.id, job.kind, job.ino, reason, delay)
        await self._record(self.fs.catalog.retry_job, job, f"{WAITING}{reason}", delay, count=False)

    async def _record(self, fn, job: Job, *args, **kw) -> bool:
        """Job bookkeeping in the catalog, fenced by the session that claimed
        the job; while the catalog is unreachable, try again (the job stays
        ours meanwhile, running) rather than end the runner. False: the job
        is no longer ours (our session was reaped): nothing was recorded."""
        delay = 1.0
        while True:
            try:
                await self.fs.cat(fn, job.id, *args, session=job.session, **kw)
                return True
            except errors.Fenced as e:
                log.warning("job %d (%s inode %d) abandoned: %s", job.id, job.kind, job.ino, e)
                return False
            except errors.CatalogUnavailable as e:
                log.warning("recording job %s: %s; trying again in %.0fs", job.id, e, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _fail(self, job: Job, msg: str) -> None:
        log.error("job %d (%s inode %d) failed: %s", job.id, job.kind, job.ino, msg)
        try:
            if not await self._record(self.fs.catalog.finish_job, job, JobState.FAILED, msg):
                return   # another mount runs it now: the file's state is its business
        except errors.TierfsError as e:
            log.error("recording failure of job %d: %s", job.id, e)
        await self.moves.failed(job, msg)
        self.ended(job, msg)
