"""An SQLite catalog made by the tierfs before issue 15 (SQLAlchemy made its
tables: tests/data/catalog_v2/make.py) opens, reads and writes with this
one, and a catalog made now has the same tables and indexes."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import sys

import pytest

from tierfs import errors
from tierfs.catalog import open_catalog
from tierfs.catalog.base import ROOT_INO, SCHEMA_VERSION, FileQuery, Inode, JobKind, JobState, State

OLD = os.path.join(os.path.dirname(__file__), "..", "data", "catalog_v2", "catalog.db")
T0 = 1_767_225_600 * 10**9


@pytest.fixture
def old_url(tmp_path):
    shutil.copy(OLD, tmp_path / "catalog.db")
    return f"sqlite:///{tmp_path}/catalog.db"


def shape(path: str) -> dict[str, list]:
    """Every table's columns (name, type, not null, primary key, hidden) and
    every index's columns and condition: what the catalog's SQL relies on."""
    with contextlib.closing(sqlite3.connect(path)) as c:
        out = {}
        for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            out[t] = [(r[1], r[2], r[3], r[5], r[6]) for r in c.execute(f"PRAGMA table_xinfo({t})")]
        for name, sql in c.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name"):
            out[name] = [[r[2] for r in c.execute(f"PRAGMA index_info({name})")],
                         sql and sql.split(" WHERE ", 1)[1:]]
        return out


def test_the_old_catalog_opens_reads_and_writes(old_url):
    cat = open_catalog(old_url)
    try:
        assert cat.initialised() and cat.schema_version() == 2
        cat.init()   # what a mount does: version 3 adds columns (issue 18), 4 the running totals (issue 20),
        assert cat.schema_version() == SCHEMA_VERSION == 7   # 5 the size class, 6 the candidates index, 7 nothing (stripes: MongoDB)
        assert cat.totals() == cat.scan_totals() == {("online", "disk", None): (1, 5),
                                                     ("archived", None, "vault"): (1, 1000)}
        docs = cat.lookup(ROOT_INO, b"docs")
        a = cat.lookup(docs.ino, b"a.txt")
        assert (a.size, a.tier, a.location, a.nlink, a.checksum) == (5, "disk", "k-a", 2, "c" * 64)
        assert cat.lookup(ROOT_INO, b"b.txt").ino == a.ino
        assert cat.getxattr(a.ino, b"user.project") == b"blue"
        assert cat.get(cat.lookup(ROOT_INO, b"link").ino).target == b"docs/a.txt"
        cold = cat.lookup(ROOT_INO, b"cold.bin")
        assert (cold.state, cold.archive_tier, cold.archive_location) == (State.ARCHIVED, "vault", "v-cold")
        assert (cold.archive_copies, cold.stub_size, cold.origin_tier, cold.origin_location) == (None, 0, None, None)
        job, = cat.jobs(ino=cold.ino)
        assert (job.uid, job.more_targets) == (None, None)
        assert (job.kind, job.state, job.target_tier, job.keep_online) == (JobKind.RESTORE, JobState.PENDING,
                                                                           "disk", False)
        assert [e.to_state for e in cat.events(cold.ino)] == ["archived"]
        assert [(g.tier, g.key) for g in cat.garbage()] == [("disk", "k-old")]
        tomb, = cat.tombstones()
        assert (tomb.path, tomb.why) == (b"gone", "created 400d ago > 365d")
        s, = cat.sessions()
        assert s.clean is True and s.id == "s1"
        assert sorted(e.name for e in cat.readdir(ROOT_INO, 0, 100)) == [b"b.txt", b"cold.bin", b"docs", b"link"]
        assert cat.paths_of([a.ino, cold.ino]) in ({a.ino: b"docs/a.txt", cold.ino: b"cold.bin"},
                                                  {a.ino: b"b.txt", cold.ino: b"cold.bin"})
        assert [i.ino for i in cat.query(FileQuery(states=(State.ARCHIVED,)))] == [cold.ino]
        # Writes: new numbers follow the old ones; the namespace rules hold.
        f = cat.create(docs.ino, b"new", Inode(ino=0, mode=0o100644, uid=1, gid=1, atime_ns=T0, mtime_ns=T0,
                                                ctime_ns=T0, crtime_ns=T0))
        assert f.ino > cold.ino and cat.get(f.ino).last_access_ns == T0
        with contextlib.closing(cat.connect()) as c:   # generated, for the old rows as for the new
            assert dict(c.execute("SELECT ino, size_class FROM inodes WHERE ino IN (?, ?, ?)", (a.ino, cold.ino, f.ino))) \
                == {a.ino: 3, cold.ino: 10, f.ino: 0}   # 5 bytes, 1000 bytes, empty
        cat.rename(docs.ino, b"new", ROOT_INO, b"moved")
        with pytest.raises(errors.NotEmpty):
            cat.rmdir(ROOT_INO, b"docs", T0)
        cat.unlink(ROOT_INO, b"b.txt", T0)
        assert cat.get(a.ino).nlink == 1
        assert cat.totals() == cat.scan_totals()
        claimed = cat.claim("s2")
        assert claimed.id == job.id and claimed.attempts == 1
    finally:
        cat.close()


def test_a_new_catalog_has_the_tables_and_indexes_of_the_old_one_migrated(tmp_path, old_url):
    """A catalog made now and the old one after its migration to version 3
    have the same tables, columns (in order) and indexes."""
    new = tmp_path / "new.db"
    for url in (f"sqlite:///{new}", old_url):
        cat = open_catalog(url)
        cat.init()
        cat.close()
    migrated = shape(str(tmp_path / "catalog.db"))
    assert shape(str(new)) == migrated
    assert [c[0] for c in migrated["inodes"]][-5:] == ["archive_copies", "stub_size", "origin_tier", "origin_location",
                                                       "size_class"]
    assert "stubs" in migrated and "stubs" not in shape(OLD)


def test_postgresql_is_refused_naming_the_supported_schemes():
    with pytest.raises(errors.ConfigError, match=r"PostgreSQL is not supported.*sqlite:///PATH, mongodb://"):
        open_catalog("postgresql://u:secret@db/tierfs")


def test_the_sqlite_catalog_needs_no_sqlalchemy(tmp_path):
    """SQLAlchemy left the dependencies: nothing imports it any more."""
    code = ("import sys; from tierfs.catalog import open_catalog; c = open_catalog(sys.argv[1]); c.init(); "
            "c.get(1); c.close(); assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'")
    import subprocess
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{tmp_path}/c.db"], check=True)
