"""The catalog's schema: the specification of every record, as the SQLite
tables that store it (catalog/sql.py runs these statements as they are).

Every column says what it holds. Times are integer nanoseconds since the
epoch. Names and symlink targets are bytes (BLOB), because POSIX names are
bytes (invalid UTF-8 must round-trip). The MongoDB catalog stores the same
records with the same field names (catalog/mongo.py lists only where its
documents differ: `_id` for the primary key, counters, open_gen).

The statements are those the SQLAlchemy tables of tierfs before issue 15
emitted, so catalogs made then and now have the same tables (tests/catalog/
test_sqlite_compat.py opens one made by that code). INTEGER PRIMARY KEY
columns are SQLite rowid aliases (numbers are max + 1, never reused while
the highest row lives).
"""

from __future__ import annotations

#: inodes.last_access_ns: what inactivity is measured from (base.Inode.last_access_ns). Generated: the
#: database computes it on every write of atime_ns or mtime_ns, so no write path can leave it stale.
#: VIRTUAL (computed when read; an index on it stores its values): ALTER TABLE can add only those, so
#: catalogs made and migrated (sql.py MIGRATIONS[2]) alike have the same table. Last in the table
#: because version 1 catalogs get it by ALTER TABLE ADD COLUMN, which appends.
LAST_ACCESS = "INTEGER GENERATED ALWAYS AS (max(atime_ns, mtime_ns)) VIRTUAL"

#: inodes.size_class: base.size_class(size), the bit length of the size, generated like last_access_ns
#: (VIRTUAL; appended by version 5's ALTER TABLE, sql.py MIGRATIONS[5]). Arithmetic, because SQLite's
#: log2() exists only in builds with its math functions and an index expression must evaluate alike in
#: every build that opens the file: a binary search over the powers of two, 6 comparisons (an insert
#: with its index: 3.7 us against 2.9 us without the column; a sum of 63 comparisons took 7.6 us).
def _bit_length(lo: int, hi: int) -> str:
    """SQL for the bit length of `size`, known to be in lo..hi."""
    if lo == hi:
        return str(lo)
    mid = (lo + hi + 1) // 2   # size >= 2**(mid-1) exactly when its bit length is >= mid
    return f"CASE WHEN size >= {1 << (mid - 1)} THEN {_bit_length(mid, hi)} ELSE {_bit_length(lo, mid - 1)} END"


SIZE_CLASS = f"INTEGER GENERATED ALWAYS AS (CASE WHEN size < 1 THEN 0 ELSE {_bit_length(1, 63)} END) VIRTUAL"

#: Columns schema version 3 added (issue 18); catalogs made before get them by ALTER TABLE ADD COLUMN
#: (sql.py MIGRATIONS[3]), which appends: so they are last in their tables here too.
V3_COLUMNS = {"inodes": ("archive_copies", "stub_size", "origin_tier", "origin_location"),
              "jobs": ("uid", "more_targets")}

