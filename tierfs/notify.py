"""Telling people that a restore (or an archive) is done: `notify_command`.

The job runner reports every job that ended (`Notifier.job_ended`, which
never blocks and never fails); this service turns the ends that matter into
events and runs the configured command for them, off the job path: a slow or
broken notifier delays no restore.

Events (TIERFS_EVENT): `restored` (a restore job done, the file readable),
`restore_failed` (a restore job failed, the file still archived), `lost` (a
restore found the archive copy missing or corrupt: the file is lost),
`archived` (an archive job done, the file archived or dual).

The command never goes through a shell and gets no file name on its command
line: `notify_command` is split like a shell would (shlex) once, at load
(settings.py), and the facts arrive only in environment variables, so no name
can be interpreted. Its environment is built from scratch (PATH, HOME, LANG, LC_*,
TZ, USER, LOGNAME of the daemon, then TIERFS_*): nothing else the daemon
holds in its environment reaches it.

Batching: the events of one kind for one requester make one run while that
requester still has jobs of that kind queued or running, and for
`notify_batch_window` after the last event (a `tierfs restore -r` of 200
files: one run with TIERFS_COUNT=200, however slow the medium: measured, a
vault with restore_delay 3 s ended restores two at a time every 3 s, and a
2 s window alone made three runs of a 6-file restore). A batch goes at the
latest MAX_HOLD_S after its first event, or at BATCH_MAX events (a restore of
a day's tapes is told hour by hour); `notify_batch_window = 0`: one run per
event. Every run has a deadline (`notify_timeout`: its whole process group is
then killed); its failure is one log line, never a job failure. At most
RUNNERS commands run at once; at unmount, what is gathered is sent.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import trio

from . import errors
from .catalog.base import ACTIVE_JOB_STATES, READABLE_STATES, Job, JobKind, State
from .display import printable

log = logging.getLogger(__name__)

RUNNERS = 4                 # commands running at once; more wait for a slot (their events are kept)
QUEUE = 100_000             # job ends not yet looked at; beyond this they are dropped, with one log line
MAX_HOLD_S = 3600.0         # a batch is sent at the latest an hour after its first event
BATCH_MAX = 10_000          # ... or once it holds this many events
#: queued jobs looked at to see whether a requester still has some of a kind (restores sort first)
QUEUED_SCAN = 10_000
#: what the command inherits from the daemon's environment (the -o options and credentials stay behind)
INHERITED = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

RESTORED, RESTORE_FAILED, ARCHIVED, LOST = "restored", "restore_failed", "archived", "lost"


def user_name(uid: int | None) -> str:
    """The user name of `uid` (the number when it has none); "" for None (the daemon: a policy)."""
    if uid is None:
        return ""
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass
class Event:
    kind: str                  # RESTORED, RESTORE_FAILED, ARCHIVED, LOST
    ino: int
    path: bytes                # inside the mount, from its root: b"/ds/f1"
    size: int
    tier: str                  # where the bytes are now (the archive tier when only there)
    uid: int | None            # who asked (Job.uid); None: the daemon (a policy, recovery)
    cause: str                 # the job's cause: "command restore by uid 1000", "policy rule 'cold'"
    reason: str                # the cause when it went well, the error when not


@dataclass
class Batch:
    job_kind: JobKind          # the jobs whose ends it gathers (restore: restored, restore_failed, lost)
    uid: int | None
    events: list[Event] = field(default_factory=list)
    opened: float = 0.0        # monotonic time of the first event
    due: float = 0.0           # when to send it, or look again whether the requester has jobs left

    def ripe(self, now: float) -> bool:
        return len(self.events) >= BATCH_MAX or now >= self.opened + MAX_HOLD_S


def environment(events: list[Event], mountpoint: str, paths_file: str, lines_file: str) -> dict[bytes, bytes]:
    """The command's environment for one run over `events` (one kind, one requester)."""
    first = events[0]
    env = {k.encode(): os.environb[k.encode()] for k in INHERITED if k.encode() in os.environb}
    env.update((k, v) for k, v in os.environb.items() if k.startswith(b"LC_"))
    env.setdefault(b"PATH", DEFAULT_PATH.encode())
    paths = [e.path for e in events]
    common = os.path.commonpath(paths) if len(events) > 1 else os.path.dirname(first.path)
    facts = {
        "EVENT": first.kind, "MOUNT": mountpoint, "PATH": first.path, "DIR": common or b"/",
        "INO": str(first.ino), "SIZE": str(first.size), "TIER": first.tier,
        "UID": "" if first.uid is None else str(first.uid), "USER": user_name(first.uid),
        "CAUSE": first.cause, "REASON": first.reason,
        "COUNT": str(len(events)), "BYTES": str(sum(e.size for e in events)),
        "PATHS_FILE": paths_file, "PATHS_LINES_FILE": lines_file,
    }
    for k, v in facts.items():
        # Environment strings end at a NUL: a message carrying one must not make the run fail.
        env[b"TIERFS_" + k.encode()] = (v if isinstance(v, bytes) else os.fsencode(v)).replace(b"\0", b"")
    return env


