"""The attribute cache's ordering rules (tierfs/attrcache.py), as pure logic.

Each case is an interleaving of a local content change, its flush, and a
catalog call that overlaps them, in the order the mount's tasks can see them
(the catalog calls run in threads, so they can return in any order).
"""

from __future__ import annotations

from tierfs.attrcache import AttrCache
from tierfs.catalog.base import Inode


def row(size: int, **kw) -> Inode:
    return Inode(ino=3, mode=0o100644, uid=0, gid=0, size=size, **kw)


def cache_with(size: int) -> AttrCache:
    c = AttrCache(ttl=3600)
    c.remember(row(size))
    return c


def test_call_overlapping_a_flush_keeps_the_flushed_size():
    """fsx seed 103: a job's state switch started after a write and while its close was
    flushing; it read the row before the flush committed and returned after the flush did.
    Its old size replaced the flushed one for good."""
    c = cache_with(12679)
    c.change(3, size=14916)
    values, token = c.to_persist(3)                # close: the flush starts
    since = c.seq                                  # the job's switch starts
    flushed_since = c.persisted(3, token)          # the flush commits and returns first
    c.remember(row(14916, data_version=2), flushed_since)
    got = c.remember(row(12679, state_cause="archive not completed"), since)   # the switch returns
    assert got.size == 14916
    assert got.state_cause == "archive not completed"   # the other fields are taken


def test_flush_result_is_taken():
    c = cache_with(10)
    c.change(3, size=20)
    _, token = c.to_persist(3)
    since = c.persisted(3, token)
    assert not c.is_dirty(3)
    assert c.remember(row(20, data_version=5), since).data_version == 5
    assert c.remember(row(20, data_version=6)).data_version == 6   # a later call: taken as is


def test_call_started_after_the_flush_completed_is_taken():
    """Another mount may have changed the file since: a copy fetched after our flush wins."""
    c = cache_with(10)
    c.change(3, size=20)
    _, token = c.to_persist(3)
    c.persisted(3, token)
    since = c.seq
    assert c.remember(row(30), since).size == 30


def test_write_during_flush_stays_dirty():
    c = cache_with(10)
    c.change(3, size=20)
    _, token = c.to_persist(3)
    c.change(3, size=40)                           # a write while the flush is in flight
    since = c.persisted(3, token)
    assert c.is_dirty(3)
    assert c.remember(row(20), since).size == 40
    _, token2 = c.to_persist(3)
    c.persisted(3, token2)
    assert not c.is_dirty(3)


def test_older_flush_returning_last_does_not_undo_the_newer_one():
    c = cache_with(10)
    c.change(3, size=20)
    _, t1 = c.to_persist(3)                        # flush A (size 20) starts
    c.change(3, size=30)
    _, t2 = c.to_persist(3)                        # flush B (size 30) starts
    c.remember(row(30), c.persisted(3, t2))        # B returns first
    assert c.remember(row(20), c.persisted(3, t1)).size == 30   # then A, with its older row


def test_catalog_copy_from_before_a_change_keeps_the_change():
    c = cache_with(10)
    since = c.seq
    c.change(3, size=50)
    assert c.remember(row(10), since).size == 50


def test_access_time_never_moves_backwards():
    c = AttrCache(ttl=3600)
    c.remember(row(1, atime_ns=200))
    assert c.remember(row(1, atime_ns=100)).atime_ns == 200
