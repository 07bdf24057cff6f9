"""MongoDB catalog beyond the conformance suite: races between several
catalog clients (as several mounts would be), index use, deadlines and
error messages. Real mongod (the session `mongod` fixture), no FUSE."""

import os
import signal
import threading
import time
import uuid

import pytest

from tierfs import errors
from tierfs.catalog.base import ROOT_INO, Changes, FileQuery, Inode, JobKind, JobState, Session, State, Transition, now_ns
from tierfs.catalog.mongo import MongoCatalog

pytestmark = pytest.mark.mongo

FILE, DIR = 0o100644, 0o040755


def new(mode=FILE, **kw):
    t = now_ns()
    base = dict(uid=1000, gid=1000, nlink=2 if mode == DIR else 1, atime_ns=t, mtime_ns=t, ctime_ns=t,
                crtime_ns=t, state_ns=t)
    return Inode(ino=0, mode=mode, **{**base, **kw})


@pytest.fixture
def url(mongod):
    return mongod.url(f"c{uuid.uuid4().hex[:12]}")


@pytest.fixture
def cats(url):
    """Four independent catalog clients on one database (four 'mounts')."""
    cs = [MongoCatalog(url) for _ in range(4)]
    for c in cs:
        c.init()  # concurrent-safe and idempotent
    yield cs
    for c in cs:
        c.close()


def run_threads(n, fn):
    out, errs = [None] * n, []

    def wrap(i):
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - collected and asserted on
            errs.append(e)
    ts = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return out, errs


def test_claim_hands_each_job_to_exactly_one_client(cats):
    inos = [cats[0].create(ROOT_INO, b"f%d" % i, new()).ino for i in range(40)]
    for ino in inos:
        cats[0].enqueue(ino, JobKind.ARCHIVE, target_tier="vault")

    def worker(i):
        got = []
        while (job := cats[i % 4].claim(f"s{i}")) is not None:
            got.append(job.id)
        return got
    out, errs = run_threads(8, worker)
    assert not errs
    claimed = [j for got in out for j in got]
    assert len(claimed) == 40 and len(set(claimed)) == 40
    assert all(j.attempts == 1 and j.state == JobState.RUNNING for j in cats[0].jobs())


def test_enqueue_coalesces_across_clients(cats):
    ino = cats[0].create(ROOT_INO, b"a", new()).ino
    out, errs = run_threads(8, lambda i: cats[i % 4].enqueue(ino, JobKind.ARCHIVE, target_tier="vault"))
    assert not errs
    assert sum(created for _, created in out) == 1
    assert len({job.id for job, _ in out}) == 1
    assert len(cats[0].jobs(ino=ino)) == 1
    # once done, a new request queues a new job
    job = cats[1].claim("s")
    cats[1].finish_job(job.id, JobState.DONE)
    assert cats[2].enqueue(ino, JobKind.ARCHIVE)[1]


def test_same_name_created_once_and_parent_nlink_exact(cats):
    out, errs = run_threads(8, lambda i: cats[i % 4].create(ROOT_INO, b"same", new(DIR)))
    assert len([o for o in out if o is not None]) == 1
    assert len(errs) == 7 and all(isinstance(e, errors.Exists) for e in errs)
    # many distinct mkdirs in one directory: transactions conflict on the parent and retry
    out, errs = run_threads(8, lambda i: [cats[i % 4].create(ROOT_INO, b"d%d-%d" % (i, k), new(DIR))
                                          for k in range(5)])
    assert not errs
    assert cats[0].get(ROOT_INO).nlink == 2 + 1 + 40
    assert len(cats[0].readdir(ROOT_INO, 0, 1000)) == 41


def test_renames_racing_keep_the_namespace_consistent(cats):
    a = cats[0].create(ROOT_INO, b"a", new())
    d = cats[0].create(ROOT_INO, b"d", new(DIR))

    def mover(i):
        try:
            cats[i % 4].rename(ROOT_INO, b"a", d.ino, b"a%d" % i)
            return i
        except errors.NotFound:
            return None
    out, errs = run_threads(6, mover)
    assert not errs
    winners = [o for o in out if o is not None]
    assert len(winners) == 1
    assert [e.name for e in cats[0].readdir(d.ino, 0, 10)] == [b"a%d" % winners[0]]
    assert cats[0].get(a.ino).nlink == 1 and cats[0].readdir(ROOT_INO, 0, 10)[0].name == b"d"


