"""Restore batches of a `command` tier (tierfs/tiers/batch.py): which requests
a batch takes and when it is due, the list file's order and columns, the
copytool's results, each object's outcome, and the config's checks."""

from __future__ import annotations

import os

import pytest

from tierfs import config, errors
from tierfs.tiers import batch
from tierfs.tiers.batch import DONE, FAILED, PENDING, Request

K = [f"{i:032x}" for i in range(10)]


def req(i: int, since: float, size: int | None = 10, **kw) -> Request:
    return Request(K[i], size, "ab" * 32, since, **kw)


def test_a_batch_is_due_when_its_oldest_request_is_batch_wait_old():
    p = batch.plan([req(1, 100.0), req(0, 103.0)], now=104.0, wait=5, max_files=10, max_bytes=None)
    assert [r.key for r in p.requests] == [K[1], K[0]] and p.due_at == 105.0
    assert batch.plan([], now=104.0, wait=5, max_files=10, max_bytes=None).due_at == float("inf")


def test_a_full_batch_is_due_at_once_and_takes_the_oldest():
    reqs = [req(i, 100.0 + (7 - i)) for i in range(8)]   # K[7] is the oldest
    p = batch.plan(reqs, now=108.0, wait=60, max_files=3, max_bytes=None)
    assert p.due_at == 108.0 and [r.key for r in p.requests] == [K[7], K[6], K[5]]


def test_max_bytes_closes_a_batch_and_a_larger_object_goes_alone():
    reqs = [req(0, 1.0, 40), req(1, 2.0, 50), req(2, 3.0, 30)]
    p = batch.plan(reqs, now=4.0, wait=60, max_files=10, max_bytes=100)
    assert [r.key for r in p.requests] == [K[0], K[1]] and p.due_at == 4.0
    p = batch.plan([req(3, 1.0, 500), req(4, 2.0, 1)], now=3.0, wait=60, max_files=10, max_bytes=100)
    assert [r.key for r in p.requests] == [K[3]] and p.due_at == 3.0
    p = batch.plan([req(0, 1.0, 40)], now=2.0, wait=60, max_files=10, max_bytes=100)
    assert p.due_at == 61.0   # below both limits: it waits


def test_pending_requests_wait_for_their_backoff_and_failed_ones_are_left_out():
    reqs = [req(0, 1.0, state=PENDING, tries=1, not_before=50.0), req(1, 2.0, state=FAILED), req(2, 40.0)]
    p = batch.plan(reqs, now=45.0, wait=10, max_files=10, max_bytes=None)
    assert [r.key for r in p.requests] == [K[2]] and p.due_at == 50.0
    p = batch.plan(reqs, now=50.0, wait=10, max_files=10, max_bytes=None)
    assert [r.key for r in p.requests] == [K[0], K[2]] and p.due_at == 11.0   # overdue: runs now
    assert [batch.pending_delay(30, n) for n in (1, 2, 3, 10)] == [30, 60, 120, 600]
    assert batch.pending_delay(0, 1) == 1.0


def test_the_list_is_sorted_by_key_with_four_columns():
    text = batch.list_lines([(K[3], "/s/3.part", 7, "cd" * 32), (K[1], "/s/1.part", None, None)])
    assert text == f"{K[1]}\t/s/1.part\t\t\n{K[3]}\t/s/3.part\t7\t{'cd' * 32}\n"


def test_results_lines_for_other_keys_or_outcomes_are_ignored(tmp_path, caplog):
    path = tmp_path / "results"
    assert batch.read_results(str(path), K[:2], "t") == {}   # the copytool wrote none
    path.write_text(f"{K[0]}\tfailed\tbad block\n{K[1]}\tdone\n\n{K[5]}\tdone\n{K[1]}\tlost\nnonsense\n")
    got = batch.read_results(str(path), K[:2], "tier t")
    assert got == {K[0]: (FAILED, "bad block"), K[1]: (DONE, "")}
    assert sum("results line" in r.message for r in caplog.records) == 3


@pytest.mark.parametrize("rc, listed, want", [
    (0, None, DONE), (75, None, PENDING), (None, None, PENDING), (1, None, FAILED),
    (1, DONE, DONE), (0, FAILED, FAILED), (75, DONE, DONE), (0, PENDING, PENDING)])
def test_an_object_follows_its_results_line_else_the_exit_status(rc, listed, want):
    results = {K[0]: (listed, "said")} if listed else {}
    assert batch.outcome(K[0], results, rc, "stderr tail")[0] == want


def test_requests_survive_on_disk_and_the_lock_is_one_at_a_time(tmp_path):
    q = batch.Requests(str(tmp_path / "b"))
    q.check()
    assert os.stat(q.requests).st_mode & 0o777 == 0o700
    r = q.put(req(2, 5.0))
    assert q.get(K[2]) == r and os.stat(os.path.join(q.requests, K[2])).st_mode & 0o777 == 0o600
    q.update(r, state=PENDING, message="m", tries=1)
    assert q.all() == [Request(K[2], 10, "ab" * 32, 5.0, PENDING, "m", 1)]
    with q.lock() as first, q.lock() as second:
        assert first and not second
    with q.lock() as again:
        assert again
    q.remove(K[2])
    assert q.all() == [] and q.get(K[2]) is None


COMMAND = {"kind": "command", "archive_command": "cp {path} /x/{key}"}


def test_config_needs_a_restore_command_and_a_list_placeholder():
    def err(**table):
        with pytest.raises(errors.ConfigError) as e:
            tape = {k: v for k, v in {**COMMAND, **table}.items() if v is not None}   # None: the key left out
            config.parse({"tiers": {"disk": {"kind": "disk", "path": "/x"}, "tape": tape}})
        return str(e.value)
    assert "tiers.tape.restore_command: required (or restore_batch_command)" in err()
    assert "tiers.tape.archive_command: required (or archive_batch_command)" in err(
        archive_command=None, restore_command="r")
    assert "tiers.tape.restore_batch_command: must name the list of objects with {list}" in err(
        restore_batch_command="tape-recall")
    assert "tiers.tape.archive_batch_command: must name the list of objects with {list}" in err(
        restore_command="r", archive_batch_command="tape-store {results}")
    cfg = config.parse({"tiers": {"disk": {"kind": "disk", "path": "/x"},
                                  "tape": {**COMMAND, "restore_batch_command": "recall {list}", "batch_wait": "2m",
                                           "batch_max_bytes": "1TiB"}}})
    t = cfg.tiers["tape"]
    assert (t.batch_wait, t.batch_max_bytes, t.batch_max_files) == (120.0, 1024**4, 100)
