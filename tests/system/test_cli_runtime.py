"""Every command finds a mount through the runtime file its daemon publishes
(tierfs/runtime.py), root or not, whatever the caller's own environment says.

Real mounts through the real CLI; other users are `nobody` (tests/mount/test_private_files.py).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import pwd
import subprocess
import sys

import pytest

from tierfs import __version__, mounts, runtime
from tests.conftest import ROOT, Mount, wait_for
from tests.reliability_util import wait_dead
from tests.mount.test_private_files import USER, _python_for, as_user, open_base, refused  # noqa: F401 - a fixture

pytestmark = pytest.mark.mount

POLICY = '\n[[policy]]\nname = "cold"\naction = "archive"\nto = "vault"\ninactive_for = "1d"\n'
#: a rule only `tierfs policy run` runs (no interval, no watermark), which the file below matches
BIG = '\n[[policy]]\nname = "big"\naction = "archive"\nto = "vault"\nmin_size = 50\nwatermark = false\n'


def record_file(m: Mount, run_dir: str | None = None) -> str:
    return os.path.join(run_dir or runtime.SYSTEM_DIR, runtime.file_name(m.mnt))


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_runtime_file_appears_with_its_fields_and_goes_at_umount(make_mount, tmp_path):
    """Root's daemon, default directory: /run/tierfs (0755), the file 0644, nothing secret in it."""
    other = f"sqlite:///{tmp_path}/other.db"
    m = make_mount(options=("restore_mode=error", f"catalog={other}"))
    path = record_file(m)
    with open(path) as f:
        rec = json.load(f)
    assert rec == dict(pid=m.pid, mountpoint=m.mnt, config=m.config_path,
                       overrides={"restore_mode": "error", "catalog": other}, catalog=other,
                       session=m.stats()["session"], uid=0, home=m.home, version=__version__, withheld=[]), rec
    assert mode(runtime.SYSTEM_DIR) == 0o755 and mode(path) == 0o644
    m.stop()   # `tierfs umount`, which waits for the daemon it found in the file
    assert not os.path.exists(path) and not mounts.pid_alive(m.pid)


def test_stale_runtime_file_is_ignored_and_swept(make_mount, tmp_path):
    run = str(tmp_path / "run")
    m = make_mount(env={"TIERFS_RUNTIME_DIR": run})
    path = record_file(m, run)
    first = json.load(open(path))["pid"]
    os.kill(m.pid, signal.SIGKILL)   # no chance to remove its file
    # auto_unmount removes the mount, or loses its race with the dying daemon and leaves a stale one
    # (failed this test on the fresh machine): reliability_util.wait_dead handles both
    wait_dead(m)
    assert os.path.exists(path)
    os.environ[runtime.RUNTIME_ENV] = run
    try:
        assert runtime.find(m.mnt, 0) is None        # its pid is dead: ignored
        # a dead daemon's file for another mountpoint, swept by the next mount that publishes here
        ghost = runtime.MountRecord(pid=dead_pid(), mountpoint="/nowhere", config=None, overrides={},
                                    catalog="sqlite:///x", session="s", uid=0, home="/h")
        with open(os.path.join(run, runtime.file_name("/nowhere")), "w") as f:
            json.dump(ghost.__dict__, f)
        m.start()
        rec = runtime.find(m.mnt, 0)
        assert rec is not None and rec.pid == m.pid != first
        assert sorted(os.listdir(run)) == [runtime.file_name(m.mnt)]
    finally:
        del os.environ[runtime.RUNTIME_ENV]
    assert m.cli("status", "--json", m.mnt).returncode == 0