def pause_in(monkeypatch, method: str, *, after: bool = False):
    """Make _MongoTxn.<method> stop, in the thread that calls arm() only,
    until go() (before or after the call itself): a transaction held open
    at that point while another client commits. Returns (arm, reached, go)."""
    from tierfs.catalog import mongo
    orig = getattr(mongo._MongoTxn, method)
    who, reached, release = [], threading.Event(), threading.Event()

    def paused(self, *args):
        if threading.get_ident() in who and not release.is_set():
            out = orig(self, *args) if after else None
            reached.set()
            assert release.wait(20)
            return out if after else orig(self, *args)
        return orig(self, *args)
    monkeypatch.setattr(mongo._MongoTxn, method, paused)
    return (lambda: who.append(threading.get_ident())), reached, release.set


def in_thread(fn):
    result = {}

    def run():
        try:
            result["value"] = fn()
        except errors.TierfsError as e:
            result["error"] = e
    t = threading.Thread(target=run)
    t.start()
    return t, result


MODES = ["in place", "stripes"]


@pytest.mark.parametrize("mode", MODES)
def test_a_create_racing_rmdir_of_its_directory_is_retried_and_finds_it_gone(cats, monkeypatch, mode):
    """The create's transaction has read the directory when another mount's
    rmdir commits: its write of the directory (its inode, or its stripe when
    the directory is contended: rmdir wrote both) conflicts, and the retry
    finds no directory. No name is left in a removed directory (snapshot
    isolation has no range lock that would catch it otherwise: rmdir's
    has_children saw none)."""
    a, b = cats[0], cats[1]
    d = a.create(ROOT_INO, b"d", new(DIR))
    if mode == "stripes":
        a.contend([d.ino])
    arm, reached, go = pause_in(monkeypatch, "add_dentry")
    t, result = in_thread(lambda: (arm(), a.create(d.ino, b"f", new()))[1])
    assert reached.wait(20)
    b.rmdir(ROOT_INO, b"d", now_ns())
    go()
    t.join(30)
    assert isinstance(result.get("error"), errors.NotFound), result
    assert a.dentries.count_documents({"parent": d.ino}) == 0
    assert a.dir_stripes.count_documents({"_id.dir": d.ino}) == 0   # rmdir leaves none behind
    assert [e.name for e in a.readdir(ROOT_INO, 0, 10)] == []


@pytest.mark.parametrize("mode", MODES)
def test_rmdir_racing_a_create_in_the_directory_is_not_empty_or_wins(cats, monkeypatch, mode):
    """rmdir has seen the directory empty when another mount creates a file
    in it: one of them wins, the other sees it (in place the create commits
    first and the rmdir's retry finds the file; with stripes the rmdir holds
    them, so the create waits for it, retrying its conflict, and then finds
    no directory); never both, which would orphan the file."""
    a, b = cats[0], cats[1]
    d = a.create(ROOT_INO, b"d", new(DIR))
    if mode == "stripes":
        a.contend([d.ino])
    arm, reached, go = pause_in(monkeypatch, "has_children", after=True)
    t, result = in_thread(lambda: (arm(), b.rmdir(ROOT_INO, b"d", now_ns()))[1])
    assert reached.wait(20)
    t2, created = in_thread(lambda: a.create(d.ino, b"f", new()))
    time.sleep(0.5)                     # the create meets the rmdir's writes meanwhile
    go()
    t.join(30)
    t2.join(30)
    if "error" in result:   # the create won
        assert isinstance(result["error"], errors.NotEmpty) and "value" in created, (result, created)
        assert [e.name for e in a.readdir(d.ino, 0, 10)] == [b"f"] and a.get(d.ino).nlink == 2
    else:
        assert isinstance(created.get("error"), errors.NotFound), created
        assert a.dentries.count_documents({"parent": d.ino}) == 0


