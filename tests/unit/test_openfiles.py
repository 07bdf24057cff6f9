"""OpenFiles: the counts other modules ask about (openfiles.py)."""

import errno
import fcntl
import os

import pytest

from tierfs import errors
from tierfs.catalog.base import State
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


# ---- FUSE passthrough: which bindings get a backing id (openfiles.py) -----------------
class Registrar:
    """Hands out backing ids like the kernel's BACKING_OPEN (a unit-test stand-in: no /dev/fuse here)."""

    active = True

    def __init__(self):
        self.open: dict[int, int] = {}   # id -> fd
        self.next = 1

    def register(self, fd: int) -> int:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR, "the backing file must take writes"
        self.open[self.next] = fd
        self.next += 1
        return self.next - 1

    def unregister(self, backing_id: int) -> None:
        del self.open[backing_id]


class NoStaging:
    def get(self, ino):
        return None


@pytest.fixture
def disk(tmp_path):
    from tierfs.tiers.disk import DiskTier
    t = DiskTier("disk", path=str(tmp_path))
    t.check()
    return t


def _file(disk, ino: int, data: bytes = b"abc", **kw):
    import stat
    from tierfs.catalog.base import Inode
    from tierfs.tiers.base import new_key
    key = new_key()
    disk.create_empty(key)
    with open(disk.local_path(key), "wb") as f:
        f.write(data)
    return Inode(ino=ino, mode=stat.S_IFREG | 0o644, uid=0, gid=0, size=len(data), tier="disk", location=key, **kw)


def test_one_backing_id_per_open_inode_shared_by_readers_and_writers(disk):
    import trio
    from tierfs.openfiles import OpenObjects
    reg = Registrar()
    objs = OpenObjects(NoStaging(), lambda name: disk, reg)
    inode = _file(disk, 10)

    async def main():
        b = await objs.acquire(inode, writable=False)      # a reader first: opened read-write all the same
        assert b.backing_id == 1 and objs.in_passthrough(10) and objs.backing_id(10) == 1
        await objs.acquire(inode, writable=True)           # a writer shares it
        assert objs.backing_id(10) == 1 and list(reg.open) == [1]
        assert objs.backing_changed(10) is None            # nothing written since the open
        os.pwrite(b.fd, b"more", 3)                        # the kernel writes the backing file
        st = objs.backing_changed(10)
        assert st is not None and st.st_size == 7
        assert objs.backing_changed(10) is None            # said once
        os.ftruncate(b.fd, 2)                              # the daemon's own change (truncate)
        objs.backing_settled(10)
        assert objs.backing_changed(10) is None
        objs.release(10)
        assert list(reg.open) == [1]
        objs.release(10)                                   # the last handle drops the id
        assert reg.open == {} and not objs.in_passthrough(10)
        b = await objs.acquire(inode, writable=False)
        assert b.backing_id == 2                           # a new open of the file: a new id
        objs.release(10)
    trio.run(main)


def test_a_moved_passthrough_file_keeps_its_object_and_refuses_new_writers(disk):
    import trio
    from tierfs.openfiles import OpenObjects
    reg = Registrar()
    objs = OpenObjects(NoStaging(), lambda name: disk, reg)
    inode = _file(disk, 11)
    moved = _file(disk, 11)

    async def main():
        b = await objs.acquire(inode, writable=False)
        fd = b.fd
        objs.follow(moved)                                 # another mount migrated it meanwhile
        assert b.fd == fd and b.key == inode.location and b.stale
        assert objs.is_pinned("disk", inode.location)      # the collector leaves the old object
        await objs.acquire(moved, writable=False)          # readers go on reading what they opened
        with pytest.raises(errors.TierfsError) as e:
            await objs.acquire(moved, writable=True)
        assert e.value.errno == errno.EBUSY
        objs.release(11)
        objs.release(11)
        b = await objs.acquire(moved, writable=True)       # closed: the next open binds the new object
        assert b.key == moved.location and not b.stale
        objs.release(11)
    trio.run(main)


def test_no_backing_id_without_a_writable_local_file(disk, tmp_path):
    import trio
    from tierfs.openfiles import OpenObjects
    reg = Registrar()
    objs = OpenObjects(NoStaging(), lambda name: disk, reg)
    ro = _file(disk, 12)
    os.chmod(disk.local_path(ro.location), 0o444)
    empty = _file(disk, 13).copy(location=None)            # no object yet: zeros up to the size
    dual_writer = _file(disk, 14, archive_tier="vault", archive_location="k", state=State.DUAL)

    async def main():
        if os.geteuid() != 0:                              # (root opens a 0444 file read-write anyway)
            b = await objs.acquire(ro, writable=False)
            assert b.backing_id is None and b.fd is not None
            objs.release(12)
        b = await objs.acquire(empty, writable=False)
        assert b.backing_id is None and b.fd is None
        objs.release(13)
        # A writer of a file with an archive copy stays on the daemon's path (its first write()
        # ends the archive copy; fs.py), and so does every handle opened while it is.
        b = await objs.acquire(dual_writer, writable=True)
        assert b.backing_id is None
        await objs.acquire(dual_writer, writable=False)
        assert objs.backing_id(14) == 0
        objs.release(14)
        objs.release(14)
        assert reg.open == {}
    trio.run(main)
