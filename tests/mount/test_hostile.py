"""Hostile and odd input, permissions and security through a real mount and
the real CLI: every case gets the POSIX errno or one clear message (with the
documented exit code), and nothing is lost.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, wait_for
from tests.reliability_util import (errors_of, fsck, home_of, mk, sha, stop, tiers_config, track,  # noqa: F401
                                    wait_idle, write)
from tierfs import mounts

REQ = "user.tierfs.request"
#: entries created in one directory; the issue asks for 100k (TIERFS_BIG_DIR=100000: about 10 minutes here),
#: CI runs 5k (about 200 creates/s and 150 unlinks/s through FUSE on this 2-core machine)
BIG_DIR = int(os.environ.get("TIERFS_BIG_DIR", "5000"))


def _config(tmp_path, extra: str = "") -> str:
    return extra + tiers_config(home_of(tmp_path), disk2=True)


# ---- names -------------------------------------------------------------------------------------
ODD_NAMES = [b"with space", b"new\nline", b"tab\there", b"\xff\xfe invalid utf-8 \x80", b"-leading-dash",
             b"*?[glob]", b"'quote\"", b"\\backslash", "ünïcødé ✓".encode(), b"a" * 255, b" ", b"..."]


def test_odd_names_round_trip_through_moves(mk, tmp_path):
    m = mk(config=_config(tmp_path))
    base = os.fsencode(m.mnt)
    digests = {}
    for i, name in enumerate(ODD_NAMES):
        digests[name] = write(os.path.join(base, name), os.urandom(1000 + i))
    assert sorted(os.listdir(base)) == sorted(ODD_NAMES)
    # archive them all through the CLI (paths as bytes on the command line), restore by reading
    r = subprocess.run([sys.executable, "-m", "tierfs.cli", "archive", "--wait", "--timeout", "60",
                        *[os.path.join(base, n) for n in ODD_NAMES]], capture_output=True, cwd=ROOT, env=m.env)
    assert r.returncode == 0, r.stderr
    for name in ODD_NAMES:
        p = os.path.join(base, name)
        assert os.getxattr(p, "user.tierfs.state") == b"archived"
        assert sha(p) == digests[name]
        os.rename(p, p[:-1] + b"~" if len(name) == 255 else p + b".renamed")
    out = subprocess.run(["find", ".", "-type", "f", "-print0"], capture_output=True, cwd=base).stdout
    assert len(out.split(b"\0")) - 1 == len(ODD_NAMES)
    stop(m)
    code, js = fsck(m.config_path, "--verify-data")
    assert code == 0, js


def test_name_length_limits(mk, tmp_path):
    m = mk(config=_config(tmp_path))
    write(m.path("x" * 255), b"ok")
    assert os.path.exists(m.path("x" * 255))
    for op in (lambda p: open(p, "wb"), os.mkdir, lambda p: os.symlink("t", p),
               lambda p: os.rename(m.path("x" * 255), p), lambda p: os.link(m.path("x" * 255), p)):
        with pytest.raises(OSError) as ei:
            op(m.path("y" * 256))
        assert ei.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as ei:
        os.stat(m.path("z" * 256))
    assert ei.value.errno == errno.ENAMETOOLONG
    assert os.listdir(m.mnt) == ["x" * 255]


def test_deep_tree(mk, tmp_path):
    """A 400-level tree (PATH_MAX-sized paths): create, state, archive, rename, remove."""
    m = mk(config=_config(tmp_path))
    depth = 400
    rel = "/".join(["d"] * depth)
    os.makedirs(m.path(rel))
    digest = write(m.path(rel, "leaf"), b"deep bytes")
    inf = json.loads(os.getxattr(m.path(rel, "leaf"), "user.tierfs.info"))
    assert inf["size"] == 10
    m.cli("archive", "--wait", "--timeout", "60", m.path(rel, "leaf"))
    assert sha(m.path(rel, "leaf")) == digest
    with pytest.raises(OSError) as ei:   # a directory into its own subtree
        os.rename(m.path("d"), m.path(rel, "inside"))
    assert ei.value.errno == errno.EINVAL
    os.rename(m.path("d"), m.path("e"))
    assert sha(m.path("e", *["d"] * (depth - 1), "leaf")) == digest
    subprocess.run(["rm", "-rf", m.path("e")], check=True, timeout=120)
    assert os.listdir(m.mnt) == []
    wait_idle(m.catalog_url)
    stop(m)
    code, js = fsck(m.config_path)
    assert code == 0 and not errors_of(js), js


def test_many_entries_in_one_directory(mk, tmp_path):
    """BIG_DIR files in one directory: create, list (readdir pages), look up, remove.
    Prints the rates (the README's numbers come from TIERFS_BIG_DIR=100000)."""
    m = mk(config=_config(tmp_path))
    d = m.path("big")
    os.mkdir(d)
    t0 = time.monotonic()
    for i in range(BIG_DIR):
        os.close(os.open(os.path.join(d, f"f{i:06d}"), os.O_CREAT | os.O_WRONLY, 0o644))
    t_create = time.monotonic() - t0
    t0 = time.monotonic()
    names = os.listdir(d)
    t_list = time.monotonic() - t0
    assert len(names) == BIG_DIR and len(set(names)) == BIG_DIR
    t0 = time.monotonic()
    r = subprocess.run(["ls", "-l", d], capture_output=True, timeout=600)
    t_ls = time.monotonic() - t0
    assert r.returncode == 0 and r.stdout.count(b"\n") == BIG_DIR + 1
    assert os.stat(os.path.join(d, f"f{BIG_DIR // 2:06d}")).st_size == 0
    t0 = time.monotonic()
    subprocess.run(["rm", "-rf", d], check=True, timeout=1200)
    t_rm = time.monotonic() - t0
    assert os.listdir(m.mnt) == []
    print(f"\n{BIG_DIR} entries in one directory: create {BIG_DIR / t_create:.0f}/s, listdir {t_list:.2f}s, "
          f"ls -l {t_ls:.2f}s, rm -rf {t_rm:.1f}s")


def test_sparse_10gib(mk, tmp_path):
    m = mk(config=_config(tmp_path))
    p = m.path("sparse")
    with open(p, "wb") as f:
        f.truncate(10 << 30)
        f.seek((10 << 30) - 3)
        f.write(b"end")
    st = os.stat(p)
    assert st.st_size == 10 << 30
    with open(p, "rb") as f:
        f.seek(5 << 30)
        assert f.read(4096) == b"\0" * 4096
        f.seek((10 << 30) - 3)
        assert f.read() == b"end"
    used = sum(os.stat(os.path.join(r, f)).st_blocks for r, _, fs in os.walk(home_of(tmp_path) + "/disk")
               for f in fs) * 512
    assert used < 10 << 20, f"the tier stores the sparse file densely ({used} bytes)"
    os.truncate(p, 100)
    assert os.stat(p).st_size == 100


# ---- xattrs ------------------------------------------------------------------------------------------
def test_xattr_limits(mk, tmp_path):
    m = mk(config=_config(tmp_path))
    p = m.path("f")
    write(p, b"x")
    big = os.urandom(65536)
    os.setxattr(p, "user.big", big)
    assert os.getxattr(p, "user.big") == big
    with pytest.raises(OSError) as ei:
        os.setxattr(p, "user.bigger", big + b"!")
    assert ei.value.errno == errno.E2BIG
    name = "user." + "n" * 250
    os.setxattr(p, name, b"v")
    assert os.getxattr(p, name) == b"v"
    with pytest.raises(OSError) as ei:
        os.setxattr(p, "user." + "n" * 251, b"v")
    assert ei.value.errno == errno.ERANGE
    for ns in ("trusted.x", "security.x"):
        with pytest.raises(OSError) as ei:
            os.setxattr(p, ns, b"v")
        assert ei.value.errno in (errno.EOPNOTSUPP, errno.EPERM), ns
    with pytest.raises(OSError) as ei:
        os.setxattr(p, "user.tierfs.state", b"online")
    assert ei.value.errno == errno.EPERM
    for bad in (b"", b"explode", b"archive to=nowhere", b"archive color=red", b"\xff\xfe", b"migrate"):
        with pytest.raises(OSError) as ei:
            os.setxattr(p, REQ, bad)
        assert ei.value.errno == errno.EINVAL, bad
    assert sorted(os.listxattr(p)) == sorted(["user.big", name])
    assert m.state("f") == "online"


# ---- configuration ----------------------------------------------------------------------------------
BAD_CONFIGS = [
    ("block_timeout = \n", "invalid TOML"),
    ("[tiers.disk\nkind = 'disk'\n", "invalid TOML"),
    ("block_timeout = -5\n", "block_timeout"),
    ("block_timeout = \"10 lightyears\"\n", "block_timeout"),
    ("job_retry_delay = \"99999y\"\n", "job_retry_delay"),
    ("workers = 0\n", "workers"),
    ("workers = 100000000\n", "workers"),
    ("restore_mode = \"sometimes\"\n", "restore_mode"),
    ("allow_other = \"yes\"\n", "allow_other"),
    ("bogus_key = 1\n", "bogus_key"),
    ("default_tier = \"vault\"\n", "default_tier"),
    ("[tiers.disk]\nkind = \"disk\"\n", "tiers.disk.path"),
    ("[tiers.disk]\nkind = \"floppy\"\npath = \"/tmp\"\n", "floppy"),
    ("[tiers.disk]\nkind = \"disk\"\npath = \"/nonexistent/dir\"\n", "tiers.disk.path"),
    ("[tiers.disk]\nkind = \"disk\"\npath = \"/tmp\"\nspeed = 9\n", "tiers.disk.speed"),
    # two tiers in one place: each would list the other's objects (fsck: orphans)
    ("[tiers.disk]\nkind = \"disk\"\npath = \"/tmp\"\n[tiers.vault]\nkind = \"vault\"\npath = \"/tmp/\"\n",
     "tiers.disk and tiers.vault keep objects in the same place"),
    ("[tiers.disk]\nkind = \"disk\"\npath = \"/tmp\"\n"
     "[tiers.s3]\nkind = \"s3\"\nbucket = \"b\"\nendpoint_url = \"http://127.0.0.1:9\"\n"
     "[tiers.glacier]\nkind = \"s3-archive\"\nbucket = \"b\"\nprefix = \"arch\"\nendpoint_url = \"http://127.0.0.1:9\"\n",
     "tiers.s3 and tiers.glacier keep objects in the same place"),
    ("[[policy]]\nname = \"p\"\naction = \"explode\"\n", "action"),
    ("[[policy]]\nname = \"p\"\naction = \"archive\"\ninactive_for = \"-3d\"\n", "inactive_for"),
    ("[[policy]]\nname = \"p\"\naction = \"archive\"\nmin_size = \"-1MB\"\n", "min_size"),
    ("[[policy]]\nname = \"p\"\naction = \"archive\"\nmax_size = \"1000000PB\"\n", "max_size"),
    ("[[policy]]\naction = \"archive\"\n", "name"),
    ("[[policy]]\nname = \"p\"\naction = \"delete\"\ninactive_for = \"1d\"\n", "confirm_delete"),
]


@pytest.mark.parametrize("body,key", BAD_CONFIGS, ids=[k + str(i) for i, (_, k) in enumerate(BAD_CONFIGS)])
def test_bad_config_exit_6_one_line(body, key, mk, tmp_path):
    m = mk(start=False)
    cfg = os.path.join(str(tmp_path), "bad.toml")
    with open(cfg, "w") as f:
        f.write(f'catalog = "sqlite:///{tmp_path}/c.db"\nstate_dir = "{tmp_path}/state"\n' + body)
    r = m.cli("mount", "-c", cfg, m.mnt, check=False, timeout=60)
    assert r.returncode == 6, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0] and lines[0].startswith("tierfs: "), r.stderr
    assert mounts.find_mount(m.mnt) is None


