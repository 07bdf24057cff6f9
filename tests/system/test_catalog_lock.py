"""One mount per SQLite catalog: a second daemon on the same catalog file is
refused (exit 6, one line naming the mount, pid and host that hold it) and
the first mount is unaffected; readers (status, find, du, queue, fsck
without --repair) still work while the catalog is held; the lock dies with
its daemon (SIGKILL), so a remount needs no cleanup. MongoDB catalogs are
shared: two mounts on one are both accepted."""

from __future__ import annotations

import os
import socket

import pytest

from tests.reliability_util import wait_dead
from tierfs import mounts

pytestmark = pytest.mark.mount


def test_second_mount_on_one_sqlite_catalog_is_refused(make_mount):
    a = make_mount()
    with open(a.path("f"), "wb") as f:
        f.write(b"a" * 5000)
    b = make_mount(name="mnt2", start=False)
    b.write_config()
    r = b.cli("mount", b.mnt, "--config", b.config_path, check=False, timeout=60)
    assert r.returncode == 6, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("tierfs: configuration: catalog ")
    assert f"in use by the tierfs mounted on {a.mnt} (pid {a.pid} on {socket.gethostname()})" in lines[0]
    assert mounts.find_mount(b.mnt) is None

    # The first mount goes on, and the catalog's readers work while it is held.
    with open(a.path("g"), "wb") as f:
        f.write(b"g" * 100)
    assert os.stat(a.path("f")).st_size == 5000 and open(a.path("g"), "rb").read() == b"g" * 100
    for args in (["status", a.mnt], ["find", a.mnt], ["du", a.mnt], ["queue", a.mnt], ["fsck", a.mnt]):
        out = a.cli(*args).stdout
        assert out, args
    assert "/g" in a.cli("find", a.mnt).stdout

    # The lock dies with its daemon: after a SIGKILL the second mount is accepted.
    a.kill()
    wait_dead(a)   # auto_unmount, or the stale mount it can leave (reliability_util.wait_dead)
    b.start()
    assert open(b.path("g"), "rb").read() == b"g" * 100
    assert os.stat(b.path("f")).st_size == 5000


@pytest.mark.mongo
def test_two_mounts_share_a_mongodb_catalog(make_mount, mongod):
    url = mongod.url("lock" + os.urandom(6).hex())
    a = make_mount(catalog_url=url)
    b = make_mount(catalog_url=url, name="mnt2")
    with open(a.path("f"), "w") as f:
        f.write("shared")
    with open(b.path("f")) as f:
        assert f.read() == "shared"