def test_creates_in_a_contended_directory_keep_its_times(cats):
    """Each mount writes its own stripe of a contended directory; the
    directory's mtime and ctime follow each commit ($max), and nothing else
    of it changes."""
    d = cats[0].create(ROOT_INO, b"d", new(DIR))
    for c in cats:
        c.contend([d.ino])
    stamps = [now_ns() + k for k in range(4)]
    out, errs = run_threads(4, lambda i: cats[i].create(d.ino, b"f%d" % i, new(ctime_ns=stamps[i])))
    assert not errs
    got = cats[0].get(d.ino)
    assert got.mtime_ns == got.ctime_ns == got.last_access_ns == max(stamps) and got.nlink == 2
    assert {s["_id"]["k"] for s in cats[0].dir_stripes.find({"_id.dir": d.ino})} == {c.stripe() for c in cats}
    assert len({c.stripe() for c in cats}) == 4


def test_a_directory_becomes_contended_when_a_change_of_its_names_is_retried(cats, monkeypatch):
    """Mount A's create in d has read the directory when B's create in d
    commits: A's write of d's inode conflicts, its retry goes through d's
    stripe (and A's next ones, for CONTENDED_S); B, which met no conflict,
    keeps writing d's inode."""
    a, b = cats[0], cats[1]
    d = a.create(ROOT_INO, b"d", new(DIR))
    arm, reached, go = pause_in(monkeypatch, "add_dentry")
    t, result = in_thread(lambda: (arm(), a.create(d.ino, b"from-a", new()))[1])
    assert reached.wait(20)
    b.create(d.ino, b"from-b", new())
    go()
    t.join(30)
    assert "value" in result, result
    assert sorted(e.name for e in a.readdir(d.ino, 0, 10)) == [b"from-a", b"from-b"]
    assert a.contended(d.ino) and not b.contended(d.ino)
    assert [s["_id"]["k"] for s in a.dir_stripes.find({"_id.dir": d.ino})] == [a.stripe()]
    assert a.get(d.ino).mtime_ns >= result["value"].ctime_ns


def test_reap_is_won_by_one_client(cats):
    t = now_ns()
    cats[0].register_session(Session(id="dead", host="h", pid=1, mountpoint="/m", started_ns=t,
                                     heartbeat_ns=t - 10**11))
    ino = cats[0].create(ROOT_INO, b"a", new()).ino
    cats[0].enqueue(ino, JobKind.ARCHIVE, target_tier="vault")
    assert cats[0].claim("dead") is not None
    out, errs = run_threads(4, lambda i: cats[i].reap_sessions(t - 10**10))
    assert not errs
    assert sorted(sum(out, [])) == ["dead"]
    job = cats[0].jobs()[0]
    assert job.state == JobState.PENDING and job.session is None and "dead" in job.last_error


def test_switch_compare_and_swap_under_race(cats):
    a = cats[0].create(ROOT_INO, b"a", new(tier="disk", location="k"))

    def sw(i):
        try:
            cats[i % 4].switch(Transition(a.ino, a.data_version, (State.ONLINE,), Changes(state=State.ARCHIVING),
                                          "t"))
            return True
        except errors.VersionConflict:
            return False
    out, errs = run_threads(6, sw)
    assert not errs and sum(out) == 1
    assert len(cats[0].events(a.ino)) == 1


def test_names_are_bytes(cats):
    c = cats[0]
    name = b"\xff\xfe\x00x"[:2] + b"\x80 not utf8"
    target = b"/tmp/\xc3\x28 bad"
    s = c.create(ROOT_INO, name, new(0o120777, target=target))
    assert c.lookup(ROOT_INO, name).target == target
    assert c.readdir(ROOT_INO, 0, 10)[0].name == name
    assert c.path_of(s.ino) == name


def _plan(explain) -> str:
    return repr(explain["queryPlanner"]["winningPlan"])


