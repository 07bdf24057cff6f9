"""Partial-state files (issue 18 part 5): an archived file keeps its first
`stub_bytes` online; reads within them need no restore, a read beyond
restores as an open does. Through a real mount, on every catalog backend
where the fixture is stub_mount."""

import os
import random
import sqlite3
import struct
import subprocess
import time
import zlib

import pytest

from tests.conftest import CATALOG_BACKENDS, _catalog_url, file_info as info, put_file as put, wait_for

pytestmark = pytest.mark.mount

STUB = 65536


def tiers(m, stub_bytes: str = '"64KiB"') -> str:
    for d in ("disk", "vault"):
        os.makedirs(os.path.join(m.home, d), exist_ok=True)
    return f"""
        [tiers.disk]
        kind = "disk"
        path = "{m.home}/disk"
        [tiers.vault]
        kind = "vault"
        path = "{m.home}/vault"
        stub_bytes = {stub_bytes}
    """


def stub_mount_of(make_mount, settings: str = "", stub_bytes: str = '"64KiB"', catalog_url=None):
    m = make_mount(start=False, catalog_url=catalog_url)
    m.extra_config = settings + "\n" + tiers(m, stub_bytes)
    m.start()
    return m


@pytest.fixture(params=CATALOG_BACKENDS)
def stub_mount(request, make_mount, tmp_path):
    """A mount whose vault tier keeps 64 KiB stubs, on each catalog backend."""
    return stub_mount_of(make_mount, catalog_url=_catalog_url(request, tmp_path))


def archive(m, *names, extra=()):
    m.cli("archive", "--wait", "--timeout", "60", *extra, *[m.path(n) for n in names])


def vault_reads(m) -> int:
    return m.stats()["tiers"]["vault"]["reads"]


def restores(m, name) -> list:
    return [j for j in info(m, name)["jobs"] if j["kind"] == "restore"]


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, timeout=60, **kw)


def test_header_readers_need_no_restore_and_tail_restores(stub_mount):
    m = stub_mount
    data = put(m, "f.bin", 3_000_000)
    archive(m, "f.bin")
    assert m.state("f.bin") == "archived" and info(m, "f.bin")["stub_size"] == STUB
    time.sleep(1.1)  # attr_timeout on a shared catalog
    assert os.stat(m.path("f.bin")).st_blocks == STUB // 512
    ls = run("ls", "-ls", m.path("f.bin"), text=True).stdout
    assert ls.split()[0] == "64", ls          # ls -s counts 1 KiB blocks
    assert "stub: first 65536 bytes online" in m.cli("state", m.path("f.bin")).stdout
    reads = vault_reads(m)

    assert run("head", "-c", "100", m.path("f.bin")).stdout == data[:100]
    assert run("dd", f"if={m.path('f.bin')}", "bs=4k", "count=1", "status=none").stdout == data[:4096]
    fd = os.open(m.path("f.bin"), os.O_RDONLY | os.O_NONBLOCK)
    try:   # a non-blocking read running past the stub gets what the stub has
        assert os.read(fd, 1_000_000) == data[:STUB]
    finally:
        os.close(fd)

    assert m.state("f.bin") == "archived" and not restores(m, "f.bin")
    assert vault_reads(m) == reads
    assert m.cli("queue", m.mnt).stdout.count("restore") == 0

    # a read beyond the stub restores (block mode: it waits, then reads the online copy)
    assert run("tail", "-c", "100", m.path("f.bin")).stdout == data[-100:]
    assert m.state("f.bin") == "dual" and vault_reads(m) == reads + 1
    inf = info(m, "f.bin")
    assert inf["stub_size"] == 0 and len(restores(m, "f.bin")) == 1
    assert run("cat", m.path("f.bin")).stdout == data


