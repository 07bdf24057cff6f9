"""POSIX behaviour of the engine through FileSystem calls, without FUSE: the
cases of tests/mount/test_posix.py, with the errno a syscall would get (the
Posix helper raises OSError with the errno fuse_ops.py answers)."""

from __future__ import annotations

import errno
import os

import pytest

from tests.engine.harness import Posix, with_engine


async def raises(err: int, aw) -> None:
    with pytest.raises(OSError) as e:
        await aw
    assert e.value.errno == err, e.value


@with_engine()
async def test_create_write_read_truncate(eng, tmp_path):
    p = Posix(eng.fs)
    await p.write_file("f", b"hello world")
    assert await p.read_file("f") == b"hello world"
    fh = await p.open("f", os.O_WRONLY)
    await p.pwrite(fh, b"!", 20)                       # past the end: a hole of zeros
    await p.close(fh)
    assert await p.read_file("f") == b"hello world" + b"\0" * 9 + b"!"
    await p.truncate("f", 5)
    assert (await p.stat("f")).size == 5 and await p.read_file("f") == b"hello"
    await p.truncate("f", 8)
    assert await p.read_file("f") == b"hello\0\0\0"
    await p.write_file("f", b"xy")                     # O_TRUNC through open (atomic_o_trunc)
    assert (await p.stat("f")).size == 2 and await p.read_file("f") == b"xy"
    await raises(errno.EEXIST, p.open("f", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    await raises(errno.ENOENT, p.open("nope", os.O_RDONLY))
    await raises(errno.EINVAL, p.truncate("f", -1))


@with_engine()
async def test_directories_names_and_errors(eng, tmp_path):
    p = Posix(eng.fs)
    await p.mkdir("d")
    await p.mkdir("d/e")
    await raises(errno.ENOTEMPTY, p.rmdir("d"))
    await raises(errno.EEXIST, p.mkdir("d"))
    await raises(errno.ENAMETOOLONG, p.write_file("x" * 256, b""))
    await p.write_file("y" * 255, b"")
    await raises(errno.ENOENT, p.stat("nope"))
    await raises(errno.ENOTDIR, p.write_file("y" * 255 + "/z", b""))
    await raises(errno.EISDIR, p.open("d", os.O_RDONLY))
    await raises(errno.EISDIR, p.truncate("d", 0))
    await raises(errno.ENOTDIR, p.rmdir("y" * 255))
    await raises(errno.EISDIR, p.unlink("d"))
    assert sorted(await p.listdir("")) == ["d", "y" * 255]
    assert (await p.stat("d")).nlink == 3                # ".", its entry, e's ".."
    await p.rmdir("d/e")
    assert (await p.stat("d")).nlink == 2
    await p.rmdir("d")
    assert await p.listdir("") == ["y" * 255]


@with_engine()
async def test_rename_link_unlink(eng, tmp_path):
    p = Posix(eng.fs)
    await p.mkdir("a")
    await p.mkdir("a/b")
    await p.write_file("a/b/f", b"one\n")
    await p.write_file("g", b"two\n")
    await p.rename("a/b/f", "a/f2")
    await p.rename("g", "a/b/g")
    await p.link("a/f2", "hard")
    await p.symlink("a/f2", "soft")
    assert await p.readlink("soft") == "a/f2"
    assert await p.read_file("hard") == b"one\n"
    assert (await p.stat("a/f2")).nlink == 2
    await raises(errno.EEXIST, p.link("a/f2", "hard"))
    await p.rename("a", "moved")
    assert await p.read_file("moved/b/g") == b"two\n"
    await p.unlink("hard")
    assert (await p.stat("moved/f2")).nlink == 1
    # rename over an existing file, RENAME_NOREPLACE, RENAME_EXCHANGE
    await p.write_file("x", b"A")
    await p.write_file("y", b"B")
    await p.rename("x", "y")
    assert await p.read_file("y") == b"A"
    await raises(errno.ENOENT, p.stat("x"))
    await p.write_file("c", b"C")
    await raises(errno.EEXIST, p.rename("c", "y", noreplace=True))
    await p.rename("c", "y", exchange=True)
    assert await p.read_file("y") == b"C" and await p.read_file("c") == b"A"
    await p.mkdir("empty")
    await raises(errno.ENOTEMPTY, p.rename("empty", "moved"))     # over a directory that is not empty
    await raises(errno.ENOTDIR, p.rename("empty", "y"))           # a directory over a file
    await raises(errno.EISDIR, p.rename("y", "empty"))            # a file over a directory
    await raises(errno.ENOENT, p.rename("nope", "z"))
    await p.unlink("soft")
    await raises(errno.ENOENT, p.unlink("soft"))


@with_engine()
async def test_unlinked_open_file_stays_readable_then_goes(eng, tmp_path):
    p = Posix(eng.fs)
    await p.write_file("tmpfile", b"still here" * 1000)
    ino = (await p.stat("tmpfile")).ino
    fh = await p.open("tmpfile", os.O_RDONLY)
    await p.unlink("tmpfile")
    await raises(errno.ENOENT, p.stat("tmpfile"))
    assert await p.pread(fh, 100000, 0) == b"still here" * 1000
    assert eng.catalog.get(ino).nlink == 0
    await p.close(fh)
    assert ino not in {i.ino for i in eng.catalog.unlinked()}   # purged at the last close
    with pytest.raises(Exception):
        eng.catalog.get(ino)


@with_engine()
async def test_setattr_mode_times(eng, tmp_path):
    p = Posix(eng.fs)
    await p.write_file("f", b"data")
    await p.chmod("f", 0o640)
    assert (await p.stat("f")).mode & 0o7777 == 0o640
    ino = (await p.stat("f")).ino
    await eng.fs.setattr(ino, {"mtime_ns": 981173106 * 10**9}, None, p.caller)
    await eng.fs.setattr(ino, {"atime_ns": 1009843200 * 10**9}, None, p.caller)
    st = await p.stat("f")
    assert (st.mtime_ns, st.atime_ns) == (981173106 * 10**9, 1009843200 * 10**9)
    assert eng.catalog.get(ino).mtime_ns == 981173106 * 10**9      # reached the catalog


@with_engine()
async def test_xattrs_and_tierfs_attributes(eng, tmp_path):
    p = Posix(eng.fs)
    await p.write_file("f", b"data\n")
    await p.setxattr("f", "user.project", b"alpha")
    assert await p.getxattr("f", "user.project") == b"alpha"
    assert await p.state("f") == "online"
    assert await p.getxattr("f", "user.tierfs.tier") == b"disk"
    assert "user.project" in await p.listxattr("f")
    await p.removexattr("f", "user.project")
    await raises(errno.ENODATA, p.getxattr("f", "user.project"))
    await raises(errno.ENODATA, p.removexattr("f", "user.project"))
    await raises(errno.EPERM, p.setxattr("f", "user.tierfs.state", b"archived"))
    await raises(errno.EOPNOTSUPP, p.setxattr("f", "trusted.x", b"1"))
    await raises(errno.EINVAL, p.setxattr("f", "user.tierfs.pin", b"maybe"))
    await raises(errno.EINVAL, p.request("f", "frobnicate"))
    big = b"v" * 65536
    await p.setxattr("f", "user.big", big)
    assert await p.getxattr("f", "user.big") == big


@with_engine()
async def test_setxattr_and_removexattr_change_the_ctime_stat_shows(eng, tmp_path):
    """POSIX: an xattr change is an inode change. The kernel's stat of a name it holds is a
    getattr, which the SQLite mount serves from its cache: the cache must have the new
    ctime, equal to the catalog's (it kept the old one until issue 16)."""
    import trio
    p = Posix(eng.fs)
    await p.write_file("f", b"x")
    ino = (await p.stat("f")).ino                 # the "kernel" now holds f
    c0 = (await eng.fs.getattr(ino)).ctime_ns
    await trio.sleep(1)
    await p.setxattr("f", "user.k", b"v")
    c1 = (await eng.fs.getattr(ino)).ctime_ns
    assert c1 > c0
    assert eng.catalog.get(ino).ctime_ns == c1
    await trio.sleep(1)
    await p.removexattr("f", "user.k")
    c2 = (await eng.fs.getattr(ino)).ctime_ns
    assert c2 > c1 and eng.catalog.get(ino).ctime_ns == c2
