"""docs/SHARDING.md against what the MongoDB catalog really sends (issue 20 item 5).

No mongos can be had here (the document says what was checked), so the plan
is checked on one replica set: every catalog conformance test runs on a
fresh MongoDB catalog with pymongo command monitoring on, each command is
attributed to the catalog method the test called, and

- every collection the catalog has made is in the plan's shard-key table;
- every command on a collection the plan shards names the shard key's first
  field (equality or $in), or its (collection, method) is in the plan's
  scatter-gather table;
- a single-document write there that names neither the shard key nor _id
  (mongos 6.0 refuses it), or an upsert without the shard key (refused on
  every version), is in that table as "must change";
- an insert there carries the shard key field;
- the tables name only collections and catalog methods that exist.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import uuid

import pymongo.monitoring
import pytest

from tierfs.catalog import mongo_query

from . import test_conformance

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "SHARDING.md")
CATALOG_DIR = os.path.join(ROOT, "tierfs", "catalog") + os.sep
#: commands that read or write no documents of a collection (administration, cursors, transactions)
IGNORED = {"createIndexes", "listIndexes", "create", "listCollections", "commitTransaction", "abortTransaction",
           "endSessions", "hello", "ismaster", "isMaster", "ping", "dropIndexes", "drop", "dropDatabase",
           "killCursors", "getMore", "buildInfo", "replSetGetStatus"}


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped of backticks) of the first Markdown table after `heading`."""
    part = text.split(heading, 1)[1]
    rows = []
    for line in part.splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip().replace("`", "") for c in line.strip().strip("|").split("|")]
        if set(cells[0]) <= {"-"} or cells[0] == "collection":
            continue
        rows.append(cells)
    return rows


def load_plan() -> tuple[dict[str, list[str] | None], dict[tuple[str, str], str]]:
    """({collection: shard key fields, or None if unsharded}, {(collection, method): status})."""
    with open(DOC) as f:
        text = f.read()
    keys: dict[str, list[str] | None] = {}
    for cells in _table(text, "## Shard keys"):
        key = cells[1]
        keys[cells[0]] = None if key == "unsharded" else [re.sub(r"\s*\(hashed\)", "", k).strip()
                                                           for k in key.split(",")]
    scatter = {(c[0], c[1]): c[2] for c in _table(text, "## Scatter-gather queries")}
    return keys, scatter


def _caller() -> str:
    """The outermost tierfs/catalog frame's function: the catalog method the test called."""
    f = sys._getframe(2)
    name = None
    while f is not None:
        if f.f_code.co_filename.startswith(CATALOG_DIR):
            name = f.f_code.co_name
        f = f.f_back
    return name or "?"


def _values_targeted(cond) -> bool:
    """An equality or $in on a field: mongos can route it to the shards that own the values."""
    if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
        return set(cond) <= {"$eq", "$in"}
    return True


def _targeted(filt: dict, field: str) -> bool:
    if field in filt:
        return _values_targeted(filt[field])
    if "$and" in filt:
        return any(_targeted(f, field) for f in filt["$and"])
    if "$or" in filt:
        return all(_targeted(f, field) for f in filt["$or"])
    return False


class Recorder(pymongo.monitoring.CommandListener):
    """A pymongo CommandListener filing each command under (collection, catalog method)."""

    def __init__(self, db: str):
        self.db = db
        self.untargeted: dict[tuple[str, str], str] = {}   # (collection, method) -> an example
        self.reached: set[tuple[str, str]] = set()         # (collection, method) of every command checked
        self.refused: dict[tuple[str, str], str] = {}      # single-document writes mongos 6.0 refuses
        self.bad_inserts: dict[tuple[str, str], str] = {}
        self.collections: set[str] = set()
        self.keys: dict[str, list[str] | None] = {}
        self.errors: list[str] = []
        self.active = False

    # pymongo.monitoring.CommandListener
    def started(self, event) -> None:
        if not self.active or event.database_name != self.db or event.command_name in IGNORED:
            return
        cmd = event.command
        coll = cmd.get(event.command_name)
        if not isinstance(coll, str):
            return
        try:
            self.collections.add(coll)
            method = _caller()
            self._check(coll, event.command_name, cmd, method)
            for stage in cmd.get("pipeline", []) if event.command_name == "aggregate" else []:
                for op in ("$lookup", "$graphLookup"):
                    lk = stage.get(op)
                    if lk:   # a join runs a query on `from` per document: targeted when it joins on the key
                        field = lk.get("foreignField") or lk.get("connectToField") or "(a pipeline)"
                        self.collections.add(lk["from"])
                        self._check(lk["from"], "find", {"filter": {field: {"$in": []}}}, method)
        except Exception as e:  # noqa: BLE001 - pymongo only logs a listener's exception: keep it for the test
            self.errors.append(f"{event.command_name} {cmd!r:.200}: {e!r}")

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass

    def _check(self, coll: str, name: str, cmd: dict, method: str) -> None:
        key = self.keys.get(coll)
        if not key:
            return
        field = key[0]
        where = (coll, method)
        self.reached.add(where)
        if name == "insert":
            for d in cmd.get("documents", []):
                if not all(k in d for k in key):
                    self.bad_inserts[where] = repr(d)[:200]
            return
        if name == "find":
            filters = [(cmd.get("filter", {}), False, False)]
        elif name == "aggregate":
            first = (cmd.get("pipeline") or [{}])[0]
            filters = [(first.get("$match", {}), False, False)]
        elif name == "update":
            filters = [(u["q"], not u.get("multi"), bool(u.get("upsert"))) for u in cmd["updates"]]
        elif name == "delete":
            filters = [(d["q"], d.get("limit") == 1, False) for d in cmd["deletes"]]
        elif name == "findAndModify":
            filters = [(cmd.get("query", {}), True, bool(cmd.get("upsert")))]
        elif name in ("distinct", "count"):
            filters = [(cmd.get("query", {}), False, False)]
        else:
            filters = [({}, False, False)]
        for filt, single, upsert in filters:
            if _targeted(filt, field):
                continue
            self.untargeted.setdefault(where, f"{name} {filt!r}"[:200])
            if upsert or (single and not _targeted(filt, "_id")):
                self.refused.setdefault(where, f"{name} {filt!r}"[:200])