# ---- permissions -----------------------------------------------------------------------------------
def _request_as(m, user: str, name: str, verb: str) -> subprocess.CompletedProcess:
    """What `tierfs VERB NAME` does (setxattr user.tierfs.request), as `user`, with
    setfattr: the Python of this machine lives under /root, which `nobody` cannot
    execute; the test's directories are private to root, so it runs inside the mount."""
    return m.sh(f"setfattr -n {REQ} -v '{verb}' {name}", check=False, user=user)


def test_other_user_requests(mk, tmp_path):
    """With allow_other, `nobody`: may not archive, release or migrate root's
    files (EACCES; tierfs logs who was refused), even writable ones; may restore
    what it can read; may not move bytes onto a tier reserved for root, not even
    its own file's; may archive its own files."""
    home = home_of(tmp_path)
    cfg = "allow_other = true\n" + tiers_config(home, disk2=True).replace(
        '[tiers.disk2]\nkind = "disk"', '[tiers.disk2]\nkind = "disk"\nallow_users = ["root"]')
    m = mk(config=cfg)
    os.chmod(m.mnt, 0o1777)
    for name, mode in (("ro", 0o644), ("rw", 0o666), ("arch", 0o644)):
        write(m.path(name), b"root's bytes")
        os.chmod(m.path(name), mode)
    m.cli("archive", "--wait", "--timeout", "60", m.path("arch"))
    for name, verb in (("ro", "archive"), ("rw", "archive"), ("rw", "release"), ("rw", "migrate to=disk"),
                       ("rw", "archive keep_online")):
        r = _request_as(m, "nobody", name, verb)
        assert r.returncode != 0 and "Permission denied" in r.stderr, (name, verb, r.stderr)
    wait_for(lambda: "by uid 65534 refused" in m.log(), 5, what="the log line naming the refused uid")
    # A reader who may not write cannot even send a restore request (the kernel wants write access for
    # user.* xattrs) - but opening the file restores it:
    r = _request_as(m, "nobody", "arch", "restore")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert m.sh("cat arch", user="nobody").stdout == "root's bytes"
    assert m.state("arch") == "dual"
    assert m.state("ro") == "online" and m.state("rw") == "online"
    m.sh("head -c 3000 /dev/urandom > mine", user="nobody")
    r = _request_as(m, "nobody", "mine", "migrate to=disk2")
    assert r.returncode != 0 and "Permission denied" in r.stderr, r.stderr  # disk2 admits root only
    assert "may not use tier disk2" in m.log()
    assert _request_as(m, "nobody", "mine", "archive").returncode == 0      # its own file
    wait_for(lambda: m.state("mine") == "archived", 30, what="nobody's own archive")


