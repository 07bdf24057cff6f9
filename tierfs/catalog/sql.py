"""The Catalog on SQLAlchemy Core: SQLite (embedded default) or PostgreSQL.

Atomicity: every public method that writes runs in one transaction. On
SQLite, write transactions start with BEGIN IMMEDIATE so two processes (the
daemon and a CLI) never deadlock upgrading a read lock; WAL mode lets
readers proceed while the daemon writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import socket
import sqlite3
import threading
from typing import Iterable, Iterator, Sequence

from sqlalchemy import (LargeBinary, Text, and_, case, cast, create_engine, event, func, inspect, literal, or_,
                        select, update, delete, insert)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.schema import CreateColumn, CreateIndex
from sqlalchemy.sql.expression import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from .. import errors, private
from . import schema as S
from .base import (ACTIVE_JOB_STATES, COUNT_BY_FIELDS, INODE_FIELDS, JOB_PRIORITY, ROOT_INO, SCHEMA_VERSION, Catalog,
                   CatalogStats, DirEntry, Event, FileQuery, Garbage, Inode, Job, JobKind, JobState,
                   Session, State, Tombstone, Transition, now_ns, resolve_paths)

log = logging.getLogger(__name__)

#: Migrations: version -> function(conn) upgrading from version-1.
MIGRATIONS: dict[int, callable] = {}


def _add_last_access(c: Connection) -> None:
    """Version 2: inodes.last_access_ns, generated from atime_ns and
    mtime_ns as schema.py defines it (its index comes with _sync_indexes).
    In SQLite the column is VIRTUAL: adding it rewrites no row."""
    col = CreateColumn(S.inodes.c.last_access_ns).compile(dialect=c.dialect)
    c.exec_driver_sql(f"ALTER TABLE inodes ADD COLUMN {col}")


MIGRATIONS[2] = _add_last_access


def _inode(row) -> Inode:
    m = row._mapping
    d = {k: m[k] for k in INODE_FIELDS}
    d["state"] = State(d["state"])
    return Inode(**d)


def _job(row) -> Job:
    m = dict(row._mapping)
    m["kind"] = JobKind(m["kind"])
    m["state"] = JobState(m["state"])
    return Job(**m)


def _inode_values(inode: Inode) -> dict:
    d = {k: getattr(inode, k) for k in INODE_FIELDS}
    d["state"] = inode.state.value
    return d


_INODE_COLS = ", ".join(INODE_FIELDS)
_GET_SQL = f"SELECT {_INODE_COLS} FROM inodes WHERE ino = ?"
_DENTRY_SQL = "SELECT pos, ino FROM dentries WHERE parent = ? AND name = ?"
_INSERT_FIELDS = tuple(f for f in INODE_FIELDS if f != "ino")
_INSERT_INODE_SQL = f"INSERT INTO inodes ({', '.join(_INSERT_FIELDS)}) VALUES ({', '.join('?' * len(_INSERT_FIELDS))})"
_LOOKUP_SQL = (f"SELECT {', '.join('i.' + f for f in INODE_FIELDS)} FROM dentries d JOIN inodes i ON i.ino = d.ino "
               "WHERE d.parent = ? AND d.name = ?")


def _inode_row(row) -> Inode:
    d = dict(zip(INODE_FIELDS, row))
    d["state"] = State(d["state"])
    return Inode(**d)


def _fast_get(conn, ino: int) -> Inode:
    """The inode on the fast-path connection, or NotFound."""
    row = conn.execute(_GET_SQL, (ino,)).fetchone()
    if row is None:
        raise errors.NotFound(f"inode {ino}")
    return _inode_row(row)


class _FastSqlite:
    """The hottest calls (get, lookup, update, bump_version) on SQLite
    without SQLAlchemy: one DBAPI connection with the same pragmas, its
    statements prepared once (sqlite3's statement cache). SQLAlchemy costs
    ~0.3-0.5 ms of CPU per transaction here; these take ~30 us. A lock
    serialises threads on the connection; transactions are explicit."""

    def __init__(self, path: str):
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False,
                                    cached_statements=64)
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.lock = threading.Lock()

    def one(self, sql: str, args: tuple):
        with self.lock:
            return self.conn.execute(sql, args).fetchone()

    @contextlib.contextmanager
    def write(self):
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")


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


class SqlCatalog(Catalog):
    """Catalog on a SQL database chosen by URL (sqlite:///path, postgresql://...)."""

    def __init__(self, url: str):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs = {}
        if self.is_sqlite:
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                _refuse_unreadable(path)
                d = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(d):
                    raise errors.ConfigError(f"catalog: directory {d} does not exist")
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = create_engine(url, **kwargs)
        self.concurrency = 1 if self.is_sqlite else 8
        self._fast_path = path if self.is_sqlite and path and path != ":memory:" else None
        self._fast: _FastSqlite | None = None
        self._hold: int | None = None   # fd of the lock file while a daemon holds the catalog
        if self._fast_path is not None:  # the calls on the DBAPI fast path
            self.inline_calls = frozenset({"get", "lookup", "create", "update", "bump_version", "unlink",
                                           "purge", "references"})
        if self.is_sqlite:
            @event.listens_for(self.engine, "connect")
            def _on_connect(dbapi_conn, _rec):
                dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

            @event.listens_for(self.engine, "begin")
            def _on_begin(conn):
                conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("tierfs_write") else "BEGIN")

    # ---- plumbing ----------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self, write: bool = True) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn.info["tierfs_write"] = write
                try:
                    with conn.begin():
                        yield conn
                finally:
                    conn.info["tierfs_write"] = False
        except OperationalError as e:
            raise errors.CatalogUnavailable(f"catalog {self._safe_url()}: {e.orig}") from e

    def _safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def _get(self, c: Connection, ino: int) -> Inode:
        row = c.execute(select(S.inodes).where(S.inodes.c.ino == ino)).first()
        if row is None:
            raise errors.NotFound(f"inode {ino}")
        return _inode(row)

    def _set(self, c: Connection, ino: int, **values) -> None:
        if "state" in values and isinstance(values["state"], State):
            values["state"] = values["state"].value
        c.execute(update(S.inodes).where(S.inodes.c.ino == ino).values(**values))

    def _dentry(self, c: Connection, parent: int, name: bytes):
        return c.execute(select(S.dentries).where(
            S.dentries.c.parent == parent, S.dentries.c.name == name)).first()

    def _has_children(self, c: Connection, ino: int) -> bool:
        return c.execute(select(S.dentries.c.pos).where(S.dentries.c.parent == ino).limit(1)).first() is not None

    def _event(self, c: Connection, ino: int, frm: str, to: str, cause: str, detail: str = "") -> None:
        c.execute(insert(S.events).values(ino=ino, time_ns=now_ns(), from_state=str(frm), to_state=str(to),
                                          cause=cause, detail=detail))

    # ---- lifecycle ---------------------------------------------------------
    def init(self, root_uid: int = 0, root_gid: int = 0, root_mode: int = 0o40755) -> None:
        if self._fast_path is not None:
            _private_files(self._fast_path)
        try:
            S.metadata.create_all(self.engine)
        except OperationalError as e:
            raise errors.CatalogUnavailable(f"catalog {self._safe_url()}: {e.orig}") from e
        with self._tx() as c:
            row = c.execute(select(S.meta.c.value).where(S.meta.c.key == "schema_version")).first()
            if row is None:
                c.execute(insert(S.meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
            else:
                version = int(row[0])
                if version > SCHEMA_VERSION:
                    raise errors.ConfigError(
                        f"catalog schema version {version} is newer than this tierfs ({SCHEMA_VERSION}); upgrade tierfs")
                while version < SCHEMA_VERSION:
                    version += 1
                    log.info("migrating catalog schema to version %d", version)
                    MIGRATIONS[version](c)
                    c.execute(update(S.meta).where(S.meta.c.key == "schema_version").values(value=str(version)))
            self._sync_indexes(c)
            if c.execute(select(S.inodes.c.ino).where(S.inodes.c.ino == ROOT_INO)).first() is None:
                t = now_ns()
                root = Inode(ino=ROOT_INO, mode=root_mode, uid=root_uid, gid=root_gid, nlink=2,
                             atime_ns=t, mtime_ns=t, ctime_ns=t, crtime_ns=t, state_ns=t, state_cause="mkfs")
                c.execute(insert(S.inodes).values(**_inode_values(root)))

    def _sync_indexes(self, c: Connection) -> None:
        """Give the tables exactly the indexes of schema.py: create_all() makes a
        missing table with its indexes but never adds one to a table that exists,
        so a catalog made by an older tierfs gets the indexes added since here,
        and loses those schema.DROPPED_INDEXES names. Runs at every init (a
        catalog already in shape costs one index listing per table). Indexes
        change no stored data and an older tierfs reads the catalog as well with
        these ones, so this is no schema_version migration (which would lock
        older tierfs versions out of the catalog)."""
        insp = inspect(c)
        have: set[str] = set()
        for table in S.metadata.sorted_tables:
            names = {ix["name"] for ix in insp.get_indexes(table.name)}
            have |= names
            for ix in sorted(table.indexes, key=lambda ix: ix.name):
                if ix.name not in names:
                    log.info("catalog: creating index %s", ix.name)
                    c.execute(CreateIndex(ix, if_not_exists=True))
        for name in S.DROPPED_INDEXES:  # after creating their replacements
            if name in have:
                log.info("catalog: dropping index %s (superseded)", name)
                c.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")

    def initialised(self) -> bool:
        """True once init() has run on this catalog (it has a schema_version).
        Reads only: a missing or empty SQLite file is not opened (which would
        create it), and no table is created."""
        p = self._fast_path  # the SQLite file, if the catalog is one
        if p is not None and (not os.path.exists(p) or (os.path.getsize(p) == 0 and not os.path.exists(p + "-wal"))):
            return False
        with self._tx(write=False) as c:
            if not inspect(c).has_table(S.meta.name):
                return False
            return c.execute(select(S.meta.c.value).where(S.meta.c.key == "schema_version")).first() is not None

    def close(self) -> None:
        if self._fast is not None:
            self._fast.conn.close()
            self._fast = None
        self.engine.dispose()
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
        if self._fast_path is None:
            return   # PostgreSQL: a server several mounts may share
        path = self._fast_path + ".lock"
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
                f"catalog {self._fast_path} is in use by {holder or 'another tierfs daemon'}: an SQLite catalog "
                "serves one mount (unmount that one first, or use a MongoDB catalog to share one)") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"the tierfs mounted on {mountpoint} (pid {os.getpid()} on {socket.gethostname()})\n"
                  .encode(errors="surrogateescape"), 0)
        self._hold = fd

    def _fastpath(self) -> _FastSqlite | None:
        if self._fast is None and self._fast_path is not None:
            self._fast = _FastSqlite(self._fast_path)
        return self._fast

    @contextlib.contextmanager
    def _fast_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as e:
            raise errors.CatalogUnavailable(f"catalog {self._safe_url()}: {e}") from e

    def _fast_set(self, conn, ino: int, changes: dict) -> None:
        cols = [k for k in changes if k in INODE_FIELDS and k != "ino"]
        if len(cols) != len(changes):
            raise errors.Invalid(f"cannot set inode fields {sorted(set(changes) - set(cols))}")
        vals = [v.value if isinstance(v, State) else v for v in changes.values()]
        conn.execute(f"UPDATE inodes SET {', '.join(c + ' = ?' for c in cols)} WHERE ino = ?", (*vals, ino))

    def schema_version(self) -> int:
        return int(self.get_meta("schema_version") or 0)

    # ---- namespace ---------------------------------------------------------
    def get(self, ino: int) -> Inode:
        f = self._fastpath()
        if f is not None:
            with self._fast_errors():
                row = f.one(_GET_SQL, (ino,))
            if row is None:
                raise errors.NotFound(f"inode {ino}")
            return _inode_row(row)
        with self._tx(write=False) as c:
            return self._get(c, ino)

    def lookup(self, parent: int, name: bytes) -> Inode:
        f = self._fastpath()
        if f is not None:
            with self._fast_errors():
                row = f.one(_LOOKUP_SQL, (parent, name))
            if row is None:
                raise errors.NotFound(f"{name!r} in directory {parent}")
            return _inode_row(row)
        with self._tx(write=False) as c:
            row = c.execute(select(S.inodes).join(S.dentries, S.dentries.c.ino == S.inodes.c.ino).where(
                S.dentries.c.parent == parent, S.dentries.c.name == name)).first()
            if row is None:
                raise errors.NotFound(f"{name!r} in directory {parent}")
            return _inode(row)

    def create(self, parent: int, name: bytes, inode: Inode) -> Inode:
        f = self._fastpath()
        if f is not None:
            with self._fast_errors(), f.write() as conn:
                p = _fast_get(conn, parent)
                if not p.is_dir():
                    raise errors.NotDir(f"inode {parent} is not a directory")
                if conn.execute(_DENTRY_SQL, (parent, name)).fetchone() is not None:
                    raise errors.Exists(f"{name!r} exists in directory {parent}")
                values = _inode_values(inode)
                values.pop("ino")
                ino = conn.execute(_INSERT_INODE_SQL, tuple(values[k] for k in _INSERT_FIELDS)).lastrowid
                conn.execute("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)", (parent, name, ino))
                changes = dict(mtime_ns=inode.ctime_ns, ctime_ns=inode.ctime_ns)
                if inode.is_dir():
                    changes["nlink"] = p.nlink + 1
                self._fast_set(conn, parent, changes)
                return inode.copy(ino=ino)
        with self._tx() as c:
            p = self._get(c, parent)
            if not p.is_dir():
                raise errors.NotDir(f"inode {parent} is not a directory")
            if self._dentry(c, parent, name) is not None:
                raise errors.Exists(f"{name!r} exists in directory {parent}")
            values = _inode_values(inode)
            values.pop("ino")
            ino = c.execute(insert(S.inodes).values(**values)).inserted_primary_key[0]
            c.execute(insert(S.dentries).values(parent=parent, name=name, ino=ino))
            changes = dict(mtime_ns=inode.ctime_ns, ctime_ns=inode.ctime_ns)
            if inode.is_dir():
                changes["nlink"] = p.nlink + 1
            self._set(c, parent, **changes)
            return inode.copy(ino=ino)

    def create_many(self, entries: Sequence[tuple[int, bytes, Inode]], ctime_ns: int) -> list[Inode]:
        entries = list(entries)
        if not entries:
            return []
        with self._tx() as c:
            parents = {p: self._get(c, p) for p in {e[0] for e in entries}}
            for p in parents.values():
                if not p.is_dir():
                    raise errors.NotDir(f"inode {p.ino} is not a directory")
            rows = []
            for _, _, inode in entries:
                values = _inode_values(inode)
                values.pop("ino")
                rows.append(values)
            inos = [r[0] for r in c.execute(insert(S.inodes).returning(S.inodes.c.ino, sort_by_parameter_order=True),
                                            rows)]
            for pino in parents:
                names = [n for p, n, _ in entries if p == pino]
                for k in range(0, len(names), 500):
                    row = c.execute(select(S.dentries.c.name).where(
                        S.dentries.c.parent == pino, S.dentries.c.name.in_(names[k:k + 500])).limit(1)).first()
                    if row is not None:
                        raise errors.Exists(f"{row[0]!r} exists in directory {pino}")
            try:
                c.execute(insert(S.dentries), [dict(parent=p, name=n, ino=ino)
                                               for (p, n, _), ino in zip(entries, inos)])
            except IntegrityError:  # a name twice in the batch, or a concurrent create
                raise errors.Exists("a name in the batch exists (twice in the batch, or created meanwhile)") from None
            for pino, p in parents.items():
                subdirs = sum(1 for e in entries if e[0] == pino and e[2].is_dir())
                self._set(c, pino, nlink=p.nlink + subdirs, mtime_ns=ctime_ns, ctime_ns=ctime_ns)
            return [inode.copy(ino=ino) for (_, _, inode), ino in zip(entries, inos)]

    def link(self, ino: int, parent: int, name: bytes, ctime_ns: int) -> Inode:
        with self._tx() as c:
            inode = self._get(c, ino)
            if inode.is_dir():
                raise errors.PermissionDenied("hard links to directories are not allowed", err=1)  # EPERM
            if not self._get(c, parent).is_dir():
                raise errors.NotDir(f"inode {parent} is not a directory")
            if self._dentry(c, parent, name) is not None:
                raise errors.Exists(f"{name!r} exists in directory {parent}")
            c.execute(insert(S.dentries).values(parent=parent, name=name, ino=ino))
            self._set(c, ino, nlink=inode.nlink + 1, ctime_ns=ctime_ns)
            self._set(c, parent, mtime_ns=ctime_ns, ctime_ns=ctime_ns)
            return inode.copy(nlink=inode.nlink + 1, ctime_ns=ctime_ns)

    def unlink(self, parent: int, name: bytes, ctime_ns: int) -> Inode:
        f = self._fastpath()
        if f is not None:
            with self._fast_errors(), f.write() as conn:
                d = conn.execute(_DENTRY_SQL, (parent, name)).fetchone()
                if d is None:
                    raise errors.NotFound(f"{name!r} in directory {parent}")
                inode = _fast_get(conn, d[1])
                if inode.is_dir():
                    raise errors.IsDir(f"{name!r} is a directory")
                conn.execute("DELETE FROM dentries WHERE pos = ?", (d[0],))
                self._fast_set(conn, inode.ino, dict(nlink=inode.nlink - 1, ctime_ns=ctime_ns))
                self._fast_set(conn, parent, dict(mtime_ns=ctime_ns, ctime_ns=ctime_ns))
                return inode.copy(nlink=inode.nlink - 1, ctime_ns=ctime_ns)
        with self._tx() as c:
            d = self._dentry(c, parent, name)
            if d is None:
                raise errors.NotFound(f"{name!r} in directory {parent}")
            inode = self._get(c, d.ino)
            if inode.is_dir():
                raise errors.IsDir(f"{name!r} is a directory")
            c.execute(delete(S.dentries).where(S.dentries.c.pos == d.pos))
            self._set(c, inode.ino, nlink=inode.nlink - 1, ctime_ns=ctime_ns)
            self._set(c, parent, mtime_ns=ctime_ns, ctime_ns=ctime_ns)
            return inode.copy(nlink=inode.nlink - 1, ctime_ns=ctime_ns)

    def rmdir(self, parent: int, name: bytes, ctime_ns: int) -> Inode:
        with self._tx() as c:
            d = self._dentry(c, parent, name)
            if d is None:
                raise errors.NotFound(f"{name!r} in directory {parent}")
            inode = self._get(c, d.ino)
            if not inode.is_dir():
                raise errors.NotDir(f"{name!r} is not a directory")
            if self._has_children(c, inode.ino):
                raise errors.NotEmpty(f"{name!r} is not empty")
            c.execute(delete(S.dentries).where(S.dentries.c.pos == d.pos))
            self._set(c, inode.ino, nlink=0, ctime_ns=ctime_ns)
            p = self._get(c, parent)
            self._set(c, parent, nlink=p.nlink - 1, mtime_ns=ctime_ns, ctime_ns=ctime_ns)
            return inode.copy(nlink=0, ctime_ns=ctime_ns)

    def _is_ancestor(self, c: Connection, anc: int, ino: int) -> bool:
        """True if directory `anc` is `ino` or one of its ancestors."""
        seen = 0
        while True:
            if ino == anc:
                return True
            if ino == ROOT_INO or seen > 100000:
                return False
            row = c.execute(select(S.dentries.c.parent).where(S.dentries.c.ino == ino).limit(1)).first()
            if row is None:
                return False
            ino = row[0]
            seen += 1

    def rename(self, old_parent, old_name, new_parent, new_name, *, noreplace=False, exchange=False,
               ctime_ns=0) -> Inode | None:
        ctime_ns = ctime_ns or now_ns()
        with self._tx() as c:
            src = self._dentry(c, old_parent, old_name)
            if src is None:
                raise errors.NotFound(f"{old_name!r} in directory {old_parent}")
            dst = self._dentry(c, new_parent, new_name)
            if not self._get(c, new_parent).is_dir():
                raise errors.NotDir(f"inode {new_parent} is not a directory")
            src_inode = self._get(c, src.ino)
            if src_inode.is_dir() and self._is_ancestor(c, src.ino, new_parent):
                raise errors.Invalid("cannot move a directory into itself")
            if exchange:
                if dst is None:
                    raise errors.NotFound(f"{new_name!r} in directory {new_parent}")
                dst_inode = self._get(c, dst.ino)
                if dst_inode.is_dir() and self._is_ancestor(c, dst.ino, old_parent):
                    raise errors.Invalid("cannot move a directory into itself")
                c.execute(update(S.dentries).where(S.dentries.c.pos == src.pos).values(ino=dst.ino))
                c.execute(update(S.dentries).where(S.dentries.c.pos == dst.pos).values(ino=src.ino))
                if old_parent != new_parent and src_inode.is_dir() != dst_inode.is_dir():
                    delta = 1 if src_inode.is_dir() else -1
                    op, np_ = self._get(c, old_parent), self._get(c, new_parent)
                    self._set(c, old_parent, nlink=op.nlink - delta)
                    self._set(c, new_parent, nlink=np_.nlink + delta)
                for ino in {src.ino, dst.ino}:
                    self._set(c, ino, ctime_ns=ctime_ns)
                for p in {old_parent, new_parent}:
                    self._set(c, p, mtime_ns=ctime_ns, ctime_ns=ctime_ns)
                return None
            replaced = None
            if dst is not None:
                if dst.ino == src.ino:
                    return None  # same inode (hard links or same name): POSIX says do nothing
                if noreplace:
                    raise errors.Exists(f"{new_name!r} exists in directory {new_parent}")
                dst_inode = self._get(c, dst.ino)
                if dst_inode.is_dir():
                    if not src_inode.is_dir():
                        raise errors.IsDir(f"{new_name!r} is a directory")
                    if self._has_children(c, dst.ino):
                        raise errors.NotEmpty(f"{new_name!r} is not empty")
                    replaced = dst_inode.copy(nlink=0, ctime_ns=ctime_ns)
                    np_ = self._get(c, new_parent)
                    self._set(c, new_parent, nlink=np_.nlink - 1)
                else:
                    if src_inode.is_dir():
                        raise errors.NotDir(f"{new_name!r} is not a directory")
                    replaced = dst_inode.copy(nlink=dst_inode.nlink - 1, ctime_ns=ctime_ns)
                self._set(c, dst.ino, nlink=replaced.nlink, ctime_ns=ctime_ns)
                c.execute(delete(S.dentries).where(S.dentries.c.pos == dst.pos))
            c.execute(update(S.dentries).where(S.dentries.c.pos == src.pos).values(
                parent=new_parent, name=new_name))
            if src_inode.is_dir() and old_parent != new_parent:
                op = self._get(c, old_parent)
                self._set(c, old_parent, nlink=op.nlink - 1)
                np_ = self._get(c, new_parent)
                self._set(c, new_parent, nlink=np_.nlink + 1)
            self._set(c, src.ino, ctime_ns=ctime_ns)
            for p in {old_parent, new_parent}:
                self._set(c, p, mtime_ns=ctime_ns, ctime_ns=ctime_ns)
            return replaced

    def readdir(self, parent: int, after_pos: int, limit: int) -> list[DirEntry]:
        with self._tx(write=False) as c:
            rows = c.execute(
                select(S.dentries.c.pos, S.dentries.c.name, S.inodes)
                .join(S.inodes, S.inodes.c.ino == S.dentries.c.ino)
                .where(S.dentries.c.parent == parent, S.dentries.c.pos > after_pos)
                .order_by(S.dentries.c.pos).limit(limit)).all()
            return [DirEntry(pos=r.pos, name=r.name, inode=_inode(r)) for r in rows]

    def scan_dentries(self, after_pos: int, limit: int) -> list[tuple[int, int, bytes, int]]:
        d = S.dentries.c
        with self._tx(write=False) as c:
            rows = c.execute(select(d.pos, d.parent, d.name, d.ino).where(d.pos > after_pos)
                             .order_by(d.pos).limit(limit)).all()
        return [(r.pos, r.parent, bytes(r.name), r.ino) for r in rows]

    def remove_dentry(self, pos: int) -> None:
        with self._tx() as c:
            c.execute(delete(S.dentries).where(S.dentries.c.pos == pos))

    def add_dentry(self, parent: int, name: bytes, ino: int) -> None:
        with self._tx() as c:
            c.execute(insert(S.dentries).values(parent=parent, name=name, ino=ino))

    def parent_of(self, ino: int) -> int:
        if ino == ROOT_INO:
            return ROOT_INO
        with self._tx(write=False) as c:
            row = c.execute(select(S.dentries.c.parent).where(S.dentries.c.ino == ino).limit(1)).first()
            if row is None:
                raise errors.NotFound(f"inode {ino} has no name")
            return row[0]

    def path_of(self, ino: int) -> bytes:
        with self._tx(write=False) as c:
            return self._path(c, ino)

    def _path(self, c: Connection, ino: int) -> bytes:
        parts = []
        while ino != ROOT_INO:
            row = c.execute(select(S.dentries.c.parent, S.dentries.c.name)
                            .where(S.dentries.c.ino == ino).limit(1)).first()
            if row is None:
                raise errors.NotFound(f"inode {ino} has no name")
            parts.append(row.name)
            ino = row.parent
        return b"/".join(reversed(parts))

    def _check(self, inode: Inode, expect_version, expect_states) -> None:
        if expect_version is not None and inode.data_version != expect_version:
            raise errors.VersionConflict(
                f"inode {inode.ino}: content version {inode.data_version} != expected {expect_version}")
        if expect_states is not None and inode.state not in set(expect_states):
            raise errors.VersionConflict(f"inode {inode.ino}: state {inode.state} not in {list(map(str, expect_states))}")

    def update(self, ino, changes, *, expect_version=None, expect_states=None) -> Inode:
        f = self._fastpath()
        if f is not None:
            with self._fast_errors(), f.write() as conn:
                inode = _fast_get(conn, ino)
                self._check(inode, expect_version, expect_states)
                if changes:
                    self._fast_set(conn, ino, changes)
                return inode.copy(**changes)
        with self._tx() as c:
            inode = self._get(c, ino)
            self._check(inode, expect_version, expect_states)
            if changes:
                self._set(c, ino, **changes)
            return inode.copy(**changes)

    def bump_version(self, ino: int, changes: dict) -> Inode:
        f = self._fastpath()
        if f is not None:
            with self._fast_errors(), f.write() as conn:
                inode = _fast_get(conn, ino)
                changes = dict(changes, data_version=inode.data_version + 1, checksum=None)
                self._fast_set(conn, ino, changes)
                return inode.copy(**changes)
        with self._tx() as c:
            inode = self._get(c, ino)
            changes = dict(changes, data_version=inode.data_version + 1, checksum=None)
            self._set(c, ino, **changes)
            return inode.copy(**changes)

    def purge(self, ino: int) -> Inode | None:
        f = self._fastpath()
        if f is not None:
            with self._fast_errors(), f.write() as conn:
                row = conn.execute(_GET_SQL, (ino,)).fetchone()
                if row is None:
                    return None
                inode = _inode_row(row)
                if inode.nlink > 0 or ino == ROOT_INO:
                    return None
                if conn.execute("SELECT 1 FROM open_files WHERE ino = ? LIMIT 1", (ino,)).fetchone():
                    return None  # another mount still has it open; the last one to close purges it
                t = now_ns()
                conn.execute("DELETE FROM inodes WHERE ino = ?", (ino,))
                conn.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))
                conn.execute("UPDATE jobs SET state = ?, last_error = ?, updated_ns = ? WHERE ino = ? AND state = ?",
                             (JobState.CANCELLED.value, "file deleted", t, ino, JobState.PENDING.value))
                for tier, key in ((inode.tier, inode.location), (inode.archive_tier, inode.archive_location)):
                    if tier and key:
                        conn.execute("INSERT INTO garbage (tier, key, created_ns, reason) VALUES (?, ?, ?, ?)",
                                     (tier, key, t, "file deleted"))
                return inode
        with self._tx() as c:
            row = c.execute(select(S.inodes).where(S.inodes.c.ino == ino)).first()
            if row is None:
                return None
            inode = _inode(row)
            if inode.nlink > 0 or ino == ROOT_INO:
                return None
            if c.execute(select(S.open_files.c.session).where(S.open_files.c.ino == ino).limit(1)).first():
                return None  # another mount still has it open; the last one to close purges it
            c.execute(delete(S.inodes).where(S.inodes.c.ino == ino))
            c.execute(delete(S.xattrs).where(S.xattrs.c.ino == ino))
            c.execute(update(S.jobs).where(S.jobs.c.ino == ino, S.jobs.c.state == JobState.PENDING.value)
                      .values(state=JobState.CANCELLED.value, last_error="file deleted", updated_ns=now_ns()))
            objs = [(t, k) for t, k in ((inode.tier, inode.location), (inode.archive_tier, inode.archive_location))
                    if t and k]
            self._add_garbage(c, objs, "file deleted")
            return inode

    def bury(self, ino: int, who: str, why: str, *, expect_version: int | None = None) -> Tombstone:
        with self._tx() as c:
            inode = self._get(c, ino)
            if not inode.is_reg():
                raise errors.Invalid(f"inode {ino} is not a regular file")
            self._check(inode, expect_version, None)
            path = self._path(c, ino)  # NotFound when it has no name any more
            t = now_ns()
            for d in c.execute(select(S.dentries.c.pos, S.dentries.c.parent).where(S.dentries.c.ino == ino)).all():
                c.execute(delete(S.dentries).where(S.dentries.c.pos == d.pos))
                self._set(c, d.parent, mtime_ns=t, ctime_ns=t)
            self._set(c, ino, nlink=0, ctime_ns=t)
            c.execute(update(S.jobs).where(S.jobs.c.ino == ino, S.jobs.c.state == JobState.PENDING.value)
                      .values(state=JobState.CANCELLED.value, last_error="file deleted", updated_ns=t))
            values = dict(ino=ino, path=path, size=inode.size, uid=inode.uid, gid=inode.gid,
                          crtime_ns=inode.crtime_ns, mtime_ns=inode.mtime_ns, atime_ns=inode.atime_ns,
                          state=inode.state.value, tier=inode.tier, archive_tier=inode.archive_tier,
                          checksum=inode.checksum, deleted_ns=t, who=who, why=why)
            tid = c.execute(insert(S.tombstones).values(**values)).inserted_primary_key[0]
            self._event(c, ino, inode.state, "deleted", who, why)
            return Tombstone(id=tid, **values)

    def tombstones(self, ino: int | None = None, limit: int = 100) -> list[Tombstone]:
        q = select(S.tombstones)
        if ino is not None:
            q = q.where(S.tombstones.c.ino == ino)
        with self._tx(write=False) as c:
            return [Tombstone(**r._mapping) for r in c.execute(q.order_by(S.tombstones.c.id.desc()).limit(limit))]

    def unlinked(self) -> list[Inode]:
        with self._tx(write=False) as c:
            return [_inode(r) for r in c.execute(select(S.inodes).where(S.inodes.c.nlink == 0))]

    def set_atimes(self, atimes: dict[int, int]) -> None:
        if not atimes:
            return
        with self._tx() as c:
            for ino, t in atimes.items():
                c.execute(update(S.inodes).where(S.inodes.c.ino == ino, S.inodes.c.atime_ns < t).values(atime_ns=t))
        self.atime_writes += len(atimes)

    # ---- xattrs ------------------------------------------------------------
    def getxattr(self, ino: int, name: bytes) -> bytes:
        with self._tx(write=False) as c:
            row = c.execute(select(S.xattrs.c.value).where(S.xattrs.c.ino == ino, S.xattrs.c.name == name)).first()
            if row is None:
                raise errors.NoAttr(f"no attribute {name!r}")
            return row[0]

    def setxattr(self, ino, name, value, *, create=False, replace=False) -> None:
        with self._tx() as c:
            exists = c.execute(select(S.xattrs.c.ino).where(S.xattrs.c.ino == ino, S.xattrs.c.name == name)).first()
            if exists and create:
                raise errors.Exists(f"attribute {name!r} exists")
            if not exists and replace:
                raise errors.NoAttr(f"no attribute {name!r}")
            if exists:
                c.execute(update(S.xattrs).where(S.xattrs.c.ino == ino, S.xattrs.c.name == name).values(value=value))
            else:
                c.execute(insert(S.xattrs).values(ino=ino, name=name, value=value))
            self._set(c, ino, ctime_ns=now_ns())

    def listxattr(self, ino: int) -> list[bytes]:
        with self._tx(write=False) as c:
            return [r[0] for r in c.execute(select(S.xattrs.c.name).where(S.xattrs.c.ino == ino).order_by(S.xattrs.c.name))]

    def removexattr(self, ino: int, name: bytes) -> None:
        with self._tx() as c:
            n = c.execute(delete(S.xattrs).where(S.xattrs.c.ino == ino, S.xattrs.c.name == name)).rowcount
            if not n:
                raise errors.NoAttr(f"no attribute {name!r}")
            self._set(c, ino, ctime_ns=now_ns())

    # ---- state and moves ---------------------------------------------------
    def switch(self, t: Transition) -> Inode:
        with self._tx() as c:
            inode = self._get(c, t.ino)
            self._check(inode, t.expect_version, t.expect_states)
            if t.no_writers_except is not None:
                self._check_no_writers(c, t.ino, t.no_writers_except)
            now = now_ns()
            changes = dict(t.changes)
            if "state" in changes and changes["state"] != inode.state:
                changes.update(state_ns=now, state_cause=t.cause)
                self._event(c, t.ino, inode.state, changes["state"], t.cause, t.detail)
            self._set(c, t.ino, **changes)
            self._add_garbage(c, t.garbage, t.cause)
            if t.job_id is not None:
                c.execute(update(S.jobs).where(S.jobs.c.id == t.job_id).values(dst_key=None, updated_ns=now))
            return inode.copy(**changes)

    def _check_no_writers(self, c: Connection, ino: int, session: str) -> None:
        o = S.open_files.c
        row = c.execute(select(o.session).where(o.ino == ino, o.writing.is_(True), o.session != session)
                        .limit(1)).first()
        if row is not None:
            raise errors.VersionConflict(f"inode {ino} is open for writing on another mount (session {row[0]})")

    def set_open(self, ino, session, reading, writing) -> Inode:
        o = S.open_files.c
        with self._tx() as c:
            inode = self._get(c, ino)
            c.execute(delete(S.open_files).where(o.ino == ino, o.session == session))
            if reading or writing:
                c.execute(insert(S.open_files).values(ino=ino, session=session, writing=bool(writing)))
            self._set(c, ino, ctime_ns=inode.ctime_ns)  # a write on the inode row: serialises with switch()
            return inode

    def add_event(self, ino, from_state, to_state, cause, detail="") -> None:
        with self._tx() as c:
            self._event(c, ino, from_state, to_state, cause, detail)

    def events(self, ino: int, limit: int = 20) -> list[Event]:
        with self._tx(write=False) as c:
            rows = c.execute(select(S.events).where(S.events.c.ino == ino).order_by(S.events.c.id.desc()).limit(limit))
            return [Event(**r._mapping) for r in rows]

    # ---- garbage -----------------------------------------------------------
    def _add_garbage(self, c: Connection, items, reason: str) -> None:
        rows = [dict(tier=t, key=k, created_ns=now_ns(), reason=reason) for t, k in items if t and k]
        if rows:
            c.execute(insert(S.garbage), rows)

    def add_garbage(self, items, reason="") -> None:
        with self._tx() as c:
            self._add_garbage(c, items, reason)

    def garbage(self, limit: int = 100) -> list[Garbage]:
        with self._tx(write=False) as c:
            return [Garbage(**r._mapping) for r in c.execute(select(S.garbage).order_by(S.garbage.c.id).limit(limit))]

    def remove_garbage(self, ids) -> None:
        ids = list(ids)
        if ids:
            with self._tx() as c:
                c.execute(delete(S.garbage).where(S.garbage.c.id.in_(ids)))

    def references(self, tier: str, key: str) -> bool:
        f = self._fastpath()
        if f is not None:
            with self._fast_errors():
                if f.one("SELECT ino FROM inodes WHERE tier = ? AND location = ? UNION ALL "
                         "SELECT ino FROM inodes WHERE archive_tier = ? AND archive_location = ? LIMIT 1",
                         (tier, key, tier, key)) is not None:
                    return True
                states = [s.value for s in ACTIVE_JOB_STATES]
                return f.one(f"SELECT id FROM jobs WHERE dst_key = ? AND state IN ({', '.join('?' * len(states))}) "
                             "LIMIT 1", (key, *states)) is not None
        with self._tx(write=False) as c:
            row = c.execute(select(S.inodes.c.ino).where(or_(
                and_(S.inodes.c.tier == tier, S.inodes.c.location == key),
                and_(S.inodes.c.archive_tier == tier, S.inodes.c.archive_location == key))).limit(1)).first()
            if row is not None:
                return True
            row = c.execute(select(S.jobs.c.id).where(
                S.jobs.c.dst_key == key, S.jobs.c.state.in_([s.value for s in ACTIVE_JOB_STATES])).limit(1)).first()
            return row is not None

    # ---- jobs --------------------------------------------------------------
    def enqueue(self, ino, kind, *, target_tier=None, keep_online=False, cause="") -> tuple[Job, bool]:
        kind = JobKind(kind)
        with self._tx() as c:
            row = c.execute(select(S.jobs).where(
                S.jobs.c.ino == ino, S.jobs.c.kind == kind.value,
                S.jobs.c.state.in_([s.value for s in ACTIVE_JOB_STATES])).limit(1)).first()
            if row is not None:
                return _job(row), False
            t = now_ns()
            values = dict(ino=ino, kind=kind.value, state=JobState.PENDING.value, priority=JOB_PRIORITY[kind],
                          target_tier=target_tier, keep_online=keep_online, cause=cause, session=None,
                          attempts=0, not_before_ns=0, last_error="", dst_key=None, created_ns=t, updated_ns=t)
            jid = c.execute(insert(S.jobs).values(**values)).inserted_primary_key[0]
            values["kind"], values["state"] = kind, JobState.PENDING
            return Job(id=jid, **values), True

    def claim(self, session, kinds=None, busy_tiers=(), *, tiers=None, skip=()) -> Job | None:
        t = now_ns()
        with self._tx() as c:
            q = select(S.jobs).where(S.jobs.c.state == JobState.PENDING.value, S.jobs.c.not_before_ns <= t)
            if kinds is not None:
                q = q.where(S.jobs.c.kind.in_([JobKind(k).value for k in kinds]))
            busy = list(busy_tiers)
            if busy:
                q = q.where(or_(S.jobs.c.target_tier.is_(None), S.jobs.c.target_tier.not_in(busy)))
            if tiers is not None:
                q = q.where(or_(S.jobs.c.target_tier.is_(None), S.jobs.c.target_tier.in_(list(tiers))))
            skip = list(skip)
            if skip:
                q = q.where(S.jobs.c.id.not_in(skip))
            row = c.execute(q.order_by(S.jobs.c.priority, S.jobs.c.id).limit(1)).first()
            if row is None:
                return None
            job = _job(row)
            n = c.execute(update(S.jobs).where(S.jobs.c.id == job.id, S.jobs.c.state == JobState.PENDING.value)
                          .values(state=JobState.RUNNING.value, session=session, attempts=job.attempts + 1,
                                  updated_ns=t)).rowcount
            if n != 1:
                return None
            return job.__class__(**{**job.__dict__, "state": JobState.RUNNING, "session": session,
                                    "attempts": job.attempts + 1, "updated_ns": t})

    def update_job(self, job_id, changes) -> None:
        with self._tx() as c:
            c.execute(update(S.jobs).where(S.jobs.c.id == job_id).values(**changes, updated_ns=now_ns()))

    def finish_job(self, job_id, state, error="") -> None:
        t = now_ns()
        with self._tx() as c:
            c.execute(update(S.jobs).where(S.jobs.c.id == job_id).values(
                state=JobState(state).value, session=None, last_error=error, updated_ns=t))
            if JobState(state) == JobState.DONE:
                row = c.execute(select(S.jobs.c.ino, S.jobs.c.kind).where(S.jobs.c.id == job_id)).first()
                if row is not None:
                    c.execute(update(S.jobs).where(
                        S.jobs.c.ino == row[0], S.jobs.c.kind == row[1], S.jobs.c.state == JobState.FAILED.value,
                        S.jobs.c.id < job_id).values(state=JobState.CANCELLED.value,
                                                     last_error=f"superseded by job {job_id}", updated_ns=t))

    def retry_job(self, job_id, error, delay_s, *, count=True) -> None:
        t = now_ns()
        values = dict(state=JobState.PENDING.value, session=None, last_error=error,
                      not_before_ns=t + int(delay_s * 1e9), updated_ns=t)
        if not count:
            values["attempts"] = case((S.jobs.c.attempts > 0, S.jobs.c.attempts - 1), else_=0)
        with self._tx() as c:
            c.execute(update(S.jobs).where(S.jobs.c.id == job_id).values(**values))

    def get_job(self, job_id) -> Job:
        with self._tx(write=False) as c:
            row = c.execute(select(S.jobs).where(S.jobs.c.id == job_id)).first()
            if row is None:
                raise errors.NotFound(f"job {job_id}")
            return _job(row)

    def jobs(self, states=None, ino=None, limit=1000, newest_first=False) -> list[Job]:
        q = select(S.jobs)
        if states is not None:
            q = q.where(S.jobs.c.state.in_([JobState(s).value for s in states]))
        if ino is not None:
            q = q.where(S.jobs.c.ino == ino)
        with self._tx(write=False) as c:
            order = (S.jobs.c.id.desc(),) if newest_first else (S.jobs.c.priority, S.jobs.c.id)
            return [_job(r) for r in c.execute(q.order_by(*order).limit(limit))]

    def cancel_jobs(self, job_ids=None, *, kind=None) -> int:
        q = update(S.jobs).where(S.jobs.c.state == JobState.PENDING.value)
        if job_ids is not None:
            q = q.where(S.jobs.c.id.in_(list(job_ids)))
        if kind is not None:
            q = q.where(S.jobs.c.kind == JobKind(kind).value)
        with self._tx() as c:
            return c.execute(q.values(state=JobState.CANCELLED.value, last_error="cancelled",
                                      updated_ns=now_ns())).rowcount

    # ---- sessions ----------------------------------------------------------
    def register_session(self, session: Session) -> None:
        with self._tx() as c:
            c.execute(insert(S.sessions).values(**session.__dict__))

    def heartbeat(self, session_id: str) -> None:
        with self._tx() as c:
            c.execute(update(S.sessions).where(S.sessions.c.id == session_id).values(heartbeat_ns=now_ns()))

    def end_session(self, session_id: str, clean: bool = True) -> None:
        with self._tx() as c:
            c.execute(update(S.sessions).where(S.sessions.c.id == session_id).values(clean=clean, heartbeat_ns=now_ns()))
            c.execute(update(S.jobs).where(S.jobs.c.session == session_id, S.jobs.c.state == JobState.RUNNING.value)
                      .values(state=JobState.PENDING.value, session=None, updated_ns=now_ns()))
            c.execute(delete(S.leases).where(S.leases.c.holder == session_id))
            c.execute(delete(S.open_files).where(S.open_files.c.session == session_id))

    def sessions(self) -> list[Session]:
        with self._tx(write=False) as c:
            return [Session(**r._mapping) for r in c.execute(select(S.sessions).order_by(S.sessions.c.started_ns))]

    def reap_sessions(self, older_than_ns: int) -> list[str]:
        with self._tx() as c:
            ids = [r[0] for r in c.execute(select(S.sessions.c.id).where(
                S.sessions.c.clean.is_(False), S.sessions.c.heartbeat_ns < older_than_ns))]
            for sid in ids:
                c.execute(update(S.sessions).where(S.sessions.c.id == sid).values(clean=True))
                c.execute(update(S.jobs).where(S.jobs.c.session == sid, S.jobs.c.state == JobState.RUNNING.value)
                          .values(state=JobState.PENDING.value, session=None,
                                  last_error=f"session {sid} died", updated_ns=now_ns()))
                c.execute(delete(S.leases).where(S.leases.c.holder == sid))
                c.execute(delete(S.open_files).where(S.open_files.c.session == sid))
            return ids

    # ---- queries -----------------------------------------------------------
    #: When more than 1/SCAN_RATIO of the inodes match the state filter, a scan
    #: in ino order beats the state index (whose matches are in random ino order,
    #: one random table read each): 1.5 s -> 0.35 s for 250k of 1M on SQLite.
    SCAN_RATIO = 16

    def _conds(self, c: Connection, q: FileQuery) -> list:
        """WHERE terms on inodes for q's attribute filters (not names/subtree)."""
        i = S.inodes.c
        conds = [i.nlink > 0]
        if q.states is not None:
            states = [State(s).value for s in q.states]
            col = i.state
            # With a range the state index is kept: (state, last_access_ns, size) or (state, size) leads
            # straight to the candidates (policy rules), and with both bounds the size is tested in the index
            # entry.
            ranged = (any(v is not None for v in (q.last_access_before_ns, q.min_size, q.max_size))
                      or q.checksum_missing)
            if self.is_sqlite and not q.order_by_last_access and not ranged and self._unselective(c, states):
                col = self._noindex(col)
            conds.append(col.in_(states))
        if q.regular_only:
            conds.append(i.mode.op("&")(0o170000) == 0o100000)
        if q.checksum_missing:
            conds.append(i.checksum.is_(None))   # ix_inodes_no_checksum (partial) holds just these rows
        size = i.size
        if q.states is not None and q.last_access_before_ns is not None:
            # States + last access (+ size): walk (state, last_access_ns, size) and test the size on its
            # entries, so only matching rows are fetched. SQLite has no statistics on value ranges: it
            # rates that range and the (state, size) one alike and picks by index creation order, so
            # `+size` takes (state, size) out of the choice (it fetches every row of its range to test
            # the last access). Worst case: a wide last-access range with a narrow size one walks the
            # range's index entries, sequential reads without a row fetch each.
            size = self._noindex(size)
        for col, val, op in ((i.tier, q.tier, "eq"), (i.archive_tier, q.archive_tier, "eq"),
                             (size, q.min_size, "ge"), (size, q.max_size, "le"),
                             (i.last_access_ns, q.last_access_before_ns, "lt"),
                             (i.crtime_ns, q.crtime_before_ns, "lt"),
                             (i.mtime_ns, q.mtime_before_ns, "lt"), (i.uid, q.uid, "eq"), (i.gid, q.gid, "eq")):
            if val is not None:
                conds.append({"eq": col == val, "ge": col >= val, "le": col <= val, "lt": col < val}[op])
        return conds

    def _noindex(self, col):
        """`+col`: the same value, but SQLite will not use an index for it (so it
        scans in table order instead of one random read per indexed match)."""
        if not self.is_sqlite:
            return col
        return UnaryExpression(col, operator=custom_op("+"), type_=col.type)

    def _unselective(self, c: Connection, states: list[str]) -> bool:
        """True when over 1/SCAN_RATIO of the inodes are in `states` (counted
        on the index, stopping at that many; max(ino) estimates the total)."""
        i = S.inodes.c
        enough = (c.execute(select(func.max(i.ino))).scalar() or 1) // self.SCAN_RATIO + 1
        some = select(i.ino).where(i.state.in_(states)).limit(enough).subquery()
        return (c.execute(select(func.count()).select_from(some)).scalar() or 0) >= enough

    def _subtree(self, root: int):
        """A recursive CTE of the directory `root` and every directory below it."""
        d, i = S.dentries.alias("sd"), S.inodes.alias("si")
        top = select(literal(root).label("ino")).cte("subtree", recursive=True)
        below = top.alias("st")
        return top.union_all(select(d.c.ino).select_from(d.join(i, i.c.ino == d.c.ino))
                             .where(d.c.parent == below.c.ino, i.c.mode.op("&")(0o170000) == 0o040000))

    def _name_cond(self, name_col, pattern: bytes):
        if self.is_sqlite:  # GLOB compares the name's bytes; fnmatch's [!x] is GLOB's [^x]
            pat = bytes(pattern).replace(b"[!", b"[^")
            return cast(name_col, Text).op("GLOB")(cast(literal(pat, LargeBinary), Text))
        if b"[" in pattern:
            raise errors.Invalid("name patterns with [...] need the SQLite or MongoDB catalog")
        like = bytes(pattern).replace(b"\\", b"\\\\").replace(b"%", b"\\%").replace(b"_", b"\\_")
        return name_col.like(like.replace(b"*", b"%").replace(b"?", b"_"), escape="\\")

    def _name_terms(self, d, q: FileQuery) -> list:
        """WHERE terms on a dentries table for q's name and subtree filters."""
        terms = []
        if q.under is not None:
            terms.append(d.c.parent.in_(select(self._subtree(q.under).c.ino)))
        if q.name_glob is not None:
            terms.append(self._name_cond(d.c.name, q.name_glob))
        return terms

    def query(self, q: FileQuery) -> Iterator[Inode]:
        i = S.inodes.c
        with self._tx(write=False) as c:
            conds = self._conds(c, q)
            if q.under is not None or q.name_glob is not None:
                d = S.dentries
                conds.append(i.ino.in_(select(d.c.ino).where(*self._name_terms(d, q))))
            stmt = select(S.inodes).where(*conds)
            if q.order_by_last_access:
                stmt = stmt.order_by(i.last_access_ns, i.ino)
            elif q.limit is None and self.is_sqlite:
                # All matches are wanted: `ino + 0` stops SQLite (with ANALYZE statistics) from
                # walking the whole primary key to save a sort; the state/last access/size indexes find
                # the candidates and SQLite sorts just those.
                stmt = stmt.where(i.ino + 0 > q.after_ino).order_by(i.ino + 0)
            else:
                stmt = stmt.where(i.ino > q.after_ino).order_by(i.ino)
            if q.limit is not None:
                stmt = stmt.limit(q.limit)
            rows = c.execute(stmt).all()
        self.rows_read += len(rows)
        for r in rows:
            yield _inode(r)

    def query_names(self, q: FileQuery) -> Iterator[tuple[int, bytes, int]]:
        """Streams (one read transaction stays open until the iterator ends)."""
        d = S.dentries
        with self._tx(write=False) as c:
            stmt = (select(d.c.parent, d.c.name, d.c.ino).select_from(d.join(S.inodes, S.inodes.c.ino == d.c.ino))
                    .where(*self._conds(c, q), *self._name_terms(d, q)))
            for part in c.execute(stmt).partitions(20000):
                self.rows_read += len(part)
                yield from part

    def paths_of(self, inos: Iterable[int], cache: dict[int, bytes] | None = None) -> dict[int, bytes]:
        """Level by level: one read of dentries per level and batch of 500."""
        inos = list(inos)
        cache = {} if cache is None else cache
        cache[ROOT_INO] = b""
        d = S.dentries.c
        names: dict[int, tuple[int, bytes]] = {}   # ino -> (parent, name)
        todo = [i for i in dict.fromkeys(inos) if i not in cache]
        with self._tx(write=False) as c:
            while todo:
                for k in range(0, len(todo), 500):
                    for parent, name, ino in c.execute(select(d.parent, d.name, d.ino)
                                                       .where(d.ino.in_(todo[k:k + 500]))):
                        names.setdefault(ino, (parent, name))
                todo = list(dict.fromkeys(names[i][0] for i in todo if i in names
                                          if names[i][0] not in cache and names[i][0] not in names))
        return resolve_paths(inos, names, cache)

    def count_by(self, q: FileQuery, by: str) -> dict:
        if by not in COUNT_BY_FIELDS:
            raise errors.Invalid(f"cannot count by {by!r} (one of {', '.join(COUNT_BY_FIELDS)})")
        i = S.inodes.c
        col = self._noindex(getattr(i, by))  # every match is read anyway: scan, don't walk an index
        with self._tx(write=False) as c:
            conds = self._conds(c, FileQuery(**{**q.__dict__, "order_by_last_access": False}))
            if q.under is not None or q.name_glob is not None:
                d = S.dentries
                conds.append(i.ino.in_(select(d.c.ino).where(*self._name_terms(d, q))))
            rows = c.execute(select(col, func.count(), func.coalesce(func.sum(i.size), 0)).where(*conds).group_by(col))
            return {r[0]: (r[1], int(r[2])) for r in rows}

    def stats(self) -> CatalogStats:
        st = CatalogStats()
        i = S.inodes.c
        reg = and_(i.nlink > 0, i.mode.op("&")(0o170000) == 0o100000)
        with self._tx(write=False) as c:
            state = self._noindex(i.state)  # a scan: walking the state index costs one random read per file
            for r in c.execute(select(state, func.count(), func.coalesce(func.sum(i.size), 0))
                               .where(reg).group_by(state)):
                st.by_state[r[0]] = (r[1], int(r[2]))
            for r in c.execute(select(i.tier, func.count(), func.coalesce(func.sum(i.size), 0))
                               .where(reg, i.tier.is_not(None)).group_by(i.tier)):
                st.by_tier[r[0]] = (r[1], int(r[2]))
            for r in c.execute(select(i.archive_tier, func.count(), func.coalesce(func.sum(i.size), 0))
                               .where(reg, i.archive_tier.is_not(None)).group_by(i.archive_tier)):
                st.by_archive[r[0]] = (r[1], int(r[2]))
            for r in c.execute(select(S.jobs.c.state, S.jobs.c.kind, func.count())
                               .group_by(S.jobs.c.state, S.jobs.c.kind)):
                st.jobs.setdefault(r[0], {})[r[1]] = r[2]
        return st

    def tiers_in_use(self) -> set[str]:
        out: set[str] = set()
        with self._tx(write=False) as c:
            for col in ("tier", "archive_tier"):
                # A loose index scan: each step is one MIN() on ix_inodes_tier / ix_inodes_archive, so
                # the cost grows with the number of tiers, not of inodes.
                rows = c.exec_driver_sql(
                    f"WITH RECURSIVE t(v) AS (SELECT MIN({col}) FROM inodes UNION ALL "
                    f"SELECT (SELECT MIN({col}) FROM inodes WHERE {col} > t.v) FROM t WHERE t.v IS NOT NULL) "
                    "SELECT v FROM t WHERE v IS NOT NULL")
                out.update(r[0] for r in rows)
            out.update(r[0] for r in c.execute(select(S.garbage.c.tier).distinct()))
            out.update(r[0] for r in c.execute(select(S.jobs.c.target_tier).distinct().where(
                S.jobs.c.state.in_([s.value for s in ACTIVE_JOB_STATES]), S.jobs.c.target_tier.is_not(None))))
        return out

    # ---- meta / leases -----------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._tx(write=False) as c:
            row = c.execute(select(S.meta.c.value).where(S.meta.c.key == key)).first()
            return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as c:
            if c.execute(update(S.meta).where(S.meta.c.key == key).values(value=value)).rowcount == 0:
                c.execute(insert(S.meta).values(key=key, value=value))

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        t = now_ns()
        with self._tx() as c:
            row = c.execute(select(S.leases).where(S.leases.c.name == name)).first()
            if row is not None and row.holder != holder and row.expires_ns > t:
                return False
            values = dict(holder=holder, expires_ns=t + int(ttl_s * 1e9))
            if row is None:
                c.execute(insert(S.leases).values(name=name, **values))
            else:
                c.execute(update(S.leases).where(S.leases.c.name == name).values(**values))
            return True