def _conformance_tests():
    return [(n, f) for n, f in inspect.getmembers(test_conformance, inspect.isfunction)
            if n.startswith("test_") and list(inspect.signature(f).parameters) == ["catalog"]]


@pytest.fixture(scope="module")
def recorded(mongod):
    """Every catalog conformance test run once on MongoDB, recorded. The
    helpers that read ahead in threads (base.fetch_ahead, base.map_ahead)
    run inline here: a command is filed under the catalog method on its
    thread's stack, and the threads change when commands are sent, not which."""
    from tierfs.catalog.mongo import MongoCatalog
    keys, _ = load_plan()
    db = "shardplan_" + uuid.uuid4().hex[:8]
    rec = Recorder(db)
    rec.keys = keys
    pymongo.monitoring.register(rec)   # global, for clients made from now on; inactive after this fixture
    ran = []
    inline = pytest.MonkeyPatch()
    inline.setattr(mongo_query, "fetch_ahead", lambda batches, ahead=2: batches)
    inline.setattr(mongo_query, "map_ahead", lambda fn, items, workers=2: (fn(i) for i in items))
    try:
        for name, fn in _conformance_tests():
            cat = MongoCatalog(mongod.url(db))
            try:
                cat.client.drop_database(db)
                cat.init()
                rec.active = True
                fn(cat)
                ran.append(name)
            finally:
                rec.active = False
                cat.client.drop_database(db)
                cat.close()
    finally:
        rec.active = False
        inline.undo()
    rec.ran = ran
    return rec


def test_the_plan_names_real_collections_and_methods():
    keys, scatter = load_plan()
    from tierfs.catalog.mongo import MongoCatalog
    methods = {n for n in dir(MongoCatalog) if not n.startswith("_")}
    assert "inodes" in keys and "dentries" in keys and keys["inodes"] == ["_id"]
    assert not [c for c, _ in scatter if c not in keys], "scatter-gather rows on collections the plan lacks"
    assert not [c for c, _ in scatter if keys.get(c) is None], "scatter-gather rows on unsharded collections"
    assert not [m for _, m in scatter if m not in methods], "scatter-gather rows naming no catalog method"
    assert set(scatter.values()) <= {"by design", "must change"}


def test_every_collection_has_a_shard_key_in_the_plan(recorded, mongod):
    keys, _ = load_plan()
    assert len(recorded.ran) >= 30, recorded.ran
    missing = sorted(recorded.collections - set(keys))
    assert not missing, f"collections the catalog uses that docs/SHARDING.md does not shard or list: {missing}"


def test_every_untargeted_query_is_a_documented_scatter_gather(recorded):
    _, scatter = load_plan()
    undocumented = {k: v for k, v in recorded.untargeted.items() if k not in scatter}
    assert not undocumented, ("queries on sharded collections without their shard key, not in docs/SHARDING.md's "
                              f"scatter-gather table: {undocumented}")


def test_writes_mongos_refuses_are_marked_must_change(recorded):
    _, scatter = load_plan()
    wrong = {k: v for k, v in recorded.refused.items() if scatter.get(k) != "must change"}
    assert not wrong, f"single-document writes without the shard key or _id (or upserts without the shard key): {wrong}"


def test_inserts_carry_the_shard_key(recorded):
    assert not recorded.bad_inserts, recorded.bad_inserts


def test_the_recorder_understood_every_command(recorded):
    assert not recorded.errors, recorded.errors[:5]


def test_must_change_rows_are_still_needed(recorded):
    """A "must change" row whose (collection, method) the suite reached sends an untargeted command
    still: once the code names the shard key there, the row goes (or becomes "by design")."""
    _, scatter = load_plan()
    stale = sorted(k for k, status in scatter.items()
                   if status == "must change" and k in recorded.reached and k not in recorded.untargeted)
    assert not stale, f"docs/SHARDING.md lists as must change what now names the shard key: {stale}"
