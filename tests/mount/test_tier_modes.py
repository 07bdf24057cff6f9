"""Tier objects are readable by their owner only (issue 14, defect 1).

Objects written by `put` (archive, restore, migrate) used to get the process
umask's mode (0644 under umask 022, 0666 under umask 0): any local user read
archived and restored bytes straight from the tier directories. Now every
object tierfs writes on a local tier is 0600 and every directory it creates
for them 0700, whatever the umask; the roots an administrator configured
and files imported in place keep their modes; `tierfs fsck` reports looser
modes and `--repair` tightens them.

The mounts run as root under umask 0 (the worst case); a second, unprivileged
user (`nobody`) then tries to read every file under the tier directories.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import textwrap

import pytest

from tests.reliability_util import errors_of, fsck, stop, wait_idle

pytestmark = pytest.mark.mount

OTHER = "nobody"


@pytest.fixture
def shared_dir():
    """A directory every user may traverse (0755, like /srv), for tier roots an
    administrator made: pytest's own tmp directories are 0700, behind which any
    mode would look private."""
    d = tempfile.mkdtemp(prefix="tierfs-modes-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_other(*argv: str) -> subprocess.CompletedProcess:
    pw = pwd.getpwnam(OTHER)
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, cwd="/",
                          user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])


def files_under(root: str) -> list[str]:
    return sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs)


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def mount_under_umask(make_mount, config: str, umask: int = 0):
    old = os.umask(umask)   # the daemon inherits it from `tierfs mount`
    try:
        return make_mount(config=config)
    finally:
        os.umask(old)


def test_objects_are_private_whatever_the_umask(make_mount, shared_dir, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second user")
    roots = {n: os.path.join(shared_dir, n) for n in ("disk", "disk2", "vault", "volume", "tape")}
    for r in roots.values():
        os.mkdir(r)
        os.chmod(r, 0o755)   # configured roots: left as the administrator made them
    src = os.path.join(roots["volume"], "imported")
    os.mkdir(src)
    with open(os.path.join(src, "theirs.txt"), "wb") as f:
        f.write(b"the user's own file\n")
    os.chmod(os.path.join(src, "theirs.txt"), 0o644)
    cfg = textwrap.dedent(f"""
        [tiers.disk]
        kind = "disk"
        path = "{roots['disk']}"

        [tiers.disk2]
        kind = "disk"
        path = "{roots['disk2']}"

        [tiers.volume]
        kind = "disk"
        path = "{roots['volume']}"

        [tiers.vault]
        kind = "vault"
        path = "{roots['vault']}"

        [tiers.tape]
        kind = "command"
        archive_command = "cp {{path}} {roots['tape']}/{{key}}"
        restore_command = "cp {roots['tape']}/{{key}} {{path}}"
        delete_command = "rm -f {roots['tape']}/{{key}}"
    """)
    m = mount_under_umask(make_mount, cfg)
    secret = b"secret\n"
    with open(m.path("s"), "wb") as f:
        f.write(secret)
    os.chmod(m.path("s"), 0o600)
    with open(m.path("t"), "wb") as f:   # created through the mount: an empty object, then in-place writes
        f.write(b"another secret\n")
    m.cli("archive", "--wait", "--timeout", "60", m.path("s"))
    m.cli("restore", "--wait", "--timeout", "60", m.path("s"))
    m.cli("migrate", "--wait", "--to", "disk2", "--timeout", "60", m.path("s"))
    m.cli("archive", "--wait", "--keep-online", "--to", "tape", "--timeout", "60", m.path("t"))
    m.cli("release", m.path("t"))
    assert open(m.path("t"), "rb").read() == b"another secret\n"   # restored from tape through its staging
    with open(m.path("u"), "wb") as f:
        f.write(b"a third secret\n")
    m.cli("migrate", "--wait", "--to", "volume", "--timeout", "60", m.path("u"))   # an object on the in-place tier
    m.cli("import", "--in-place", src, m.path("imported"))
    m.cli("archive", "--wait", "--keep-online", "--timeout", "60", m.path("imported", "theirs.txt"))
    m.cli("migrate", "--wait", "--to", "disk", "--timeout", "60", m.path("imported", "theirs.txt"))
    wait_idle(m.catalog_url)

    staging = os.path.join(m.home, "state", "staging")
    tape_staging = os.path.join(m.home, "state", "command-tape")
    objects = [p for t in ("disk", "disk2", "vault") for p in files_under(os.path.join(roots[t], "objects"))]
    objects += files_under(os.path.join(roots["volume"], "objects"))
    objects += files_under(tape_staging)
    assert len(objects) >= 7, objects   # s (disk2, vault), t (disk, tape manifest), u (volume), theirs.txt (vault, disk)
    assert files_under(os.path.join(roots["volume"], "objects"))
    # the second user can read none of them (nor list the directories holding them)
    r = as_other("sh", "-c", 'for f; do cat -- "$f" >/dev/null 2>&1 && echo "READ $f"; done; true', "sh",
                 *objects)
    assert r.stdout == "", f"{OTHER} read tier objects:\n{r.stdout}"
    for p in objects:
        r = as_other("cat", "--", p)
        assert r.returncode != 0 and "Permission denied" in r.stderr, (p, r.stdout, r.stderr)
    for t in ("disk", "disk2", "vault", "volume"):
        r = as_other("ls", os.path.join(roots[t], "objects"))
        assert r.returncode != 0 and "Permission denied" in r.stderr, (t, r.stderr)

    # and the modes themselves: 0600 objects, 0700 directories, whatever the umask (0 here)
    for p in objects:
        assert mode(p) == 0o600, (p, oct(mode(p)))
    dirs = [staging, tape_staging]
    for t in ("disk", "disk2", "vault", "volume"):
        dirs += [os.path.join(roots[t], "objects"), os.path.join(roots[t], "tmp")]
        dirs += [dp for dp, _, _ in os.walk(os.path.join(roots[t], "objects"))]
    dirs += [dp for d in (staging, tape_staging) for dp, _, _ in os.walk(d)]
    for d in dirs:
        assert mode(d) == 0o700, (d, oct(mode(d)))
    # what tierfs did not create keeps its mode: the configured roots, the user's imported file
    for r_ in roots.values():
        assert mode(r_) == 0o755, r_
    assert mode(os.path.join(src, "theirs.txt")) == 0o644
    assert open(m.path("s"), "rb").read() == secret

    stop(m)
    code, out = fsck(m.config_path)
    assert code == 0 and not [f for f in out["findings"] if f["check"] == "modes"], out

    # fsck reports a loosened object and directory (one finding for the tier), --repair tightens them
    loose_obj = files_under(os.path.join(roots["disk2"], "objects"))[0]
    loose = [loose_obj, os.path.dirname(loose_obj), os.path.join(roots["disk2"], "objects")]
    for p, m_ in zip(loose, (0o644, 0o755, 0o755)):
        os.chmod(p, m_)
    code, out = fsck(m.config_path)
    assert code == 1
    [f] = [f for f in errors_of(out) if f["check"] == "modes"]
    assert f["path"] == "tier disk2" and f["problem"].startswith("3 file(s) or directories other users may open")
    assert all(p in f["problem"] for p in loose), f
    assert as_other("cat", loose_obj).stdout == secret.decode()   # what the finding is about
    code, out = fsck(m.config_path, "--repair")
    assert code == 0, out
    [f] = [f for f in out["findings"] if f["check"] == "modes"]
    assert f["repaired"] and f["action"] == "3 made 0600 (files) / 0700 (directories)", f
    assert [mode(p) for p in loose] == [0o600, 0o700, 0o700]
    assert as_other("cat", loose_obj).returncode != 0
    code, out = fsck(m.config_path)
    assert code == 0 and not errors_of(out), out


def test_private_entries_under_a_umask_that_strips_the_owner(tmp_path):
    """A umask that takes the owner's own bits (0277) must not leave objects tierfs
    cannot write again, nor directories it cannot enter."""
    from tierfs import private
    old = os.umask(0o277)
    try:
        private._FIX_OWNER_BITS = bool(private._umask() & private.DIR_MODE)
        private.makedirs(str(tmp_path / "a" / "b"))
        fd = private.create(str(tmp_path / "a" / "b" / "obj"))
        os.close(fd)
    finally:
        os.umask(old)
        private._FIX_OWNER_BITS = bool(private._umask() & private.DIR_MODE)
    assert mode(str(tmp_path / "a")) == 0o700 and mode(str(tmp_path / "a" / "b")) == 0o700
    assert mode(str(tmp_path / "a" / "b" / "obj")) == 0o600
