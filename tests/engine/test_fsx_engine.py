"""The randomized model test (tests/fsmodel.py) in-process: the same seeds
and operations as tests/mount/test_fsx.py on a mount, through FileSystem calls,
with the job workers moving the bytes underneath on the fake clock. Fast
enough for many more seeds than the mount run; prints seeds per second."""

from __future__ import annotations

import os
import time

from tests.engine.harness import Posix, engine, run
from tests.fsmodel import Fsx
from tests.reliability_util import assert_no_orphans
from tierfs.fsck import Fsck

#: seeds per run; TIERFS_FSX_ENGINE_SEEDS overrides
SEEDS = int(os.environ.get("TIERFS_FSX_ENGINE_SEEDS", "200"))
OPS = 50


def test_fsx_in_process(tmp_path):
    """Every read matches the model across many seeds while moves run underneath."""
    stats = {"requests": 0, "eagain": 0}

    async def main():
        async with engine(tmp_path, job_retry_delay=1, block_timeout=3) as eng:
            ops = Posix(eng.fs)

            async def totals_match(f):
                """`du`'s running totals equal a count of the files and the model's files and bytes."""
                assert not [x for x in Fsck(eng.fs.catalog, {}).run_check("check_totals") if x.check == "totals"]
                files = {id(data): len(data) for data in f.files.values()}   # hard links share their bytes
                totals = eng.fs.catalog.totals()
                assert (sum(n for n, _ in totals.values()), sum(b for _, b in totals.values())) == \
                    (len(files), sum(files.values())), (f.seed, totals, f.log[-5:])
            for seed in range(SEEDS):
                f = Fsx(ops, f"s{seed}", seed, OPS)
                f.before_cleanup = totals_match
                await f.run()
                stats["requests"] += f.requests
                stats["eagain"] += f.truncate_eagain
            await eng.idle()
            await eng.daemon.engine.gc.collect()
            return eng.home

    t0 = time.monotonic()
    home = run(main)
    took = time.monotonic() - t0
    print(f"\nfsx in-process: {SEEDS} seeds x {OPS} ops ({stats['requests']} move requests, {stats['eagain']} "
          f"truncates retried after EAGAIN) in {took:.1f}s: {SEEDS / took:.1f} seeds/s")
    assert_no_orphans(f"sqlite:///{home}/catalog.db", {t: os.path.join(home, t) for t in ("disk", "disk2", "vault")})
