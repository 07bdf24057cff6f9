"""Fault injection: the daemon is SIGKILLed at every point of every move
(tierfs/faults.py POINTS), on every catalog backend; after a remount without
the fault, recovery must leave the file's bytes intact, its state consistent,
its job done, and no orphan object on any tier (fsck agrees).

Each case: mount with TIERFS_FAULT=<point>, write a file (and a witness
file nothing touches), trigger the operation that passes the point, check
the daemon died *at that point* (its log says so), run a read-only fsck
(which must report the dead daemon), remount, wait for the queue to drain,
then check bytes, state, jobs, tier objects, and a clean fsck after unmount.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import wait_for
from tests.reliability_util import (CatalogView, assert_no_orphans, errors_of, fsck, home_of, mk,  # noqa: F401
                                    sha, start, stop, tiers_config, track, wait_dead, wait_idle, write)
from tierfs import faults, mounts

#: point -> (what the test does to pass it, the file's state after recovery, its online tier)
EXPECT = {
    "archive.after_mark": ("archive", "archived", None),
    "archive.after_copy": ("archive", "archived", None),
    "archive.after_verify": ("archive", "archived", None),
    "archive.after_switch": ("archive", "archived", None),
    "restore.after_mark": ("restore", "dual", "disk"),
    "restore.after_copy": ("restore", "dual", "disk"),
    "restore.after_switch": ("restore", "dual", "disk"),
    "release.before_switch": ("release", "dual", "disk"),  # the request died with the daemon: still dual
    "migrate.after_copy": ("migrate", "online", "disk2"),
    "migrate.after_switch": ("migrate", "online", "disk2"),
    "gc.before_delete": ("delete", None, None),
    # The file is closed, its sha256 not yet computed (over 256 KiB: in the background): the remount
    # finds it in the catalog and computes it (was: never, and fsck said nothing).
    "checksum.before_compute": ("write", "online", "disk"),
}


def test_every_point_is_covered():
    assert set(EXPECT) == set(faults.POINTS), "a fault point was added without a crash test"


def _config(tmp_path) -> str:
    return "job_retry_delay = 1\nlog_level = \"debug\"\n" + tiers_config(home_of(tmp_path), disk2=True)


@pytest.mark.parametrize("point", faults.POINTS)
def test_crash_at(point, mk, catalog_url, tmp_path):
    op, final_state, final_tier = EXPECT[point]
    cfg = _config(tmp_path)
    home = home_of(tmp_path)
    m = mk(config=cfg, catalog_url=catalog_url, env={"TIERFS_FAULT": point})
    data = os.urandom(300_000)
    if op == "write":   # the write is the trigger: the checksummer's first file kills the daemon
        with open(m.path("f"), "wb") as f:
            f.write(data)
        digest = __import__("hashlib").sha256(data).hexdigest()
        witness = None
    else:
        digest = write(m.path("f"), data)
        witness = write(m.path("w"), os.urandom(50_000))

    # Prepare, without passing the point (the fault only fires at its own step).
    if op == "restore":
        m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
        assert m.state("f") == "archived"
    elif op == "release":
        m.cli("archive", "--keep-online", "--wait", "--timeout", "60", m.path("f"))
        assert m.state("f") == "dual"

    # Trigger: the daemon dies at the point.
    # A request's reply can lose the race with the kill (the job starts at once): its
    # exit status does not matter, the request is in the catalog before the job runs.
    if op == "archive":
        m.cli("archive", m.path("f"), check=False)
    elif op == "restore":
        r = subprocess.run(["cat", m.path("f")], capture_output=True, timeout=60)
        assert r.returncode != 0, "the read should fail: the daemon died during its restore"
    elif op == "release":
        r = m.cli("release", m.path("f"), check=False)
        assert r.returncode != 0
    elif op == "migrate":
        m.cli("migrate", "--to", "disk2", m.path("f"), check=False)
    elif op == "delete":
        os.unlink(m.path("f"))
    wait_dead(m)
    assert f"killing the daemon at {point}" in m.log(), "the daemon died, but not at the fault point"

    # fsck (read-only, nothing mounted) sees the unclean stop.
    code, out = fsck(m.config_path)
    assert code == 1 and any(f["check"] == "sessions" for f in errors_of(out)), out
    if op == "write":   # the file closed without its checksum is reported (it was not, before)
        assert any("no checksum recorded" in f["problem"] for f in out["findings"]), out

    # Remount without the fault: recovery runs.
    m2 = mk(config=cfg, catalog_url=catalog_url)
    assert "did not unmount cleanly" in m2.log()
    wait_idle(catalog_url, timeout=60)
    if witness is not None:
        assert sha(m2.path("w")) == witness
    view = CatalogView(catalog_url)
    try:
        if final_state is None:
            assert not os.path.exists(m2.path("f"))
        else:
            wait_for(lambda: m2.state("f") == final_state, 30, what=f"state {final_state}")
            inode = view.cat.get(view.ino("f"))
            assert inode.tier == final_tier and inode.state.value == final_state
            if final_state in ("archived", "dual"):
                assert inode.archive_tier == "vault" and inode.archive_location
            jobs = view.jobs(inode.ino)
            assert (jobs or op == "write") and all(j.state.value in ("done", "cancelled") for j in jobs), jobs
            assert sha(m2.path("f")) == digest  # archived files restore on this read
            assert inode.checksum in (None, digest)
            if op == "write":
                wait_for(lambda: view.cat.get(inode.ino).checksum == digest, 30,
                         what="the checksum the dead daemon did not compute")
            if op == "release":
                m2.cli("release", m2.path("f"))  # the user repeats the request that died with the daemon
                assert m2.state("f") == "archived"
                assert sha(m2.path("f")) == digest
    finally:
        view.close()
    roots = {t: os.path.join(home, t) for t in ("disk", "disk2", "vault")}
    assert_no_orphans(catalog_url, roots)
    stop(m2)
    code, out = fsck(m2.config_path, "--verify-data")
    assert code == 0 and not errors_of(out), out


def test_remount_over_stale_mount(mk, tmp_path):
    """A daemon killed without auto_unmount leaves a stale mount (ENOTCONN); `tierfs
    mount` on it cleans it up, says so, and recovers."""
    cfg = _config(tmp_path)
    m = mk(config=cfg, env={"TIERFS_NO_AUTO_UNMOUNT": "1"})
    digest = write(m.path("f"), os.urandom(10_000))
    os.kill(m.pid, 9)
    wait_for(lambda: mounts.is_stale(m.mnt), 10, what="a stale mount")
    r = m.cli("state", m.path("f"), check=False)
    assert r.returncode == 3 and "daemon died" in r.stderr, r.stderr
    r = m.cli("mount", m.mnt, "--config", m.config_path, check=False)
    assert r.returncode == 0, r.stderr
    assert "cleaned up a stale mount" in r.stderr
    m.pid = int(r.stdout.split("(pid ")[1].split(",")[0])
    track(m.pid)
    assert sha(m.path("f")) == digest
    stop(m)
