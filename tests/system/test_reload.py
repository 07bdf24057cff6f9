"""SIGHUP through real mounts: it never unmounts (a writer goes on writing
across it), it reopens the log file at its original path (logrotate renames
the log, then `kill -HUP`), and it reloads the config file the daemon was
started with: live keys (policies, job limits, log_level) take effect with
one log line each; a change that needs a remount (catalog, a tier's
location) or a file that does not parse is refused with one log line, and
the running configuration stays, entirely. The shipped logrotate example
(systemd/logrotate) is run by the real logrotate, its postrotate `tierfs
reload` finding the daemon by its runtime file."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from tierfs import mounts
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.mount


def log_file(m) -> str:
    return os.path.join(m.home, "state", "logs", mounts.runtime_key(m.mnt) + ".log")


def hup(m, expect: str) -> str:
    """kill -HUP the daemon; wait for the line (containing `expect`) that ends its reload; return it."""
    before = m.log().count(expect)
    os.kill(m.pid, signal.SIGHUP)
    wait_for(lambda: m.log().count(expect) > before, 10, what=f"a log line with {expect!r}")
    return [ln for ln in m.log().splitlines() if expect in ln][-1]


def reconfigure(m, extra: str) -> None:
    m.extra_config = extra
    m.write_config()


def test_writer_keeps_writing_across_sighup(make_mount):
    """Before: HUP unmounted, and the writer got ENOTCONN mid-file. The
    reload rereads the file with the mount's -o overrides: nothing changed."""
    m = make_mount(options=("workers=4",))
    chunk = 64 * 1024
    written = []
    failure = []

    def writer():
        try:
            with open(m.path("stream"), "wb") as f:
                for i in range(400):                 # 25 MiB over about 2 s
                    block = bytes([i % 251]) * chunk
                    f.write(block)
                    f.flush()
                    written.append(block)
                    time.sleep(0.004)
        except OSError as e:
            failure.append(e)
    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(5):
            time.sleep(0.2)
            os.kill(m.pid, signal.SIGHUP)
    finally:
        t.join(60)
    assert not failure, failure
    assert mounts.find_mount(m.mnt) is not None and mounts.pid_alive(m.pid)
    with open(m.path("stream"), "rb") as f:
        assert f.read() == b"".join(written)
    assert len(written) == 400
    wait_for(lambda: m.log().count("nothing changed") == 5, 10, what="five reloads logged")
    assert m.log().count("received SIGHUP") == 5 and "unmounting" not in m.log()


def test_sighup_after_rotation_logs_to_a_new_file(mount):
    m = mount
    path = log_file(m)
    os.rename(path, path + ".1")                      # logrotate's rename
    hup(m, "nothing changed")
    assert os.path.exists(path), "no new log file at the original path"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as f:
        new = f.read()
    with open(path + ".1") as f:
        old = f.read()
    assert "tierfs mounted on" in old and "received SIGHUP" in old
    assert "log file reopened" in new and "tierfs mounted on" not in new
    with open(m.path("f"), "w") as f:                  # something the daemon logs afterwards
        f.write("x")
    m.cli("archive", "--wait", m.path("f"))
    wait_for(lambda: "archived /f" in open(path).read(), 10, what="the archive logged in the new file")
    assert "archived /f" not in open(path + ".1").read()


