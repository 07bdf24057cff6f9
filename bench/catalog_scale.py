"""Case 3: the catalog at scale, without FUSE.

A synthetic catalog of N files (in N/1000 directories of 1000) is bulk
loaded straight into the schema (SQL tables / Mongo collections, with the
catalog modules' own row builders), then we time:
- policy candidate selection: catalog.candidates(FileQuery(states=(ONLINE,),
  min_size=S, last_access_before_ns=T)), what the policy engine reads
  for RULE (built by its Matcher), where exactly 1% of entries match, warm
  and after dropping the page cache; with catalog.rows_read (rows returned),
  the rows/documents the database fetched (`examined`) and the index entries
  it walked (`keys_examined`) (SQLite: a counting function on a table-only
  column, and the range of the index EXPLAIN QUERY PLAN names; MongoDB:
  explain executionStats totalDocsExamined / totalKeysExamined);
- lookup latency: catalog.lookup(parent, name) of random entries, p50/p99,
  warm (after one untimed pass over the same names);
- `tierfs find --state archived` (5% of the entries) and `--state online`
  (~90%) through the CLI's own printing code (cli/admin.py _find_print,
  output counted, not written): time to the first and to the last path, and
  the rows read; cold and warm;
- `tierfs du` of the root through the CLI's counting code (admin.du_counts:
  by state and by tier), cold and warm, with the rows read.

The data: atime uniform over the last 100 days (mtime = atime, so the last
access or modification is the atime), size log-uniform 1 KiB..1 GiB,
state 90% online / 5% dual / 5% archived; candidates are online, older than
90 days and >= 256 MiB, and non-candidates are drawn until they do not match.
"""

from __future__ import annotations

import os
import random
import time

from tierfs.catalog.base import ROOT_INO, FileQuery, Inode, State, by_range_index, candidate_classes

from .util import MiB, Timer, drop_caches, percentile

DAY_NS = 86400 * 10**9
PER_DIR = 1000
OLD_DAYS = 90
BIG = 256 * MiB


def _entries(n: int, now: int, seed: int = 3):
    """Yield (dir index, file index, Inode) for n synthetic files; exactly
    n // 100 match the candidate query."""
    rng = random.Random(seed)
    cands = set(rng.sample(range(n), n // 100))
    old = now - OLD_DAYS * DAY_NS
    for i in range(n):
        if i in cands:
            atime = rng.randrange(now - 100 * DAY_NS, old)
            size = rng.randrange(BIG, 1 << 30)
            state = State.ONLINE
        else:
            while True:
                atime = rng.randrange(now - 100 * DAY_NS, now)
                size = int(2 ** rng.uniform(10, 30))
                r = rng.random()
                state = State.ONLINE if r < 0.9 else (State.DUAL if r < 0.95 else State.ARCHIVED)
                if not (state == State.ONLINE and atime < old and size >= BIG):
                    break
        online = state != State.ARCHIVED
        yield i // PER_DIR, i % PER_DIR, Inode(
            ino=0, mode=0o100644, uid=1000, gid=1000, nlink=1, size=size, atime_ns=atime, mtime_ns=atime,
            ctime_ns=atime, crtime_ns=atime, state=state, tier="disk" if online else None,
            location=f"{i:032x}" if online else None,
            archive_tier="vault" if state != State.ONLINE else None,
            archive_location=f"a{i:031x}" if state != State.ONLINE else None,
            checksum="0" * 64, data_version=1, state_ns=atime, state_cause="bench")


#: The policy rule whose candidates the case selects: its query is the one the policy engine sends.
RULE = {"name": "cold", "action": "archive", "keep_online": True, "inactive_for": f"{OLD_DAYS}d", "min_size": "256MiB"}


def candidate_query(now: int) -> FileQuery:
    """What the policy engine asks the catalog for RULE at `now` (policy
    Matcher.query): online files, last used before now - 90 days, >= 256 MiB."""
    from tierfs import config
    from tierfs.policy.conditions import Matcher
    from tierfs.policy.rules import parse_rules
    raw = {"tiers": {"disk": {"kind": "disk", "path": "/nonexistent/disk"},
                     "vault": {"kind": "vault", "path": "/nonexistent/vault"}}, "policy": [RULE]}
    q = Matcher(parse_rules(config.parse(raw, "/nonexistent/bench.toml"))[0], now).query()
    assert q == FileQuery(states=(State.ONLINE,), min_size=BIG, last_access_before_ns=now - OLD_DAYS * DAY_NS), q
    return q


def _dir_inode(now: int) -> Inode:
    return Inode(ino=0, mode=0o40755, uid=0, gid=0, nlink=2, atime_ns=now, mtime_ns=now, ctime_ns=now,
                 crtime_ns=now, state_ns=now, state_cause="bench")


# ---- loaders ----------------------------------------------------------------------
def load_sql(cat, n: int, now: int) -> None:
    """Bulk insert into the inodes and dentries tables (one transaction per
    50k rows), with the SQL module's own row builder."""
    from tierfs.catalog import schema as S
    cols = [k for k in S.columns("inodes") if k not in S.GENERATED]
    ins_i = f"INSERT INTO inodes ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    ins_d = "INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)"

    def row(inode: Inode) -> tuple:
        return tuple(inode.state.value if k == "state" else getattr(inode, k) for k in cols)
    ndirs = (n + PER_DIR - 1) // PER_DIR
    first_dir = ROOT_INO + 1
    first_file = first_dir + ndirs
    conn = cat.connect()
    with conn:   # one transaction
        conn.execute("BEGIN")
        conn.executemany(ins_i, [row(_dir_inode(now).copy(ino=first_dir + d)) for d in range(ndirs)])
        conn.executemany(ins_d, [(ROOT_INO, b"d%04d" % d, first_dir + d) for d in range(ndirs)])
    batch_i, batch_d = [], []

    def flush():
        with conn:
            conn.execute("BEGIN")
            conn.executemany(ins_i, batch_i)
            conn.executemany(ins_d, batch_d)
        batch_i.clear()
        batch_d.clear()
    for k, (d, f, inode) in enumerate(_entries(n, now)):
        batch_i.append(row(inode.copy(ino=first_file + k)))
        batch_d.append((first_dir + d, b"f%06d" % f, first_file + k))
        if len(batch_i) >= 50000:
            flush()
    if batch_i:
        flush()
    conn.close()
    # No ANALYZE: a daemon's catalog never gets one, and SQLite's plan for the
    # candidate query differs with statistics (see RESULTS.md).


