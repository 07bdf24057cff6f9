"""Case "roundtrips": how many commands each FUSE request sends to mongod on
the MongoDB catalog (issue 16: at most 2 per operation). There the floor of a
metadata operation is a network round trip, not Python, so the count is the
figure to cut; it does not depend on the machine's load.

The engine is built as a mount builds it (daemon.Daemon.open, a real mongod
from tests/mongod.py) but its background services are not started, so every
command counted is the request's own. Each request is called the way
fuse_ops.py calls it, and pymongo's command monitoring counts the commands
(one command = one round trip; a transaction's commit is one more). Two
columns: attributes served from the engine's cache (attr_timeout 1 s, the
default for a shared catalog, requests within a second of each other), and
the cache expired (attr_timeout 0: every inode read goes to mongod).
"""

from __future__ import annotations

import os

import trio

#: (request, what the row means) in the order they run
ROWS = [
    ("mkdir", "mkdir"), ("lookup", "lookup of an existing name"), ("lookup_missing", "lookup of a missing name"),
    ("create", "create (a second file in the directory)"), ("write_first", "first write to a new file"), ("write", "a later write"),
    ("flush_close", "flush + release of a written file"), ("getattr", "getattr"),
    ("open", "open for reading"), ("read", "read 4 KiB"), ("release_read", "flush + release of a reader"),
    ("chmod", "setattr (chmod)"), ("truncate", "setattr (truncate)"), ("rename", "rename"), ("link", "link"),
    ("symlink", "symlink"), ("readlink", "readlink"), ("setxattr", "setxattr user.*"),
    ("getxattr", "getxattr user.*"), ("listxattr", "listxattr"), ("removexattr", "removexattr"),
    ("readdir", "readdir of 100 entries (one request)"), ("statfs", "statfs"),
    ("fsync", "write + fsync (the fsync)"), ("unlink", "unlink, a name left"),
    ("unlink_last", "unlink of the last name (purged)"), ("rmdir", "rmdir"),
]


def _counter():
    """A pymongo CommandListener counting commands (heartbeats are not commands)."""
    import pymongo.monitoring

    class Counter(pymongo.monitoring.CommandListener):
        def __init__(self):
            self.names: list[str] = []

        def started(self, event):
            coll = event.command.get(event.command_name)
            self.names.append(f"{event.command_name} {coll}" if isinstance(coll, str) else event.command_name)

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass
    return Counter()


async def _requests(fs, counter) -> dict[str, dict]:
    from tierfs import errors
    from tierfs.fs import Caller
    root = 1
    caller = Caller(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)
    out: dict[str, dict] = {}

    async def count(row: str, coro):
        n0 = len(counter.names)
        try:
            return await coro
        finally:
            out[row] = {"n": len(counter.names) - n0, "commands": counter.names[n0:]}

    # untimed: the catalog object takes its first blocks of inode numbers, dentry
    # positions and garbage ids (one round trip per 1,000: MongoCatalog._next)
    w = await fs.mkdir(root, b"warm", 0o755, caller)
    fh, _ = await fs.create(w.ino, b"x", 0o644, os.O_WRONLY, caller)
    await fs.release(fh)
    await fs.unlink(w.ino, b"x")
    d = await count("mkdir", fs.mkdir(root, b"d", 0o755, caller))
    await count("lookup", fs.lookup(root, b"d"))
    try:
        await count("lookup_missing", fs.lookup(d.ino, b"missing"))
    except errors.NotFound:
        pass
    fh0, _ = await fs.create(d.ino, b"first", 0o644, os.O_WRONLY, caller)   # the directory's placement is cached
    await fs.release(fh0)
    fh, f = await count("create", fs.create(d.ino, b"f", 0o644, os.O_WRONLY, caller))
    await count("write_first", fs.write(fh, 0, b"x" * 4096))
    await count("write", fs.write(fh, 4096, b"y" * 4096))

    async def close(fh):
        await fs.flush(fh)
        await fs.release(fh)
    await count("flush_close", close(fh))
    await count("getattr", fs.getattr(f.ino))
    fh = await count("open", fs.open(f.ino, os.O_RDONLY, caller))
    await count("read", fs.read(fh, 0, 4096))
    await count("release_read", close(fh))
    await count("chmod", fs.setattr(f.ino, {"mode": 0o600}, None, caller))
    await count("truncate", fs.setattr(f.ino, {"size": 100}, None, caller))
    await count("rename", fs.rename(d.ino, b"f", d.ino, b"g"))
    await count("link", fs.link(f.ino, d.ino, b"h"))
    s = await count("symlink", fs.symlink(d.ino, b"s", b"g", caller))
    await count("readlink", fs.readlink(s.ino))
    await count("setxattr", fs.setxattr(f.ino, b"user.k", b"v", caller))
    await count("getxattr", fs.getxattr(f.ino, b"user.k", caller))
    await count("listxattr", fs.listxattr(f.ino))
    await count("removexattr", fs.removexattr(f.ino, b"user.k", caller))
    e = await fs.mkdir(root, b"e", 0o755, caller)
    for i in range(100):
        fh, _ = await fs.create(e.ino, f"n{i}".encode(), 0o644, os.O_WRONLY, caller)
        await close(fh)
    await count("readdir", fs.readdir(e.ino, 0))
    await count("statfs", fs.statfs())
    fh = await fs.open(f.ino, os.O_WRONLY, caller)
    await fs.write(fh, 0, b"z")
    await count("fsync", fs.fsync(fh, False))
    await close(fh)
    await count("unlink", fs.unlink(d.ino, b"h"))
    await count("unlink_last", fs.unlink(d.ino, b"g"))
    x = await fs.mkdir(d.ino, b"x", 0o755, caller)
    await fs.forget([(x.ino, 1)])
    await count("rmdir", fs.rmdir(d.ino, b"x"))
    return out


def run(workdir: str, log) -> dict:
    """{column: {row: {"n": commands, "commands": [names]}}} on a fresh mongod."""
    import shutil

    import pymongo.monitoring

    from tests.engine.harness import settings
    from tests.mongod import MongoServer
    from tierfs import config as config_mod
    from tierfs.daemon import Daemon

    base = os.path.join(workdir, "roundtrips")
    shutil.rmtree(base, ignore_errors=True)
    server = MongoServer(os.path.join(base, "mongod"))
    server.start()
    counter = _counter()
    pymongo.monitoring.register(counter)
    results = {}
    try:
        for column, timeout in (("cached", 1.0), ("expired", 0.0)):
            home = os.path.join(base, column)
            os.makedirs(home, exist_ok=True)
            # the engine tests' configuration (disk, disk2, vault tiers) on this mongod
            cfg = config_mod.parse(settings(home, catalog=server.url(f"rt_{column}"), attr_timeout=timeout),
                                   os.path.join(home, "tierfs.toml"))
            daemon = Daemon(cfg, os.path.join(home, "mnt"))
            daemon.open()
            try:
                results[column] = trio.run(_requests, daemon.fs, counter)
            finally:
                daemon.catalog.end_session(daemon.session_id, clean=True)
                daemon.catalog.close()
            log(f"  round trips ({column}): " + ", ".join(f"{k} {v['n']}" for k, v in results[column].items()))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return results
