"""What tierfs keeps about every user's files stays private, around the mount:

- the catalog (`catalog.db`, `-wal`, `-shm`, `.lock`) is 0600, the state and
  log directories and the embedded default's TIERFS_HOME 0700; a catalog
  left more open by an older tierfs is tightened at mount;
- an admin command run by a user who may not read the catalog answers with
  one line (exit 5), not a traceback or SQLite's "unable to open database
  file" (run as `nobody`);
- log files are 0600, and a file name cannot forge a log line or put an
  escape sequence into the log.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from tierfs import mounts
from tierfs.logs import OneLineFormatter, escape
from tests.conftest import ROOT, Mount

pytestmark = pytest.mark.mount

USER = "nobody"


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---- logs ------------------------------------------------------------------------------------
def test_names_cannot_forge_log_lines_and_logs_are_private(mount):
    m = mount
    names = ["x\nERROR forged", "\x1b[31mred", "bidi\u202etxt.exe"]
    for n in names:
        with open(m.path(n), "w") as f:
            f.write("data")
    with open(os.path.join(m.mnt.encode(), b"raw\xffname"), "w") as f:
        f.write("data")
    m.cli("archive", "--wait", *[m.path(n) for n in names], os.fsdecode(os.path.join(m.mnt.encode(), b"raw\xffname")))
    logdir = os.path.join(m.home, "state", "logs")
    (log_name,) = os.listdir(logdir)
    with open(os.path.join(logdir, log_name), "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")                          # always valid UTF-8
    lines = text.splitlines()
    assert not [ln for ln in lines if ln.startswith("ERROR forged")], text
    assert b"\x1b" not in raw and "\u202e" not in text
    assert any("archived /x\\nERROR forged: disk -> vault" in ln for ln in lines), text
    assert any("archived /\\x1b[31mred: disk -> vault" in ln for ln in lines), text
    assert mode(os.path.join(logdir, log_name)) == 0o600
    assert mode(logdir) == 0o700 and mode(os.path.join(m.home, "state")) == 0o700


def test_one_record_is_one_line_also_with_a_traceback():
    fmt = OneLineFormatter("%(levelname)s %(name)s: %(message)s")
    try:
        raise ValueError("bad name 'a\nCRITICAL forged\x1b[2J'")
    except ValueError:
        rec = logging.LogRecord("tierfs", logging.ERROR, __file__, 1, "open %s failed", ("a\nINFO forged",),
                                sys.exc_info())
    lines = fmt.format(rec).splitlines()
    assert lines[0] == "ERROR tierfs: open a\\nINFO forged failed"
    assert all(ln.startswith("    ") for ln in lines[1:]) and len(lines) > 2
    assert "\x1b" not in "".join(lines) and "CRITICAL forged\\x1b[2J'" in lines[-1]
    assert escape(b"a\xffb\x00") == "a\\xffb\\x00" and escape("plain é ü") == "plain é ü"


# ---- the catalog ------------------------------------------------------------------------------
def _python_for(user: str) -> list[str]:
    """An interpreter `user` may run tierfs with: this one, or the system's
    same-version Python with this checkout and its virtualenv on the path
    (here the virtualenv's interpreter lives under /root, closed to others)."""
    site = [p for p in sys.path if p.endswith("site-packages") and p.startswith(ROOT)]
    env = {"PYTHONPATH": os.pathsep.join([ROOT, *site]), "PATH": "/usr/bin:/bin"}
    for py in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        try:
            r = subprocess.run([py, "-c", "import tierfs.cli"], user=user, capture_output=True, env=env, cwd="/")
        except PermissionError:
            continue
        if r.returncode == 0:
            return [py], env
    pytest.skip(f"no Python that {user} may run tierfs with")


def as_user(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    py, base_env = _python_for(USER)
    return subprocess.run([*py, "-m", "tierfs.cli", *args], user=USER, group=pwd.getpwnam(USER).pw_gid,
                          extra_groups=[], capture_output=True, text=True, timeout=120,
                          env=dict(base_env, **(env or {})), cwd="/")


def refused(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 5 and len(lines) == 1, (r.returncode, r.stdout, r.stderr)
    assert "readable only by its owner" in lines[0] and "Traceback" not in r.stderr, lines
    return lines[0]


@pytest.fixture
def open_base():
    """A directory other users may traverse (pytest's tmp_path is private to root)."""
    base = tempfile.mkdtemp(prefix="tierfs-private-", dir="/tmp")
    os.chmod(base, 0o755)
    made: list[Mount] = []
    yield base, made
    for m in made:
        m.cleanup()
    shutil.rmtree(base, ignore_errors=True)


POLICY = '\n[[policy]]\nname = "p"\naction = "archive"\nto = "vault"\ninactive_for = "1d"\n'


def test_catalog_is_private_and_other_users_get_one_line(open_base):
    base, made = open_base
    url = f"sqlite:///{base}/home/catalog.db"
    m = Mount(base, url, config="allow_other = true\n" + POLICY)
    made.append(m)
    m.start()
    os.chmod(m.mnt, 0o755)
    with open(m.path("secret-name"), "w") as f:
        f.write("x")
    db = f"{base}/home/catalog.db"
    for p in (db, db + "-wal", db + "-shm", db + ".lock"):
        assert mode(p) == 0o600, p
    assert mode(f"{base}/home/state") == 0o700
    os.chmod(m.config_path, 0o644)                     # the config is readable; the catalog is not
    for args in (["status", "-c", m.config_path], ["find", m.mnt, "-c", m.config_path],
                 ["du", m.mnt, "-c", m.config_path], ["queue", "-c", m.config_path],
                 ["policy", "run", "--dry-run", "-c", m.config_path], ["fsck", "-c", m.config_path]):
        line = refused(as_user(args))
        assert db in line and "(root)" in line, line

    # A catalog an older tierfs left 0644 is made private again at mount.
    m.stop()
    for p in (db, db + "-wal", db + "-shm", db + ".lock", f"{base}/home/state", f"{base}/home/state/logs"):
        if os.path.exists(p):
            os.chmod(p, 0o755 if os.path.isdir(p) else 0o644)
    m.start()
    for p in (db, db + "-wal", db + "-shm", db + ".lock"):
        assert mode(p) == 0o600, p
    assert mode(f"{base}/home/state") == 0o700 and mode(f"{base}/home/state/logs") == 0o700
    assert "secret-name" in m.cli("find", m.mnt).stdout   # the owner (root) still reads it


def test_embedded_default_home_is_private(open_base):
    base, made = open_base
    home = f"{base}/tierfs-home"
    m = Mount(base, "")
    m.env["TIERFS_HOME"] = home
    made.append(m)
    r = m.cli("mount", m.mnt, "-o", "allow_other=true")      # no config file: the embedded default
    assert mounts.wait_mounted(m.mnt, 10)
    m.pid = int(r.stdout.split("(pid ")[1].split(",")[0])
    os.chmod(m.mnt, 0o755)
    with open(m.path("f"), "w") as f:
        f.write("x")
    for d in (home, f"{home}/state", f"{home}/state/logs", f"{home}/disk", f"{home}/vault"):
        assert mode(d) == 0o700, d
    assert mode(f"{home}/catalog.db") == 0o600
    # `TIERFS_HOME=... tierfs find M` as another user: one line, exit 5 (the repro)
    refused(as_user(["find", m.mnt], env={"TIERFS_HOME": home}))
    refused(as_user(["status", m.mnt], env={"TIERFS_HOME": home}))
