"""The offline contract in-process (tierfs/archive.py): opening an archived
file waits for its restore, O_NONBLOCK and restore_mode = "error" get EAGAIN
and queue it, block_timeout bounds the wait (on the fake clock: the restore
is kept from finishing by an unreachable archive tier), O_TRUNC needs no
restore."""

from __future__ import annotations

import errno
import os

import pytest

from tierfs import errors
from tierfs.catalog.base import JobKind, JobState
from tests.engine.faults import Recorder
from tests.engine.harness import Posix, with_engine

DATA = os.urandom(30000)


async def archived(eng, p: Posix, name: str = "f") -> int:
    await p.write_file(name, DATA)
    await p.request(name, "archive")
    await eng.idle()
    assert await p.state(name) == "archived"
    return (await p.stat(name)).ino


def restore_jobs(eng, ino: int) -> list:
    return [j for j in eng.catalog.jobs(tuple(JobState), ino) if j.kind == JobKind.RESTORE]


@with_engine()
async def test_open_blocks_until_restored(eng, tmp_path):
    p = Posix(eng.fs)
    ino = await archived(eng, p)
    assert (await p.stat("f")).size == len(DATA)            # stat needs no restore
    assert await p.read_file("f") == DATA                   # open waited for the restore
    assert await p.state("f") == "dual"
    assert [j.state for j in restore_jobs(eng, ino)] == [JobState.DONE]


@with_engine()
async def test_nonblocking_open_gets_eagain_and_queues(eng, tmp_path):
    p = Posix(eng.fs)
    ino = await archived(eng, p)
    with pytest.raises(OSError) as e:
        await p.open("f", os.O_RDONLY | os.O_NONBLOCK)
    assert e.value.errno == errno.EAGAIN
    assert len(restore_jobs(eng, ino)) == 1                 # queued before answering
    await eng.idle()
    assert await p.state("f") == "dual"
    fh = await p.open("f", os.O_RDONLY | os.O_NONBLOCK)     # online now: no EAGAIN
    assert await p.pread(fh, len(DATA), 0) == DATA
    await p.close(fh)


@with_engine(restore_mode="error")
async def test_restore_mode_error(eng, tmp_path):
    p = Posix(eng.fs)
    ino = await archived(eng, p)
    with pytest.raises(OSError) as e:
        await p.open("f", os.O_RDONLY)
    assert e.value.errno == errno.EAGAIN
    await eng.idle()
    assert await p.read_file("f") == DATA
    assert len(restore_jobs(eng, ino)) == 1


@with_engine(block_timeout=30, job_retry_delay=5, job_retry_max_delay=60)
async def test_block_timeout_on_the_fake_clock(eng, tmp_path):
    """The archive tier is unreachable: the restore waits with backoff, the opener
    gets EAGAIN after block_timeout (30 s of fake time), and the restore finishes
    once the tier is back."""
    p = Posix(eng.fs)
    ino = await archived(eng, p)
    vault = eng.fs.tiers["vault"]
    down = Recorder(vault, "open_reader", eng.clock, lambda n: errors.TierUnavailable("vault: connection refused"))
    t0 = eng.now()
    with pytest.raises(OSError) as e:
        await p.open("f", os.O_RDONLY)
    waited = eng.now() - t0
    assert e.value.errno == errno.EAGAIN
    assert 30 <= waited < 32, waited                        # block_timeout, plus at most one poll
    assert len(down.times) >= 3                             # the restore was tried (5 s, 10 s, 20 s backoff)
    assert await p.state("f") == "restoring" or await p.state("f") == "archived"
    down.restore()
    await eng.idle()
    assert await p.read_file("f") == DATA
    assert [j.state for j in restore_jobs(eng, ino)] == [JobState.DONE]


@with_engine()
async def test_truncating_open_of_an_archived_file_needs_no_restore(eng, tmp_path):
    p = Posix(eng.fs)
    ino = await archived(eng, p)
    vault = eng.fs.tiers["vault"]
    reads = Recorder(vault, "open_reader", eng.clock)
    await p.write_file("f", b"new")                         # O_WRONLY | O_TRUNC
    assert await p.state("f") == "online"
    assert await p.read_file("f") == b"new"
    assert reads.times == [] and restore_jobs(eng, ino) == []
