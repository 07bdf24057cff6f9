"""Mounts on separate "hosts" over a three-member MongoDB replica set (issue 20, items 1-2).

The test bed (`bed`): a private bridge, three network namespaces each
running one mongod member (replica set rs1, priorities 3/2/1), and a
namespace per tierfs mount, so the mounts reach the catalog only over the
network, as separate hosts would; they share a directory standing for NFS
(the disk tier) and a vault directory (the archive tier). Everything the
bed makes (mounts, daemons, mongods, namespaces, veths, the bridge) is
removed when the test ends, passed or failed.
"""

from __future__ import annotations

import os
import sys
import uuid

import pytest

from tierfs.catalog.mongo import MongoCatalog

from tests.conftest import Mount
from tests.mongod import MongoReplicaSet
from tests.netns import Net, NetnsUnavailable

pytestmark = [pytest.mark.mount, pytest.mark.mongo]


def tiers(home: str, archive_delay: float = 0) -> str:
    for d in ("disk", "vault"):
        os.makedirs(f"{home}/{d}", exist_ok=True)
    return (f'[tiers.disk]\nkind = "disk"\npath = "{home}/disk"\n\n'
            f'[tiers.vault]\nkind = "vault"\npath = "{home}/vault"\narchive_delay = {archive_delay}\n')


class Bed:
    """The replica set, the hosts, and the mounts made on them."""

    def __init__(self, tmp_path, net: Net, rs: MongoReplicaSet, hosts):
        self.tmp_path = tmp_path
        self.net = net
        self.rs = rs
        self.hosts = hosts                   # namespaces for mounts (Host)
        self.db = f"mh{uuid.uuid4().hex[:10]}"
        self.url = rs.url(self.db)
        self.home = f"{tmp_path}/home"       # shared: the tiers (NFS stand-in), state dir, logs
        self.mounts: list[Mount] = []
        self._cats: list[MongoCatalog] = []

    def mount(self, name: str, host, top: str = "", archive_delay: float = 0) -> Mount:
        m = Mount(str(self.tmp_path), self.url, config=top + tiers(self.home, archive_delay), name=name,
                  prefix=host.prefix)
        self.mounts.append(m)
        return m.start()

    def catalog(self) -> MongoCatalog:
        """A client of the catalog from the test (root namespace, over the bridge)."""
        c = MongoCatalog(self.url)
        self._cats.append(c)
        return c

    def close(self, failed: bool) -> None:
        for c in self._cats:
            c.close()
        for m in self.mounts:
            if failed:
                sys.stderr.write(f"\n---- daemon log of {m.mnt} ----\n{m.log()[-6000:]}\n")
            m.cleanup()


@pytest.fixture
def bed(tmp_path, request):
    try:
        Net.check()
    except NetnsUnavailable as e:
        pytest.skip(f"multi-host test bed: {e}")
    net = Net()
    rs = None
    b = None
    try:
        net.start()
        members = [net.add_host(f"mongod{i}") for i in range(3)]
        rs = MongoReplicaSet(str(tmp_path / "rs"), [(h.ip, 27017, h.prefix) for h in members])
        rs.start()
        b = Bed(tmp_path, net, rs, [net.add_host(f"mount{i}") for i in range(2)])
        yield b
    finally:
        failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else True
        try:
            if b is not None:
                for h in b.hosts:   # a partitioned host's daemon must reach the catalog to unmount cleanly
                    h.link(True)
                b.close(failed)
        finally:
            if rs is not None:
                rs.stop()
            net.close()


def test_bed_mounts_reach_the_catalog_only_over_the_network(bed):
    a = bed.mount("a", bed.hosts[0], "heartbeat_interval = 1\nsession_timeout = 5\n")
    b = bed.mount("b", bed.hosts[1], "heartbeat_interval = 1\nsession_timeout = 5\n")
    a.sh("mkdir d && printf hello > d/f")
    from tests.conftest import wait_for
    wait_for(lambda: os.path.exists(b.path("d", "f")) and open(b.path("d", "f"), "rb").read() == b"hello",
             timeout=10, what="B sees A's file")
    cat = bed.catalog()
    assert sorted(s.pid for s in cat.sessions() if not s.clean) == sorted([a.pid, b.pid])
    # each daemon lives in its own network namespace
    for m, h in ((a, bed.hosts[0]), (b, bed.hosts[1])):
        assert os.stat(f"/proc/{m.pid}/ns/net").st_ino == os.stat(f"/run/netns/{h.ns}").st_ino