def test_hot_queries_use_indexes(cats):
    c = cats[0]
    for i in range(30):
        ino = c.create(ROOT_INO, b"f%d" % i, new(size=i, tier="disk", location=f"k{i}")).ino
        c.enqueue(ino, JobKind.ARCHIVE, target_tier="vault")
    db = c.db
    plans = {
        "lookup": db.dentries.find({"parent": ROOT_INO, "name": b"f3"}).explain(),
        "readdir": db.dentries.find({"parent": ROOT_INO, "_id": {"$gt": 5}}).sort("_id", 1).limit(10).explain(),
        "claim": db.jobs.find({"state": "pending", "not_before_ns": {"$lte": now_ns()}})
                   .sort([("priority", 1), ("_id", 1)]).limit(1).explain(),
        "candidates": db.inodes.find(MongoCatalog._filter(FileQuery(states=(State.ONLINE,), min_size=20)))
                        .explain(),
        "references": db.inodes.find({"tier": "disk", "location": "k3"}).explain(),
        "events": db.events.find({"ino": 5}).sort("_id", -1).limit(20).explain(),
        "jobs_of_file": db.jobs.find({"ino": 5, "kind": "archive", "state": {"$in": ["pending", "running"]}})
                          .explain(),
    }
    for what, ex in plans.items():
        plan = _plan(ex)
        assert "IXSCAN" in plan and "COLLSCAN" not in plan, f"{what} does not use an index: {plan}"
    c.rows_read = 0
    assert len(list(c.query(FileQuery(states=(State.ONLINE,), min_size=20)))) == 10
    assert c.rows_read == 10


def test_unreachable_catalog_fails_fast_without_leaking_the_password():
    from tests.mongod import free_port
    url = f"mongodb://tierfs:s3cretpw@127.0.0.1:{free_port()}/x"
    c = MongoCatalog(url)
    t0 = time.monotonic()
    with pytest.raises(errors.CatalogUnavailable) as ei:
        c.get(ROOT_INO)
    took = time.monotonic() - t0
    assert 4 < took < 8, took  # the 5 s server selection deadline
    t0 = time.monotonic()
    with pytest.raises(errors.CatalogUnavailable):  # known down: the next calls fail fast
        c.create(ROOT_INO, b"x", new())
    assert time.monotonic() - t0 < 2.5
    c.close()
    msg = str(ei.value)
    assert "s3cretpw" not in msg and "tierfs:***@127.0.0.1" in msg, msg
    assert ei.value.errno == 5  # EIO at the syscall


def test_default_deadlines_apply():
    c = MongoCatalog("mongodb://127.0.0.1:1/x")
    o = c.client.options
    assert o.server_selection_timeout == 5 and o.pool_options.connect_timeout == 3
    assert o.pool_options.socket_timeout == 10 and c.deadline_s == 10
    c.close()
    c = MongoCatalog("mongodb://127.0.0.1:1/x?timeoutMS=2500&serverSelectionTimeoutMS=700")
    assert c.client.options.server_selection_timeout == 0.7 and c.deadline_s == 2.5
    c.close()
    with pytest.raises(errors.ConfigError):
        MongoCatalog("mongodb://127.0.0.1:notaport/x")


def _tree(c):
    t = now_ns()
    d1, d2 = c.create_many([(ROOT_INO, b"d1", new(DIR)), (ROOT_INO, b"d2", new(DIR))], t)
    sub = c.create(d1.ino, b"sub", new(DIR))
    files = c.create_many([(d1.ino, b"a.txt", new(size=10, uid=1)), (sub.ino, b"b.txt", new(size=20, uid=2)),
                           (d2.ino, b"c.bin", new(size=40, uid=1)), (sub.ino, b"\xff.txt", new(size=1, uid=1))], t)
    c.link(files[0].ino, d2.ino, b"hard.txt", now_ns())
    return t, d1, d2, sub, files


