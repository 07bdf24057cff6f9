"""mongod stops while tierfs is mounted on it: syscalls answer EIO within a
bounded time (no hang), the mount survives, and it works again once mongod
is back on the same port and dbpath. Uses its own mongod (not the session
one, which other tests need running)."""

import os
import subprocess
import sys
import time

import pytest

from tests.mongod import MongoServer
from tierfs import client, mounts

from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.mount, pytest.mark.mongo]

#: Longest a syscall may take to fail while the catalog is down (the catalog
#: gives up after 5 s of server selection; a retried read can take two).
BOUND_S = 15.0


@pytest.fixture
def server(tmp_path):
    s = MongoServer(str(tmp_path / "mongod"))
    s.start()
    yield s
    s.stop()


def timed(cmd: str, mnt: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run cmd with $M the mountpoint (not as cwd: chdir itself needs the catalog)."""
    t0 = time.monotonic()
    r = subprocess.run(["bash", "-c", cmd], env=dict(os.environ, M=mnt), capture_output=True, text=True,
                       timeout=120)
    return r, time.monotonic() - t0


def test_catalog_outage_gives_eio_and_the_mount_recovers(make_mount, server, tmp_path):
    url = server.url("outage")
    cfg = "heartbeat_interval = 1\nsession_timeout = 4\n"
    m = make_mount(config=cfg, catalog_url=url)
    other = make_mount(config=cfg, catalog_url=url, name="other")  # a second mount, idle
    m.sh("mkdir d && printf before > d/f && printf keep > g")
    time.sleep(1.5)  # let the kernel's and the engine's caches expire: every op below needs the catalog
    server.stop()
    took = {}
    for name, cmd in (("stat", "stat $M/d/f"), ("cat", "cat $M/g"), ("create", "touch $M/d/new"),
                      ("ls", "ls -l $M/d"), ("mkdir", "mkdir $M/z"), ("rename", "mv $M/g $M/h")):
        r, took[name] = timed(cmd, m.mnt)
        assert r.returncode != 0 and "Input/output error" in r.stderr, (name, r.returncode, r.stdout, r.stderr)
        assert took[name] < BOUND_S, (name, took[name])
    print("EIO after (s):", {k: round(v, 1) for k, v in took.items()})
    # The CLI's catalog reads fail with one readable line and the "unavailable" exit code.
    r = subprocess.run([sys.executable, "-m", "tierfs.cli", "queue", "--config", m.config_path],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env=m.env)
    assert r.returncode == client.EXIT_UNAVAILABLE, r
    assert r.stderr.startswith(f"tierfs: catalog mongodb://127.0.0.1:{server.port}/outage") and \
        r.stderr.count("\n") == 1, r.stderr
    # The mount is still there and its daemon alive; the log names the cause.
    assert mounts.find_mount(m.mnt) is not None and not mounts.is_stale(m.mnt)
    assert mounts.pid_alive(m.pid)
    assert f"catalog mongodb://127.0.0.1:{server.port}/outage" in m.log()

    restarted = MongoServer(server.workdir, port=server.port)  # same port and dbpath
    restarted.start()
    server.pid = restarted.pid  # the fixture stops it
    t0 = time.monotonic()
    wait_for(lambda: timed("cat $M/d/f", m.mnt)[0].stdout == "before", timeout=60, interval=0.5,
             what="the mount to work again")
    print(f"mount usable again {time.monotonic() - t0:.1f}s after mongod was back")
    m.sh("printf after > d/new2 && mv g h && mkdir z")
    assert open(m.path("d", "new2")).read() == "after" and open(m.path("h")).read() == "keep"
    assert sorted(os.listdir(m.mnt)) == ["d", "h", "z"]
    assert not os.path.exists(m.path("d", "new"))  # the create that failed left nothing
    # The outage was longer than session_timeout for both mounts: neither may
    # reap the other afterwards (both were alive; their heartbeats just failed).
    time.sleep(6)
    from tierfs.catalog.mongo import MongoCatalog
    cat = MongoCatalog(url)
    try:
        assert [s.clean for s in cat.sessions()] == [False, False]
    finally:
        cat.close()
    assert "reaped dead session" not in m.log()
    assert open(other.path("d", "new2")).read() == "after"
