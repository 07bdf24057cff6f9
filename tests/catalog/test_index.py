"""The (state, last_access_ns, size) index behind policy candidate
selection, on every catalog backend: a fresh catalog has it, a catalog made
by the tierfs of schema version 1 (atime only, a (state, atime_ns, size)
index) is migrated when opened, and the policy query uses the index so that
only the candidates are fetched.

The synthetic catalog: 4,000 files, 1% candidates (online, neither accessed
nor modified for 90 days, >= 256 MiB). Of the rest, 10% are old and half
are big, so the last-access range of the index holds ~10x the candidates
and the size range ~50x: fetching more than the candidates shows. Each
file's last access is its atime or its mtime (the other is older), at
random."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import sqlite3
import time

import pytest
from bson import json_util

from bench.catalog_scale import examined_sql, sqlite_reads_rows, sqlite_rows_fetched
from tierfs import errors
from tierfs.catalog import open_catalog
from tierfs.catalog import base
from tierfs.catalog.base import ROOT_INO, SCHEMA_VERSION, FileQuery, Inode, Session, State, now_ns

NEW_SQL, V1_SQL = "ix_inodes_state_last_access_size", "ix_inodes_state_atime_size"
NEW_MONGO, V1_MONGO = "state_last_access_size_id", "state_atime_size"
NEW_FIELDS = ["state", "last_access_ns", "size"]
#: A policy rule's candidates (version 6): one last-access range per size class, then every field a policy
#: decision reads (base.Candidate); MongoDB's with the inode number after the size, SQLite's rowid ends it
CLASS_SQL, CLASS_MONGO = "ix_inodes_candidates", "candidates"
CLASS_FIELDS = ["state", "size_class", "last_access_ns", "size"]
CANDIDATE_REST = ["mode", "nlink", "uid", "gid", "mtime_ns", "crtime_ns", "tier", "archive_tier", "archive_location",
                  "archive_copies", "data_version"]
DAY_NS = 86400 * 10**9
BIG = 256 << 20
N, CANDIDATES = 4000, 40
V1 = os.path.join(os.path.dirname(__file__), "..", "data", "catalog_v1")
T0 = 1_767_225_600 * 10**9   # 2026-01-01 00:00 UTC: V1's times are relative to it (make.py)


def backend(cat) -> str:
    return "mongo" if hasattr(cat, "db") else "sqlite"


# ---- the catalog's indexes as stored ----------------------------------------------
def inode_indexes(cat) -> dict[str, list[str]]:
    """Index name -> its fields, as the database has them."""
    if backend(cat) == "mongo":
        return {name: [k for k, _ in ix["key"]] for name, ix in cat.inodes.index_information().items()}
    with contextlib.closing(cat.connect()) as c:
        names = [r[1] for r in c.execute("PRAGMA index_list(inodes)") if not r[1].startswith("sqlite_")]
        return {n: [r[2] for r in c.execute(f"PRAGMA index_info({n})")] for n in names}


def with_number(cat, fields: list[str]) -> list[str]:
    """The policy indexes' fields: MongoDB's end with the inode number (_id), for the covered first
    step of a rule's query; SQLite's hold it anyway (the rowid ends every index entry)."""
    return fields + ["_id"] if backend(cat) == "mongo" else fields


def test_a_fresh_catalog_has_the_index_and_not_the_previous_ones(catalog):
    ix = inode_indexes(catalog)
    assert ix.get(NEW_MONGO if backend(catalog) == "mongo" else NEW_SQL) == with_number(catalog, NEW_FIELDS), ix
    backlog = ["state", "_id" if backend(catalog) == "mongo" else "ino"]   # partial: files without a checksum
    # query_names by state alone walks (state, ino, nlink, mode) (issue 20)
    by_state = [["state", "_id" if backend(catalog) == "mongo" else "ino", "nlink", "mode"]]
    assert sorted(f for f in ix.values() if f[0] == "state") == sorted([with_number(catalog, NEW_FIELDS),
                                                                        with_number(catalog, CLASS_FIELDS)
                                                                        + CANDIDATE_REST,
                                                                        with_number(catalog, ["state", "size"]), backlog,
                                                                        *by_state]), ix


# ---- migration from schema version 1 -------------------------------------------------
def load_v1(url: str) -> None:
    """The catalog tests/data/catalog_v1/make.py made with the tierfs of
    schema version 1, restored at `url` as that tierfs left it."""
    if url.startswith("sqlite"):
        con = sqlite3.connect(url.split("///", 1)[1])
        with open(os.path.join(V1, "sqlite.sql")) as f:
            con.executescript(f.read())
        con.close()
        return
    cat = open_catalog(url)
    with open(os.path.join(V1, "mongo.json")) as f:
        dump = json_util.loads(f.read())
    for name, coll in dump.items():
        if coll["documents"]:
            cat.db[name].insert_many(coll["documents"])
        for ix_name, ix in coll["indexes"].items():
            opts = {k: v for k, v in ix.items() if k not in ("key", "v", "ns")}
            cat.db[name].create_index(ix["key"], name=ix_name, **opts)
    cat.close()


def stored_last_access(cat) -> dict[bytes, int]:
    """File name -> last_access_ns as stored (what the index holds)."""
    if backend(cat) == "mongo":
        names = {d["ino"]: bytes(d["name"]) for d in cat.dentries.find()}
        return {names[d["_id"]]: d["last_access_ns"] for d in cat.inodes.find() if d["_id"] in names}
    with contextlib.closing(cat.connect()) as c:
        return {bytes(n): t for n, t in c.execute(
            "SELECT d.name, i.last_access_ns FROM inodes i JOIN dentries d ON d.ino = i.ino")}


def stored_size_classes(cat) -> dict[int, tuple[int, int]]:
    """Inode number -> (size, size_class) as stored (what the index holds)."""
    if backend(cat) == "mongo":
        return {d["_id"]: (d["size"], d["size_class"]) for d in cat.inodes.find({}, {"size": 1, "size_class": 1})}
    with contextlib.closing(cat.connect()) as c:
        return {ino: (size, k) for ino, size, k in c.execute("SELECT ino, size, size_class FROM inodes")}


def test_a_catalog_of_schema_version_1_is_migrated_when_opened(catalog_url):
    load_v1(catalog_url)
    cat = open_catalog(catalog_url)
    try:
        assert cat.schema_version() == 1
        ix = inode_indexes(cat)
        new, v1 = (NEW_MONGO, V1_MONGO) if backend(cat) == "mongo" else (NEW_SQL, V1_SQL)
        assert ix.get(v1) == ["state", "atime_ns", "size"] and new not in ix, ix
        cat.init()  # what a mount, fsck, a policy run or a catalog-reading command does
        assert cat.schema_version() == SCHEMA_VERSION == 7
        # version 4: the running totals, filled from the files the old catalog has
        assert cat.totals() == cat.scan_totals() and sum(n for n, _ in cat.totals().values()) >= 3
        ix = inode_indexes(cat)
        assert ix.get(new) == with_number(cat, NEW_FIELDS) and v1 not in ix, ix
        logs = cat.lookup(ROOT_INO, b"logs")
        expected = {b"app.log": T0 - 60 * 10**9, b"old.log": T0 - 200 * DAY_NS, b"read.log": T0 - DAY_NS}
        got = stored_last_access(cat)
        assert {k: got[k] for k in expected} == expected
        assert got[b"logs"] == cat.get(logs.ino).last_access_ns   # directories too
        inactive = FileQuery(states=(State.ONLINE,), last_access_before_ns=T0 - 90 * DAY_NS)
        assert [i.ino for i in cat.query(inactive)] == [cat.lookup(logs.ino, b"old.log").ino]
        lru = [i.ino for i in cat.query(FileQuery(states=(State.ONLINE,), order_by_last_access=True, limit=3))]
        assert lru == [cat.lookup(logs.ino, n).ino for n in (b"old.log", b"read.log", b"app.log")]
        # Writes after the migration keep it up to date.
        app = cat.lookup(logs.ino, b"app.log")
        cat.update(app.ino, {"mtime_ns": T0 - 100 * DAY_NS})
        assert stored_last_access(cat)[b"app.log"] == T0 - 100 * DAY_NS
        assert {i.ino for i in cat.query(inactive)} == {app.ino, cat.lookup(logs.ino, b"old.log").ino}
        # version 5: every inode's size class, kept with its size; version 6: the candidates index
        assert ix.get(CLASS_MONGO if backend(cat) == "mongo" else CLASS_SQL) == \
            with_number(cat, CLASS_FIELDS) + CANDIDATE_REST, ix
        assert not {"ix_inodes_state_size_class", "state_size_class_last_access_id"} & set(ix), ix
        stored = stored_size_classes(cat)
        assert stored == {ino: (size, base.size_class(size)) for ino, (size, _) in stored.items()} and len(stored) >= 4
        cat.update(app.ino, {"size": 300 << 20})
        assert stored_size_classes(cat)[app.ino] == (300 << 20, 29)
        big_old = FileQuery(states=(State.ONLINE,), min_size=BIG, last_access_before_ns=T0 - 90 * DAY_NS)
        assert [i.ino for i in cat.query(big_old)] == [app.ino] == [c.ino for c in cat.candidates(big_old)]
        cat.init()  # again: nothing left to do, nothing breaks
        assert inode_indexes(cat) == ix and cat.schema_version() == SCHEMA_VERSION
    finally:
        cat.close()


def test_a_newer_catalog_is_refused(catalog):
    catalog.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(errors.ConfigError, match=f"catalog schema version {SCHEMA_VERSION + 1} is newer than "
                       f"this tierfs \\({SCHEMA_VERSION}\\); upgrade tierfs"):
        catalog.init()


def test_mongo_migration_waits_for_the_older_tierfs_to_unmount(mongod):
    """An older tierfs still mounted would write times without last_access_ns:
    the upgrade is refused, naming it, and the catalog is left as it was."""
    url = mongod.url("v1live")
    load_v1(url)
    cat = open_catalog(url)
    try:
        cat.register_session(Session(id="old", host="h1", pid=4242, mountpoint="/mnt/lab", started_ns=now_ns(),
                                     heartbeat_ns=now_ns()))
        with pytest.raises(errors.ConfigError, match=r"catalog schema version 1 is in use by an older tierfs "
                           r"mounted on /mnt/lab \(pid 4242 on h1\); unmount it"):
            cat.init()
        assert cat.schema_version() == 1 and V1_MONGO in inode_indexes(cat)
        assert cat.inodes.count_documents({"last_access_ns": {"$exists": True}}) == 0
        cat.end_session("old")
        cat.init()
        assert cat.schema_version() == SCHEMA_VERSION and cat.inodes.count_documents({"last_access_ns": {"$exists": False}}) == 0
    finally:
        cat.close()


@pytest.mark.parametrize("deadline", ["socketTimeoutMS", "timeoutMS"])
def test_mongo_upgrade_calls_outlast_the_socket_timeout(mongod, deadline):
    """An upgrade's calls run over every inode (10M: minutes each), longer than the client's socket
    timeout: they go through init's schema client (MIGRATION_DEADLINE_S). Here the URL's socket timeout
    (or its whole-operation deadline, timeoutMS) is 200 ms and the version 2 and 5 updates of 150,000
    inodes take longer."""
    from tierfs.catalog import mongo
    url = mongod.url("v1big" + deadline.lower())
    load_v1(url)
    cat = open_catalog(url)
    try:
        tpl = {k: v for k, v in cat.inodes.find_one({"mode": {"$gte": 0o100000}}).items() if k != "_id"}
        for lo in range(10_000, 160_000, 50_000):
            cat.inodes.insert_many([{**tpl, "_id": i} for i in range(lo, lo + 50_000)])
    finally:
        cat.close()
    slow = open_catalog(url + f"&{deadline}=200")
    try:
        # the premise: one pass over the inodes outlasts the deadline of the catalog's own client
        with pytest.raises(errors.CatalogUnavailable, match="timed out|exceeded time limit"), slow._errors():
            list(slow.inodes.aggregate([{"$group": {"_id": None, "n": {"$sum": mongo.SIZE_CLASS}}}]))
        t0 = time.monotonic()
        slow.init()
        took = time.monotonic() - t0
        assert slow.schema_version() == SCHEMA_VERSION
        assert slow.inodes.count_documents({"size_class": {"$exists": False}}) == 0
        print(f"upgraded 150,000 inodes from version 1 in {took:.1f}s")
    finally:
        slow.close()


def test_each_schema_version_has_its_own_set_of_indexes():
    """init builds indexes under the long deadline only while it upgrades: an index added to
    mongo.INDEXES without a SCHEMA_VERSION step would be built over an existing catalog's documents
    under the 10 s socket timeout. Add the new version's names here when adding one."""
    from tierfs.catalog import mongo
    # 7: no index (MongoDB's dir_stripes are found by _id)
    by_version = {7: {"dentries": {"parent_name", "parent_pos", "ino"},
                      "inodes": {"state_last_access_size_id", "state_size_id", "candidates",
                                 "tier_location", "archive_location", "archive_copies", "no_checksum", "state_id",
                                 "unlinked"},
                      "xattrs": {"ino_name"}, "jobs": {"runnable", "ino_kind_state", "one_active", "dst_key"},
                      "events": {"ino_id"}, "garbage": {"tier_key"}, "sessions": {"live"}, "tombstones": {"ino_id"},
                      "open_files": {"ino_writing", "session"}}}
    have = {coll: {m.document["name"] for m in models} for coll, models in mongo.INDEXES.items()}
    assert have == by_version.get(SCHEMA_VERSION), "an index changed: give it a SCHEMA_VERSION step"


