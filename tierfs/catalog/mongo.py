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
            xattrs have an ObjectId, open_files the string "ino:session",
            stubs the inode number.
  counters  (no table) _id: counter name ("ino", "pos", "job", "event",
            "garbage", "tombstone", "stripe"); seq: last number handed out (ino
            starts at 1 = the root, so the first file is 2). Numbers are
            allocated outside transactions ($inc on one document), so
            concurrent creates never conflict on the counter; an aborted
            transaction leaves a gap, never a reuse.
  inodes    last_access_ns is stored, not generated: every write of atime_ns
            or mtime_ns sets it (_update, set_atimes). open_gen: bumped by
            set_open only so that it conflicts with a concurrent switch()
            transaction; names_gen: bumped by each change of a directory's
            names written in place, so that the change always writes it
            (STRIPES). Neither is part of the Inode record.
  dir_stripes (no table) _id {dir, k}: a contended directory's stripe k,
            n: a count that every change through it increments (STRIPES).

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
import os
import re
import socket
import threading
import time
from typing import Callable, Iterator, TypeVar

import pymongo
from bson.int64 import Int64
from pymongo import IndexModel, ReturnDocument, UpdateOne
from pymongo.errors import (BulkWriteError, CollectionInvalid, ConfigurationError, ConnectionFailure,
                            DuplicateKeyError, InvalidURI, NetworkTimeout, OperationFailure, PyMongoError,
                            ServerSelectionTimeoutError)
from pymongo.server_type import SERVER_TYPE
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from .. import errors
from ..redact import redact_url
from .base import (INODE_FIELDS, MAX_SIZE_CLASS, ROOT_INO, SCHEMA_VERSION, DirEntry, Event, Garbage, Inode, JobState,
                   State, Tombstone, check_expected, copy_pattern, now_ns, size_class)
from .core import CatalogCore, Txn
from .mongo_jobs import ACTIVE, MongoJobs, client_name, end_job
from .mongo_query import CANDIDATES_INDEX, MongoQueries, inode_of as _inode

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
#: Failover (a replica set's primary dies): the election takes 10-11 s (measured on the multi-host test bed,
#: tests/system/test_multihost.py: MongoDB's default electionTimeoutMillis of 10 s, then the vote). With
#: these client deadlines alone a call made meanwhile fails once server selection gives up (5 s; a syscall
#: that made several calls stalled up to 10.4 s and got EIO), and calls work again within a second of the
#: new primary.
#: With timeoutMS=30000 in the catalog URL every call waits up to 30 s for the new primary instead: a
#: syscall during the election stalls for it (11.2 s measured) and succeeds; a catalog that is really
#: down then takes 30 s to give EIO for the first call (UNREACHABLE_DEADLINE_S for the next ones).
#: So a mount repeats a call that failed while members other than the lost primary answer (an election:
#: errors.CatalogFailover) for up to FAILOVER_WAIT_S, by default: a syscall during a failover stalls for the
#: election and then succeeds. A catalog none of whose members answers (down, or this host cut off) still
#: gives EIO after the server selection timeout, then fails fast.
FAILOVER_WAIT_S = 30.0
#: Deadline of each call while the last one found no server (see _errors).
UNREACHABLE_DEADLINE_S = 1.0
#: Indexes older catalogs have and this version no longer wants (collection -> names); init drops them.
#: inodes.state_atime (state, atime_ns) and state_atime_size (state, atime_ns, size): no query bounds or
#: orders by atime alone any more (inactivity is last_access_ns, indexed by state_last_access_size_id); if
#: kept, each would cost an index write per atime flush, and the planner's trial may pick the first,
#: fetching every document in its range to test the size (1M inodes: 91,046 fetched for 10,000 candidates).
#: state_last_access_size and state_size: the same with the inode number after them (_id) now.
#: state_size_class_last_access_id (version 5): the first five fields of `candidates`, which serves its queries.
DROPPED_INDEXES: dict[str, tuple[str, ...]] = {"inodes": ("state_atime", "state_atime_size", "state_last_access_size",
                                                          "state_size", "state_size_class_last_access_id")}
#: An inode's last_access_ns computed from its stored fields (base.Inode.last_access_ns), for updates
#: written as aggregation pipelines.
LAST_ACCESS = {"$max": ["$atime_ns", "$mtime_ns"]}
#: The fields last_access_ns derives from.
_LAST_ACCESS_FROM = frozenset({"atime_ns", "mtime_ns"})
#: A session that has not beaten for this long is no running mount (session_timeout defaults to 30 s).
LIVE_SESSION_S = 60


def _refuse_if_mounted(db, version: int) -> None:
    """ConfigError when a mount is live: it runs an older tierfs (this one
    has not upgraded the catalog to `version` yet), whose writes would leave
    the field the migration derives stale."""
    live = list(db.sessions.find({"clean": False, "heartbeat_ns": {"$gt": now_ns() - LIVE_SESSION_S * 10**9}}))
    if live:
        where = ", ".join(f"{s['mountpoint']} (pid {s['pid']} on {s['host']})" for s in live)
        raise errors.ConfigError(f"catalog schema version {version - 1} is in use by an older tierfs mounted on "
                                 f"{where}; unmount it (everywhere) before this tierfs upgrades the catalog to "
                                 f"version {version}")


def _add_last_access(db) -> None:
    """Version 2: last_access_ns on every inode (one pipeline update_many).
    Refused while an older tierfs is mounted."""
    _refuse_if_mounted(db, 2)
    db.inodes.update_many({}, [{"$set": {"last_access_ns": LAST_ACCESS}}])


#: base.size_class of the stored size as an aggregation expression (the version 5 migration): how many
#: of 1, 2, 4, ..., 2**62 are <= size. Exact, where a $log would round (log2(2**28) may come out 27.99...).
SIZE_CLASS = {"$size": {"$filter": {"input": [Int64(1 << i) for i in range(MAX_SIZE_CLASS)],
                                    "cond": {"$lte": ["$$this", "$size"]}}}}