def test_commands_use_the_mounts_config_not_the_callers_environment(make_mount, tmp_path):
    """policy check inside a mount mounted with -c CONFIG and -o: that config; status and queue MNT
    likewise, with $TIERFS_CONFIG and $TIERFS_HOME of the caller pointing elsewhere."""
    other = f"sqlite:///{tmp_path}/other.db"
    m = make_mount(config=POLICY + BIG, options=(f"catalog={other}",))
    with open(m.path("f"), "wb") as f:
        f.write(b"x" * 100)
    elsewhere = {"TIERFS_HOME": str(tmp_path / "elsewhere"), "TIERFS_CONFIG": str(tmp_path / "nope.toml")}

    def cli_in_mount(*args):   # PYTHONPATH: from inside the mount, `-m` would import the installed tierfs
        return subprocess.run([sys.executable, "-m", "tierfs.cli", *args], capture_output=True, text=True,
                              timeout=120, env=dict(m.env, PYTHONPATH=ROOT, **elsewhere), cwd=m.mnt)
    r = cli_in_mount("policy", "check", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["config"] == m.config_path and [x["name"] for x in out["rules"]] == ["cold", "big"], out
    # -o catalog= is in force for policy run too: it finds the file in the mount's catalog (other.db)
    r = cli_in_mount("policy", "run", "--dry-run", "--rule", "big", "--json")
    assert r.returncode == 0, r.stderr
    assert [a["path"] for a in json.loads(r.stdout)["actions"]] == ["/f"], r.stdout
    s = json.loads(m.cli("status", "--json", m.mnt, env=elsewhere).stdout)
    assert s[0]["catalog"] == other and s[0]["mounts"][0]["pid"] == m.pid, s
    assert "catalog=" in s[0]["mounts"][0]["config"]
    m.cli("archive", "--wait", m.path("f"))
    jobs = json.loads(m.cli("queue", "--all", "--json", m.mnt, env=elsewhere).stdout)
    assert [(j["kind"], j["state"], j["path"]) for j in jobs] == [("archive", "done", "/f")], jobs
    # --config given explicitly still wins
    r = m.cli("queue", m.mnt, "--config", str(tmp_path / "missing.toml"), check=False, env=elsewhere)
    assert r.returncode == 6 and "does not exist" in r.stderr, r.stderr


def test_commands_without_a_mount_use_the_only_running_one(make_mount, tmp_path):
    """queue, find, du, fsck and policy given no MOUNT, run outside any mount while one mount runs: that
    mount (they read the embedded default of the caller's $TIERFS_HOME: "directory ... does not exist");
    policy check|run MOUNT (a usage error before); with a second mount running: name one, both listed."""
    run = str(tmp_path / "run")   # our daemons' runtime files: other tests' mounts are not ours
    m = make_mount(config=BIG, env={runtime.RUNTIME_ENV: run})
    for name in ("f", "g"):
        with open(m.path(name), "wb") as f:
            f.write(b"x" * 100)
    m.cli("archive", "--wait", m.path("f"))
    env = dict(m.env, TIERFS_HOME=str(tmp_path / "empty"), TIERFS_CONFIG="", PYTHONPATH=ROOT)

    def cli(*args, cwd=str(tmp_path)):
        return subprocess.run([sys.executable, "-m", "tierfs.cli", *args], capture_output=True, text=True,
                              timeout=120, env=env, cwd=cwd)

    def ok(*args, cwd=str(tmp_path)):
        r = cli(*args, cwd=cwd)
        assert r.returncode == 0, (args, r.stderr)
        return r.stdout
    jobs = json.loads(ok("queue", "--all", "--json"))
    assert [(j["kind"], j["state"], j["path"]) for j in jobs] == [("archive", "done", "/f")], jobs
    assert sorted(x["path"] for x in json.loads(ok("find", "--json"))) == ["/f", "/g"]
    assert json.loads(ok("du", "--json"))["files"] == 2
    summary = json.loads(ok("fsck", "--json"))["summary"]
    assert summary["live"] and summary["inodes"] == 3 and summary["remaining"] == 0, summary   # root, f, g
    for args in (("policy", "check", "--json"), ("policy", "check", "--json", m.mnt)):
        out = json.loads(ok(*args))
        assert out["config"] == m.config_path and [r["name"] for r in out["rules"]] == ["big"], out
    actions = json.loads(ok("policy", "run", "--dry-run", "--json", m.mnt))["actions"]
    assert [a["path"] for a in actions] == ["/g"], actions
    # the embedded default has no [[policy]]: what these said before
    r = subprocess.run([sys.executable, "-m", "tierfs.cli", "policy", "check"], capture_output=True, text=True,
                       env=dict(env, **{runtime.RUNTIME_ENV: str(tmp_path / "none")}), cwd=str(tmp_path))
    assert "embedded default config: 0 rule(s)" in r.stdout, r.stdout
    # a second mount: which one is meant is no longer clear
    os.mkdir(tmp_path / "d2")
    second = make_mount(name="second", catalog_url=f"sqlite:///{tmp_path}/second.db", env={runtime.RUNTIME_ENV: run},
                        config=f'[tiers.d2]\nkind = "disk"\npath = "{tmp_path}/d2"\n')
    for args in (("queue",), ("find",), ("du",), ("policy", "check"), ("fsck",)):
        r = cli(*args)
        assert r.returncode == 2 and "2 tierfs mounts are running" in r.stderr and m.mnt in r.stderr \
            and second.mnt in r.stderr and "name one" in r.stderr, (args, r.stderr)
    assert ok("queue", cwd=second.mnt) == "no jobs\n"              # inside one: that one
    assert json.loads(ok("policy", "check", "--json", cwd=m.mnt))["rules"][0]["name"] == "big"


def _allow_other_mount(base: str, made: list, catalog_url: str, config_mode: int) -> Mount:
    m = Mount(base, catalog_url, config="allow_other = true\n" + POLICY)
    made.append(m)
    m.start()
    os.chmod(m.mnt, 0o755)
    os.chmod(m.config_path, config_mode)
    return m


def test_another_user_gets_an_answer_from_a_catalog_it_may_read(open_base, mongod):
    """A root mount on MongoDB (no per-user file permissions), allow_other: `nobody` sees its
    queue and its policies through the runtime file (it answered from an embedded default under
    nobody's own home, which does not exist)."""
    base, made = open_base
    m = _allow_other_mount(base, made, mongod.url(f"ro{os.getpid()}"), 0o644)
    r = as_user(["queue", m.mnt])
    assert r.returncode == 0 and r.stdout == "no jobs\n", (r.returncode, r.stdout, r.stderr)
    py, env = _python_for(USER)
    r = subprocess.run([*py, "-m", "tierfs.cli", "policy", "check", "--json"], user=USER,
                       group=pwd.getpwnam(USER).pw_gid, extra_groups=[], capture_output=True, text=True,
                       timeout=120, env=env, cwd=m.mnt)
    assert r.returncode == 0 and json.loads(r.stdout)["config"] == m.config_path, (r.stdout, r.stderr)


def test_another_user_is_told_why_not(open_base):
    """A root mount on SQLite: the catalog (0600) and, when 0600, the config are root's only;
    `nobody` gets one line and exit 5 for each, never the default lookup of its own home."""
    base, made = open_base
    m = _allow_other_mount(base, made, f"sqlite:///{base}/home/catalog.db", 0o644)
    for args in (["queue", m.mnt], ["status", m.mnt], ["find", m.mnt], ["fsck", m.mnt]):
        refused(as_user(args))
    os.chmod(m.config_path, 0o600)
    r = as_user(["queue", m.mnt])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 5 and len(lines) == 1 and m.config_path in lines[0] and "not readable" in lines[0], \
        (r.returncode, r.stderr)
    wait_for(lambda: m.cli("status", m.mnt).returncode == 0, what="root still answered")
