"""The requests users make through the mount, and what it tells them.

- Requests arrive as setxattr of `user.tierfs.request` ("archive",
  "archive keep_online to=TIER", "archive to=TIER to=TIER2" (a copy on
  each), "restore", "release", "migrate to=TIER", "cancel"), so the daemon knows the caller's uid and checks permissions:
  the owner, root, or a member of the `archivers` group.
- `user.tierfs.info` (read-only) returns JSON with the whole catalog entry,
  recent history and queued jobs: what `tierfs state` prints;
  `user.tierfs.stats` the daemon's counters (FileSystem.stats).
- A mount without archive machinery gets `NoRequests`: no request
  attributes, and only the owner or root manages a file.
"""

from __future__ import annotations

import errno
import json
import logging
import stat
from typing import TYPE_CHECKING

from . import errors, pins, storage_class, xattrs
from .catalog.base import (READABLE_STATES, Inode, JobKind, JobState, State, copies_of, encode_targets,
                           missing_targets, targets_of)
from .services import Events

if TYPE_CHECKING:
    from .fs import FileSystem

log = logging.getLogger(__name__)



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
        if k == "to" and verb == "archive" and "to" in opts:   # archive to several tiers: a copy on each
            opts.setdefault("more", []).append(v)
            continue
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


class Requests:
    """user.tierfs.request, .info and .stats for one FileSystem."""

    def __init__(self, fs: FileSystem, events: Events):
        self.fs = fs
        self.cfg = fs.cfg               # the daemon's live Config (a SIGHUP reload changes it in place)
        self.events = events            # a queued job wakes the job runner
        self.config_changed()           # ConfigError (stops the mount) for an unknown archivers group

    def check_config(self, cfg) -> None:
        """ConfigError unless the `archivers` group of `cfg` exists (a reload)."""
        _group_id(cfg.archivers)

    def config_changed(self) -> None:
        """The live Config was replaced (a reload): re-derive what is kept resolved."""
        self.archivers_gid = _group_id(self.cfg.archivers)

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
        if name != xattrs.REQUEST:
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
                                        cause=cause, uid=caller.uid)
        elif verb == "release":
            if inode.state == State.DUAL:
                from .moves import release_now
                await release_now(fs, inode, cause)
            elif inode.state not in (State.ARCHIVED, State.RESTORING):
                raise errors.Invalid(f"inode {inode.ino} is {inode.state}, not dual: archive it first")
            return None
        elif verb == "archive":
            target = opts.get("to") or self._archives_here(inode) or self.cfg.default_archive
            if not target:
                raise errors.Invalid("no archive tier is configured")
            more = [t for t in dict.fromkeys(opts.get("more", ())) if t != target]
            for name in (target, *more):
                self._check_tier(name, archive=True, caller=caller, inode=inode,
                                 keep_online=bool(opts.get("keep_online")))
            if more and any(storage_class.in_place(self.fs.tier(t)) for t in (target, *more)):
                raise errors.Invalid("a tier that archives in place cannot be one of several archive targets")
            if inode.state == State.LOST:
                raise errors.TierfsError(f"inode {inode.ino} is lost", err=errno.EIO)
            # (archived in place: the job makes sure the object is in the archive class, storage_class.finish;
            # archived elsewhere: it only gets the copies it lacks, Mover.archive)
            if inode.state == State.RESTORING or (inode.state == State.ARCHIVED and not (
                    target == inode.archive_tier and storage_class.in_place(self.fs.tier(target)))
                    and not missing_targets(inode, [target, *more])):
                return None
            job, created = await fs.cat(fs.catalog.enqueue, inode.ino, JobKind.ARCHIVE, target_tier=target,
                                        keep_online=bool(opts.get("keep_online")), cause=cause, uid=caller.uid,
                                        more_targets=encode_targets(more))
        elif verb == "migrate":
            target = opts.get("to")
            if not target:
                raise errors.Invalid("migrate needs to=TIER")
            self._check_tier(target, archive=False, caller=caller)
            if inode.state not in READABLE_STATES:
                raise errors.Invalid(f"inode {inode.ino} is {inode.state}: restore it before migrating")
            job, created = await fs.cat(fs.catalog.enqueue, inode.ino, JobKind.MIGRATE, target_tier=target,
                                        cause=cause, uid=caller.uid)
        else:
            raise errors.Invalid(f"unknown request {verb!r}")
        if created:
            log.info("queued %s of inode %d (job %d, %s)", verb, inode.ino, job.id, cause)
            self.events.queued()
        return job

    def _archives_here(self, inode: Inode) -> str | None:
        """The default archive target of a file on a tier that archives in
        place: that tier (the operator configured it for its own files). A
        file's archive copy decides first: one in place there (a dual file
        restored elsewhere) is released, one on another tier goes on as
        before (default_archive)."""
        name = inode.archive_tier or inode.tier
        tier = self.fs.tiers.get(name or "")
        return name if tier is not None and storage_class.in_place(tier) else None

    def _check_tier(self, name: str, archive: bool, caller, inode: Inode | None = None,
                    keep_online: bool = False) -> None:
        tier = self.fs.tiers.get(name)
        if tier is None:
            raise errors.Invalid(f"no tier named {name!r}")
        if archive and inode is not None and storage_class.in_place(tier):
            why = storage_class.refusal(tier, inode) or (keep_online and f"tier {name} archives in place: the object "
                                                   "itself changes class, no online copy can be kept")
            if why:
                raise errors.Invalid(why)
        elif tier.archive != archive:
            raise errors.Invalid(f"tier {name!r} is {'an archive' if tier.archive else 'an online'} tier")
        if not tier_allows(tier, caller):
            log.warning("uid %d may not use tier %s (allow_users/allow_groups)", caller.uid, name)
            raise errors.PermissionDenied(f"uid {caller.uid} may not use tier {name}")

    # ---- info ----------------------------------------------------------------
    async def getxattr(self, inode: Inode, name: bytes, caller) -> bytes:
        if name == xattrs.INFO:
            return json.dumps(await self.info(inode)).encode()
        if name == xattrs.STATS:
            return json.dumps(self.fs.stats()).encode()
        raise errors.NoAttr()

    async def info(self, inode: Inode) -> dict:
        fs = self.fs
        inode = await fs.get(inode.ino)
        d = {k: getattr(inode, k) for k in ("ino", "size", "atime_ns", "mtime_ns", "ctime_ns", "crtime_ns",
                                            "tier", "location", "archive_tier", "archive_location",
                                            "checksum", "data_version", "state_ns", "state_cause", "uid", "gid",
                                            "stub_size",
                                            "origin_tier", "origin_location")}
        d["state"] = str(inode.state)
        d["copies"] = [list(c) for c in copies_of(inode)]   # every archive copy, [tier, key], the primary first
        d.update((await fs.cat(pins.resolve, fs.catalog, inode.ino)).fields())   # pinned, pin_from
        d["events"] = [dict(time_ns=e.time_ns, from_state=e.from_state, to_state=e.to_state, cause=e.cause,
                            detail=e.detail) for e in await fs.cat(fs.catalog.events, inode.ino, 10)]
        d["jobs"] = [dict(id=j.id, kind=str(j.kind), state=str(j.state), attempts=j.attempts,
                          last_error=j.last_error, target_tier=j.target_tier, targets=targets_of(j), cause=j.cause,
                          created_ns=j.created_ns, uid=j.uid)
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


class NoRequests:
    """No request attributes (a mount without archive machinery)."""

    def __init__(self, fs: FileSystem, events: Events):
        pass

    def may_manage(self, inode: Inode, caller) -> bool:
        return caller.uid in (0, inode.uid)

    async def setxattr(self, ino: int, name: bytes, value: bytes, caller) -> bool:
        return False

    async def getxattr(self, inode: Inode, name: bytes, caller) -> bytes:
        raise errors.NoAttr()
