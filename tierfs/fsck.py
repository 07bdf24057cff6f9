"""`tierfs fsck`: check the catalog against itself and against the tiers.

One `check_*` method per invariant (as S3QL's fsck.py does). Each reports
every violation as a Finding naming the file (its path, or the inode, job,
session or tier object) and, with repair=True, fixes what is safe to fix:

  check_sessions        daemons that died without unmounting (ended; their jobs requeue)
  check_dentries        names pointing at missing inodes or sitting in non-directories
  check_links           nlink == number of names (+ subdirectories for directories);
                        unlinked inodes nobody has open (purged); inodes with no name
                        (moved to /lost+found)
  check_jobs            jobs running for a dead session, jobs for deleted files
  check_stuck_states    files left `archiving`/`restoring` with no job
  check_online_objects  online copies exist with the recorded size (and sha256: verify_data)
  check_archive_objects archive copies exist with the recorded size (and sha256: verify_data)
  check_lost            `lost` files whose copy came back and verifies
  check_garbage         garbage entries (pending deletes; entries still in use)
  check_orphan_objects  tier objects nothing refers to

Repairs never delete the only copy of a file's bytes: a missing or bad copy
makes the file use its other copy, or `lost` (reversible: check_lost undoes
it when the copy reappears); only objects no catalog entry refers to, or
copies proven wrong while a verified copy exists, are deleted. A tier that
cannot be reached, or that holds no objects while the catalog refers to
some (an unmounted directory), is reported and left alone.

Repairs need the file system unmounted everywhere (the CLI refuses while a
live daemon uses the catalog); checks also run on a live mount, where
objects of moves in flight can show up and are re-checked before reporting.
"""

from __future__ import annotations

import logging
import socket
import stat
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

from . import errors
from .catalog.base import (ACTIVE_JOB_STATES, READABLE_STATES, ROOT_INO, Catalog, FileQuery, Inode, JobState,
                           Session, State, now_ns)
from .tiers.base import Tier, sha256_stream

log = logging.getLogger(__name__)

LOST_FOUND = b"lost+found"
#: a session on another host is dead when its heartbeat is older than this (the daemon's reaper uses 30 s)
SESSION_DEAD_S = 60.0
PAGE = 5000


@dataclass
class Finding:
    """One problem found by a check."""

    check: str              # the check that found it, e.g. "links"
    path: str               # "/dir/file", "inode 12", "job 7", "session ab12", "tier disk object 3f.."
    problem: str            # what is wrong
    severity: str = "error"  # error: an inconsistency; info: worth knowing, harmless (pending deletes...)
    repaired: bool = False  # the repair was made
    action: str = ""        # what the repair did (or why it was not made)

    def line(self) -> str:
        tag = {"error": "ERROR", "info": "note"}[self.severity]
        out = f"{tag} [{self.check}] {self.path}: {self.problem}"
        if self.action:
            out += f" -> {'repaired: ' if self.repaired else ''}{self.action}"
        return out


