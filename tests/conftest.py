"""Shared fixtures: real mounts, real catalogs, real tiers.

- `catalog_url` / `catalog`: parametrized over CATALOG_BACKENDS (a fresh
  database per test).
- `mount`: a Mount of tierfs through the real CLI on the given catalog, in a
  per-test directory; always cleaned up (fusermount3 -u, then -uz, then the
  daemon is terminated by pid).
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from tierfs import mounts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Catalog backends every catalog-parametrized test runs on.
CATALOG_BACKENDS = ["sqlite", "mongo"]


def pytest_configure(config):
    os.environ.setdefault("TIERFS_TEST", "1")


# ---- catalogs -------------------------------------------------------------------
@pytest.fixture(scope="session")
def mongod(tmp_path_factory):
    """A real mongod (single-node replica set) for the whole session."""
    from tests.mongod import MongoServer
    server = MongoServer(str(tmp_path_factory.mktemp("mongod")))
    server.start()
    yield server
    server.stop()


def _catalog_url(request, tmp_path) -> str:
    backend = request.param if hasattr(request, "param") else "sqlite"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/catalog.db"
    if backend == "mongo":
        server = request.getfixturevalue("mongod")
        return server.url(f"t{uuid.uuid4().hex[:12]}")
    raise ValueError(backend)


@pytest.fixture(params=CATALOG_BACKENDS)
def catalog_url(request, tmp_path):
    return _catalog_url(request, tmp_path)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path}/catalog.db"


@pytest.fixture
def catalog(catalog_url):
    from tierfs.catalog import open_catalog
    cat = open_catalog(catalog_url)
    cat.init()
    yield cat
    cat.close()


# ---- S3 -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto():
    """moto's S3 server over HTTP on 127.0.0.1 for the whole session (tests/moto_server.py)."""
    from tests.moto_server import MotoServer
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto):
    """A fresh, empty bucket on the moto server; the server is running again afterwards."""
    yield moto.new_bucket()
    if not moto.running:
        moto.start()


# ---- mounts ---------------------------------------------------------------------
#: TIERFS_TEST_PASSTHROUGH=0: every mount without FUSE passthrough (unless a test sets it), so
#: the data path the daemon serves itself is tested too (dev/test runs tests/mount both ways).
PASSTHROUGH_OFF = os.environ.get("TIERFS_TEST_PASSTHROUGH") == "0"