def test_pins_need_the_owner(mk, tmp_path):
    """Regression (issue 14): anyone with write permission could pin someone else's file or tree,
    exempting it from every policy (compliance deletion too). Setting or clearing a pin, like a
    placement or a policy override, needs the owner, root or the archivers group: EPERM otherwise."""
    m = mk(config="allow_other = true\n" + tiers_config(home_of(tmp_path)))
    os.chmod(m.mnt, 0o1777)
    os.mkdir(m.path("shared"))
    os.chmod(m.path("shared"), 0o777)
    write(m.path("shared/f"), b"root's bytes")
    os.chmod(m.path("shared/f"), 0o666)
    for target in ("shared", "shared/f"):
        r = m.sh(f"setfattr -n user.tierfs.pin -v 1 {target}", check=False, user="nobody")
        assert r.returncode != 0 and "Operation not permitted" in r.stderr, (target, r.stderr)
    with pytest.raises(OSError):
        os.getxattr(m.path("shared/f"), "user.tierfs.pin")
    os.setxattr(m.path("shared/f"), "user.tierfs.pin", b"1")            # the owner (root) may
    r = m.sh("setfattr -x user.tierfs.pin shared/f", check=False, user="nobody")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr
    assert os.getxattr(m.path("shared/f"), "user.tierfs.pin") == b"1"
    os.setxattr(m.path("shared"), "user.tierfs.placement", b"disk")
    r = m.sh("setfattr -x user.tierfs.placement shared", check=False, user="nobody")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr   # nor a placement
    m.sh("echo mine > mine && setfattr -n user.tierfs.pin -v 1 mine", user="nobody")  # its own file: yes
    assert os.getxattr(m.path("mine"), "user.tierfs.pin") == b"1"
    assert "may not set the pin" in m.log()


