"""The attribute-cache race of tests/unit/test_attrcache.py (fsx seed 103), driven
through real FileSystem calls: an archive job abandons its copy because the
file was opened for writing; its state switch reads the row before the
writer's flush commits and returns after the flush did. The size the flush
wrote must stay (attrcache.AttrCache.persisted gives the flush's result a
newer sequence number than any call that started before it)."""

from __future__ import annotations

import os

from tierfs.catalog.base import JobState
from tests.engine.faults import Gate
from tests.engine.harness import Posix, with_engine

OLD, NEW = 12679, 14916


@with_engine()
async def test_switch_overlapping_a_flush_keeps_the_flushed_size(eng, tmp_path):
    p = Posix(eng.fs)
    old = os.urandom(OLD)
    await p.write_file("f", old)
    ino = (await p.stat("f")).ino
    copy = Gate(eng.fs.tiers["vault"], "put", before=True)        # the archive copy waits for us
    abandon = Gate(eng.catalog, "switch", lambda t: t.cause.startswith("archive not completed"))
    await p.request("f", "archive")
    await copy.reached()                                          # marked archiving, copying
    fh = await p.open("f", os.O_WRONLY)
    tail = os.urandom(NEW - OLD)
    await p.pwrite(fh, tail, OLD)                                 # the new size lives in the cache
    copy.open()                                                   # the job sees the writer: abandon
    await abandon.reached()                                       # its switch read the old size
    await eng.fs.fsync(fh, False)                                 # the flush commits and returns first
    assert eng.catalog.get(ino).size == NEW
    [job] = eng.catalog.jobs((JobState.RUNNING,), ino)
    abandon.open()                                                # then the switch returns the old row
    while eng.catalog.get_job(job.id).state == JobState.RUNNING:  # the job took it and gave up (retry)
        await p.sleep(0.01)
    assert eng.catalog.get_job(job.id).last_error
    assert (await eng.fs.getattr(ino)).size == NEW
    await p.close(fh)
    assert (await p.stat("f")).size == NEW
    assert await p.read_file("f") == old + tail
    assert eng.catalog.get(ino).size == NEW
