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
  check_archive_objects archive copies (every one of them) exist with the recorded size (and
                        sha256: verify_data); a bad one is re-made from a good one
  check_lost            `lost` files whose copy came back and verifies
  check_garbage         garbage entries (pending deletes; entries still in use)
  check_orphan_objects  tier objects nothing refers to
  check_modes           objects, and the directories tierfs made for them, that other
                        users can open (they must be 0600/0700: tierfs/private.py)
  check_totals          the running totals `du` and `status` read (Catalog.totals) equal a
                        count of the files (repair: rebuilt from that count)

Files imported in place (`tierfs import --in-place`) are objects of a disk
tier keyed by their path: they are checked like any copy and named by that
path; they are never orphans (keys() lists only tierfs's own objects/), and
their modes are the user's.

Repairs never delete the only copy of a file's bytes: a missing or bad copy
makes the file use its other copy, or `lost` (reversible: check_lost undoes
it when the copy reappears); only objects no catalog entry refers to, or
copies proven wrong while a verified copy exists, are deleted. A tier that
cannot be reached, or that holds no objects while the catalog refers to
some and none of a sample of them can be found (an unmounted directory), is
reported and left alone.

Repairs need the file system unmounted everywhere (the CLI refuses while a
live daemon uses the catalog); checks also run on a live mount, where
objects of moves in flight can show up and are re-checked before reporting.
"""

from __future__ import annotations

import enum
import logging
import socket
import stat
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

from . import errors, mounts, private
from .catalog.base import (ACTIVE_JOB_STATES, READABLE_STATES, ROOT_INO, Catalog, Changes, FileQuery, Inode, JobState,
                           Session, State, Transition, copies_changes, copies_of, now_ns)
from .tiers.base import HashingReader, Tier, new_key, sha256_stream
from .tiers.disk import in_place_key

log = logging.getLogger(__name__)

LOST_FOUND = b"lost+found"
#: a session on another host is dead when its heartbeat is older than this (the daemon's reaper uses 30 s)
SESSION_DEAD_S = 60.0
PAGE = 5000
#: a tier listing no objects is taken for an unmounted directory only when none of the copies the
#: first SAMPLE files keep there can be found (a tier of files imported in place lists no objects)
SAMPLE = 20
#: paths named in the one finding per tier about loose modes
MODE_EXAMPLES = 5


class Severity(str, enum.Enum):
    ERROR = "error"   # an inconsistency: fsck exits 1 while one is not repaired
    INFO = "info"     # worth knowing, harmless (pending deletes, checksums not recorded yet)

    def __str__(self) -> str:
        return self.value


@dataclass
class Finding:
    """One problem found by a check."""

    check: str              # the check that found it, e.g. "links"
    path: str               # "/dir/file", "inode 12", "job 7", "session ab12", "tier disk object 3f.."
    problem: str            # what is wrong
    severity: Severity = Severity.ERROR
    repaired: bool = False  # the repair was made
    action: str = ""        # what the repair did (or why it was not made)

    def __post_init__(self) -> None:
        # A finding with any other severity would be neither counted nor printed right (an error
        # passed as "" once made a corrupt catalog exit 0): refuse it where it is made.
        if not isinstance(self.severity, Severity):
            raise TypeError(f"Finding.severity must be a Severity, not {self.severity!r}")

    def line(self) -> str:
        tag = {Severity.ERROR: "ERROR", Severity.INFO: "note"}[self.severity]
        out = f"{tag} [{self.check}] {self.path}: {self.problem}"
        if self.action:
            out += f" -> {'repaired: ' if self.repaired else ''}{self.action}"
        return out


class Fault(enum.Enum):
    """What is wrong with a copy of a file's bytes."""

    MISSING = "missing"
    SIZE = "size"            # exists with another size than the file's
    CHECKSUM = "checksum"    # right size, wrong sha256 (verify_data)


@dataclass(frozen=True)
class CopyCheck:
    """What fsck found out about one copy (Fsck._object_ok)."""

    fault: Fault | None = None   # None: usable as far as it could be checked
    problem: str = ""            # the fault, or why the copy could not be checked (a note)
    size: int | None = None      # the object's size, when it exists

    @property
    def ok(self) -> bool:
        return self.fault is None

    @property
    def verified(self) -> bool:
        """Usable, and every check could be made."""
        return self.fault is None and not self.problem


@dataclass(frozen=True)
class Remedy:
    """How a finding is repaired: `fix` (returns what it did), or why not (`no_fix`)."""

    fix: Callable[[], str] | None = None
    no_fix: str = ""


def session_alive(s: Session, host: str | None = None) -> bool:
    if s.clean:
        return False
    if s.host == (host or socket.gethostname()):
        return mounts.pid_alive(s.pid)
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
                 verify_data: bool = False, live: bool = False, progress: Callable[[str], None] | None = None,
                 private_dirs: Sequence[str] = ()):
        self.catalog = catalog
        self.tiers = dict(tiers)
        self.private_dirs = list(private_dirs)   # other directories tierfs keeps file bytes in (staging)
        self.repair = repair and not live
        self.verify_data = verify_data
        self.live = live
        self.progress = progress or (lambda msg: None)
        self.findings: list[Finding] = []
        self.unavailable: dict[str, str] = {}   # tier -> why its objects are not checked
        self.counts = {"inodes": 0, "dentries": 0, "objects": 0, "bytes_verified": 0}

    # ---- plumbing ----------------------------------------------------------
    def report(self, check: str, path: str, problem: str, *, fix: Callable[[], str] | None = None,
               no_fix: str = "", severity: Severity = Severity.ERROR) -> Finding:
        """Record a finding; with repair, run `fix` (returns what it did); `no_fix`
        says why there is none. Keyword-only: a repair passed by position
        once landed in `severity`."""
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

    def _switch(self, inode: Inode, changes: Changes, garbage=(), why: str = "") -> Inode:
        return self.catalog.switch(Transition(inode.ino, inode.data_version, (inode.state,), changes, "fsck", why,
                                              garbage=tuple(garbage)))

    def run(self) -> list[Finding]:
        self.check_tiers()
        for check in (self.check_sessions, self.check_dentries, self.check_links, self.check_jobs,
                      self.check_stuck_states, self.check_online_objects, self.check_archive_objects,
                      self.check_lost, self.check_garbage, self.check_orphan_objects, self.check_modes,
                      self.check_totals):
            self.progress(check.__name__)
            check()
        return self.findings

    def run_check(self, name: str) -> list[Finding]:
        """The findings of one check (e.g. "check_totals"), run on its own."""
        before = len(self.findings)
        getattr(self, name)()
        return self.findings[before:]

    def problems(self) -> list[Finding]:
        """Errors not repaired: what makes the exit status non-zero."""
        return [f for f in self.findings if f.severity == Severity.ERROR and not f.repaired]

    # ---- tiers ---------------------------------------------------------------
    def check_tiers(self) -> None:
        """Tiers that cannot be reached are reported; their objects are not judged."""
        for name, tier in self.tiers.items():
            try:
                tier.check()
                absent = next(iter(tier.keys()), None) is None and self._copies_absent(name, tier)
            except errors.TierfsError as e:
                self.unavailable[name] = str(e)
                self.report("tiers", f"tier {name}", f"unavailable: {e}; its objects were not checked")
                continue
            if absent:
                self.unavailable[name] = "empty"
                self.report("tiers", f"tier {name}", "holds no objects but files use it: is its storage mounted? "
                            "Its objects were not checked")

    def _copies_absent(self, name: str, tier: Tier) -> bool:
        """For a tier that lists no objects: files refer to copies on it and none
        of the first SAMPLE can be found. Files imported in place are copies
        keyed by their path, which keys() does not list, so an empty listing
        alone does not mean the storage is away."""
        used = False
        for q, field in ((FileQuery(tier=name, limit=SAMPLE), "location"),
                         (FileQuery(archive_tier=name, limit=SAMPLE), "archive_location")):
            for inode in self.catalog.query(q):
                key = getattr(inode, field)
                if key:
                    if tier.size(key) is not None:
                        return False
                    used = True
        return used

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
                        "cleanly", fix=fix)

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
                            fix=lambda pos=pos, parent=parent: (self.catalog.remove_dentry(parent, pos),
                                                                "name removed")[1])
            elif parent not in kinds or not kinds[parent]:
                why = "does not exist" if parent not in kinds else "is not a directory"
                self.report("dentries", f"inode {parent}/{shown}", f"its directory (inode {parent}) {why}",
                            fix=lambda pos=pos, parent=parent: (self.catalog.remove_dentry(parent, pos),
                                                                "name removed (the inode goes to /lost+found)")[1])

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
                                    fix=lambda i=inode: self._purge(i))
                    continue
            elif n == 0:
                self.report("links", f"inode {inode.ino}", f"has nlink {inode.nlink} but no name",
                            fix=lambda i=inode: self._to_lost_found(i))
                continue
            want = 1 + n + subdirs.get(inode.ino, 0) if inode.is_dir() else n
            if inode.is_dir() and n > 1:
                self.report("links", self.path(inode.ino), f"directory has {n} names", no_fix="fix by hand")
            if inode.nlink != want:
                self.report("links", self.path(inode.ino), f"nlink is {inode.nlink}, should be {want}",
                            fix=lambda i=inode, w=want: (self.catalog.update(i.ino, {"nlink": w}),
                                                         f"nlink set to {w}")[1])

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
                                fix=lambda j=job: (self.catalog.finish_job(j.id, JobState.CANCELLED,
                                                                           "fsck: the file no longer exists"),
                                                   "job cancelled")[1])
                continue
            if job.state == JobState.RUNNING and job.session not in live:
                self.report("jobs", self.path(job.ino),
                            f"{job.kind} job {job.id} is running for session {job.session}, which is dead",
                            fix=lambda j=job: (self.catalog.retry_job(j.id, f"fsck: session {j.session} died", 0),
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
                            fix=lambda i=inode, b=back: (self._switch(i, Changes(state=b), why="no job was moving it"),
                                                         f"state set back to {b}")[1])

    # ---- objects --------------------------------------------------------------------------
    def _object_ok(self, tier: Tier, key: str, size: int, sha: str | None) -> CopyCheck:
        """One copy: exists, has `size` bytes, and (verify_data) the sha256."""
        self.counts["objects"] += 1
        what = self._copy_name(tier, key)
        try:
            got = tier.size(key)
        except errors.TierfsError as e:
            return CopyCheck(problem=f"cannot stat it: {e}")  # unreachable is not missing
        if got is None:
            return CopyCheck(Fault.MISSING, f"{what} is missing on tier {tier.name}")
        if got != size:
            return CopyCheck(Fault.SIZE, f"{what} on tier {tier.name} has {got} bytes, the file {size}", got)
        if self.verify_data and sha:
            try:
                ok = tier.verify(key, sha, size)
            except errors.ObjectMissing:
                return CopyCheck(Fault.MISSING, f"{what} is missing on tier {tier.name}")
            except Exception as e:  # noqa: BLE001 - archive media that cannot be read back now
                return CopyCheck(problem=f"cannot read it back: {e}", size=got)
            self.counts["bytes_verified"] += size
            if not ok:
                return CopyCheck(Fault.CHECKSUM, f"{what} on tier {tier.name} does not match the recorded sha256",
                                 got)
        return CopyCheck(size=got)

    @staticmethod
    def _copy_name(tier: Tier, key: str) -> str:
        """How a finding names a copy: a file imported in place by its path (the
        user knows it by that), other objects by their key."""
        path = tier.local_path(key) if in_place_key(key) else None
        return f"imported file {path}" if path else f"object {key}"

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
                                "not checked", severity=Severity.INFO)
                continue
            c = self._object_ok(tier, inode.location, inode.size, inode.checksum)
            if c.ok:
                if c.problem:
                    self.report("online", self.path(inode.ino), c.problem, severity=Severity.INFO)
                if inode.checksum is None and inode.state == State.ONLINE:
                    unsummed.append((inode, tier))
                continue
            if self._recheck(inode, ("tier", "location", "size")) is None:
                continue
            r = self._online_fix(inode, c)
            self.report("online", self.path(inode.ino), c.problem, fix=r.fix, no_fix=r.no_fix)
        if unsummed:
            self._record_checksums(unsummed)

    def _online_fix(self, inode: Inode, c: CopyCheck) -> Remedy:
        """The repair of a missing or wrong online copy: use the archive copy
        (dual), else mark the file lost (missing), or take the object's size
        (a crash before the size reached the catalog, or bytes lost below tierfs)."""
        missing = c.fault is Fault.MISSING
        if inode.archive_tier and inode.state == State.DUAL:
            arch = self._usable(inode.archive_tier)
            if arch is None or not self._object_ok(arch, inode.archive_location, inode.size, inode.checksum).ok:
                return Remedy(no_fix="the archive copy is not usable either: fix by hand")
            garbage = [] if missing else [(inode.tier, inode.location)]
            return Remedy(lambda: (self._switch(inode, Changes(state=State.ARCHIVED, tier=None, location=None), garbage,
                                                "online copy " + ("missing" if missing else "wrong")),
                                   "the file uses its archive copy (archived)")[1])
        if missing:
            return Remedy(lambda: (self._switch(inode, Changes(state=State.LOST), why="online copy missing"),
                                   "marked lost (reads fail with EIO; undone if the object comes back)")[1])
        if c.fault is Fault.SIZE and inode.state == State.ONLINE:
            return Remedy(lambda: (self.catalog.bump_version(inode.ino, {"size": c.size}),
                                   f"size set to the object's {c.size} bytes")[1])
        if c.fault is Fault.SIZE:
            return Remedy(no_fix=f"the file is {inode.state}: check it by hand")
        return Remedy(no_fix="the only copy does not match its checksum: check it by hand")

    def _record_checksums(self, files: list[tuple[Inode, Tier]]) -> None:
        """Closed files whose checksum is not recorded yet: the daemon computes them
        in the background (after a restart too, from the catalog); reported so an
        operator sees a backlog that does not drain, and with repair computed and
        recorded now (compare-and-swap)."""
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
        self.report("online", where, f"{len(files)} file(s) whose content is final have no checksum recorded "
                    "(a mounted daemon computes them in the background)", fix=fix, severity=Severity.INFO)

    def check_archive_objects(self) -> None:
        """Every archive copy of a file (copies_of: the primary, then the further ones)."""
        for inode in self.files():
            if not inode.archive_tier or inode.state == State.LOST:
                continue
            path = self.path(inode.ino)
            if not inode.archive_location:
                self.report("archive", path, f"is {inode.state} but has no archive location",
                            no_fix="fix by hand")
                continue
            copies = copies_of(inode)
            good: list[tuple[str, str]] = []
            bad: list[tuple[tuple[str, str], CopyCheck]] = []
            for t, k in copies:
                tier = self._usable(t)
                if tier is None:
                    continue
                c = self._object_ok(tier, k, inode.size, inode.checksum)
                if not c.ok:
                    bad.append(((t, k), c))
                elif c.problem:
                    self.report("archive", path, c.problem, severity=Severity.INFO)
                else:
                    good.append((t, k))
            if not bad or self._recheck(inode, ("archive_tier", "archive_location", "archive_copies", "size")) is None:
                continue
            if len(bad) == len(copies):   # no copy to re-make them from: one finding for the file
                r = self._archive_gone(inode, [cp for cp, c in bad if c.fault is not Fault.MISSING])
                self.report("archive", path, "; ".join(c.problem for _, c in bad), fix=r.fix, no_fix=r.no_fix)
                continue
            for copy, c in bad:
                self.report("archive", path, c.problem,
                            fix=(lambda i=inode, cp=copy, c=c, src=good[0]: self._remake(i, cp, c, src)) if good
                            else None,
                            no_fix="" if good else "no copy could be checked to re-make it from: run fsck again")

    def _archive_gone(self, inode: Inode, garbage: list[tuple[str, str]]) -> Remedy:
        """Every archive copy is missing or wrong: a file with an online copy
        drops them (the wrong ones, `garbage`, go), any other is lost."""
        if inode.state in (State.ONLINE, State.DUAL, State.ARCHIVING) and inode.tier:
            return Remedy(lambda: (self._switch(
                inode, Changes(state=State.ONLINE if inode.state == State.DUAL else inode.state,
                               **copies_changes(())), garbage, "archive copy bad"), "the archive copy is dropped")[1])
        return Remedy(lambda: (self._switch(inode, Changes(state=State.LOST), why="archive copy bad"),
                               "marked lost (reads fail with EIO; undone if the copy comes back)")[1])

    def _remake(self, inode: Inode, copy: tuple[str, str], c: CopyCheck, src: tuple[str, str]) -> str:
        """Copy the good archive copy `src` to a new object on the bad copy's tier,
        verify it against the file's checksum, and switch the file's copy to it
        (the bad object goes to garbage; a crash before the switch leaves an
        orphan the next fsck finds)."""
        fresh = self.catalog.get(inode.ino)
        if fresh.data_version != inode.data_version or copy not in copies_of(fresh):
            return "the file changed since: left alone"
        if not fresh.checksum:
            raise errors.TierfsError("no checksum recorded to verify a new copy against")
        s_tier, d_tier = self.tiers[src[0]], self.tiers[copy[0]]
        if not s_tier.prepare_restore(src[1]):
            raise errors.Pending(f"the good copy {src[0]}/{src[1]} is still being recalled: run fsck again")
        key = new_key()
        try:
            with s_tier.open_reader(src[1]) as r:
                h = HashingReader(r)
                d_tier.put(key, h)
            if h.hexdigest() != fresh.checksum or not d_tier.verify(key, fresh.checksum, h.nbytes):
                raise errors.ChecksumMismatch(f"the copy from {src[0]}/{src[1]} does not match the recorded sha256")
            copies = [(t, key if (t, k) == copy else k) for t, k in copies_of(fresh)]
            self._switch(fresh, copies_changes(copies), [] if c.fault is Fault.MISSING else [copy],
                         f"archive copy {copy[0]}/{copy[1]} bad: re-made from {src[0]}")
        except BaseException:
            d_tier.delete(key)
            raise
        return f"re-made from the copy on {src[0]} as {copy[0]}/{key}"

    def check_lost(self) -> None:
        """A `lost` file whose copy is back (and reads back right) becomes usable again."""
        for inode in self.catalog.query(FileQuery(states=(State.LOST,))):
            path = self.path(inode.ino)
            online = self._usable(inode.tier)
            saved = self.verify_data
            self.verify_data = True   # only proven copies bring a file back
            try:
                on_ok = bool(online and inode.location and self._object_ok(online, inode.location, inode.size,
                                                                           inode.checksum).verified)
                # Any verified archive copy will do: a restore tries them in turn (the bad ones are reported
                # by check_archive_objects once the file is no longer lost).
                ar_ok = bool(inode.checksum) and any(
                    (arch := self._usable(t)) and self._object_ok(arch, k, inode.size, inode.checksum).verified
                    for t, k in copies_of(inode))
            finally:
                self.verify_data = saved
            if on_ok:
                state = State.DUAL if ar_ok else State.ONLINE
                changes = Changes(state=state) if ar_ok else Changes(state=state, **copies_changes(()))
            elif ar_ok:
                state, changes = State.ARCHIVED, Changes(state=State.ARCHIVED, tier=None, location=None)
            else:
                self.report("lost", path, "is lost: no copy of its bytes could be found or verified",
                            no_fix="restore it from a backup, or delete it")
                continue
            self.report("lost", path, "is marked lost but a verified copy exists",
                        fix=lambda i=inode, c=changes, s=state: (self._switch(i, c, why="copy found"),
                                                                 f"now {s}")[1])

    # ---- garbage and orphans ------------------------------------------------------------------
    def check_garbage(self) -> None:
        """Entries still referenced are wrong (the object must stay); the others are
        deletes the daemon had not done yet (with repair: done now)."""
        pending = []
        for g in self.catalog.garbage(limit=10**9):
            if self.catalog.references(g.tier, g.key):
                self.report("garbage", f"tier {g.tier} object {g.key}",
                            "queued for deletion but a file still uses it",
                            fix=lambda g=g: (self.catalog.remove_garbage([g.id]), "entry removed, object kept")[1])
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
        self.report("garbage", "garbage", f"{len(pending)} object(s) waiting for deletion", fix=fix,
                    severity=Severity.INFO)

    def _referenced(self) -> dict[str, set[str]]:
        refs: dict[str, set[str]] = {}
        for inode in self.inodes():
            for t, k in ((inode.tier, inode.location), *copies_of(inode)):
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
                            fix=lambda t=tier, k=k: (t.delete(k), "deleted")[1])


    # ---- totals ------------------------------------------------------------------------------
    def check_totals(self) -> None:
        """The running totals (files and bytes per state, tier and archive tier)
        equal a scan of the inodes. They are kept in each change's transaction;
        they drift only if something wrote the inodes without them (on MongoDB:
        an older tierfs still mounted while this one upgraded the catalog, or a
        bulk load). On a live mount files change while the scan runs: the
        comparison counts only when the totals did not move during it (three
        tries)."""
        for _ in range(3):
            before = self.catalog.totals()
            scan = self.catalog.scan_totals()
            if self.catalog.totals() == before:
                break
        else:
            self.report("totals", "totals", "files changed during each comparison with a count: not checked",
                        severity=Severity.INFO)
            return
        if scan == before:
            return
        keys = sorted(set(scan) | set(before), key=str)
        diff = [f"{'/'.join(x or '-' for x in k)}: {before.get(k, (0, 0))[0]} files {before.get(k, (0, 0))[1]} bytes,"
                f" counted {scan.get(k, (0, 0))[0]} files {scan.get(k, (0, 0))[1]} bytes"
                for k in keys if scan.get(k) != before.get(k)]
        more = f" (and {len(diff) - 5} more)" if len(diff) > 5 else ""
        self.report("totals", "totals", f"the totals `du` and `status` read differ from a count of the files: "
                    f"{'; '.join(diff[:5])}{more}",
                    fix=lambda: (self.catalog.rebuild_totals(), "rebuilt from the count")[1])

    # ---- modes -------------------------------------------------------------------------------
    def check_modes(self) -> None:
        """Objects and the directories tierfs made for them are 0600/0700, so no
        other local user reads file bytes around the mount (tierfs/private.py).
        One finding per tier (or directory): the count and the first few paths."""
        for name, tier in self.tiers.items():
            if name not in self.unavailable:
                self._check_private(f"tier {name}", tier.private_entries())
        for d in self.private_dirs:
            self._check_private(d, private.walk_modes(d))

    def _check_private(self, where: str, entries: Iterator[tuple[str, int]]) -> None:
        try:
            loose = [p for p, mode in entries if private.too_open(mode)]
        except OSError as e:
            self.report("modes", where, f"cannot list its files: {e.strerror}")
            return
        if not loose:
            return
        shown = ", ".join(loose[:MODE_EXAMPLES]) + (f" and {len(loose) - MODE_EXAMPLES} more"
                                                     if len(loose) > MODE_EXAMPLES else "")
        def fix():
            done = 0
            for p in loose:
                try:
                    private.tighten(p)
                    done += 1
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise errors.TierfsError(f"{p}: {e.strerror} ({done} done)") from e
            return f"{done} made 0600 (files) / 0700 (directories)"
        self.report("modes", where, f"{len(loose)} file(s) or directories other users may open (more open than "
                    f"0600/0700): {shown}", fix=fix)


def run(catalog: Catalog, tiers: dict[str, Tier], **kw) -> Fsck:
    f = Fsck(catalog, tiers, **kw)
    f.run()
    return f


def as_dict(f: Finding) -> dict:
    return dict(asdict(f), severity=f.severity.value)
