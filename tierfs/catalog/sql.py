"""The Catalog on SQLite, through the standard library's sqlite3 (the
embedded default catalog; the tables are schema.py's).

One connection, its statements prepared once (sqlite3's statement cache),
serialised between threads by a lock: ~30 us per call, where SQLAlchemy
(tierfs before issue 15) cost ~0.3-0.5 ms of CPU per transaction.
Atomicity: every public method that writes runs in one transaction, started
with BEGIN IMMEDIATE so two processes (the daemon and a CLI) never deadlock
upgrading a read lock; WAL mode lets readers proceed while the daemon writes,
and a busy database is waited for up to 30 s (busy_timeout).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import pwd
import socket
import sqlite3
import threading
from typing import Callable, Container, Iterable, Iterator, Sequence, TypeVar

from .. import errors, private
from . import schema as S
from .base import (ACTIVE_JOB_STATES, CANDIDATE_FIELDS, INODE_FIELDS, JOB_PRIORITY, ROOT_INO, SCHEMA_VERSION,
                   Candidate, CatalogStats, DirEntry, Event, FileQuery, Garbage, Inode, Job, JobKind, JobState,
                   Listed, Session, State, Tombstone, by_range_index, candidate_classes, candidate_from_values,
                   check_count_by, check_expected, check_owner, copy_pattern, count_further_copies, ended_by_commit,
                   further_copies, further_targets, group_totals, inode_from_values, now_ns, resolve_paths,
                   size_classes, states_only, totals_answer)
from .core import CatalogCore, Txn

log = logging.getLogger(__name__)

T = TypeVar("T")

#: query_names' first batch: the first path comes after this many rows are read. With the page cache
#: dropped each may be a random read of the inodes (1M entries, 5% matching: 5,000 rows took 1.3 s).
FIRST_NAMES = 500
#: How long a statement waits for another process's write lock before the catalog is unavailable.
BUSY_TIMEOUT_S = 30


def _add_last_access(c: sqlite3.Connection) -> None:
    """Version 2: inodes.last_access_ns, generated from atime_ns and
    mtime_ns as schema.py defines it (its index comes with _sync_indexes).
    The column is VIRTUAL: adding it rewrites no row."""
    c.execute(f"ALTER TABLE inodes ADD COLUMN last_access_ns {S.LAST_ACCESS}")


def _add_copies_stubs_origins(c: sqlite3.Connection) -> None:
    """Version 3 (issue 18): the inode columns of further archive copies,
    stubs of partial-state files and released in-place originals, and the
    job columns of who asked and further archive targets, as schema.py
    defines them (the stubs table comes with init's table creation). Adding
    columns with NULL or constant defaults rewrites no row."""
    for table in ("inodes", "jobs"):
        have = {r[1] for r in c.execute(f"PRAGMA table_xinfo({table})")}
        for line in S.TABLES[table].splitlines()[1:]:
            col = line.strip().split(" ", 1)[0]
            if col in S.V3_COLUMNS[table] and col not in have:
                c.execute(f"ALTER TABLE {table} ADD COLUMN {line.strip().split(' -- ')[0].rstrip(',')}")


def _add_totals(c: sqlite3.Connection) -> None:
    """Version 4 (issue 20): the running totals for `du` and `status`. The
    triggers that keep them (schema.TRIGGERS) are created and the table
    filled from one scan of the inodes, in the transaction of init, so no
    change slips between; idempotent (init runs it on every catalog: a new
    one gets its triggers here)."""
    have = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    if all(name in have for name in S.TRIGGERS):
        return
    for name, ddl in S.TRIGGERS.items():
        if name not in have:
            c.execute(ddl)
    _fill_totals(c)


def _add_size_class(c: sqlite3.Connection) -> None:
    """Version 5: inodes.size_class, generated from the size as schema.py
    defines it (VIRTUAL: no row is rewritten; its index comes with
    _sync_indexes, one pass over the table)."""
    c.execute(f"ALTER TABLE inodes ADD COLUMN size_class {S.SIZE_CLASS}")


def _with_size_classes(q: FileQuery, conds: list[str], args: list) -> tuple[list[str], list]:
    """conds and args, plus `size_class IN (...)` when q bounds both the last
    access and the size (base.size_classes): the search then walks
    (state, size_class, last_access_ns, size), one last-access range per
    class, instead of the whole last-access range."""
    classes = size_classes(q)
    if classes is None:
        return conds, args
    return [*conds, f"inodes.size_class IN ({_marks(classes)})"], [*args, *classes]


def _fill_totals(c: sqlite3.Connection) -> None:
    c.execute("DELETE FROM totals")
    c.execute(f"INSERT INTO totals (state, tier, archive_tier, files, bytes) {S.TOTALS_FROM_INODES}")


def _totals_rows(rows) -> dict:
    """Catalog.totals() from (state, tier, archive_tier, files, bytes) rows ('' = no tier)."""
    return {(st, t or None, a or None): (n, int(b)) for st, t, a, n, b in rows if n}


def _no_change(c: sqlite3.Connection) -> None:
    """Version 7: nothing changes here (MongoDB's directory stripes: one
    transaction writes at a time in SQLite, so rmdir needs no guard)."""


def _add_candidates_index(c: sqlite3.Connection) -> None:
    """Version 6: nothing stored changes. The version is shared with MongoDB,
    whose step builds its candidates index; here _sync_indexes builds
    ix_inodes_candidates (10M inodes: about a minute, the catalog locked)."""


#: Migrations: version -> function(conn) upgrading from version-1.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {2: _add_last_access, 3: _add_copies_stubs_origins,
                                                               4: _add_totals, 5: _add_size_class,
                                                               6: _add_candidates_index, 7: _no_change}

_ACTIVE = tuple(s.value for s in ACTIVE_JOB_STATES)
_INODE_COLS = ", ".join(INODE_FIELDS)
_INODE_COLS_Q = ", ".join("inodes." + f for f in INODE_FIELDS)
_GET_SQL = f"SELECT {_INODE_COLS} FROM inodes WHERE ino = ?"
_DENTRY_SQL = "SELECT pos, ino FROM dentries WHERE parent = ? AND name = ?"
_INSERT_FIELDS = tuple(f for f in INODE_FIELDS if f != "ino")
#: A new inode's number is above every number ever given, not only above the live ones: SQLite's
#: rowid default (max + 1) handed a deleted file's number to the next file, and a move still
#: running on the deleted file then switched the new one to the old bytes (tests/engine/
#: test_reused_inode.py). meta 'ino_high' keeps the highest number deleted while it was the top.
_NEXT_INO = ("(SELECT max(coalesce(max(ino), 0), coalesce((SELECT CAST(value AS INTEGER) FROM meta "
             "WHERE \"key\" = 'ino_high'), 0)) + 1 FROM inodes)")
_INSERT_INODE_SQL = (f"INSERT INTO inodes (ino, {', '.join(_INSERT_FIELDS)}) "
                     f"VALUES ({_NEXT_INO}, {', '.join('?' * len(_INSERT_FIELDS))})")
_KEEP_INO_HIGH_SQL = ("INSERT INTO meta (\"key\", value) SELECT 'ino_high', ?1 "
                      "WHERE ?1 > coalesce((SELECT max(ino) FROM inodes), 0) "
                      "ON CONFLICT (\"key\") DO UPDATE SET value = excluded.value "
                      "WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)")
_LOOKUP_SQL = (f"SELECT {', '.join('i.' + f for f in INODE_FIELDS)} FROM dentries d JOIN inodes i ON i.ino = d.ino "
               "WHERE d.parent = ? AND d.name = ?")
_JOB_COLS = S.columns("jobs")
_JOB_SQL = f"SELECT {', '.join(_JOB_COLS)} FROM jobs"
_TOMBSTONE_COLS = S.columns("tombstones")
_TYPE_BITS, _REG, _DIR = 0o170000, 0o100000, 0o040000


def _inode_rows(c, inos: list[int]) -> dict[int, tuple]:
    """{ino: row of _INODE_COLS} of those of `inos` that exist, 500 per statement (readdir, get_many)."""
    out = {}
    for k in range(0, len(inos), 500):
        part = inos[k:k + 500]
        for v in c.execute(f"SELECT {_INODE_COLS} FROM inodes WHERE ino IN ({_marks(part)})", part):
            out[v[0]] = v
    return out


def _marks(values) -> str:
    return ", ".join("?" * len(values))


def _inode_values(inode: Inode) -> tuple:
    """The row of a new inode (no ino: the table assigns it), in _INSERT_FIELDS order."""
    return tuple(inode.state.value if k == "state" else getattr(inode, k) for k in _INSERT_FIELDS)


def _job(row) -> Job:
    d = dict(zip(_JOB_COLS, row))
    d["kind"], d["state"], d["keep_online"] = JobKind(d["kind"]), JobState(d["state"]), bool(d["keep_online"])
    return Job(**d)


def _get(c: sqlite3.Connection, ino: int) -> Inode:
    """The inode, or NotFound."""
    row = c.execute(_GET_SQL, (ino,)).fetchone()
    if row is None:
        raise errors.NotFound(f"inode {ino}")
    return inode_from_values(row)


def _set(c: sqlite3.Connection, ino: int, changes: dict) -> None:
    """Set inode fields (Invalid for a name that is not one)."""
    cols = [k for k in changes if k in INODE_FIELDS and k != "ino" and k != "last_access_ns"]
    if len(cols) != len(changes):
        raise errors.Invalid(f"cannot set inode fields {sorted(set(changes) - set(cols))}")
    if cols:
        vals = [v.value if isinstance(v, State) else v for v in changes.values()]
        c.execute(f"UPDATE inodes SET {', '.join(k + ' = ?' for k in cols)} WHERE ino = ?", (*vals, ino))


def _event(c: sqlite3.Connection, ino: int, frm, to, cause: str, detail: str = "") -> None:
    c.execute("INSERT INTO events (ino, time_ns, from_state, to_state, cause, detail) VALUES (?, ?, ?, ?, ?, ?)",
              (ino, now_ns(), str(frm), str(to), cause, detail))


def _add_garbage(c: sqlite3.Connection, items, reason: str) -> None:
    t = now_ns()
    rows = [(tier, key, t, reason) for tier, key in items if tier and key]
    if rows:
        c.executemany('INSERT INTO garbage (tier, "key", created_ns, reason) VALUES (?, ?, ?, ?)', rows)




class _SqliteTxn:
    """core.Txn on one SQLite transaction."""

    __slots__ = ("c",)

    def __init__(self, c: sqlite3.Connection):
        self.c = c

    def find_inode(self, ino: int) -> Inode | None:
        row = self.c.execute(_GET_SQL, (ino,)).fetchone()
        return None if row is None else inode_from_values(row)

    def find_dentry(self, parent: int, name: bytes) -> tuple[int, int] | None:
        return self.c.execute(_DENTRY_SQL, (parent, name)).fetchone()

    def has_children(self, ino: int) -> bool:
        return self.c.execute("SELECT pos FROM dentries WHERE parent = ? LIMIT 1", (ino,)).fetchone() is not None

    def first_name(self, ino: int) -> tuple[int, bytes] | None:
        return self.c.execute("SELECT parent, name FROM dentries WHERE ino = ? LIMIT 1", (ino,)).fetchone()

    def names_of(self, ino: int) -> list[tuple[int, int]]:
        return self.c.execute("SELECT pos, parent FROM dentries WHERE ino = ?", (ino,)).fetchall()

    def insert_inode(self, inode: Inode) -> int:
        return self.c.execute(_INSERT_INODE_SQL, _inode_values(inode)).lastrowid

    def insert_inodes(self, inodes: list[Inode]) -> list[int]:
        return [self.insert_inode(i) for i in inodes]

    def taken_name(self, parent: int, names: list[bytes]) -> bytes | None:
        for k in range(0, len(names), 500):
            part = names[k:k + 500]
            row = self.c.execute(f"SELECT name FROM dentries WHERE parent = ? AND name IN ({_marks(part)}) LIMIT 1",
                                 (parent, *part)).fetchone()
            if row is not None:
                return row[0]
        return None

    def set_fields(self, ino: int, changes: dict) -> None:
        _set(self.c, ino, changes)

    def touch_dirs(self, parents, ctime_ns: int, nlinks: dict[int, int] | None = None) -> None:
        nlinks = nlinks or {}
        self.c.executemany("UPDATE inodes SET mtime_ns = max(mtime_ns, ?1), ctime_ns = max(ctime_ns, ?1), "
                           "nlink = coalesce(?3, nlink) WHERE ino = ?2",
                           [(ctime_ns, p, nlinks.get(p)) for p in set(parents)])

    def seal_dir(self, ino: int) -> None:
        """Nothing to write: every transaction holds the one write lock (BEGIN IMMEDIATE), so none
        runs beside an rmdir."""

    def delete_inode(self, ino: int) -> None:
        self.c.execute("DELETE FROM inodes WHERE ino = ?", (ino,))
        self.c.execute(_KEEP_INO_HIGH_SQL, (ino,))
        self.c.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))
        self.c.execute("DELETE FROM stubs WHERE ino = ?", (ino,))

    def add_dentry(self, parent: int, name: bytes, ino: int) -> None:
        try:
            self.c.execute("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)", (parent, name, ino))
        except sqlite3.IntegrityError:
            raise errors.Exists(f"{name!r} exists in directory {parent}") from None

    def add_dentries(self, rows: list[tuple[int, bytes, int]]) -> None:
        try:
            self.c.executemany("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)", rows)
        except sqlite3.IntegrityError:
            raise errors.Exists("a name in the batch exists (created meanwhile)") from None

    def move_dentry(self, parent: int, name: bytes, pos: int, new_parent: int, new_name: bytes) -> None:
        self.c.execute("UPDATE dentries SET parent = ?, name = ? WHERE pos = ? AND parent = ?",
                       (new_parent, new_name, pos, parent))

    def point_dentry(self, parent: int, pos: int, ino: int) -> None:
        self.c.execute("UPDATE dentries SET ino = ? WHERE pos = ? AND parent = ?", (ino, pos, parent))

    def del_dentry(self, parent: int, pos: int) -> None:
        self.c.execute("DELETE FROM dentries WHERE pos = ? AND parent = ?", (pos, parent))

    def cancel_pending_jobs(self, ino: int, now: int) -> None:
        self.c.execute("UPDATE jobs SET state = ?, last_error = ?, updated_ns = ? WHERE ino = ? AND state = ?",
                       (JobState.CANCELLED.value, "file deleted", now, ino, JobState.PENDING.value))

    def open_anywhere(self, ino: int) -> bool:
        return self.c.execute("SELECT 1 FROM open_files WHERE ino = ? LIMIT 1", (ino,)).fetchone() is not None

    def other_writer(self, ino: int, session: str) -> str | None:
        row = self.c.execute("SELECT session FROM open_files WHERE ino = ? AND writing AND session != ? LIMIT 1",
                             (ino, session)).fetchone()
        return None if row is None else row[0]

    def add_event(self, ino: int, frm, to, cause: str, detail: str) -> None:
        _event(self.c, ino, frm, to, cause, detail)

    def add_garbage(self, items, reason: str) -> None:
        _add_garbage(self.c, items, reason)

    def clear_dst_key(self, job_id: int, now: int) -> None:
        self.c.execute("UPDATE jobs SET dst_key = NULL, updated_ns = ? WHERE id = ?", (now, job_id))

    def end_job(self, job_id: int, now: int, *, keep_session: bool = False) -> None:
        self.c.execute(f"UPDATE jobs SET state = ?, last_error = '', updated_ns = ?"
                       f"{'' if keep_session else ', session = NULL'} WHERE id = ?", (JobState.DONE.value, now, job_id))
        row = self.c.execute("SELECT ino, kind FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is not None:
            self.c.execute("UPDATE jobs SET state = ?, last_error = ?, updated_ns = ? "
                           "WHERE ino = ? AND kind = ? AND state = ? AND id < ?",
                           (JobState.CANCELLED.value, f"superseded by job {job_id}", now, row[0], row[1],
                            JobState.FAILED.value, job_id))

    def job_owner(self, job_id: int) -> tuple[str, str | None] | None:
        return self.c.execute("SELECT state, session FROM jobs WHERE id = ?", (job_id,)).fetchone()

    def set_stub(self, ino: int, data: bytes) -> None:
        if data:
            self.c.execute("INSERT OR REPLACE INTO stubs (ino, data) VALUES (?, ?)", (ino, data))
        else:
            self.c.execute("DELETE FROM stubs WHERE ino = ?", (ino,))

    def add_tombstone(self, values: dict) -> int:
        return self.c.execute(f"INSERT INTO tombstones ({', '.join(values)}) VALUES ({_marks(values)})",
                              tuple(values.values())).lastrowid


def _refuse_unreadable(path: str) -> None:
    """One clear line (exit 5), not SQLite's "unable to open database file",
    for a user who may not read the catalog: its files are 0600 (names,
    owners, modes, checksums and xattrs of every file, also inside private
    directories), for the user who mounts it and root. Others see their
    files through the mount."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except PermissionError:
        st = None   # a directory on the way is private
    if st is not None and os.access(path, os.R_OK):
        return
    owner = ""
    if st is not None:
        try:
            owner = f" ({pwd.getpwuid(st.st_uid).pw_name})"
        except KeyError:
            owner = f" (uid {st.st_uid})"
    raise errors.PermissionDenied(
        f"catalog {path}: permission denied: the catalog is readable only by its owner{owner} and root "
        f"(as uid {os.getuid()}, look at your files through the mount)")


def _private_files(path: str) -> None:
    """Create the SQLite file 0600 before SQLite does (it gives -wal and -shm
    the mode of the database file), and tighten the files of a catalog made
    by an older tierfs (0644: every local user could read it)."""
    try:
        os.close(private.create(path))
        return
    except FileExistsError:
        pass
    except PermissionError:
        return   # SQLite says why it cannot create it
    for p in (path, path + "-wal", path + "-shm", path + ".lock"):
        try:
            mode = os.stat(p).st_mode & 0o777
            if private.too_open(mode):
                private.tighten(p)
                log.info("catalog file %s was mode %o; now 0600", p, mode)
        except FileNotFoundError:
            pass
        except PermissionError as e:
            log.warning("catalog file %s is mode %o (readable by others) and cannot be made 0600: %s",
                        p, mode, e.strerror)


class SqlCatalog(CatalogCore):
    """Catalog in an SQLite file chosen by URL (sqlite:///path; sqlite:// or
    sqlite:///:memory: for one in memory). `on_connect` runs on every
    connection it opens (tests count SQLite's work with a progress handler)."""

    def __init__(self, url: str, *, on_connect: Callable[[sqlite3.Connection], None] | None = None):
        self.url = url
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            _refuse_unreadable(path)
            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d):
                raise errors.ConfigError(f"catalog: directory {d} does not exist")
        self.concurrency = 1
        self._path = path if path and path != ":memory:" else None   # None: in memory
        self._on_connect = on_connect
        self._conn: sqlite3.Connection | None = None   # opened at first use (the file may not exist yet)
        self._lock = threading.Lock()
        self._hold: int | None = None   # fd of the lock file while a daemon holds the catalog
        self._commits = 0               # write transactions committed (sync)
        self._synced = 0                # of which the log holds on disk (sync)
        self._sync_lock = threading.Lock()
        # candidates()' pages: a connection of their own, so a page (5,000 index entries: 7 ms warm, more
        # from disk) never holds the catalog's lock a FUSE request waits for
        self._side: sqlite3.Connection | None = None
        self._side_lock = threading.Lock()
        if self._path is not None:
            # Calls a FUSE request makes that are one short local transaction: a worker-thread
            # hand-off costs ~115 µs here, more than any of them (issue 16: rename 378 -> ? µs).
            self.inline_calls = frozenset({"get", "lookup", "create", "update", "bump_version", "unlink",
                                           "purge", "remove", "references", "rename", "link", "rmdir", "readdir",
                                           "getxattr", "setxattr", "listxattr", "removexattr", "parent_of",
                                           "stub"})

    # ---- plumbing ----------------------------------------------------------
    def connect(self) -> sqlite3.Connection:
        """A new connection to the catalog with the catalog's settings (WAL,
        synchronous=NORMAL, the busy timeout, autocommit: BEGIN is explicit),
        for the catalog itself and for tools that read its tables (bench, tests)."""
        conn = sqlite3.connect(self._path or ":memory:", timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False, cached_statements=128)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        except sqlite3.OperationalError as e:
            conn.close()
            raise errors.CatalogUnavailable(f"catalog {self.url}: {e}") from e
        if self._on_connect is not None:
            self._on_connect(conn)
        return conn

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as e:
            raise errors.CatalogUnavailable(f"catalog {self.url}: {e}") from e

    def _open(self) -> sqlite3.Connection:
        """The catalog's connection (the caller holds the lock)."""
        if self._conn is None:
            self._conn = self.connect()
        return self._conn

    def _one(self, sql: str, args: tuple):
        """The first row of one read statement (autocommit). The hottest calls
        (get, lookup) take this path: no context manager, ~15 us."""
        with self._lock:
            try:
                return self._open().execute(sql, args).fetchone()
            except sqlite3.OperationalError as e:
                raise errors.CatalogUnavailable(f"catalog {self.url}: {e}") from e

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """The connection for single-statement reads (autocommit)."""
        with self._lock:
            try:
                yield self._open()
            except sqlite3.OperationalError as e:
                raise errors.CatalogUnavailable(f"catalog {self.url}: {e}") from e

    @contextlib.contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: BEGIN IMMEDIATE to write, BEGIN (a consistent
        snapshot) for reads of several statements."""
        with self._lock:
            try:
                conn = self._open()
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                self._commits += write
            except sqlite3.OperationalError as e:
                raise errors.CatalogUnavailable(f"catalog {self.url}: {e}") from e

    def transaction(self, fn: Callable[[Txn], T]) -> T:
        """_tx written out: the namespace calls (create, unlink, ...) run
        through here, and a context manager costs ~10 us of their ~100."""
        with self._lock:
            try:
                conn = self._open()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(_SqliteTxn(conn))
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                self._commits += 1
                return result
            except sqlite3.OperationalError as e:
                raise errors.CatalogUnavailable(f"catalog {self.url}: {e}") from e

    def sync(self) -> None:
        """fdatasync the write-ahead log. With synchronous=NORMAL a commit is
        in the OS when it returns (a crash of the daemon loses none) but on
        the disk only at the next checkpoint: fsync() of a file or directory
        calls this, so what it returns survives a crash of the machine too
        (ext4's rule). Concurrent callers share one fdatasync."""
        if self._path is None:
            return
        with self._sync_lock:
            target = self._commits
            if self._synced >= target:
                return
            try:
                fd = os.open(self._path + "-wal", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return   # no log: every commit is in the database file (the last connection checkpointed)
            try:
                os.fdatasync(fd)
            except OSError as e:
                raise errors.CatalogUnavailable(f"catalog {self.url}: sync of the log: {e.strerror}") from e
            finally:
                os.close(fd)
            self._synced = target

    # ---- lifecycle ---------------------------------------------------------
    def init(self, root_uid: int = 0, root_gid: int = 0, root_mode: int = 0o40755) -> None:
        if self._path is not None:
            _private_files(self._path)
        with self._tx() as c:
            have = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for name, ddl in S.TABLES.items():
                if name not in have:
                    c.execute(ddl)
            row = c.execute("SELECT value FROM meta WHERE \"key\" = 'schema_version'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta (\"key\", value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            else:
                version = int(row[0])
                if version > SCHEMA_VERSION:
                    raise errors.ConfigError(
                        f"catalog schema version {version} is newer than this tierfs ({SCHEMA_VERSION}); upgrade tierfs")
                while version < SCHEMA_VERSION:
                    version += 1
                    log.info("migrating catalog schema to version %d", version)
                    MIGRATIONS[version](c)
                    c.execute("UPDATE meta SET value = ? WHERE \"key\" = 'schema_version'", (str(version),))
            self._sync_indexes(c)
            _add_totals(c)
            if c.execute("SELECT ino FROM inodes WHERE ino = ?", (ROOT_INO,)).fetchone() is None:
                t = now_ns()
                root = Inode(ino=ROOT_INO, mode=root_mode, uid=root_uid, gid=root_gid, nlink=2,
                             atime_ns=t, mtime_ns=t, ctime_ns=t, crtime_ns=t, state_ns=t, state_cause="mkfs")
                c.execute(f"INSERT INTO inodes (ino, {', '.join(_INSERT_FIELDS)}) "
                          f"VALUES (?, {_marks(_INSERT_FIELDS)})", (ROOT_INO, *_inode_values(root)))

    @staticmethod
    def _sync_indexes(c: sqlite3.Connection) -> None:
        """Give the tables exactly the indexes of schema.py: a catalog made by
        an older tierfs gets the indexes added since here, and loses those
        schema.DROPPED_INDEXES names. Runs at every init (a catalog already in
        shape costs one listing). Indexes change no stored data and an older
        tierfs reads the catalog as well with these ones, so this is no
        schema_version migration (which would lock older tierfs versions out)."""
        have = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        for name in sorted(S.INDEXES):
            if name not in have:
                log.info("catalog: creating index %s", name)
                c.execute(S.INDEXES[name])
        for name in S.DROPPED_INDEXES:  # after creating their replacements
            if name in have:
                log.info("catalog: dropping index %s (superseded)", name)
                c.execute(f"DROP INDEX IF EXISTS {name}")

    def initialised(self) -> bool:
        """True once init() has run on this catalog (it has a schema_version).
        Reads only: a missing or empty SQLite file is not opened (which would
        create it), and no table is created."""
        p = self._path
        if p is not None and (not os.path.exists(p) or (os.path.getsize(p) == 0 and not os.path.exists(p + "-wal"))):
            return False
        with self._read() as c:
            if c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
                return False
            return c.execute("SELECT 1 FROM meta WHERE \"key\" = 'schema_version'").fetchone() is not None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        with self._side_lock:
            if self._side is not None:
                self._side.close()
                self._side = None
        if self._hold is not None:
            os.close(self._hold)    # releases the lock
            self._hold = None
    def hold_for_mount(self, mountpoint: str) -> None:
        """An SQLite catalog serves one mount: a second daemon would cache sizes
        and attributes the first one changes (stale, contradictory stat()s).
        The daemon holds flock(LOCK_EX) on `catalog.db.lock` for its life (the
        kernel drops it when the process dies, SIGKILL included, so a remount
        needs no cleanup); the file names the holder for the refusal. Readers
        (status, find, fsck) do not take it."""
        if self._path is None:
            return   # in memory: nothing to share
        path = self._path + ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise errors.ConfigError(f"catalog: cannot open the lock file {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise errors.ConfigError(
                f"catalog {self._path} is in use by {holder or 'another tierfs daemon'}: an SQLite catalog "
                "serves one mount (unmount that one first, or use a MongoDB catalog to share one)") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"the tierfs mounted on {mountpoint} (pid {os.getpid()} on {socket.gethostname()})\n"
                  .encode(errors="surrogateescape"), 0)
        self._hold = fd

    def schema_version(self) -> int:
        return int(self.get_meta("schema_version") or 0)

    # ---- namespace ---------------------------------------------------------
    def get(self, ino: int) -> Inode:
        row = self._one(_GET_SQL, (ino,))
        if row is None:
            raise errors.NotFound(f"inode {ino}")
        return inode_from_values(row)

    def get_many(self, inos: Iterable[int]) -> dict[int, Inode]:
        with self._read() as c:
            rows = _inode_rows(c, list(dict.fromkeys(inos)))
        return {ino: inode_from_values(v) for ino, v in rows.items()}

    def lookup(self, parent: int, name: bytes) -> Inode:
        row = self._one(_LOOKUP_SQL, (parent, name))
        if row is None:
            raise errors.NotFound(f"{name!r} in directory {parent}")
        return inode_from_values(row)

    def readdir(self, parent: int, after_pos: int, limit: int, known: Container[int] = ()) -> list[DirEntry]:
        # Names first, then the inodes the caller does not hold: a listing of
        # 500 cached inodes spent half its time fetching their 22 columns.
        with self._read() as c:
            rows = c.execute("SELECT pos, name, ino FROM dentries WHERE parent = ? AND pos > ? ORDER BY pos LIMIT ?",
                             (parent, after_pos, limit)).fetchall()
            held = {r[2] for r in rows if r[2] in known}
            wanted = [r[2] for r in rows if r[2] not in held]
            values = _inode_rows(c, wanted)
        return [DirEntry(pos, name, ino=ino) if ino in held else DirEntry(pos, name, values=values[ino])
                for pos, name, ino in rows if ino in held or ino in values]

    def list_dir(self, parent: int, xattr_names: Sequence[bytes] = ()) -> list[Listed]:
        # One statement: each dentry joined with its inode and (left join) the attributes asked for;
        # an entry with two of them comes as two rows, next to each other (ORDER BY name, then ino).
        names = list(xattr_names)
        xjoin = (f"LEFT JOIN xattrs ON xattrs.ino = dentries.ino AND xattrs.name IN ({','.join('?' * len(names))})"
                 if names else "")
        xcols = ", xattrs.name, xattrs.value" if names else ", NULL, NULL"
        with self._read() as c:
            rows = c.execute(f"SELECT dentries.name, {_INODE_COLS_Q}{xcols} FROM dentries "
                             f"JOIN inodes ON inodes.ino = dentries.ino {xjoin} "
                             "WHERE dentries.parent = ? ORDER BY dentries.name, dentries.ino",
                             (*names, parent)).fetchall()
        out: list[Listed] = []
        for r in rows:
            name, ino = bytes(r[0]), r[1]
            if not out or (out[-1].name, out[-1].inode.ino) != (name, ino):
                out.append(Listed(name, inode_from_values(r[1:-2])))
            if r[-2] is not None:
                out[-1].xattrs[bytes(r[-2])] = bytes(r[-1])
        return out

    def scan_dentries(self, after_pos: int, limit: int) -> list[tuple[int, int, bytes, int]]:
        with self._read() as c:
            rows = c.execute("SELECT pos, parent, name, ino FROM dentries WHERE pos > ? ORDER BY pos LIMIT ?",
                             (after_pos, limit)).fetchall()
        return [(pos, parent, bytes(name), ino) for pos, parent, name, ino in rows]

    def remove_dentry(self, parent: int, pos: int) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM dentries WHERE pos = ? AND parent = ?", (pos, parent))

    def add_dentry(self, parent: int, name: bytes, ino: int) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)", (parent, name, ino))

    def parent_of(self, ino: int) -> int:
        if ino == ROOT_INO:
            return ROOT_INO
        with self._read() as c:
            row = c.execute("SELECT parent FROM dentries WHERE ino = ? LIMIT 1", (ino,)).fetchone()
        if row is None:
            raise errors.NotFound(f"inode {ino} has no name")
        return row[0]

    def path_of(self, ino: int) -> bytes:
        with self._tx(write=False) as c:
            return self._path_in(_SqliteTxn(c), ino)

    def update(self, ino, changes, *, expect_version=None, expect_states=None) -> Inode:
        with self._tx() as c:
            inode = _get(c, ino)
            check_expected(inode, expect_version, expect_states)
            if changes:
                _set(c, ino, changes)
            return inode.copy(**changes)

    def bump_version(self, ino: int, changes: dict) -> Inode:
        with self._tx() as c:
            inode = _get(c, ino)
            changes = dict(changes, data_version=inode.data_version + 1, checksum=None)
            _set(c, ino, changes)
            return inode.copy(**changes)

    def tombstones(self, ino: int | None = None, limit: int = 100) -> list[Tombstone]:
        where, args = ("WHERE ino = ? ", (ino,)) if ino is not None else ("", ())
        with self._read() as c:
            rows = c.execute(f"SELECT {', '.join(_TOMBSTONE_COLS)} FROM tombstones {where}ORDER BY id DESC LIMIT ?",
                             (*args, limit)).fetchall()
        return [Tombstone(**dict(zip(_TOMBSTONE_COLS, r))) for r in rows]

    def unlinked(self) -> list[Inode]:
        with self._read() as c:
            return [inode_from_values(r) for r in c.execute(f"SELECT {_INODE_COLS} FROM inodes WHERE nlink = 0").fetchall()]

    def set_atimes(self, atimes: dict[int, int]) -> None:
        if not atimes:
            return
        with self._tx() as c:
            c.executemany("UPDATE inodes SET atime_ns = ? WHERE ino = ? AND atime_ns < ?",
                          [(t, ino, t) for ino, t in atimes.items()])
        self.atime_writes += len(atimes)

    def stub(self, ino: int) -> bytes:
        row = self._one("SELECT data FROM stubs WHERE ino = ?", (ino,))
        return b"" if row is None else bytes(row[0])

    # ---- xattrs ------------------------------------------------------------
    def getxattr(self, ino: int, name: bytes) -> bytes:
        with self._read() as c:
            row = c.execute("SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, name)).fetchone()
        if row is None:
            raise errors.NoAttr(f"no attribute {name!r}")
        return row[0]

    def setxattr(self, ino, name, value, *, create=False, replace=False, ctime_ns=None) -> None:
        # One statement for the value (an upsert without flags), one for ctime.
        with self._tx() as c:
            if create:
                try:
                    c.execute("INSERT INTO xattrs (ino, name, value) VALUES (?, ?, ?)", (ino, name, value))
                except sqlite3.IntegrityError:
                    raise errors.Exists(f"attribute {name!r} exists") from None
            elif replace:
                if not c.execute("UPDATE xattrs SET value = ? WHERE ino = ? AND name = ?", (value, ino, name)).rowcount:
                    raise errors.NoAttr(f"no attribute {name!r}")
            else:
                c.execute("INSERT INTO xattrs (ino, name, value) VALUES (?, ?, ?) "
                          "ON CONFLICT (ino, name) DO UPDATE SET value = excluded.value", (ino, name, value))
            c.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (ctime_ns or now_ns(), ino))

    def listxattr(self, ino: int) -> list[bytes]:
        with self._read() as c:
            return [r[0] for r in c.execute("SELECT name FROM xattrs WHERE ino = ? ORDER BY name", (ino,)).fetchall()]

    def removexattr(self, ino: int, name: bytes, ctime_ns: int | None = None) -> None:
        with self._tx() as c:
            if not c.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, name)).rowcount:
                raise errors.NoAttr(f"no attribute {name!r}")
            c.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (ctime_ns or now_ns(), ino))

    # ---- state and moves ---------------------------------------------------
    def set_open(self, ino, session, reading, writing) -> Inode:
        with self._tx() as c:
            inode = _get(c, ino)
            c.execute("DELETE FROM open_files WHERE ino = ? AND session = ?", (ino, session))
            if reading or writing:
                c.execute("INSERT INTO open_files (ino, session, writing) VALUES (?, ?, ?)",
                          (ino, session, bool(writing)))
            _set(c, ino, dict(ctime_ns=inode.ctime_ns))  # a write on the inode row: serialises with switch()
            return inode

    def add_event(self, ino, from_state, to_state, cause, detail="") -> None:
        with self._tx() as c:
            _event(c, ino, from_state, to_state, cause, detail)

    def events(self, ino: int, limit: int = 20) -> list[Event]:
        with self._read() as c:
            rows = c.execute("SELECT id, ino, time_ns, from_state, to_state, cause, detail FROM events "
                             "WHERE ino = ? ORDER BY id DESC LIMIT ?", (ino, limit)).fetchall()
        return [Event(*r) for r in rows]

    # ---- garbage -----------------------------------------------------------
    def add_garbage(self, items, reason="") -> None:
        with self._tx() as c:
            _add_garbage(c, items, reason)

    def garbage(self, limit: int = 100) -> list[Garbage]:
        with self._read() as c:
            rows = c.execute('SELECT id, tier, "key", created_ns, reason FROM garbage ORDER BY id LIMIT ?',
                             (limit,)).fetchall()
        return [Garbage(*r) for r in rows]

    def remove_garbage(self, ids) -> None:
        ids = list(ids)
        if ids:
            with self._tx() as c:
                c.executemany("DELETE FROM garbage WHERE id = ?", [(i,) for i in ids])

    def references(self, tier: str, key: str, *, further: bool = True) -> bool:
        with self._read() as c:
            if c.execute("SELECT ino FROM inodes WHERE tier = ? AND location = ? UNION ALL "
                         "SELECT ino FROM inodes WHERE archive_tier = ? AND archive_location = ? LIMIT 1",
                         (tier, key, tier, key)).fetchone() is not None:
                return True
            # A further archive copy (Inode.archive_copies): the files that have some (ix_inodes_copies).
            if further and c.execute("SELECT ino FROM inodes WHERE archive_copies IS NOT NULL "
                                     "AND instr(archive_copies, ?) > 0 LIMIT 1",
                                     (copy_pattern(tier, key),)).fetchone() is not None:
                return True
            return c.execute(f"SELECT id FROM jobs WHERE dst_key = ? AND state IN ({_marks(_ACTIVE)}) LIMIT 1",
                             (key, *_ACTIVE)).fetchone() is not None

    # ---- jobs --------------------------------------------------------------
    def enqueue(self, ino, kind, *, target_tier=None, keep_online=False, cause="", uid=None,
                more_targets=None) -> tuple[Job, bool]:
        kind = JobKind(kind)
        with self._tx() as c:
            row = c.execute(f"{_JOB_SQL} WHERE ino = ? AND kind = ? AND state IN ({_marks(_ACTIVE)}) LIMIT 1",
                            (ino, kind.value, *_ACTIVE)).fetchone()
            if row is not None:
                return _job(row), False
            t = now_ns()
            job = Job(id=0, ino=ino, kind=kind, state=JobState.PENDING, priority=JOB_PRIORITY[kind],
                      target_tier=target_tier, keep_online=bool(keep_online), cause=cause, session=None, attempts=0,
                      not_before_ns=0, last_error="", dst_key=None, created_ns=t, updated_ns=t, uid=uid,
                      more_targets=more_targets)
            cols = _JOB_COLS[1:]
            job.id = c.execute(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({_marks(cols)})",
                               tuple(str(getattr(job, k)) if k in ("kind", "state") else getattr(job, k)
                                     for k in cols)).lastrowid
            return job, True

    def claim(self, session, kinds=None, busy_tiers=(), *, tiers=None, skip=()) -> Job | None:
        t = now_ns()
        where, args = ["state = ?", "not_before_ns <= ?"], [JobState.PENDING.value, t]
        for term, values in (("kind IN ({})", None if kinds is None else [JobKind(k).value for k in kinds]),
                             ("(target_tier IS NULL OR target_tier NOT IN ({}))", list(busy_tiers) or None),
                             ("(target_tier IS NULL OR target_tier IN ({}))", None if tiers is None else list(tiers)),
                             ("id NOT IN ({})", list(skip) or None)):
            if values is not None:
                where.append(term.format(_marks(values)))
                args += values
        with self._tx() as c:
            row = c.execute(f"{_JOB_SQL} WHERE {' AND '.join(where)} ORDER BY priority, id LIMIT 1", args).fetchone()
            if row is None:
                return None
            job = _job(row)
            n = c.execute("UPDATE jobs SET state = ?, session = ?, attempts = ?, updated_ns = ? "
                          "WHERE id = ? AND state = ?", (JobState.RUNNING.value, session, job.attempts + 1, t,
                                                         job.id, JobState.PENDING.value)).rowcount
            if n != 1:
                return None
            return Job(**{**job.__dict__, "state": JobState.RUNNING, "session": session,
                          "attempts": job.attempts + 1, "updated_ns": t})

    @staticmethod
    def _fence(c: sqlite3.Connection, job_id: int, session: str | None) -> None:
        """Fencing (base.check_owner), in the caller's transaction, before its change."""
        if session is not None:
            check_owner(job_id, session, c.execute("SELECT state, session FROM jobs WHERE id = ?",
                                                   (job_id,)).fetchone())

    def update_job(self, job_id, changes, *, session=None) -> None:
        cols = list(changes)
        if not set(cols) <= set(_JOB_COLS[1:]):
            raise errors.Invalid(f"cannot set job fields {sorted(set(cols) - set(_JOB_COLS))}")
        vals = [str(v) if isinstance(v, (JobKind, JobState)) else v for v in changes.values()]
        with self._tx() as c:
            self._fence(c, job_id, session)
            c.execute(f"UPDATE jobs SET {''.join(k + ' = ?, ' for k in cols)}updated_ns = ? WHERE id = ?",
                      (*vals, now_ns(), job_id))

    def finish_job(self, job_id, state, error="", *, session=None) -> None:
        t = now_ns()
        state = JobState(state)
        with self._tx() as c:
            if session is not None:
                found = c.execute("SELECT state, session FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if ended_by_commit(state, session, found):
                    return
                check_owner(job_id, session, found)
            if state == JobState.DONE:
                _SqliteTxn(c).end_job(job_id, t)
            else:
                c.execute("UPDATE jobs SET state = ?, session = NULL, last_error = ?, updated_ns = ? WHERE id = ?",
                          (state.value, error, t, job_id))

    def retry_job(self, job_id, error, delay_s, *, count=True, session=None) -> None:
        t = now_ns()
        attempts = "" if count else ", attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
        with self._tx() as c:
            self._fence(c, job_id, session)
            c.execute(f"UPDATE jobs SET state = ?, session = NULL, last_error = ?, not_before_ns = ?, "
                      f"updated_ns = ?{attempts} WHERE id = ?",
                      (JobState.PENDING.value, error, t + int(delay_s * 1e9), t, job_id))

    def get_job(self, job_id) -> Job:
        with self._read() as c:
            row = c.execute(f"{_JOB_SQL} WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise errors.NotFound(f"job {job_id}")
        return _job(row)

    def jobs(self, states=None, ino=None, limit=1000, newest_first=False) -> list[Job]:
        where, args = [], []
        if states is not None:
            states = [JobState(s).value for s in states]
            where.append(f"state IN ({_marks(states)})")
            args += states
        if ino is not None:
            where.append("ino = ?")
            args.append(ino)
        cond = f" WHERE {' AND '.join(where)}" if where else ""
        order = "id DESC" if newest_first else "priority, id"
        with self._read() as c:
            return [_job(r) for r in c.execute(f"{_JOB_SQL}{cond} ORDER BY {order} LIMIT ?", (*args, limit)).fetchall()]

    def cancel_jobs(self, job_ids=None, *, kind=None) -> int:
        where, args = ["state = ?"], [JobState.PENDING.value]
        if job_ids is not None:
            job_ids = list(job_ids)
            where.append(f"id IN ({_marks(job_ids)})")
            args += job_ids
        if kind is not None:
            where.append("kind = ?")
            args.append(JobKind(kind).value)
        with self._tx() as c:
            return c.execute(f"UPDATE jobs SET state = ?, last_error = 'cancelled', updated_ns = ? "
                             f"WHERE {' AND '.join(where)}", (JobState.CANCELLED.value, now_ns(), *args)).rowcount

    # ---- sessions ----------------------------------------------------------
    def register_session(self, session: Session) -> None:
        d = session.__dict__
        with self._tx() as c:
            c.execute(f"INSERT INTO sessions ({', '.join(d)}) VALUES ({_marks(d)})", tuple(d.values()))

    def heartbeat(self, session_id: str) -> bool:
        with self._tx() as c:
            return c.execute("UPDATE sessions SET heartbeat_ns = ? WHERE id = ? AND clean = 0",
                             (now_ns(), session_id)).rowcount == 1

    @staticmethod
    def _release_session(c: sqlite3.Connection, sid: str, error: str) -> None:
        """A session ended: its running jobs go back to pending, its leases and open files go."""
        c.execute("UPDATE jobs SET state = ?, session = NULL, last_error = CASE WHEN ? = '' THEN last_error ELSE ? END,"
                  " updated_ns = ? WHERE session = ? AND state = ?",
                  (JobState.PENDING.value, error, error, now_ns(), sid, JobState.RUNNING.value))
        c.execute("DELETE FROM leases WHERE holder = ?", (sid,))
        c.execute("DELETE FROM open_files WHERE session = ?", (sid,))

    def end_session(self, session_id: str, clean: bool = True) -> None:
        with self._tx() as c:
            c.execute("UPDATE sessions SET clean = ?, heartbeat_ns = ? WHERE id = ?", (clean, now_ns(), session_id))
            self._release_session(c, session_id, "")

    def sessions(self) -> list[Session]:
        with self._read() as c:
            rows = c.execute("SELECT id, host, pid, mountpoint, started_ns, heartbeat_ns, clean FROM sessions "
                             "ORDER BY started_ns").fetchall()
        return [Session(*r[:6], clean=bool(r[6])) for r in rows]

    def reap_sessions(self, older_than_ns: int) -> list[str]:
        with self._tx() as c:
            ids = [r[0] for r in c.execute("SELECT id FROM sessions WHERE clean = 0 AND heartbeat_ns < ?",
                                           (older_than_ns,)).fetchall()]
            for sid in ids:
                c.execute("UPDATE sessions SET clean = 1 WHERE id = ?", (sid,))
                self._release_session(c, sid, f"session {sid} died")
            return ids

    # ---- queries -----------------------------------------------------------
    #: When more than 1/SCAN_RATIO of the inodes match the state filter, a scan
    #: in ino order beats the state index (whose matches are in random ino order,
    #: one random table read each): 1.5 s -> 0.35 s for 250k of 1M on SQLite.
    SCAN_RATIO = 16

    def _conds(self, c: sqlite3.Connection, q: FileQuery, by_index: bool = True) -> tuple[list[str], list]:
        """WHERE terms (and their parameters) on inodes for q's attribute
        filters (not names/subtree). by_index=False: without the size-class
        term of both bounds (base.size_classes), for a caller that bounds the
        size class itself (_candidates_sql)."""
        conds, args = ["inodes.nlink > ?"], [0]
        if q.states is not None:
            states = [State(s).value for s in q.states]
            col = "inodes.state"
            # With a range the state index is kept: (state, last_access_ns, size) or (state, size) leads
            # straight to the candidates (policy rules), and with both bounds the size is tested in the index
            # entry.
            ranged = (any(v is not None for v in (q.last_access_before_ns, q.min_size, q.max_size))
                      or q.checksum_missing)
            if not q.order_by_last_access and not ranged and self._unselective(c, states):
                col = "+" + col   # `+col`: the same value, but no index for it (a scan in table order)
            conds.append(f"{col} IN ({_marks(states)})")
            args += states
        if q.regular_only:
            conds.append("(inodes.mode & ?) = ?")
            args += [_TYPE_BITS, _REG]
        if q.checksum_missing:
            conds.append("inodes.checksum IS NULL")   # ix_inodes_no_checksum (partial) holds just these rows
        size = "inodes.size"
        if q.states is not None and q.last_access_before_ns is not None or not by_index:
            # States + last access (+ size): walk (state, last_access_ns, size) and test the size on its
            # entries, so only matching rows are fetched. SQLite has no statistics on value ranges: it
            # rates that range and the (state, size) one alike and picks by index creation order, so
            # `+size` takes (state, size) out of the choice (it fetches every row of its range to test
            # the last access). Worst case: a wide last-access range with a narrow size one walks the
            # range's index entries, sequential reads without a row fetch each. Without by_index (the
            # caller bounds the size class: a candidates page) the same, also for a rule on size alone.
            size = "+" + size
        if by_index:
            conds, args = _with_size_classes(q, conds, args)
        for col, val, op in (("inodes.tier", q.tier, "="), ("inodes.archive_tier", q.archive_tier, "="),
                             (size, q.min_size, ">="), (size, q.max_size, "<="),
                             ("inodes.last_access_ns", q.last_access_before_ns, "<"),
                             ("inodes.crtime_ns", q.crtime_before_ns, "<"),
                             ("inodes.mtime_ns", q.mtime_before_ns, "<"), ("inodes.uid", q.uid, "="),
                             ("inodes.gid", q.gid, "=")):
            if val is not None:
                conds.append(f"{col} {op} ?")
                args.append(val)
        return conds, args

    def _unselective(self, c: sqlite3.Connection, states: list[str]) -> bool:
        """True when over 1/SCAN_RATIO of the inodes are in `states` (counted
        on the index, stopping at that many; max(ino) estimates the total)."""
        enough = (c.execute("SELECT max(ino) FROM inodes").fetchone()[0] or 1) // self.SCAN_RATIO + 1
        n = c.execute(f"SELECT count(*) FROM (SELECT ino FROM inodes WHERE state IN ({_marks(states)}) LIMIT ?)",
                      (*states, enough)).fetchone()[0]
        return n >= enough

    @staticmethod
    def _names(q: FileQuery) -> tuple[str, list, list[str], list]:
        """q's name and subtree filters on the `dentries` table: (WITH prefix,
        its parameters, WHERE terms, their parameters)."""
        with_, wargs, terms, args = "", [], [], []
        if q.under is not None:
            # The directory `under` and every directory below it.
            with_ = ("WITH RECURSIVE subtree(ino) AS (SELECT ? UNION ALL SELECT sd.ino FROM dentries AS sd "
                     "JOIN inodes AS si ON si.ino = sd.ino JOIN subtree AS st ON sd.parent = st.ino "
                     "WHERE (si.mode & ?) = ?) ")
            wargs += [q.under, _TYPE_BITS, _DIR]
            terms.append("dentries.parent IN (SELECT ino FROM subtree)")
        if q.name_glob is not None:  # GLOB compares the name's bytes; fnmatch's [!x] is GLOB's [^x]
            terms.append("CAST(dentries.name AS TEXT) GLOB CAST(? AS TEXT)")
            args.append(bytes(q.name_glob).replace(b"[!", b"[^"))
        return with_, wargs, terms, args

    def _inode_where(self, c: sqlite3.Connection, q: FileQuery) -> tuple[str, list[str], list]:
        """(WITH prefix, WHERE terms, parameters) selecting q's inodes."""
        conds, args = self._conds(c, q)
        with_, wargs, terms, targs = self._names(q)
        if terms:
            conds.append(f"inodes.ino IN (SELECT dentries.ino FROM dentries WHERE {' AND '.join(terms)})")
        return with_, conds, wargs + args + targs

    def _query_sql(self, c: sqlite3.Connection, q: FileQuery) -> tuple[str, tuple]:
        with_, conds, args = self._inode_where(c, q)
        if q.order_by_last_access:
            order = " ORDER BY inodes.last_access_ns, inodes.ino"
        elif q.limit is None:
            # All matches are wanted: `ino + 0` stops SQLite (with ANALYZE statistics) from walking the
            # whole primary key to save a sort; the state/last access/size indexes find the candidates and
            # SQLite sorts just those.
            conds.append("inodes.ino + 0 > ?")
            args.append(q.after_ino)
            order = " ORDER BY inodes.ino + 0"
        else:
            conds.append("inodes.ino > ?")
            args.append(q.after_ino)
            order = " ORDER BY inodes.ino"
        if q.limit is not None:
            order += " LIMIT ?"
            args.append(q.limit)
        return f"{with_}SELECT {_INODE_COLS_Q} FROM inodes WHERE {' AND '.join(conds)}{order}", tuple(args)

    def query_statement(self, q: FileQuery) -> tuple[str, tuple]:
        """The SQL statement and parameters query(q) selects with now (bench
        and tests look at its plan and at the rows it fetches); with
        by_range_index(q), the first page's of candidates(q) (_candidates_sql)."""
        with self._tx(write=False) as c:
            if by_range_index(q):
                return self._candidates_sql(c, q, State(q.states[0]), candidate_classes(q)[0],
                                            after=None, equal=None, limit=self.candidates_batch)
            return self._query_sql(c, q)

    def query(self, q: FileQuery) -> Iterator[Inode]:
        with self._tx(write=False) as c:
            rows = c.execute(*self._query_sql(c, q)).fetchall()
        self.rows_read += len(rows)
        for r in rows:
            yield inode_from_values(r)

    def _candidates_sql(self, c: sqlite3.Connection, q: FileQuery, state: State, cls: int, *, after: int | None,
                        equal: int | None, limit: int | None) -> tuple[str, tuple]:
        """A page of candidates from ix_inodes_candidates alone: state and
        size class fixed, then the last-access range, in the index's order
        (no sort), every other column tested and returned from the entry
        (the bytecode reads no table row; EXPLAIN QUERY PLAN says USING INDEX,
        not COVERING, because two columns are virtual). No INDEXED BY: a
        catalog missing the index still answers."""
        # (with `equal`, the query's own last-access bound goes: SQLite would walk that range testing
        # equality on each entry, 7 ms a query at 10M, instead of seeking the value)
        page_q = dataclasses.replace(q, states=(state,), **({} if equal is None else {"last_access_before_ns": None}))
        conds, args = self._conds(c, page_q, by_index=False)   # (`+size`: see _conds)
        conds.append("inodes.size_class = ?")
        args.append(cls)
        if after is not None:
            conds.append("inodes.last_access_ns > ?")
            args.append(after)
        if equal is not None:
            conds.append("inodes.last_access_ns = ?")
            args.append(equal)
        tail = ""
        if limit is not None:
            tail = " LIMIT ?"
            args.append(limit)
        return (f"SELECT {', '.join('inodes.' + f for f in CANDIDATE_FIELDS)} FROM inodes "
                f"WHERE {' AND '.join(conds)} ORDER BY inodes.last_access_ns{tail}", tuple(args))

    def _candidate_rows(self, q: FileQuery, state: State, cls: int, *, after: int | None = None,
                        equal: int | None = None, limit: int | None = None) -> list[Candidate]:
        with self._side_read() as c:
            rows = c.execute(*self._candidates_sql(c, q, state, cls, after=after, equal=equal, limit=limit)).fetchall()
        return [candidate_from_values(r) for r in rows]

    @contextlib.contextmanager
    def _side_read(self) -> Iterator[sqlite3.Connection]:
        """The side connection for single-statement reads (autocommit), made
        at first use; in memory the catalog's own (only it sees the tables)."""
        if self._path is None:
            with self._read() as c:
                yield c
            return
        with self._side_lock, self._unavailable():
            if self._side is None:
                self._side = self.connect()
            yield self._side

    #: Rows query_names fetches at a time, after a first batch of FIRST_NAMES.
    names_batch = 5000

    def query_names(self, q: FileQuery) -> Iterator[tuple[int, bytes, int]]:
        """Streams, on a connection of its own (its read transaction stays
        open until the iterator ends; the catalog serves other calls meanwhile)."""
        with self._unavailable():
            conn = self.connect()
        try:
            with self._unavailable():
                conn.execute("BEGIN")
                if states_only(q):
                    cur = conn.execute(*self._names_by_state(q))
                else:
                    conds, args = self._conds(conn, q)
                    with_, wargs, terms, targs = self._names(q)
                    cur = conn.execute(f"{with_}SELECT dentries.parent, dentries.name, dentries.ino FROM dentries "
                                       f"JOIN inodes ON inodes.ino = dentries.ino WHERE {' AND '.join(conds + terms)}",
                                       (*wargs, *args, *targs))
            size = min(FIRST_NAMES, self.names_batch)
            while True:
                with self._unavailable():
                    part = cur.fetchmany(size)
                if not part:
                    break
                self.rows_read += len(part)
                yield from part
                size = self.names_batch
        finally:
            conn.close()

    @staticmethod
    def _names_by_state(q: FileQuery) -> tuple[str, list]:
        """query_names' statement for states alone (base.states_only): the
        matches in ino order on ix_inodes_state_ino alone (covering), each
        joined with its names by ix_dentries_ino. INDEXED BY and CROSS JOIN
        fix that plan: without statistics SQLite would walk (state, size),
        or scan the table when many match (SCAN_RATIO)."""
        conds, args = ["inodes.nlink > 0"], []
        if q.states is not None:
            states = [State(s).value for s in q.states]
            conds.append(f"inodes.state IN ({_marks(states)})")
            args += states
        if q.regular_only:
            conds.append("(inodes.mode & ?) = ?")
            args += [_TYPE_BITS, _REG]
        return ("SELECT dentries.parent, dentries.name, dentries.ino FROM inodes INDEXED BY ix_inodes_state_ino "
                f"CROSS JOIN dentries ON dentries.ino = inodes.ino WHERE {' AND '.join(conds)}", args)

    def _in_batches(self, sql: str, values: list, *extra) -> list[tuple]:
        """Rows of `sql` (with one "{in}" for 500 placeholders at a time, then `extra` parameters) over
        `values`, in one read transaction."""
        rows = []
        with self._tx(write=False) as c:
            for k in range(0, len(values), 500):
                part = values[k:k + 500]
                rows += c.execute(sql.format(ins=_marks(part)), (*part, *extra)).fetchall()
        return rows

    def names_of(self, inos: Iterable[int]) -> dict[int, tuple[int, bytes]]:
        out: dict[int, tuple[int, bytes]] = {}
        for ino, parent, name in self._in_batches("SELECT ino, parent, name FROM dentries WHERE ino IN ({ins})",
                                                  list(dict.fromkeys(inos))):
            out.setdefault(ino, (parent, name))
        return out

    def xattrs_of(self, inos: Iterable[int], names: Iterable[bytes]) -> dict[int, dict[bytes, bytes]]:
        names = list(names)
        out: dict[int, dict[bytes, bytes]] = {}
        if names:
            for ino, name, value in self._in_batches(f"SELECT ino, name, value FROM xattrs WHERE ino IN ({{ins}}) "
                                                     f"AND name IN ({_marks(names)})", list(dict.fromkeys(inos)),
                                                     *names):
                out.setdefault(ino, {})[name] = value
        return out

    def with_active_jobs(self, inos: Iterable[int]) -> set[int]:
        return {r[0] for r in self._in_batches(f"SELECT DISTINCT ino FROM jobs WHERE ino IN ({{ins}}) "
                                               f"AND state IN ({_marks(_ACTIVE)})", list(dict.fromkeys(inos)),
                                               *_ACTIVE)}

    def paths_of(self, inos: Iterable[int], cache: dict[int, bytes] | None = None) -> dict[int, bytes]:
        """Level by level: one read of dentries per level and batch of 500."""
        inos = list(inos)
        cache = {} if cache is None else cache
        cache[ROOT_INO] = b""
        names: dict[int, tuple[int, bytes]] = {}   # ino -> (parent, name)
        todo = [i for i in dict.fromkeys(inos) if i not in cache]
        with self._tx(write=False) as c:
            while todo:
                for k in range(0, len(todo), 500):
                    part = todo[k:k + 500]
                    for parent, name, ino in c.execute(f"SELECT parent, name, ino FROM dentries "
                                                       f"WHERE ino IN ({_marks(part)})", part):
                        names.setdefault(ino, (parent, name))
                todo = list(dict.fromkeys(names[i][0] for i in todo if i in names
                                          if names[i][0] not in cache and names[i][0] not in names))
        return resolve_paths(inos, names, cache)

    def totals(self) -> dict:
        with self._read() as c:
            return _totals_rows(c.execute("SELECT state, tier, archive_tier, files, bytes FROM totals"))

    def scan_totals(self) -> dict:
        with self._tx(write=False) as c:
            return _totals_rows(c.execute(S.TOTALS_FROM_INODES))

    def rebuild_totals(self) -> None:
        with self._tx() as c:
            _fill_totals(c)

    def count_by(self, q: FileQuery, by: str) -> dict:
        """From the running totals (totals()) when q is every live file and
        `by` a field they are kept per; else one grouped read of the matches."""
        check_count_by(by)
        if totals_answer(q, by):
            return group_totals(self.totals(), by)
        col = f"+inodes.{by}"  # every match is read anyway: scan, don't walk an index
        with self._tx(write=False) as c:
            with_, conds, args = self._inode_where(c, FileQuery(**{**q.__dict__, "order_by_last_access": False}))
            rows = c.execute(f"{with_}SELECT {col}, count(*), coalesce(sum(inodes.size), 0) FROM inodes "
                             f"WHERE {' AND '.join(conds)} GROUP BY {col}", args).fetchall()
        return {r[0]: (r[1], int(r[2])) for r in rows}

    def stats(self) -> CatalogStats:
        st = CatalogStats()
        reg = f"inodes.nlink > 0 AND (inodes.mode & {_TYPE_BITS}) = {_REG}"
        with self._tx(write=False) as c:
            totals = _totals_rows(c.execute("SELECT state, tier, archive_tier, files, bytes FROM totals"))
            for out, by in ((st.by_state, "state"), (st.by_tier, "tier"), (st.by_archive, "archive_tier")):
                out.update((k, v) for k, v in group_totals(totals, by).items() if k is not None)
            count_further_copies(st.by_archive, c.execute(   # ix_inodes_copies: only the files with some
                f"SELECT inodes.size, inodes.archive_copies FROM inodes "
                f"WHERE {reg} AND inodes.archive_copies IS NOT NULL"))
            for state, kind, n in c.execute("SELECT state, kind, count(*) FROM jobs GROUP BY state, kind"):
                st.jobs.setdefault(state, {})[kind] = n
        return st

    def tiers_in_use(self) -> set[str]:
        out: set[str] = set()
        with self._tx(write=False) as c:
            for col in ("tier", "archive_tier"):
                # A loose index scan: each step is one MIN() on ix_inodes_tier / ix_inodes_archive, so
                # the cost grows with the number of tiers, not of inodes.
                rows = c.execute(
                    f"WITH RECURSIVE t(v) AS (SELECT MIN({col}) FROM inodes UNION ALL "
                    f"SELECT (SELECT MIN({col}) FROM inodes WHERE {col} > t.v) FROM t WHERE t.v IS NOT NULL) "
                    "SELECT v FROM t WHERE v IS NOT NULL")
                out.update(r[0] for r in rows)
            out.update(t for r in c.execute("SELECT archive_copies FROM inodes WHERE archive_copies IS NOT NULL")
                       for t, _ in further_copies(r[0]))
            out.update(t for r in c.execute(f"SELECT more_targets FROM jobs WHERE state IN ({_marks(_ACTIVE)}) "
                                            "AND more_targets IS NOT NULL", _ACTIVE) for t in further_targets(r[0]))
            out.update(r[0] for r in c.execute("SELECT DISTINCT tier FROM garbage"))
            out.update(r[0] for r in c.execute(f"SELECT DISTINCT target_tier FROM jobs WHERE state IN "
                                               f"({_marks(_ACTIVE)}) AND target_tier IS NOT NULL", _ACTIVE))
        return out

    # ---- meta / leases -----------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._read() as c:
            row = c.execute('SELECT value FROM meta WHERE "key" = ?', (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as c:
            c.execute('INSERT INTO meta ("key", value) VALUES (?, ?) ON CONFLICT ("key") DO UPDATE SET value = ?',
                      (key, value, value))

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        t = now_ns()
        with self._tx() as c:
            row = c.execute("SELECT holder, expires_ns FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != holder and row[1] > t:
                return False
            c.execute("INSERT INTO leases (name, holder, expires_ns) VALUES (?, ?, ?) ON CONFLICT (name) "
                      "DO UPDATE SET holder = excluded.holder, expires_ns = excluded.expires_ns",
                      (name, holder, t + int(ttl_s * 1e9)))
            return True
