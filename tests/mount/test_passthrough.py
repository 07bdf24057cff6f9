"""FUSE passthrough through a real mount (issue 17): the kernel reads and
writes files with local bytes itself, and every contract still holds: sizes
and times after kernel-side writes, checksums, a dual file's archive copy,
moves that must wait for the file to close, restores, staged copies of a
remote tier, mmap, ENOSPC straight to the application, and a mount with
passthrough off serving the same bytes through the daemon.

The rest of the suite runs with passthrough on where the machine allows it
(root, Linux 6.9+ with CONFIG_FUSE_PASSTHROUGH, the libfuse dev/install
builds) and again, for tests/mount, with TIERFS_TEST_PASSTHROUGH=0."""

from __future__ import annotations

import errno
import gzip
import hashlib
import mmap
import os
import platform
import subprocess
import threading
import time

import pytest

from tests.conftest import file_info as info, put_file as put, wait_for

pytestmark = pytest.mark.mount

MiB = 1 << 20


def kernel_has_passthrough() -> bool:
    for path, opener in ((f"/boot/config-{platform.release()}", open), ("/proc/config.gz", gzip.open)):
        try:
            with opener(path, "rt") as f:
                return any(line.strip() == "CONFIG_FUSE_PASSTHROUGH=y" for line in f)
        except OSError:
            continue
    return False


def machine_allows() -> str:
    """Why this machine cannot have passthrough ("" when it can: then it must)."""
    if os.geteuid() != 0:
        return "not root"
    if not kernel_has_passthrough():
        return f"kernel {platform.release()} has no CONFIG_FUSE_PASSTHROUGH"
    return ""


needs_passthrough = pytest.mark.skipif(bool(machine_allows()), reason=machine_allows() or "-")


def requests(m) -> dict:
    return m.stats()["requests"]


def io_requests(m) -> int:
    r = requests(m)
    return r.get("read", 0) + r.get("write", 0)


@pytest.fixture
def pt(make_mount):
    m = make_mount(config="passthrough = true\njob_retry_delay = 1")
    assert m.stats()["passthrough"]["active"], m.stats()["passthrough"]
    return m


@needs_passthrough
def test_on_by_default_and_no_read_or_write_reaches_the_daemon(make_mount):
    """Where the machine allows it, a default mount has passthrough (a broken
    libfuse build fails here instead of silently testing the slow path)."""
    m = make_mount()
    assert m.stats()["passthrough"] == {"active": True, "why": "", "backing_files": 0}
    assert "passthrough: on" in m.cli("status", m.mnt).stdout
    before = io_requests(m)
    data = os.urandom(8 * MiB + 123)
    with open(m.path("f"), "wb") as f:
        f.write(data)
    with open(m.path("f"), "rb") as f:
        assert f.read() == data
    subprocess.run(["cp", m.path("f"), m.path("g")], check=True)
    assert open(m.path("g"), "rb").read() == data
    assert io_requests(m) == before
    # The catalog has the size the kernel wrote, and the checksum of those bytes.
    wait_for(lambda: info(m, "g")["checksum"] is not None, what="checksum of g")
    inf = info(m, "g")
    assert inf["size"] == len(data) and inf["checksum"] == hashlib.sha256(data).hexdigest()
    assert m.stats()["passthrough"]["backing_files"] >= 3


def test_off_by_config_serves_the_same_bytes_through_the_daemon(make_mount):
    m = make_mount(config="passthrough = false")
    assert m.stats()["passthrough"] == {"active": False, "why": "passthrough = false in the configuration",
                                        "backing_files": 0}
    assert "passthrough: off (passthrough = false in the configuration)" in m.cli("status", m.mnt).stdout
    data = put(m, "f", 3 * MiB)
    assert open(m.path("f"), "rb").read() == data
    assert requests(m).get("read", 0) > 0 and requests(m).get("write", 0) > 0