#: CREATE TABLE statements in creation order (table name -> statement).
TABLES: dict[str, str] = {
    # Catalog-wide settings; 'schema_version' drives migrations (sql.py MIGRATIONS).
    "meta": """CREATE TABLE meta (
	"key" VARCHAR(64) NOT NULL, -- setting name, e.g. 'schema_version'
	value TEXT NOT NULL, -- setting value as text
	PRIMARY KEY ("key")
)""",
    # One row per file, directory or symlink (base.Inode).
    "inodes": """CREATE TABLE inodes (
	ino INTEGER NOT NULL, -- inode number; 1 = root directory
	mode INTEGER NOT NULL, -- st_mode: file type bits | permission bits
	uid INTEGER NOT NULL, -- owner uid
	gid INTEGER NOT NULL, -- owner gid
	nlink INTEGER NOT NULL, -- dentries pointing here (+subdirs +1 for dirs); 0 = unlinked but still open
	size INTEGER NOT NULL, -- logical size in bytes; may exceed stored bytes (sparse)
	atime_ns INTEGER NOT NULL, -- last access (batched by the daemon's access tracking; never moves backwards)
	mtime_ns INTEGER NOT NULL, -- last content modification
	ctime_ns INTEGER NOT NULL, -- last metadata change
	crtime_ns INTEGER NOT NULL, -- creation time
	rdev INTEGER NOT NULL, -- device number of device nodes, else 0
	target BLOB, -- symlink target bytes; NULL for non-symlinks
	state VARCHAR(16) NOT NULL, -- online|archiving|dual|archived|restoring|lost (base.State)
	tier VARCHAR(64), -- online tier holding the bytes; NULL when archived or not a file
	location VARCHAR(255), -- object key on `tier`; NULL = no object (reads as zeros)
	archive_tier VARCHAR(64), -- archive tier holding a copy (dual/archived/restoring/lost)
	archive_location VARCHAR(255), -- object key on `archive_tier`
	checksum VARCHAR(64), -- sha256 hex of the current content; NULL until finalised or after a write
	data_version INTEGER NOT NULL, -- bumped on every content change; moves compare-and-swap on it
	state_ns INTEGER NOT NULL, -- when `state` last changed
	state_cause TEXT NOT NULL, -- why `state` last changed (command + uid, policy rule, create)
	last_access_ns """ + LAST_ACCESS + """, -- max(atime_ns, mtime_ns), generated (base.Inode.last_access_ns)
	archive_copies TEXT, -- further archive copies beyond archive_tier: JSON [[tier, key], ...]; NULL = none
	stub_size INTEGER NOT NULL DEFAULT 0, -- first bytes kept online while archived (table stubs); 0 = none
	origin_tier VARCHAR(64), -- released in-place original: the in-place tier a restore puts the bytes back on
	origin_location VARCHAR(255), -- ... and its key there (the path relative to that tier's root)
	size_class """ + SIZE_CLASS + """, -- bit length of size, generated (base.size_class)
	PRIMARY KEY (ino)
)""",
    # The namespace: (parent, name) -> inode; rename updates one row.
    "dentries": """CREATE TABLE dentries (
	pos INTEGER NOT NULL, -- stable readdir cookie
	parent INTEGER NOT NULL, -- directory inode containing the name
	name BLOB NOT NULL, -- file name bytes (no '/' or NUL; <= 255 bytes)
	ino INTEGER NOT NULL, -- inode the name points at
	PRIMARY KEY (pos),
	CONSTRAINT uq_dentries_parent_name UNIQUE (parent, name)
)""",
    # Extended attributes (user.* namespace).
    "xattrs": """CREATE TABLE xattrs (
	ino INTEGER NOT NULL, -- inode the attribute belongs to
	name BLOB NOT NULL, -- full attribute name, e.g. b'user.project'
	value BLOB NOT NULL, -- attribute value (<= 64 KiB)
	PRIMARY KEY (ino, name)
)""",
    # The durable request queue, restore before archive (base.Job).
    "jobs": """CREATE TABLE jobs (
	id INTEGER NOT NULL, -- job id
	ino INTEGER NOT NULL, -- file the job acts on
	kind VARCHAR(16) NOT NULL, -- restore|archive|release|migrate
	state VARCHAR(16) NOT NULL, -- pending|running|done|failed|cancelled
	priority INTEGER NOT NULL, -- lower runs first; restores are 0
	target_tier VARCHAR(64), -- destination tier, if the kind has one
	keep_online BOOLEAN NOT NULL, -- archive: leave the file dual
	cause TEXT NOT NULL, -- who/what asked (command + uid, policy rule)
	session VARCHAR(64), -- session running it (state running)
	attempts INTEGER NOT NULL, -- times started
	not_before_ns INTEGER NOT NULL, -- earliest start (retry backoff)
	last_error TEXT NOT NULL, -- last failure message
	dst_key VARCHAR(255), -- object written on the destination; cleaned up if the move dies
	created_ns INTEGER NOT NULL, -- when queued
	updated_ns INTEGER NOT NULL, -- last change
	uid INTEGER, -- uid of the user who asked; NULL = the daemon (policy, recovery)
	more_targets TEXT, -- archive: further archive tiers, JSON ["tier", ...]; each holds a verified copy first
	PRIMARY KEY (id)
)""",
    # Mounted daemons sharing this catalog (base.Session).
    "sessions": """CREATE TABLE sessions (
	id VARCHAR(64) NOT NULL, -- random session id chosen at mount
	host VARCHAR(255) NOT NULL, -- hostname of the daemon
	pid INTEGER NOT NULL, -- daemon pid on that host
	mountpoint TEXT NOT NULL, -- mountpoint path
	started_ns INTEGER NOT NULL, -- registration time
	heartbeat_ns INTEGER NOT NULL, -- last heartbeat; stale sessions get reaped
	clean BOOLEAN NOT NULL, -- true once unmounted cleanly
	PRIMARY KEY (id)
)""",
    # History of state transitions (base.Event).
    "events": """CREATE TABLE events (
	id INTEGER NOT NULL, -- event id
	ino INTEGER NOT NULL, -- file
	time_ns INTEGER NOT NULL, -- when
	from_state VARCHAR(16) NOT NULL, -- state before
	to_state VARCHAR(16) NOT NULL, -- state after
	cause TEXT NOT NULL, -- command + uid, policy rule, restore on open...
	detail TEXT NOT NULL, -- tier names, bytes, errors
	PRIMARY KEY (id)
)""",
    # Tier objects no inode references; the daemon deletes them, idempotently (base.Garbage).
    "garbage": """CREATE TABLE garbage (
	id INTEGER NOT NULL, -- entry id
	tier VARCHAR(64) NOT NULL, -- tier holding the object
	"key" VARCHAR(255) NOT NULL, -- object key to delete
	created_ns INTEGER NOT NULL, -- when it became unreferenced
	reason TEXT NOT NULL, -- why (unlink, superseded by a move...)
	PRIMARY KEY (id)
)""",
    # Compliance deletions (policy action delete): the file is gone, this record stays (base.Tombstone).
    "tombstones": """CREATE TABLE tombstones (
	id INTEGER NOT NULL, -- tombstone id
	ino INTEGER NOT NULL, -- inode number the deleted file had
	path BLOB NOT NULL, -- its path relative to the root when deleted
	size INTEGER NOT NULL, -- logical size then
	uid INTEGER NOT NULL, -- owner uid then
	gid INTEGER NOT NULL, -- owner gid then
	crtime_ns INTEGER NOT NULL, -- creation time
	mtime_ns INTEGER NOT NULL, -- last modification
	atime_ns INTEGER NOT NULL, -- last access
	state VARCHAR(16) NOT NULL, -- state when deleted (online|dual|archived|lost)
	tier VARCHAR(64), -- online tier that held the bytes, if any
	archive_tier VARCHAR(64), -- archive tier that held a copy, if any
	checksum VARCHAR(64), -- sha256 of the content, if known
	deleted_ns INTEGER NOT NULL, -- when it was deleted
	who TEXT NOT NULL, -- what deleted it (policy rule, session, host)
	why TEXT NOT NULL, -- the values that matched (e.g. 'created 400d ago > 365d')
	PRIMARY KEY (id)
)""",
    # Files open per mount when mounts share the catalog: moves skip files written elsewhere;
    # unlinked files stay until no mount has them open.
    "open_files": """CREATE TABLE open_files (
	ino INTEGER NOT NULL, -- inode some mount has open
	session VARCHAR(64) NOT NULL, -- session (mount) holding it open
	writing BOOLEAN NOT NULL, -- true while that mount has a writable handle on it
	PRIMARY KEY (ino, session)
)""",
    # Partial-state files: the first bytes of an archived file, served without a restore (inodes.stub_size).
    "stubs": """CREATE TABLE stubs (
	ino INTEGER NOT NULL, -- the archived file
	data BLOB NOT NULL, -- its first inodes.stub_size bytes
	PRIMARY KEY (ino)
)""",
    # Running totals of the live regular files (nlink > 0) per (state, tier, archive_tier), kept by the
    # TRIGGERS below in the transaction of every inode change: `tierfs du` of the root and `tierfs status`
    # read these few rows instead of scanning the inodes (schema version 4; fsck checks them against a scan).
    "totals": """CREATE TABLE totals (
	state VARCHAR(16) NOT NULL, -- inodes.state
	tier VARCHAR(64) NOT NULL, -- inodes.tier; '' = NULL (none)
	archive_tier VARCHAR(64) NOT NULL, -- inodes.archive_tier; '' = NULL (none)
	files INTEGER NOT NULL, -- live regular files with these values (rows reaching 0 stay)
	bytes INTEGER NOT NULL, -- sum of their inodes.size
	PRIMARY KEY (state, tier, archive_tier)
)""",
    # Named leases so one mount at a time runs e.g. policies.
    "leases": """CREATE TABLE leases (
	name VARCHAR(64) NOT NULL, -- lease name, e.g. 'policy'
	holder VARCHAR(64) NOT NULL, -- session id holding it
	expires_ns INTEGER NOT NULL, -- lease is free after this time
	PRIMARY KEY (name)
)""",
}