# ---- the policy query --------------------------------------------------------------
def fill(cat, now: int) -> FileQuery:
    """N files, exactly CANDIDATES of them matching the returned query."""
    rng = random.Random(7)
    old = now - 90 * DAY_NS
    cands = set(rng.sample(range(N), CANDIDATES))
    entries = []
    for i in range(N):
        if i in cands:
            state, last, size = State.ONLINE, rng.randrange(old - 10 * DAY_NS, old), rng.randrange(BIG, 1 << 30)
        else:
            while True:
                r = rng.random()
                state = State.ONLINE if r < 0.9 else (State.DUAL if r < 0.95 else State.ARCHIVED)
                last = rng.randrange(old - 10 * DAY_NS, old) if rng.random() < 0.1 else rng.randrange(old, now)
                size = rng.randrange(BIG, 1 << 30) if rng.random() < 0.5 else rng.randrange(1, BIG)
                if not (state == State.ONLINE and last < old and size >= BIG):
                    break
        other = last - rng.randrange(1, 400 * DAY_NS)   # the older of the two times
        atime, mtime = (last, other) if rng.random() < 0.5 else (other, last)
        entries.append((ROOT_INO, b"f%05d" % i, Inode(ino=0, mode=0o100644, uid=0, gid=0, size=size,
                                                      atime_ns=atime, mtime_ns=mtime, ctime_ns=mtime,
                                                      crtime_ns=other, state=state)))
    for k in range(0, N, 500):
        cat.create_many(entries[k:k + 500], now)
    return FileQuery(states=(State.ONLINE,), min_size=BIG, last_access_before_ns=old)