def test_restore_refused_when_unarchive_disallowed(mk, tmp_path):
    cfg = _config(tmp_path)
    m = mk(config=cfg)
    digest = write(m.path("f"), b"retained")
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    stop(m)
    m2 = mk(config="allow_unarchive = false\n" + cfg)
    r = m2.cli("restore", m2.path("f"), check=False)
    assert r.returncode == 5 and "Permission denied" in r.stderr, r.stderr
    with pytest.raises(OSError) as ei:
        open(m2.path("f"), "rb")
    assert ei.value.errno == errno.EACCES
    assert "allow_unarchive = false" in m2.log()
    assert m2.state("f") == "archived"
    stop(m2)
    m3 = mk(config=cfg)
    assert sha(m3.path("f")) == __import__("hashlib").sha256(b"retained").hexdigest() == digest


@pytest.mark.parametrize("args", [("state", "{p}"), ("archive", "{p}"), ("restore", "{p}"), ("release", "{p}"),
                                  ("migrate", "--to", "disk", "{p}"), ("archive", "{p}/missing")])
def test_commands_outside_a_mount_exit_3(args, mk, tmp_path):
    m = mk(start=False)
    outside = os.path.join(str(tmp_path), "plain")
    write(outside, b"x")
    r = m.cli(*[a.format(p=outside) for a in args], check=False)
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "not inside a tierfs mount" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---- security ------------------------------------------------------------------------------------------
def _s3_config(tmp_path) -> str:
    return _config(tmp_path) + ('\n[tiers.cloud]\nkind = "s3"\nbucket = "b"\nendpoint_url = "http://127.0.0.1:9"\n'
                                'access_key_id = "AKIAEXAMPLE"\nsecret_access_key = "TOPSECRET-do-not-log"\n')