def pid_running(pid: int) -> bool:
    """True when process `pid` exists and is not a zombie (a SIGKILLed daemon
    whose parent never reaps it must count as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def session_alive(s: Session, host: str | None = None) -> bool:
    if s.clean:
        return False
    if s.host == (host or socket.gethostname()):
        return pid_running(s.pid)
    return now_ns() - s.heartbeat_ns < SESSION_DEAD_S * 1e9


def live_sessions(catalog: Catalog) -> list[Session]:
    """Daemons currently using the catalog."""
    return [s for s in catalog.sessions() if session_alive(s)]


def all_dentries(catalog: Catalog) -> Iterator[tuple[int, int, bytes, int]]:
    """Every name in the catalog as (pos, parent, name, ino), paged."""
    last = 0
    while True:
        page = catalog.scan_dentries(last, PAGE)
        if not page:
            return
        yield from page
        last = page[-1][0]


class Fsck:
    """Runs the checks over one catalog and its tiers."""

    def __init__(self, catalog: Catalog, tiers: dict[str, Tier], *, repair: bool = False,
                 verify_data: bool = False, live: bool = False, progress: Callable[[str], None] | None = None):
        self.catalog = catalog
        self.tiers = dict(tiers)
        self.repair = repair and not live
        self.verify_data = verify_data
        self.live = live
        self.progress = progress or (lambda msg: None)
        self.findings: list[Finding] = []
        self.unavailable: dict[str, str] = {}   # tier -> why its objects are not checked
        self.counts = {"inodes": 0, "dentries": 0, "objects": 0, "bytes_verified": 0}

    # ---- plumbing ----------------------------------------------------------
    def report(self, check: str, path: str, problem: str, fix: Callable[[], str] | None = None,
               severity: str = "error", no_fix: str = "") -> Finding:
        """Record a finding; with repair, run `fix` (returns what it did)."""
        f = Finding(check, path, problem, severity, action=no_fix)
        if fix is not None and self.repair:
            try:
                f.action = fix()
                f.repaired = True
            except errors.TierfsError as e:
                f.action = f"repair failed: {e}"
            log.warning("fsck repaired %s: %s (%s)", path, problem, f.action)
        elif fix is not None and self.live and not f.action:
            f.action = "not repaired: the file system is mounted"
        self.findings.append(f)
        return f

    def path(self, ino: int) -> str:
        try:
            return "/" + self.catalog.path_of(ino).decode(errors="backslashreplace")
        except errors.TierfsError:
            return f"inode {ino} (no name)"

    def inodes(self) -> Iterator[Inode]:
        """Every inode with names (paged), then the unlinked ones."""
        after = 0
        while True:
            page = list(self.catalog.query(FileQuery(regular_only=False, limit=PAGE, after_ino=after)))
            if not page:
                break
            yield from page
            after = page[-1].ino
        yield from self.catalog.unlinked()

    def files(self) -> Iterator[Inode]:
        for inode in self.inodes():
            if inode.is_reg() and inode.nlink > 0:
                yield inode

    def _switch(self, inode: Inode, changes: dict, garbage=(), why: str = "") -> Inode:
        return self.catalog.switch(inode.ino, inode.data_version, [inode.state], changes, list(garbage),
                                   ("fsck", why))

    def run(self) -> list[Finding]:
        self.check_tiers()
        for check in (self.check_sessions, self.check_dentries, self.check_links, self.check_jobs,
                      self.check_stuck_states, self.check_online_objects, self.check_archive_objects,
                      self.check_lost, self.check_garbage, self.check_orphan_objects):
            self.progress(check.__name__)
            check()
        return self.findings

    def problems(self) -> list[Finding]:
        """Errors not repaired: what makes the exit status non-zero."""
        return [f for f in self.findings if f.severity == "error" and not f.repaired]

    # ---- tiers ---------------------------------------------------------------
    def check_tiers(self) -> None:
        """Tiers that cannot be reached are reported; their objects are not judged."""
        for name, tier in self.tiers.items():
            try:
                tier.check()
                empty = next(iter(tier.keys()), None) is None
            except errors.TierfsError as e:
                self.unavailable[name] = str(e)
                self.report("tiers", f"tier {name}", f"unavailable: {e}; its objects were not checked")
                continue
            used = any(True for q in (FileQuery(tier=name, limit=1), FileQuery(archive_tier=name, limit=1))
                       for _ in self.catalog.query(q))
            if empty and used:
                self.unavailable[name] = "empty"
                self.report("tiers", f"tier {name}", "holds no objects but files use it: is its storage mounted? "
                            "Its objects were not checked")

    def _usable(self, name: str | None) -> Tier | None:
        if name is None or name in self.unavailable:
            return None
        return self.tiers.get(name)

    # ---- sessions --------------------------------------------------------------
    def check_sessions(self) -> None:
        here = socket.gethostname()
        for s in self.catalog.sessions():
            if s.clean or session_alive(s, here):
                continue
            def fix(s=s):
                self.catalog.end_session(s.id, clean=True)
                return "session ended; its running jobs return to the queue"
            self.report("sessions", f"session {s.id}",
                        f"the daemon (pid {s.pid} on {s.host}, mounted on {s.mountpoint}) did not unmount "
                        "cleanly", fix)

    # ---- namespace -----------------------------------------------------------------
    def check_dentries(self) -> None:
        """Every name points at an existing inode and sits in a directory."""
        kinds: dict[int, bool] = {i.ino: i.is_dir() for i in self.inodes()}
        self._kinds = kinds
        for pos, parent, name, ino in all_dentries(self.catalog):
            self.counts["dentries"] += 1
            shown = name.decode(errors="backslashreplace")
            if ino not in kinds:
                where = self.path(parent) if parent in kinds else f"inode {parent}"
                self.report("dentries", f"{where.rstrip('/')}/{shown}", f"names inode {ino}, which does not exist",
                            lambda pos=pos: (self.catalog.remove_dentry(pos), "name removed")[1])
            elif parent not in kinds or not kinds[parent]:
                why = "does not exist" if parent not in kinds else "is not a directory"
                self.report("dentries", f"inode {parent}/{shown}", f"its directory (inode {parent}) {why}",
                            lambda pos=pos: (self.catalog.remove_dentry(pos), "name removed (the inode goes to /lost+found)")[1])

    def _names(self) -> tuple[dict[int, int], dict[int, int]]:
        """(names per inode, subdirectories per directory) from a fresh scan."""
        names: dict[int, int] = {}
        subdirs: dict[int, int] = {}
        kinds = {i.ino: i.is_dir() for i in self.inodes()}
        for _, parent, _, ino in all_dentries(self.catalog):
            if ino not in kinds or not kinds.get(parent):
                continue
            names[ino] = names.get(ino, 0) + 1
            if kinds[ino]:
                subdirs[parent] = subdirs.get(parent, 0) + 1
        return names, subdirs

    def check_links(self) -> None:
        """nlink matches the names; unlinked inodes go; nameless inodes go to /lost+found."""
        names, subdirs = self._names()
        for inode in list(self.inodes()):
            self.counts["inodes"] += 1
            n = names.get(inode.ino, 0)
            if inode.ino == ROOT_INO:
                n = 1
            if inode.nlink == 0:
                if n == 0:
                    if not self.live:
                        self.report("links", f"inode {inode.ino}", "unlinked and not open by any mount",
                                    lambda i=inode: self._purge(i))
                    continue
            elif n == 0:
                self.report("links", f"inode {inode.ino}", f"has nlink {inode.nlink} but no name",
                            lambda i=inode: self._to_lost_found(i))
                continue
            want = 1 + n + subdirs.get(inode.ino, 0) if inode.is_dir() else n
            if inode.is_dir() and n > 1:
                self.report("links", self.path(inode.ino), f"directory has {n} names", no_fix="fix by hand")
            if inode.nlink != want:
                self.report("links", self.path(inode.ino), f"nlink is {inode.nlink}, should be {want}",
                            lambda i=inode, w=want: (self.catalog.update(i.ino, {"nlink": w}), f"nlink set to {w}")[1])

    def _purge(self, inode: Inode) -> str:
        self.catalog.purge(inode.ino)
        return "inode deleted (its objects go to garbage)"

    def _to_lost_found(self, inode: Inode) -> str:
        try:
            lf = self.catalog.lookup(ROOT_INO, LOST_FOUND)
        except errors.NotFound:
            t = now_ns()
            lf = self.catalog.create(ROOT_INO, LOST_FOUND, Inode(
                ino=0, mode=stat.S_IFDIR | 0o700, uid=0, gid=0, nlink=2, atime_ns=t, mtime_ns=t, ctime_ns=t,
                crtime_ns=t, state_ns=t, state_cause="fsck"))
        name = f"inode-{inode.ino}".encode()
        if inode.is_dir():
            self.catalog.add_dentry(lf.ino, name, inode.ino)
            self.catalog.update(lf.ino, {"nlink": self.catalog.get(lf.ino).nlink + 1})
            self.catalog.update(inode.ino, {"nlink": 2 + self._subdirs(inode.ino)})
        else:
            self.catalog.update(inode.ino, {"nlink": 0})
            self.catalog.link(inode.ino, lf.ino, name, now_ns())
        return f"moved to /lost+found/{name.decode()}"

    def _subdirs(self, ino: int) -> int:
        n, pos = 0, 0
        while batch := self.catalog.readdir(ino, pos, 1000):
            n += sum(1 for e in batch if e.inode.is_dir())
            pos = batch[-1].pos
        return n

    # ---- jobs and states ----------------------------------------------------------------
    def check_jobs(self) -> None:
        """Running jobs belong to a live daemon; active jobs to an existing file."""
        live = {s.id for s in self.catalog.sessions() if session_alive(s)}
        for job in self.catalog.jobs(ACTIVE_JOB_STATES, limit=10**9):
            try:
                self.catalog.get(job.ino)
            except errors.NotFound:
                if job.state == JobState.PENDING or job.session not in live:
                    self.report("jobs", f"job {job.id}", f"{job.kind} of inode {job.ino}, which no longer exists",
                                lambda j=job: (self.catalog.finish_job(j.id, JobState.CANCELLED,
                                                                       "fsck: the file no longer exists"),
                                               "job cancelled")[1])
                continue
            if job.state == JobState.RUNNING and job.session not in live:
                self.report("jobs", self.path(job.ino),
                            f"{job.kind} job {job.id} is running for session {job.session}, which is dead",
                            lambda j=job: (self.catalog.retry_job(j.id, f"fsck: session {j.session} died", 0),
                                           "job queued again")[1])

    def check_stuck_states(self) -> None:
        """`archiving` / `restoring` only while a job runs the move."""
        active = {j.ino for j in self.catalog.jobs(ACTIVE_JOB_STATES, limit=10**9)}
        for state in (State.ARCHIVING, State.RESTORING):
            for inode in self.catalog.query(FileQuery(states=(state,))):
                if inode.ino in active:
                    continue
                if state == State.RESTORING:
                    back = State.ARCHIVED
                else:
                    back = State.DUAL if inode.archive_tier else State.ONLINE
                self.report("states", self.path(inode.ino), f"is {state} but no job is moving it",
                            lambda i=inode, b=back: (self._switch(i, {"state": b}, why="no job was moving it"),
                                                     f"state set back to {b}")[1])

    # ---- objects --------------------------------------------------------------------------
    def _object_ok(self, tier: Tier, key: str, size: int, sha: str | None) -> tuple[bool, str]:
        """(ok, problem) for one object: exists, has `size` bytes, and (verify_data) the sha256."""
        self.counts["objects"] += 1
        try:
            got = tier.size(key)
        except errors.TierfsError as e:
            return True, f"cannot stat it: {e}"  # unreachable is not missing
        if got is None:
            return False, f"object {key} is missing on tier {tier.name}"
        if got != size:
            return False, f"object {key} on tier {tier.name} has {got} bytes, the file {size}"
        if self.verify_data and sha:
            try:
                ok = tier.verify(key, sha, size)
            except errors.ObjectMissing:
                return False, f"object {key} is missing on tier {tier.name}"
            except Exception as e:  # noqa: BLE001 - archive media that cannot be read back now
                return True, f"cannot read it back: {e}"
            self.counts["bytes_verified"] += size
            if not ok:
                return False, f"object {key} on tier {tier.name} does not match the recorded sha256"
        return True, ""

    def _recheck(self, inode: Inode, fields: tuple[str, ...]) -> Inode | None:
        """On a live mount a move may have changed the file since it was read: the
        fresh inode if the finding still applies, else None."""
        if not self.live:
            return inode
        try:
            fresh = self.catalog.get(inode.ino)
        except errors.NotFound:
            return None
        if any(getattr(fresh, f) != getattr(inode, f) for f in fields + ("data_version", "state")):
            return None
        return fresh

    def check_online_objects(self) -> None:
        unsummed: list[tuple[Inode, Tier]] = []   # verified to exist, but no sha256 recorded yet
        for inode in self.files():
            if inode.state not in READABLE_STATES or not inode.location:
                continue
            tier = self._usable(inode.tier)
            if tier is None:
                if inode.tier not in self.tiers:
                    self.report("online", self.path(inode.ino), f"its tier {inode.tier!r} is not configured here; "
                                "not checked", severity="info")
                continue
            ok, problem = self._object_ok(tier, inode.location, inode.size, inode.checksum)
            if problem and ok:
                self.report("online", self.path(inode.ino), problem, severity="info")
            if ok:
                if inode.checksum is None and self.verify_data and inode.state == State.ONLINE:
                    unsummed.append((inode, tier))
                continue
            if self._recheck(inode, ("tier", "location", "size")) is None:
                continue
            fix, no_fix = self._online_fix(inode, tier, problem)   # (no_fix went to `severity`: line() crashed)
            self.report("online", self.path(inode.ino), problem, fix, no_fix=no_fix)
        if unsummed:
            self._record_checksums(unsummed)

    def _online_fix(self, inode: Inode, tier: Tier, problem: str):
        """(fix, no_fix) for a missing or wrong online copy."""
        missing = "missing" in problem
        if inode.archive_tier and inode.state == State.DUAL:
            arch = self._usable(inode.archive_tier)
            if arch is None or not self._object_ok(arch, inode.archive_location, inode.size, inode.checksum)[0]:
                return None, "the archive copy is not usable either: fix by hand"
            garbage = [] if missing else [(inode.tier, inode.location)]
            return (lambda: (self._switch(inode, dict(state=State.ARCHIVED, tier=None, location=None), garbage,
                                          "online copy " + ("missing" if missing else "wrong")),
                             "the file uses its archive copy (archived)")[1]), ""
        if missing:
            return (lambda: (self._switch(inode, dict(state=State.LOST), why="online copy missing"),
                             "marked lost (reads fail with EIO; undone if the object comes back)")[1]), ""
        if "bytes" in problem and inode.state == State.ONLINE:
            size = tier.size(inode.location)
            return (lambda: (self.catalog.bump_version(inode.ino, {"size": size}),
                             f"size set to the object's {size} bytes")[1]), ""
        return None, "the only copy does not match its checksum: check it by hand"

    def _record_checksums(self, files: list[tuple[Inode, Tier]]) -> None:
        """Files written before a crash have no checksum (the daemon computes it after
        the last close); with repair, compute and record them (compare-and-swap)."""
        def fix():
            done = 0
            for inode, tier in files:
                with tier.open_reader(inode.location) as r:
                    sha, n = sha256_stream(r)
                if n == inode.size:
                    try:
                        self.catalog.update(inode.ino, {"checksum": sha}, expect_version=inode.data_version)
                        done += 1
                    except errors.VersionConflict:
                        pass
            return f"{done} checksum(s) recorded"
        where = self.path(files[0][0].ino) + (f" and {len(files) - 1} more" if len(files) > 1 else "")
        self.report("online", where, f"{len(files)} file(s) have no checksum recorded", fix, severity="info")

    def check_archive_objects(self) -> None:
        for inode in self.files():
            if not inode.archive_tier or inode.state == State.LOST:
                continue
            path = self.path(inode.ino)
            if not inode.archive_location:
                self.report("archive", path, f"is {inode.state} but has no archive location",
                            no_fix="fix by hand")
                continue
            tier = self._usable(inode.archive_tier)
            if tier is None:
                continue
            ok, problem = self._object_ok(tier, inode.archive_location, inode.size, inode.checksum)
            if ok:
                if problem:
                    self.report("archive", path, problem, severity="info")
                continue
            if self._recheck(inode, ("archive_tier", "archive_location", "size")) is None:
                continue
            garbage = [] if "missing" in problem else [(inode.archive_tier, inode.archive_location)]
            if inode.state in (State.ONLINE, State.DUAL, State.ARCHIVING) and inode.tier:
                fix = lambda i=inode, g=garbage: (self._switch(
                    i, dict(state=State.ONLINE if i.state == State.DUAL else i.state, archive_tier=None,
                            archive_location=None), g, "archive copy bad"), "the archive copy is dropped")[1]
            else:
                fix = lambda i=inode: (self._switch(i, dict(state=State.LOST), why="archive copy bad"),
                                       "marked lost (reads fail with EIO; undone if the copy comes back)")[1]
            self.report("archive", path, problem, fix)

    def check_lost(self) -> None:
        """A `lost` file whose copy is back (and reads back right) becomes usable again."""
        for inode in self.catalog.query(FileQuery(states=(State.LOST,))):
            path = self.path(inode.ino)
            online = self._usable(inode.tier)
            arch = self._usable(inode.archive_tier)
            saved = self.verify_data
            self.verify_data = True   # only proven copies bring a file back
            try:
                on_ok = bool(online and inode.location and self._object_ok(online, inode.location, inode.size,
                                                                           inode.checksum) == (True, ""))
                ar_ok = bool(arch and inode.archive_location and inode.checksum and self._object_ok(
                    arch, inode.archive_location, inode.size, inode.checksum) == (True, ""))
            finally:
                self.verify_data = saved
            if on_ok:
                state = State.DUAL if ar_ok else State.ONLINE
                changes = dict(state=state) if ar_ok else dict(state=state, archive_tier=None, archive_location=None)
            elif ar_ok:
                state, changes = State.ARCHIVED, dict(state=State.ARCHIVED, tier=None, location=None)
            else:
                self.report("lost", path, "is lost: no copy of its bytes could be found or verified",
                            no_fix="restore it from a backup, or delete it")
                continue
            self.report("lost", path, "is marked lost but a verified copy exists",
                        lambda i=inode, c=changes, s=state: (self._switch(i, c, why="copy found"), f"now {s}")[1])

    # ---- garbage and orphans ------------------------------------------------------------------
    def check_garbage(self) -> None:
        """Entries still referenced are wrong (the object must stay); the others are
        deletes the daemon had not done yet (with repair: done now)."""
        pending = []
        for g in self.catalog.garbage(limit=10**9):
            if self.catalog.references(g.tier, g.key):
                self.report("garbage", f"tier {g.tier} object {g.key}",
                            "queued for deletion but a file still uses it",
                            lambda g=g: (self.catalog.remove_garbage([g.id]), "entry removed, object kept")[1])
            else:
                pending.append(g)
        if not pending:
            return
        def fix():
            done = 0
            for g in pending:
                tier = self._usable(g.tier)
                if tier is None:
                    continue
                tier.delete(g.key)
                self.catalog.remove_garbage([g.id])
                done += 1
            return f"{done} deleted"
        self.report("garbage", "garbage", f"{len(pending)} object(s) waiting for deletion", fix, severity="info")

    def _referenced(self) -> dict[str, set[str]]:
        refs: dict[str, set[str]] = {}
        for inode in self.inodes():
            for t, k in ((inode.tier, inode.location), (inode.archive_tier, inode.archive_location)):
                if t and k:
                    refs.setdefault(t, set()).add(k)
        for g in self.catalog.garbage(limit=10**9):
            refs.setdefault(g.tier, set()).add(g.key)
        for j in self.catalog.jobs(ACTIVE_JOB_STATES, limit=10**9):
            if j.dst_key:
                for t in self.tiers:
                    refs.setdefault(t, set()).add(j.dst_key)
        return refs

    def check_orphan_objects(self) -> None:
        """Tier objects no inode, garbage entry or active job refers to."""
        refs = self._referenced()
        for name, tier in self.tiers.items():
            if name in self.unavailable:
                continue
            mine = refs.get(name, set())
            try:
                keys = set(tier.keys())
            except errors.TierfsError as e:
                self.report("orphans", f"tier {name}", f"cannot list its objects: {e}")
                continue
            orphans = sorted(keys - mine)
            if self.live:
                orphans = [k for k in orphans if not self.catalog.references(name, k)]
            if len(orphans) > 100 and len(orphans) > len(keys & mine):
                self.report("orphans", f"tier {name}", f"{len(orphans)} objects no file refers to, more than those "
                            "in use: is this the right catalog for this tier? Not deleting them")
                continue
            for k in orphans:
                self.report("orphans", f"tier {name} object {k}", "no file refers to it",
                            lambda t=tier, k=k: (t.delete(k), "deleted")[1])


def run(catalog: Catalog, tiers: dict[str, Tier], **kw) -> Fsck:
    f = Fsck(catalog, tiers, **kw)
    f.run()
    return f


def as_dict(f: Finding) -> dict:
    return asdict(f)
