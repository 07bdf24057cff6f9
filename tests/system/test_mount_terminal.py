"""What `tierfs mount` (in the background) says on its own terminal, and
what a refused mount leaves behind: nothing.

- the unclean-stop warning after a killed daemon is printed on the stderr
  of the `tierfs mount` that recovers, not only written to the log;
- a mount its daemon refuses (a bad [[policy]], found only when the daemon
  opens) says why in one line and creates neither the state directory nor
  a log file; the daemon's records before the mount went live reach the log
  of a mount that succeeds."""

from __future__ import annotations

import os

import pytest

from tierfs import mounts

pytestmark = pytest.mark.mount


def test_unclean_stop_warning_on_the_terminal(mount):
    m = mount
    dead = m.pid
    m.kill()
    # auto_unmount acts asynchronously, and not everywhere (a fresh Debian root left the mount): then
    # `tierfs mount` says it cleaned the stale mount, in one more line
    stale = not mounts.wait_mounted(m.mnt, 5, mounted=False)
    r = m.cli("mount", m.mnt, "--config", m.config_path)
    m.pid = int(r.stdout.split("(pid ")[1].split(",")[0])
    line = f"tierfs: the previous tierfs daemon (pid {dead}, mounted on {m.mnt}) did not unmount cleanly; " \
           "running recovery\n"
    cleaned = f"tierfs: cleaned up a stale mount on {m.mnt} left by a daemon that died\n"
    assert r.stderr == (cleaned if stale else "") + line
    assert line[len("tierfs: "):].strip() in m.log()
    m.stop()
    r = m.cli("mount", m.mnt, "--config", m.config_path)   # a clean stop: nothing to say
    m.pid = int(r.stdout.split("(pid ")[1].split(",")[0])
    assert r.stderr == ""


def test_refused_mount_creates_no_state_dir_or_log(make_mount):
    m = make_mount(config='[[policy]]\nname = "x"\naction = "bogus"\n', start=False)
    m.write_config()
    state = os.path.join(m.home, "state")
    r = m.cli("mount", m.mnt, "--config", m.config_path, check=False)
    assert r.returncode == 6, r.stderr
    assert r.stderr == "tierfs: configuration: policy 'x': action: expected one of archive, release, migrate, " \
                       "delete, got 'bogus'\n"
    assert not os.path.exists(state), os.listdir(state)
    assert mounts.find_mount(m.mnt) is None


def test_mount_refused_for_an_unreachable_catalog_leaves_no_state_dir(make_mount):
    """The catalog is opened after the state directory is made (a config may
    keep an SQLite catalog there); a mount refused there removes the empty
    directory it made, so a typo in a catalog URL leaves nothing behind."""
    url = "mongodb://127.0.0.1:9/tierfs?serverSelectionTimeoutMS=500&connectTimeoutMS=500"
    m = make_mount(catalog_url=url, start=False)
    m.write_config()
    state = os.path.join(m.home, "state")
    r = m.cli("mount", m.mnt, "--config", m.config_path, check=False)
    assert r.returncode == 7, r
    assert len(r.stderr.splitlines()) == 1 and "127.0.0.1:9" in r.stderr, r.stderr
    assert not os.path.exists(state), os.listdir(state)
    assert mounts.find_mount(m.mnt) is None


def test_records_before_ready_reach_the_log(mount):
    log = mount.log()
    assert "tierfs mounted on" in log and log.index("catalog") < log.index("tierfs mounted on")
