"""The filesystems under test, each over its own backing directory on the
same disk: the native directory itself, tierfs (started with the real CLI),
mergerfs and rclone mount (Debian's packages).

Every system is a context manager: `with sys_: sys_.path` is where a case
works; leaving it unmounts and stops every process it started (by pid).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

from tierfs.mounts import find_mount, pid_alive, set_read_ahead, wait_mounted

from .util import rmtree, sh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")


def wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def bdi_read_ahead(path: str) -> int | None:
    """read_ahead_kb of the backing device info of the filesystem at `path`."""
    dev = os.stat(path).st_dev
    try:
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def set_bdi_read_ahead(mountpoint: str, kb: int) -> None:
    """tierfs.mounts.set_read_ahead, failing loudly (a bench setting must hold)."""
    why = set_read_ahead(mountpoint, kb)
    if why:
        raise RuntimeError(f"read_ahead_kb {kb}: {why}")


class System:
    """A filesystem under test. Subclasses set `name` and implement start/stop."""

    name = "?"
    fuse = True
    catalog: str | None = None
    set_read_ahead_kb: int | None = None   # experiments: raise the mount's read-ahead after mounting

    def __init__(self, workdir: str):
        self.base = os.path.join(workdir, self.name)
        self.backing = os.path.join(self.base, "backing")
        self.mnt = os.path.join(self.base, "mnt")
        self.pid: int | None = None
        self.notes: dict = {}

    @property
    def path(self) -> str:
        return self.mnt

    def __enter__(self):
        rmtree(self.base)
        os.makedirs(self.backing)
        os.makedirs(self.mnt)
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        if self.fuse:
            if self.set_read_ahead_kb:
                set_bdi_read_ahead(self.mnt, self.set_read_ahead_kb)
            self.notes["read_ahead_kb"] = bdi_read_ahead(self.mnt)
        return self

    def __exit__(self, *exc):
        try:
            self.stop()
        finally:
            self.cleanup()
        rmtree(self.base)

    def start(self) -> None:
        raise NotImplementedError

    def quiesce(self, path: str) -> float:
        """Wait until the system's background work on a file just written is
        done; returns the seconds waited."""
        return 0.0

    def stop(self) -> None:
        self._unmount()

    def request_counts(self) -> dict | None:
        """FUSE requests the daemon has received so far by operation, or None: it does not say."""
        return None

    def restart(self) -> None:
        """Unmount and mount again over the same data (a really cold cache)."""
        self.stop()
        self.cleanup()
        self.start()

    # helpers ----------------------------------------------------------------
    def _spawn(self, cmd: list[str], log: str) -> None:
        with open(log, "ab") as lf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, start_new_session=True)
        self.pid = proc.pid
        if not wait_mounted(self.mnt, 20):
            out = open(log, errors="replace").read()[-3000:]
            raise RuntimeError(f"{self.name}: {' '.join(cmd)} did not mount within 20 s:\n{out}")

    def _unmount(self) -> None:
        if find_mount(self.mnt) is not None:
            for args in (["fusermount3", "-u", self.mnt], ["fusermount3", "-uz", self.mnt]):
                subprocess.run(args, capture_output=True, timeout=60)
                if wait_mounted(self.mnt, 10, mounted=False):
                    break
        if self.pid:
            wait_exit(self.pid, 30)

    def cleanup(self) -> None:
        """Whatever happened: no mount and no process of ours left behind."""
        if find_mount(self.mnt) is not None:
            subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True, timeout=60)
            subprocess.run(["umount", "-l", self.mnt], capture_output=True, timeout=60)
        if self.pid and pid_alive(self.pid):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    break
                if wait_exit(self.pid, 10):
                    break
        self.pid = None


class Native(System):
    """The backing filesystem itself (the physical limit)."""

    name = "native"
    fuse = False

    @property
    def path(self) -> str:
        return self.backing

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Tierfs(System):
    """tierfs through its CLI: SQLite (or any URL) catalog, a disk tier and a
    vault archive tier; `options` are `-o key=value` overrides."""

    name = "tierfs"

    def __init__(self, workdir: str, name: str = "tierfs", options: dict | None = None,
                 catalog_url: str | None = None, extra_config: str = ""):
        self.name = name
        super().__init__(workdir)
        self.options = dict(options or {})
        self.home = os.path.join(self.base, "home")
        self.catalog_url = catalog_url
        self.extra_config = extra_config
        self.config_path = os.path.join(self.base, "tierfs.toml")

    def write_config(self) -> None:
        os.makedirs(os.path.join(self.home, "vault"), exist_ok=True)
        url = self.catalog_url or f"sqlite:///{self.home}/catalog.db"
        self.catalog = url.split(":", 1)[0]
        with open(self.config_path, "w") as f:
            f.write(textwrap.dedent(f"""\
                catalog = "{url}"
                state_dir = "{self.home}/state"
                {self.extra_config}
                [tiers.disk]
                kind = "disk"
                path = "{self.backing}"

                [tiers.vault]
                kind = "vault"
                path = "{self.home}/vault"
                """))

    def cli(self, *args, check=True, timeout=600) -> subprocess.CompletedProcess:
        # PYTHONPATH: the tierfs of this checkout (a git worktree can bench its own changes).
        env = dict(os.environ, TIERFS_HOME=self.home,
                   PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        env.pop("TIERFS_CONFIG", None)
        return sh([os.path.join(VENV_BIN, "tierfs"), *args], check=check, timeout=timeout, env=env)

    def start(self) -> None:
        self.write_config()
        args = ["mount", self.mnt, "--config", self.config_path]
        for k, v in self.options.items():
            args += ["-o", f"{k}={v}"]
        r = self.cli(*args, timeout=120)
        self.pid = int(r.stdout.split("(pid ")[1].split(",")[0])
        if not wait_mounted(self.mnt, 20):
            raise RuntimeError(f"tierfs did not mount: {r.stdout} {r.stderr}")
        self.notes.update({"catalog": self.catalog, "options": self.options})

    def stop(self) -> None:
        if find_mount(self.mnt) is not None:
            self.cli("umount", self.mnt, check=False, timeout=120)
        if self.pid:
            wait_exit(self.pid, 60)

    def quiesce(self, path: str, timeout: float = 600) -> float:
        """Until the file's checksum is recorded (the daemon computes it after the last writer closes)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if json.loads(os.getxattr(path, "user.tierfs.info")).get("checksum"):
                break
            time.sleep(0.2)
        return time.monotonic() - t0

    def variant_options(self):
        return dict(self.options)

    def remount_with(self, options: dict) -> None:
        self.options = dict(options)
        self.restart()

    def stats(self) -> dict:
        return json.loads(os.getxattr(self.mnt, "user.tierfs.stats"))

    def request_counts(self) -> dict:
        """FUSE requests the daemon has received so far, by operation ("read", "write", ...)."""
        return self.stats()["requests"]

    def passthrough(self) -> dict | None:
        """The daemon's FUSE passthrough state {"active": bool, "why": str}, or None from a daemon
        that does not report it (before issue 17)."""
        return self.stats().get("passthrough")


