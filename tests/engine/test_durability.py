"""fsync() of a file returns once its bytes and the catalog's record of its
size are on disk, not only in the OS: with synchronous=NORMAL an SQLite
commit reaches the disk at the next checkpoint, so a machine crash after a
returned fsync could have left the file at its old size (issue 16 moved
more calls onto the SQLite fast path and made this rule explicit). The
catalog's log is synced after the commit (SqlCatalog.sync: one fdatasync
shared by concurrent callers, none when nothing was committed since)."""

from __future__ import annotations

import os

import pytest

from tierfs.catalog import sql as sqlmod

from tests.engine.harness import Posix, with_engine


@pytest.fixture
def datasyncs(monkeypatch):
    """The paths SqlCatalog.sync fdatasyncs, in order."""
    seen: list[str] = []
    real = os.fdatasync

    def spy(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)
    monkeypatch.setattr(sqlmod.os, "fdatasync", spy)
    return seen


@with_engine()
async def test_fsync_syncs_the_catalog_log_after_the_size_is_committed(eng, tmp_path, datasyncs):
    p = Posix(eng.fs)
    cat = eng.catalog
    synced_sizes = []
    real_sync = cat.sync

    def sync():
        # what the catalog holds when its log is made durable
        synced_sizes.append(cat.lookup(1, b"f").size)
        real_sync()
    cat.sync = sync
    fh = await p.open("f", os.O_CREAT | os.O_WRONLY)
    await p.pwrite(fh, b"x" * 5000, 0)
    await eng.fs.fsync(fh, False)
    assert synced_sizes == [5000]
    wal = [x for x in datasyncs if x.endswith("catalog.db-wal")]
    assert len(wal) == 1
    await p.pwrite(fh, b"y", 5000)
    await eng.fs.fsync(fh, True)
    assert synced_sizes[-1] == 5001
    assert len([x for x in datasyncs if x.endswith("catalog.db-wal")]) == 2
    await p.close(fh)


def test_sync_of_an_sqlite_catalog_is_one_fdatasync_per_batch_of_commits(tmp_path, datasyncs):
    """No commit since the last sync: nothing to do; several commits: one fdatasync of the log."""
    from tierfs.catalog import open_catalog
    from tierfs.catalog.base import ROOT_INO, Inode
    cat = open_catalog(f"sqlite:///{tmp_path}/c.db")
    cat.init()
    cat.sync()
    n = len(datasyncs)
    cat.sync()
    assert len(datasyncs) == n, "nothing committed: no fdatasync"
    for i in range(3):
        cat.create(ROOT_INO, f"f{i}".encode(), Inode(ino=0, mode=0o100644, uid=0, gid=0))
    cat.sync()
    assert len(datasyncs) == n + 1 and datasyncs[-1].endswith("c.db-wal")
    cat.close()
