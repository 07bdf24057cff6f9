"""The (state, atime_ns, size) index behind policy candidate selection, on
every catalog backend: a fresh catalog has it, a catalog made by an older
tierfs (with the (state, atime_ns) index instead) gets it when opened, and
the policy query uses it so that only the candidates are fetched.

The synthetic catalog: 4,000 files, 1% candidates (online, not accessed for
90 days, >= 256 MiB). Of the rest, 10% are old and half are big, so the
atime range of the index holds ~10x the candidates and the size range ~50x:
fetching more than the candidates shows."""

from __future__ import annotations

import random
import time

import pytest
from sqlalchemy import inspect

from bench.catalog_scale import examined_sql
from tierfs.catalog import open_catalog
from tierfs.catalog.base import ROOT_INO, SCHEMA_VERSION, FileQuery, Inode, State

NEW_SQL, OLD_SQL = "ix_inodes_state_atime_size", "ix_inodes_state_atime"
NEW_MONGO, OLD_MONGO = "state_atime_size", "state_atime"
DAY_NS = 86400 * 10**9
BIG = 256 << 20
N, CANDIDATES = 4000, 40


def backend(cat) -> str:
    return "mongo" if hasattr(cat, "db") else "sqlite"


# ---- the catalog's indexes as stored ----------------------------------------------
def inode_indexes(cat) -> dict[str, list[str]]:
    """Index name -> its fields, as the database has them."""
    if backend(cat) == "mongo":
        return {name: [k for k, _ in ix["key"]] for name, ix in cat.inodes.index_information().items()}
    with cat.engine.connect() as c:
        return {ix["name"]: ix["column_names"] for ix in inspect(c).get_indexes("inodes")}


def to_old_schema(cat) -> None:
    """What the previous tierfs made: (state, atime_ns) and no (state, atime_ns, size);
    its schema_version was 1."""
    if backend(cat) == "mongo":
        cat.inodes.drop_index(NEW_MONGO)
        cat.inodes.create_index([("state", 1), ("atime_ns", 1)], name=OLD_MONGO)
        cat.meta.update_one({"_id": "schema_version"}, {"$set": {"value": "1"}})
    else:
        with cat.engine.begin() as c:
            c.exec_driver_sql(f"DROP INDEX {NEW_SQL}")
            c.exec_driver_sql(f"CREATE INDEX {OLD_SQL} ON inodes (state, atime_ns)")
            c.exec_driver_sql("UPDATE meta SET value = '1' WHERE key = 'schema_version'")


def test_a_fresh_catalog_has_the_index_and_not_its_prefix(catalog):
    ix = inode_indexes(catalog)
    new, old = (NEW_MONGO, OLD_MONGO) if backend(catalog) == "mongo" else (NEW_SQL, OLD_SQL)
    assert ix.get(new) == ["state", "atime_ns", "size"], ix
    assert old not in ix, ix
    assert sorted(f for f in ix.values() if f[0] == "state") == [["state", "atime_ns", "size"], ["state", "size"]], ix


def test_a_catalog_of_the_previous_schema_gets_the_index_when_opened(catalog_url):
    cat = open_catalog(catalog_url)
    cat.init()
    f = cat.create(ROOT_INO, b"kept", Inode(ino=0, mode=0o100644, uid=0, gid=0, size=5, atime_ns=1))
    to_old_schema(cat)
    ix = inode_indexes(cat)
    assert OLD_SQL in ix or OLD_MONGO in ix
    assert NEW_SQL not in ix and NEW_MONGO not in ix
    cat.close()

    cat = open_catalog(catalog_url)  # what a mount, fsck or a policy run does
    try:
        cat.init()
        ix = inode_indexes(cat)
        new, old = (NEW_MONGO, OLD_MONGO) if backend(cat) == "mongo" else (NEW_SQL, OLD_SQL)
        assert ix.get(new) == ["state", "atime_ns", "size"], ix
        assert old not in ix, ix
        assert cat.schema_version() == SCHEMA_VERSION == 1  # indexes are no schema_version step
        assert cat.lookup(ROOT_INO, b"kept").ino == f.ino
        assert [i.ino for i in cat.query(FileQuery(states=(State.ONLINE,), atime_before_ns=2))] == [f.ino]
        cat.init()  # again: nothing left to do, nothing breaks
        assert inode_indexes(cat) == ix
    finally:
        cat.close()


