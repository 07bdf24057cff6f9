"""The Catalog interface and the records it stores.

The catalog is the filesystem's single source of truth for the namespace
(dentries), file metadata (inodes), where each file's bytes are (tier +
location, and an archive copy), the job queue, mount sessions, the history
of state changes, and objects waiting to be deleted from tiers (garbage).

Every implementation (catalog/sql.py, catalog/mongo.py) passes the shared
conformance suite in tests/catalog/test_conformance.py. Methods are
synchronous and may block; the daemon calls them from worker threads.
Each method that changes more than one record is atomic: it happens
entirely or not at all, also against other processes sharing the catalog.
"""

from __future__ import annotations

import abc
import collections
import enum
import json
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Container, Iterable, Iterator, Sequence, TypedDict

from .. import errors

ROOT_INO = 1
#: 2: inodes carry last_access_ns (see Inode.last_access_ns); version 1 catalogs are migrated at init.
#: 3: further archive copies, stubs, in-place origins (issue 18). 4: running totals of the live regular
#: files per (state, tier, archive_tier) for `du` and `status` (Catalog.totals; issue 20), filled from a
#: scan when a version 3 catalog is opened. 5: inodes carry size_class (see size_class), indexed with the
#: state and last access for policy rules that bound both the last access and the size. 6: the candidates
#: index (base.Candidate), which a rule's selection reads alone (MongoDB builds it in the upgrade step).
#: 7: MongoDB's directory stripes (mongo.STRIPES: creates in one directory write no shared document);
#: nothing changes in SQLite.
SCHEMA_VERSION = 7


def now_ns() -> int:
    return time.time_ns()


def resolve_paths(inos: list[int], names: dict[int, tuple[int, bytes]], cache: dict[int, bytes]) -> dict[int, bytes]:
    """Paths of `inos` from their (parent, name) links, for paths_of():
    ancestors (directories) go into `cache`; inodes with no way up are left out."""
    out = {}
    for ino in inos:
        chain, cur = [], ino
        while cur not in cache and cur in names:
            chain.append(cur)
            cur = names[cur][0]
        if cur not in cache:
            continue  # no name (unlinked), or an ancestor vanished meanwhile
        p = cache[cur]
        for a in reversed(chain):
            p = names[a][1] if not p else p + b"/" + names[a][1]
            if a != ino:
                cache[a] = p
        out[ino] = p
    return out


def check_owner(job_id: int, session: str, found: tuple[str, str | None] | None) -> None:
    """Fencing by session: raise Fenced unless the job (its (state, session)
    as `found` in the catalog, None: no such job) is running under
    `session`. Every fenced change (a move's commit, a job's finish, retry
    or update) checks this in the same transaction or atomic update as the
    change itself, on every backend."""
    if found is None:
        raise errors.Fenced(f"job {job_id} does not exist")
    state, owner = found
    if JobState(state) != JobState.RUNNING or owner != session:
        raise errors.Fenced(f"job {job_id} is no longer run by session {session} (it is {JobState(state)}"
                            + (f" by session {owner})" if owner else ")"))


def ended_by_commit(state: "JobState", session: str | None, found: tuple[str, str | None] | None) -> bool:
    """finish_job(state) by `session` of a job `found` (state, session) done
    by its own commit (Transition.ends_job): nothing left to record."""
    return (session is not None and found is not None and JobState(state) == JobState.DONE
            and JobState(found[0]) == JobState.DONE and found[1] == session)


def check_expected(inode: "Inode", expect_version: int | None, expect_states: Iterable["State"] | None) -> None:
    """The compare-and-swap of update/switch/bury: VersionConflict unless the
    inode still has `expect_version` and one of `expect_states` (None: any)."""
    if expect_version is not None and inode.data_version != expect_version:
        raise errors.VersionConflict(
            f"inode {inode.ino}: content version {inode.data_version} != expected {expect_version}")
    if expect_states is not None and inode.state not in set(expect_states):
        raise errors.VersionConflict(f"inode {inode.ino}: state {inode.state} not in {list(map(str, expect_states))}")


class State(str, enum.Enum):
    """Where a file's bytes are. Directories and symlinks are always ONLINE."""

    ONLINE = "online"        # bytes on an online tier only
    ARCHIVING = "archiving"  # being copied to an archive tier; readable and writable
    DUAL = "dual"            # valid copies online and in the archive
    ARCHIVED = "archived"    # bytes only in the archive (st_blocks is 0)
    RESTORING = "restoring"  # archived, a restore is running
    LOST = "lost"            # the archive copy is missing or fails its checksum

    def __str__(self) -> str:  # so f"{state}" prints "online"
        return self.value


#: States in which the online copy is valid and can be read directly.
READABLE_STATES = frozenset({State.ONLINE, State.ARCHIVING, State.DUAL})


class JobKind(str, enum.Enum):
    RESTORE = "restore"    # archive copy -> online tier
    ARCHIVE = "archive"    # online copy -> archive tier (then release unless keep_online)
    RELEASE = "release"    # drop the online copy of a dual file
    MIGRATE = "migrate"    # online tier -> another online tier

    def __str__(self) -> str:
        return self.value


class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


#: Lower runs first: restores before everything else (users are waiting).
JOB_PRIORITY = {JobKind.RESTORE: 0, JobKind.RELEASE: 5, JobKind.MIGRATE: 10, JobKind.ARCHIVE: 20}
ACTIVE_JOB_STATES = (JobState.PENDING, JobState.RUNNING)