def test_bulk_create_paths_and_counts(cats):
    """create_many / paths_of / count_by (tierfs import, find, du)."""
    c = cats[0]
    t, d1, d2, sub, files = _tree(c)
    # (d1's times went forward to sub's creation, after t: create_many at t leaves them)
    assert c.get(ROOT_INO).nlink == 4 and c.get(d1.ino).mtime_ns == sub.ctime_ns > t
    with pytest.raises(errors.Exists):  # all or nothing
        c.create_many([(d2.ino, b"new", new()), (d1.ino, b"a.txt", new())], t)
    with pytest.raises(errors.NotFound):
        c.lookup(d2.ino, b"new")
    cache = {}
    paths = c.paths_of([f.ino for f in files] + [ROOT_INO, 99999], cache)
    assert paths[files[1].ino] == b"d1/sub/b.txt" and paths[files[2].ino] == b"d2/c.bin"
    assert paths[ROOT_INO] == b"" and 99999 not in paths and cache[sub.ino] == b"d1/sub"
    assert c.count_by(FileQuery(), "uid") == {1: (3, 51), 2: (1, 20)}
    assert sorted(n for _, n, _ in c.query_names(FileQuery(uid=1))) == [b"a.txt", b"c.bin", b"hard.txt", b"\xff.txt"]


@pytest.mark.skipif("under" not in FileQuery.__dataclass_fields__, reason="FileQuery has no under/name_glob yet")
def test_names_under_and_glob(cats):
    c = cats[0]
    t, d1, d2, sub, files = _tree(c)
    rows = sorted(c.query_names(FileQuery(name_glob=b"*.txt")))
    assert [(p, n) for p, n, _ in rows] == sorted([(d1.ino, b"a.txt"), (sub.ino, b"b.txt"), (d2.ino, b"hard.txt"),
                                                   (sub.ino, b"\xff.txt")])
    under = {n for _, n, _ in c.query_names(FileQuery(under=d1.ino))}
    assert under == {b"a.txt", b"b.txt", b"\xff.txt"}
    assert {n for _, n, _ in c.query_names(FileQuery(under=d1.ino, regular_only=False))} == under | {b"sub"}
    assert {i.ino for i in c.query(FileQuery(under=d1.ino, uid=1))} == {files[0].ino, files[3].ino}
    assert c.count_by(FileQuery(under=sub.ino), "uid") == {1: (1, 1), 2: (1, 20)}
    assert c.count_by(FileQuery(under=d2.ino), "state") == {"online": (2, 50)}  # the hard link counts once


def test_standalone_server_is_refused_with_a_clear_message(tmp_path):
    """Transactions need a replica set: a standalone mongod is a configuration error, said at mount."""
    import subprocess
    from tests.mongod import free_port, mongod_binary
    port = free_port()
    os.makedirs(tmp_path / "db")
    subprocess.run([mongod_binary(), "--bind_ip", "127.0.0.1", "--port", str(port), "--dbpath", str(tmp_path / "db"),
                    "--wiredTigerCacheSizeGB", "0.25", "--fork", "--logpath", str(tmp_path / "log"),
                    "--pidfilepath", str(tmp_path / "pid")], check=True, capture_output=True, timeout=60)
    pid = int((tmp_path / "pid").read_text())
    try:
        c = MongoCatalog(f"mongodb://127.0.0.1:{port}/x")
        with pytest.raises(errors.ConfigError, match="standalone.*replica set"):
            c.init()
        c.close()
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)



def test_numbers_come_in_blocks_per_client_and_never_twice(cats):
    """Inode numbers and dentry positions come from a block of 1,000 each client takes
    with one $inc (issue 16: create made two counter round trips): four clients creating
    at once never get the same number, and 300 creates on a new client move the inode
    counter by one block."""
    made, errs = run_threads(4, lambda i: [cats[i].create(ROOT_INO, f"c{i}-{k}".encode(), new()).ino
                                           for k in range(50)])
    assert not errs
    inos = [x for part in made for x in part]
    assert len(set(inos)) == 200 and ROOT_INO not in inos
    poss = [e.pos for e in cats[0].readdir(ROOT_INO, 0, 1000)]
    assert len(poss) == 200 and len(set(poss)) == 200

    def seq(name):
        return cats[0].counters.find_one({"_id": name})["seq"]
    before = seq("ino")
    fresh = MongoCatalog(cats[0].url)
    try:
        for k in range(300):
            fresh.create(ROOT_INO, f"n{k}".encode(), new())
    finally:
        fresh.close()
    assert seq("ino") - before == 1000
