"""fallocate(2) through a real mount: mode 0 (fallocate(1), posix_fallocate)
and FALLOC_FL_KEEP_SIZE on every tier, PUNCH_HOLE|KEEP_SIZE on local objects
and staged copies, every other mode EOPNOTSUPP. A fallocate that grows the
file or punches into it is a write: a dual file goes online, a staged copy is
uploaded, size and bytes survive a remount. (Needs the patched pyfuse3 of
dev/pyfuse3/build: with PyPI's, every fallocate here fails with EOPNOTSUPP.)"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess

import pytest

from tests.conftest import file_info as info, wait_for
from tests.reliability_util import home_of, tiers_config
from tests.system.test_outages import kmounts  # noqa: F401 - fixture: kernel mounts undone at the end
from tests.mount.test_s3 import AWS_ENV, objects, s3_config
from tierfs.fs import fallocate as fallocate_fd  # fallocate(2) with a mode (os has none)

pytestmark = pytest.mark.mount

MiB = 1 << 20
KEEP_SIZE, PUNCH_HOLE, COLLAPSE_RANGE, ZERO_RANGE, INSERT_RANGE, UNSHARE_RANGE = 0x01, 0x02, 0x08, 0x10, 0x20, 0x40

def fallocate(path: str, mode: int, off: int, length: int, flags: int = os.O_RDWR) -> None:
    fd = os.open(path, flags)
    try:
        fallocate_fd(fd, mode, off, length)
    finally:
        os.close(fd)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def put(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def object_path(m, rel: str) -> str:
    """The file's object on the disk tier (tests/system/test_fsck.py's layout)."""
    key = info(m, rel)["location"]
    return os.path.join(m.home, "disk", "objects", key[:2], key)


def remount(m) -> None:
    m.stop()
    m.start()


def test_fallocate_tool_and_posix_fallocate_grow_files(any_mount):
    """`fallocate -l 10M` on a new file and posix_fallocate on an existing one:
    the size grows, the new range reads as zeros, the old bytes are intact,
    st_blocks grows; a range inside the file changes nothing; all of it after
    a remount too."""
    m = any_mount
    m.sh("fallocate -l 10M new")
    assert os.stat(m.path("new")).st_size == 10 * MiB
    assert os.stat(m.path("new")).st_blocks >= 10 * MiB // 512
    assert read(m.path("new")) == bytes(10 * MiB)

    head = os.urandom(100_000)
    put(m.path("old"), head)
    blocks = os.stat(m.path("old")).st_blocks
    fd = os.open(m.path("old"), os.O_RDWR)
    try:
        os.posix_fallocate(fd, 50_000, 3 * MiB)
        assert os.fstat(fd).st_size == 50_000 + 3 * MiB
        os.posix_fallocate(fd, 0, 1000)  # inside the file: nothing changes
        assert os.fstat(fd).st_size == 50_000 + 3 * MiB
    finally:
        os.close(fd)
    assert os.stat(m.path("old")).st_blocks > blocks
    want = head + bytes(50_000 + 3 * MiB - len(head))
    assert read(m.path("old")) == want
    assert os.stat(object_path(m, "old")).st_size == len(want), "the object holds the allocation"

    remount(m)
    assert os.stat(m.path("new")).st_size == 10 * MiB and read(m.path("new")) == bytes(10 * MiB)
    assert read(m.path("old")) == want
    wait_for(lambda: info(m, "old").get("checksum") == hashlib.sha256(want).hexdigest(), 30,
             what="the checksum of the grown content")


def test_keep_size_allocates_without_changing_the_file(any_mount):
    m = any_mount
    data = os.urandom(5000)
    put(m.path("f"), data)
    version = info(m, "f")["data_version"]
    m.sh("fallocate --keep-size -l 4M f")
    assert os.stat(m.path("f")).st_size == 5000
    assert read(m.path("f")) == data
    assert os.stat(object_path(m, "f")).st_blocks >= 4 * MiB // 512, "passed through to the object"
    assert info(m, "f")["data_version"] == version, "no visible change: not a write"
    remount(m)
    assert read(m.path("f")) == data


def test_punch_hole_zeros_the_range_and_keeps_the_size(any_mount):
    m = any_mount
    data = os.urandom(256 * 1024)
    put(m.path("f"), data)
    blocks = os.stat(object_path(m, "f")).st_blocks
    m.sh("fallocate --punch-hole --offset 65536 --length 131072 f")
    want = data[:65536] + bytes(131072) + data[196608:]
    assert os.stat(m.path("f")).st_size == len(data)
    assert read(m.path("f")) == want
    assert os.stat(object_path(m, "f")).st_blocks < blocks, "the object's blocks were freed"
    # an unaligned hole: the partial blocks at its edges are zeroed, not freed
    fallocate(m.path("f"), PUNCH_HOLE | KEEP_SIZE, 10, 20)
    want = want[:10] + bytes(20) + want[30:]
    assert read(m.path("f")) == want
    remount(m)
    assert read(m.path("f")) == want
    wait_for(lambda: info(m, "f").get("checksum") == hashlib.sha256(want).hexdigest(), 30,
             what="the checksum of the punched content")


def test_other_modes_are_eopnotsupp_and_a_read_only_handle_ebadf(mount):
    m = mount
    data = os.urandom(64 * 1024)
    put(m.path("f"), data)
    for mode in (PUNCH_HOLE, ZERO_RANGE, ZERO_RANGE | KEEP_SIZE, COLLAPSE_RANGE, INSERT_RANGE, UNSHARE_RANGE):
        with pytest.raises(OSError) as e:
            fallocate(m.path("f"), mode, 4096, 4096)
        assert e.value.errno == errno.EOPNOTSUPP, (hex(mode), e.value)
    with pytest.raises(OSError) as e:
        fallocate(m.path("f"), 0, 0, MiB, flags=os.O_RDONLY)
    assert e.value.errno == errno.EBADF
    assert read(m.path("f")) == data
    # the refusals did not turn fallocate off for the mount (as ENOSYS would)
    fallocate(m.path("f"), 0, 0, MiB)
    assert read(m.path("f")) == data + bytes(MiB - len(data))


def test_fallocate_on_a_dual_file_makes_it_online(mount):
    m = mount
    data = os.urandom(300_000)
    put(m.path("f"), data)
    m.cli("archive", "--keep-online", "--wait", "--timeout", "60", m.path("f"))
    assert m.state("f") == "dual"
    m.sh("fallocate --keep-size -l 1M f")
    assert m.state("f") == "dual", "an allocation alone does not change the content"
    m.sh("fallocate -l 1M f")
    assert m.state("f") == "online"
    assert info(m, "f")["archive_tier"] is None, "the stale archive copy is dropped"
    assert read(m.path("f")) == data + bytes(MiB - len(data))

    put(m.path("g"), data)
    m.cli("archive", "--keep-online", "--wait", "--timeout", "60", m.path("g"))
    fallocate(m.path("g"), PUNCH_HOLE | KEEP_SIZE, 0, 4096)
    assert m.state("g") == "online"
    assert read(m.path("g")) == bytes(4096) + data[4096:]


def test_fallocate_on_s3_is_uploaded(make_mount, tmp_path, moto, s3_bucket):
    """On a remote tier fallocate goes to the staged copy, which close uploads."""
    m = make_mount(config=s3_config(tmp_path, moto, s3_bucket), env=AWS_ENV)
    os.mkdir(m.path("d"))
    os.setxattr(m.path("d"), "user.tierfs.placement", b"s3")
    m.sh("fallocate -l 3M d/new")
    data = os.urandom(200_000)
    put(m.path("d/old"), data)
    fd = os.open(m.path("d/old"), os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, MiB)
        fallocate_fd(fd, PUNCH_HOLE | KEEP_SIZE, 4096, 8192)
        fallocate_fd(fd, KEEP_SIZE, 0, 2 * MiB)
    finally:
        os.close(fd)
    want = data[:4096] + bytes(8192) + data[12288:] + bytes(MiB - len(data))
    assert info(m, "d/new")["tier"] == info(m, "d/old")["tier"] == "s3"
    assert sorted(size for size, _ in objects(moto, s3_bucket, "online/").values()) == [MiB, 3 * MiB]
    remount(m)
    assert os.stat(m.path("d/new")).st_size == 3 * MiB and read(m.path("d/new")) == bytes(3 * MiB)
    assert read(m.path("d/old")) == want


@pytest.fixture(params=["tmpfs", "ext4"])
def full_disk(request, kmounts, tmp_path):  # noqa: F811
    """The disk tier on a 4 MiB tmpfs or a 16 MiB ext4 (which, unlike tmpfs,
    keeps the part of a growing allocation it made before ENOSPC)."""
    disk = f"{home_of(tmp_path)}/disk"
    os.makedirs(disk)
    if request.param == "tmpfs":
        kmounts("-t", "tmpfs", "-o", "size=4m", "tmpfs", disk)
    else:
        img = str(tmp_path / "ext4.img")
        with open(img, "wb") as f:
            f.truncate(16 * MiB)
        subprocess.run(["mkfs.ext4", "-q", img], check=True, capture_output=True, timeout=60)
        kmounts("-o", "loop", img, disk)
    return disk


def test_fallocate_on_a_full_tier_is_enospc_with_one_log_line(make_mount, full_disk, tmp_path):
    m = make_mount(config=tiers_config(home_of(tmp_path)))
    put(m.path("keep"), b"x" * 1000)
    r = m.sh("fallocate -l 50M big", check=False)
    assert r.returncode != 0 and "No space left on device" in r.stderr, r.stderr
    assert os.stat(m.path("big")).st_size == 0
    assert os.stat(object_path(m, "big")).st_size == 0, "the object is not left longer than the file"
    lines = [line for line in m.log().splitlines() if "is full" in line]
    assert len(lines) == 1 and "tier disk" in lines[0], lines
    m.sh("fallocate -l 1M big")  # what fits still works
    assert os.stat(m.path("big")).st_size == MiB and read(m.path("keep")) == b"x" * 1000
    remount(m)
    assert read(m.path("big")) == bytes(MiB)