#: Longest one round trip of init's schema work may take: a migration's update of every inode, an index
#: build over them (10M inodes: setting size_class and building its index take minutes, where the client's
#: socket timeout is 10 s; version 2's update_many over 10M inodes would not fit in it either). Through a
#: client of its own (MongoCatalog._schema_db) with only the socket timeout raised: pymongo.timeout() would
#: also wait that long for server selection, so a catalog that is down would hold a mount's start for an
#: hour instead of failing after 5 s.
MIGRATION_DEADLINE_S = 3600


def _add_size_class(db) -> None:
    """Version 5: size_class on every inode (one pipeline update_many; its
    index is version 6's, built by init after the migrations). Refused while an older tierfs is mounted (it would write
    sizes without their class)."""
    _refuse_if_mounted(db, 5)
    db.inodes.update_many({}, [{"$set": {"size_class": SIZE_CLASS}}])


def _add_stub_size(db) -> None:
    """Version 3 (issue 18): stub_size 0 on every inode that lacks it (the
    other new fields, archive_copies, origin_*, and the jobs' uid and
    more_targets, read as None when absent). An older tierfs still mounted
    would create inodes without it: mongo_query reads a missing one as 0."""
    db.inodes.update_many({"stub_size": {"$exists": False}}, {"$set": {"stub_size": 0}})


#: The running totals (Catalog.totals) are spread over this many documents per (state, tier,
#: archive_tier), the inode number choosing one (ino % TOTALS_BUCKETS): mounts changing files at once
#: seldom write the same document, so their transactions seldom conflict on it (one counter document
#: would serialise every create of every mount); totals() sums them, a few hundred small documents.
TOTALS_BUCKETS = 64
#: The inode fields a totals document depends on: a change to none of them leaves the totals alone.
TOTAL_FIELDS = ("state", "tier", "archive_tier", "size", "nlink", "mode")
_TOTAL_FIELD_SET = frozenset(TOTAL_FIELDS)
_COUNTED = {"nlink": {"$gt": 0}, "mode": {"$bitsAllSet": 0o100000, "$bitsAllClear": 0o070000}}


def _counted_key(doc: dict | None) -> tuple[str, str, str] | None:
    """The (state, tier, archive_tier) an inode document counts under ('' = none), or None when it is no
    live regular file."""
    if doc is None or doc.get("nlink", 0) <= 0 or doc.get("mode", 0) & 0o170000 != 0o100000:
        return None
    return doc["state"], doc.get("tier") or "", doc.get("archive_tier") or ""


def _total_deltas(pairs) -> list[UpdateOne]:
    """The $inc upserts of the totals documents for (ino, before, after) inode documents (None: absent)."""
    acc: dict[tuple, list[int]] = {}
    for ino, before, after in pairs:
        for doc, sign in ((before, -1), (after, 1)):
            key = _counted_key(doc)
            if key is not None:
                d = acc.setdefault((ino % TOTALS_BUCKETS, *key), [0, 0])
                d[0] += sign
                d[1] += sign * int(doc.get("size") or 0)
    return [UpdateOne({"_id": {"b": b, "s": st, "t": t, "a": a}}, {"$inc": {"files": n, "bytes": nb}}, upsert=True)
            for (b, st, t, a), (n, nb) in acc.items() if n or nb]


def _applied(before: dict, values: dict, inc: dict | None) -> dict:
    """The inode document `before` after _update(values, inc): what find_one_and_update(AFTER) returns
    (of the fields `before` has)."""
    after = dict(before)
    after.update(values)
    for k, n in (inc or {}).items():
        after[k] = after.get(k, 0) + n
    if "size" in values:
        after["size_class"] = size_class(values["size"])
    if not _LAST_ACCESS_FROM.isdisjoint(values) and "atime_ns" in after and "mtime_ns" in after:
        after["last_access_ns"] = max(after["atime_ns"], after["mtime_ns"])
    return after


#: Inode numbers per $group of _scan_totals: one round trip each, ~1 s per 500,000 inodes, far under
#: the client's 10 s socket timeout (one $group over 10M inodes would not be).
SCAN_SLICE = 500_000


def _scan_totals(db) -> dict:
    """Catalog.totals() computed from every inode: a $group per SCAN_SLICE inode numbers (on _id)."""
    out: dict = {}
    top = db.inodes.find_one({}, {"_id": 1}, sort=[("_id", -1)])
    for lo in range(0, (top["_id"] if top else 0) + 1, SCAN_SLICE):
        for r in db.inodes.aggregate([{"$match": {"_id": {"$gte": lo, "$lt": lo + SCAN_SLICE}, **_COUNTED}},
                                      {"$group": {"_id": {"s": "$state", "t": "$tier", "a": "$archive_tier"},
                                                  "n": {"$sum": 1}, "b": {"$sum": "$size"}}}]):
            k = (r["_id"]["s"], r["_id"].get("t") or None, r["_id"].get("a") or None)
            n, b = out.get(k, (0, 0))
            out[k] = (n + r["n"], b + int(r["b"]))
    return out


def _write_totals(db, totals: dict, s=None) -> None:
    """Replace the totals documents with `totals` (all in bucket 0)."""
    db.totals.delete_many({}, session=s)
    if totals:
        db.totals.insert_many([{"_id": {"b": 0, "s": st, "t": t or "", "a": a or ""}, "files": n, "bytes": b}
                               for (st, t, a), (n, b) in totals.items()], session=s)


def _add_totals(db) -> None:
    """Version 4 (issue 20): the running totals for `du` and `status`, filled
    from one scan. An older tierfs still mounted does not keep them: its
    changes made after this scan are missing until `tierfs fsck --repair`
    rebuilds them (fsck reports the difference)."""
    _write_totals(db, _scan_totals(db))


def _ix(name: str, *keys: str, **options) -> IndexModel:
    return IndexModel([(k, pymongo.ASCENDING) for k in keys], name=name, **options)