class Mergerfs(System):
    """mergerfs over one branch: Debian's defaults unless `options` say otherwise."""

    def __init__(self, workdir: str, name: str = "mergerfs", options: str = ""):
        self.name = name
        super().__init__(workdir)
        self.options = options

    def start(self) -> None:
        cmd = ["mergerfs", "-f"]
        if self.options:
            cmd += ["-o", self.options]
        cmd += [self.backing, self.mnt]
        self._spawn(cmd, os.path.join(self.base, "mergerfs.log"))
        ctl = os.path.join(self.mnt, ".mergerfs")
        for key in ("xattr", "cache.files", "cache.attr", "cache.entry", "cache.readdir", "func.getattr"):
            try:
                self.notes[key] = os.getxattr(ctl, f"user.mergerfs.{key}").decode()
            except OSError:
                pass
        self.notes["version"] = sh(["mergerfs", "--version"], check=False).stdout.split("\n")[0]


    def variant_options(self):
        return self.options

    def remount_with(self, options: str) -> None:
        self.options = options
        self.restart()


class Rclone(System):
    """rclone mount of a local-directory backend with a given VFS cache mode."""

    def __init__(self, workdir: str, mode: str):
        self.name = f"rclone-{mode}"
        super().__init__(workdir)
        self.mode = mode

    def start(self) -> None:
        cache = os.path.join(self.base, "cache")
        cmd = ["rclone", "mount", self.backing, self.mnt, "--vfs-cache-mode", self.mode,
               "--cache-dir", cache, "--config", os.path.join(self.base, "rclone.conf")]
        self._spawn(cmd, os.path.join(self.base, "rclone.log"))
        self.notes.update({"vfs-cache-mode": self.mode,
                           "version": sh(["rclone", "version"], check=False).stdout.split("\n")[0]})


class Floor(System):
    """bench/floorfs.py: a pyfuse3 + trio passthrough doing nothing else, the
    floor of what a filesystem on tierfs's FUSE library can cost here. Its
    read-ahead is raised like tierfs's (1 MiB) so reads compare like for like."""

    name = "pyfuse3-floor"

    def start(self) -> None:
        self._spawn([os.path.join(VENV_BIN, "python"), os.path.join(ROOT, "bench", "floorfs.py"),
                     self.backing, self.mnt], os.path.join(self.base, "floorfs.log"))
        os.stat(self.mnt)  # returns once the kernel has its answer to FUSE INIT (which resets read-ahead)
        set_bdi_read_ahead(self.mnt, 1024)
        self.notes["what"] = "pyfuse3 passthrough, no catalog (bench/floorfs.py)"


def make(name: str, workdir: str) -> System:
    """A system by name (see ALL)."""
    if name == "native":
        return Native(workdir)
    if name == "tierfs":
        return Tierfs(workdir)
    if name == "tierfs-noxattr":
        return Tierfs(workdir, name="tierfs-noxattr", options={"xattrs": "false"})
    if name == "tierfs-nopt":
        return Tierfs(workdir, name="tierfs-nopt", extra_config="passthrough = false")
    if name == "mergerfs":
        return Mergerfs(workdir)
    if name == "mergerfs-nosys":
        return Mergerfs(workdir, name="mergerfs-nosys", options="xattr=nosys")
    if name.startswith("rclone-"):
        return Rclone(workdir, name.split("-", 1)[1])
    if name == "pyfuse3-floor":
        return Floor(workdir)
    raise ValueError(f"unknown system {name!r}")


ALL = ["native", "tierfs", "tierfs-nopt", "tierfs-noxattr", "pyfuse3-floor", "mergerfs", "mergerfs-nosys",
       "rclone-off", "rclone-full"]


def available(name: str) -> str | None:
    """Why a system cannot run here, or None."""
    if name.startswith("mergerfs") and shutil.which("mergerfs") is None:
        return "mergerfs not installed"
    if name.startswith("rclone") and shutil.which("rclone") is None:
        return "rclone not installed"
    if name.startswith("tierfs") and not os.path.exists(os.path.join(VENV_BIN, "tierfs")):
        return f"{VENV_BIN}/tierfs missing (run ./dev/install --test)"
    return None


if __name__ == "__main__":  # quick manual check: python -m bench.systems WORKDIR
    wd = sys.argv[1]
    for n in ALL:
        with make(n, wd) as s:
            print(n, s.path, s.notes)