#: The inodes that count in `totals`: live regular files.
_COUNTED = "{r}.nlink > 0 AND ({r}.mode & 61440) = 32768"   # S_IFMT, S_IFREG
_KEY = "{r}.state, coalesce({r}.tier, ''), coalesce({r}.archive_tier, '')"
_ADD = ("INSERT INTO totals (state, tier, archive_tier, files, bytes) SELECT " + _KEY.format(r="new") + ", 1, new.size "
        "WHERE " + _COUNTED.format(r="new") + " ON CONFLICT (state, tier, archive_tier) DO UPDATE SET "
        "files = files + 1, bytes = bytes + excluded.bytes;")
_SUB = ("UPDATE totals SET files = files - 1, bytes = bytes - old.size WHERE (state, tier, archive_tier) = "
        "(" + _KEY.format(r="old") + ") AND " + _COUNTED.format(r="old") + ";")

#: Trigger name -> CREATE TRIGGER statement: the rule of `totals`, written once, for every write path
#: (and for an older tierfs writing a catalog that has them). An update that leaves the counted
#: columns as they were (most: times, checksums, locations) skips the trigger by its WHEN.
TRIGGERS: dict[str, str] = {
    "totals_insert": f"CREATE TRIGGER totals_insert AFTER INSERT ON inodes BEGIN {_ADD} END",
    "totals_delete": f"CREATE TRIGGER totals_delete AFTER DELETE ON inodes BEGIN {_SUB} END",
    "totals_update": ("CREATE TRIGGER totals_update AFTER UPDATE OF state, tier, archive_tier, size, nlink, mode "
                      "ON inodes WHEN old.state IS NOT new.state OR old.tier IS NOT new.tier OR old.archive_tier "
                      "IS NOT new.archive_tier OR old.size IS NOT new.size OR old.nlink IS NOT new.nlink OR "
                      f"old.mode IS NOT new.mode BEGIN {_SUB} {_ADD} END"),
}

