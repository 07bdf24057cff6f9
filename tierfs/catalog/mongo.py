"""The Catalog on MongoDB (pymongo), for several mounts sharing one catalog.

Selected by a `mongodb://` (or `mongodb+srv://`) catalog URL; the database
is the URL's path (default "tierfs"). Transactions need a replica set (a
single-node one is enough) or a sharded cluster.

Collections and their fields (the schema is the specification; the same
fields as catalog/schema.py, with `_id` as the primary key):

  meta      _id: setting name ("schema_version", ...); value: setting as text
  counters  _id: counter name ("ino", "pos", "job", "event", "garbage");
            seq: last number handed out (ino starts at 1 = the root, so the
            first file is 2). Numbers are allocated outside transactions
            ($inc on one document), so concurrent creates never conflict on
            the counter; an aborted transaction leaves a gap, never a reuse.
  inodes    _id: inode number (1 = root directory); mode: st_mode (type bits |
            permission bits); uid, gid: owner; nlink: dentries pointing here
            (+subdirs +1 for dirs), 0 = unlinked but still open; size: logical
            size in bytes (may exceed stored bytes: sparse); atime_ns: last
            access (batched by access tracking, never moves backwards);
            mtime_ns: last content change; ctime_ns: last metadata change;
            crtime_ns: creation time; rdev: device number of device nodes, else
            0; target: symlink target (BSON binary, any bytes) or null;
            state: online|archiving|dual|archived|restoring|lost (base.State);
            tier: online tier holding the bytes, null when archived or not a
            file; location: object key on `tier`, null = no object (reads as
            zeros); archive_tier / archive_location: the archive copy (dual,
            archived, restoring, lost), else null; checksum: sha256 hex of the
            content, null until finalised or after a write; data_version:
            bumped on every content change (moves compare-and-swap on it);
            state_ns: when `state` last changed; state_cause: why.
  dentries  _id: pos, the stable readdir cookie (a counter, never reused);
            parent: directory inode; name: file name (BSON binary: POSIX names
            are bytes, invalid UTF-8 round-trips); ino: inode it points at.
  xattrs    _id: ObjectId; ino: inode; name: full attribute name (binary);
            value: attribute value (binary, <= 64 KiB).
  jobs      _id: job id (counter); ino: file; kind: restore|archive|release|
            migrate; state: pending|running|done|failed|cancelled; priority:
            lower runs first (restores 0); target_tier: destination tier or
            null; keep_online: archive leaves the file dual; cause: who/what
            asked; session: session running it (state running) or null;
            attempts: times started; not_before_ns: earliest start (retry
            backoff); last_error: last failure; dst_key: object written on the
            destination (cleaned up if the move dies) or null; created_ns,
            updated_ns: when queued / last changed.
  sessions  _id: random session id; host, pid: the daemon; mountpoint;
            started_ns: registration; heartbeat_ns: last heartbeat (stale
            sessions are reaped); clean: true once ended.
  events    _id: event id (counter); ino; time_ns; from_state; to_state;
            cause: command + uid, policy rule...; detail: tiers, bytes, errors.
  garbage   _id: entry id (counter); tier; key: object to delete; created_ns:
            when it became unreferenced; reason.
  leases    _id: lease name ("policy"); holder: session id; expires_ns: the
            lease is free after this time.
  tombstones _id: tombstone id (counter "tombstone"); ino: inode number the
            deleted file had; path: its path then (binary); size, uid, gid,
            crtime_ns, mtime_ns, atime_ns, state, tier, archive_tier,
            checksum: the file as it was; deleted_ns: when; who: what deleted
            it (policy rule, session, host); why: the values that matched.
            Written by compliance deletions (policy action delete), never
            removed.

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
import fnmatch
import logging
import re
import time
from typing import Callable, Iterable, Iterator, TypeVar

import pymongo
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import (BulkWriteError, ConfigurationError, ConnectionFailure, DuplicateKeyError, InvalidURI,
                            PyMongoError, ServerSelectionTimeoutError)
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from .. import errors
from .base import (ACTIVE_JOB_STATES, INODE_FIELDS, JOB_PRIORITY, ROOT_INO, SCHEMA_VERSION, Catalog,
                   CatalogStats, DirEntry, Event, FileQuery, Garbage, Inode, Job, JobKind, JobState,
                   Session, State, Tombstone, now_ns)

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
ACTIVE = [s.value for s in ACTIVE_JOB_STATES]
#: S_IFMT bits of a regular file / a directory, and the other type bits that must be clear.
REG_SET, REG_CLEAR = 0o100000, 0o070000
DIR_SET, DIR_CLEAR = 0o040000, 0o130000
#: Fields count_by() can group on (as in catalog/base.py).
COUNT_BY_FIELDS = ("state", "tier", "archive_tier", "uid", "gid")
#: Migrations: version -> function(db) upgrading from version-1.
MIGRATIONS: dict[int, Callable] = {}


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _inode(doc: dict) -> Inode:
    d = {k: doc.get(k) for k in INODE_FIELDS if k != "ino"}
    d["state"] = State(d["state"])
    return Inode(ino=doc["_id"], **d)


def _inode_doc(inode: Inode) -> dict:
    d = {k: getattr(inode, k) for k in INODE_FIELDS if k != "ino"}
    d["_id"] = inode.ino
    d["state"] = inode.state.value
    return d


def _values(changes: dict) -> dict:
    """Inode field changes as stored (enums as strings)."""
    out = {}
    for k, v in changes.items():
        if k == "ino" or k not in INODE_FIELDS:
            raise errors.Invalid(f"cannot set inode field {k!r}")
        out[k] = v.value if isinstance(v, State) else v
    return out


def _job(doc: dict) -> Job:
    d = dict(doc)
    d["id"] = d.pop("_id")
    d["kind"] = JobKind(d["kind"])
    d["state"] = JobState(d["state"])
    return Job(**d)


def _session(doc: dict) -> Session:
    d = dict(doc)
    d["id"] = d.pop("_id")
    return Session(**d)


class MongoCatalog(Catalog):
    """Catalog in a MongoDB database chosen by URL (mongodb://host/db?replicaSet=rs0)."""

    shared = True
    concurrency = 8

    def __init__(self, url: str):
        self.url = url
        try:
            parsed = pymongo.uri_parser.parse_uri(url)
        except (InvalidURI, ConfigurationError, ValueError) as e:
            raise errors.ConfigError(f"catalog: invalid MongoDB URL {safe_url(url)}: {e}") from None
        given = {k.lower() for k in parsed["options"]}
        opts = {k: v for k, v in DEFAULTS.items() if k.lower() not in given}
        url_timeout = next((v for k, v in parsed["options"].items() if k.lower() == "timeoutms"), None)
        #: longest one call (a transaction with all its retries) may take, seconds
        #: (parse_uri already converts the URL's timeoutMS to seconds)
        self.deadline_s = float(url_timeout) if url_timeout else TXN_DEADLINE_S
        try:
            self.client = pymongo.MongoClient(url, appname="tierfs", **opts)
        except (ConfigurationError, ValueError) as e:
            raise errors.ConfigError(f"catalog: {safe_url(url)}: {e}") from None
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
            raise errors.CatalogUnavailable(f"catalog {safe_url(self.url)}: {_short(e)}") from e
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
        upd: dict = {}
        if values:
            upd["$set"] = _values(values)
        if inc:
            upd["$inc"] = inc
        if upd:
            self.inodes.update_one({"_id": ino}, upd, session=s)

    def _event(self, s, ino: int, frm, to, cause: str, detail: str = "") -> None:
        self.events_c.insert_one(dict(_id=self._next("event"), ino=ino, time_ns=now_ns(), from_state=str(frm),
                                      to_state=str(to), cause=cause, detail=detail), session=s)

    # ---- lifecycle ---------------------------------------------------------
    def init(self, root_uid: int = 0, root_gid: int = 0, root_mode: int = 0o40755) -> None:
        """Indexes (idempotent), schema version, the root inode and the counters.
        Safe to run from several mounts at once (duplicate inserts are ignored)."""
        A = pymongo.ASCENDING
        with self._errors():
            self.dentries.create_index([("parent", A), ("name", A)], unique=True, name="parent_name")
            self.dentries.create_index([("parent", A), ("_id", A)], name="parent_pos")      # readdir
            self.dentries.create_index([("ino", A)], name="ino")                             # parent_of, path_of
            self.inodes.create_index([("state", A), ("atime_ns", A)], name="state_atime")   # policy: cold files
            self.inodes.create_index([("state", A), ("size", A)], name="state_size")        # policy: big files
            self.inodes.create_index([("tier", A), ("location", A)], name="tier_location")  # references, per tier
            self.inodes.create_index([("archive_tier", A), ("archive_location", A)], name="archive_location")
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
            self.counters.update_one({"_id": "ino"}, {"$max": {"seq": ROOT_INO}}, upsert=True)
            t = now_ns()
            root = Inode(ino=ROOT_INO, mode=root_mode, uid=root_uid, gid=root_gid, nlink=2,
                         atime_ns=t, mtime_ns=t, ctime_ns=t, crtime_ns=t, state_ns=t, state_cause="mkfs")
            _insert_ignoring_dup(self.inodes, _inode_doc(root))

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

    @staticmethod
    def _check(inode: Inode, expect_version, expect_states) -> None:
        if expect_version is not None and inode.data_version != expect_version:
            raise errors.VersionConflict(
                f"inode {inode.ino}: content version {inode.data_version} != expected {expect_version}")
        if expect_states is not None and inode.state not in set(expect_states):
            raise errors.VersionConflict(f"inode {inode.ino}: state {inode.state} not in {list(map(str, expect_states))}")

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
                doc = self.inodes.find_one_and_update(filt, {"$set": _values(changes)},
                                                      return_document=ReturnDocument.AFTER)
            else:
                doc = self.inodes.find_one(filt)
            if doc is None:
                self._check(self._get(ino), expect_version, expect_states)
                raise errors.VersionConflict(f"inode {ino} changed concurrently")
        return _inode(doc)

    def bump_version(self, ino: int, changes: dict) -> Inode:
        """Single-document atomic update ($inc data_version, checksum cleared)."""
        values = _values({k: v for k, v in changes.items() if k not in ("data_version", "checksum")})
        values["checksum"] = None
        with self._errors():
            doc = self.inodes.find_one_and_update({"_id": ino}, {"$inc": {"data_version": 1}, "$set": values},
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
            self._check(inode, expect_version, None)
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
        never moves backwards); a failure may leave part of the batch applied,
        which is harmless for access times."""
        if not atimes:
            return
        with self._errors():
            self.inodes.bulk_write([UpdateOne({"_id": ino}, {"$max": {"atime_ns": t}}) for ino, t in atimes.items()],
                                   ordered=False)
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
    def switch(self, ino, expect_version, expect_states, changes, garbage, event, job_id=None) -> Inode:
        """Transaction: compare-and-swap on (data_version, state) + garbage +
        history event + the job's dst_key cleared."""
        expect_states = list(expect_states)
        garbage = list(garbage)

        def fn(s):
            inode = self._get(ino, s)
            self._check(inode, expect_version, expect_states)
            t = now_ns()
            ch = dict(changes)
            if "state" in ch and ch["state"] != inode.state:
                cause, detail = event
                ch["state_ns"] = t
                ch.setdefault("state_cause", cause)
                self._event(s, ino, inode.state, ch["state"], cause, detail)
            self._set(ino, s, **ch)
            self._add_garbage(s, garbage, event[0])
            if job_id is not None:
                self.jobs_c.update_one({"_id": job_id}, {"$set": {"dst_key": None, "updated_ns": t}}, session=s)
            return inode.copy(**ch)
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

    # ---- jobs --------------------------------------------------------------
    def enqueue(self, ino, kind, *, target_tier=None, keep_online=False, cause="") -> tuple[Job, bool]:
        """Single-document insert; the partial unique index "one_active"
        (ino, kind while pending/running) makes coalescing atomic: when two
        mounts queue the same job at once, one insert fails and returns the
        other's job."""
        kind = JobKind(kind)
        with self._errors():
            for _ in range(10):
                doc = self.jobs_c.find_one({"ino": ino, "kind": kind.value, "state": {"$in": ACTIVE}})
                if doc is not None:
                    return _job(doc), False
                t = now_ns()
                values = dict(_id=self._next("job"), ino=ino, kind=kind.value, state=JobState.PENDING.value,
                              priority=JOB_PRIORITY[kind], target_tier=target_tier, keep_online=keep_online,
                              cause=cause, session=None, attempts=0, not_before_ns=0, last_error="", dst_key=None,
                              created_ns=t, updated_ns=t)
                try:
                    self.jobs_c.insert_one(values)
                except DuplicateKeyError:
                    continue  # another mount queued it just now: return theirs
                return _job(values), True
        raise errors.CatalogUnavailable(f"catalog {safe_url(self.url)}: enqueue of inode {ino} kept racing")

    def claim(self, session, kinds=None, busy_tiers=()) -> Job | None:
        """Single-document atomic find_one_and_update (pending -> running):
        two mounts never get the same job."""
        t = now_ns()
        filt: dict = {"state": JobState.PENDING.value, "not_before_ns": {"$lte": t}}
        if kinds is not None:
            filt["kind"] = {"$in": [JobKind(k).value for k in kinds]}
        busy = list(busy_tiers)
        if busy:
            filt["target_tier"] = {"$nin": busy}  # also matches null (no target)
        with self._errors():
            doc = self.jobs_c.find_one_and_update(
                filt, {"$set": {"state": JobState.RUNNING.value, "session": session, "updated_ns": t},
                       "$inc": {"attempts": 1}},
                sort=[("priority", 1), ("_id", 1)], return_document=ReturnDocument.AFTER)
        return _job(doc) if doc else None

    def update_job(self, job_id, changes) -> None:
        """Single-document update."""
        changes = {k: (v.value if isinstance(v, (JobKind, JobState)) else v) for k, v in changes.items()}
        with self._errors():
            self.jobs_c.update_one({"_id": job_id}, {"$set": dict(changes, updated_ns=now_ns())})

    def finish_job(self, job_id, state, error="") -> None:
        """Single-document update."""
        with self._errors():
            self.jobs_c.update_one({"_id": job_id}, {"$set": {
                "state": JobState(state).value, "session": None, "last_error": error, "updated_ns": now_ns()}})

    def retry_job(self, job_id, error, delay_s) -> None:
        """Single-document update (back to pending, not before now + delay)."""
        t = now_ns()
        with self._errors():
            try:
                self.jobs_c.update_one({"_id": job_id}, {"$set": {
                    "state": JobState.PENDING.value, "session": None, "last_error": error,
                    "not_before_ns": t + int(delay_s * 1e9), "updated_ns": t}})
            except DuplicateKeyError:
                # An operator retried a failed job while a new one is active: that one covers it.
                raise errors.Exists(f"job {job_id}: another job for the same file is already queued") from None

    def get_job(self, job_id) -> Job:
        with self._errors():
            doc = self.jobs_c.find_one({"_id": job_id})
        if doc is None:
            raise errors.NotFound(f"job {job_id}")
        return _job(doc)

    def jobs(self, states=None, ino=None, limit=1000) -> list[Job]:
        filt: dict = {}
        if states is not None:
            filt["state"] = {"$in": [JobState(x).value for x in states]}
        if ino is not None:
            filt["ino"] = ino
        with self._errors():
            return [_job(d) for d in self.jobs_c.find(filt).sort([("priority", 1), ("_id", 1)]).limit(limit)]

    def cancel_jobs(self, job_ids=None, *, kind=None) -> int:
        """One update_many; each job changes atomically (pending only)."""
        filt: dict = {"state": JobState.PENDING.value}
        if job_ids is not None:
            filt["_id"] = {"$in": list(job_ids)}
        if kind is not None:
            filt["kind"] = JobKind(kind).value
        with self._errors():
            return self.jobs_c.update_many(filt, {"$set": {"state": JobState.CANCELLED.value,
                                                           "last_error": "cancelled",
                                                           "updated_ns": now_ns()}}).modified_count

    # ---- sessions ----------------------------------------------------------
    def register_session(self, session: Session) -> None:
        d = dict(session.__dict__)
        d["_id"] = d.pop("id")
        with self._errors():
            self.sessions_c.insert_one(d)

    def heartbeat(self, session_id: str) -> None:
        """Single-document update."""
        with self._errors():
            self.sessions_c.update_one({"_id": session_id}, {"$set": {"heartbeat_ns": now_ns()}})

    def _release_session(self, s, sid: str, error: str = "") -> None:
        """Its running jobs back to pending and its leases freed (in the caller's transaction)."""
        t = now_ns()
        upd = {"state": JobState.PENDING.value, "session": None, "updated_ns": t}
        if error:
            upd["last_error"] = error
        self.jobs_c.update_many({"session": sid, "state": JobState.RUNNING.value}, {"$set": upd}, session=s)
        self.leases.delete_many({"holder": sid}, session=s)

    def end_session(self, session_id: str, clean: bool = True) -> None:
        """Transaction: session marked + its jobs requeued + its leases freed."""
        def fn(s):
            self.sessions_c.update_one({"_id": session_id}, {"$set": {"clean": clean, "heartbeat_ns": now_ns()}},
                                       session=s)
            self._release_session(s, session_id)
        self._txn(fn)

    def sessions(self) -> list[Session]:
        with self._errors():
            return [_session(d) for d in self.sessions_c.find().sort("started_ns", 1)]

    def reap_sessions(self, older_than_ns: int) -> list[str]:
        """One transaction per stale session: marked clean (only one mount
        wins it), its running jobs back to pending, its leases freed."""
        with self._errors():
            stale = [d["_id"] for d in self.sessions_c.find(
                {"clean": False, "heartbeat_ns": {"$lt": older_than_ns}}, {"_id": 1})]
        reaped = []
        for sid in stale:
            def fn(s, sid=sid):
                r = self.sessions_c.update_one({"_id": sid, "clean": False, "heartbeat_ns": {"$lt": older_than_ns}},
                                               {"$set": {"clean": True}}, session=s)
                if r.modified_count != 1:
                    return False
                self._release_session(s, sid, f"session {sid} died")
                return True
            if self._txn(fn):
                reaped.append(sid)
        return reaped

    # ---- queries -----------------------------------------------------------
    @staticmethod
    def _filter(q: FileQuery, paging: bool = True) -> dict:
        """The inode-field part of q as a MongoDB filter (`under` and
        `name_glob` are namespace conditions: see _name_rows)."""
        f: dict = {"nlink": {"$gt": 0}}
        if q.states is not None:
            f["state"] = {"$in": [State(x).value for x in q.states]}
        if q.regular_only:
            f["mode"] = {"$bitsAllSet": REG_SET, "$bitsAllClear": REG_CLEAR}
        for field_, val, op in (("tier", q.tier, "$eq"), ("archive_tier", q.archive_tier, "$eq"),
                                ("size", q.min_size, "$gte"), ("size", q.max_size, "$lte"),
                                ("atime_ns", q.atime_before_ns, "$lt"), ("crtime_ns", q.crtime_before_ns, "$lt"),
                                ("mtime_ns", q.mtime_before_ns, "$lt"), ("uid", q.uid, "$eq"),
                                ("gid", q.gid, "$eq")):
            if val is not None:
                f.setdefault(field_, {})[op] = val
        if paging and not q.order_by_atime and q.after_ino:
            f["_id"] = {"$gt": q.after_ino}
        return f

    @staticmethod
    def _by_name(q: FileQuery) -> bool:
        return getattr(q, "under", None) is not None or getattr(q, "name_glob", None) is not None

    def _subtree_dirs(self, top: int) -> list[int]:
        """`top` and every directory below it (breadth first, one
        aggregation per level and 1000 parents)."""
        dirs, frontier = [top], [top]
        while frontier:
            nxt = []
            for i in range(0, len(frontier), 1000):
                nxt += [d["ino"] for d in self.dentries.aggregate([
                    {"$match": {"parent": {"$in": frontier[i:i + 1000]}}},
                    {"$lookup": {"from": "inodes", "localField": "ino", "foreignField": "_id", "as": "i",
                                 "pipeline": [{"$project": {"mode": 1}}]}},
                    {"$match": {"i.mode": {"$bitsAllSet": DIR_SET, "$bitsAllClear": DIR_CLEAR}}},
                    {"$project": {"ino": 1}}])]
            dirs += nxt
            frontier = nxt
        return dirs

    def _name_rows(self, q: FileQuery) -> Iterator[tuple[int, bytes, dict]]:
        """(parent, name, inode document) of every name of every inode
        matching q, `under` and `name_glob` included. Without them the scan
        starts from the inodes (indexed filter) and joins their names; with
        them it starts from the names below `under` (or all names) and joins
        the inodes. Globs are matched here: names are binary."""
        under, glob = getattr(q, "under", None), getattr(q, "name_glob", None)
        inode_match = {f"i.{k}": v for k, v in self._filter(q, paging=False).items()}
        if under is None and glob is None:
            pipe = [{"$match": self._filter(q, paging=False)},
                    {"$lookup": {"from": "dentries", "localField": "_id", "foreignField": "ino", "as": "d"}},
                    {"$unwind": "$d"}]
            for r in self.inodes.aggregate(pipe):
                d = r.pop("d")
                yield d["parent"], d["name"], r
            return
        join = [{"$lookup": {"from": "inodes", "localField": "ino", "foreignField": "_id", "as": "i"}},
                {"$match": inode_match}, {"$unwind": "$i"}]
        if under is None:
            batches = [[{"$match": {}}]]
        else:
            parents = self._subtree_dirs(under)
            batches = [[{"$match": {"parent": {"$in": parents[i:i + 1000]}}}] for i in range(0, len(parents), 1000)]
        for first in batches:
            for r in self.dentries.aggregate(first + join):
                if glob is not None and not fnmatch.fnmatchcase(r["name"], glob):
                    continue
                yield r["parent"], r["name"], r["i"]

    def query(self, q: FileQuery) -> Iterator[Inode]:
        """Indexed find (with `under`/`name_glob`: the names below, joined
        with their inodes); rows_read counts the documents returned."""
        with self._errors():
            if self._by_name(q):
                seen = {}
                for _, _, doc in self._name_rows(q):
                    seen.setdefault(doc["_id"], doc)
                docs = [d for d in seen.values() if q.order_by_atime or d["_id"] > q.after_ino]
                docs.sort(key=(lambda d: (d["atime_ns"], d["_id"])) if q.order_by_atime else (lambda d: d["_id"]))
                docs = docs[:q.limit] if q.limit is not None else docs
            else:
                sort = [("atime_ns", 1), ("_id", 1)] if q.order_by_atime else [("_id", 1)]
                cur = self.inodes.find(self._filter(q)).sort(sort)
                if q.limit is not None:
                    cur = cur.limit(q.limit)
                docs = list(cur)
        self.rows_read += len(docs)
        for d in docs:
            yield _inode(d)

    def query_names(self, q: FileQuery) -> Iterator[tuple[int, bytes, int]]:
        """(parent, name, ino) per name; one aggregation (see _name_rows)."""
        with self._errors():
            rows = [(p, n, d["_id"]) for p, n, d in self._name_rows(q)]
        self.rows_read += len(rows)
        yield from rows

    def paths_of(self, inos: Iterable[int], cache: dict[int, bytes] | None = None) -> dict[int, bytes]:
        """Names fetched level by level ({ino: {$in: ...}} on the ino index),
        directories' paths kept in `cache`."""
        cache = {} if cache is None else cache
        cache[ROOT_INO] = b""
        want = set(inos)
        names: dict[int, tuple[int, bytes]] = {}   # ino -> (parent, name)
        todo = [i for i in want if i not in cache]
        with self._errors():
            for _ in range(10000):
                if not todo:
                    break
                for i in range(0, len(todo), 1000):
                    for d in self.dentries.find({"ino": {"$in": todo[i:i + 1000]}}, {"ino": 1, "parent": 1, "name": 1}):
                        names.setdefault(d["ino"], (d["parent"], d["name"]))
                todo = list({p for p, _ in names.values() if p not in cache and p not in names})

        def resolve(ino: int) -> bytes | None:
            chain = []
            while ino not in cache:
                if ino not in names or len(chain) > 10000:
                    return None
                chain.append(ino)
                ino = names[ino][0]
            path = cache[ino]
            for i in reversed(chain):
                parent, name = names[i]
                path = path + b"/" + name if path else name
                if i not in want:
                    cache[i] = path  # a directory on the way
            return path
        out = {}
        for ino in want:
            p = cache[ino] if ino in cache else resolve(ino)
            if p is not None:
                out[ino] = p
        return out

    def count_by(self, q: FileQuery, by: str) -> dict:
        """One $group aggregation over the matching inodes (each once)."""
        if by not in COUNT_BY_FIELDS:
            raise errors.Invalid(f"cannot count by {by!r} (one of {', '.join(COUNT_BY_FIELDS)})")
        out: dict = {}
        with self._errors():
            if self._by_name(q):
                seen = {}
                for _, _, doc in self._name_rows(q):
                    seen[doc["_id"]] = doc
                for d in seen.values():
                    n, b = out.get(d.get(by), (0, 0))
                    out[d.get(by)] = (n + 1, b + d["size"])
                return out
            for r in self.inodes.aggregate([{"$match": self._filter(q, paging=False)},
                                            {"$group": {"_id": f"${by}", "n": {"$sum": 1}, "b": {"$sum": "$size"}}}]):
                out[r["_id"]] = (r["n"], int(r["b"]))
        return out

    def stats(self) -> CatalogStats:
        st = CatalogStats()
        reg = {"nlink": {"$gt": 0}, "mode": {"$bitsAllSet": REG_SET, "$bitsAllClear": REG_CLEAR}}
        grp = {"n": {"$sum": 1}, "b": {"$sum": "$size"}}
        with self._errors():
            for field_, out in (("state", st.by_state), ("tier", st.by_tier), ("archive_tier", st.by_archive)):
                match = dict(reg)
                if field_ != "state":
                    match[field_] = {"$ne": None}
                for r in self.inodes.aggregate([{"$match": match}, {"$group": {"_id": f"${field_}", **grp}}]):
                    out[r["_id"]] = (r["n"], int(r["b"]))
            for r in self.jobs_c.aggregate([{"$group": {"_id": {"s": "$state", "k": "$kind"}, "n": {"$sum": 1}}}]):
                st.jobs.setdefault(r["_id"]["s"], {})[r["_id"]["k"]] = r["n"]
        return st

    # ---- meta / leases -----------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._errors():
            d = self.meta.find_one({"_id": key})
        return d["value"] if d else None

    def set_meta(self, key: str, value: str) -> None:
        """Single-document upsert."""
        with self._errors():
            self.meta.update_one({"_id": key}, {"$set": {"value": value}}, upsert=True)

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Single-document upsert whose filter matches only a lease that is
        ours or expired; a live lease of another holder makes the upsert's
        insert fail on _id, so exactly one contender wins."""
        t = now_ns()
        with self._errors():
            try:
                self.leases.update_one({"_id": name, "$or": [{"holder": holder}, {"expires_ns": {"$lte": t}}]},
                                       {"$set": {"holder": holder, "expires_ns": t + int(ttl_s * 1e9)}}, upsert=True)
            except DuplicateKeyError:
                return False
        return True


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