def load_mongo(cat, n: int, now: int) -> None:
    """insert_many into the inodes and dentries collections (documents built
    by the Mongo module's own _inode_doc), then move the counters past them."""
    from tierfs.catalog.mongo import _inode_doc
    ndirs = (n + PER_DIR - 1) // PER_DIR
    first_dir = ROOT_INO + 1
    first_file = first_dir + ndirs
    pos0 = 1_000_000_000
    cat.inodes.insert_many([_inode_doc(_dir_inode(now).copy(ino=first_dir + d)) for d in range(ndirs)],
                           ordered=False)
    cat.dentries.insert_many([{"_id": pos0 + d, "parent": ROOT_INO, "name": b"d%04d" % d, "ino": first_dir + d}
                              for d in range(ndirs)], ordered=False)
    bi, bd = [], []
    for k, (d, f, inode) in enumerate(_entries(n, now)):
        ino = first_file + k
        bi.append(_inode_doc(inode.copy(ino=ino)))
        bd.append({"_id": pos0 + ndirs + k, "parent": first_dir + d, "name": b"f%06d" % f, "ino": ino})
        if len(bi) >= 20000:
            cat.inodes.insert_many(bi, ordered=False)
            cat.dentries.insert_many(bd, ordered=False)
            bi, bd = [], []
    if bi:
        cat.inodes.insert_many(bi, ordered=False)
        cat.dentries.insert_many(bd, ordered=False)
    cat.counters.update_one({"_id": "ino"}, {"$max": {"seq": first_file + n}}, upsert=True)
    cat.counters.update_one({"_id": "pos"}, {"$max": {"seq": pos0 + ndirs + n}}, upsert=True)
    if hasattr(cat, "rebuild_totals"):   # the inserts bypassed the catalog, which keeps du's totals
        with Timer() as t:
            cat.rebuild_totals()
        cat._bench_totals_s = t.s


# ---- what the database examined -------------------------------------------------
def sqlite_rows_fetched(conn, stmt: str, params) -> int:
    """How many table rows SQLite fetches for `stmt`: the statement is run
    with a counting function of a column only the table has as its first
    WHERE term. SQLite tests the terms an index entry answers before it
    fetches the row (a deferred seek), then the others in their order: the
    function runs once per fetched row. `conn` is an sqlite3 connection;
    the plan must not change (checked)."""
    dbapi = conn
    calls = [0]

    def probe(_):
        calls[0] += 1
        return 1
    dbapi.create_function("tierfs_fetch_probe", 1, probe, deterministic=False)
    head, sep, tail = stmt.partition("WHERE ")
    if not sep:
        raise ValueError(f"no WHERE clause in {stmt!r}")
    probed = f"{head}WHERE tierfs_fetch_probe(inodes.state_cause) AND {tail}"   # (in no index)

    def plan(sql):
        return [str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]
    if plan(probed) != plan(stmt):
        raise RuntimeError(f"the fetch probe changed the plan: {plan(stmt)} -> {plan(probed)}")
    conn.execute(probed, params).fetchall()
    return calls[0]