def test_file_reads_its_header_from_the_stub(stub_mount):
    """file(1) opens with O_NONBLOCK and reads 7 MiB at once: that read is cut at the stub's end
    (direct_io hands the short read over; through the page cache file read zeros after it and said
    'MPEG-4 LOAS'). It then preads as many bytes at the end of the file
    (libmagic's buffer_fill, for magic at negative offsets) only when no magic at the start matched:
    for a big file of no known type that read is beyond the stub, so EAGAIN (file carries on) with a
    restore queued, as for any O_NONBLOCK read beyond the stub. A known format, or a file within the
    stub, is never restored."""
    m = stub_mount
    small = b"GIF89a" + b"\x01\x00\x01\x00" + bytes(30)
    with open(m.path("small.gif"), "wb") as f:
        f.write(small)
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 4000, 3000, 8, 2, 0, 0, 0)
    with open(m.path("photo.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
                + os.urandom(3_000_000))
    # Fixed bytes that libmagic calls "data": random ones match a weak magic now and then (os.urandom
    # made file(1) say "OpenPGP Secret Key" once in a full run).
    with open(m.path("big.bin"), "wb") as f:
        f.write(random.Random(18).randbytes(3_000_000))
    archive(m, "small.gif", "photo.png", "big.bin")
    reads = vault_reads(m)
    r = run("file", "-b", m.path("small.gif"), text=True)
    assert r.returncode == 0 and r.stdout.startswith("GIF image data"), r
    r = run("file", "-b", m.path("photo.png"), text=True)
    assert r.returncode == 0 and r.stdout.startswith("PNG image data, 4000 x 3000"), r
    for name in ("small.gif", "photo.png"):
        assert m.state(name) == "archived" and not restores(m, name)
    assert vault_reads(m) == reads
    r = run("file", "-b", m.path("big.bin"), text=True)
    assert r.returncode == 0 and r.stdout.strip() == "data", r
    assert [j["cause"].split(" (")[0] for j in restores(m, "big.bin")] == ["open by uid 0"]


def test_cat_reads_the_stub_then_restores_for_the_rest(stub_mount):
    m = stub_mount
    data = put(m, "c.bin", 1_000_000)
    archive(m, "c.bin")
    assert run("cat", m.path("c.bin")).stdout == data   # its first read (128 KiB) waits for the restore
    assert m.state("c.bin") == "dual"


def test_blocking_reads_past_the_stub_are_never_short_mmap_and_exec_work(stub_mount):
    """A blocking read that runs past the stub waits for the restore and gets every byte: a short read
    through the page cache (mmap, exec) would be taken for the end of the file (SIGBUS, zeros)."""
    m = stub_mount
    data = put(m, "mm.bin", 300_000)
    archive(m, "mm.bin")
    with open(m.path("mm.bin"), "rb", buffering=0) as f:
        assert f.read(STUB) == data[:STUB] and m.state("mm.bin") == "archived"
        assert f.read(1_000_000) == data[STUB:]
    archive(m, "mm.bin")
    script = ("import mmap, sys; f = open(sys.argv[1], 'rb'); "
              "mp = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ); "
              "sys.stdout.buffer.write(mp[:])")
    r = run("python3", "-c", script, m.path("mm.bin"))
    assert r.returncode == 0 and r.stdout == data, (r.returncode, r.stderr[-300:])
    assert m.state("mm.bin") == "dual"
    # an archived program runs
    with open(m.path("tool"), "wb") as f:
        f.write(open("/bin/ls", "rb").read())
    os.chmod(m.path("tool"), 0o755)
    assert os.path.getsize(m.path("tool")) > STUB
    archive(m, "tool")
    assert info(m, "tool")["stub_size"] == STUB
    assert run(m.path("tool"), "--version").returncode == 0 and m.state("tool") == "dual"


def test_a_file_smaller_than_the_stub_is_never_restored(stub_mount):
    m = stub_mount
    data = put(m, "small.txt", 1000)
    archive(m, "small.txt")
    assert info(m, "small.txt")["stub_size"] == 1000
    reads = vault_reads(m)
    assert run("cat", m.path("small.txt")).stdout == data
    assert run("tail", "-c", "10", m.path("small.txt")).stdout == data[-10:]
    with open(m.path("small.txt"), "rb", buffering=0) as f:
        assert f.read(5000) == data and f.read(5000) == b""     # EOF, no restore
    assert m.state("small.txt") == "archived" and vault_reads(m) == reads and not restores(m, "small.txt")


def test_read_beyond_the_stub_in_error_mode_is_eagain(make_mount):
    m = stub_mount_of(make_mount, settings='restore_mode = "error"')
    data = put(m, "e.bin", 200_000)
    other = put(m, "f.bin", 200_000)
    archive(m, "e.bin", "f.bin")
    fd = os.open(m.path("f.bin"), os.O_RDONLY)
    try:
        assert os.pread(fd, STUB - 1000, 0) == other[:STUB - 1000]
        with pytest.raises(BlockingIOError):        # running past the stub: a blocking read is never cut short
            os.pread(fd, 2000, STUB - 1000)
    finally:
        os.close(fd)
    fd = os.open(m.path("e.bin"), os.O_RDONLY)     # the open queues nothing
    try:
        assert os.pread(fd, 100, 1000) == data[1000:1100]
        assert not restores(m, "e.bin")
        with pytest.raises(BlockingIOError):
            os.pread(fd, 100, 100_000)
        assert len(restores(m, "e.bin")) == 1       # the read queued the restore
        wait_for(lambda: m.state("e.bin") == "dual", timeout=30, what="the restore the read queued")
        assert os.pread(fd, 100, 100_000) == data[100_000:100_100]   # the same handle reads on
    finally:
        os.close(fd)


def test_o_nonblock_reader_gets_eagain_beyond_the_stub(stub_mount):
    m = stub_mount
    data = put(m, "n.bin", 200_000)
    archive(m, "n.bin")
    fd = os.open(m.path("n.bin"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert os.pread(fd, 4096, 0) == data[:4096]
        assert os.pread(fd, 100_000, 1000) == data[1000:STUB]     # what the stub has
        assert m.state("n.bin") == "archived" and not restores(m, "n.bin")
        with pytest.raises(BlockingIOError):
            os.pread(fd, 4096, STUB)
    finally:
        os.close(fd)
    wait_for(lambda: m.state("n.bin") == "dual", timeout=30, what="restore queued by the read")


def test_release_keeps_a_stub_and_content_changes_drop_it(make_mount):
    m = stub_mount_of(make_mount)
    data = put(m, "r.bin", 500_000)
    archive(m, "r.bin", extra=("--keep-online",))
    assert m.state("r.bin") == "dual" and info(m, "r.bin")["stub_size"] == 0
    m.cli("release", m.path("r.bin"))
    assert m.state("r.bin") == "archived" and info(m, "r.bin")["stub_size"] == STUB
    assert run("head", "-c", "1000", m.path("r.bin")).stdout == data[:1000]
    # O_TRUNC drops the archive copy and the stub
    with open(m.path("r.bin"), "wb") as f:
        f.write(b"new content")
    assert m.state("r.bin") == "online" and info(m, "r.bin")["stub_size"] == 0
    # archived again: the stub is the new content, not pages of the old one
    archive(m, "r.bin")
    assert info(m, "r.bin")["stub_size"] == len(b"new content")
    assert run("head", "-c", "100", m.path("r.bin")).stdout == b"new content"
    ino = os.stat(m.path("r.bin")).st_ino
    os.unlink(m.path("r.bin"))
    db = m.catalog_url.removeprefix("sqlite:///")
    wait_for(lambda: sqlite3.connect(db).execute("SELECT count(*) FROM stubs WHERE ino = ?", (ino,)).fetchone()[0]
             == 0, timeout=10, what="the stub removed with the file")


def test_a_policy_rule_overrides_the_tiers_stub_bytes(make_mount):
    m = make_mount(start=False)
    m.extra_config = """
        [[policy]]
        name = "heads"
        action = "archive"
        to = "vault"
        path = "*.img"
        stub_bytes = "4KiB"
    """ + tiers(m, stub_bytes="0")
    m.start()
    img = put(m, "a.img", 100_000)
    put(m, "b.bin", 100_000)
    m.cli("policy", "run", "-c", m.config_path)
    wait_for(lambda: m.state("a.img") == "archived", timeout=30, what="the policy's archive")
    assert info(m, "a.img")["stub_size"] == 4096
    assert run("dd", f"if={m.path('a.img')}", "bs=4k", "count=1", "status=none").stdout == img[:4096]
    assert m.state("a.img") == "archived"
    archive(m, "b.bin")                       # not by the rule: the tier's stub_bytes (0)
    assert info(m, "b.bin")["stub_size"] == 0
    time.sleep(1.1)
    assert os.stat(m.path("b.bin")).st_blocks == 0