@pytest.mark.parametrize("mode,warns", [(0o644, True), (0o600, False)])
def test_credentials_readable_by_others_warns(mode, warns, mk, tmp_path):
    m = mk(start=False)
    cfg = os.path.join(str(tmp_path), "creds.toml")
    with open(cfg, "w") as f:
        f.write(f'catalog = "sqlite:///{tmp_path}/c.db"\n' + _s3_config(tmp_path))
    os.chmod(cfg, mode)
    from tierfs.catalog import open_catalog
    cat = open_catalog(f"sqlite:///{tmp_path}/c.db")   # `tierfs queue` needs a catalog that was mounted once
    cat.init()
    cat.close()
    r = m.cli("queue", "-c", cfg, check=False)
    assert r.returncode == 0, r.stderr
    assert ("readable by other users" in r.stderr) == warns, r.stderr
    assert "TOPSECRET" not in r.stderr + r.stdout


def test_catalog_password_never_printed(mk, tmp_path):
    m = mk(start=False)
    cfg = os.path.join(str(tmp_path), "pw.toml")
    with open(cfg, "w") as f:
        f.write('catalog = "mongodb://alice:TOPSECRET@127.0.0.1:9/db?serverSelectionTimeoutMS=300&timeoutMS=500"\n'
                + _config(tmp_path))
    os.chmod(cfg, 0o600)
    t0 = time.monotonic()
    r = m.cli("queue", "-c", cfg, check=False, timeout=60)
    assert r.returncode == 7, (r.returncode, r.stderr)
    assert time.monotonic() - t0 < 30
    assert "TOPSECRET" not in r.stderr + r.stdout and "alice" in r.stderr, r.stderr