class FindSpy:
    """Stands in for the inodes collection and keeps the cursors of find()."""

    def __init__(self, coll):
        self.coll, self.cursors = coll, []

    def find(self, *a, **kw):
        cur = self.coll.find(*a, **kw)
        self.cursors.append(cur)
        return cur

    def __getattr__(self, name):
        return getattr(self.coll, name)


def examined(cat, q: FileQuery) -> dict:
    """Plan, rows/documents fetched and index entries walked for what the
    catalog reads for q: cat.candidates(q) for a rule's query
    (base.by_range_index), else cat.query(q)."""
    if backend(cat) == "sqlite":
        return examined_sql(cat, q)
    read = cat.candidates if base.by_range_index(q) else cat.query
    spy = cat.inodes = FindSpy(cat.inodes)
    try:
        sum(1 for _ in read(q))
    finally:
        cat.inodes = spy.coll
    # Every find the query sent, explained again: the same filter, projection, sort, hint and limit.
    # The plan is the first's.
    exs = [c.clone().explain() for c in spy.cursors]

    def stages(p):
        return [p["stage"] + (f"({p['indexName']})" if "indexName" in p else "")] + \
            [s for c in [p.get("inputStage")] + p.get("inputStages", []) if c for s in stages(c)]
    win = exs[0]["queryPlanner"]["winningPlan"]
    total = {k: sum(e["executionStats"][k] for e in exs) for k in ("totalDocsExamined", "totalKeysExamined")}
    return {"plan": " <- ".join(stages(win.get("queryPlan", win))), "examined": total["totalDocsExamined"],
            "keys_examined": total["totalKeysExamined"], "finds": len(exs)}


