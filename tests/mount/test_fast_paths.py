"""The performance shortcuts keep their semantics (issue 8): the answers the
kernel caches, the checksum that rides on a small file's close, the inode
locks that skip the scheduler and the catalog calls made on the event loop."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading

import pytest

from tests.conftest import file_info, wait_for
from tierfs import mounts


def test_foreign_xattr_namespaces_are_not_supported(any_mount):
    """security.*, system.* and trusted.* are EOPNOTSUPP on get, set and
    remove (tierfs stores user.* only), so `ls -l` asks once per mount
    instead of twice per file."""
    p = any_mount.path("f")
    with open(p, "wb") as f:
        f.write(b"x")
    for name in ("security.selinux", "system.posix_acl_access", "security.capability", "trusted.x"):
        calls = [lambda: os.getxattr(p, name), lambda: os.removexattr(p, name)]
        if name in ("security.selinux", "trusted.x"):  # the kernel parses ACL and capability values itself
            calls.append(lambda: os.setxattr(p, name, b"v"))
        for call in calls:
            with pytest.raises(OSError) as ei:
                call()
            assert ei.value.errno == errno.EOPNOTSUPP, name
    os.setxattr(p, "user.ok", b"1")
    assert os.getxattr(p, "user.ok") == b"1"

    os.mkdir(any_mount.path("d"))
    for i in range(200):
        with open(any_mount.path("d", f"f{i}"), "wb") as f:
            f.write(b"y")
    subprocess.run(["ls", "-l", any_mount.path("d")], check=True, capture_output=True)
    before = any_mount.stats()["requests"].get("getxattr", 0)
    out = subprocess.run(["ls", "-l", any_mount.path("d")], check=True, capture_output=True, text=True).stdout
    asked = any_mount.stats()["requests"].get("getxattr", 0) - before
    assert len(out.splitlines()) == 201
    # a few per listing (plus the stats read itself), not two per file (400)
    assert asked <= 5, f"ls -l of 200 files sent {asked} getxattr requests"


def test_small_file_has_its_checksum_at_close(any_mount):
    data = os.urandom(100_000)
    p = any_mount.path("small")
    with open(p, "wb") as f:
        f.write(data)
    # No waiting: the checksum was written with the size in close()'s transaction.
    assert os.getxattr(p, "user.tierfs.checksum").decode() == hashlib.sha256(data).hexdigest()
    info = file_info(any_mount, "small")
    assert info["size"] == len(data) and info["checksum"] == hashlib.sha256(data).hexdigest()

    # Changing the content clears it, and the next close records the new one.
    with open(p, "ab") as f:
        f.write(b"more")
        f.flush()
        with pytest.raises(OSError) as ei:
            os.getxattr(p, "user.tierfs.checksum")
        assert ei.value.errno == errno.ENODATA
    assert os.getxattr(p, "user.tierfs.checksum").decode() == hashlib.sha256(data + b"more").hexdigest()
    assert file_info(any_mount, "small")["data_version"] > info["data_version"]


def test_write_after_a_flush_on_the_same_handle_clears_the_checksum(any_mount):
    """close() of a dup flushes (checksum recorded); writes through the other
    descriptor of the same open file must bump the version and clear it."""
    p = any_mount.path("dup")
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"first")
    os.close(os.dup(fd))  # FLUSH with the handle still open
    first = file_info(any_mount, "dup")
    assert first["checksum"] == hashlib.sha256(b"first").hexdigest()
    os.write(fd, b"second")
    mid = file_info(any_mount, "dup")
    assert mid["checksum"] is None and mid["data_version"] > first["data_version"]
    os.close(fd)
    assert file_info(any_mount, "dup")["checksum"] == hashlib.sha256(b"firstsecond").hexdigest()


def test_two_writers_checksum_comes_from_the_last_close(any_mount):
    p = any_mount.path("two")
    a = open(p, "wb")
    b = open(p, "r+b")
    a.write(b"A" * 10)
    a.close()  # b is still a writer: no checksum of a state b may change
    assert file_info(any_mount, "two")["checksum"] is None
    b.seek(10)
    b.write(b"B" * 10)
    b.close()
    want = hashlib.sha256(b"A" * 10 + b"B" * 10).hexdigest()
    wait_for(lambda: file_info(any_mount, "two")["checksum"] == want, what="checksum after the last writer")


def test_large_file_checksum_is_computed_in_the_background(any_mount):
    data = os.urandom(3 * 1024 * 1024)
    p = any_mount.path("large")
    with open(p, "wb") as f:
        f.write(data)
    want = hashlib.sha256(data).hexdigest()
    wait_for(lambda: file_info(any_mount, "large")["checksum"] == want, what="background checksum")


def test_concurrent_creates_and_writes_in_one_directory(any_mount):
    """Many threads creating, writing and closing files in one directory (one
    parent lock, uncontended and contended acquires) lose nothing."""
    d = any_mount.path("many")
    os.mkdir(d)
    errs: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(60):
                with open(os.path.join(d, f"t{t}-{i}"), "wb") as f:
                    f.write(f"{t}:{i}".encode() * 50)
        except BaseException as e:  # noqa: BLE001 - reported below
            errs.append(e)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errs
    names = os.listdir(d)
    assert len(names) == 8 * 60
    for t in range(8):
        for i in range(0, 60, 7):
            with open(os.path.join(d, f"t{t}-{i}"), "rb") as f:
                assert f.read() == f"{t}:{i}".encode() * 50
    for t in range(8):
        info = file_info(any_mount, f"many/t{t}-59")
        assert info["checksum"] == hashlib.sha256(f"{t}:59".encode() * 50).hexdigest()


def _read_requests_for(m, rel: str) -> int:
    """FUSE read requests the daemon got for one uncached sequential read of rel."""
    p = m.path(rel)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # drop this file's cached pages
        before = m.stats()["requests"].get("read", 0)
        while os.read(fd, 1 << 20):
            pass
        return m.stats()["requests"].get("read", 0) - before
    finally:
        os.close(fd)


def test_read_ahead_makes_reads_of_one_mib(make_mount):
    """The daemon raises the mount's read-ahead (root), so a sequential read
    arrives in 1 MiB requests instead of the kernel's default 128 KiB (on the
    daemon's read path: with passthrough the kernel reads the object itself)."""
    m = make_mount(config="passthrough = false")
    info = next(x for x in mounts.mounts() if x.mountpoint == m.mnt)
    with open(f"/sys/class/bdi/{info.device}/read_ahead_kb") as f:
        assert int(f.read()) == 1024
    data = os.urandom(8 << 20)
    with open(m.path("big"), "wb") as f:
        f.write(data)
    n = _read_requests_for(m, "big")
    assert 8 <= n <= 12, f"8 MiB read in {n} requests"
    m.stop()

    small = make_mount(name="mnt2", config="passthrough = false", options=("read_ahead_kb=0",))
    with open(small.path("big"), "wb") as f:
        f.write(data)
    n = _read_requests_for(small, "big")
    assert n >= 60, f"with the kernel's default read-ahead, 8 MiB took only {n} requests"
