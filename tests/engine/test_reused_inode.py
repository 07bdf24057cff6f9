"""A job outliving its file must not act on the next file that gets its inode
number (found by tests/engine/test_fsx_engine.py: a read returned the bytes
of a file deleted earlier).

SQLite gave a new row the largest rowid + 1, so deleting the newest file
handed its number to the next one; purge cancels only a file's *pending*
jobs: a job that is running (copying) when its file is deleted and purged
goes on, and its final switch checks (ino, data_version), which the new
file matched. Inode numbers are never given twice now (catalog/sql.py
_NEXT_INO; MongoDB allocates from a counter): the job's switch finds no
such inode and drops its copy."""

from __future__ import annotations

import os

from tests.engine.faults import Gate
from tests.engine.harness import Posix, with_engine


@with_engine()
async def test_running_move_of_a_deleted_file_leaves_the_next_file_alone(eng, tmp_path):
    p = Posix(eng.fs)
    old, new = os.urandom(20000), os.urandom(7000)
    await p.write_file("b", old)
    b_ino = (await p.stat("b")).ino
    copy = Gate(eng.fs.tiers["disk2"], "put", before=True)
    await p.request("b", "migrate to=disk2")
    await copy.reached()                                  # the migrate is copying b
    await p.unlink("b")                                   # b is deleted and purged meanwhile
    await p.write_file("d", new)
    assert (await p.stat("d")).ino != b_ino               # d used to get b's inode number
    copy.open()
    await eng.idle()
    await p.forget_all()                                  # the kernel dropped its caches: read what the catalog says
    got = await p.read_file("d")
    assert got != old, "d reads the deleted b's bytes"
    assert got == new
    d = eng.catalog.get((await p.stat("d")).ino)
    assert d.tier == "disk" and d.data_version >= 1       # the migrate did not switch d
    assert not list(eng.fs.tiers["disk2"].keys())          # its copy of b was dropped, not left behind