def make_newest(cat, name: str) -> None:
    """Drop and create again an SQLite index: without statistics, SQLite
    breaks ties between equally rated indexes by their order in the schema."""
    with contextlib.closing(cat.connect()) as c:
        sql = c.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
        c.execute(f"DROP INDEX {name}")
        c.execute(sql)


def test_policy_query_reads_the_candidates_from_the_index_alone(catalog):
    cat = catalog
    q = fill(cat, time.time_ns())
    # SQLite: whichever of the state indexes was created last
    for newest in [None] if backend(cat) == "mongo" else [CLASS_SQL, NEW_SQL, "ix_inodes_state_size"]:
        if newest:
            make_newest(cat, newest)
        before = cat.rows_read
        got = list(cat.candidates(q))
        assert len(got) == CANDIDATES and cat.rows_read - before == CANDIDATES
        assert all(i.state == State.ONLINE and i.size >= BIG and i.last_access_ns < q.last_access_before_ns
                   for i in got)
        e = examined(cat, q)
        assert (CLASS_MONGO if backend(cat) == "mongo" else CLASS_SQL) in e["plan"], (newest, e)
        if backend(cat) == "mongo":   # covered, and in the index's order (no blocking sort)
            assert "PROJECTION_COVERED <- IXSCAN" in e["plan"] and not {"FETCH", "SORT"} & set(e["plan"].split()), e
        else:
            assert "TEMP B-TREE" not in e["plan"], e
        assert e["examined"] == 0, e           # no row / document read: the index holds every field
        # one last-access range per size class >= 256 MiB: the index entries walked are the candidates
        # (the whole last-access range holds ~10x; MongoDB counts a seek per class as a key too)
        assert CANDIDATES <= e["keys_examined"] <= CANDIDATES + 2 * 64, e


