"""Concurrency and a randomized (fsx-style) test on a real mount.

fsx (the model and its operations: tests/fsmodel.py, shared with the
in-process run in tests/engine/test_fsx_engine.py): each seed runs a short
random sequence of writes, truncates, reads, renames, hard links, unlinks
and archive / restore / release / migrate requests (setxattr
user.tierfs.request) on a few files, while the job workers move the bytes
underneath; every read and every stat is checked against an in-memory model.
Many seeds run in one mount, each in its own directory (removed at the end
of the seed), and the mount is fsck'ed at the end. A failure prints the seed
and the operations that led to it.

Concurrency: readers and writers on a file while it is archived, migrated
or restored; rename and unlink while its bytes move.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
import trio

from tests.conftest import CATALOG_BACKENDS, wait_for
from tests.fsmodel import REQ, REQUESTS, Fsx, SyscallOps, first_diff as _first_diff  # noqa: F401 (test_fsx_handles)
from tests.reliability_util import (CatalogView, assert_no_orphans, errors_of, fsck, home_of, mk,  # noqa: F401
                                    sha, stop, tiers_config, wait_idle, write)

# ---- the randomized test -----------------------------------------------------------------------
#: seeds per run (the issue asks for at least 200); TIERFS_FSX_SEEDS overrides
SEEDS = int(os.environ.get("TIERFS_FSX_SEEDS", "200"))
OPS = 50


def _config(tmp_path, extra: str = "", vault_opts: str = "") -> str:
    return ("job_retry_delay = 1\nlog_level = \"debug\"\n" + extra
            + tiers_config(home_of(tmp_path), disk2=True, vault_opts=vault_opts))


def test_fsx(mk, catalog_url, tmp_path):
    """Every read matches the model across many seeds while moves run underneath."""
    sqlite = catalog_url.startswith("sqlite")
    seeds = SEEDS if sqlite else max(10, SEEDS // 12)   # MongoDB majority writes: ~10x slower per operation
    # (A catalog read overlapping the flush of a new size used to put the old size back in the cache on
    # MongoDB; this ran with attr_timeout = 3600 until tierfs/attrcache.py kept flushes from being undone.)
    extra = "block_timeout = 3\n"
    m = mk(config=_config(tmp_path, extra), catalog_url=catalog_url)
    t0 = time.monotonic()
    requests = eagain = 0
    for seed in range(seeds):
        f = Fsx(SyscallOps(), m.path(f"s{seed}"), seed, OPS)
        trio.run(f.run)
        requests += f.requests
        eagain += f.truncate_eagain
    took = time.monotonic() - t0
    print(f"\nfsx: {seeds} seeds x {OPS} ops ({requests} move requests, {eagain} truncates retried after EAGAIN) "
          f"in {took:.1f}s on {catalog_url.split(':')[0]}")
    wait_idle(catalog_url, timeout=60)
    home = home_of(tmp_path)
    assert_no_orphans(catalog_url, {t: os.path.join(home, t) for t in ("disk", "disk2", "vault")})
    stop(m)
    code, out = fsck(m.config_path, "--verify-data")
    assert code == 0 and not errors_of(out), out


def test_open_o_trunc_truncates(mk, tmp_path):
    """Regression (found by fsx): libfuse's atomic_o_trunc leaves O_TRUNC to open();
    it was ignored, so a shorter rewrite kept the old size and returned the old tail."""
    m = mk(config=_config(tmp_path))
    write(m.path("f"), b"x" * 17496)
    new = os.urandom(9088)
    with open(m.path("f"), "wb") as f:
        f.write(new)
    assert os.stat(m.path("f")).st_size == 9088
    with open(m.path("f"), "rb") as f:
        assert f.read() == new


def test_open_racing_archive_switch(mk, tmp_path):
    """Regression (found by fsx): an open racing an archive's final switch got EAGAIN
    ('went offline while opening') in 20-40% of tries instead of restoring the file."""
    m = mk(config=_config(tmp_path))
    eagain = 0
    for i in range(60):
        p = m.path(f"a{i}")
        write(p, b"1" * 30000)
        os.setxattr(p, REQ, b"archive")
        for _ in range(20):
            try:
                os.close(os.open(p, os.O_RDONLY))
            except BlockingIOError:
                eagain += 1
                break
    assert eagain == 0, f"{eagain} of 60 opens failed with EAGAIN"


def test_truncate_archived_file(mk, tmp_path):
    """Regression (found by fsx): truncating an archived file to a non-zero size waited for
    the restore while holding the inode lock the restore job needs (EAGAIN after block_timeout)."""
    m = mk(config=_config(tmp_path, "block_timeout = 5\n"))
    data = os.urandom(20000)
    write(m.path("f"), data)
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    t0 = time.monotonic()
    try:
        os.truncate(m.path("f"), 1000)
    finally:
        took = time.monotonic() - t0
    assert took < 4, f"truncate took {took:.1f}s"
    with open(m.path("f"), "rb") as f:
        assert f.read() == data[:1000]


# ---- concurrency on one file while its bytes move -------------------------------------------------
def _job_states(url: str, rel: str) -> list[tuple[str, str]]:
    v = CatalogView(url)
    try:
        return [(j.kind.value, j.state.value) for j in v.jobs(v.ino(rel))]
    finally:
        v.close()


def test_write_right_after_archive_request_keeps_size(mk, tmp_path):
    """Regression (jobs.remember_move): a move must not put back the size a write just changed."""
    m = mk(config=_config(tmp_path))
    for i in range(20):
        p = m.path(f"a{i}")
        write(p, b"1" * 3000)
        os.setxattr(p, REQ, b"archive keep_online")
        fd = os.open(p, os.O_WRONLY)
        os.pwrite(fd, b"2" * 3000, 8000)
        os.close(fd)
        assert os.stat(p).st_size == 11000, i
        with open(p, "rb") as f:
            assert f.read() == b"1" * 3000 + b"\0" * 5000 + b"2" * 3000, i


def test_writer_and_reader_during_slow_archive(mk, tmp_path):
    """A write during the archive copy wins: the copy is abandoned, the job retries,
    and the archive finally holds the new bytes; a reader meanwhile sees whole versions."""
    m = mk(config=_config(tmp_path, vault_opts="archive_delay = 1.5"))
    old = os.urandom(100_000)
    write(m.path("f"), old)
    os.setxattr(m.path("f"), REQ, b"archive")
    wait_for(lambda: m.state("f") == "archiving", 10, what="the archive to start")
    with open(m.path("f"), "rb") as f:
        assert f.read() == old                      # readable while archiving
    with open(m.path("f"), "ab") as f:              # written during the copy
        f.write(b"appended")
    new = old + b"appended"
    wait_for(lambda: m.state("f") == "archived", 30, what="the retried archive")
    assert ("archive", "done") in _job_states(m.catalog_url, "f")
    assert "changed during the copy" in m.log() or "opened for writing" in m.log()
    with open(m.path("f"), "rb") as f:
        assert f.read() == new                      # restored from the archive: the new bytes
    wait_idle(m.catalog_url)
    home = home_of(tmp_path)
    assert_no_orphans(m.catalog_url, {t: os.path.join(home, t) for t in ("disk", "disk2", "vault")})


def test_many_readers_share_one_slow_restore(mk, tmp_path):
    m = mk(config=_config(tmp_path, vault_opts="restore_delay = 1.5"))
    data = os.urandom(300_000)
    write(m.path("f"), data)
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    results: list = []

    def reader():
        try:
            with open(m.path("f"), "rb") as f:
                results.append(f.read() == data)
        except OSError as e:
            results.append(e)
    threads = [threading.Thread(target=reader) for _ in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.3)
    st = os.stat(m.path("f"))                       # the mount stays responsive during the restore
    assert st.st_size == len(data) and time.monotonic() - t0 < 1.5
    for t in threads:
        t.join(60)
    assert results == [True] * 8, results
    assert [k for k, s in _job_states(m.catalog_url, "f") if k == "restore"] == ["restore"]  # one restore


def test_rename_during_archive(mk, tmp_path):
    m = mk(config=_config(tmp_path, vault_opts="archive_delay = 1.5"))
    data = os.urandom(50_000)
    write(m.path("f"), data)
    os.mkdir(m.path("d"))
    os.setxattr(m.path("f"), REQ, b"archive")
    wait_for(lambda: m.state("f") == "archiving", 10, what="the archive to start")
    os.rename(m.path("f"), m.path("d/g"))
    wait_for(lambda: m.state("d/g") == "archived", 30, what="the archive under the new name")
    assert not os.path.exists(m.path("f"))
    assert sha(m.path("d/g")) == __import__("hashlib").sha256(data).hexdigest()


@pytest.mark.parametrize("move", ["archive", "migrate to=disk2", "restore"])
def test_unlink_during_move(move, mk, tmp_path):
    """Deleting a file while its bytes move: the move ends, nothing is left on any tier."""
    m = mk(config=_config(tmp_path, vault_opts="archive_delay = 1.5\nrestore_delay = 1.5"))
    keep = write(m.path("keep"), os.urandom(10_000))
    write(m.path("f"), os.urandom(200_000))
    if move == "restore":
        m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    os.setxattr(m.path("f"), REQ, move.encode())
    time.sleep(0.5)                                 # the copy is under way (vault delays 1.5 s)
    os.unlink(m.path("f"))
    wait_idle(m.catalog_url, timeout=60)
    home = home_of(tmp_path)
    assert_no_orphans(m.catalog_url, {t: os.path.join(home, t) for t in ("disk", "disk2", "vault")})
    assert sha(m.path("keep")) == keep
    assert "crashed" not in m.log()


def test_writer_during_migrate(mk, tmp_path):
    """A writer hammering a file while it migrates (the writer wins: the copy is
    abandoned and retried); once it stops, the migrate completes and every byte
    written is there, wherever the bytes ended up."""
    m = mk(config=_config(tmp_path))
    size = 8 << 20
    model = bytearray(os.urandom(size))
    write(m.path("f"), bytes(model))
    rnd = random.Random(7)
    for target in ("disk2", "disk"):
        os.setxattr(m.path("f"), REQ, f"migrate to={target}".encode())
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            off = rnd.randrange(0, size - 4096)
            buf = rnd.randbytes(4096)
            fd = os.open(m.path("f"), os.O_WRONLY)
            os.pwrite(fd, buf, off)
            os.close(fd)
            model[off:off + 4096] = buf
            time.sleep(0.01)
        wait_for(lambda: os.getxattr(m.path("f"), "user.tierfs.tier") == target.encode(), 30,
                 what=f"migrate to {target}")
        with open(m.path("f"), "rb") as f:
            assert f.read() == bytes(model)
    wait_idle(m.catalog_url)
    home = home_of(tmp_path)
    assert_no_orphans(m.catalog_url, {t: os.path.join(home, t) for t in ("disk", "disk2", "vault")})