#: Every index, per collection: init creates the missing ones (idempotent; DROPPED_INDEXES goes). A new
#: index comes with a SCHEMA_VERSION step (a migration, if only `lambda db: None`): init builds indexes
#: under MIGRATION_DEADLINE_S only while upgrading, and a build over 10M documents outlasts the socket
#: timeout (tests/catalog/test_index.py holds the names of each version).
INDEXES: dict[str, list[IndexModel]] = {
    "dentries": [_ix("parent_name", "parent", "name", unique=True),
                 _ix("parent_pos", "parent", "_id"),                        # readdir
                 _ix("ino", "ino")],                                        # parent_of, path_of
    "inodes": [
        # Watermark runs (least recently used first), `tierfs find --inactive`, query() on inactivity (+
        # size): state and last_access_ns bound the scan, the size bound is tested on the key, so only
        # documents matching all three are fetched (1M inodes, 1% candidates: 10,000 fetched instead of
        # 91,046); with the inode number last, `find` reads the matching numbers from the index alone. A
        # policy rule's candidates come from the candidates index (mongo_query.CANDIDATES_INDEX).
        _ix("state_last_access_size_id", "state", "last_access_ns", "size", "_id"),
        _ix("state_size_id", "state", "size", "_id"),                      # big files
        _ix(CANDIDATES_INDEX[1], *(k for k, _ in CANDIDATES_INDEX[0])),    # policy rules' candidates
        _ix("tier_location", "tier", "location"),                          # references, per tier
        _ix("archive_location", "archive_tier", "archive_location"),
        _ix("archive_copies", "archive_copies",                            # references()
            partialFilterExpression={"archive_copies": {"$type": "string"}}),
        _ix("no_checksum", "state", "_id",                                 # checksum backlog
            partialFilterExpression={"checksum": {"$type": "null"}}),
        # `tierfs find` by state alone (or no condition): query_names pages through the matching inode
        # numbers in order on this index alone (nlink and mode are tested on the key: no document read)
        _ix("state_id", "state", "_id", "nlink", "mode"),
        _ix("unlinked", "nlink", partialFilterExpression={"nlink": 0}),   # unlinked()
    ],
    "xattrs": [_ix("ino_name", "ino", "name", unique=True)],
    "jobs": [_ix("runnable", "state", "priority", "_id"),                  # claim
             _ix("ino_kind_state", "ino", "kind", "state"),
             # At most one active job per (file, kind): makes enqueue's coalescing atomic across mounts.
             _ix("one_active", "ino", "kind", unique=True, partialFilterExpression={"state": {"$in": ACTIVE}}),
             _ix("dst_key", "dst_key")],                                   # references()
    "events": [_ix("ino_id", "ino", "_id")],
    "garbage": [_ix("tier_key", "tier", "key")],
    "sessions": [_ix("live", "clean", "heartbeat_ns")],
    "tombstones": [_ix("ino_id", "ino", "_id")],
    "open_files": [_ix("ino_writing", "ino", "writing"),                   # switch, purge
                   _ix("session", "session")],                             # reaping
}


#: Migrations: version -> function(db) upgrading from version-1 (db: MongoCatalog._schema_db, whose round
#: trips may take MIGRATION_DEADLINE_S).
def _add_candidates_index(db) -> None:
    """Version 6: no stored field changes; the step is there so that init
    builds the candidates index under MIGRATION_DEADLINE_S (10M inodes: a
    few minutes). An older tierfs still mounted keeps working meanwhile
    (it reads and writes the same fields)."""


def _use_dir_stripes(db) -> None:
    """Version 7: a name added to a contended directory writes one of its
    stripes (dir_stripes) in place of the directory's inode, and rmdir
    writes them all. An older tierfs still mounted removes directories
    without writing the stripes, so its rmdir would not conflict with this
    tierfs's creates there (a name left in a removed directory): refused
    while one is mounted."""
    _refuse_if_mounted(db, 7)


MIGRATIONS: dict[int, Callable] = {2: _add_last_access, 3: _add_stub_size, 4: _add_totals, 5: _add_size_class,
                                   6: _add_candidates_index, 7: _use_dir_stripes}