@needs_passthrough
def test_size_and_mtime_while_the_kernel_writes(pt):
    """stat of a file open for writing shows what the kernel wrote (the
    daemon takes it from the backing file); every close persists it."""
    m = pt
    p = m.path("w")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"a" * 1000)
        assert os.stat(p).st_size == 1000
        t0 = os.stat(p).st_mtime_ns
        time.sleep(0.01)
        os.pwrite(fd, b"b" * 100, 5000)
        st = os.stat(p)
        assert st.st_size == 5100 and st.st_mtime_ns > t0
        os.ftruncate(fd, 3000)                 # the daemon's own change in between
        assert os.stat(p).st_size == 3000
        os.write(fd, b"c" * 10)                # (the offset is 1000: the first write's end)
        assert os.stat(p).st_size == 3000
        os.pwrite(fd, b"d", 3999)
        assert os.stat(p).st_size == 4000
    finally:
        os.close(fd)
    with open(p, "ab") as f:                   # O_APPEND: the kernel appends at the backing file's end
        f.write(b"end")
    want = b"a" * 1000 + b"c" * 10 + b"\0" * 1990 + b"\0" * 999 + b"d" + b"end"
    assert open(p, "rb").read() == want
    wait_for(lambda: info(m, "w")["checksum"] is not None, what="checksum")
    inf = info(m, "w")
    assert inf["size"] == len(want) and inf["checksum"] == hashlib.sha256(want).hexdigest()
    assert inf["mtime_ns"] == os.stat(p).st_mtime_ns
    # A remount reads the same size and bytes from the catalog.
    m.stop()
    m.start()
    assert os.stat(p).st_size == len(want) and open(p, "rb").read() == want


