"""The job runner's retry timing on the fake clock (tierfs/jobs.py): a
transient failure (tier unreachable) waits with exponential backoff from
job_retry_delay up to job_retry_max_delay and is no attempt; a counted
failure (the copy fails its check) waits job_retry_delay and fails the job
after job_max_attempts. Minutes of backoff take milliseconds here."""

from __future__ import annotations

import os

from tierfs import errors
from tierfs.catalog.base import JobState
from tests.engine.faults import Recorder
from tests.engine.harness import Posix, with_engine

#: the runner polls the queue once a second (jobs.POLL_S): a retry starts within that of its time
POLL = 1.0


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


@with_engine(job_retry_delay=10, job_retry_max_delay=60)
async def test_transient_failure_backs_off_exponentially(eng, tmp_path):
    p = Posix(eng.fs)
    await p.write_file("f", os.urandom(5000))
    put = Recorder(eng.fs.tiers["vault"], "put", eng.clock,
                   lambda n: errors.TierUnavailable("vault: connection refused") if n <= 5 else None)
    t0 = eng.now()
    await p.request("f", "archive")
    await eng.idle(timeout=3600)
    assert await p.state("f") == "archived"
    assert len(put.times) == 6
    want = [10, 20, 40, 60, 60]                       # doubling from 10 s, capped at 60 s
    for got, w in zip(gaps(put.times), want):
        assert w <= got <= w + POLL + 0.5, (gaps(put.times), want)
    [job] = eng.catalog.jobs((JobState.DONE,))
    assert job.attempts == 1                          # waiting is no attempt
    assert eng.now() - t0 < 200 + 5


@with_engine(job_retry_delay=30, job_max_attempts=3)
async def test_counted_failure_retries_then_fails(eng, tmp_path):
    p = Posix(eng.fs)
    await p.write_file("f", os.urandom(5000))
    vault = eng.fs.tiers["vault"]
    verify = Recorder(vault, "verify", eng.clock, lambda n: None)
    vault_verify = verify.real
    verify.real = lambda *a: False                    # every copy reads back wrong
    await p.request("f", "archive")
    await eng.idle(timeout=3600)
    assert len(verify.times) == 3                     # job_max_attempts
    for got in gaps(verify.times):
        assert 30 <= got <= 30 + POLL + 0.5, gaps(verify.times)
    [job] = eng.catalog.jobs((JobState.FAILED,))
    assert job.attempts == 3 and "after 3 attempts" in job.last_error
    assert await p.state("f") == "online"             # the file is back where it was
    verify.real = vault_verify
    await p.request("f", "archive")                   # a new request works once the tier does
    await eng.idle()
    assert await p.state("f") == "archived"