def sqlite_reads_rows(conn, stmt: str, params) -> bool:
    """Whether `stmt` reads any column of an inodes row (its bytecode: a
    Column of a cursor opened on the table). EXPLAIN QUERY PLAN says USING
    INDEX rather than COVERING INDEX for an index holding a virtual column
    (last_access_ns, size_class), though the table cursor is only seeked
    lazily (DeferredSeek) and never read when the index answers everything."""
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = 'inodes'").fetchone()[0]
    ops = conn.execute("EXPLAIN " + stmt, params).fetchall()
    table = {r[2] for r in ops if r[1] == "OpenRead" and r[3] == root}
    return any(r[1] == "Column" and r[2] in table for r in ops)


def examined_sql(cat, q: FileQuery) -> dict:
    """The plan SQLite picks for the candidate query (the statement the
    catalog really selects with: Catalog.candidates' for a rule's query),
    the index entries its range holds (what the search walks:
    keys_examined) and the table rows it fetches (examined: none when the
    index answers the statement, else those whose index entry passes the
    index's terms)."""
    stmt, params = cat.query_statement(q)
    states = [s.value for s in q.states]
    marks = ",".join("?" * len(states))
    c = cat.connect()
    try:
        detail = " | ".join(str(r[-1]) for r in c.execute("EXPLAIN QUERY PLAN " + stmt, params).fetchall())
        keys = None
        if "ix_inodes_candidates" in detail:  # (state, size_class, last_access_ns, size, ...)
            classes = candidate_classes(q)
            bound = "" if q.last_access_before_ns is None else " AND last_access_ns < ?"
            keys = c.execute(f"SELECT count(*) FROM inodes WHERE state IN ({marks}) AND size_class IN "
                             f"({','.join('?' * len(classes))}){bound}",
                             (*states, *classes, *([q.last_access_before_ns] if bound else []))).fetchone()[0]
        elif "ix_inodes_state_last_access" in detail:  # (state, last_access_ns, size)
            keys = c.execute(f"SELECT count(*) FROM inodes WHERE state IN ({marks}) AND last_access_ns < ?",
                             (*states, q.last_access_before_ns)).fetchone()[0]
        elif "ix_inodes_state_size" in detail:
            keys = c.execute(f"SELECT count(*) FROM inodes WHERE state IN ({marks}) AND size >= ?",
                             (*states, q.min_size)).fetchone()[0]
        elif "SCAN" in detail or "PRIMARY KEY" in detail:
            keys = c.execute("SELECT count(*) FROM inodes").fetchone()[0]
        fetched = sqlite_rows_fetched(c, stmt, params) if sqlite_reads_rows(c, stmt, params) else 0
    finally:
        c.close()
    return {"plan": detail, "examined": fetched, "keys_examined": keys}


def _find_capture():
    """A pymongo command listener keeping the finds on `inodes`, so the
    bench explains the query the catalog really sent."""
    import pymongo.monitoring

    class FindCapture(pymongo.monitoring.CommandListener):
        finds: list = []

        def started(self, event):
            if event.command_name == "find" and event.command.get("find") == "inodes":
                self.finds.append(dict(event.command))

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass
    return FindCapture()


_capture = None


def examined_mongo(cat, q: FileQuery) -> dict:
    """The plan of the first find on `inodes` that the query sends
    (cat.candidates for a rule's query: catalog.base.by_range_index), and the
    documents and index keys the server examined for the whole query
    (serverStatus: every find it sent)."""
    _capture.finds = []
    read = cat.candidates if by_range_index(q) else cat.query
    reads = _with_server_reads(cat, lambda: {"returned": sum(1 for _ in read(q))})
    if not _capture.finds:
        return {"plan": "no find on inodes captured", "examined": None}
    cmd = _capture.finds[0]
    find = {k: v for k, v in cmd.items() if k in ("find", "filter", "sort", "limit", "projection", "hint")}
    ex = cat.db.command("explain", find, verbosity="queryPlanner")
    win = ex.get("queryPlanner", {}).get("winningPlan", {})

    def stages(p):
        out = [p.get("stage", "") + (f"({p['indexName']})" if "indexName" in p else "")]
        if "inputStage" in p:
            out += stages(p["inputStage"])
        for s in p.get("inputStages", []):
            out += stages(s)
        return out
    return {"plan": " <- ".join(stages(win.get("queryPlan", win))), "examined": reads["docs_examined"],
            "keys_examined": reads["keys_examined"], "finds": len(_capture.finds), "sort": cmd.get("sort")}