#: `totals` recomputed from the inodes (a full scan): filled at migration, rebuilt by fsck --repair.
TOTALS_FROM_INODES = ("SELECT " + _KEY.format(r="inodes") + ", count(*), coalesce(sum(inodes.size), 0) FROM inodes "
                      "WHERE " + _COUNTED.format(r="inodes") + " GROUP BY 1, 2, 3")

#: Index name -> CREATE INDEX statement. sql.py init() gives a catalog made by an older tierfs every
#: index here that it lacks, and drops those named in DROPPED_INDEXES.
INDEXES: dict[str, str] = {
    # query()/query_names()/count_by() with states + last_access_before_ns (policy rules on inactivity,
    # `tierfs find --inactive`), and with states + order_by_last_access (watermark runs, least recently
    # used first): the search walks state = ? AND last_access_ns < ? in this index and tests
    # min_size/max_size on the index entry, so only rows that match all three are fetched (1M entries,
    # 1% candidates: 10,000 rows instead of 91,046).
    "ix_inodes_state_last_access_size": "CREATE INDEX ix_inodes_state_last_access_size ON inodes "
                                        "(state, last_access_ns, size)",
    # A policy rule's candidates (Catalog.candidates, base.by_range_index): one last-access range per size
    # class the rule's size bounds allow (base.size_class; all 64 without one), the size tested on the
    # entry, and after them every other field a policy decision reads (base.Candidate), so the rule's
    # selection reads this index alone and no row: 10M entries, 100,000 candidates, page cache dropped:
    # the rows were 100,000 random reads (2.4-3.0 s), the index range is about 7 MB read in order. Also
    # `tierfs find --inactive --size` and count_by with both bounds (its first four columns). It is
    # written whenever one of its columns changes: besides the last access, size and state (which the
    # other policy indexes already follow) that is chmod, chown, link/unlink and moves between tiers.
    "ix_inodes_candidates": "CREATE INDEX ix_inodes_candidates ON inodes "
                            "(state, size_class, last_access_ns, size, mode, nlink, uid, gid, mtime_ns, crtime_ns, "
                            "tier, archive_tier, archive_location, archive_copies, data_version)",
    # query()/query_names()/count_by() with states + min_size/max_size but no atime bound (rules on size
    # alone, `tierfs find --size`). Either state index serves _unselective()'s count of inodes in some states.
    "ix_inodes_state_size": "CREATE INDEX ix_inodes_state_size ON inodes (state, size)",
    # query_names() by states alone (`tierfs find --state S`, `tierfs find`): walks the matches in inode
    # number order on this index alone (nlink and mode are on it), so the dentries that follow (by
    # ix_dentries_ino) are read in about their storage order too: sequential reads with a cold cache
    # where (state, size) gave one random read per match.
    "ix_inodes_state_ino": "CREATE INDEX ix_inodes_state_ino ON inodes (state, ino, nlink, mode)",
    # references() (is an online object still used?), FileQuery.tier, `tierfs status` bytes per tier.
    "ix_inodes_tier": "CREATE INDEX ix_inodes_tier ON inodes (tier, location)",
    # references() of archive copies, FileQuery.archive_tier, `tierfs status` bytes per archive tier.
    "ix_inodes_archive": "CREATE INDEX ix_inodes_archive ON inodes (archive_tier, archive_location)",
    # references() of further archive copies (Inode.archive_copies, JSON text no index can look into):
    # partial, so the search reads only the files that have some (200,000 files, 1% with further copies:
    # 0.24 ms instead of a 16 ms scan of the table).
    "ix_inodes_copies": "CREATE INDEX ix_inodes_copies ON inodes (ino) WHERE archive_copies IS NOT NULL",
    # The checksummer's backlog after a restart (FileQuery.checksum_missing): files whose sha256 is not
    # recorded yet (partial: only those rows, a handful once the daemon has caught up).
    "ix_inodes_no_checksum": "CREATE INDEX ix_inodes_no_checksum ON inodes (state, ino) WHERE checksum IS NULL",
    # unlinked(): inodes kept at nlink 0 while open, purged at recovery (partial: only those rows).
    "ix_inodes_nlink0": "CREATE INDEX ix_inodes_nlink0 ON inodes (nlink) WHERE nlink = 0",
    # lookup()/create()/rename() use uq_dentries_parent_name (parent, name); readdir() its (parent) prefix.
    # parent_of(), path_of(), paths_of(), bury() and the name/subtree joins of query() go from an inode to
    # its names:
    "ix_dentries_ino": "CREATE INDEX ix_dentries_ino ON dentries (ino)",
    # claim(): the most urgent pending job (state, then priority, then age); jobs(states) for `tierfs queue`.
    "ix_jobs_runnable": "CREATE INDEX ix_jobs_runnable ON jobs (state, priority, id)",
    # enqueue()'s coalescing (an active job of this kind for this file?), jobs(ino=), purge()/bury() cancelling.
    "ix_jobs_ino": "CREATE INDEX ix_jobs_ino ON jobs (ino, kind, state)",
    # events(ino): a file's history, most recent first (`tierfs state -v`).
    "ix_events_ino": "CREATE INDEX ix_events_ino ON events (ino, id)",
    # tombstones(ino): the deletions of one inode number, most recent first.
    "ix_tombstones_ino": "CREATE INDEX ix_tombstones_ino ON tombstones (ino, id)",
}

#: Indexes older catalogs have and this schema no longer wants; init() drops them.
#: ix_inodes_state_atime (state, atime_ns) and ix_inodes_state_atime_size (state, atime_ns, size): no
#: query bounds or orders by atime alone any more (inactivity is last_access_ns, indexed above); if kept,
#: each would cost an index write per atime flush for nothing.
#: ix_inodes_state_size_class (state, size_class, last_access_ns, size), version 5: the first four columns
#: of ix_inodes_candidates, which serves its queries.
DROPPED_INDEXES = ("ix_inodes_state_atime", "ix_inodes_state_atime_size", "ix_inodes_state_size_class")


#: Columns the database computes (an INSERT names every column but these).
GENERATED = ("last_access_ns", "size_class")


def columns(table: str) -> tuple[str, ...]:
    """The column names of `table` in order, as its statement above defines them."""
    out = []
    for line in TABLES[table].splitlines()[1:]:
        word = line.strip().split(" ", 1)[0].strip('"')
        if word and word not in ("PRIMARY", "CONSTRAINT", ")"):
            out.append(word)
    return tuple(out)