def _inode_doc(inode: Inode) -> dict:
    d = {k: getattr(inode, k) for k in INODE_FIELDS if k != "ino"}
    d["_id"] = inode.ino
    d["state"] = inode.state.value
    d["last_access_ns"] = inode.last_access_ns
    d["size_class"] = inode.size_class
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
    given, or when one goes back (touch -d). With the size, its size_class.
    (No caller increments the size: `inc` is the data version's.)"""
    if "size" in values:
        values = {**values, "size_class": size_class(values["size"])}
    if _LAST_ACCESS_FROM.isdisjoint(values):
        return {k: v for k, v in (("$set", values), ("$inc", inc)) if v}
    first = {k: {"$literal": v} for k, v in values.items()}   # a value is data, never a field path
    first.update({k: {"$add": [f"${k}", n]} for k, n in (inc or {}).items()})
    return [{"$set": first}, {"$set": {"last_access_ns": LAST_ACCESS}}]


#: Counters handed out in blocks per catalog object (MongoCatalog._next): name -> block size.
RANGED = {"ino": 1000, "pos": 1000, "garbage": 1000}
#: A change of a directory's names (create, link, rename, unlink) writes the directory's inode in its
#: transaction (times, names_gen), which is also what makes rmdir (which writes it too) conflict with a
#: concurrent create on another mount: snapshot isolation has no range lock, so has_children alone would
#: let the create slip in. When mounts change names in one directory at once, those writes conflict and
#: retry: 4 mounts creating in one directory made no more creates than one (21 -> 19/s, 500-770 aborted
#: transactions per 10 s; bench/RESULTS.md, create contention). So a directory whose write was in a
#: transaction that had to be retried is *contended* for CONTENDED_S on this catalog object: its changes
#: write one of the directory's STRIPES documents (dir_stripes, _id {dir, k}) instead, and the directory's
#: times follow the commit as a $max (MongoCatalog._touch_after: one more round trip, which is why an
#: uncontended directory keeps the single write). rmdir writes the inode and all the stripes, so it
#: conflicts with either kind of change. Each catalog object (a mount) writes one stripe, numbered by a
#: counter, so up to 16 mounts share none; within a mount, names in one directory change one at a time
#: anyway (the directory's lock, fs.py _create_entry).
STRIPES = 16
CONTENDED_S = 60.0


class MongoCatalog(MongoJobs, MongoQueries, CatalogCore):
    """Catalog in a MongoDB database chosen by URL (mongodb://host/db?replicaSet=rs0)."""

    shared = True
    concurrency = 8
    failover_wait_s = FAILOVER_WAIT_S

    def __init__(self, url: str):
        self.url = url
        self.safe_url = redact_url(url)
        try:
            parsed = pymongo.uri_parser.parse_uri(url)
        except (InvalidURI, ConfigurationError, ValueError) as e:
            raise errors.ConfigError(f"catalog: invalid MongoDB URL {redact_url(url)}: {e}") from None
        given = {k.lower() for k in parsed["options"]}
        opts = {k: v for k, v in DEFAULTS.items() if k.lower() not in given}
        self._opts = opts   # (also _schema_db's)
        url_timeout = next((v for k, v in parsed["options"].items() if k.lower() == "timeoutms"), None)
        #: longest one call (a transaction with all its retries) may take, seconds
        #: (parse_uri already converts the URL's timeoutMS to seconds)
        self.deadline_s = float(url_timeout) if url_timeout else TXN_DEADLINE_S
        #: the client's name, by host and pid as a session record has them (MongoJobs._kill_transactions_of)
        self.app_name = client_name(socket.gethostname(), os.getpid())
        try:
            self.client = pymongo.MongoClient(url, appname=self.app_name, **opts)
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
        self.stubs = d.stubs
        self.totals_c = d.totals
        self.open_files = d.open_files
        self.dir_stripes = d.dir_stripes
        self._stripe: int | None = None   # this object's (STRIPES), taken at its first use
        self._contended: dict[int, float] = {}   # directory -> monotonic time until which it is (CONTENDED_S)
        self._ranges: dict[str, tuple[int, int]] = {}   # counter -> (next, last) of the block taken (_next)
        self._ranges_lock = threading.Lock()
        self._left_open: list[dict] = []   # server session ids of transactions cut off (_remember_left_open)
        self._left_lock = threading.Lock()
        self._kill_denied = False          # the user may not kill a reaped mount's sessions: warned once

    # ---- plumbing ----------------------------------------------------------
    @contextlib.contextmanager
    def _schema_db(self) -> Iterator:
        """The database through a client of its own for init's schema work
        (migrations, index builds): its round trips may take
        MIGRATION_DEADLINE_S; server selection and connecting keep their
        deadlines (see MIGRATION_DEADLINE_S). A timeoutMS in the URL (the
        whole-operation deadline of every call) is cleared on it: it would cut
        a migration's update of every inode as the socket timeout would."""
        client = pymongo.MongoClient(self.url, appname=self.app_name,
                                     **{**self._opts, "socketTimeoutMS": MIGRATION_DEADLINE_S * 1000,
                                        "timeoutMS": None})
        try:
            yield client[self.db.name]
        finally:
            client.close()

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
            if isinstance(e, ConnectionFailure) and not isinstance(e, NetworkTimeout) and self._members_answer():
                raise errors.CatalogFailover(f"catalog {redact_url(self.url)}: no primary (a replica set "
                                             f"election?): {_short(e)}") from e
            if isinstance(e, ServerSelectionTimeoutError):
                self._unreachable = True
            raise errors.CatalogUnavailable(f"catalog {redact_url(self.url)}: {_short(e)}") from e
        else:
            self._unreachable = False

    def _members_answer(self) -> bool:
        """After a lost connection or no server found: does some member of the
        replica set answer the driver's monitor (a secondary, or the primary an
        election just made)? Then the primary failed over, rather than this
        host having lost the catalog. A slow answer (NetworkTimeout) is not
        asked about: the server is there, and repeating would double the wait."""
        answering = (SERVER_TYPE.RSPrimary, SERVER_TYPE.RSSecondary)
        servers = self.client.topology_description.server_descriptions().values()
        return any(sd.server_type in answering for sd in servers)

    def _txn(self, fn: Callable[[object], T]) -> T:
        """Run fn(session) in a transaction, retried on transient errors until
        the deadline. A TierfsError raised by fn aborts it and propagates."""
        deadline = time.monotonic() + self.deadline_s
        if self._left_open and not self._unreachable:
            self._end_left_open()   # they may hold documents this one is about to write
        with self._errors(), self.client.start_session() as s:
            try:
                return self._txn_attempts(s, fn, deadline)
            except ConnectionFailure:
                # Cut off in the middle: the server may keep the transaction open until its lifetime limit
                # (a retry that reached it would have ended it: a new transaction number on the session).
                self._remember_left_open(s.session_id)
                raise

    def _txn_attempts(self, s, fn: Callable[[object], T], deadline: float) -> T:
        """_txn's attempts on server session s."""
        delay = 0.005
        net_failures = 0
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

    def transaction(self, fn: Callable[[Txn], T]) -> T:
        """fn in a transaction (_txn), retried on transient errors; then the
        times of the contended directories it touched (_touch_after)."""
        touched: dict[int, int] = {}   # contended directory -> its new times, for after the commit
        in_place: set[int] = set()     # directories whose inode the attempt wrote

        def attempt(s):
            if in_place:   # the attempt before was retried: a write conflict, most likely on these
                self.contend(in_place)
            touched.clear()
            in_place.clear()
            return fn(_MongoTxn(self, s, touched, in_place))
        result = self._txn(attempt)
        if touched:
            self._touch_after(touched)
        return result

    def contend(self, dirs, seconds: float = CONTENDED_S) -> None:
        """Changes of these directories' names go through their stripes for
        `seconds` (STRIPES; what a retried transaction does, and tests)."""
        until = time.monotonic() + seconds
        if len(self._contended) > 10000:
            now = time.monotonic()
            self._contended = {d: t for d, t in self._contended.items() if t > now}
        for d in dirs:
            self._contended[d] = until

    def contended(self, d: int) -> bool:
        until = self._contended.get(d)
        return until is not None and until > time.monotonic()

    def _touch_after(self, touched: dict[int, int]) -> None:
        """Directories' mtime and ctime after the transaction that added or
        removed their names committed: a $max each, outside it, so creates in
        one directory write no shared document (STRIPES). The name is there
        already; if this write fails (the catalog lost meanwhile) the call
        still succeeded, and the directory keeps its older times: logged."""
        ops = [UpdateOne({"_id": d}, {"$max": {"mtime_ns": t, "ctime_ns": t, "last_access_ns": t}})
               for d, t in touched.items()]
        try:
            with self._errors():
                self.inodes.bulk_write(ops, ordered=False)
        except errors.CatalogUnavailable as e:
            log.warning("catalog: the times of directories %s were not updated after a change of their "
                        "entries: %s", sorted(touched), e)

    def stripe(self) -> int:
        """This catalog object's stripe of every directory (STRIPES)."""
        if self._stripe is None:
            self._stripe = self._take("stripe", 1) % STRIPES
        return self._stripe

    def _next(self, name: str, n: int = 1) -> int:
        """Allocate n numbers from a counter (single-document $inc); returns the
        last. Inode numbers, dentry positions and garbage ids come one at a time
        from a block of RANGED[name] this catalog object took: a round trip per
        block instead of per number (create made two of them), and mounts do not
        all write one document (JuiceFS allocates the same way). The numbers stay
        unique but are increasing only within a block; jobs, events and
        tombstones keep exact order (one $inc each)."""
        block = RANGED.get(name)
        if block is None or n != 1:
            return self._take(name, n)
        with self._ranges_lock:
            lo, hi = self._ranges.get(name, (1, 0))
            if lo > hi:
                hi = self._take(name, block)
                lo = hi - block + 1
            self._ranges[name] = (lo + 1, hi)
            return lo

    def _take(self, name: str, n: int) -> int:
        doc = self.counters.find_one_and_update({"_id": name}, {"$inc": {"seq": n}}, upsert=True,
                                                return_document=ReturnDocument.AFTER)
        return doc["seq"]

    def _get(self, ino: int, s=None) -> Inode:
        doc = self.inodes.find_one({"_id": ino}, session=s)
        if doc is None:
            raise errors.NotFound(f"inode {ino}")
        return _inode(doc)

    def _set(self, ino: int, s, inc: dict | None = None, **values) -> None:
        """Set fields the running totals do not depend on (times, ...)."""
        if not _TOTAL_FIELD_SET.isdisjoint(values):
            raise errors.Invalid(f"_set of {sorted(_TOTAL_FIELD_SET & set(values))}: use update() (totals)")
        upd = _update(_values(values), inc)
        if upd:
            self.inodes.update_one({"_id": ino}, upd, session=s)

    def _add_totals(self, s, pairs) -> None:
        """Apply the changes of (ino, before, after) inode documents to the totals, in transaction s."""
        ops = _total_deltas(pairs)
        if ops:
            self.totals_c.bulk_write(ops, ordered=False, session=s)

    def _update_counted(self, filt: dict, values: dict, inc: dict | None = None) -> dict | None:
        """find_one_and_update(filt) returning the document after it; when the change touches a field
        the totals depend on, in a transaction with their update (the inode's previous values come back
        from the same atomic update)."""
        upd = _update(values, inc)
        counted = _TOTAL_FIELD_SET.intersection(values)
        if not counted:
            return self.inodes.find_one_and_update(filt, upd, return_document=ReturnDocument.AFTER)
        if counted == {"mode"}:
            # chmod: the totals change only with the file type, so when the stored one is the new one's
            # this is the single-document update it was (a mismatch, or no such inode: the transaction)
            kind = values["mode"] & 0o170000
            doc = self.inodes.find_one_and_update({**filt, "mode": {"$gte": kind, "$lt": kind + 0o10000}}, upd,
                                                  return_document=ReturnDocument.AFTER)
            if doc is not None:
                return doc

        def fn(s):
            before = self.inodes.find_one_and_update(filt, upd, return_document=ReturnDocument.BEFORE, session=s)
            if before is None:
                return None
            after = _applied(before, values, inc)
            self._add_totals(s, [(before["_id"], before, after)])
            return after
        return self._txn(fn)

    def totals(self) -> dict:
        out: dict = {}
        with self._errors():
            for r in self.totals_c.aggregate([{"$group": {"_id": {"s": "$_id.s", "t": "$_id.t", "a": "$_id.a"},
                                                          "n": {"$sum": "$files"}, "b": {"$sum": "$bytes"}}}]):
                if r["n"]:
                    k = r["_id"]
                    out[(k["s"], k["t"] or None, k["a"] or None)] = (r["n"], int(r["b"]))
        return out

    def scan_totals(self) -> dict:
        with self._errors():
            return _scan_totals(self.db)

    def rebuild_totals(self) -> None:
        """The scan, then the totals documents replaced in one transaction: exact when no mount changes
        files meanwhile (a change between the scan and the replacement is lost until the next rebuild)."""
        totals = self.scan_totals()
        self._txn(lambda s: _write_totals(self.db, totals, s))

    def _event(self, s, ino: int, frm, to, cause: str, detail: str = "") -> None:
        self.events_c.insert_one(dict(_id=self._next("event"), ino=ino, time_ns=now_ns(), from_state=str(frm),
                                      to_state=str(to), cause=cause, detail=detail), session=s)

    # ---- lifecycle ---------------------------------------------------------
    def init(self, root_uid: int = 0, root_gid: int = 0, root_mode: int = 0o40755) -> None:
        """Schema version (migrating an older one), indexes (idempotent), the
        root inode and the counters. Safe to run from several mounts at once
        (duplicate inserts are ignored; migrations are idempotent)."""
        with self._errors():
            hello = self.client.admin.command("hello")
            if not hello.get("setName") and hello.get("msg") != "isdbgrid":
                raise errors.ConfigError(
                    f"catalog {self.safe_url}: this MongoDB server is standalone; tierfs needs a replica set "
                    "(a single node is enough: start mongod with --replSet rs0, run rs.initiate(), and add "
                    "?replicaSet=rs0 to the URL) or a sharded cluster, for transactions")
            doc = self.meta.find_one({"_id": "schema_version"})
        version = None if doc is None else int(doc["value"])
        if version is not None and version > SCHEMA_VERSION:
            raise errors.ConfigError(f"catalog schema version {version} is newer than this tierfs "
                                     f"({SCHEMA_VERSION}); upgrade tierfs")
        # An upgrade (migrations, then the indexes they bring) goes through a client whose round trips may
        # take MIGRATION_DEADLINE_S: over 10M inodes each takes minutes. Otherwise the indexes are there
        # (INDEXES changes only with SCHEMA_VERSION) and each create_indexes returns at once.
        upgrading = version is not None and version < SCHEMA_VERSION
        with self._errors(), (self._schema_db() if upgrading else contextlib.nullcontext(self.db)) as d:
            # Migrations first: one that is refused leaves the catalog (indexes included) as it was.
            if version is None:
                _insert_ignoring_dup(d.meta, {"_id": "schema_version", "value": str(SCHEMA_VERSION)})
            while version is not None and version < SCHEMA_VERSION:
                version += 1
                log.info("migrating catalog schema to version %d", version)
                MIGRATIONS[version](d)
                d.meta.update_one({"_id": "schema_version"}, {"$set": {"value": str(version)}})
            for coll, models in INDEXES.items():   # one round trip per collection; a missing index is built
                d[coll].create_indexes(models)
            # stubs (partial-state files: _id ino, data the first stub_size bytes): made here because its
            # first write is inside a switch() transaction, and a transaction creates no collection on a
            # sharded cluster (nor before MongoDB 4.4)
            # (totals likewise: its first upsert is inside a create's transaction)
            # (dir_stripes likewise: its first upsert is inside a create's or rmdir's)
            for name in ("stubs", "totals", "dir_stripes"):
                if name not in d.list_collection_names(filter={"name": name}):
                    try:
                        d.create_collection(name)
                    except CollectionInvalid:
                        pass   # another mount's init made it first (seen by the driver)
                    except OperationFailure as e:
                        if e.code != 48:   # NamespaceExists: another mount's init made it between the check and here
                            raise
            self._drop_indexes(d, DROPPED_INDEXES)
        with self._errors():
            self.counters.update_one({"_id": "ino"}, {"$max": {"seq": ROOT_INO}}, upsert=True)
            t = now_ns()
            root = Inode(ino=ROOT_INO, mode=root_mode, uid=root_uid, gid=root_gid, nlink=2,
                         atime_ns=t, mtime_ns=t, ctime_ns=t, crtime_ns=t, state_ns=t, state_cause="mkfs")
            _insert_ignoring_dup(self.inodes, _inode_doc(root))

    def _drop_indexes(self, d, dropped: dict[str, tuple[str, ...]]) -> None:
        """Drop the indexes an older tierfs created that this one no longer
        wants (after init created their replacements), at every init: a drop
        needs no schema_version step (unlike a new index, see INDEXES), since
        it is quick, changes no stored data and an older tierfs works without."""
        for coll, names in dropped.items():
            have = set(d[coll].index_information())
            for name in names:
                if name in have:
                    log.info("catalog: dropping index %s.%s (superseded)", coll, name)
                    try:
                        d[coll].drop_index(name)
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

    def get_many(self, inos) -> dict[int, Inode]:
        """One find per 1,000 inode numbers (`$in` on _id)."""
        inos = list(dict.fromkeys(inos))
        out: dict[int, Inode] = {}
        with self._errors():
            for k in range(0, len(inos), 1000):
                for d in self.inodes.find({"_id": {"$in": inos[k:k + 1000]}}):
                    i = _inode(d)
                    out[i.ino] = i
        return out

    def lookup(self, parent: int, name: bytes) -> Inode:
        """One round trip: the dentry joined with its inode (two finds took two)."""
        with self._errors():
            rows = list(self.dentries.aggregate([
                {"$match": {"parent": parent, "name": name}}, {"$limit": 1},
                {"$lookup": {"from": "inodes", "localField": "ino", "foreignField": "_id", "as": "i"}}]))
        if not rows or not rows[0]["i"]:
            raise errors.NotFound(f"{name!r} in directory {parent}")
        return _inode(rows[0]["i"][0])

    def readdir(self, parent: int, after_pos: int, limit: int, known=()) -> list[DirEntry]:
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

    def remove_dentry(self, parent: int, pos: int) -> None:
        with self._errors():
            self.dentries.delete_one({"_id": pos, "parent": parent})

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
        with self._errors():
            return self._path_in(_MongoTxn(self, None), ino)

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
                doc = self._update_counted(filt, _values(changes))
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
            doc = self._update_counted({"_id": ino}, values, {"data_version": 1})
        if doc is None:
            raise errors.NotFound(f"inode {ino}")
        return _inode(doc)

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

    def stub(self, ino: int) -> bytes:
        with self._errors():
            d = self.stubs.find_one({"_id": ino})
        return b"" if d is None else bytes(d["data"])

    # ---- xattrs ------------------------------------------------------------
    def getxattr(self, ino: int, name: bytes) -> bytes:
        with self._errors():
            d = self.xattrs.find_one({"ino": ino, "name": name}, {"value": 1})
        if d is None:
            raise errors.NoAttr(f"no attribute {name!r}")
        return d["value"]

    def setxattr(self, ino, name, value, *, create=False, replace=False, ctime_ns=None) -> None:
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
            self._set(ino, None, ctime_ns=ctime_ns or now_ns())

    def listxattr(self, ino: int) -> list[bytes]:
        with self._errors():
            # Sorted here: MongoDB orders binary values by length first.
            return sorted(d["name"] for d in self.xattrs.find({"ino": ino}, {"name": 1}))

    def removexattr(self, ino: int, name: bytes, ctime_ns: int | None = None) -> None:
        """Single-document delete, then the inode's ctime."""
        with self._errors():
            if self.xattrs.delete_one({"ino": ino, "name": name}).deleted_count == 0:
                raise errors.NoAttr(f"no attribute {name!r}")
            self._set(ino, None, ctime_ns=ctime_ns or now_ns())

    # ---- state and moves ---------------------------------------------------
    def set_open(self, ino, session, reading, writing) -> Inode:
        """Transaction: the (ino, session) record upserted or deleted, and the
        inode document written ($inc open_gen) so a concurrent switch()
        transaction conflicts and retries instead of missing a new writer."""
        def fn(s):
            inode = self._get(ino, s)
            key = f"{ino}:{session}"
            # `ino` in the filters too: on a sharded cluster open_files is sharded by ino, and mongos
            # refuses an upsert whose filter lacks the shard key (docs/SHARDING.md)
            if reading or writing:
                self.open_files.replace_one({"_id": key, "ino": ino}, {"_id": key, "ino": ino, "session": session,
                                                                      "writing": bool(writing)}, upsert=True, session=s)
            else:
                self.open_files.delete_one({"_id": key, "ino": ino}, session=s)
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

    def references(self, tier: str, key: str, *, further: bool = True) -> bool:
        with self._errors():
            if self.inodes.find_one({"$or": [{"tier": tier, "location": key},
                                             {"archive_tier": tier, "archive_location": key}]}, {"_id": 1}):
                return True
            # A further archive copy (Inode.archive_copies): the files that have some (index archive_copies).
            if further and self.inodes.find_one(
                    {"archive_copies": {"$type": "string", "$regex": re.escape(copy_pattern(tier, key))}}, {"_id": 1}):
                return True
            return self.jobs_c.find_one({"dst_key": key, "state": {"$in": ACTIVE}}, {"_id": 1}) is not None

class _MongoTxn:
    """core.Txn on one MongoDB transaction (session `s` of MongoCatalog.transaction).
    Numbers (inodes, dentries, events, tombstones) come from the counters
    outside the transaction: a retried or aborted one leaves a gap, never a reuse."""

    __slots__ = ("cat", "s", "touched", "in_place")

    def __init__(self, cat: "MongoCatalog", s, touched: dict[int, int] | None = None,
                 in_place: set[int] | None = None):
        self.cat, self.s = cat, s
        self.touched = {} if touched is None else touched      # see MongoCatalog.transaction
        self.in_place = set() if in_place is None else in_place

    def find_inode(self, ino: int) -> Inode | None:
        doc = self.cat.inodes.find_one({"_id": ino}, session=self.s)
        return None if doc is None else _inode(doc)

    def find_dentry(self, parent: int, name: bytes) -> tuple[int, int] | None:
        d = self.cat.dentries.find_one({"parent": parent, "name": name}, {"ino": 1}, session=self.s)
        return None if d is None else (d["_id"], d["ino"])

    def has_children(self, ino: int) -> bool:
        return self.cat.dentries.find_one({"parent": ino}, {"_id": 1}, session=self.s) is not None

    def first_name(self, ino: int) -> tuple[int, bytes] | None:
        d = self.cat.dentries.find_one({"ino": ino}, {"parent": 1, "name": 1}, session=self.s)
        return None if d is None else (d["parent"], d["name"])

    def names_of(self, ino: int) -> list[tuple[int, int]]:
        return [(d["_id"], d["parent"]) for d in self.cat.dentries.find({"ino": ino}, {"parent": 1}, session=self.s)]

    def insert_inode(self, inode: Inode) -> int:
        ino = self.cat._next("ino")
        doc = _inode_doc(inode.copy(ino=ino))
        self.cat.inodes.insert_one(doc, session=self.s)
        self.cat._add_totals(self.s, [(ino, None, doc)])
        return ino

    def insert_inodes(self, inodes: list[Inode]) -> list[int]:
        first = self.cat._next("ino", len(inodes)) - len(inodes) + 1
        docs = [_inode_doc(i.copy(ino=first + k)) for k, i in enumerate(inodes)]
        self.cat.inodes.insert_many(docs, session=self.s)
        self.cat._add_totals(self.s, [(d["_id"], None, d) for d in docs])
        return [first + k for k in range(len(inodes))]

    def taken_name(self, parent: int, names: list[bytes]) -> bytes | None:
        d = self.cat.dentries.find_one({"parent": parent, "name": {"$in": names}}, {"name": 1}, session=self.s)
        return None if d is None else d["name"]

    def set_fields(self, ino: int, changes: dict) -> None:
        values = _values(changes)
        upd = _update(values)
        if not upd:
            return
        if _TOTAL_FIELD_SET.isdisjoint(values):
            self.cat.inodes.update_one({"_id": ino}, upd, session=self.s)
            return
        before = self.cat.inodes.find_one_and_update({"_id": ino}, upd, dict.fromkeys(TOTAL_FIELDS, 1),
                                                     return_document=ReturnDocument.BEFORE, session=self.s)
        if before is not None:
            self.cat._add_totals(self.s, [(ino, before, _applied(before, values, None))])

    def touch_dirs(self, parents, ctime_ns: int, nlinks: dict[int, int] | None = None) -> None:
        nlinks = nlinks or {}
        for p in set(parents):
            # (a plain $set: the running totals count live regular files only, _counted_key)
            nlink = {"$set": {"nlink": nlinks[p]}} if p in nlinks else {}
            if self.cat.contended(p):
                if nlink:
                    self.cat.inodes.update_one({"_id": p}, nlink, session=self.s)
                # $inc: the document always changes (an update that changes nothing writes nothing, and
                # conflicts with nothing)
                self.cat.dir_stripes.update_one({"_id": {"dir": p, "k": self.cat.stripe()}}, {"$inc": {"n": 1}},
                                                upsert=True, session=self.s)
                self.touched[p] = max(self.touched.get(p, 0), ctime_ns)
            else:
                self.in_place.add(p)   # (before the write: its conflict raises here)
                # names_gen likewise: with a $max of older times alone (a host whose clock is behind) this
                # would write nothing
                self.cat.inodes.update_one({"_id": p}, {"$max": {"mtime_ns": ctime_ns, "ctime_ns": ctime_ns,
                                                                 "last_access_ns": ctime_ns},
                                                        "$inc": {"names_gen": 1}, **nlink}, session=self.s)

    def seal_dir(self, ino: int) -> None:
        # Every stripe written (a create that already wrote one conflicts, or it conflicts with this), then
        # removed: a removal is a write too, and the directory leaves no documents behind.
        ids = [{"dir": ino, "k": k} for k in range(STRIPES)]
        self.cat.dir_stripes.bulk_write([UpdateOne({"_id": i}, {"$inc": {"n": 1}}, upsert=True) for i in ids],
                                        ordered=False, session=self.s)
        self.cat.dir_stripes.delete_many({"_id": {"$in": ids}}, session=self.s)
        self.touched.pop(ino, None)

    def delete_inode(self, ino: int) -> None:
        before = self.cat.inodes.find_one_and_delete({"_id": ino}, dict.fromkeys(TOTAL_FIELDS, 1), session=self.s)
        self.cat._add_totals(self.s, [(ino, before, None)])
        self.cat.xattrs.delete_many({"ino": ino}, session=self.s)
        self.cat.stubs.delete_one({"_id": ino}, session=self.s)

    def add_dentry(self, parent: int, name: bytes, ino: int) -> None:
        try:   # the unique (parent, name) index turns a race with another mount into Exists
            self.cat.dentries.insert_one({"_id": self.cat._next("pos"), "parent": parent, "name": name, "ino": ino},
                                         session=self.s)
        except DuplicateKeyError:
            raise errors.Exists(f"{name!r} exists in directory {parent}") from None

    def add_dentries(self, rows: list[tuple[int, bytes, int]]) -> None:
        first = self.cat._next("pos", len(rows)) - len(rows) + 1
        try:
            self.cat.dentries.insert_many([{"_id": first + k, "parent": parent, "name": name, "ino": ino}
                                           for k, (parent, name, ino) in enumerate(rows)], session=self.s)
        except BulkWriteError as e:
            if all(w.get("code") == 11000 for w in e.details.get("writeErrors", [])):
                raise errors.Exists("a name was created concurrently") from None
            raise

    def move_dentry(self, parent: int, name: bytes, pos: int, new_parent: int, new_name: bytes) -> None:
        # (the whole old shard key in the filter: mongos moves a document to another shard only so)
        self.cat.dentries.update_one({"_id": pos, "parent": parent, "name": name},
                                     {"$set": {"parent": new_parent, "name": new_name}}, session=self.s)

    def point_dentry(self, parent: int, pos: int, ino: int) -> None:
        self.cat.dentries.update_one({"_id": pos, "parent": parent}, {"$set": {"ino": ino}}, session=self.s)

    def del_dentry(self, parent: int, pos: int) -> None:
        self.cat.dentries.delete_one({"_id": pos, "parent": parent}, session=self.s)

    def cancel_pending_jobs(self, ino: int, now: int) -> None:
        self.cat.jobs_c.update_many({"ino": ino, "state": JobState.PENDING.value},
                                    {"$set": {"state": JobState.CANCELLED.value, "last_error": "file deleted",
                                              "updated_ns": now}}, session=self.s)

    def open_anywhere(self, ino: int) -> bool:
        return self.cat.open_files.find_one({"ino": ino}, {"_id": 1}, session=self.s) is not None

    def other_writer(self, ino: int, session: str) -> str | None:
        w = self.cat.open_files.find_one({"ino": ino, "writing": True, "session": {"$ne": session}}, session=self.s)
        return None if w is None else w["session"]

    def add_event(self, ino: int, frm, to, cause: str, detail: str) -> None:
        self.cat._event(self.s, ino, frm, to, cause, detail)

    def add_garbage(self, items, reason: str) -> None:
        self.cat._add_garbage(self.s, items, reason)

    def clear_dst_key(self, job_id: int, now: int) -> None:
        self.cat.jobs_c.update_one({"_id": job_id}, {"$set": {"dst_key": None, "updated_ns": now}}, session=self.s)

    def end_job(self, job_id: int, now: int, *, keep_session: bool = False) -> None:
        end_job(self.cat.jobs_c, job_id, now, keep_session=keep_session, session=self.s)

    def job_owner(self, job_id: int) -> tuple[str, str | None] | None:
        d = self.cat.jobs_c.find_one({"_id": job_id}, {"state": 1, "session": 1}, session=self.s)
        return None if d is None else (d["state"], d.get("session"))

    def set_stub(self, ino: int, data: bytes) -> None:
        if data:
            self.cat.stubs.replace_one({"_id": ino}, {"_id": ino, "data": data}, upsert=True, session=self.s)
        else:
            self.cat.stubs.delete_one({"_id": ino}, session=self.s)

    def add_tombstone(self, values: dict) -> int:
        tid = self.cat._next("tombstone")
        self.cat.tombstones_c.insert_one(dict(_id=tid, **values), session=self.s)
        return tid


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
