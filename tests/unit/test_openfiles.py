"""OpenFiles: the counts other modules ask about (openfiles.py)."""

import errno

import pytest

from tierfs import errors
from tierfs.openfiles import OpenFiles


def test_open_writer_and_lookup_counts():
    files = OpenFiles(objects=None)
    assert not files.in_use(5)
    assert files.opened(5, writable=False)          # first handle
    assert files.opened(5, writable=True)           # first writer
    assert not files.opened(5, writable=True)
    assert files.writing(5) and not files.sole_writer(5) and files.is_open(5)
    assert files.closed(5, writable=True) == (False, False)
    assert files.sole_writer(5)
    assert files.closed(5, writable=True) == (False, True)
    assert not files.writing(5) and files.is_open(5)
    assert files.closed(5, writable=False) == (True, False)
    assert not files.in_use(5)

    files.looked_up(7)
    files.looked_up(7)
    assert files.known(7) and files.in_use(7) and not files.is_open(7)
    assert not files.forget(7, 1)
    assert files.forget(7, 1)
    assert not files.known(7)


def test_handles():
    files = OpenFiles(objects=None)
    a = files.add_handle(3, 0, writable=False)
    b = files.add_handle(3, 1, writable=True)
    assert a.fh != b.fh and files.handle_count() == 2
    assert files.handle(b.fh) is b
    assert files.pop_handle(a.fh) is a and files.pop_handle(a.fh) is None
    with pytest.raises(errors.TierfsError) as e:
        files.handle(a.fh)
    assert e.value.errno == errno.EBADF


def test_idle_locks_are_dropped():
    import trio
    files = OpenFiles(objects=None)

    async def main():
        lk = files.lock(9)
        async with lk:
            files.drop_lock(9)              # held: kept
            assert files.lock(9) is lk
        files.drop_lock(9)
        assert files.lock(9) is not lk      # idle: dropped, a new one next time
    trio.run(main)
