"""The SQL schema of the catalog (SQLite by default, PostgreSQL-ready).

The schema is the specification: every column says what it holds. Times are
integer nanoseconds since the epoch. Names and symlink targets are bytes,
because POSIX names are bytes (invalid UTF-8 must round-trip).
The MongoDB catalog stores the same fields (catalog/mongo.py).
"""

from sqlalchemy import (Boolean, Column, Computed, Index, Integer, LargeBinary, MetaData,
                        String, Table, Text, UniqueConstraint, column)
from sqlalchemy import BigInteger
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

metadata = MetaData()


class greatest(FunctionElement):
    """The larger of its arguments: GREATEST(a, b) in PostgreSQL, the
    two-argument max(a, b) in SQLite (which has no GREATEST)."""

    name = "greatest"
    inherit_cache = True


@compiles(greatest)
def _greatest(element, compiler, **kw) -> str:
    return f"greatest({compiler.process(element.clauses, **kw)})"


@compiles(greatest, "sqlite")
def _greatest_sqlite(element, compiler, **kw) -> str:
    return f"max({compiler.process(element.clauses, **kw)})"


@compiles(Computed, "sqlite")
def _virtual_in_sqlite(element, compiler, **kw) -> str:
    """Generated columns are VIRTUAL in SQLite (computed when read; an index
    on one stores its values): ALTER TABLE can add only those, so catalogs
    made and migrated alike have the same table. PostgreSQL gets STORED
    (persisted=True), the only kind it can index."""
    expr = compiler.sql_compiler.process(element.sqltext, include_table=False, literal_binds=True)
    return f"GENERATED ALWAYS AS ({expr}) VIRTUAL"


# BigInteger maps to INTEGER on SQLite, so integer primary keys stay rowid aliases.
Big = BigInteger().with_variant(Integer, "sqlite")

meta = Table(
    "meta", metadata,
    Column("key", String(64), primary_key=True, comment="setting name, e.g. 'schema_version'"),
    Column("value", Text, nullable=False, comment="setting value as text"),
    comment="catalog-wide settings; 'schema_version' drives migrations",
)

inodes = Table(
    "inodes", metadata,
    Column("ino", Big, primary_key=True, autoincrement=True, comment="inode number; 1 = root directory"),
    Column("mode", Integer, nullable=False, comment="st_mode: file type bits | permission bits"),
    Column("uid", Integer, nullable=False, comment="owner uid"),
    Column("gid", Integer, nullable=False, comment="owner gid"),
    Column("nlink", Integer, nullable=False, comment="dentries pointing here (+subdirs +1 for dirs); 0 = unlinked but still open"),
    Column("size", Big, nullable=False, comment="logical size in bytes; may exceed stored bytes (sparse)"),
    Column("atime_ns", Big, nullable=False, comment="last access (batched by the daemon's access tracking)"),
    Column("mtime_ns", Big, nullable=False, comment="last content modification"),
    Column("ctime_ns", Big, nullable=False, comment="last metadata change"),
    Column("crtime_ns", Big, nullable=False, comment="creation time"),
    Column("rdev", Big, nullable=False, comment="device number of device nodes, else 0"),
    Column("target", LargeBinary, nullable=True, comment="symlink target bytes; NULL for non-symlinks"),
    Column("state", String(16), nullable=False, comment="online|archiving|dual|archived|restoring|lost (catalog/base.py State)"),
    Column("tier", String(64), nullable=True, comment="online tier holding the bytes; NULL when archived or not a file"),
    Column("location", String(255), nullable=True, comment="object key on `tier`; NULL = no object (reads as zeros)"),
    Column("archive_tier", String(64), nullable=True, comment="archive tier holding a copy (dual/archived/restoring/lost)"),
    Column("archive_location", String(255), nullable=True, comment="object key on `archive_tier`"),
    Column("checksum", String(64), nullable=True, comment="sha256 hex of the current content; NULL until finalised or after a write"),
    Column("data_version", Big, nullable=False, comment="bumped on every content change; moves compare-and-swap on it"),
    Column("state_ns", Big, nullable=False, comment="when `state` last changed"),
    Column("state_cause", Text, nullable=False, comment="why `state` last changed (command + uid, policy rule, create)"),
    # Inactivity is measured from it (base.Inode.last_access_ns). A generated column: the database computes
    # it on every write of atime_ns or mtime_ns, so no write path can leave it stale (SQLite: VIRTUAL, see
    # _virtual_in_sqlite; PostgreSQL: STORED). Last in the table because version 1 catalogs get it by
    # ALTER TABLE ADD COLUMN (sql.py MIGRATIONS[2]), which appends.
    Column("last_access_ns", Big, Computed(greatest(column("atime_ns"), column("mtime_ns")), persisted=True),
           comment="max(atime_ns, mtime_ns): last access or modification, whichever is later (generated)"),
    comment="one row per file, directory or symlink",
)
# Indexes: sql.py init() gives a catalog made by an older tierfs every index below that it lacks
# (create_all only indexes tables it creates) and drops those named in DROPPED_INDEXES.
#
# query()/query_names()/count_by() with states + last_access_before_ns (policy rules on inactivity, `tierfs
# find --inactive`), and with states + order_by_last_access (watermark runs, least recently used first): the
# search walks state = ? AND last_access_ns < ? in this index and tests min_size/max_size on the index entry,
# so only rows that match all three are fetched (1M entries, 1% candidates: 10,000 rows instead of 91,046).
Index("ix_inodes_state_last_access_size", inodes.c.state, inodes.c.last_access_ns, inodes.c.size)
# query()/query_names()/count_by() with states + min_size/max_size but no atime bound (rules on size alone,
# `tierfs find --size`). Either state index serves _unselective()'s count of the inodes in some states.
Index("ix_inodes_state_size", inodes.c.state, inodes.c.size)
# references() (is an online object still used?), FileQuery.tier, `tierfs status` bytes per tier.
Index("ix_inodes_tier", inodes.c.tier, inodes.c.location)
# references() of archive copies, FileQuery.archive_tier, `tierfs status` bytes per archive tier.
Index("ix_inodes_archive", inodes.c.archive_tier, inodes.c.archive_location)
# The checksummer's backlog after a restart (FileQuery.checksum_missing): files whose sha256 is not recorded
# yet (partial: only those rows, a handful once the daemon has caught up).
Index("ix_inodes_no_checksum", inodes.c.state, inodes.c.ino, sqlite_where=inodes.c.checksum.is_(None),
      postgresql_where=inodes.c.checksum.is_(None))
