"""A file's sha256 is computed once it has stayed closed SETTLE_S (checksums.py):
a file deleted or written again within that time is not read back for nothing
(issue 16: dbench deletes most files soon after writing them, and each was read
back and hashed), and a file closed several times in a row is read once."""

from __future__ import annotations

import os

import trio

from tierfs.checksums import SETTLE_S

from tests.engine.faults import Recorder
from tests.engine.harness import Posix, with_engine

BIG = 300 * 1024   # above the size whose checksum the close itself records


@with_engine()
async def test_deleted_soon_after_close_is_never_read_back(eng, tmp_path):
    p = Posix(eng.fs)
    reads = Recorder(eng.fs.tiers["disk"], "open_reader", eng.clock)
    await p.write_file("tmp", os.urandom(BIG))
    await trio.sleep(SETTLE_S / 10)          # deleted a moment after its close
    await p.unlink("tmp")
    await trio.sleep(SETTLE_S * 5)
    assert reads.times == []


@with_engine()
async def test_closed_again_within_the_settle_time_is_read_once_and_gets_its_checksum(eng, tmp_path):
    p = Posix(eng.fs)
    reads = Recorder(eng.fs.tiers["disk"], "open_reader", eng.clock)
    data = b""
    for _ in range(5):                       # appends in a loop, each closed
        chunk = os.urandom(BIG // 2)
        fh = await p.open("log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        await p.pwrite(fh, chunk, len(data))
        await p.close(fh)
        data += chunk
        await trio.sleep(SETTLE_S / 4)
    await trio.sleep(SETTLE_S * 3)
    assert len(reads.times) == 1
    import hashlib
    ino = (await p.stat("log")).ino
    assert eng.catalog.get(ino).checksum == hashlib.sha256(data).hexdigest()
