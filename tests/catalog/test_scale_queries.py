"""Issue 20, 10 million entries: `tierfs find` streams (the first rows come
before the query has read them all) and `tierfs du` / `status` read running
totals that stay equal to a scan through any sequence of changes. Both
backends (the `catalog` fixture)."""

import io
import random
import sys

import pytest

from tests.catalog.test_conformance import DIR, FILE, new
from tierfs import errors
from tierfs.catalog.base import ROOT_INO, Changes, FileQuery, State, Transition, now_ns
from tierfs.cli import admin


def _archived_tree(catalog, n: int):
    """/d{k} with n files in all, every other one archived; returns {ino: path}."""
    paths = {}
    for k in range(4):
        d = catalog.create(ROOT_INO, b"d%d" % k, new(DIR))
        made = catalog.create_many([(d.ino, b"f%d" % j, new(size=j, state=State.ARCHIVED if j % 2 else State.ONLINE,
                                                                 tier=None if j % 2 else "disk",
                                                                 archive_tier="vault" if j % 2 else None))
                                    for j in range(k * n // 4, (k + 1) * n // 4)], now_ns())
        paths.update({m.ino: b"d%d/f%d" % (k, j) for m, j in zip(made, range(k * n // 4, (k + 1) * n // 4))})
    return paths


@pytest.mark.parametrize("by_name", [False, True], ids=["inodes", "under"])
def test_query_names_yields_the_first_rows_before_reading_the_rest(catalog, by_name):
    """The first row comes after one batch was read, not after all of them:
    MongoDB's query_names used to gather every row before yielding one (at 8M
    entries it hit the client's 10 s socket timeout before the first path)."""
    _archived_tree(catalog, 2000)
    catalog.names_batch = 100
    q = FileQuery(states=(State.ARCHIVED,), under=ROOT_INO if by_name else None)
    before = catalog.rows_read
    it = iter(catalog.query_names(q))
    first = next(it)
    assert catalog.rows_read - before <= 100   # one batch read so far, of 1000 matching names
    rest = list(it)
    assert len(rest) + 1 == 1000 and len({r[2] for r in [first, *rest]}) == 1000
    assert catalog.rows_read - before == 1000  # each matching name read once: proportional to the result


def test_query_names_by_state_keeps_every_other_condition(catalog):
    """The walk by state alone is taken only when nothing else is asked: an
    owner of uid 0 or a size bound of 0 still filters."""
    d = catalog.create(ROOT_INO, b"d", new(DIR))
    mine = catalog.create(d.ino, b"mine", new(size=0, state=State.ARCHIVED).copy(uid=0))
    catalog.create(d.ino, b"theirs", new(size=5, state=State.ARCHIVED))
    names = lambda **kw: sorted(n for _, n, _ in catalog.query_names(FileQuery(states=(State.ARCHIVED,), **kw)))  # noqa: E731
    assert names() == [b"mine", b"theirs"]
    assert names(uid=0) == [b"mine"] and names(max_size=0) == [b"mine"] and names(min_size=1) == [b"theirs"]
    assert [r[2] for r in catalog.query_names(FileQuery(uid=0))] == [mine.ino]


def test_find_prints_paths_while_the_catalog_is_still_being_read(catalog):
    """The CLI's printing loop writes (and flushes) the first paths before the
    query has read every row, and prints every match once."""
    paths = _archived_tree(catalog, 4000)
    catalog.names_batch = 500
    seen = []

    class Out(io.RawIOBase):
        buffer = None

        def write(self, b):
            seen.append((catalog.rows_read, bytes(b)))
            return len(b)
    out = Out()
    out.buffer = out
    saved, sys.stdout = sys.stdout, out
    try:
        admin._find_print(catalog, FileQuery(states=(State.ARCHIVED,)), "/mnt", False, False, None)
    finally:
        sys.stdout = saved
    printed = b"".join(b for _, b in seen).splitlines()
    assert sorted(printed) == sorted(b"/" + p for i, p in paths.items() if catalog.get(i).state == State.ARCHIVED)
    # the first 1000 paths went out after two batches of rows, while half of them were still unread
    assert seen[0][0] <= 1000 and len(seen) > 1


def _check_totals(catalog, model):
    """totals() == a scan == the test's own count, and du/status read them."""
    want = {}
    for ino, (state, tier, arch, size) in model.items():
        n, b = want.get((state, tier, arch), (0, 0))
        want[(state, tier, arch)] = (n + 1, b + size)
    assert catalog.totals() == want
    assert catalog.scan_totals() == want
    by_state = {}
    for (state, _, _), (n, b) in want.items():
        m, c = by_state.get(state, (0, 0))
        by_state[state] = (m + n, c + b)
    assert catalog.count_by(FileQuery(), "state") == by_state
    # a subtree query (a scan) agrees with the totals' answer for the root
    assert catalog.count_by(FileQuery(under=ROOT_INO), "state") == by_state
    assert catalog.stats().by_state == by_state


def test_totals_stay_equal_to_a_scan_through_random_changes(catalog):
    """Creates (one and in batches), writes, truncates, archives, restores,
    links, unlinks (open and not), renames over files, chmod to and from a
    regular file type, burials: after each step the running totals equal a
    full scan and the test's model of live regular files."""
    rng = random.Random(20)
    d = catalog.create(ROOT_INO, b"d", new(DIR))
    names: dict[bytes, int] = {}     # name in d -> ino
    model: dict[int, tuple] = {}     # ino -> (state, tier, archive_tier, size) of the live regular files
    nlinks: dict[int, int] = {}
    k = 0
    for step in range(160):
        op = rng.choice(["create", "create", "many", "write", "truncate", "archive", "restore", "link", "unlink",
                         "rename", "bury", "symlinkish"])
        inos = sorted(set(names.values()))
        ino = rng.choice(inos) if inos else None
        if op == "create" or ino is None:
            k += 1
            size = rng.randrange(0, 5000)
            i = catalog.create(d.ino, b"f%d" % k, new(size=size, tier="disk", location=f"k{k}"))
            names[b"f%d" % k], model[i.ino], nlinks[i.ino] = i.ino, ("online", "disk", None, size), 1
        elif op == "many":
            batch = []
            for _ in range(rng.randrange(1, 6)):
                k += 1
                batch.append((b"f%d" % k, rng.randrange(0, 5000)))
            made = catalog.create_many([(d.ino, n, new(size=s, tier="disk", location=n.decode()))
                                        for n, s in batch], now_ns())
            for (n, s), i in zip(batch, made):
                names[n], model[i.ino], nlinks[i.ino] = i.ino, ("online", "disk", None, s), 1
        elif op in ("write", "truncate"):
            size = rng.randrange(0, 9000)
            if op == "write":
                catalog.bump_version(ino, {"size": size, "mtime_ns": now_ns()})
            else:
                catalog.update(ino, {"size": size, "ctime_ns": now_ns()})
            if ino in model:
                model[ino] = (*model[ino][:3], size)
        elif op == "archive" and ino in model and model[ino][0] == "online":
            cur = catalog.get(ino)
            catalog.switch(Transition(ino, cur.data_version, (State.ONLINE,),
                                      Changes(state=State.ARCHIVED, tier=None, location=None, archive_tier="vault",
                                              archive_location=f"a{ino}"), "test"))
            model[ino] = ("archived", None, "vault", cur.size)
        elif op == "restore" and ino in model and model[ino][0] == "archived":
            cur = catalog.get(ino)
            catalog.switch(Transition(ino, cur.data_version, (State.ARCHIVED,),
                                      Changes(state=State.DUAL, tier="disk2", location=f"r{ino}"), "test"))
            model[ino] = ("dual", "disk2", "vault", cur.size)
        elif op == "link":
            k += 1
            catalog.link(ino, d.ino, b"f%d" % k, now_ns())
            names[b"f%d" % k] = ino
            nlinks[ino] += 1
        elif op == "unlink":
            name = rng.choice([n for n, i in names.items() if i == ino])
            if rng.random() < 0.5:
                catalog.unlink(d.ino, name, now_ns())   # kept at nlink 0 (open): no longer counted
            else:
                catalog.remove(d.ino, name, now_ns())
            del names[name]
            nlinks[ino] -= 1
            if nlinks[ino] == 0:
                model.pop(ino, None)
                if rng.random() < 0.5:
                    catalog.purge(ino)
        elif op == "rename" and len(names) > 1:
            src, dst = rng.sample(sorted(names), 2)
            src_ino, dst_ino = names[src], names[dst]
            try:
                catalog.rename(d.ino, src, d.ino, dst, ctime_ns=now_ns())
            except errors.TierfsError:
                continue
            if src_ino != dst_ino:
                del names[src]
                names[dst] = src_ino
                nlinks[dst_ino] -= 1
                if nlinks[dst_ino] == 0:
                    model.pop(dst_ino, None)
            else:
                del names[src]
                nlinks[src_ino] -= 1
        elif op == "bury" and ino in model:
            catalog.bury(ino, "test", "random")
            for n in [n for n, i in names.items() if i == ino]:
                del names[n]
            nlinks[ino] = 0
            model.pop(ino)
        elif op == "symlinkish" and ino in model:
            # a mode change that makes it no regular file and back (fsck repairs do this)
            catalog.update(ino, {"mode": 0o120777})
            _check_totals(catalog, {i: v for i, v in model.items() if i != ino})
            catalog.update(ino, {"mode": FILE})
        _check_totals(catalog, model)


def test_totals_are_rebuilt_from_a_scan(catalog):
    """rebuild_totals() (fsck --repair, bulk loads) makes them equal a scan
    again after they drifted (here: the totals emptied behind the catalog's back)."""
    _archived_tree(catalog, 40)
    want = catalog.scan_totals()
    assert catalog.totals() == want and len(want) == 2
    _drift(catalog)
    assert catalog.totals() != want
    catalog.rebuild_totals()
    assert catalog.totals() == want
    f = catalog.create(ROOT_INO, b"after", new(size=5, tier="disk"))   # and they are kept from there on
    catalog.update(f.ino, {"size": 7})
    assert catalog.totals() == catalog.scan_totals()


def _drift(catalog):
    """Make the totals wrong without changing any inode (what an older tierfs
    still mounted during the upgrade to schema 4 could do on MongoDB)."""
    if hasattr(catalog, "totals_c"):
        catalog.totals_c.delete_many({})
    else:
        c = catalog.connect()
        c.execute("UPDATE totals SET files = files + 3")
        c.close()


def test_fsck_finds_drifted_totals_and_rebuilds_them(catalog):
    from tierfs import fsck as F
    _archived_tree(catalog, 40)
    assert not [f for f in F.Fsck(catalog, {}).run() if f.check == "totals"]
    _drift(catalog)
    [f] = [f for f in F.Fsck(catalog, {}).run() if f.check == "totals"]
    assert f.severity == F.Severity.ERROR and not f.repaired and "differ from a count" in f.problem, f
    [f] = [f for f in F.Fsck(catalog, {}, repair=True).run() if f.check == "totals"]
    assert f.repaired and f.action == "rebuilt from the count"
    assert catalog.totals() == catalog.scan_totals() and not [
        f for f in F.Fsck(catalog, {}).run() if f.check == "totals"]


def test_totals_stay_exact_under_concurrent_writers(catalog_url):
    """Four catalog objects (four mounts) creating, resizing and removing files
    at once, in one directory: transactions that conflict on a totals document
    are retried, none is lost or counted twice."""
    import threading

    from tierfs.catalog import open_catalog
    cats = [open_catalog(catalog_url) for _ in range(4)]
    for c in cats:
        c.init()
    d = cats[0].create(ROOT_INO, b"d", new(DIR))
    failures = []

    def work(k, cat):
        try:
            rng = random.Random(k)
            for j in range(40):
                f = cat.create(d.ino, b"w%d-%d" % (k, j), new(size=j, tier="disk"))
                cat.update(f.ino, {"size": rng.randrange(1000)})
                if j % 3 == 0:
                    cat.remove(d.ino, b"w%d-%d" % (k, j), now_ns())
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(e)
    threads = [threading.Thread(target=work, args=(k, c)) for k, c in enumerate(cats)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not failures, failures
        totals = cats[0].totals()
        assert totals == cats[0].scan_totals() and totals[("online", "disk", None)][0] == 4 * 26
    finally:
        for c in cats:
            c.close()