# unlinked(): inodes kept at nlink 0 while open, purged at recovery (partial: only those rows).
Index("ix_inodes_nlink0", inodes.c.nlink, sqlite_where=inodes.c.nlink == 0,
      postgresql_where=inodes.c.nlink == 0)

dentries = Table(
    "dentries", metadata,
    Column("pos", Big, primary_key=True, autoincrement=True, comment="stable readdir cookie (never reused)"),
    Column("parent", Big, nullable=False, comment="directory inode containing the name"),
    Column("name", LargeBinary, nullable=False, comment="file name bytes (no '/' or NUL; <= 255 bytes)"),
    Column("ino", Big, nullable=False, comment="inode the name points at"),
    UniqueConstraint("parent", "name", name="uq_dentries_parent_name"),
    comment="the namespace: (parent, name) -> inode; rename updates one row",
)
# lookup()/create()/rename() use uq_dentries_parent_name (parent, name); readdir() the same (parent) prefix.
# parent_of(), path_of(), paths_of(), bury() and the name/subtree joins of query() go from an inode to its names.
Index("ix_dentries_ino", dentries.c.ino)

xattrs = Table(
    "xattrs", metadata,
    Column("ino", Big, primary_key=True, comment="inode the attribute belongs to"),
    Column("name", LargeBinary, primary_key=True, comment="full attribute name, e.g. b'user.project'"),
    Column("value", LargeBinary, nullable=False, comment="attribute value (<= 64 KiB)"),
    comment="extended attributes (user.* namespace)",
)

jobs = Table(
    "jobs", metadata,
    Column("id", Big, primary_key=True, autoincrement=True, comment="job id"),
    Column("ino", Big, nullable=False, comment="file the job acts on"),
    Column("kind", String(16), nullable=False, comment="restore|archive|release|migrate"),
    Column("state", String(16), nullable=False, comment="pending|running|done|failed|cancelled"),
    Column("priority", Integer, nullable=False, comment="lower runs first; restores are 0"),
    Column("target_tier", String(64), nullable=True, comment="destination tier, if the kind has one"),
    Column("keep_online", Boolean, nullable=False, comment="archive: leave the file dual"),
    Column("cause", Text, nullable=False, comment="who/what asked (command + uid, policy rule)"),
    Column("session", String(64), nullable=True, comment="session running it (state running)"),
    Column("attempts", Integer, nullable=False, comment="times started"),
    Column("not_before_ns", Big, nullable=False, comment="earliest start (retry backoff)"),
    Column("last_error", Text, nullable=False, comment="last failure message"),
    Column("dst_key", String(255), nullable=True, comment="object written on the destination; cleaned up if the move dies"),
    Column("created_ns", Big, nullable=False, comment="when queued"),
    Column("updated_ns", Big, nullable=False, comment="last change"),
    comment="the durable request queue (restore before archive)",
)
# claim(): the most urgent pending job (state, then priority, then age); jobs(states) for `tierfs queue`.
Index("ix_jobs_runnable", jobs.c.state, jobs.c.priority, jobs.c.id)
# enqueue()'s coalescing (an active job of this kind for this file?), jobs(ino=), purge()/bury() cancelling.
Index("ix_jobs_ino", jobs.c.ino, jobs.c.kind, jobs.c.state)