# ---- find and du as the CLI runs them ---------------------------------------------------
class _Sink:
    """A stand-in for sys.stdout: counts lines and notes when the first came."""

    def __init__(self, t0: float):
        self.t0, self.first, self.lines = t0, None, 0
        self.buffer = self

    def write(self, data) -> int:
        if data and self.first is None:
            self.first = time.perf_counter() - self.t0
        self.lines += data.count(b"\n") if isinstance(data, bytes) else data.count("\n")
        return len(data)

    def flush(self) -> None:
        pass


def _server_reads(cat) -> tuple[int, int] | None:
    """MongoDB: (documents, index keys) the server has examined so far (serverStatus), else None."""
    if not hasattr(cat, "db"):
        return None
    m = cat.client.admin.command("serverStatus")["metrics"]["queryExecutor"]
    return m["scannedObjects"], m["scanned"]


def _with_server_reads(cat, fn) -> dict:
    before = _server_reads(cat)
    out = fn()
    if before is not None:
        after = _server_reads(cat)
        out.update(docs_examined=after[0] - before[0], keys_examined=after[1] - before[1])
    return out


def time_find(cat, state: State) -> dict:
    """`tierfs find --state STATE` of the root, printed by the CLI's code
    into a counting sink: seconds to the first path and to the last, paths,
    rows read. An error (e.g. the client's socket timeout) is reported."""
    import sys
    from tierfs.cli import admin
    q = FileQuery(states=(state,))
    before = cat.rows_read
    t0 = time.perf_counter()
    sink = _Sink(t0)
    saved = sys.stdout
    sys.stdout = sink
    try:
        admin._find_print(cat, q, "/", False, False, None)
    except Exception as e:  # noqa: BLE001 - the figure is the failure
        return {"error": f"{type(e).__name__}: {e}"[:300], "after_s": time.perf_counter() - t0, "paths": sink.lines}
    finally:
        sys.stdout = saved
    return {"first_s": sink.first, "last_s": time.perf_counter() - t0, "paths": sink.lines,
            "rows_read": cat.rows_read - before}


def time_du(cat) -> dict:
    """`tierfs du` of the root (by state and by tier) as the CLI counts it."""
    from tierfs.cli import admin
    before = cat.rows_read
    t0 = time.perf_counter()
    try:
        if hasattr(admin, "du_counts"):
            total = admin.du_counts(cat, FileQuery(), None)[0]
            files = sum(v[0] for v in total.values())
        else:   # the code before du_counts: the CLI's count_by calls
            q = FileQuery()
            by_state = cat.count_by(q, "state")
            for f in ("tier", "archive_tier"):
                cat.count_by(q, f)
            files = sum(v[0] for v in by_state.values())
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"[:300], "after_s": time.perf_counter() - t0}
    return {"s": time.perf_counter() - t0, "files": files, "rows_read": cat.rows_read - before}


def measure_find_du(cat, drop_cold=True) -> dict:
    out: dict = {}
    for name, fn in (("find_archived", lambda: time_find(cat, State.ARCHIVED)),
                     ("find_online", lambda: time_find(cat, State.ONLINE)), ("du_root", lambda: time_du(cat))):
        if drop_cold:
            drop_caches()
        out[name + "_cold"] = _with_server_reads(cat, fn)
        out[name + "_warm"] = _with_server_reads(cat, fn)
    return out