@dataclass
class Inode:
    """One file, directory or symlink. Field comments are the schema's spec."""

    ino: int                        # inode number; 1 is the root directory
    mode: int                       # st_mode: file type bits | permission bits
    uid: int                        # owner uid
    gid: int                        # owner gid
    nlink: int = 1                  # dentries pointing here (+1 per subdir and 1 for '.' on dirs); 0 = unlinked, kept while open
    size: int = 0                   # logical size in bytes (may exceed stored bytes: sparse files)
    atime_ns: int = 0               # last access (reads/opens; see access tracking)
    mtime_ns: int = 0               # last content modification
    ctime_ns: int = 0               # last metadata change
    crtime_ns: int = 0              # creation time
    rdev: int = 0                   # device number for device nodes (mknod)
    target: bytes | None = None     # symlink target; None for non-symlinks
    state: State = State.ONLINE     # where the bytes are; see State
    tier: str | None = None         # online tier holding the bytes; None when archived or not a regular file
    location: str | None = None     # object key on `tier`; None = no object yet (file reads as zeros up to size)
    archive_tier: str | None = None     # archive tier holding a copy (dual/archived/restoring/lost); else None
    archive_location: str | None = None  # object key on `archive_tier`
    checksum: str | None = None     # sha256 hex of the current content; None until finalised (or after a write)
    data_version: int = 0           # bumped on every content change; moves compare-and-swap on it
    state_ns: int = 0               # when `state` last changed
    state_cause: str = ""           # why it last changed: "create", "command archive by uid 1000", "policy rule 'old'"...
    archive_copies: str | None = None   # further archive copies beyond archive_tier: JSON [[tier, key], ...]; None = none
    stub_size: int = 0              # first bytes kept online while archived (Catalog stubs); 0 = none
    origin_tier: str | None = None      # a released in-place original: the in-place tier a restore puts it back on
    origin_location: str | None = None  # ... and its key there (path relative to that tier's root)

    @property
    def last_access_ns(self) -> int:
        """Last access or modification, whichever is later (Robinhood's
        last_access): what inactivity is measured from (policies'
        inactive_for and their overrides, `tierfs find --inactive`, the
        least-recently-used order of watermark runs), so a file written a
        minute ago is active however long ago it was last read. The
        catalogs store it as the indexed last_access_ns (schema.py) and keep
        it equal to this on every write of atime_ns or mtime_ns."""
        return max(self.atime_ns, self.mtime_ns)

    @property
    def size_class(self) -> int:
        """size_class(self.size): stored and indexed by the catalogs, which
        keep it equal to this on every write of the size."""
        return size_class(self.size)

    def is_dir(self) -> bool:
        return (self.mode & 0o170000) == 0o040000

    def is_reg(self) -> bool:
        return (self.mode & 0o170000) == 0o100000

    def is_symlink(self) -> bool:
        return (self.mode & 0o170000) == 0o120000

    def copy(self, **changes) -> "Inode":
        """A copy with some fields changed (dataclasses.replace, at a third of
        its cost: the engine copies an inode several times per request)."""
        if not _INODE_FIELD_SET.issuperset(changes):
            raise TypeError(f"Inode has no field(s) {sorted(set(changes) - _INODE_FIELD_SET)}")
        new = object.__new__(Inode)
        d = new.__dict__
        d.update(self.__dict__)
        d.update(changes)
        return new


# ---- several archive copies (Inode.archive_copies, Job.more_targets) -------------------------------
# The primary copy stays in archive_tier/archive_location (the indexed columns every query uses); the
# further ones are JSON text: [[tier, key], ...] on the inode, ["tier", ...] on an archive job. These
# helpers are the only code that reads or writes that text.

def copies_of(inode: Inode) -> list[tuple[str, str]]:
    """Every archive copy of the file as (tier, key): the primary first, then the further ones."""
    out = [(inode.archive_tier, inode.archive_location)] if inode.archive_tier and inode.archive_location else []
    return out + further_copies(inode.archive_copies)


def missing_targets(inode: Inode, targets: Iterable[str]) -> list[str]:
    """The archive tiers of `targets` on which the file has no archive copy yet."""
    have = {t for t, _ in copies_of(inode)}
    return [t for t in targets if t not in have]


def further_copies(text: str | None) -> list[tuple[str, str]]:
    """The copies Inode.archive_copies holds (beyond the primary) as (tier, key)."""
    return [(t, k) for t, k in json.loads(text)] if text else []


def count_further_copies(by_archive: dict[str, tuple[int, int]], rows: Iterable[tuple[int, str]]) -> None:
    """Add the further copies of each (size, archive_copies) row to CatalogStats.by_archive: a file
    with copies on two tiers counts on both."""
    for size, text in rows:
        for tier, _ in further_copies(text):
            n, b = by_archive.get(tier, (0, 0))
            by_archive[tier] = (n + 1, b + int(size or 0))


def copies_changes(copies: Sequence[tuple[str, str]]) -> "Changes":
    """The Changes that make `copies` (primary first) the file's archive copies; none: no archive copy."""
    first = copies[0] if copies else (None, None)
    rest = [list(c) for c in copies[1:]]
    return Changes(archive_tier=first[0], archive_location=first[1],
                   archive_copies=json.dumps(rest) if rest else None)


def copy_pattern(tier: str, key: str) -> str:
    """The text one copy is in Inode.archive_copies (a substring search for it: Catalog.references)."""
    return json.dumps([tier, key])


def targets_of(job: "Job") -> list[str]:
    """Every archive tier an archive job copies to: its target_tier first, then its more_targets."""
    return list(dict.fromkeys(t for t in [job.target_tier, *further_targets(job.more_targets)] if t))


def further_targets(text: str | None) -> list[str]:
    """The tiers Job.more_targets holds."""
    return json.loads(text) if text else []


def encode_targets(more: Sequence[str]) -> str | None:
    """Job.more_targets for the further archive tiers `more` (None: none)."""
    return json.dumps(list(more)) if more else None


INODE_FIELDS = tuple(f.name for f in fields(Inode))
_INODE_FIELD_SET = frozenset(INODE_FIELDS)
_STATE_OF = {s.value: s for s in State}


def inode_from_values(values) -> Inode:
    """An Inode from its field values in INODE_FIELDS order, the state as
    stored (its value). A third of the dataclass constructor's cost, which
    matters where one is built per directory entry (a listing of 500 spent
    34% of its time building them, issue 16)."""
    new = object.__new__(Inode)
    d = new.__dict__
    d.update(zip(INODE_FIELDS, values))
    d["state"] = _STATE_OF[d["state"]]
    return new