# ---- the policy query --------------------------------------------------------------
def fill(cat, now: int) -> FileQuery:
    """N files, exactly CANDIDATES of them matching the returned query."""
    rng = random.Random(7)
    old = now - 90 * DAY_NS
    cands = set(rng.sample(range(N), CANDIDATES))
    entries = []
    for i in range(N):
        if i in cands:
            state, atime, size = State.ONLINE, rng.randrange(old - 10 * DAY_NS, old), rng.randrange(BIG, 1 << 30)
        else:
            while True:
                r = rng.random()
                state = State.ONLINE if r < 0.9 else (State.DUAL if r < 0.95 else State.ARCHIVED)
                atime = rng.randrange(old - 10 * DAY_NS, old) if rng.random() < 0.1 else rng.randrange(old, now)
                size = rng.randrange(BIG, 1 << 30) if rng.random() < 0.5 else rng.randrange(1, BIG)
                if not (state == State.ONLINE and atime < old and size >= BIG):
                    break
        entries.append((ROOT_INO, b"f%05d" % i, Inode(ino=0, mode=0o100644, uid=0, gid=0, size=size,
                                                      atime_ns=atime, mtime_ns=atime, ctime_ns=atime,
                                                      crtime_ns=atime, state=state)))
    for k in range(0, N, 500):
        cat.create_many(entries[k:k + 500], now)
    return FileQuery(states=(State.ONLINE,), min_size=BIG, atime_before_ns=old)


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
    """Plan, rows/documents fetched and index entries walked for cat.query(q)."""
    if backend(cat) == "sqlite":
        return examined_sql(cat, q)
    spy = cat.inodes = FindSpy(cat.inodes)
    try:
        sum(1 for _ in cat.query(q))
    finally:
        cat.inodes = spy.coll
    assert len(spy.cursors) == 1
    ex = spy.cursors[0].clone().explain()  # the same filter, sort, hint and limit
    st = ex["executionStats"]

    def stages(p):
        return [p["stage"] + (f"({p['indexName']})" if "indexName" in p else "")] + \
            [s for c in [p.get("inputStage")] + p.get("inputStages", []) if c for s in stages(c)]
    win = ex["queryPlanner"]["winningPlan"]
    return {"plan": " <- ".join(stages(win.get("queryPlan", win))), "examined": st["totalDocsExamined"],
            "keys_examined": st["totalKeysExamined"], "returned": st["nReturned"]}


def make_newest(cat, name: str) -> None:
    """Drop and create again an SQLite index: without statistics, SQLite
    breaks ties between equally rated indexes by their order in the schema."""
    with cat.engine.begin() as c:
        sql = c.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).scalar()
        c.exec_driver_sql(f"DROP INDEX {name}")
        c.exec_driver_sql(sql)


def test_policy_query_fetches_only_the_candidates(catalog):
    cat = catalog
    q = fill(cat, time.time_ns())
    # SQLite: whichever of the two state indexes was created last
    for newest in [None] if backend(cat) == "mongo" else [NEW_SQL, "ix_inodes_state_size"]:
        if newest:
            make_newest(cat, newest)
        before = cat.rows_read
        got = list(cat.query(q))
        assert len(got) == CANDIDATES and cat.rows_read - before == CANDIDATES
        assert all(i.state == State.ONLINE and i.size >= BIG and i.atime_ns < q.atime_before_ns for i in got)
        e = examined(cat, q)
        assert (NEW_MONGO if backend(cat) == "mongo" else NEW_SQL) in e["plan"], (newest, e)
        assert e["examined"] == CANDIDATES, e           # rows/documents fetched == candidates
        assert e["keys_examined"] >= 5 * CANDIDATES, e  # the atime range is wider: the size was tested on the key


def test_the_measure_sees_fetches_with_the_previous_index(catalog):
    """The same measure on the previous schema fetches every entry of the
    index range it walks: what the test above would catch."""
    cat = catalog
    q = fill(cat, time.time_ns())
    to_old_schema(cat)
    assert len(list(cat.query(q))) == CANDIDATES
    e = examined(cat, q)
    assert NEW_SQL not in e["plan"] and NEW_MONGO not in e["plan"], e
    assert e["examined"] >= 5 * CANDIDATES and e["examined"] == e["keys_examined"], e


def test_watermark_and_size_only_queries_still_use_an_index(catalog):
    """Oldest-first (watermark runs) streams from the new index; a size-only
    rule keeps (state, size)."""
    cat = catalog
    now = time.time_ns()
    q = fill(cat, now)
    oldest = list(cat.query(FileQuery(states=(State.ONLINE,), order_by_atime=True, limit=10)))
    assert [i.atime_ns for i in oldest] == sorted(i.atime_ns for i in oldest) and len(oldest) == 10
    big = FileQuery(states=(State.ONLINE,), min_size=(1 << 30) - (1 << 20))
    n_big = len(list(cat.query(big)))
    if backend(cat) == "sqlite":
        from bench.catalog_scale import sqlite_statement
        for fq, index in ((FileQuery(states=(State.ONLINE,), order_by_atime=True, limit=10), NEW_SQL),
                          (big, "ix_inodes_state_size"), (q, NEW_SQL)):
            stmt, params = sqlite_statement(cat, fq)
            with cat.engine.connect() as c:
                plan = " | ".join(r[-1] for r in c.exec_driver_sql("EXPLAIN QUERY PLAN " + stmt, params))
            assert f"USING INDEX {index} " in plan, (fq, plan)
    else:
        e = examined(cat, big)
        assert "IXSCAN(state_size)" in e["plan"] and e["examined"] == n_big, e