def test_the_rows_measure_sees_a_statement_that_reads_rows(catalog):
    """What the test above would catch: query(q), which returns whole
    inodes, reads a row / document per match, and the measure counts them."""
    cat = catalog
    q = fill(cat, time.time_ns())
    if backend(cat) == "sqlite":
        stmt, params = cat._query_sql(cat.connect(), q)
        with contextlib.closing(cat.connect()) as c:
            assert sqlite_rows_fetched(c, stmt, params) == CANDIDATES
            assert sqlite_reads_rows(c, stmt, params)
            assert not sqlite_reads_rows(c, *cat.query_statement(q))
    else:
        spy = cat.inodes = FindSpy(cat.inodes)
        try:
            assert len(list(cat.query(q))) == CANDIDATES
        finally:
            cat.inodes = spy.coll
        assert sum(c.clone().explain()["executionStats"]["totalDocsExamined"] for c in spy.cursors) == CANDIDATES


def without_size_in_the_index(cat) -> None:
    """The index without its size: what tierfs had before (state, atime_ns, size)."""
    if backend(cat) == "mongo":
        cat.inodes.drop_index(CLASS_MONGO)
        cat.inodes.drop_index(NEW_MONGO)
        cat.inodes.create_index([("state", 1), ("last_access_ns", 1)], name="state_last_access")
    else:
        with contextlib.closing(cat.connect()) as c:
            c.execute(f"DROP INDEX {CLASS_SQL}")
            c.execute(f"DROP INDEX {NEW_SQL}")
            c.execute("CREATE INDEX ix_inodes_state_last_access ON inodes (state, last_access_ns)")