class Mount:
    """A tierfs mounted through the real CLI, in the background."""

    def __init__(self, base: str, catalog_url: str, config: str = "", name: str = "mnt",
                 env: dict | None = None, prefix: list[str] | None = None):
        self.base = base
        #: command prefix of every CLI run, e.g. ["nsenter", "--net=/run/netns/X"]: the daemon on another "host"
        self.prefix = list(prefix or [])
        self.mnt = os.path.join(base, name)
        self.home = os.path.join(base, "home")
        self.catalog_url = catalog_url
        self.config_path = os.path.join(base, f"{name}.toml")
        self.extra_config = config
        self.env = dict(os.environ, TIERFS_HOME=self.home, **(env or {}))
        self.env.pop("TIERFS_CONFIG", None)
        self.pid: int | None = None
        try:
            os.makedirs(self.mnt, exist_ok=True)
        except FileExistsError:
            pass  # a stale mount left by a killed daemon: `tierfs mount` cleans it up
        os.makedirs(self.home, exist_ok=True)

    # config ----------------------------------------------------------------
    def default_tiers(self) -> str:
        return textwrap.dedent(f"""
            [tiers.disk]
            kind = "disk"
            path = "{self.home}/disk"

            [tiers.vault]
            kind = "vault"
            path = "{self.home}/vault"
        """)

    def write_config(self) -> None:
        extra = textwrap.dedent(self.extra_config)
        body = f'catalog = "{self.catalog_url}"\nstate_dir = "{self.home}/state"\n'
        top, tables = _split_toml(extra)
        if PASSTHROUGH_OFF and "passthrough" not in top:
            body += "passthrough = false\n"   # dev/test's second pass: the daemon's own read/write path
        body += top + "\n"
        if "[tiers." not in extra:
            body += self.default_tiers()
            for d in ("disk", "vault"):
                os.makedirs(os.path.join(self.home, d), exist_ok=True)
        body += tables
        with open(self.config_path, "w") as f:
            f.write(body)

    # lifecycle --------------------------------------------------------------
    def cli(self, *args, check=True, timeout=120, input=None, user=None, env=None) -> subprocess.CompletedProcess:
        cmd = [*self.prefix, sys.executable, "-m", "tierfs.cli", *args]
        kw = {}
        if user is not None:
            kw.update(user=user, group=pwd.getpwnam(user).pw_gid, extra_groups=[])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(self.env, **(env or {})),
                           input=input, cwd=ROOT, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"tierfs {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def start(self, *options: str) -> "Mount":
        self.write_config()
        args = ["mount", self.mnt, "--config", self.config_path]
        for o in options:
            args += ["-o", o]
        r = self.cli(*args, timeout=60)
        assert mounts.wait_mounted(self.mnt, 10), f"not mounted:\n{r.stdout}\n{r.stderr}\n{self.log()}"
        self.pid = int(r.stdout.split("(pid ")[1].split(",")[0])
        return self

    def stop(self) -> None:
        """Unmount cleanly and wait for the daemon to exit. A mount briefly busy
        (a process of another test walking into it, a release the kernel has
        not sent yet) is retried rather than failed."""
        for attempt in range(5):
            if mounts.find_mount(self.mnt) is None:
                break
            r = self.cli("umount", self.mnt, timeout=60, check=False)
            if r.returncode == 0:
                break
            if "busy" not in r.stderr or attempt == 4:
                raise AssertionError(f"tierfs umount {self.mnt} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
            time.sleep(1)
        self._wait_exit(30)

    def kill(self) -> None:
        """SIGKILL the daemon (a crash): auto_unmount removes the mount."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_exit(10)

    def _wait_exit(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pid and mounts.pid_alive(self.pid) and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)

    def cleanup(self) -> None:
        """Never leave a mount or a daemon behind, whatever state the test left."""
        if mounts.find_mount(self.mnt) is not None:
            for args in (["fusermount3", "-u", self.mnt], ["fusermount3", "-uz", self.mnt]):
                subprocess.run(args, capture_output=True, timeout=30)
                if mounts.wait_mounted(self.mnt, 5, mounted=False):
                    break
        if self.pid and mounts.pid_alive(self.pid):
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self._wait_exit(10)
            if mounts.pid_alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
                self._wait_exit(5)

    # helpers ----------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return os.path.join(self.mnt, *parts)

    def log(self) -> str:
        logdir = os.path.join(self.home, "state", "logs")
        out = []
        if os.path.isdir(logdir):
            for f in sorted(os.listdir(logdir)):
                with open(os.path.join(logdir, f), errors="replace") as fh:
                    out.append(fh.read())
        return "\n".join(out)

    def stats(self) -> dict:
        import json
        return json.loads(os.getxattr(self.mnt, "user.tierfs.stats"))

    def state(self, rel: str) -> str:
        return os.getxattr(self.path(rel), "user.tierfs.state").decode()

    def sh(self, script: str, check: bool = True, timeout: float = 300, user=None) -> subprocess.CompletedProcess:
        kw = {}
        if user is not None:
            kw.update(user=user, group=pwd.getpwnam(user).pw_gid, extra_groups=[])
        r = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, cwd=self.mnt,
                           timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"shell failed ({r.returncode}):\n{script}\n{r.stdout}\n{r.stderr}")
        return r


def _split_toml(text: str) -> tuple[str, str]:
    """Top-level keys (must precede tables in TOML) and the tables."""
    lines = text.strip().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("["):
            return "\n".join(lines[:i]), "\n".join(lines[i:]) + "\n"
    return "\n".join(lines), ""


@pytest.fixture
def make_mount(tmp_path, request):
    """Factory: make_mount(config="...", catalog_url=None, name="mnt") -> started Mount."""
    made: list[Mount] = []

    def factory(config: str = "", catalog_url: str | None = None, name: str = "mnt", options=(),
                start: bool = True, env: dict | None = None, prefix: list[str] | None = None) -> Mount:
        url = catalog_url or f"sqlite:///{tmp_path}/catalog.db"
        m = Mount(str(tmp_path), url, config=config, name=name, env=env, prefix=prefix)
        made.append(m)
        if start:
            m.start(*options)
        return m

    yield factory
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    for m in made:
        if failed:
            sys.stderr.write(f"\n---- daemon log of {m.mnt} ----\n{m.log()[-6000:]}\n")
        m.cleanup()


@pytest.fixture
def mount(make_mount):
    """A tierfs on SQLite with a disk and a vault tier."""
    return make_mount()


@pytest.fixture(params=CATALOG_BACKENDS)
def any_mount(request, make_mount, tmp_path):
    """A tierfs on each catalog backend."""
    return make_mount(catalog_url=_catalog_url(request, tmp_path))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def put_file(m: "Mount", rel: str, size: int) -> bytes:
    """Write `size` random bytes to rel inside the mount (parents created); returns them."""
    data = os.urandom(size)
    os.makedirs(os.path.dirname(m.path(rel)), exist_ok=True)
    with open(m.path(rel), "wb") as f:
        f.write(data)
    return data


def file_info(m: "Mount", rel: str) -> dict:
    """The catalog entry, history and jobs of a file (the user.tierfs.info xattr)."""
    import json
    return json.loads(os.getxattr(m.path(rel), "user.tierfs.info"))


def wait_for(pred, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