sessions = Table(
    "sessions", metadata,
    Column("id", String(64), primary_key=True, comment="random session id chosen at mount"),
    Column("host", String(255), nullable=False, comment="hostname of the daemon"),
    Column("pid", Integer, nullable=False, comment="daemon pid on that host"),
    Column("mountpoint", Text, nullable=False, comment="mountpoint path"),
    Column("started_ns", Big, nullable=False, comment="registration time"),
    Column("heartbeat_ns", Big, nullable=False, comment="last heartbeat; stale sessions get reaped"),
    Column("clean", Boolean, nullable=False, comment="true once unmounted cleanly"),
    comment="mounted daemons sharing this catalog",
)

events = Table(
    "events", metadata,
    Column("id", Big, primary_key=True, autoincrement=True, comment="event id"),
    Column("ino", Big, nullable=False, comment="file"),
    Column("time_ns", Big, nullable=False, comment="when"),
    Column("from_state", String(16), nullable=False, comment="state before"),
    Column("to_state", String(16), nullable=False, comment="state after"),
    Column("cause", Text, nullable=False, comment="command + uid, policy rule, restore on open..."),
    Column("detail", Text, nullable=False, comment="tier names, bytes, errors"),
    comment="history of state transitions",
)
# events(ino): a file's history, most recent first (`tierfs state -v`).
Index("ix_events_ino", events.c.ino, events.c.id)

garbage = Table(
    "garbage", metadata,
    Column("id", Big, primary_key=True, autoincrement=True, comment="entry id"),
    Column("tier", String(64), nullable=False, comment="tier holding the object"),
    Column("key", String(255), nullable=False, comment="object key to delete"),
    Column("created_ns", Big, nullable=False, comment="when it became unreferenced"),
    Column("reason", Text, nullable=False, comment="why (unlink, superseded by a move...)"),
    comment="tier objects no inode references; the daemon deletes them (idempotently)",
)

tombstones = Table(
    "tombstones", metadata,
    Column("id", Big, primary_key=True, autoincrement=True, comment="tombstone id"),
    Column("ino", Big, nullable=False, comment="inode number the deleted file had"),
    Column("path", LargeBinary, nullable=False, comment="its path relative to the root when deleted"),
    Column("size", Big, nullable=False, comment="logical size then"),
    Column("uid", Integer, nullable=False, comment="owner uid then"),
    Column("gid", Integer, nullable=False, comment="owner gid then"),
    Column("crtime_ns", Big, nullable=False, comment="creation time"),
    Column("mtime_ns", Big, nullable=False, comment="last modification"),
    Column("atime_ns", Big, nullable=False, comment="last access"),
    Column("state", String(16), nullable=False, comment="state when deleted (online|dual|archived|lost)"),
    Column("tier", String(64), nullable=True, comment="online tier that held the bytes, if any"),
    Column("archive_tier", String(64), nullable=True, comment="archive tier that held a copy, if any"),
    Column("checksum", String(64), nullable=True, comment="sha256 of the content, if known"),
    Column("deleted_ns", Big, nullable=False, comment="when it was deleted"),
    Column("who", Text, nullable=False, comment="what deleted it (policy rule, session, host)"),
    Column("why", Text, nullable=False, comment="the values that matched (e.g. 'created 400d ago > 365d')"),
    comment="compliance deletions (policy action delete): the file is gone, this record stays",
)
# tombstones(ino): the deletions of one inode number, most recent first.
Index("ix_tombstones_ino", tombstones.c.ino, tombstones.c.id)

open_files = Table(
    "open_files", metadata,
    Column("ino", Big, primary_key=True, comment="inode some mount has open"),
    Column("session", String(64), primary_key=True, comment="session (mount) holding it open"),
    Column("writing", Boolean, nullable=False, comment="true while that mount has a writable handle on it"),
    comment="files open per mount when mounts share the catalog: moves skip files written elsewhere; "
            "unlinked files stay until no mount has them open",
)

leases = Table(
    "leases", metadata,
    Column("name", String(64), primary_key=True, comment="lease name, e.g. 'policy'"),
    Column("holder", String(64), nullable=False, comment="session id holding it"),
    Column("expires_ns", Big, nullable=False, comment="lease is free after this time"),
    comment="named leases so one mount at a time runs e.g. policies",
)

#: Indexes older catalogs have and this schema no longer wants; init() drops them.
#: ix_inodes_state_atime (state, atime_ns) and ix_inodes_state_atime_size (state, atime_ns, size): no
#: query bounds or orders by atime alone any more (inactivity is last_access_ns, indexed above); if kept,
#: each would cost an index write per atime flush for nothing.
DROPPED_INDEXES = ("ix_inodes_state_atime", "ix_inodes_state_atime_size")