def test_logrotate_example_rotates_and_the_daemon_writes_the_new_file(mount, tmp_path):
    if shutil.which("logrotate") is None:
        pytest.fail("logrotate is missing (./dev/install --test installs it)")
    m = mount
    path = log_file(m)
    with open(os.path.join(ROOT, "systemd", "logrotate")) as f:
        conf = f.read()
    # the shipped file, with this mount's state_dir and this checkout's tierfs (postrotate names
    # the mount: `tierfs reload` alone would signal every tierfs daemon on the machine)
    conf = (conf.replace("/root/.local/share/tierfs/state/logs/", os.path.dirname(path) + "/")
            .replace("/opt/tierfs/bin/tierfs reload", f"{sys.executable} -m tierfs.cli reload {m.mnt}"))
    assert conf.count(os.path.dirname(path)) == 1 and m.mnt in conf
    (tmp_path / "logrotate.conf").write_text(conf)
    r = subprocess.run(["logrotate", "--force", "--state", str(tmp_path / "status"), str(tmp_path / "logrotate.conf")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env=dict(m.env, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: os.path.exists(path) and "log file reopened" in open(path).read(), 10,
             what="the daemon's new log file")
    with open(path + ".1") as f:        # delaycompress: the newest rotated file stays plain
        assert "tierfs mounted on" in f.read()
    with open(m.path("f"), "w") as f:
        f.write("x")
    m.cli("archive", "--wait", m.path("f"))
    wait_for(lambda: "archived /f" in open(path).read(), 10, what="the archive logged in the new file")
    assert "archived /f" not in open(path + ".1").read()


POLICY = """
workers = 3
log_level = "debug"

[[policy]]
name = "spill"
action = "archive"
to = "vault"
path = ["cold-*"]
interval = "1s"
"""


def test_reload_takes_a_new_policy_and_job_limits(mount):
    m = mount
    for name in ("cold-1", "warm"):
        with open(m.path(name), "wb") as f:
            f.write(os.urandom(10000))
    time.sleep(1.5)
    assert m.state("cold-1") == "online"               # no policy yet
    reconfigure(m, POLICY)
    t0 = time.monotonic()
    done = hup(m, "change(s) applied")
    lines = m.log().splitlines()
    assert any(ln.endswith("reload: workers: 2 -> 3") for ln in lines)
    assert any(ln.endswith("reload: log_level: info -> debug") for ln in lines)
    assert any(ln.endswith("reload: policy: 0 rule(s) -> 1 rule(s) (spill)") for ln in lines)
    assert "3 change(s) applied in" in done
    wait_for(lambda: m.state("cold-1") == "archived", 20, what="the reloaded policy archiving cold-1")
    print(f"policy applied {time.monotonic() - t0:.2f}s after SIGHUP; {done.split(': ', 1)[1]}")
    assert m.state("warm") == "online"
    assert re.search(r" DEBUG tierfs\.\S+: job \d+ took", m.log()), "log_level debug not applied"
    r = m.cli("policy", "check", "-c", m.config_path)
    assert "rule 'spill'" in r.stdout or "spill" in r.stdout

    reconfigure(m, "")                                 # and removed again
    hup(m, "change(s) applied")
    assert any(ln.endswith("reload: policy: 1 rule(s) (spill) -> 0 rule(s)") for ln in m.log().splitlines())
    with open(m.path("cold-2"), "wb") as f:
        f.write(b"y" * 1000)
    time.sleep(2.5)
    assert m.state("cold-2") == "online"


@pytest.mark.parametrize("change,named", [
    ("catalog", "catalog"),
    ("tier path", "tiers.vault"),
    ("allow_other", "allow_other"),
    ("broken toml", "invalid TOML"),
    ("bad policy", "policy"),
])
def test_reload_refuses_what_cannot_change_live(mount, tmp_path, change, named):
    """One log line names the cause; nothing of the file is taken (not even the
    live key next to it); the mount keeps working."""
    m = mount
    with open(m.path("before"), "w") as f:
        f.write("before")
    with open(m.config_path) as f:
        text = f.read()
    text = text.replace('state_dir =', 'workers = 7\nstate_dir =')       # a live change in the same file
    if change == "catalog":
        text = text.replace(m.catalog_url, f"sqlite:///{tmp_path}/other.db")
    elif change == "tier path":
        os.makedirs(f"{m.home}/vault2")
        text = text.replace(f'"{m.home}/vault"', f'"{m.home}/vault2"')
    elif change == "allow_other":
        text = text.replace('state_dir =', 'allow_other = true\nstate_dir =')
    elif change == "broken toml":
        text += "\n[tiers.broken\n"
    elif change == "bad policy":
        text += '\n[[policy]]\nname = "x"\naction = "shred"\n'
    with open(m.config_path, "w") as f:
        f.write(text)
    line = hup(m, "refused")
    assert named in line and "the running configuration stays" in line, line
    assert len([ln for ln in m.log().splitlines() if "refused" in ln]) == 1
    assert "reload: workers" not in m.log()
    with open(m.path("after"), "w") as f:
        f.write("after")
    assert open(m.path("before")).read() == "before" and open(m.path("after")).read() == "after"
    m.cli("archive", "--wait", m.path("after"))       # jobs still run, on the old tiers
    assert m.state("after") == "archived" and os.listdir(f"{m.home}/vault")
    assert mounts.find_mount(m.mnt) is not None


def test_reload_command_refuses_what_is_not_a_tierfs_mount(mount, tmp_path):
    r = mount.cli("reload", str(tmp_path), check=False)
    assert r.returncode == 3 and r.stderr == f"tierfs: {tmp_path}: not a tierfs mount\n"
    r = mount.cli("reload", mount.mnt)
    assert r.stdout == f"tierfs reloading {mount.mnt} (pid {mount.pid}): see its log\n"
    wait_for(lambda: "reload of" in mount.log(), 10, what="the reload logged")