def test_the_measure_sees_fetches_without_the_size_in_the_index(catalog):
    """The same measure over whole inodes (query) with an index that lacks
    the size fetches every entry of the index range it walks."""
    cat = catalog
    q = fill(cat, time.time_ns())
    without_size_in_the_index(cat)
    assert len(list(cat.query(q))) == CANDIDATES
    e = examined(cat, dataclasses.replace(q, limit=10 * CANDIDATES))   # (a limit: query's, not candidates')
    assert not {NEW_SQL, NEW_MONGO, CLASS_SQL, CLASS_MONGO} & set(re.findall(r"\w+", e["plan"])), e
    # the numbers' step reads the row or document of every entry in the last-access range to test its
    # size (5-10x the candidates), then the candidates' are read again
    assert e["examined"] >= 5 * CANDIDATES, e


def test_watermark_and_size_only_queries_still_use_an_index(catalog):
    """Oldest-first (watermark runs) streams from the last-access index; a
    rule on size alone reads the candidates index alone (the size classes
    of its bound), not (state, size) and a row per entry."""
    cat = catalog
    now = time.time_ns()
    q = fill(cat, now)
    lru = FileQuery(states=(State.ONLINE,), order_by_last_access=True, limit=10)
    oldest = list(cat.query(lru))
    assert [i.last_access_ns for i in oldest] == sorted(i.last_access_ns for i in oldest) and len(oldest) == 10
    everything = sorted(cat.query(FileQuery(states=(State.ONLINE,))), key=lambda i: (i.last_access_ns, i.ino))
    assert [i.ino for i in oldest] == [i.ino for i in everything[:10]]
    big = FileQuery(states=(State.ONLINE,), min_size=(1 << 30) - (1 << 20))
    n_big = len(list(cat.query(big)))
    assert sorted(c.ino for c in cat.candidates(big)) == sorted(i.ino for i in cat.query(big)) and n_big > 0
    if backend(cat) == "sqlite":
        for fq, index in ((lru, NEW_SQL), (big, CLASS_SQL), (q, CLASS_SQL)):
            stmt, params = cat.query_statement(fq)
            with contextlib.closing(cat.connect()) as c:
                plan = " | ".join(r[-1] for r in c.execute("EXPLAIN QUERY PLAN " + stmt, params))
            assert f"USING INDEX {index} " in plan or f"USING COVERING INDEX {index} " in plan, (fq, plan)
    e = examined(cat, big)
    assert (CLASS_MONGO if backend(cat) == "mongo" else CLASS_SQL) in e["plan"] and e["examined"] == 0, e


def test_candidates_are_the_queried_inodes_streamed_in_batches(catalog, monkeypatch):
    """candidates(q) of a rule's query is query(q)'s inodes, each field of
    a Candidate equal to the Inode's, read candidates_batch at a time as
    the caller goes (rows_read grows with them), and may be closed early.
    A rule with only an inactivity bound, or only a size bound, reads the
    index alone too (every size class / the classes of its bound)."""
    cat = catalog
    q = fill(cat, time.time_ns())
    monkeypatch.setattr(type(cat), "candidates_batch", 7)
    for rule_q in (q, dataclasses.replace(q, min_size=None),
                   dataclasses.replace(q, last_access_before_ns=None, min_size=(1 << 30) - (1 << 24))):
        assert base.by_range_index(rule_q)
        whole = {i.ino: i for i in cat.query(rule_q)}
        got = list(cat.candidates(rule_q))
        assert sorted(c.ino for c in got) == sorted(whole) and len(got) == len(whole) > 0, rule_q
        for c in got:
            assert {f: getattr(c, f) for f in base.CANDIDATE_FIELDS} == \
                {f: getattr(whole[c.ino], f) for f in base.CANDIDATE_FIELDS}
        e = examined(cat, rule_q)
        assert e["examined"] == 0 and (CLASS_MONGO if backend(cat) == "mongo" else CLASS_SQL) in e["plan"], e
    it = cat.candidates(q)
    before = cat.rows_read
    next(it)
    read = cat.rows_read - before
    assert 1 <= read <= 7   # at most one batch read, not every candidate
    it.close()
    assert cat.rows_read - before == read