@pytest.mark.parametrize("allow_other", [False, True])
def test_mount_options(allow_other, mk, tmp_path):
    m = mk(config=f"allow_other = {str(allow_other).lower()}\n" + _config(tmp_path))
    opts = set(mounts.find_mount(m.mnt).options.split(","))
    assert "default_permissions" in opts
    assert ("allow_other" in opts) == allow_other
    if not allow_other:
        r = m.sh(f"ls {m.mnt}", check=False, user="nobody")
        assert r.returncode != 0 and "Permission denied" in r.stderr
    assert stat.S_IMODE(os.stat(m.mnt).st_mode) & 0o777


# ---- -o options stay off the daemon's command line -------------------------------------------
def test_mount_options_stay_off_the_daemon_command_line(mk, tmp_path):
    """`tierfs mount -o catalog=...` copied the value onto the daemon's argv, which every local user
    reads in /proc/PID/cmdline (a catalog URL may carry a password); status and fsck still find it."""
    other = f"sqlite:///{tmp_path}/other.db"
    m = mk(config=_config(tmp_path), options=(f"catalog={other}", "restore_mode=error"))
    with open(f"/proc/{m.pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert b"-o" not in argv and not any(b"other.db" in a or b"restore_mode" in a for a in argv), argv
    assert stat.S_IMODE(os.stat(f"/proc/{m.pid}/environ").st_mode) == 0o400
    r = subprocess.run(["cat", f"/proc/{m.pid}/environ"], capture_output=True, user="nobody")
    assert r.returncode != 0 and b"other.db" not in r.stdout
    # the options are in force, and the admin commands find them
    assert mounts.find_mount(m.mnt) is not None and os.path.exists(f"{tmp_path}/other.db")
    s = json.loads(m.cli("status", "--json", m.mnt).stdout)
    assert s[0]["catalog"] == other
    with open(m.path("f"), "wb") as f:
        f.write(b"x")
    assert m.cli("find", m.mnt).stdout == "/f\n"
    r = m.cli("fsck", "--json", m.mnt, check=False)
    assert r.returncode == 0 and json.loads(r.stdout)["summary"]["inodes"] == 2, r.stdout + r.stderr


def test_credentials_in_mount_options_are_warned_about_never_shown(mk, tmp_path):
    m = mk(start=False, config=_config(tmp_path))
    m.write_config()
    url = "mongodb://alice:TOPSECRET@127.0.0.1:9/db?serverSelectionTimeoutMS=300&timeoutMS=500"
    r = m.cli("mount", m.mnt, "-c", m.config_path, "-o", f"catalog={url}", check=False, timeout=60)
    assert r.returncode == 7, (r.returncode, r.stderr)   # unreachable: but the warning came first
    warning = [line for line in r.stderr.splitlines() if "warning" in line]
    assert warning == ["tierfs: warning: -o catalog carries a password or secret: it stays out of the daemon's "
                       "command line, but shell history and `ps` of this command show it; keep secrets in the "
                       "config file (mode 0600)"], r.stderr
    assert "TOPSECRET" not in r.stderr + r.stdout + m.log()
    r = m.cli("mount", m.mnt, "-c", m.config_path, "-o", "restore_mode=error", check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    m.pid = int(r.stdout.split("(pid ")[1].split(",")[0])
    track(m.pid)
    assert "warning" not in r.stderr, r.stderr


def test_which_settings_are_secrets():
    """One rule (tierfs/redact.py) for the config file's warning, -o's warning and log lines: key
    names and URL passwords count, a path that happens to contain a secret-sounding word does not."""
    from tierfs.redact import redact_url, secret_keys
    raw = {"catalog": "mongodb://u:pw@h/db", "state_dir": "/srv/token-store/state",
           "tiers": {"s3": {"secret_access_key": "x", "session_token": "", "bucket": "b"}}}
    assert secret_keys(raw) == ["catalog", "tiers.s3.secret_access_key"]
    assert redact_url("mongodb://u:pw@h/db") == "mongodb://u:***@h/db"
