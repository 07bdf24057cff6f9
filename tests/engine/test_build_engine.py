"""The engine built by engine.build_engine runs in-process, without /dev/fuse:
a request queues a job that its runner takes at once, an open of the archived
file restores it, and the collector removes the superseded objects."""

import json
import os

import trio

from tierfs import config
from tierfs.catalog import open_catalog
from tierfs.catalog.base import ROOT_INO, Session, State, now_ns
from tierfs.engine import build_engine
from tierfs.fs import Caller
from tierfs.policy.clock import FakeClock


def test_archive_and_restore_in_process(tmp_path):
    for d in ("disk", "vault", "state"):
        (tmp_path / d).mkdir()
    cfg = config.parse({"state_dir": str(tmp_path / "state"),
                        "tiers": {"disk": {"kind": "disk", "path": str(tmp_path / "disk")},
                                  "vault": {"kind": "vault", "path": str(tmp_path / "vault")}}},
                       str(tmp_path / "c.toml"))
    catalog = open_catalog(f"sqlite:///{tmp_path}/catalog.db")
    catalog.init()
    catalog.register_session(Session(id="s1", host="h", pid=os.getpid(), mountpoint="/m", started_ns=now_ns(),
                                     heartbeat_ns=now_ns()))
    tiers = cfg.make_tiers()
    for t in tiers.values():
        t.check()       # as the daemon does: creates a fresh tier's directories
    engine = build_engine(cfg, catalog, tiers, "s1", clock=FakeClock())
    fs = engine.fs
    me = Caller(uid=os.getuid(), gid=os.getgid(), pid=os.getpid())

    async def state(ino):
        return (await fs.getattr(ino)).state

    async def main():
        async with trio.open_nursery() as nursery:
            engine.start(nursery)
            fh, inode = await fs.create(ROOT_INO, b"f", 0o644, os.O_WRONLY, me)
            await fs.write(fh, 0, b"hello")
            await fs.release(fh)
            await fs.setxattr(inode.ino, b"user.tierfs.request", b"archive", me)
            with trio.fail_after(30):
                while await state(inode.ino) != State.ARCHIVED:
                    await trio.sleep(0.02)
            fh = await fs.open(inode.ino, os.O_RDONLY, me)    # blocks until the restore is done
            assert await fs.read(fh, 0, 100) == b"hello"
            stats = json.loads(await fs.getxattr(inode.ino, b"user.tierfs.stats", me))
            assert stats["open_files"] == 1 and stats["requests"] == {}
            await fs.release(fh)
            with trio.fail_after(30):        # the first online copy and the archive copy's source go
                while await fs.cat(catalog.garbage, 10):
                    await trio.sleep(0.02)
            await engine.stop()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        catalog.close()
