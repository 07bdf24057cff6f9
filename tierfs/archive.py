"""The offline-file contract: what happens when someone touches a file whose
bytes are (also) on an archive tier, and the requests users make through
the mount.

- Opening an archived file restores it: `restore_mode = "block"` waits (all
  openers of one file share one restore; bounded by `block_timeout`, then
  EAGAIN while the restore goes on); `"error"`, or O_NONBLOCK in either
  mode, fails at once with EAGAIN after queueing the restore (DMAPI style).
- O_TRUNC / truncate to 0 of an archived file needs no restore: the file
  gets a new empty online object and the archive copy is dropped.
- The first write to a `dual` file makes it `online` (the archive copy is
  no longer current and goes to garbage).
- Requests arrive as setxattr of `user.tierfs.request` ("archive",
  "archive keep_online to=TIER", "restore", "release", "migrate to=TIER",
  "cancel"), so the daemon knows the caller's uid and checks permissions:
  the owner, root, or a member of the `archivers` group.
- `user.tierfs.info` (read-only) returns JSON with the whole catalog entry,
  recent history and queued jobs: what `tierfs state` prints.
- Access tracking: opens (or reads, with track = "read") set the cached
  atime at once; the catalog gets them in batches (`flush_atimes`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time

import trio

from . import errors
from .catalog.base import ACTIVE_JOB_STATES, JobKind, JobState, READABLE_STATES, Changes, Inode, State, Transition, now_ns
from .tiers.base import new_key

log = logging.getLogger(__name__)

REQUEST_XATTR = b"user.tierfs.request"
INFO_XATTR = b"user.tierfs.info"
PLACEMENT_XATTR = b"user.tierfs.placement"
STATS_XATTR = b"user.tierfs.stats"
POLL_S = 1.0


def caller_groups(caller) -> set[int]:
    """The caller's primary and supplementary groups (from /proc)."""
    groups = {caller.gid}
    try:
        with open(f"/proc/{caller.pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return groups


def parse_request(value: bytes) -> tuple[str, dict]:
    """b"archive keep_online to=vault" -> ("archive", {"keep_online": True, "to": "vault"})."""
    try:
        words = value.decode().strip().split()
    except UnicodeDecodeError:
        raise errors.Invalid("request is not text") from None
    if not words:
        raise errors.Invalid("empty request")
    verb, opts = words[0], {}
    if verb not in ("archive", "restore", "release", "migrate", "cancel"):
        raise errors.Invalid(f"unknown request {verb!r} (archive, restore, release, migrate, cancel)")
    allowed = {"archive": {"keep_online", "to"}, "migrate": {"to"}, "restore": {"to"}}.get(verb, set())
    for w in words[1:]:
        k, eq, v = w.partition("=")
        if k not in allowed:
            raise errors.Invalid(f"request {verb!r} takes no option {k!r}")
        if k == "to" and not v:   # "to=" would silently mean the default tier
            raise errors.Invalid("to= needs a tier name")
        if k == "keep_online" and eq:
            raise errors.Invalid("keep_online takes no value")
        opts[k] = v if eq else True
    return verb, opts


def _group_id(name: str | None) -> int | None:
    if not name:
        return None
    import grp
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise errors.ConfigError(f"archivers: no group named {name!r}") from None


class Offline:
    """Restore-on-open, requests, and access tracking for one FileSystem."""

    def __init__(self, fs, cfg):
        self.fs = fs
        self.cfg = cfg                  # the daemon's live Config (a SIGHUP reload changes it in place)
        self.restore_events: dict[int, trio.Event] = {}
        self.restore_full: dict[int, errors.NoSpace] = {}  # restores waiting for space on their online tier
        self.waiters = 0
        self.max_waiters = 512          # blocked opens beyond this get EAGAIN at once
        self.atimes: dict[int, int] = {}  # ino -> latest access not yet in the catalog
        self.atime_flushed: dict[int, float] = {}  # ino -> monotonic time of its last catalog write
        self.config_changed()           # ConfigError (stops the mount) for an unknown archivers group
        self.wake_jobs = lambda: None   # set by the JobRunner

    def check_config(self, cfg) -> None:
        """ConfigError unless the `archivers` group of `cfg` exists (a reload)."""
        _group_id(cfg.archivers)

    def config_changed(self) -> None:
        """The live Config was replaced (a reload): re-derive what is kept resolved."""
        self.archivers_gid = _group_id(self.cfg.archivers)

    @property
    def track_reads(self) -> bool:
        return self.cfg.track == "read"

    # ---- access tracking -------------------------------------------------
    def accessed(self, inode: Inode, flags: int) -> None:
        if flags & os.O_ACCMODE == os.O_WRONLY:
            return  # only reading counts as an access (a write updates mtime instead)
        t = now_ns()
        cached = self.fs.cache.peek(inode.ino)
        if cached is not None and t - cached.atime_ns > 1_000_000:
            self.fs.cache.set(inode.ino, atime_ns=t)
        self.atimes[inode.ino] = t

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
        await self.queue(inode, "restore", {}, caller, cause=f"open by uid {caller.uid} (pid {caller.pid})",
                         check_perm=False)
        self._raise_if_full(inode.ino)
        if self.cfg.restore_mode == "error" or flags & os.O_NONBLOCK:
            raise errors.TryAgain(f"inode {inode.ino} is archived; restore queued")
        if self.waiters >= self.max_waiters:
            raise errors.TryAgain("too many opens waiting for restores")
        self.waiters += 1
        try:
            with trio.move_on_after(self.cfg.block_timeout):
                while True:
                    ev = self.restore_events.setdefault(inode.ino, trio.Event())
                    with trio.move_on_after(POLL_S):
                        await ev.wait()
                    self._raise_if_full(inode.ino)
                    fresh = await self.fs.fetch(self.fs.catalog.get, inode.ino)
                    if fresh.state in READABLE_STATES:
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
                        await self.queue(fresh, "restore", {}, caller, cause="open (requeue)", check_perm=False)
            raise errors.TryAgain(f"restore of inode {inode.ino} did not finish within block_timeout")
        finally:
            self.waiters -= 1

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
        changes = Changes(state=State.ONLINE, tier=tier.name, location=key, archive_tier=None, archive_location=None,
                          size=0, mtime_ns=t, ctime_ns=t, checksum=None, data_version=inode.data_version + 1)
        try:
            new = await self.fs.fetch(self.fs.catalog.switch, Transition(
                inode.ino, inode.data_version, (inode.state,), changes, f"{why} by uid {caller.uid}",
                "archive copy dropped", garbage=((inode.archive_tier, inode.archive_location),)))
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
            inode.ino, inode.data_version, (inode.state,), Changes(state=state, archive_tier=None, archive_location=None),
            "write", f"archive copy on {inode.archive_tier} superseded",
            garbage=((inode.archive_tier, inode.archive_location),)))
        log.info("inode %d: written while dual: now online, archive copy on %s dropped", inode.ino, inode.archive_tier)
        return new

    # ---- requests ----------------------------------------------------------
    def may_manage(self, inode: Inode, caller) -> bool:
        if caller.uid == 0 or caller.uid == inode.uid:
            return True
        return self.archivers_gid is not None and self.archivers_gid in caller_groups(caller)

    def may_read(self, inode: Inode, caller) -> bool:
        if caller.uid == 0:
            return True
        if caller.uid == inode.uid:
            return bool(inode.mode & stat.S_IRUSR)
        if inode.gid in caller_groups(caller):
            return bool(inode.mode & stat.S_IRGRP)
        return bool(inode.mode & stat.S_IROTH)

    async def setxattr(self, ino: int, name: bytes, value: bytes, caller) -> bool:
        if name != REQUEST_XATTR:
            return False
        try:
            verb, opts = parse_request(value)
            inode = await self.fs.get(ino)
            if not inode.is_reg():
                raise errors.Invalid("requests apply to regular files (use tierfs -r for directories)")
            await self.queue(inode, verb, opts, caller, cause=f"command {verb} by uid {caller.uid}")
        except errors.Invalid as e:   # EINVAL carries no reason to the caller: the log does
            log.info("request %r on inode %d by uid %d refused: %s", value.decode(errors="replace"), ino,
                     caller.uid, e)
            raise
        except errors.TierfsError as e:
            if e.errno == errno.EAGAIN:
                # An EAGAIN answer to SETXATTR reaches the caller as EOPNOTSUPP (kernel 6.18, measured):
                # "busy, try again" must not read as "requests are not supported".
                raise errors.TierfsError(str(e), err=errno.EBUSY) from e
            raise
        return True

    async def queue(self, inode: Inode, verb: str, opts: dict, caller, cause: str, check_perm: bool = True):
        """Turn a request into a job (coalesced), or act at once (release, cancel)."""
        fs = self.fs
        if verb == "restore":
            if not self.cfg.allow_unarchive:
                log.warning("restore of inode %d by uid %d refused: allow_unarchive = false (retention)",
                            inode.ino, caller.uid)
                raise errors.PermissionDenied("restores are disabled by the administrator (allow_unarchive = false)")
            if check_perm and not self.may_read(inode, caller):
                raise errors.PermissionDenied(f"uid {caller.uid} may not read inode {inode.ino}")
        elif check_perm and not self.may_manage(inode, caller):
            log.warning("%s of inode %d by uid %d refused: not the owner, root or in the archivers group",
                        verb, inode.ino, caller.uid)
            raise errors.PermissionDenied(f"uid {caller.uid} may not {verb} inode {inode.ino}")
        if verb == "cancel":
            pending = [j.id for j in await fs.cat(fs.catalog.jobs, (JobState.PENDING,), inode.ino)]
            await fs.cat(fs.catalog.cancel_jobs, pending)
            return None
        if verb == "restore":
            target = opts.get("to")
            if target:   # also when nothing needs restoring: a bad request is refused, never ignored
                self._check_tier(target, archive=False, caller=caller)
            if inode.state in READABLE_STATES:
                return None
            if inode.state == State.LOST:
                raise errors.TierfsError(f"inode {inode.ino} is lost; nothing to restore", err=errno.EIO)
            job, created = await fs.cat(fs.catalog.enqueue, inode.ino, JobKind.RESTORE, target_tier=target,
                                        cause=cause)
        elif verb == "release":
            if inode.state == State.DUAL:
                from .jobs import release_now
                await release_now(fs, inode, cause)
            elif inode.state not in (State.ARCHIVED, State.RESTORING):
                raise errors.Invalid(f"inode {inode.ino} is {inode.state}, not dual: archive it first")
            return None
        elif verb == "archive":
            target = opts.get("to") or self.cfg.default_archive
            if not target:
                raise errors.Invalid("no archive tier is configured")
            self._check_tier(target, archive=True, caller=caller)
            if inode.state == State.LOST:
                raise errors.TierfsError(f"inode {inode.ino} is lost", err=errno.EIO)
            if inode.state in (State.ARCHIVED, State.RESTORING):
                return None
            job, created = await fs.cat(fs.catalog.enqueue, inode.ino, JobKind.ARCHIVE, target_tier=target,
                                        keep_online=bool(opts.get("keep_online")), cause=cause)
        elif verb == "migrate":
            target = opts.get("to")
            if not target:
                raise errors.Invalid("migrate needs to=TIER")
            self._check_tier(target, archive=False, caller=caller)
            if inode.state not in READABLE_STATES:
                raise errors.Invalid(f"inode {inode.ino} is {inode.state}: restore it before migrating")
            job, created = await fs.cat(fs.catalog.enqueue, inode.ino, JobKind.MIGRATE, target_tier=target,
                                        cause=cause)
        else:
            raise errors.Invalid(f"unknown request {verb!r}")
        if created:
            log.info("queued %s of inode %d (job %d, %s)", verb, inode.ino, job.id, cause)
            self.wake_jobs()
        return job

    def _check_tier(self, name: str, archive: bool, caller) -> None:
        tier = self.fs.tiers.get(name)
        if tier is None:
            raise errors.Invalid(f"no tier named {name!r}")
        if tier.archive != archive:
            raise errors.Invalid(f"tier {name!r} is {'an archive' if tier.archive else 'an online'} tier")
        if not tier_allows(tier, caller):
            log.warning("uid %d may not use tier %s (allow_users/allow_groups)", caller.uid, name)
            raise errors.PermissionDenied(f"uid {caller.uid} may not use tier {name}")

    # ---- info ----------------------------------------------------------------
    async def getxattr(self, inode: Inode, name: bytes, caller) -> bytes:
        if name == INFO_XATTR:
            return json.dumps(await self.info(inode)).encode()
        if name == STATS_XATTR:
            return json.dumps(self.stats()).encode()
        raise errors.NoAttr()

    def stats(self) -> dict:
        """Counters of this daemon (for tests, benchmarks and `tierfs status`)."""
        fs = self.fs
        return {
            "session": fs.session_id,
            "tiers": {n: {"kind": t.kind, "reads": t.reads} for n, t in fs.tiers.items()},
            "catalog": {"atime_writes": fs.catalog.atime_writes, "rows_read": fs.catalog.rows_read},
            "open_files": len(fs.handles),
            "restore_waiters": self.waiters,
            "pending_atimes": len(self.atimes),
            **fs.staging.stats(),
            **fs.checksums.stats(),
            "requests": dict(fs.requests),
        }

    async def info(self, inode: Inode) -> dict:
        fs = self.fs
        inode = await fs.get(inode.ino)
        d = {k: getattr(inode, k) for k in ("ino", "size", "atime_ns", "mtime_ns", "ctime_ns", "crtime_ns",
                                            "tier", "location", "archive_tier", "archive_location",
                                            "checksum", "data_version", "state_ns", "state_cause", "uid", "gid")}
        d["state"] = str(inode.state)
        d["events"] = [dict(time_ns=e.time_ns, from_state=e.from_state, to_state=e.to_state, cause=e.cause,
                            detail=e.detail) for e in await fs.cat(fs.catalog.events, inode.ino, 10)]
        d["jobs"] = [dict(id=j.id, kind=str(j.kind), state=str(j.state), attempts=j.attempts,
                          last_error=j.last_error, target_tier=j.target_tier, cause=j.cause, created_ns=j.created_ns)
                     for j in await fs.cat(fs.catalog.jobs, None, inode.ino, 20, newest_first=True)]
        return d


def tier_allows(tier, caller) -> bool:
    """allow_users / allow_groups of a tier (names or numbers); root always may."""
    if caller.uid == 0 or (tier.allow_users is None and tier.allow_groups is None):
        return True
    import grp
    import pwd
    for u in tier.allow_users or []:
        try:
            uid = u if isinstance(u, int) else pwd.getpwnam(u).pw_uid
        except KeyError:
            continue
        if uid == caller.uid:
            return True
    groups = caller_groups(caller)
    for g in tier.allow_groups or []:
        try:
            gid = g if isinstance(g, int) else grp.getgrnam(g).gr_gid
        except KeyError:
            continue
        if gid in groups:
            return True
    return False
