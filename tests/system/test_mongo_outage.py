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
from tierfs.catalog.base import now_ns

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


def test_mongod_stopping_during_a_policy_run_stops_its_rules_and_the_next_run_completes(server, tmp_path):
    """The policy engine (no FUSE) on its own mongod, stopped while the first rule considers its
    candidates: each rule stops naming the catalog, within the deadlines (no hang, no exception out
    of the run); once mongod is back, the next run takes every candidate."""
    import functools
    import trio
    from tests.engine.test_policy_engine import Tree, make_cfg
    from tierfs.catalog import open_catalog
    from tierfs.policy.clock import FakeClock
    from tierfs.policy.engine import Engine
    from tierfs.policy.rules import parse_rules
    url = server.url("policyrun")
    cat = open_catalog(url)
    try:
        cat.init()
        t = Tree(cat)
        for i in range(600):
            t.file(f"d{i % 6}/f{i}", idle=100)
        cfg = make_cfg(tmp_path, dict(name="a", action="archive"), dict(name="b", action="migrate", to="ssd"))
        calls = [0]

        # The engine's catalog calls; mongod stops after the second: rule a's first page of candidates
        # (500 of 600) and their facts are read, the next page's facts are not.
        async def through(fn, *args):
            calls[0] += 1
            if calls[0] == 3:
                server.stop()
            return await trio.to_thread.run_sync(functools.partial(fn, *args))
        engine = Engine(cat, parse_rules(cfg), cat=through, clock=FakeClock())
        t0 = time.monotonic()
        report = trio.run(functools.partial(engine.run, None, dry_run=True))
        took = time.monotonic() - t0
        a, b = report.rules
        where = f"catalog mongodb://127.0.0.1:{server.port}/policyrun"
        assert a.error.startswith(where) and b.error.startswith(where), (a, b)
        assert 0 < a.actions < 600 and b.actions == 0
        assert took < 2 * BOUND_S, took
        print(f"both rules stopped {took:.1f}s after the run began; a acted on {a.actions}")

        restarted = MongoServer(server.workdir, port=server.port)
        restarted.start()
        server.pid = restarted.pid   # the fixture stops it
        engine = Engine(cat, parse_rules(cfg), clock=FakeClock())
        report = trio.run(functools.partial(engine.run, None, dry_run=True))
        assert [(r.actions, r.error) for r in report.rules] == [(600, ""), (600, "")]
    finally:
        cat.close()


def test_policy_run_command_during_an_outage_exits_unavailable_naming_the_rule(server, tmp_path):
    """`tierfs policy run` (no mount) while mongod stops mid-run: the lines printed so far stand, the
    rule's line says it stopped and why, and the command ends with a line naming the catalog and exit 7."""
    from tests.conftest import Mount
    from tierfs.catalog import open_catalog
    from tierfs.catalog.base import Inode
    url = server.url("policycli")
    m = Mount(str(tmp_path), url, config='[[policy]]\nname = "cold"\naction = "archive"\nto = "vault"\n'
                                          'inactive_for = "30d"\n')
    m.write_config()
    cat = open_catalog(url)
    try:
        cat.init()
        old = now_ns() - 100 * 86400 * 10**9
        for k in range(0, 20_000, 2000):
            cat.create_many([(1, b"f%05d" % i, Inode(ino=0, mode=0o100644, uid=0, gid=0, nlink=1, size=10, atime_ns=old,
                                                    mtime_ns=old, ctime_ns=old, crtime_ns=old, state_ns=old,
                                                    tier="disk", location=f"k{i}")) for i in range(k, k + 2000)], old)
    finally:
        cat.close()
    p = subprocess.Popen([sys.executable, "-m", "tierfs.cli", "policy", "run", "--dry-run", "--config",
                          m.config_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=m.env,
                         cwd=ROOT)
    try:
        printed = [p.stdout.readline() for _ in range(100)]
        assert all(line.startswith("archive -> vault /f") for line in printed), printed
        server.stop()
        out, err = p.communicate(timeout=2 * BOUND_S)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    where = f"catalog mongodb://127.0.0.1:{server.port}/policycli"
    rule = [line for line in out.splitlines() if line.startswith("rule 'cold'")]
    assert len(rule) == 1 and f"; stopped: {where}" in rule[0] and "6000 candidate" not in rule[0], (out[-300:], err)
    assert p.returncode == client.EXIT_UNAVAILABLE, (p.returncode, err)
    last, = err.splitlines()   # one line on stderr (the engine's own log line is the daemon's, not the CLI's)
    assert last.startswith(f"tierfs: rule 'cold' stopped: {where}"), err
    assert last.endswith("run the policy again when the catalog answers"), err