@needs_passthrough
def test_explicit_mtime_is_not_replaced_by_the_backing_files(pt):
    m = pt
    p = m.path("t")
    with open(p, "wb") as f:
        f.write(b"x" * 100)
        f.flush()
        os.utime(p, ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(p).st_mtime_ns == 2_000_000_000
    assert info(m, "t")["mtime_ns"] == 2_000_000_000


@needs_passthrough
def test_open_readers_and_writers_share_one_backing_file(pt):
    m = pt
    data = put(m, "s", 256 * 1024)
    r = open(m.path("s"), "rb")
    w = open(m.path("s"), "r+b", buffering=0)
    try:
        w.seek(1000)
        w.write(b"Z" * 10)
        r.seek(995)
        assert r.read(20) == data[995:1000] + b"Z" * 10 + data[1010:1015]
    finally:
        w.close()
        r.close()
    assert io_requests(m) == 0


@needs_passthrough
def test_mmap_writes_reach_the_catalog(pt):
    m = pt
    put(m, "mm", 64 * 1024)
    with open(m.path("mm"), "r+b") as f:
        with mmap.mmap(f.fileno(), 0) as mp:
            mp[10:20] = b"M" * 10
            mp.flush()
        os.fsync(f.fileno())
    data = open(m.path("mm"), "rb").read()
    assert data[10:20] == b"M" * 10
    wait_for(lambda: info(m, "mm")["checksum"] == hashlib.sha256(data).hexdigest(), what="checksum after mmap")


@needs_passthrough
def test_moves_wait_until_a_passthrough_file_is_closed(pt):
    """The kernel keeps reading the object it was given: archive, release and
    migrate of an open file wait (the job retries) and run after the close."""
    m = pt
    data = put(m, "busy", 2 * MiB)
    with open(m.path("busy"), "rb") as f:
        m.cli("archive", "--keep-online", m.path("busy"))   # queued: runs once the file is closed
        time.sleep(3)
        assert m.state("busy") == "online"
        assert "FUSE passthrough" in m.cli("queue", m.mnt).stdout
        assert f.read() == data
    wait_for(lambda: m.state("busy") == "dual", timeout=30, what="archived after the close")
    with open(m.path("busy"), "rb") as f:
        r = m.cli("release", m.path("busy"), check=False)
        assert r.returncode != 0 and "busy" in r.stderr
        assert m.state("busy") == "dual"
        assert f.read() == data
    m.cli("release", m.path("busy"))
    assert m.state("busy") == "archived"


@needs_passthrough
def test_writing_a_dual_file_ends_its_archive_copy(pt):
    """A dual file opened for writing alone stays on the daemon's path (its
    first write ends the archive copy, an open that writes nothing keeps
    it); opened for writing while a passthrough reader has it, the open
    itself ends it (the daemon will not see the write)."""
    m = pt
    data = put(m, "d", 1 * MiB)
    m.cli("archive", "--wait", "--timeout", "60", "--keep-online", m.path("d"))
    assert m.state("d") == "dual"
    with open(m.path("d"), "r+b", buffering=0) as f:
        assert m.state("d") == "dual"
        f.write(b"new")
        assert m.state("d") == "online"
    assert info(m, "d")["archive_tier"] is None
    assert open(m.path("d"), "rb").read() == b"new" + data[3:]

    m.cli("archive", "--wait", "--timeout", "60", "--keep-online", m.path("d"))
    assert m.state("d") == "dual"
    with open(m.path("d"), "rb") as r:
        with open(m.path("d"), "r+b") as f:
            assert m.state("d") == "online"        # the open for writing (Lustre HSM's "dirty")
            f.write(b"NEW")
        assert r.read(3) == b"NEW"
    assert m.state("d") == "online" and info(m, "d")["archive_tier"] is None
    assert open(m.path("d"), "rb").read() == b"NEW" + data[3:]
    assert m.cli("release", m.path("d"), check=False).returncode != 0   # nothing to release to


@needs_passthrough
def test_restored_file_is_read_through_the_kernel(pt):
    m = pt
    data = put(m, "r", 4 * MiB)
    m.cli("archive", "--wait", "--timeout", "60", m.path("r"))
    assert m.state("r") == "archived"
    before = io_requests(m)
    assert open(m.path("r"), "rb").read() == data     # blocks while it is restored
    assert m.state("r") == "dual"
    assert open(m.path("r"), "rb").read() == data
    assert io_requests(m) == before


@needs_passthrough
def test_enospc_reaches_the_application_and_the_size_is_what_landed(make_mount, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    os.makedirs(tmp_path / "vault", exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        m = make_mount(config=f"""
            passthrough = true
            [tiers.small]
            kind = "disk"
            path = "{small}"
            [tiers.vault]
            kind = "vault"
            path = "{tmp_path}/vault"
        """)
        fd = os.open(m.path("big"), os.O_CREAT | os.O_WRONLY, 0o644)
        wrote = 0
        try:
            with pytest.raises(OSError) as e:
                while True:
                    wrote += os.write(fd, b"q" * 65536)
            assert e.value.errno == errno.ENOSPC
        finally:
            os.close(fd)
        size = os.stat(m.path("big")).st_size
        assert size == wrote and info(m, "big")["size"] == wrote
        assert open(m.path("big"), "rb").read() == b"q" * wrote
        os.unlink(m.path("big"))
        m.stop()
    finally:
        subprocess.run(["umount", str(small)], check=False)


@needs_passthrough
def test_remote_tier_writes_use_the_staged_copy(make_mount, tmp_path, moto, s3_bucket):
    """A file on S3 opened for writing is staged locally; the kernel writes
    the staged copy and the close uploads it. A reader of the remote object
    opened first keeps every handle on the daemon's path (the kernel cannot
    mix the two on one inode), and still sees the writer's bytes."""
    from tests.mount.test_s3 import AWS_ENV, _s3_default
    m = make_mount(config="passthrough = true\n" + _s3_default(tmp_path, moto, s3_bucket), env=AWS_ENV)
    data = os.urandom(3 * MiB)
    before = io_requests(m)
    with open(m.path("s3file"), "wb") as f:
        f.write(data)
    assert io_requests(m) == before                   # written through the staged copy
    assert info(m, "s3file")["tier"] == "s3"
    assert open(m.path("s3file"), "rb").read() == data   # read by range from S3 through the daemon
    r = open(m.path("s3file"), "rb")
    try:
        with open(m.path("s3file"), "r+b") as w:
            w.write(b"HEAD")
        r.seek(0)
        assert r.read(8) == b"HEAD" + data[4:8]
    finally:
        r.close()
    assert open(m.path("s3file"), "rb").read() == b"HEAD" + data[4:]
    m.stop()
    m.start()
    assert open(m.path("s3file"), "rb").read() == b"HEAD" + data[4:]


@needs_passthrough
def test_concurrent_writers_and_stat_never_lose_bytes(pt):
    """Two threads append through passthrough while a third stats; the
    catalog ends with the size of the bytes on disk."""
    m = pt
    p = m.path("c")
    open(p, "wb").close()
    stop = threading.Event()

    def stat_loop():
        while not stop.is_set():
            os.stat(p)

    def writer(ch: bytes):
        with open(p, "ab", buffering=0) as f:
            for _ in range(200):
                f.write(ch * 1000)
    t = threading.Thread(target=stat_loop)
    t.start()
    ws = [threading.Thread(target=writer, args=(c,)) for c in (b"a", b"b")]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    stop.set()
    t.join()
    data = open(p, "rb").read()
    assert len(data) == 400_000 and data.count(b"a") == 200_000
    assert info(m, "c")["size"] == 400_000
    assert os.stat(p).st_size == 400_000


@needs_passthrough
def test_track_read_counts_the_close_of_a_passthrough_reader(make_mount):
    """track = "read": the kernel's reads never reach the daemon, so the
    close of a reader is the access it records (besides the open)."""
    m = make_mount(config='passthrough = true\ntrack = "read"')
    put(m, "a", 100_000)
    with open(m.path("a"), "rb") as f:
        opened = info(m, "a")["atime_ns"]
        time.sleep(0.3)
        before_close = time.time_ns()
        f.read()
    assert info(m, "a")["atime_ns"] >= before_close > opened