# ---- the case ---------------------------------------------------------------------
def measure(cat, n: int, runs: int, lookups: int, examined, drop_cold=True) -> dict:
    now = cat._bench_now
    q = candidate_query(now)
    out: dict = {"entries": n, "candidates_expected": n // 100}
    out.update(measure_find_du(cat, drop_cold))
    if getattr(cat, "_bench_log", None):   # (long runs: these figures before the rest)
        cat._bench_log(f"  find/du: {out}")
    warm, cold, rows = [], [], []
    for r in range(runs):
        if drop_cold:
            drop_caches()
        before = cat.rows_read
        with Timer() as t:
            got = sum(1 for _ in cat.candidates(q))   # what the policy engine reads for RULE
        cold.append(t.s)
        rows.append(cat.rows_read - before)
        out["candidates"] = got
    for r in range(runs):
        with Timer() as t:
            sum(1 for _ in cat.candidates(q))
        warm.append(t.s)
    out.update(select_cold=cold, select_warm=warm, rows_read=rows)
    out.update(examined(cat, q))
    rng = random.Random(5)
    ndirs = (n + PER_DIR - 1) // PER_DIR
    names = []
    for _ in range(lookups):
        d = rng.randrange(ndirs)
        names.append((ROOT_INO + 1 + d, b"f%06d" % rng.randrange(min(PER_DIR, n - d * PER_DIR))))
    # Warm: one untimed pass first. Otherwise the figure depends on how much of the table the
    # selections above happened to cache (91k random rows fetched: p50 24 us; 10k: 96 us).
    for parent, name in names:
        cat.lookup(parent, name)
    lat = []
    for parent, name in names:
        t0 = time.perf_counter()
        cat.lookup(parent, name)
        lat.append(time.perf_counter() - t0)
    lat.sort()
    out.update(lookups=lookups, lookup_p50=percentile(lat, 50), lookup_p99=percentile(lat, 99),
               lookup_mean=sum(lat) / len(lat))
    return out


def run_sqlite(workdir: str, n: int, runs: int, lookups: int, log) -> dict:
    from tierfs.catalog.sql import SqlCatalog
    path = os.path.join(workdir, "scale-sqlite.db")
    for p in (path, path + "-wal", path + "-shm"):
        if os.path.exists(p):
            os.unlink(p)
    cat = SqlCatalog(f"sqlite:///{path}")
    cat.init()
    cat._bench_now = time.time_ns()
    cat._bench_log = log
    with Timer() as t:
        load_sql(cat, n, cat._bench_now)
    log(f"  sqlite: loaded {n} entries in {t.s:.1f} s")
    try:
        out = measure(cat, n, runs, lookups, examined_sql)
        out["load_s"] = t.s
        out["db_bytes"] = os.path.getsize(path)
        return out
    finally:
        cat.close()
        for p in (path, path + "-wal", path + "-shm"):
            if os.path.exists(p):
                os.unlink(p)


def mongo_available() -> str | None:
    """None when the MongoDB catalog and a mongod can be used, else why not."""
    try:
        import tierfs.catalog.mongo  # noqa: F401
    except ImportError as e:
        return f"n/a (not available: {e})"
    try:
        from tests.mongod import mongod_binary
        mongod_binary()
    except Exception as e:  # noqa: BLE001 - any reason means no column
        return f"n/a (no mongod: {e})"
    return None


def run_mongo(workdir: str, n: int, runs: int, lookups: int, log) -> dict:
    from tests.mongod import MongoServer
    from tierfs.catalog import open_catalog
    d = os.path.join(workdir, "mongod")
    import shutil
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    server = MongoServer(d)
    server.start()
    try:
        global _capture
        if _capture is None:
            import pymongo.monitoring
            _capture = _find_capture()
            pymongo.monitoring.register(_capture)  # before the catalog's client exists
        cat = open_catalog(server.url("bench"))
        cat.init()
        cat._bench_now = time.time_ns()
        cat._bench_log = log
        with Timer() as t:
            load_mongo(cat, n, cat._bench_now)
        log(f"  mongo: loaded {n} entries in {t.s:.1f} s")
        try:
            out = measure(cat, n, runs, lookups, examined_mongo)
            out["load_s"] = t.s
            out["totals_rebuild_s"] = getattr(cat, "_bench_totals_s", None)
            out["db_bytes"] = cat.db.command("dbStats")["storageSize"] + cat.db.command("dbStats")["indexSize"]
            return out
        finally:
            cat.close()
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


def main(argv=None) -> None:
    """One backend at one size, outside ./bench/run (the 10M runs):
    python -m bench.catalog_scale --backend sqlite --entries 10000000 --out r.json"""
    import argparse
    import json
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["sqlite", "mongo"], required=True)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--workdir", default="/tmp/tierfs-scale")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    os.makedirs(a.workdir, exist_ok=True)

    def log(m):
        print(m, flush=True)
    run = run_sqlite if a.backend == "sqlite" else run_mongo
    res = run(a.workdir, a.entries, a.runs, a.lookups, log)
    text = json.dumps(res, indent=1, default=str)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
