"""Mounting through mount(8) and fstab: /sbin/mount.fuse.tierfs, written by
`tierfs install-helper` for this checkout, run by the real mount(8) and
umount(8) of util-linux (`mount -t fuse.tierfs`, `mount -T FSTAB`), then
used with cp and cat.

The helper lives in /sbin, the machine's: a helper this test did not write
is never touched (the test is skipped), and what it writes is removed (or
the previous tierfs helper put back) afterwards."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time

import pytest

from tierfs import mounts, runtime
from tests.conftest import wait_for

pytestmark = pytest.mark.mount

HELPER = "/sbin/mount.fuse.tierfs"


@pytest.fixture
def helper(make_mount):
    if os.getuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mount(8) runs helpers for root only")
    before = None
    if os.path.exists(HELPER):
        with open(HELPER, errors="replace") as f:
            before = f.read()
        if "written by `tierfs install-helper`" not in before:
            pytest.skip(f"{HELPER} exists and is not tierfs's: left alone")
    m = make_mount(start=False)
    r = m.cli("install-helper")
    assert r.stdout.startswith(f"installed {HELPER}"), r.stdout
    st = os.stat(HELPER)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755), "root's, not writable by others"
    yield m
    m.cleanup()
    if before is None:
        m.cli("install-helper", "--remove")
        assert not os.path.exists(HELPER)
    else:
        with open(HELPER, "w") as f:
            f.write(before)


def run(m, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """mount(8) / umount(8) as a user would run it, in the test's TIERFS_HOME."""
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=60, env=m.env, cwd="/")
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}\n{m.log()[-3000:]}")
    return r


def mounted_pid(m, r) -> int:
    assert mounts.wait_mounted(m.mnt, 10), r.stdout + r.stderr
    m.pid = int(r.stdout.split("(pid ")[1].split(",")[0])
    return m.pid


def options(m) -> set[str]:
    return set(mounts.find_mount(m.mnt).options.split(","))


def umount_cleanly(m, pid: int) -> None:
    """umount(8), then: the daemon flushed and exited, its runtime file is gone."""
    rec = runtime.find(m.mnt, 0)
    assert rec is not None and rec.pid == pid
    # The kernel sends FUSE_RELEASE after close(2) returns, asynchronously; with passthrough the backing
    # file stays referenced until the daemon answers it, so umount right after the last reader can find
    # the mount busy for a moment (seen once in a fresh Debian root): umount(8) is retried as a user would.
    deadline = time.monotonic() + 10
    while (r := run(m, "umount", m.mnt, check=False)).returncode != 0:
        assert "busy" in r.stderr and time.monotonic() < deadline, f"umount exited {r.returncode}: {r.stderr}"
        time.sleep(0.5)
    wait_for(lambda: not mounts.pid_alive(pid), 30, what="the daemon to exit after umount(8)")
    assert mounts.find_mount(m.mnt) is None
    assert not [d for d in runtime.dirs_of(0) if os.path.exists(os.path.join(d, runtime.file_name(m.mnt)))]
    assert "FUSE session ended; flushing" in m.log() and "tierfs unmounted from" in m.log()