class DirEntry:
    """One name in a directory; `pos` is the stable readdir cookie. A catalog
    may hand the inode's field values instead of the Inode (`values`, in
    INODE_FIELDS order): it is built on first use, so a listing that serves
    inodes the engine has cached builds none (issue 16)."""

    __slots__ = ("pos", "name", "ino", "_inode", "_values")

    def __init__(self, pos: int, name: bytes, inode: Inode | None = None, *, values=None, ino: int | None = None):
        self.pos = pos
        self.name = name
        self._inode = inode
        self._values = values
        self.ino: int = inode.ino if inode is not None else values[0] if values is not None else ino

    def has_inode(self) -> bool:
        return self._inode is not None or self._values is not None

    @property
    def inode(self) -> Inode:
        if self._inode is None:
            self._inode = inode_from_values(self._values)
        return self._inode

    @inode.setter
    def inode(self, inode: Inode) -> None:
        self._inode = inode
        self.ino = inode.ino

    def __eq__(self, other) -> bool:
        return isinstance(other, DirEntry) and (self.pos, self.name, self.inode) == (other.pos, other.name, other.inode)

    def __repr__(self) -> str:
        return f"DirEntry(pos={self.pos}, name={self.name!r}, inode={self.inode!r})"


@dataclass
class Listed:
    """One entry of a directory listing (Catalog.list_dir): its name, its
    inode, and those of the attributes asked for that it has."""

    name: bytes
    inode: Inode
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


@dataclass
class Job:
    """A queued request to move bytes. Field comments are the schema's spec."""

    id: int                          # job id, increasing
    ino: int                         # the file the job acts on
    kind: JobKind                    # restore / archive / release / migrate
    state: JobState = JobState.PENDING  # pending -> running -> done | failed | cancelled
    priority: int = 0                # lower runs first (JOB_PRIORITY)
    target_tier: str | None = None   # destination tier (archive/migrate/restore)
    keep_online: bool = False        # archive only: leave the file dual instead of releasing
    cause: str = ""                  # who or what asked: "command by uid 1000", "policy rule 'cold'"
    session: str | None = None       # session id of the mount running it (state running; kept if its commit ended it)
    attempts: int = 0                # times it has been started
    not_before_ns: int = 0           # do not start before this time (retry backoff)
    last_error: str = ""             # last failure, for `tierfs queue`
    dst_key: str | None = None       # object key written on the destination (durable so a crash can clean it up)
    created_ns: int = 0
    updated_ns: int = 0
    uid: int | None = None           # uid of the user who asked; None = the daemon (policy, recovery)
    more_targets: str | None = None  # archive: further archive tiers, JSON ["tier", ...], each verified first


@dataclass
class Session:
    """A mounted daemon using this catalog."""

    id: str                # random id, chosen at mount
    host: str              # hostname
    pid: int               # daemon pid on that host
    mountpoint: str        # where it is mounted
    started_ns: int        # when it registered
    heartbeat_ns: int      # last heartbeat; stale sessions are reaped
    clean: bool = False    # True once it unmounted cleanly


@dataclass
class Event:
    """One state transition of one file (the file's history)."""

    id: int
    ino: int
    time_ns: int
    from_state: str
    to_state: str
    cause: str
    detail: str = ""


@dataclass
class Garbage:
    """A tier object that no inode points to any more and must be deleted."""

    id: int
    tier: str
    key: str
    created_ns: int
    reason: str = ""


@dataclass
class Tombstone:
    """A file removed by a compliance deletion (policy action `delete`): the
    name is gone and the bytes go with purge(); this record stays."""

    id: int                    # tombstone id, increasing
    ino: int                   # inode number the file had
    path: bytes                # its path relative to the root when it was deleted
    size: int                  # logical size then
    uid: int                   # owner uid then
    gid: int                   # owner gid then
    crtime_ns: int             # creation time
    mtime_ns: int              # last modification
    atime_ns: int              # last access
    state: str                 # state when deleted (online, dual, archived, lost)
    tier: str | None           # online tier that held its bytes, if any
    archive_tier: str | None   # archive tier that held a copy, if any
    checksum: str | None       # sha256 of the content, if known
    deleted_ns: int            # when it was deleted
    who: str                   # what deleted it: "policy rule 'retention' (session 1a2b on host h)"
    why: str                   # why: the values that matched ("created 400d ago > 365d")


class Changes(TypedDict, total=False):
    """What a move's commit may change on an inode (a subset of Inode's
    fields; `state_ns` / `state_cause` follow from `state` and the cause)."""
    state: State
    tier: str | None
    location: str | None
    archive_tier: str | None
    archive_location: str | None
    checksum: str | None
    data_version: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    archive_copies: str | None
    stub_size: int
    origin_tier: str | None
    origin_location: str | None


@dataclass(frozen=True)
class Transition:
    """The commit point of a move (archive, restore, migrate, release, an
    upload of a staged copy, a repair): Catalog.switch applies `changes` only
    if the inode still has `expect_version` and one of `expect_states` (and,
    with `no_writers_except`, no other session has it open for writing)."""
    ino: int
    expect_version: int
    expect_states: tuple[State, ...]
    changes: Changes
    cause: str                      # the history's cause, and state_cause when the state changes
    detail: str = ""                # the history's detail ("disk -> vault, 1234 bytes")
    garbage: tuple[tuple[str, str], ...] = ()   # (tier, key) objects no longer referenced after the commit
    garbage_reason: str = ""        # the garbage's reason, for the collector (default: the cause)
    job_id: int | None = None       # the job whose dst_key the commit clears (its copy is now referenced)
    #: fencing: the session that claimed job_id (Job.session); the commit applies only while the job is
    #: still running under it (check_owner), so a mount whose session was reaped cannot commit a job
    #: that went back to the queue and on to another mount
    job_session: str | None = None
    #: the commit is the job's end (job_id, job_session): it is marked done in the same transaction, so a
    #: session reaped between the commit and the runner's finish_job cannot have its job run again
    #: elsewhere. Its `session` stays (finish_job(DONE) by that session is then a no-op: ended_by_commit).
    ends_job: bool = False
    no_writers_except: str | None = None
    #: partial-state files: keep these first bytes online (stub_size = len; b"" drops the stub); None: the
    #: stub stays, unless the commit makes the file readable online again, which drops it (Catalog.switch)
    stub: bytes | None = None

    def __post_init__(self):
        unknown = set(self.changes) - set(Changes.__annotations__)
        if unknown:
            raise TypeError(f"Transition of inode {self.ino}: not a move's change: {sorted(unknown)}")
        object.__setattr__(self, "expect_states", tuple(self.expect_states))
        object.__setattr__(self, "garbage", tuple((t, k) for t, k in self.garbage if t and k))


