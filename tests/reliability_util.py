"""Helpers shared by the reliability tests (test_faults, test_fsck, test_outages,
test_fsx, test_hostile): daemon reaping, tier/catalog inspection, configs.

Daemons started by `tierfs mount` outlive the CLI process and are re-parented;
on machines whose PID 1 never reaps (containers, firecracker VMs) a killed or
stopped daemon stays a zombie, which `kill(pid, 0)` reports as alive. So this
module makes the test process a child subreaper and reaps every daemon it
starts (see `track`).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.conftest import ROOT, wait_for
from tierfs import mounts
from tierfs.catalog import open_catalog
from tierfs.catalog.base import FileQuery

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphaned descendants (the mount daemons) become our children, so we can reap them."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


become_subreaper()


def _reap_mongods() -> None:
    """mongod forks into the background, so it becomes our child too; tests/mongod.py
    waits for it with kill(pid, 0), which a zombie passes for 60 s: reap it at once."""
    me = str(os.getpid())
    while True:
        time.sleep(0.2)
        try:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
                if comm == "mongod" and rest[0] == "Z" and rest[1] == me:
                    try:
                        os.waitpid(int(pid), os.WNOHANG)
                    except ChildProcessError:
                        pass
        except Exception:  # noqa: BLE001 - best effort, never break the tests
            pass


threading.Thread(target=_reap_mongods, daemon=True, name="reap-mongod").start()


def track(pid: int) -> None:
    """Reap daemon `pid` when it exits (a thread blocked in waitpid)."""
    def wait():
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    threading.Thread(target=wait, daemon=True, name=f"reap-{pid}").start()


def gone(pid: int) -> bool:
    return not mounts.pid_alive(pid)


@pytest.fixture
def mk(make_mount):
    """make_mount whose daemons are reaped when they die."""
    def factory(*args, **kw):
        m = make_mount(*args, **kw)
        if m.pid:
            track(m.pid)
        return m
    return factory


def start(m) -> None:
    """(Re)start a Mount made by mk/make_mount and track its daemon."""
    m.start()
    track(m.pid)


def stop(m) -> None:
    """Unmount cleanly (Mount.stop retries a mount that is briefly busy)."""
    m.stop()


def wait_dead(m, timeout: float = 30.0) -> None:
    """The daemon is dead and its mount gone or stale. fusermount3's auto_unmount
    usually removes it at once, but can lose a race with the dying daemon
    (fuse3 3.14: its probe open() fails ECONNABORTED, not ENOTCONN) and leave a
    stale mount, which the next `tierfs mount` cleans up. Waiting for one of the
    two avoids remounting while auto_unmount is still working."""
    wait_for(lambda: gone(m.pid), timeout, what=f"daemon {m.pid} to die")
    try:
        wait_for(lambda: mounts.find_mount(m.mnt) is None, 3, what="auto_unmount")
    except AssertionError:
        assert mounts.is_stale(m.mnt), f"{m.mnt} is still mounted and answering after its daemon died"
        # tests/conftest.py's Mount() cannot be built on a stale mountpoint (makedirs: EEXIST), so
        # detach it here; test_faults.test_remount_over_stale_mount covers `tierfs mount` doing it.
        subprocess.run(["fusermount3", "-uz", m.mnt], capture_output=True, timeout=30)
        wait_for(lambda: mounts.find_mount(m.mnt) is None, 10, what="the stale mount to go")


# ---- data -------------------------------------------------------------------------------
def sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


# ---- configs -----------------------------------------------------------------------------
def tiers_config(home: str, *, disk2: bool = False, vault_opts: str = "", disk_path: str | None = None,
                 vault_path: str | None = None) -> str:
    """[tiers] tables: disk (default), optionally disk2, and vault; directories made."""
    paths = {"disk": disk_path or f"{home}/disk", "vault": vault_path or f"{home}/vault"}
    if disk2:
        paths["disk2"] = f"{home}/disk2"
    out = ""
    for name in ("disk", "disk2", "vault"):
        if name not in paths:
            continue
        os.makedirs(paths[name], exist_ok=True)
        kind = "vault" if name == "vault" else "disk"
        out += f'\n[tiers.{name}]\nkind = "{kind}"\npath = "{paths[name]}"\n'
        if name == "vault" and vault_opts:
            out += textwrap.dedent(vault_opts).strip() + "\n"
    return out


def home_of(tmp_path) -> str:
    return os.path.join(str(tmp_path), "home")


# ---- tiers and catalog -------------------------------------------------------------------------
def tier_keys(root: str) -> set[str]:
    """Object keys stored in a disk/vault tier directory."""
    out = set()
    objdir = os.path.join(root, "objects")
    if os.path.isdir(objdir):
        for sub in os.listdir(objdir):
            out.update(os.listdir(os.path.join(objdir, sub)))
    return out


class CatalogView:
    """Read the catalog of a mount directly (SQLite WAL / MongoDB allow this while mounted)."""

    def __init__(self, url: str):
        self.cat = open_catalog(url)

    def close(self) -> None:
        self.cat.close()

    def inodes(self):
        return list(self.cat.query(FileQuery(regular_only=False))) + self.cat.unlinked()

    def refs(self) -> dict[str, set[str]]:
        """tier -> keys referenced by inodes (online and archive copies)."""
        out: dict[str, set[str]] = {}
        for i in self.inodes():
            for t, k in ((i.tier, i.location), (i.archive_tier, i.archive_location)):
                if t and k:
                    out.setdefault(t, set()).add(k)
        return out

    def garbage(self):
        return self.cat.garbage(10**6)

    def jobs(self, ino: int | None = None):
        return self.cat.jobs(None, ino)

    def ino(self, rel: bytes | str) -> int:
        ino = 1
        if isinstance(rel, str):
            rel = os.fsencode(rel)
        for part in rel.split(b"/"):
            ino = self.cat.lookup(ino, part).ino
        return ino


def assert_no_orphans(url: str, tier_roots: dict[str, str], timeout: float = 30.0) -> None:
    """Once garbage is collected, every tier object is referenced by an inode and vice versa."""
    view = CatalogView(url)
    try:
        wait_for(lambda: not view.garbage(), timeout, what="garbage collection")
        refs = view.refs()
        for name, root in tier_roots.items():
            keys = tier_keys(root)
            mine = refs.get(name, set())
            if keys != mine:
                odd = keys ^ mine
                jobs = [j for j in view.cat.jobs(None, limit=10**6) if j.dst_key in odd]
                raise AssertionError(f"tier {name}: orphan objects {sorted(keys - mine)}, missing objects "
                                     f"{sorted(mine - keys)}; jobs that wrote them: {jobs}")
    finally:
        view.close()


def fsck(config_path: str, *args: str, env: dict | None = None) -> tuple[int, dict]:
    """Run `tierfs fsck --json -c CONFIG ARGS`; (exit code, parsed output)."""
    r = subprocess.run([sys.executable, "-m", "tierfs.cli", "fsck", "--json", "-c", config_path, *args],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    try:
        out = json.loads(r.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"fsck exited {r.returncode} without JSON:\n{r.stdout}\n{r.stderr}") from None
    return r.returncode, out


def errors_of(out: dict) -> list[dict]:
    return [f for f in out["findings"] if f["severity"] == "error"]


def wait_idle(url: str, timeout: float = 30.0) -> None:
    """No pending or running job and no garbage left."""
    view = CatalogView(url)
    try:
        wait_for(lambda: not view.cat.jobs(("pending", "running")) and not view.garbage(), timeout,
                 what="jobs and garbage collection to finish")
    finally:
        view.close()


def elapsed(t0: float) -> str:
    return f"{time.monotonic() - t0:.1f}s"