def test_candidates_of_other_queries_come_from_whole_inodes(catalog):
    """A rule without a last-access or size bound (here: a tier) has no
    candidates index range: candidates(q) are query(q)'s inodes."""
    cat = catalog
    fill(cat, time.time_ns())
    q = FileQuery(states=(State.ONLINE,), uid=0)
    assert not base.by_range_index(q)
    assert sorted(c.ino for c in cat.candidates(q)) == sorted(i.ino for i in cat.query(q))
    assert all(isinstance(c, base.Candidate) for c in cat.candidates(q))


def names(cat) -> list[tuple[bytes, int]]:
    return [(e.name, e.inode.ino) for e in cat.list_dir(ROOT_INO)]


def test_candidates_come_page_by_page_with_no_reader_open_between_pages(catalog, monkeypatch):
    """A rule's candidates are read a page at a time, each page one short query: between pages no read
    transaction (SQLite: the log checkpoints to the end) or server cursor (MongoDB) stays open, which a
    rule running for hours under a rate limit would otherwise hold. Files sharing a last access across a
    page's end come once each; a file used since the run began (its last access moved) no longer comes."""
    cat = catalog
    now = time.time_ns()
    t = now - 200 * DAY_NS
    cat.create_many([(ROOT_INO, b"t%03d" % i, Inode(ino=0, mode=0o100644, uid=0, gid=0, size=BIG + i,
                                                   atime_ns=t + i // 4, mtime_ns=t - 1, ctime_ns=t, crtime_ns=t,
                                                   state=State.ONLINE)) for i in range(30)], now)
    q = FileQuery(states=(State.ONLINE,), min_size=BIG, last_access_before_ns=now - 90 * DAY_NS)
    monkeypatch.setattr(type(cat), "candidates_batch", 5)   # pages end inside groups of 4 equal times
    everything = sorted(i.ino for i in cat.query(q))
    got = [c.ino for c in cat.candidates(q)]
    assert sorted(got) == everything and len(everything) == 30
    order = [c.last_access_ns for c in cat.candidates(q)]
    assert order == sorted(order)   # least recently used first (one size class here)
    if backend(cat) == "sqlite":   # the files of a page's last value: a seek to it, not a walk of the range
        with contextlib.closing(cat.connect()) as c:
            stmt, params = cat._candidates_sql(c, q, State.ONLINE, 29, after=None, equal=order[4], limit=None)
            plan = " | ".join(r[-1] for r in c.execute("EXPLAIN QUERY PLAN " + stmt, params))
        assert "last_access_ns=?)" in plan, plan

    def open_readers() -> int:
        if backend(cat) == "mongo":
            return cat.db.command("serverStatus")["metrics"]["cursor"]["open"]["total"]
        cat.update(cat.lookup(ROOT_INO, b"t000").ino, {"uid": 7})   # log frames after the first page
        with contextlib.closing(cat.connect()) as c:
            return c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]   # 1: a reader holds the log
    before = open_readers()
    it = cat.candidates(q)
    first = [next(it).ino for _ in range(3)]
    assert open_readers() == (before if backend(cat) == "mongo" else 0)
    last = cat.lookup(ROOT_INO, b"t029").ino     # the most recently used: read last
    cat.update(last, {"atime_ns": now})
    rest = [c.ino for c in it]
    assert sorted(first + rest) == [i for i in everything if i != last]