@dataclass
class FileQuery:
    """Filter for candidate/find queries; every field optional (AND).

    Served by indexes on (state, last access, size), (state, size) and
    tier, so cost grows with the number of matches rather than with the
    catalog.
    """

    states: tuple[State, ...] | None = None
    tier: str | None = None            # online tier
    archive_tier: str | None = None
    min_size: int | None = None
    max_size: int | None = None
    last_access_before_ns: int | None = None   # Inode.last_access_ns (access or modification) before this
    crtime_before_ns: int | None = None
    mtime_before_ns: int | None = None
    uid: int | None = None
    gid: int | None = None
    regular_only: bool = True
    order_by_last_access: bool = False   # least recently used (Inode.last_access_ns) first: watermark runs
    limit: int | None = None
    after_ino: int = 0                 # paging: only inos greater than this (ignored when ordering by last access)
    name_glob: bytes | None = None     # one of the file's names matches this shell pattern (* ? [...], case-sensitive)
    under: int | None = None           # directory inode: only entries below it, at any depth (not itself)
    checksum_missing: bool = False     # only files with no recorded sha256 (the checksummer's backlog)


#: Fields count_by() can group on (`owner` in the CLI is uid).
COUNT_BY_FIELDS = ("state", "tier", "archive_tier", "uid", "gid")


def check_count_by(by: str) -> None:
    """Invalid unless count_by() can group on `by`."""
    if by not in COUNT_BY_FIELDS:
        raise errors.Invalid(f"cannot count by {by!r} (one of {', '.join(COUNT_BY_FIELDS)})")


#: FileQuery conditions besides states and regular_only.
_BEYOND_STATES = ("tier", "archive_tier", "min_size", "max_size", "last_access_before_ns", "crtime_before_ns",
                  "mtime_before_ns", "uid", "gid", "checksum_missing", "name_glob", "under")


def states_only(q: FileQuery) -> bool:
    """True when q selects by states (or nothing) alone: query_names then
    walks an index of (state, ino, nlink, mode) on its own, in inode number
    order (`tierfs find --state S`, `tierfs find`)."""
    return all(getattr(q, f) is None or getattr(q, f) is False for f in _BEYOND_STATES)   # (uid 0 is one)


#: The largest size class (sizes are below 2**63).
MAX_SIZE_CLASS = 63


def size_class(size: int) -> int:
    """The power-of-two class of a size: its bit length (0 bytes: 0; 1: 1;
    2-3: 2; ...; 256 MiB-512 MiB: 29). A policy rule bounds both the last
    access and the size (inactive for 90 days and >= 256 MiB), two ranges
    no single B-tree walk can bound together: on (state, last_access_ns,
    size) the walk reads every entry in the last-access range and tests the
    size on each (10M entries: 1.1M index entries for 100,000 candidates,
    about 2 s on MongoDB). On (state, size_class, last_access_ns, size) it
    reads one last-access range per class the size bounds allow: the
    matches, plus those of the boundary class below a bound that is no
    power of two."""
    return size.bit_length() if size > 0 else 0


def size_classes(q: FileQuery) -> list[int] | None:
    """The size classes q's size bounds allow, when q bounds both the size
    and the last access (the queries size_class serves); else None."""
    if q.last_access_before_ns is None or (q.min_size is None and q.max_size is None):
        return None
    return candidate_classes(q)


def by_range_index(q: FileQuery) -> bool:
    """True when q is a policy rule's (Catalog.candidates reads it from the
    candidates index alone): states and a last-access or size bound,
    everything wanted (no limit, no paging), with no name, subtree or
    checksum condition."""
    return (q.states is not None and q.limit is None and not q.order_by_last_access and q.under is None
            and q.name_glob is None and not q.checksum_missing and not q.after_ino
            and (q.last_access_before_ns is not None or q.min_size is not None or q.max_size is not None))


def candidate_classes(q: FileQuery) -> list[int]:
    """The size classes a candidates query walks: those q's size bounds
    allow (all of them without one), so every rule's query bounds the
    candidates index's second column, whichever of the last access and the
    size it bounds."""
    lo = size_class(q.min_size) if q.min_size is not None else 0
    hi = size_class(q.max_size) if q.max_size is not None else MAX_SIZE_CLASS
    return list(range(lo, min(hi, MAX_SIZE_CLASS) + 1))


@dataclass(slots=True)
class Candidate:
    """What a policy rule decides on for one file (policy.criteria's checks,
    the engine's Action, missing_targets): every field here is a column of
    the candidates index (schema.py ix_inodes_candidates, mongo.py
    CANDIDATES_INDEX), so selecting a rule's candidates reads index entries
    only, no row. 10M entries, 100,000 candidates with the page cache
    dropped: the rows alone were 100,000 random reads, 2.4-3.0 s on this
    machine's disk (bench/RESULTS.md). The attribute names are Inode's: what
    reads one reads the other."""

    ino: int
    state: State
    size: int
    last_access_ns: int
    mtime_ns: int
    crtime_ns: int
    mode: int
    nlink: int
    uid: int
    gid: int
    tier: str | None
    archive_tier: str | None
    archive_location: str | None
    archive_copies: str | None
    data_version: int


