"""What depends on elapsed time, on the fake clock: batched access times
(atime_flush) and a policy's `inactive_for`. Minutes of daemon time take
about a second."""

from __future__ import annotations

import os

from tests.engine.harness import Posix, with_engine

MIN = 60.0


@with_engine(atime_flush=60)
async def test_access_times_reach_the_catalog_in_batches(eng, tmp_path):
    """An access shows at once; the catalog gets it with the atime loop's next
    tick (5 s), then at most once per atime_flush (60 s) per file."""
    p = Posix(eng.fs)
    await p.write_file("f", b"x" * 100)
    ino = (await p.stat("f")).ino
    await p.sleep(2 * MIN)
    before = eng.catalog.get(ino).atime_ns
    await p.read_file("f")
    seen = (await p.stat("f")).atime_ns                   # the mount shows the access at once
    assert seen > before
    assert eng.catalog.get(ino).atime_ns == before        # not written by the open itself
    await p.sleep(5 + 1)                                  # the loop's tick
    assert eng.catalog.get(ino).atime_ns == seen
    await p.sleep(1)
    await p.read_file("f")                                # a second access within atime_flush of the write
    again = (await p.stat("f")).atime_ns
    assert again > seen
    await p.sleep(MIN - 10)
    assert eng.catalog.get(ino).atime_ns == seen          # waits for the interval
    await p.sleep(10 + 1)
    assert eng.catalog.get(ino).atime_ns == again


@with_engine(atime_flush=60, policy=[{"name": "cold", "action": "archive", "inactive_for": "10m",
                                      "interval": "1m", "initial_delay": "1m"}])
async def test_policy_archives_what_is_inactive_for_its_age(eng, tmp_path):
    p = Posix(eng.fs)
    await p.write_file("old", os.urandom(1000))
    await p.write_file("used", os.urandom(1000))
    await p.sleep(7 * MIN)
    await p.read_file("used")                             # used 7 minutes in: 10 more before it is cold
    await p.sleep(2 * MIN)                                # 9 minutes: nothing is inactive for 10 yet
    assert (await p.state("old"), await p.state("used")) == ("online", "online")
    await p.sleep(3 * MIN)                                # 12 minutes: the rule (every minute) took `old`
    await eng.idle()
    assert (await p.state("old"), await p.state("used")) == ("archived", "online")
    await p.sleep(7 * MIN)                                # 19 minutes: `used` idle for 12
    await eng.idle()
    assert await p.state("used") == "archived"