class Notifier:
    """Runs notify_command for the ends of jobs (a background service)."""

    def __init__(self, fs, cfg, mountpoint: str = ""):
        self.fs = fs
        self.cfg = cfg                  # the live Config: notify_* may change at a reload
        self.mountpoint = mountpoint
        self._send, self._recv = trio.open_memory_channel(QUEUE)
        self._dropped = 0
        self._batches: dict[tuple[str, int | None], Batch] = {}
        self._slots = trio.CapacityLimiter(RUNNERS)
        self._nursery: trio.Nursery | None = None   # run()'s: the runs live there
        self._runs = 0                  # runs started (or waiting for a slot), not finished
        self._untold = 0                # ... and the events they carry
        self._idle = trio.Event()       # set when _runs drops to 0

    # ---- from the job runner -------------------------------------------------
    def job_ended(self, job: Job, error: str | None) -> None:
        """A job ended: done (`error` None) or failed with `error`. Never blocks."""
        if not self.cfg.notify_command or job.kind not in (JobKind.RESTORE, JobKind.ARCHIVE):
            return
        try:
            self._send.send_nowait((job, error))
        except trio.WouldBlock:
            self._dropped += 1
            if self._dropped == 1:
                log.warning("notify_command: %d job ends waiting to be looked at; dropping further ones", QUEUE)

    # ---- the service ---------------------------------------------------------
    async def run(self) -> None:
        async with trio.open_nursery() as self._nursery:
            while True:
                due = min((b.due for b in self._batches.values()), default=math.inf)
                with trio.move_on_after(max(0.0, due - time.monotonic()) if due < math.inf else math.inf):
                    job, error = await self._recv.receive()
                    with trio.CancelScope(shield=True):   # a deadline here must not drop the job's end
                        await self._take(job, error)
                await self._send_due(force=False)

    def wake(self) -> None:
        pass

    async def stop(self) -> None:
        """At unmount: what is gathered is sent now, and the runs get one
        notify_timeout in all to finish (then the daemon's end kills them: an
        unmount must not wait 400 runs of a hung notifier)."""
        if self._nursery is None:
            return   # never started
        while True:
            try:
                job, error = self._recv.receive_nowait()
            except trio.WouldBlock:
                break
            await self._take(job, error)
        await self._send_due(force=True)
        with trio.move_on_after(self.cfg.notify_timeout):
            while self._runs:
                self._idle = trio.Event()
                await self._idle.wait()
        if self._runs:
            log.warning("unmount: %d notify_command run(s) for %d event(s) not done within notify_timeout (%.0fs): "
                        "dropped", self._runs, self._untold, self.cfg.notify_timeout)

    # ---- events and batches -------------------------------------------------
    async def _take(self, job: Job, error: str | None) -> None:
        try:
            ev = await self._event(job, error)
        except errors.TierfsError as e:
            log.warning("notify_command: job %d (%s inode %d): cannot look at the file: %s", job.id, job.kind,
                        job.ino, e)
            return
        if ev is None:
            return
        now = time.monotonic()
        batch = self._batches.setdefault((ev.kind, ev.uid), Batch(job.kind, ev.uid, opened=now))
        batch.events.append(ev)
        batch.due = now + self.cfg.notify_batch_window

    async def _event(self, job: Job, error: str | None) -> Event | None:
        """The event a job's end makes, None for one nobody needs to hear of
        (nothing moved; the file deleted meanwhile)."""
        fs = self.fs
        try:
            inode = await fs.cat(fs.catalog.get, job.ino)
            path = b"/" + await fs.cat(fs.catalog.path_of, job.ino)
        except errors.NotFound:
            return None
        if job.kind == JobKind.RESTORE:
            if error is not None:
                kind = LOST if inode.state == State.LOST else RESTORE_FAILED
            elif inode.state in READABLE_STATES:
                kind = RESTORED
            else:
                return None
        elif error is None and inode.state in (State.ARCHIVED, State.DUAL):
            kind = ARCHIVED
        else:
            return None
        tier = inode.archive_tier if kind == ARCHIVED or not inode.tier else inode.tier
        return Event(kind, inode.ino, path, inode.size, tier or "", job.uid, job.cause,
                     job.cause if error is None else error)

    async def _send_due(self, force: bool) -> None:
        """Send the batches whose window passed and whose requester has no
        job of their kind left (all of them when `force`: the unmount)."""
        now = time.monotonic()
        due = [k for k, b in self._batches.items() if force or now >= b.due]
        if not due:
            return
        # window 0: one run per event, nothing held
        queued = await self._queued() if not force and self.cfg.notify_batch_window > 0 else set()
        for key in due:
            b = self._batches[key]
            if (b.job_kind, b.uid) in queued and not b.ripe(now):
                b.due = now + max(self.cfg.notify_batch_window, 1.0)   # look again then
                continue
            del self._batches[key]
            self._runs += 1
            self._untold += len(b.events)
            self._nursery.start_soon(self._run_command, b.events)

    async def _queued(self) -> set[tuple[JobKind, int | None]]:
        """(kind, requester) of the jobs queued or running (any mount)."""
        fs = self.fs
        try:
            with trio.CancelScope(shield=True):
                jobs = await fs.cat(fs.catalog.jobs, ACTIVE_JOB_STATES, None, QUEUED_SCAN)
        except errors.TierfsError as e:
            log.debug("notify_command: cannot read the queue (%s): sending what is due", e)
            return set()
        return {(j.kind, j.uid) for j in jobs}

    # ---- one run ------------------------------------------------------------
    async def _run_command(self, events: list[Event]) -> None:
        try:
            async with self._slots:
                argv = self.cfg.notify_command
                if not argv:
                    return
                what = f"{events[0].kind} of {printable(events[0].path)}" + \
                    (f" and {len(events) - 1} more" if len(events) > 1 else "")
                t0 = time.monotonic()
                try:
                    await self._run(argv, events, what, t0)
                except Exception:  # noqa: BLE001 - a notifier's trouble must never reach the mount
                    log.exception("notify_command for %s", what)
        finally:
            self._runs -= 1
            self._untold -= len(events)
            if not self._runs:
                self._idle.set()

    async def _run(self, argv: list[str], events: list[Event], what: str, t0: float) -> None:
        timeout = self.cfg.notify_timeout
        # Two lists of the paths, private to the daemon's user, gone once the command exited:
        # NUL-terminated exact names (for programs: xargs -0), and one per line, escaped like the
        # CLI shows names (a newline in a name is `\n` there: for a mail or a terminal).
        with tempfile.NamedTemporaryFile(prefix="tierfs-notify-", suffix=".paths0") as exact, \
                tempfile.NamedTemporaryFile(prefix="tierfs-notify-", suffix=".paths", mode="w") as lines:
            exact.write(b"".join(e.path + b"\0" for e in events))
            exact.flush()
            lines.write("".join(printable(e.path) + "\n" for e in events))
            lines.flush()
            env = environment(events, self.mountpoint, exact.name, lines.name)
            proc = None
            with trio.move_on_after(timeout) as scope:
                try:
                    proc = await trio.run_process(argv, env=env, cwd="/", stdin=subprocess.DEVNULL,
                                                  stdout=subprocess.DEVNULL, capture_stderr=True, check=False,
                                                  start_new_session=True, deliver_cancel=_kill_group)
                except OSError as e:
                    log.warning("notify_command for %s: cannot run %s: %s", what, printable(argv[0]),
                                e.strerror or e)
                    return
        took = time.monotonic() - t0
        if scope.cancelled_caught:
            log.warning("notify_command for %s: killed after notify_timeout (%.0fs)", what, timeout)
        elif proc.returncode != 0:
            tail = printable(proc.stderr.decode(errors="replace").strip()[-300:])
            log.warning("notify_command for %s: exited %s in %.1fs%s", what, _status(proc.returncode), took,
                        f": {tail}" if tail else "")
        else:
            log.info("notify_command for %s (uid %s): done in %.2fs", what,
                     "-" if events[0].uid is None else events[0].uid, took)


async def _kill_group(proc: trio.Process) -> None:
    """At the deadline the command and whatever it started go: a backgrounded
    child holding its stderr open would otherwise keep the run alive."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _status(rc: int) -> str:
    return f"with signal {signal.Signals(-rc).name}" if rc < 0 else f"with status {rc}"