#: What the policy engine decides on: a rule's Candidate, or an Inode (watermark runs read whole rows).
Decidable = Candidate | Inode

#: Candidate's fields in order: the covered columns a candidates query returns.
CANDIDATE_FIELDS = tuple(f.name for f in fields(Candidate))


def candidate_from_values(values: Sequence) -> Candidate:
    """A Candidate from its values in CANDIDATE_FIELDS order, the state as stored."""
    c = Candidate(*values)
    c.state = _STATE_OF[c.state]
    return c


def map_ahead(fn: Callable, items: Iterator, workers: int = 2) -> Iterator:
    """fn(item) for each of `items`, in order, up to `workers` calls in
    flight on threads of their own while the caller takes the results: the
    server reads of one overlap those of the next (with a cold cache, the
    disk's; `tierfs find` on MongoDB: the names of consecutive inode pages).
    `items` is iterated in the caller's thread. Closing the iterator early
    waits for the calls in flight."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(workers, thread_name_prefix="tierfs-map") as pool:
        ahead: collections.deque = collections.deque()
        try:
            for item in items:
                ahead.append(pool.submit(fn, item))
                if len(ahead) >= workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            for f in ahead:
                f.cancel()


def fetch_ahead(batches: Iterator[list], ahead: int = 2) -> Iterator[list]:
    """The lists `batches` yields, made in a thread up to `ahead` lists
    before the consumer takes them: the server's work and the reply's
    decoding for the next batch overlap the consumer's work on this one
    (`tierfs find` on MongoDB: the round trips of its next 5,000 names while
    it prints these). Whole lists cross between the threads, never single
    rows (a queue handoff costs microseconds). An exception of `batches`
    reaches the consumer after the lists before it; closing the iterator
    early stops the thread after the list it is making."""
    import queue as queue_mod
    import threading
    q: queue_mod.Queue = queue_mod.Queue(maxsize=ahead)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        q.put((batch, None), timeout=0.1)
                        break
                    except queue_mod.Full:
                        continue
                if stop.is_set():
                    return
            q.put((end, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put((end, e))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
    t = threading.Thread(target=produce, name="tierfs-fetch-ahead", daemon=True)
    t.start()
    try:
        while True:
            batch, exc = q.get()
            if batch is end:
                if exc is not None:
                    raise exc
                return
            yield batch
    finally:
        stop.set()
        while t.is_alive():   # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue_mod.Empty:
                pass
        t.join()


#: The FileQuery fields count_by() may answer from the running totals with: all others as in FileQuery().
_TOTALS_IGNORED = ("order_by_last_access", "limit", "after_ino")
#: The fields the running totals are kept per (Catalog.totals keys, in order).
TOTALS_FIELDS = ("state", "tier", "archive_tier")


def totals_answer(q: FileQuery, by: str) -> bool:
    """True when count_by(q, by) is a sum of Catalog.totals(): every live
    regular file (the root's `tierfs du`, `tierfs status`), grouped by a
    field the totals are kept per."""
    if by not in TOTALS_FIELDS:
        return False
    plain = FileQuery()
    return all(getattr(q, f) == getattr(plain, f) for f in q.__dataclass_fields__ if f not in _TOTALS_IGNORED)


def group_totals(totals: dict, by: str) -> dict:
    """count_by's answer {value: (files, bytes)} summed from Catalog.totals() rows."""
    k = TOTALS_FIELDS.index(by)
    out: dict = {}
    for key, (n, b) in totals.items():
        m, c = out.get(key[k], (0, 0))
        out[key[k]] = (m + n, c + b)
    return out


@dataclass
class CatalogStats:
    """Counts for `tierfs status`."""

    by_state: dict[str, tuple[int, int]] = field(default_factory=dict)     # state -> (files, bytes)
    by_tier: dict[str, tuple[int, int]] = field(default_factory=dict)      # tier -> (files, bytes), online copies
    by_archive: dict[str, tuple[int, int]] = field(default_factory=dict)   # archive tier -> (files, bytes)
    jobs: dict[str, dict[str, int]] = field(default_factory=dict)          # job state -> kind -> count


class Catalog(abc.ABC):
    """Namespace, metadata, locations, jobs, sessions, history and garbage."""

    #: True when several mounts may share this catalog (so cached attributes expire).
    shared: bool = False
    #: How many threads may call into the catalog at once.
    concurrency: int = 1
    #: Names of methods cheap and local enough (an embedded database, no
    #: network, ~30-400 us) to call on the event loop instead of handing them
    #: to a worker thread, whose round trip costs ~115 us on 2 cores.
    inline_calls: frozenset[str] = frozenset()
    #: How long a mount repeats a call that failed with errors.CatalogFailover
    #: (seconds; 0: the catalog has no failover).
    failover_wait_s: float = 0.0
    #: Statistic for tests and benchmarks: rows/documents read by candidate queries.
    rows_read: int = 0
    #: Statistic for tests and benchmarks: inode access times written.
    atime_writes: int = 0

    # ---- lifecycle -------------------------------------------------------
    @abc.abstractmethod
    def init(self, root_uid: int = 0, root_gid: int = 0, root_mode: int = 0o40755) -> None:
        """Create the schema if missing (with the root directory), migrate an
        older one, and refuse a newer one."""

    @abc.abstractmethod
    def initialised(self) -> bool:
        """True once init() has run on this catalog. Reads only: a reader
        (CLI, fsck) must never create a catalog as a side effect."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def hold_for_mount(self, mountpoint: str) -> None:
        """Claim the catalog for a mounted daemon until close() (or its death).
        A catalog only one mount may serve (an SQLite file) refuses a second
        with ConfigError naming the mount that holds it; one several mounts
        share (MongoDB) needs no claim."""

    @abc.abstractmethod
    def schema_version(self) -> int: ...

    # ---- namespace -------------------------------------------------------
    @abc.abstractmethod
    def get(self, ino: int) -> Inode:
        """The inode, or NotFound."""

    @abc.abstractmethod
    def get_many(self, inos: Iterable[int]) -> dict[int, Inode]:
        """{ino: inode} of those of `inos` that exist, read in batches (`tierfs find --json`: the
        attributes of each batch of names it prints)."""

    @abc.abstractmethod
    def lookup(self, parent: int, name: bytes) -> Inode:
        """The inode named `name` in directory `parent`, or NotFound."""

    @abc.abstractmethod
    def create(self, parent: int, name: bytes, inode: Inode) -> Inode:
        """Add a new inode (its `ino` is assigned here) under parent/name.
        Exists if the name is taken. A directory bumps the parent's nlink."""

    @abc.abstractmethod
    def create_many(self, entries: Sequence[tuple[int, bytes, Inode]], ctime_ns: int) -> list[Inode]:
        """create() of every (parent, name, inode), in one transaction (bulk
        registration by `tierfs import`): all or nothing, Exists/NotDir/NotFound
        as create(). The parents' mtime/ctime become ctime_ns."""

    @abc.abstractmethod
    def link(self, ino: int, parent: int, name: bytes, ctime_ns: int) -> Inode:
        """Add a hard link; returns the inode with its new nlink."""

    @abc.abstractmethod
    def unlink(self, parent: int, name: bytes, ctime_ns: int) -> Inode:
        """Remove a non-directory's name; returns the inode with nlink
        decremented (it stays in the catalog at nlink 0 until purge())."""

    def sync(self) -> None:
        """Make every change committed so far durable against a crash of the
        machine (fsync of a file or directory calls it; blocking). A catalog
        whose commits are durable when acknowledged has nothing to do: the
        MongoDB catalog writes with w=majority, which journals."""

    @abc.abstractmethod
    def remove(self, parent: int, name: bytes, ctime_ns: int,
               held: Callable[[Inode], bool] | None = None) -> tuple[Inode, bool]:
        """unlink(), and when that was the inode's last name, purge() in the same
        transaction unless the caller still holds it (`held(inode)`: open, or
        known to its kernel) or another mount has it open. Returns the inode as
        unlink() does and whether it was purged (one transaction where unlink +
        purge took two: issue 16)."""

    @abc.abstractmethod
    def rmdir(self, parent: int, name: bytes, ctime_ns: int) -> Inode:
        """Remove an empty directory's name (NotEmpty otherwise); nlink -> 0."""

    @abc.abstractmethod
    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               *, noreplace: bool = False, exchange: bool = False,
               ctime_ns: int = 0) -> Inode | None:
        """Move a dentry (one record update, no bytes move). Returns the inode
        that was replaced at the destination (nlink already decremented), or
        None. EXCHANGE swaps two existing names."""

    @abc.abstractmethod
    def readdir(self, parent: int, after_pos: int, limit: int, known: Container[int] = ()) -> list[DirEntry]:
        """Entries of `parent` with pos > after_pos, in pos order. Entries whose
        inode number is in `known` (the caller holds a current copy) may come
        without the inode (DirEntry.has_inode() False): the caller sets it."""

    @abc.abstractmethod
    def list_dir(self, parent: int, xattr_names: Sequence[bytes] = ()) -> list[Listed]:
        """Every entry of directory `parent` with its inode and its attributes
        named in `xattr_names` (`tierfs ls`), sorted by name bytes, in one
        query: a listing costs one round trip per directory, not one per file."""

    @abc.abstractmethod
    def parent_of(self, ino: int) -> int:
        """The directory containing `ino` (a directory's single parent)."""

    @abc.abstractmethod
    def path_of(self, ino: int) -> bytes:
        """One path of `ino` relative to the root, b"" for the root."""

    @abc.abstractmethod
    def update(self, ino: int, changes: dict, *, expect_version: int | None = None,
               expect_states: Iterable[State] | None = None) -> Inode:
        """Set inode fields. With expect_version / expect_states this is a
        compare-and-swap: VersionConflict when the stored values differ."""

    @abc.abstractmethod
    def bump_version(self, ino: int, changes: dict) -> Inode:
        """Atomically increment data_version, clear the checksum, and set
        `changes` (size, mtime, state...): the content changed."""

    @abc.abstractmethod
    def purge(self, ino: int) -> Inode | None:
        """Delete an inode with nlink 0 and its xattrs; its tier objects go to
        garbage in the same transaction. Returns it, or None if gone, linked,
        or still open in some session (set_open)."""

    @abc.abstractmethod
    def unlinked(self) -> list[Inode]:
        """Inodes with nlink 0 (kept while open; purged at recovery)."""

    @abc.abstractmethod
    def bury(self, ino: int, who: str, why: str, *, expect_version: int | None = None) -> Tombstone:
        """Compliance deletion, atomic: every name of the regular file `ino`
        goes (nlink -> 0; its bytes go with purge() once nothing has it
        open), its pending jobs are cancelled, and a Tombstone records what
        it was, who deleted it, when and why. With expect_version this is a
        compare-and-swap (VersionConflict if the file was written since).
        NotFound if it has no name any more; Invalid for a non-file."""

    @abc.abstractmethod
    def tombstones(self, ino: int | None = None, limit: int = 100) -> list[Tombstone]:
        """Tombstones, most recent first (of one inode number, or all)."""

    @abc.abstractmethod
    def set_atimes(self, atimes: dict[int, int]) -> None:
        """Write many access times in one transaction (batched access tracking);
        an atime never moves backwards here. Increments atime_writes."""

    # ---- xattrs ----------------------------------------------------------
    @abc.abstractmethod
    def getxattr(self, ino: int, name: bytes) -> bytes:
        """The value, or NoAttr."""

    @abc.abstractmethod
    def setxattr(self, ino: int, name: bytes, value: bytes, *, create: bool = False,
                 replace: bool = False, ctime_ns: int | None = None) -> None:
        """Set the value (Exists with create, NoAttr with replace) and the
        inode's ctime (`ctime_ns`, now if None)."""

    @abc.abstractmethod
    def listxattr(self, ino: int) -> list[bytes]: ...

    @abc.abstractmethod
    def removexattr(self, ino: int, name: bytes, ctime_ns: int | None = None) -> None:
        """NoAttr if absent; sets the inode's ctime (`ctime_ns`, now if None)."""

    # ---- state and moves -------------------------------------------------
    @abc.abstractmethod
    def switch(self, t: Transition) -> Inode:
        """The commit point of every move, atomic: if the inode still has
        `t.expect_version` and one of `t.expect_states` (and, with
        no_writers_except, no other session has it open for writing: see
        set_open), apply `t.changes`, add `t.garbage` to garbage, record
        (cause, detail) in the history when the state changes, and clear the
        job's dst_key. The file's stub (stub()) goes with it: `t.stub` set
        stores those bytes as the stub (stub_size = their length); a commit
        that leaves the file in a readable state drops the stub (the stub is
        the online part of an offline file only). Else VersionConflict and
        nothing changes. Returns the inode as committed."""

    @abc.abstractmethod
    def stub(self, ino: int) -> bytes:
        """The first stub_size bytes of an offline file kept online (b"": no
        stub). switch() stores and drops them; purge() removes them."""

    @abc.abstractmethod
    def set_open(self, ino: int, session: str, reading: bool, writing: bool) -> Inode:
        """Record that `session` has `ino` open (reading: any handle; writing: a
        writable one); both False removes the record. Mounts sharing a catalog
        use it so a move never switches a file another mount is writing, and an
        unlinked file stays while any mount has it open (purge() waits). It
        writes the inode too, so it serialises with switch(); the returned
        inode is as of that moment. Dead sessions' records go when reaped."""

    @abc.abstractmethod
    def add_event(self, ino: int, from_state: str, to_state: str, cause: str, detail: str = "") -> None: ...

    @abc.abstractmethod
    def events(self, ino: int, limit: int = 20) -> list[Event]:
        """Most recent first."""

    # ---- garbage ---------------------------------------------------------
    @abc.abstractmethod
    def add_garbage(self, items: Iterable[tuple[str, str]], reason: str = "") -> None: ...

    @abc.abstractmethod
    def garbage(self, limit: int = 100) -> list[Garbage]: ...

    @abc.abstractmethod
    def remove_garbage(self, ids: Iterable[int]) -> None: ...

    @abc.abstractmethod
    def references(self, tier: str, key: str, *, further: bool = True) -> bool:
        """True when some inode points at (tier, key) online or in the archive
        (or an active job is writing `key`). further=False leaves out the
        further archive copies (Inode.archive_copies), which only archive
        tiers hold: their search reads every file that has some (a partial
        index), so the garbage collector skips it for an online tier."""

    # ---- jobs ------------------------------------------------------------
    @abc.abstractmethod
    def enqueue(self, ino: int, kind: JobKind, *, target_tier: str | None = None,
                keep_online: bool = False, cause: str = "", uid: int | None = None,
                more_targets: str | None = None) -> tuple[Job, bool]:
        """Queue a job unless an active one of the same kind exists for the
        file (coalescing). Returns (job, created)."""

    @abc.abstractmethod
    def claim(self, session: str, kinds: Iterable[JobKind] | None = None,
              busy_tiers: Iterable[str] = (), *, tiers: Iterable[str] | None = None,
              skip: Iterable[int] = ()) -> Job | None:
        """Atomically take the most urgent runnable pending job (priority,
        then age) and mark it running by `session`. Jobs whose target_tier
        is in busy_tiers are skipped (per-tier concurrency); with `tiers`,
        so are jobs whose target_tier is not one of them (a mount claims
        only jobs it can run); jobs whose id is in `skip` too."""

    # Fencing: with `session` (the Job.session its claim returned), update_job, finish_job and retry_job
    # change the job only while it is still running under that session, checked atomically with the
    # change (check_owner); else Fenced and nothing changes. Without it (fsck, an operator) they apply.
    @abc.abstractmethod
    def update_job(self, job_id: int, changes: dict, *, session: str | None = None) -> None: ...

    @abc.abstractmethod
    def finish_job(self, job_id: int, state: JobState, error: str = "", *, session: str | None = None) -> None:
        """End a job. DONE also ends, as cancelled ("superseded by job N"),
        the failed jobs of the same kind for the same file: once a later
        restore brought the file back, its failed restore is no news."""

    @abc.abstractmethod
    def retry_job(self, job_id: int, error: str, delay_s: float, *, count: bool = True,
                  session: str | None = None) -> None:
        """Put a running job back to pending with last_error, not before
        now+delay. count=False: this run does not count as an attempt (the
        job waited for a tier to come back, or for space)."""

    @abc.abstractmethod
    def get_job(self, job_id: int) -> Job: ...

    @abc.abstractmethod
    def jobs(self, states: Iterable[JobState] | None = None, ino: int | None = None,
             limit: int = 1000, newest_first: bool = False) -> list[Job]:
        """Jobs in the given states (all: None), of one file or all; most
        urgent first (priority, then age), or the newest first (a file's
        recent jobs: it keeps every job it ever had)."""

    @abc.abstractmethod
    def cancel_jobs(self, job_ids: Iterable[int] | None = None, *, kind: JobKind | None = None) -> int:
        """Cancel pending jobs (by id, or all of a kind); returns the count."""

    # ---- sessions --------------------------------------------------------
    @abc.abstractmethod
    def register_session(self, session: Session) -> None: ...

    @abc.abstractmethod
    def heartbeat(self, session_id: str) -> bool:
        """Renew a live session's heartbeat. False, changing nothing, when the
        session has ended (reaped by another mount while this one could not
        reach the catalog): its jobs and open-file records are gone, and the
        mount registers a new session rather than bring the old one back."""

    @abc.abstractmethod
    def end_session(self, session_id: str, clean: bool = True) -> None: ...

    @abc.abstractmethod
    def sessions(self) -> list[Session]: ...

    @abc.abstractmethod
    def reap_sessions(self, older_than_ns: int) -> list[str]:
        """Sessions whose heartbeat is older than older_than_ns (and not clean)
        are ended: their running jobs return to pending. Returns their ids."""

    # ---- queries (policy, find, du, status) ------------------------------
    @abc.abstractmethod
    def query(self, q: FileQuery) -> Iterator[Inode]:
        """Inodes matching q, served by indexes; increments rows_read."""

    #: Candidates per page of candidates(): one short statement / find each.
    candidates_batch = 5000

    def candidates(self, q: FileQuery) -> Iterator[Candidate]:
        """A policy rule's candidates: the files matching q as the Candidates
        the engine decides on; increments rows_read. A rule's query
        (by_range_index) is read from the candidates index alone, by state
        and size class (candidate_classes), least recently used first within
        each, in pages of candidates_batch: each page is one short query
        (_candidate_rows), so no cursor or read transaction lives while the
        engine works (a rate-limited rule runs for hours: a MongoDB cursor
        idle for 10 minutes is killed, and an SQLite reader that old keeps
        the log from being checkpointed), and each page is as of its read.
        A page ends where the last access changes: the files sharing its
        last value are read with it (one query for exactly that value), so
        the next page starts after it and none is missed or read twice.
        Any other query comes from query(q)."""
        if not by_range_index(q):
            for i in self.query(q):
                yield Candidate(*(getattr(i, f) for f in CANDIDATE_FIELDS))
            return
        n = self.candidates_batch
        for state in q.states:
            for cls in candidate_classes(q):
                after = None
                while True:
                    rows = self._candidate_rows(q, State(state), cls, after=after, limit=n)
                    full = len(rows) == n
                    if full:   # complete the last value's files, whatever their number
                        last = rows[-1].last_access_ns
                        rows = [r for r in rows if r.last_access_ns != last] + \
                            self._candidate_rows(q, State(state), cls, equal=last)
                        after = last
                    self.rows_read += len(rows)
                    yield from rows
                    if not full:
                        break

    @abc.abstractmethod
    def _candidate_rows(self, q: FileQuery, state: State, cls: int, *, after: int | None = None,
                        equal: int | None = None, limit: int | None = None) -> list[Candidate]:
        """One page of candidates(q): those in `state` and size class `cls`
        with a last access after `after` (or exactly `equal`), least
        recently used first, at most `limit`, read from the candidates index
        alone (every condition of q tested on the index entry; no row or
        document read)."""

    @abc.abstractmethod
    def query_names(self, q: FileQuery) -> Iterator[tuple[int, bytes, int]]:
        """(parent, name, ino) of every name of every inode matching q (a
        hard-linked file once per name; with name_glob only matching names),
        in no particular order; limit/after_ino/order_by_last_access are ignored.
        Lean on purpose: `tierfs find` prints a million of these."""

    @abc.abstractmethod
    def names_of(self, inos: Iterable[int]) -> dict[int, tuple[int, bytes]]:
        """(parent, name) of each inode that has a name, in bulk: the name
        path_of and parent_of give (of a file with several, the same one)."""

    @abc.abstractmethod
    def xattrs_of(self, inos: Iterable[int], names: Iterable[bytes]) -> dict[int, dict[bytes, bytes]]:
        """The attributes among `names` set on each inode, in bulk (inodes
        with none of them are left out)."""

    @abc.abstractmethod
    def with_active_jobs(self, inos: Iterable[int]) -> set[int]:
        """Those of `inos` that have a job in ACTIVE_JOB_STATES, in bulk."""

    @abc.abstractmethod
    def paths_of(self, inos: Iterable[int], cache: dict[int, bytes] | None = None) -> dict[int, bytes]:
        """One path (relative to the root, b"" for the root) of each inode,
        resolved in bulk; inodes without a name are left out. `cache` maps
        directory inodes to their paths: it is used and filled in, so pass
        the same dict to resolve many batches with few catalog reads."""

    @abc.abstractmethod
    def count_by(self, q: FileQuery, by: str) -> dict:
        """{value of field `by` (COUNT_BY_FIELDS): (files, bytes)} over the
        inodes matching q (each inode once; limit/paging ignored). `tierfs du`."""

    @abc.abstractmethod
    def totals(self) -> dict[tuple[str, str | None, str | None], tuple[int, int]]:
        """{(state, tier, archive_tier): (files, bytes)} of the live regular
        files, from the running totals every inode change keeps in its own
        transaction (a few rows or documents: no scan). Keys with no file
        are left out."""

    @abc.abstractmethod
    def scan_totals(self) -> dict[tuple[str, str | None, str | None], tuple[int, int]]:
        """What totals() should be, computed by a scan of every inode (fsck, tests)."""

    @abc.abstractmethod
    def rebuild_totals(self) -> None:
        """Replace the running totals with scan_totals() (fsck --repair; bulk loads that bypass the catalog)."""

    @abc.abstractmethod
    def stats(self) -> CatalogStats: ...

    @abc.abstractmethod
    def tiers_in_use(self) -> set[str]:
        """Every tier name some inode (online or archive copy), garbage entry
        or active job refers to; from indexes, not a scan of every inode."""

    # ---- repair primitives (fsck only: no checks, no link counting) -------
    @abc.abstractmethod
    def scan_dentries(self, after_pos: int, limit: int) -> list[tuple[int, int, bytes, int]]:
        """Up to `limit` names as (pos, parent, name, ino) with pos > after_pos,
        in pos order: every name, whatever it points at."""

    @abc.abstractmethod
    def remove_dentry(self, parent: int, pos: int) -> None:
        """Delete the name at `pos` in directory `parent` as is (a name whose inode or directory is gone)."""

    @abc.abstractmethod
    def add_dentry(self, parent: int, name: bytes, ino: int) -> None:
        """Insert a name as is (an inode without names goes to /lost+found)."""

    # ---- key/value settings (schema version, leases) ---------------------
    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    @abc.abstractmethod
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew a named lease (e.g. "policy") for ttl_s seconds;
        False when another live holder has it."""