def test_mount_t_maps_options_and_umount_is_clean(helper):
    m = helper
    m.write_config()
    r = run(m, "mount", "-t", "fuse.tierfs", m.config_path, m.mnt,
            "-o", "allow_other,log_level=debug,restore_mode=error,noexec,_netdev")
    pid = mounted_pid(m, r)
    assert {"allow_other", "noexec"} <= options(m)
    rec = runtime.find(m.mnt, 0)
    assert rec.config == m.config_path
    assert rec.overrides == {"allow_other": True, "log_level": "debug", "restore_mode": "error"}
    src = os.path.join(m.base, "src.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(300_000))
    m.sh(f"cp {src} data.bin && cmp {src} data.bin && cat data.bin > /dev/null")
    assert m.state("data.bin") == "online"
    m.cli("archive", "--wait", m.path("data.bin"))
    wait_for(lambda: " DEBUG tierfs.jobs: job " in m.log(), 10, what="a debug line (log_level=debug)")
    umount_cleanly(m, pid)

    # the next mount sees a clean previous session: no warning on the terminal or in the log
    r = run(m, "mount", "-t", "fuse.tierfs", m.config_path, m.mnt)
    mounted_pid(m, r)
    assert "did not unmount cleanly" not in r.stderr + m.log()
    with open(m.path("data.bin"), "rb") as f, open(src, "rb") as g:
        assert f.read() == g.read()


def test_fstab_line_with_generic_options(helper):
    m = helper
    m.write_config()
    fstab = os.path.join(m.base, "fstab")
    with open(fstab, "w") as f:
        f.write(f"# tierfs\n{m.config_path}  {m.mnt}  fuse.tierfs  "
                "defaults,_netdev,nofail,x-systemd.requires=network-online.target,allow_other,ro,"
                "restore_mode=error  0 0\n")
    r = run(m, "mount", "-T", fstab, m.mnt)
    pid = mounted_pid(m, r)
    assert {"allow_other", "ro"} <= options(m)
    assert runtime.find(m.mnt, 0).overrides == {"allow_other": True, "restore_mode": "error"}
    with pytest.raises(OSError) as e:
        open(m.path("new"), "w")
    assert e.value.errno == errno.EROFS                            # `ro` honoured by the kernel
    assert os.listdir(m.mnt) == []
    umount_cleanly(m, pid)


def test_source_tierfs_is_the_embedded_default(helper):
    m = helper
    if os.path.exists("/etc/tierfs/tierfs.toml"):
        pytest.skip("/etc/tierfs/tierfs.toml exists: SOURCE tierfs would mean it")
    r = run(m, "mount", "-t", "fuse.tierfs", "tierfs", m.mnt)
    pid = mounted_pid(m, r)
    assert runtime.find(m.mnt, 0).config is None
    m.sh("echo hello > f && cat f")
    assert runtime.find(m.mnt, 0).home == m.home and os.path.isdir(os.path.join(m.home, "disk"))
    umount_cleanly(m, pid)


@pytest.mark.parametrize("opts, named, status", [
    ("allow_other,frobnicate", "unknown mount option 'frobnicate'", 1),
    ("nosuch_key=3", "nosuch_key: unknown key", 32),
    ("restore_mode=sometimes", "restore_mode", 32),
])
def test_bad_option_refused_in_one_line(helper, opts, named, status):
    m = helper
    m.write_config()
    r = run(m, "mount", "-t", "fuse.tierfs", m.config_path, m.mnt, "-o", opts, check=False)
    assert r.returncode == status, r.stderr
    assert r.stderr.count("\n") == 1 and named in r.stderr and r.stderr.startswith("tierfs: ")
    assert mounts.find_mount(m.mnt) is None


def test_sloppy_ignores_unknown_options(helper):
    m = helper
    m.write_config()
    r = run(m, "mount", "-s", "-t", "fuse.tierfs", m.config_path, m.mnt, "-o", "frobnicate,restore_mode=error")
    pid = mounted_pid(m, r)
    assert runtime.find(m.mnt, 0).overrides == {"restore_mode": "error"}
    umount_cleanly(m, pid)


def test_install_helper_leaves_a_foreign_helper_alone(helper, tmp_path):
    m = helper
    other = tmp_path / "sbin"
    other.mkdir()
    (other / "mount.fuse.tierfs").write_text("#!/bin/sh\necho someone else's\n")
    r = m.cli("install-helper", "--prefix", str(other), check=False)
    assert r.returncode == 1 and "not written by tierfs install-helper: left alone" in r.stderr
    r = m.cli("install-helper", "--prefix", str(other), "--remove", check=False)
    assert r.returncode == 1
    assert (other / "mount.fuse.tierfs").read_text() == "#!/bin/sh\necho someone else's\n"


def test_helper_runs_this_installation(helper):
    with open(HELPER) as f:
        script = f.read()
    m = helper
    r = run(m, HELPER, "--bogus-flag", "x", "y", check=False)
    assert r.returncode == 1 and "unknown flag" in r.stderr
    # the absolute interpreter of this test run, so PATH and the caller's directory do not matter
    assert f" {sys.executable} -P -c " in script
    r = subprocess.run([HELPER, "-f", "tierfs", m.mnt], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "TIERFS_HOME": m.home}, cwd="/")
    assert r.returncode == 0 and not r.stdout and mounts.find_mount(m.mnt) is None   # -f: checked, not mounted
