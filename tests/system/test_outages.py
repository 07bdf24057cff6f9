"""Outages of local storage: the archive directory read-only or unmounted,
the disk tier full. Each must give a clear error at the syscall (EIO, ENOSPC,
EAGAIN) with one log line naming the cause, never an unbounded wait, no
state corruption, and recovery without intervention when the resource
returns. (MongoDB down: tests/system/test_mongo_outage.py; S3 down: the S3 tests.)

Real kernel mounts: a 4 MiB tmpfs for "full", a bind mount for "unmounted",
a read-only remount for "unwritable"; all undone in cleanup.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time

import pytest

from tests.conftest import wait_for
from tests.reliability_util import (CatalogView, errors_of, fsck, home_of, mk, sha, stop,  # noqa: F401
                                    tiers_config, wait_idle, write)
from tierfs import mounts


def _sh(*args: str) -> None:
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"{' '.join(args)}: {r.stderr}"


@pytest.fixture
def kmounts():
    """Kernel mounts made by the test, unmounted (lazily if busy) at the end."""
    made: list[str] = []

    def mount(*args: str) -> str:
        target = args[-1]
        _sh("mount", *args)
        made.append(target)
        return target

    def umount(target: str) -> None:
        _sh("umount", target)
        made.remove(target)

    mount.umount = umount
    yield mount
    for t in reversed(made):
        subprocess.run(["umount", t], capture_output=True, timeout=30)
        if mounts.find_mount(t) is not None:
            subprocess.run(["umount", "-l", t], capture_output=True, timeout=30)


def _log_lines(m, needle: str) -> list[str]:
    return [line for line in m.log().splitlines() if needle in line]


# ---- the archive directory ----------------------------------------------------------------
def test_vault_read_only_then_writable(mk, kmounts, tmp_path):
    """Archiving to a read-only vault: retried with the cause logged, the file stays
    online and readable; once writable again the archive completes."""
    home = home_of(tmp_path)
    os.makedirs(f"{home}/vault")
    kmounts("-t", "tmpfs", "-o", "size=16m", "tmpfs", f"{home}/vault")
    m = mk(config="job_retry_delay = 1\njob_retry_max_delay = 2\n" + tiers_config(home))
    digest = write(m.path("f"), os.urandom(200_000))
    _sh("mount", "-o", "remount,ro", f"{home}/vault")
    t0 = time.monotonic()
    r = m.cli("archive", "--wait", "--timeout", "4", m.path("f"), check=False)
    assert r.returncode == 8, r.stderr           # --wait gives up (bounded), the job stays queued
    assert time.monotonic() - t0 < 30
    wait_for(lambda: _log_lines(m, "Read-only file system"), 10, what="a log line naming the cause")
    assert m.state("f") in ("online", "archiving")
    assert sha(m.path("f")) == digest              # still readable
    _sh("mount", "-o", "remount,rw", f"{home}/vault")
    wait_for(lambda: m.state("f") == "archived", 30, what="the archive to complete once writable")
    assert sha(m.path("f")) == digest
    wait_idle(m.catalog_url)
    stop(m)
    code, out = fsck(m.config_path, "--verify-data")
    assert code == 0 and not errors_of(out), out


@pytest.fixture
def bound_vault(kmounts, tmp_path):
    """The vault directory is a bind mount of home/vault-store: umount it to make
    the archive disappear (an unmounted NFS share), mount it again to bring it back."""
    home = home_of(tmp_path)
    store, vault = f"{home}/vault-store", f"{home}/vault"
    os.makedirs(store)
    os.makedirs(vault)
    kmounts("--bind", store, vault)

    class V:
        def away(self):
            kmounts.umount(vault)

        def back(self):
            kmounts("--bind", store, vault)
    return V()


def test_restore_while_vault_unmounted(mk, bound_vault, tmp_path):
    """Regression (was: every object 'missing', the file marked lost): the opener gets
    EAGAIN/EIO within block_timeout, the file stays archived, the restore completes
    once the archive is back."""
    home = home_of(tmp_path)
    m = mk(config="job_retry_delay = 1\njob_retry_max_delay = 2\nblock_timeout = 3\n" + tiers_config(home))
    digest = write(m.path("f"), os.urandom(200_000))
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    bound_vault.away()
    t0 = time.monotonic()
    with pytest.raises(OSError) as ei:
        open(m.path("f"), "rb").read()
    assert ei.value.errno in (errno.EAGAIN, errno.EIO)
    assert time.monotonic() - t0 < 20              # bounded by block_timeout
    time.sleep(2)
    assert m.state("f") in ("archived", "restoring"), "the file must not become lost while its archive is away"
    bound_vault.back()
    wait_for(lambda: m.state("f") == "dual", 30, what="the restore once the vault is back")
    assert sha(m.path("f")) == digest


def test_archive_while_vault_unmounted(mk, bound_vault, tmp_path):
    """Regression (was: the job failed at once with 'object missing'): retried until the
    archive is back, nothing created inside the empty mountpoint."""
    home = home_of(tmp_path)
    m = mk(config="job_retry_delay = 1\njob_retry_max_delay = 2\n" + tiers_config(home))
    digest = write(m.path("f"), os.urandom(100_000))
    bound_vault.away()
    r = m.cli("archive", "--wait", "--timeout", "4", m.path("f"), check=False)
    assert r.returncode == 8, r.stderr + r.stdout  # still queued, not failed
    assert sha(m.path("f")) == digest
    assert os.listdir(f"{home}/vault") == [], "the tier's layout must not be recreated in the empty mountpoint"
    bound_vault.back()
    wait_for(lambda: m.state("f") == "archived", 30, what="the archive once the vault is back")
    assert sha(m.path("f")) == digest


def test_vault_unmounted_fsck_leaves_files_alone(mk, bound_vault, tmp_path):
    """fsck while the archive is away reports the tier, and marks nothing lost."""
    home = home_of(tmp_path)
    m = mk(config=tiers_config(home))
    digest = write(m.path("f"), os.urandom(50_000))
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    stop(m)
    bound_vault.away()
    code, out = fsck(m.config_path, "--repair")
    assert code == 1
    assert [f for f in errors_of(out) if f["check"] == "tiers" and "vault" in f["path"]], out
    assert not [f for f in out["findings"] if f["check"] in ("archive", "lost", "orphans")], out
    bound_vault.back()
    code, out = fsck(m.config_path, "--verify-data")
    assert code == 0, out
    m2 = mk(config=m.extra_config)
    assert sha(m2.path("f")) == digest


# ---- the disk tier full ----------------------------------------------------------------------
@pytest.fixture
def small_disk(kmounts, tmp_path):
    home = home_of(tmp_path)
    os.makedirs(f"{home}/disk")
    kmounts("-t", "tmpfs", "-o", "size=4m", "tmpfs", f"{home}/disk")
    return f"{home}/disk"


def test_disk_full_enospc_then_recovers(mk, small_disk, tmp_path):
    home = home_of(tmp_path)
    m = mk(config=tiers_config(home))
    keep = write(m.path("keep"), os.urandom(1_000_000))
    t0 = time.monotonic()
    r = subprocess.run(["dd", "if=/dev/urandom", f"of={m.path('big')}", "bs=64k", "count=100"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "No space left on device" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 30
    wait_for(lambda: _log_lines(m, "is full"), 5, what="a log line naming the full tier")
    assert len(_log_lines(m, "is full")) <= 3, "one line per failed write, not a flood"
    # The part that was written reads back as written; the file is consistent.
    size = os.path.getsize(m.path("big"))
    assert 0 < size < 6_400_000
    with open(m.path("big"), "rb") as f:
        assert len(f.read()) == size
    assert sha(m.path("keep")) == keep
    # Space returns: writing works again.
    os.unlink(m.path("big"))
    wait_idle(m.catalog_url)
    again = write(m.path("again"), os.urandom(1_500_000))
    assert sha(m.path("again")) == again
    st = os.statvfs(m.mnt)
    assert st.f_blocks * st.f_frsize <= 8 * 1024 * 1024, "statfs reports the small tier"
    stop(m)
    code, out = fsck(m.config_path, "--verify-data")
    assert code == 0 and not errors_of(out), out


def test_restore_into_full_disk_enospc_then_recovers(mk, small_disk, tmp_path):
    """A restore that finds the online tier full: the opener gets ENOSPC at once (was:
    a 2-minute block, then EIO), one log line names the tier, the job waits for space
    (it is not failed, and the history does not blame the opener), and the restore
    runs as soon as space returns."""
    home = home_of(tmp_path)
    m = mk(config="job_retry_delay = 1\njob_retry_max_delay = 60\njob_max_attempts = 1\nblock_timeout = 30\n"
           + tiers_config(home))
    digest = write(m.path("f"), os.urandom(1_500_000))
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    filler = m.path("filler")
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k", "count=100"], capture_output=True, timeout=60)
    for attempt in range(2):                       # a second opener also fails at once
        t0 = time.monotonic()
        with pytest.raises(OSError) as ei:
            open(m.path("f"), "rb").read()
        assert ei.value.errno == errno.ENOSPC, ei.value
        assert time.monotonic() - t0 < 5, time.monotonic() - t0
    assert len([x for x in _log_lines(m, "tier disk is full") if "wait until it is back" in x]) == 1, m.log()[-3000:]
    assert m.state("f") == "archived"
    state = m.cli("state", "-v", m.path("f")).stdout
    assert "archived since" in state and "by restore not completed" in state, state
    time.sleep(3)                                  # longer than job_max_attempts x job_retry_delay
    rows = json.loads(m.cli("queue", "--json", m.mnt).stdout)
    assert [r["state"] for r in rows if r["kind"] == "restore"] == ["waiting"], rows
    t_free = time.monotonic()
    os.unlink(filler)
    wait_for(lambda: m.state("f") == "dual", 30, what="the restore once space returns")
    assert time.monotonic() - t_free < 15, "the waiting restore runs when space returns, not at its backoff time"
    assert sha(m.path("f")) == digest
    wait_idle(m.catalog_url)
    stop(m)
    code, out = fsck(m.config_path, "--verify-data")
    assert code == 0 and not errors_of(out), out
