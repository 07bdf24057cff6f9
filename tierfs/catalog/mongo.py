"""The Catalog on MongoDB (pymongo), for several mounts sharing one catalog.

Selected by a `mongodb://` (or `mongodb+srv://`) catalog URL; the database
is the URL's path (default "tierfs"). Transactions need a replica set (a
single-node one is enough) or a sharded cluster.

Collections: one per table of catalog/schema.py, which is the specification
of every record: the same names, the same fields with the same meaning
(times in integer nanoseconds, names, targets and xattrs as BSON binary).
Where the documents differ from the tables:

  _id       the table's primary key: meta.key, inodes.ino, dentries.pos,
            jobs/events/garbage/tombstones.id, sessions.id, leases.name;
            xattrs have an ObjectId, open_files the string "ino:session".
  counters  (no table) _id: counter name ("ino", "pos", "job", "event",
            "garbage", "tombstone"); seq: last number handed out (ino
            starts at 1 = the root, so the first file is 2). Numbers are
            allocated outside transactions ($inc on one document), so
            concurrent creates never conflict on the counter; an aborted
            transaction leaves a gap, never a reuse.
  inodes    last_access_ns is stored, not generated: every write of atime_ns
            or mtime_ns sets it (_update, set_atimes). open_gen: bumped by
            set_open only so that it conflicts with a concurrent switch()
            transaction (not part of the Inode record).

Code: this module holds the client, the namespace and every atomic change;
catalog/mongo_jobs.py (jobs, sessions, leases) and catalog/mongo_query.py
(policy/find/du queries, stats) are mixins of MongoCatalog.

Atomicity: methods that change several documents run in one transaction
(`_txn`: snapshot read concern, majority writes, retried on
TransientTransactionError and UnknownTransactionCommitResult within
TXN_DEADLINE_S); others are single-document atomic updates. Each method's
docstring says which. Every call has a deadline (`DEFAULTS` below, unless
the URL sets them: 5 s to find the primary, 10 s per round trip); a catalog
that cannot be reached in time raises errors.CatalogUnavailable (EIO at the
syscall) naming the URL without its password.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Iterator, TypeVar

import pymongo
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import (BulkWriteError, ConfigurationError, ConnectionFailure, DuplicateKeyError, InvalidURI,
                            OperationFailure, PyMongoError, ServerSelectionTimeoutError)
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from .. import errors
from ..redact import redact_url
from .base import (INODE_FIELDS, ROOT_INO, SCHEMA_VERSION, Catalog, DirEntry, Event, Garbage, Inode, JobState,
                   State, Tombstone, Transition, check_expected, now_ns)
from .mongo_jobs import ACTIVE, MongoJobs
from .mongo_query import MongoQueries, inode_of as _inode

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Client deadlines (milliseconds) used unless the URL sets them.
DEFAULTS = {
    "serverSelectionTimeoutMS": 5000,   # no reachable primary: give up after this
    "connectTimeoutMS": 3000,           # TCP connect + handshake
    "socketTimeoutMS": 10000,           # one network round trip
}
#: Longest a transaction may keep retrying write conflicts (seconds), unless
#: the URL sets timeoutMS (pymongo's whole-operation deadline). timeoutMS is
#: not set by default: pymongo then waits that long for server selection
#: too, so an outage would take the whole deadline to surface as EIO.
TXN_DEADLINE_S = 10.0
#: Deadline of each call while the last one found no server (see _errors).
UNREACHABLE_DEADLINE_S = 1.0
#: Indexes older catalogs have and this version no longer wants (collection -> names); init drops them.
#: inodes.state_atime (state, atime_ns) and state_atime_size (state, atime_ns, size): no query bounds or
#: orders by atime alone any more (inactivity is last_access_ns, indexed by state_last_access_size); if
#: kept, each would cost an index write per atime flush, and the planner's trial may pick the first,
#: fetching every document in its range to test the size (1M inodes: 91,046 fetched for 10,000 candidates).
DROPPED_INDEXES: dict[str, tuple[str, ...]] = {"inodes": ("state_atime", "state_atime_size")}
#: An inode's last_access_ns computed from its stored fields (base.Inode.last_access_ns), for updates
#: written as aggregation pipelines.
LAST_ACCESS = {"$max": ["$atime_ns", "$mtime_ns"]}
#: The fields last_access_ns derives from.
_LAST_ACCESS_FROM = frozenset({"atime_ns", "mtime_ns"})
#: A session that has not beaten for this long is no running mount (session_timeout defaults to 30 s).
LIVE_SESSION_S = 60


def _add_last_access(db) -> None:
    """Version 2: last_access_ns on every inode (one pipeline update_many).
    Refused while a mount is live: it runs an older tierfs (this one has
    not upgraded the catalog yet), whose writes would leave the field stale."""
    live = list(db.sessions.find({"clean": False, "heartbeat_ns": {"$gt": now_ns() - LIVE_SESSION_S * 10**9}}))
    if live:
        where = ", ".join(f"{s['mountpoint']} (pid {s['pid']} on {s['host']})" for s in live)
        raise errors.ConfigError(f"catalog schema version 1 is in use by an older tierfs mounted on {where}; "
                                 "unmount it (everywhere) before this tierfs upgrades the catalog to version 2")
    db.inodes.update_many({}, [{"$set": {"last_access_ns": LAST_ACCESS}}])


#: Migrations: version -> function(db) upgrading from version-1.
MIGRATIONS: dict[int, Callable] = {2: _add_last_access}


def _inode_doc(inode: Inode) -> dict:
    d = {k: getattr(inode, k) for k in INODE_FIELDS if k != "ino"}
    d["_id"] = inode.ino
    d["state"] = inode.state.value
    d["last_access_ns"] = inode.last_access_ns
    return d


def _values(changes: dict) -> dict:
    """Inode field changes as stored (enums as strings)."""
    out = {}
    for k, v in changes.items():
        if k == "ino" or k not in INODE_FIELDS:
            raise errors.Invalid(f"cannot set inode field {k!r}")
        out[k] = v.value if isinstance(v, State) else v
    return out


def _update(values: dict, inc: dict | None = None) -> dict | list:
    """The update of an inode document setting `values` (as stored: _values)
    and adding `inc`. When atime_ns or mtime_ns is among them it is a
    pipeline whose second stage recomputes last_access_ns from the stored
    fields, in the same atomic update: right also when only one time is
    given, or when one goes back (touch -d)."""
    if _LAST_ACCESS_FROM.isdisjoint(values):
        return {k: v for k, v in (("$set", values), ("$inc", inc)) if v}
    first = {k: {"$literal": v} for k, v in values.items()}   # a value is data, never a field path
    first.update({k: {"$add": [f"${k}", n]} for k, n in (inc or {}).items()})
    return [{"$set": first}, {"$set": {"last_access_ns": LAST_ACCESS}}]


class MongoCatalog(MongoJobs, MongoQueries, Catalog):
    """Catalog in a MongoDB database chosen by URL (mongodb://host/db?replicaSet=rs0)."""

    shared = True
    concurrency = 8

    def __init__(self, url: str):
        self.url = url
        self.safe_url = redact_url(url)
        try:
            parsed = pymongo.uri_parser.parse_uri(url)
        except (InvalidURI, ConfigurationError, ValueError) as e:
            raise errors.ConfigError(f"catalog: invalid MongoDB URL {redact_url(url)}: {e}") from None
        given = {k.lower() for k in parsed["options"]}
        opts = {k: v for k, v in DEFAULTS.items() if k.lower() not in given}
        url_timeout = next((v for k, v in parsed["options"].items() if k.lower() == "timeoutms"), None)
        #: longest one call (a transaction with all its retries) may take, seconds
        #: (parse_uri already converts the URL's timeoutMS to seconds)
        self.deadline_s = float(url_timeout) if url_timeout else TXN_DEADLINE_S
        try:
            self.client = pymongo.MongoClient(url, appname="tierfs", **opts)
        except (ConfigurationError, ValueError) as e:
            raise errors.ConfigError(f"catalog: {redact_url(url)}: {e}") from None
        self.db = self.client[parsed["database"] or "tierfs"]
        #: True while the last call found no reachable server (see _errors)
        self._unreachable = False
        d = self.db
        self.meta, self.inodes, self.dentries = d.meta, d.inodes, d.dentries
        # Counter increments need no journal wait of their own: a later write
        # that uses the number is majority-committed, which implies this one.
        self.counters = d.get_collection("counters", write_concern=WriteConcern(w=1, j=False))
        self.xattrs, self.jobs_c, self.sessions_c, self.events_c = d.xattrs, d.jobs, d.sessions, d.events
        self.garbage_c, self.leases = d.garbage, d.leases
        self.tombstones_c = d.tombstones
        self.open_files = d.open_files

    # ---- plumbing ----------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Driver failures (network, timeouts, server errors) -> CatalogUnavailable.

        While the catalog is known to be unreachable (the last call found no
        server), calls get UNREACHABLE_DEADLINE_S instead of the full server
        selection timeout: a command making many syscalls during an outage
        fails in seconds, not minutes. Any answer from the server ends that."""
        try:
            if self._unreachable:
                with pymongo.timeout(UNREACHABLE_DEADLINE_S):
                    yield
            else:
                yield
        except errors.TierfsError:
            self._unreachable = False  # the server answered (NotFound, Exists...)
            raise
        except PyMongoError as e:
            if isinstance(e, ServerSelectionTimeoutError):
                self._unreachable = True
            raise errors.CatalogUnavailable(f"catalog {redact_url(self.url)}: {_short(e)}") from e
        else:
            self._unreachable = False

    def _txn(self, fn: Callable[[object], T]) -> T:
        """Run fn(session) in a transaction, retried on transient errors until
        the deadline. A TierfsError raised by fn aborts it and propagates."""
        deadline = time.monotonic() + self.deadline_s
        delay = 0.005
        net_failures = 0
        with self._errors(), self.client.start_session() as s:
            while True:
                s.start_transaction(read_concern=ReadConcern("snapshot"),
                                    write_concern=WriteConcern("majority"))
                try:
                    result = fn(s)
                except PyMongoError as e:
                    _abort(s)
                    # A network error is "transient" too (a failover may end it), but
                    # one retry is enough: each costs a server selection timeout.
                    net_failures += isinstance(e, ConnectionFailure)
                    if (e.has_error_label("TransientTransactionError") and net_failures < 2
                            and time.monotonic() + delay < deadline):
                        time.sleep(delay)
                        delay = min(delay * 2, 0.2)
                        continue
                    raise
                except BaseException:
                    _abort(s)
                    raise
                while True:
                    try:
                        s.commit_transaction()
                        return result
                    except PyMongoError as e:
                        if e.has_error_label("UnknownTransactionCommitResult") and time.monotonic() < deadline:
                            continue
                        if e.has_error_label("TransientTransactionError") and time.monotonic() + delay < deadline:
                            break
                        raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _next(self, name: str, n: int = 1) -> int:
        """Allocate n numbers from a counter (single-document $inc); returns the last."""
        doc = self.counters.find_one_and_update({"_id": name}, {"$inc": {"seq": n}}, upsert=True,
                                                return_document=ReturnDocument.AFTER)
        return doc["seq"]

    def _get(self, ino: int, s=None) -> Inode:
        doc = self.inodes.find_one({"_id": ino}, session=s)
        if doc is None:
            raise errors.NotFound(f"inode {ino}")
        return _inode(doc)

    def _dentry(self, parent: int, name: bytes, s=None) -> dict | None:
        return self.dentries.find_one({"parent": parent, "name": name}, session=s)

    def _has_children(self, ino: int, s) -> bool:
        return self.dentries.find_one({"parent": ino}, {"_id": 1}, session=s) is not None

    def _set(self, ino: int, s, inc: dict | None = None, **values) -> None:
        upd = _update(_values(values), inc)
        if upd:
            self.inodes.update_one({"_id": ino}, upd, session=s)

    def _event(self, s, ino: int, frm, to, cause: str, detail: str = "") -> None:
        self.events_c.insert_one(dict(_id=self._next("event"), ino=ino, time_ns=now_ns(), from_state=str(frm),
                                      to_state=str(to), cause=cause, detail=detail), session=s)

    # ---- lifecycle ---------------------------------------------------------
    def init(self, root_uid: int = 0, root_gid: int = 0, root_mode: int = 0o40755) -> None:
        """Schema version (migrating an older one), indexes (idempotent), the
        root inode and the counters. Safe to run from several mounts at once
        (duplicate inserts are ignored; migrations are idempotent)."""
        A = pymongo.ASCENDING
        with self._errors():
            hello = self.client.admin.command("hello")
            if not hello.get("setName") and hello.get("msg") != "isdbgrid":
                raise errors.ConfigError(
                    f"catalog {self.safe_url}: this MongoDB server is standalone; tierfs needs a replica set "
                    "(a single node is enough: start mongod with --replSet rs0, run rs.initiate(), and add "
                    "?replicaSet=rs0 to the URL) or a sharded cluster, for transactions")
            # Migrations first: one that is refused leaves the catalog (indexes included) as it was.
            doc = self.meta.find_one({"_id": "schema_version"})
            if doc is None:
                _insert_ignoring_dup(self.meta, {"_id": "schema_version", "value": str(SCHEMA_VERSION)})
            else:
                version = int(doc["value"])
                if version > SCHEMA_VERSION:
                    raise errors.ConfigError(f"catalog schema version {version} is newer than this tierfs "
                                             f"({SCHEMA_VERSION}); upgrade tierfs")
                while version < SCHEMA_VERSION:
                    version += 1
                    log.info("migrating catalog schema to version %d", version)
                    MIGRATIONS[version](self.db)
                    self.meta.update_one({"_id": "schema_version"}, {"$set": {"value": str(version)}})
            self.dentries.create_index([("parent", A), ("name", A)], unique=True, name="parent_name")
            self.dentries.create_index([("parent", A), ("_id", A)], name="parent_pos")      # readdir
            self.dentries.create_index([("ino", A)], name="ino")                             # parent_of, path_of
            # Policy rules on inactivity (+ size), `tierfs find --inactive`, watermark runs (least recently
            # used first): state and last_access_ns bound the scan, the size bound is tested on the key, so
            # only documents matching all three are fetched (1M inodes, 1% candidates: 10,000 fetched
            # instead of 91,046).
            self.inodes.create_index([("state", A), ("last_access_ns", A), ("size", A)],
                                     name="state_last_access_size")
            self.inodes.create_index([("state", A), ("size", A)], name="state_size")        # policy: big files
            self.inodes.create_index([("tier", A), ("location", A)], name="tier_location")  # references, per tier
            self.inodes.create_index([("archive_tier", A), ("archive_location", A)], name="archive_location")
            self.inodes.create_index([("state", A), ("_id", A)], name="no_checksum",       # checksum backlog
                                     partialFilterExpression={"checksum": {"$type": "null"}})
            self.inodes.create_index([("nlink", A)], name="unlinked",                       # unlinked()
                                     partialFilterExpression={"nlink": 0})
            self.xattrs.create_index([("ino", A), ("name", A)], unique=True, name="ino_name")
            self.jobs_c.create_index([("state", A), ("priority", A), ("_id", A)], name="runnable")  # claim
            self.jobs_c.create_index([("ino", A), ("kind", A), ("state", A)], name="ino_kind_state")
            # At most one active job per (file, kind): makes enqueue's coalescing atomic across mounts.
            self.jobs_c.create_index([("ino", A), ("kind", A)], unique=True, name="one_active",
                                     partialFilterExpression={"state": {"$in": ACTIVE}})
            self.jobs_c.create_index([("dst_key", A)], name="dst_key")                       # references()
            self.events_c.create_index([("ino", A), ("_id", A)], name="ino_id")
            self.garbage_c.create_index([("tier", A), ("key", A)], name="tier_key")
            self.sessions_c.create_index([("clean", A), ("heartbeat_ns", A)], name="live")
            self.tombstones_c.create_index([("ino", A), ("_id", A)], name="ino_id")
            self.open_files.create_index([("ino", A), ("writing", A)], name="ino_writing")   # switch, purge
            self.open_files.create_index([("session", A)], name="session")                   # reaping
            self._drop_indexes(DROPPED_INDEXES)
            self.counters.update_one({"_id": "ino"}, {"$max": {"seq": ROOT_INO}}, upsert=True)
            t = now_ns()
            root = Inode(ino=ROOT_INO, mode=root_mode, uid=root_uid, gid=root_gid, nlink=2,
                         atime_ns=t, mtime_ns=t, ctime_ns=t, crtime_ns=t, state_ns=t, state_cause="mkfs")
            _insert_ignoring_dup(self.inodes, _inode_doc(root))

    def _drop_indexes(self, dropped: dict[str, tuple[str, ...]]) -> None:
        """Drop the indexes an older tierfs created that this one no longer
        wants (after init created their replacements). Indexes are reconciled
        at every init, like their creation: no schema_version step, since they
        change no stored data and an older tierfs works with the new ones."""
        for coll, names in dropped.items():
            have = set(self.db[coll].index_information())
            for name in names:
                if name in have:
                    log.info("catalog: dropping index %s.%s (superseded)", coll, name)
                    try:
                        self.db[coll].drop_index(name)
                    except OperationFailure as e:
                        if e.code != 27:  # IndexNotFound: another mount's init dropped it first
                            raise

    def initialised(self) -> bool:
        """True once init() has run on this database (it has a schema_version);
        reads only, so an empty database stays empty."""
        with self._errors():
            return self.meta.find_one({"_id": "schema_version"}) is not None

    def close(self) -> None:
        self.client.close()

    def schema_version(self) -> int:
        return int(self.get_meta("schema_version") or 0)

    # ---- namespace ---------------------------------------------------------
    def get(self, ino: int) -> Inode:
        with self._errors():
            return self._get(ino)

    def lookup(self, parent: int, name: bytes) -> Inode:
        """Two indexed reads (dentry, then inode); a name removed in between is NotFound."""
        with self._errors():
            d = self._dentry(parent, name)
            doc = self.inodes.find_one({"_id": d["ino"]}) if d else None
        if doc is None:
            raise errors.NotFound(f"{name!r} in directory {parent}")
        return _inode(doc)

    def create(self, parent: int, name: bytes, inode: Inode) -> Inode:
        """Transaction: inode + dentry + the parent's times/nlink. The unique
        (parent, name) index turns a race with another mount into Exists."""
        with self._errors():
            ino, pos = self._next("ino"), self._next("pos")

        def fn(s):
            p = self._get(parent, s)
            if not p.is_dir():
                raise errors.NotDir(f"inode {parent} is not a directory")
            if self._dentry(parent, name, s) is not None:
                raise errors.Exists(f"{name!r} exists in directory {parent}")
            try:
                self.inodes.insert_one(_inode_doc(inode.copy(ino=ino)), session=s)
                self.dentries.insert_one({"_id": pos, "parent": parent, "name": name, "ino": ino}, session=s)
            except DuplicateKeyError:
                raise errors.Exists(f"{name!r} exists in directory {parent}") from None
            self._set(parent, s, inc={"nlink": 1} if inode.is_dir() else None,
                      mtime_ns=inode.ctime_ns, ctime_ns=inode.ctime_ns)
            return inode.copy(ino=ino)
        return self._txn(fn)

    def create_many(self, entries, ctime_ns: int) -> list[Inode]:
        """One transaction: every inode and dentry (insert_many) and each
        parent's times and nlink; all or nothing."""
        entries = list(entries)
        if not entries:
            return []
        with self._errors():
            last_ino, last_pos = self._next("ino", len(entries)), self._next("pos", len(entries))
        first_ino, first_pos = last_ino - len(entries) + 1, last_pos - len(entries) + 1
        out = [inode.copy(ino=first_ino + i) for i, (_, _, inode) in enumerate(entries)]
        names: dict[int, list[bytes]] = {}
        for parent, name, _ in entries:
            if name in names.setdefault(parent, []):
                raise errors.Exists(f"{name!r} given twice for directory {parent}")
            names[parent].append(name)

        def fn(s):
            for parent, ns in names.items():
                if not self._get(parent, s).is_dir():
                    raise errors.NotDir(f"inode {parent} is not a directory")
                taken = self.dentries.find_one({"parent": parent, "name": {"$in": ns}}, {"name": 1}, session=s)
                if taken is not None:
                    raise errors.Exists(f"{taken['name']!r} exists in directory {parent}")
            try:
                self.inodes.insert_many([_inode_doc(i) for i in out], session=s)
                self.dentries.insert_many([{"_id": first_pos + k, "parent": parent, "name": name,
                                            "ino": out[k].ino} for k, (parent, name, _) in enumerate(entries)],
                                          session=s)
            except BulkWriteError as e:
                if all(w.get("code") == 11000 for w in e.details.get("writeErrors", [])):
                    raise errors.Exists("a name was created concurrently") from None
                raise
            for parent in names:
                dirs = sum(1 for (p, _, i) in entries if p == parent and i.is_dir())
                self._set(parent, s, inc={"nlink": dirs} if dirs else None, mtime_ns=ctime_ns, ctime_ns=ctime_ns)
            return out
        return self._txn(fn)

    def link(self, ino: int, parent: int, name: bytes, ctime_ns: int) -> Inode:
        """Transaction: new dentry + nlink of the inode + the parent's times."""
        with self._errors():
            pos = self._next("pos")

        def fn(s):
            inode = self._get(ino, s)
            if inode.is_dir():
                raise errors.PermissionDenied("hard links to directories are not allowed", err=1)  # EPERM
            if not self._get(parent, s).is_dir():
                raise errors.NotDir(f"inode {parent} is not a directory")
            if self._dentry(parent, name, s) is not None:
                raise errors.Exists(f"{name!r} exists in directory {parent}")
            try:
                self.dentries.insert_one({"_id": pos, "parent": parent, "name": name, "ino": ino}, session=s)
            except DuplicateKeyError:
                raise errors.Exists(f"{name!r} exists in directory {parent}") from None
            self._set(ino, s, inc={"nlink": 1}, ctime_ns=ctime_ns)
            self._set(parent, s, mtime_ns=ctime_ns, ctime_ns=ctime_ns)
            return inode.copy(nlink=inode.nlink + 1, ctime_ns=ctime_ns)
        return self._txn(fn)

    def unlink(self, parent: int, name: bytes, ctime_ns: int) -> Inode:
        """Transaction: dentry removal + nlink decrement + the parent's times."""
        def fn(s):
            d = self._dentry(parent, name, s)
            if d is None:
                raise errors.NotFound(f"{name!r} in directory {parent}")
            inode = self._get(d["ino"], s)
            if inode.is_dir():
                raise errors.IsDir(f"{name!r} is a directory")
            self.dentries.delete_one({"_id": d["_id"]}, session=s)
            self._set(inode.ino, s, inc={"nlink": -1}, ctime_ns=ctime_ns)
            self._set(parent, s, mtime_ns=ctime_ns, ctime_ns=ctime_ns)
            return inode.copy(nlink=inode.nlink - 1, ctime_ns=ctime_ns)
        return self._txn(fn)

    def rmdir(self, parent: int, name: bytes, ctime_ns: int) -> Inode:
        """Transaction: emptiness check + dentry removal + both nlinks. A file
        created in the directory by another mount meanwhile conflicts (its
        create writes the directory's document), so the retry sees NotEmpty."""
        def fn(s):
            d = self._dentry(parent, name, s)
            if d is None:
                raise errors.NotFound(f"{name!r} in directory {parent}")
            inode = self._get(d["ino"], s)
            if not inode.is_dir():
                raise errors.NotDir(f"{name!r} is not a directory")
            if self._has_children(inode.ino, s):
                raise errors.NotEmpty(f"{name!r} is not empty")
            self.dentries.delete_one({"_id": d["_id"]}, session=s)
            self._set(inode.ino, s, nlink=0, ctime_ns=ctime_ns)
            self._set(parent, s, inc={"nlink": -1}, mtime_ns=ctime_ns, ctime_ns=ctime_ns)
            return inode.copy(nlink=0, ctime_ns=ctime_ns)
        return self._txn(fn)

    def _is_ancestor(self, anc: int, ino: int, s) -> bool:
        """True if directory `anc` is `ino` or one of its ancestors."""
        for _ in range(100000):
            if ino == anc:
                return True
            if ino == ROOT_INO:
                return False
            d = self.dentries.find_one({"ino": ino}, {"parent": 1}, session=s)
            if d is None:
                return False
            ino = d["parent"]
        return False

    def rename(self, old_parent, old_name, new_parent, new_name, *, noreplace=False, exchange=False,
               ctime_ns=0) -> Inode | None:
        """Transaction: the dentry update(s), the replaced inode's nlink, the
        parents' nlinks and times (overwrite and exchange included)."""
        ctime_ns = ctime_ns or now_ns()

        def fn(s):
            src = self._dentry(old_parent, old_name, s)
            if src is None:
                raise errors.NotFound(f"{old_name!r} in directory {old_parent}")
            dst = self._dentry(new_parent, new_name, s)
            if not self._get(new_parent, s).is_dir():
                raise errors.NotDir(f"inode {new_parent} is not a directory")
            src_inode = self._get(src["ino"], s)
            if src_inode.is_dir() and self._is_ancestor(src["ino"], new_parent, s):
                raise errors.Invalid("cannot move a directory into itself")
            parents = {old_parent, new_parent}
            if exchange:
                if dst is None:
                    raise errors.NotFound(f"{new_name!r} in directory {new_parent}")
                dst_inode = self._get(dst["ino"], s)
                if dst_inode.is_dir() and self._is_ancestor(dst["ino"], old_parent, s):
                    raise errors.Invalid("cannot move a directory into itself")
                self.dentries.update_one({"_id": src["_id"]}, {"$set": {"ino": dst["ino"]}}, session=s)
                self.dentries.update_one({"_id": dst["_id"]}, {"$set": {"ino": src["ino"]}}, session=s)
                if old_parent != new_parent and src_inode.is_dir() != dst_inode.is_dir():
                    delta = 1 if src_inode.is_dir() else -1
                    self._set(old_parent, s, inc={"nlink": -delta})
                    self._set(new_parent, s, inc={"nlink": delta})
                for ino in {src["ino"], dst["ino"]}:
                    self._set(ino, s, ctime_ns=ctime_ns)
                for p in parents:
                    self._set(p, s, mtime_ns=ctime_ns, ctime_ns=ctime_ns)
                return None
            replaced = None
            if dst is not None:
                if dst["ino"] == src["ino"]:
                    return None  # same inode (hard links or same name): POSIX says do nothing
                if noreplace:
                    raise errors.Exists(f"{new_name!r} exists in directory {new_parent}")
                dst_inode = self._get(dst["ino"], s)
                if dst_inode.is_dir():
                    if not src_inode.is_dir():
                        raise errors.IsDir(f"{new_name!r} is a directory")
                    if self._has_children(dst["ino"], s):
                        raise errors.NotEmpty(f"{new_name!r} is not empty")
                    replaced = dst_inode.copy(nlink=0, ctime_ns=ctime_ns)
                    self._set(new_parent, s, inc={"nlink": -1})
                else:
                    if src_inode.is_dir():
                        raise errors.NotDir(f"{new_name!r} is not a directory")
                    replaced = dst_inode.copy(nlink=dst_inode.nlink - 1, ctime_ns=ctime_ns)
                self._set(dst["ino"], s, nlink=replaced.nlink, ctime_ns=ctime_ns)
                self.dentries.delete_one({"_id": dst["_id"]}, session=s)
            self.dentries.update_one({"_id": src["_id"]}, {"$set": {"parent": new_parent, "name": new_name}},
                                     session=s)
            if src_inode.is_dir() and old_parent != new_parent:
                self._set(old_parent, s, inc={"nlink": -1})
                self._set(new_parent, s, inc={"nlink": 1})
            self._set(src["ino"], s, ctime_ns=ctime_ns)
            for p in parents:
                self._set(p, s, mtime_ns=ctime_ns, ctime_ns=ctime_ns)
            return replaced
        return self._txn(fn)

    def readdir(self, parent: int, after_pos: int, limit: int) -> list[DirEntry]:
        """One aggregation: dentries in pos order joined with their inodes."""
        pipeline = [
            {"$match": {"parent": parent, "_id": {"$gt": after_pos}}},
            {"$sort": {"_id": 1}},
            {"$limit": limit},
            {"$lookup": {"from": "inodes", "localField": "ino", "foreignField": "_id", "as": "i"}},
        ]
        with self._errors():
            rows = list(self.dentries.aggregate(pipeline))
        return [DirEntry(pos=r["_id"], name=r["name"], inode=_inode(r["i"][0])) for r in rows if r["i"]]

    def scan_dentries(self, after_pos: int, limit: int) -> list[tuple[int, int, bytes, int]]:
        with self._errors():
            docs = list(self.dentries.find({"_id": {"$gt": after_pos}}).sort("_id", 1).limit(limit))
        return [(d["_id"], d["parent"], bytes(d["name"]), d["ino"]) for d in docs]

    def remove_dentry(self, pos: int) -> None:
        with self._errors():
            self.dentries.delete_one({"_id": pos})

    def add_dentry(self, parent: int, name: bytes, ino: int) -> None:
        with self._errors():
            self.dentries.insert_one({"_id": self._next("pos"), "parent": parent, "name": name, "ino": ino})

    def parent_of(self, ino: int) -> int:
        if ino == ROOT_INO:
            return ROOT_INO
        with self._errors():
            d = self.dentries.find_one({"ino": ino}, {"parent": 1})
        if d is None:
            raise errors.NotFound(f"inode {ino} has no name")
        return d["parent"]

    def path_of(self, ino: int) -> bytes:
        parts = []
        with self._errors():
            while ino != ROOT_INO:
                d = self.dentries.find_one({"ino": ino}, {"parent": 1, "name": 1})
                if d is None:
                    raise errors.NotFound(f"inode {ino} has no name")
                parts.append(d["name"])
                ino = d["parent"]
                if len(parts) > 100000:
                    raise errors.TierfsError(f"directory loop above inode {ino}")
        return b"/".join(reversed(parts))

    def update(self, ino, changes, *, expect_version=None, expect_states=None) -> Inode:
        """Single-document atomic update; the expectations are part of its
        filter, so the compare-and-swap holds against other mounts."""
        filt: dict = {"_id": ino}
        if expect_version is not None:
            filt["data_version"] = expect_version
        if expect_states is not None:
            filt["state"] = {"$in": [State(x).value for x in expect_states]}
        with self._errors():
            if changes:
                doc = self.inodes.find_one_and_update(filt, _update(_values(changes)),
                                                      return_document=ReturnDocument.AFTER)
            else:
                doc = self.inodes.find_one(filt)
            if doc is None:
                check_expected(self._get(ino), expect_version, expect_states)
                raise errors.VersionConflict(f"inode {ino} changed concurrently")
        return _inode(doc)

    def bump_version(self, ino: int, changes: dict) -> Inode:
        """Single-document atomic update ($inc data_version, checksum cleared)."""
        values = _values({k: v for k, v in changes.items() if k not in ("data_version", "checksum")})
        values["checksum"] = None
        with self._errors():
            doc = self.inodes.find_one_and_update({"_id": ino}, _update(values, {"data_version": 1}),
                                                  return_document=ReturnDocument.AFTER)
        if doc is None:
            raise errors.NotFound(f"inode {ino}")
        return _inode(doc)

    def purge(self, ino: int) -> Inode | None:
        """Transaction: inode + xattrs deleted, pending jobs cancelled, its
        objects added to garbage."""
        def fn(s):
            doc = self.inodes.find_one({"_id": ino}, session=s)
            if doc is None:
                return None
            inode = _inode(doc)
            if inode.nlink > 0 or ino == ROOT_INO:
                return None
            if self.open_files.find_one({"ino": ino}, {"_id": 1}, session=s) is not None:
                return None  # another mount still has it open; the last one to close purges it
            self.inodes.delete_one({"_id": ino}, session=s)
            self.xattrs.delete_many({"ino": ino}, session=s)
            self.jobs_c.update_many({"ino": ino, "state": JobState.PENDING.value},
                                    {"$set": {"state": JobState.CANCELLED.value, "last_error": "file deleted",
                                              "updated_ns": now_ns()}}, session=s)
            self._add_garbage(s, [(inode.tier, inode.location), (inode.archive_tier, inode.archive_location)],
                              "file deleted")
            return inode
        return self._txn(fn)

    def bury(self, ino: int, who: str, why: str, *, expect_version: int | None = None) -> Tombstone:
        """Transaction: every dentry of the file removed (the parents' times
        set), nlink 0, pending jobs cancelled, tombstone + history event."""
        with self._errors():
            tid = self._next("tombstone")

        def fn(s):
            inode = self._get(ino, s)
            if not inode.is_reg():
                raise errors.Invalid(f"inode {ino} is not a regular file")
            check_expected(inode, expect_version, None)
            parts, cur = [], ino
            while cur != ROOT_INO:
                d = self.dentries.find_one({"ino": cur}, {"parent": 1, "name": 1}, session=s)
                if d is None:
                    raise errors.NotFound(f"inode {cur} has no name")
                parts.append(d["name"])
                cur = d["parent"]
            t = now_ns()
            for d in list(self.dentries.find({"ino": ino}, {"parent": 1}, session=s)):
                self.dentries.delete_one({"_id": d["_id"]}, session=s)
                self._set(d["parent"], s, mtime_ns=t, ctime_ns=t)
            self._set(ino, s, nlink=0, ctime_ns=t)
            self.jobs_c.update_many({"ino": ino, "state": JobState.PENDING.value},
                                    {"$set": {"state": JobState.CANCELLED.value, "last_error": "file deleted",
                                              "updated_ns": t}}, session=s)
            values = dict(ino=ino, path=b"/".join(reversed(parts)), size=inode.size, uid=inode.uid,
                          gid=inode.gid, crtime_ns=inode.crtime_ns, mtime_ns=inode.mtime_ns,
                          atime_ns=inode.atime_ns, state=inode.state.value, tier=inode.tier,
                          archive_tier=inode.archive_tier, checksum=inode.checksum, deleted_ns=t, who=who, why=why)
            self.tombstones_c.insert_one(dict(_id=tid, **values), session=s)
            self._event(s, ino, inode.state, "deleted", who, why)
            return Tombstone(id=tid, **values)
        return self._txn(fn)

    def tombstones(self, ino: int | None = None, limit: int = 100) -> list[Tombstone]:
        with self._errors():
            docs = list(self.tombstones_c.find({} if ino is None else {"ino": ino}).sort("_id", -1).limit(limit))
        out = []
        for d in docs:
            d["id"] = d.pop("_id")
            out.append(Tombstone(**d))
        return out

    def unlinked(self) -> list[Inode]:
        with self._errors():
            return [_inode(d) for d in self.inodes.find({"nlink": 0})]

    def set_atimes(self, atimes: dict[int, int]) -> None:
        """One unordered bulk write of single-document $max updates (an atime
        never moves backwards, so last_access_ns = max(atime_ns, mtime_ns)
        takes the same $max); a failure may leave part of the batch applied,
        which is harmless for access times."""
        if not atimes:
            return
        with self._errors():
            self.inodes.bulk_write([UpdateOne({"_id": ino}, {"$max": {"atime_ns": t, "last_access_ns": t}})
                                    for ino, t in atimes.items()], ordered=False)
        self.atime_writes += len(atimes)

    # ---- xattrs ------------------------------------------------------------
    def getxattr(self, ino: int, name: bytes) -> bytes:
        with self._errors():
            d = self.xattrs.find_one({"ino": ino, "name": name}, {"value": 1})
        if d is None:
            raise errors.NoAttr(f"no attribute {name!r}")
        return d["value"]

    def setxattr(self, ino, name, value, *, create=False, replace=False) -> None:
        """Single-document insert/update of the attribute (the unique (ino,
        name) index decides create races), then the inode's ctime."""
        with self._errors():
            if create:
                try:
                    self.xattrs.insert_one({"ino": ino, "name": name, "value": value})
                except DuplicateKeyError:
                    raise errors.Exists(f"attribute {name!r} exists") from None
            elif replace:
                if self.xattrs.update_one({"ino": ino, "name": name}, {"$set": {"value": value}}).matched_count == 0:
                    raise errors.NoAttr(f"no attribute {name!r}")
            else:
                self.xattrs.update_one({"ino": ino, "name": name}, {"$set": {"value": value}}, upsert=True)
            self._set(ino, None, ctime_ns=now_ns())

    def listxattr(self, ino: int) -> list[bytes]:
        with self._errors():
            # Sorted here: MongoDB orders binary values by length first.
            return sorted(d["name"] for d in self.xattrs.find({"ino": ino}, {"name": 1}))

    def removexattr(self, ino: int, name: bytes) -> None:
        """Single-document delete, then the inode's ctime."""
        with self._errors():
            if self.xattrs.delete_one({"ino": ino, "name": name}).deleted_count == 0:
                raise errors.NoAttr(f"no attribute {name!r}")
            self._set(ino, None, ctime_ns=now_ns())

    # ---- state and moves ---------------------------------------------------
    def switch(self, t: Transition) -> Inode:
        """Transaction: compare-and-swap on (data_version, state) and, with
        no_writers_except, on no other session writing (open_files) +
        garbage + history event + the job's dst_key cleared."""
        def fn(s):
            inode = self._get(t.ino, s)
            check_expected(inode, t.expect_version, t.expect_states)
            if t.no_writers_except is not None:
                w = self.open_files.find_one({"ino": t.ino, "writing": True,
                                              "session": {"$ne": t.no_writers_except}}, session=s)
                if w is not None:
                    raise errors.VersionConflict(
                        f"inode {t.ino} is open for writing on another mount (session {w['session']})")
            now = now_ns()
            ch = dict(t.changes)
            if "state" in ch and ch["state"] != inode.state:
                ch.update(state_ns=now, state_cause=t.cause)
                self._event(s, t.ino, inode.state, ch["state"], t.cause, t.detail)
            self._set(t.ino, s, **ch)
            self._add_garbage(s, t.garbage, t.cause)
            if t.job_id is not None:
                self.jobs_c.update_one({"_id": t.job_id}, {"$set": {"dst_key": None, "updated_ns": now}}, session=s)
            return inode.copy(**ch)
        return self._txn(fn)

    def set_open(self, ino, session, reading, writing) -> Inode:
        """Transaction: the (ino, session) record upserted or deleted, and the
        inode document written ($inc open_gen) so a concurrent switch()
        transaction conflicts and retries instead of missing a new writer."""
        def fn(s):
            inode = self._get(ino, s)
            key = f"{ino}:{session}"
            if reading or writing:
                self.open_files.replace_one({"_id": key}, {"_id": key, "ino": ino, "session": session,
                                                           "writing": bool(writing)}, upsert=True, session=s)
            else:
                self.open_files.delete_one({"_id": key}, session=s)
            self.inodes.update_one({"_id": ino}, {"$inc": {"open_gen": 1}}, session=s)
            return inode
        return self._txn(fn)

    def add_event(self, ino, from_state, to_state, cause, detail="") -> None:
        """Single-document insert."""
        with self._errors():
            self._event(None, ino, from_state, to_state, cause, detail)

    def events(self, ino: int, limit: int = 20) -> list[Event]:
        with self._errors():
            docs = list(self.events_c.find({"ino": ino}).sort("_id", -1).limit(limit))
        out = []
        for d in docs:
            d["id"] = d.pop("_id")
            out.append(Event(**d))
        return out

    # ---- garbage -----------------------------------------------------------
    def _add_garbage(self, s, items, reason: str) -> None:
        items = [(t, k) for t, k in items if t and k]
        if not items:
            return
        last = self._next("garbage", len(items))
        t = now_ns()
        self.garbage_c.insert_many([dict(_id=last - len(items) + 1 + i, tier=tier, key=key, created_ns=t,
                                         reason=reason) for i, (tier, key) in enumerate(items)], session=s)

    def add_garbage(self, items, reason="") -> None:
        """One insert_many (ordered; a failure leaves a prefix, which the GC
        handles like any entry)."""
        with self._errors():
            self._add_garbage(None, list(items), reason)

    def garbage(self, limit: int = 100) -> list[Garbage]:
        with self._errors():
            docs = list(self.garbage_c.find().sort("_id", 1).limit(limit))
        return [Garbage(id=d["_id"], tier=d["tier"], key=d["key"], created_ns=d["created_ns"],
                        reason=d.get("reason", "")) for d in docs]

    def remove_garbage(self, ids) -> None:
        ids = list(ids)
        if ids:
            with self._errors():
                self.garbage_c.delete_many({"_id": {"$in": ids}})

    def references(self, tier: str, key: str) -> bool:
        with self._errors():
            if self.inodes.find_one({"$or": [{"tier": tier, "location": key},
                                             {"archive_tier": tier, "archive_location": key}]}, {"_id": 1}):
                return True
            return self.jobs_c.find_one({"dst_key": key, "state": {"$in": ACTIVE}}, {"_id": 1}) is not None

def _abort(s) -> None:
    try:
        if s.in_transaction:
            s.abort_transaction()
    except PyMongoError:
        pass  # the server aborts an unfinished transaction on its own


def _insert_ignoring_dup(coll, doc: dict) -> None:
    try:
        coll.insert_one(doc)
    except DuplicateKeyError:
        pass


def _short(e: PyMongoError) -> str:
    """First line of a driver error (server selection errors carry a long topology dump)."""
    text = str(e).split(", Timeout:")[0].split("\n")[0]
    return text[:300] or e.__class__.__name__
