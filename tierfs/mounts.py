"""Finding, checking and unmounting FUSE mounts (used by the CLI and tests).

os.path.ismount does not see a stale FUSE mount (its stat fails with
ENOTCONN), so mount state is read from /proc/self/mountinfo.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import subprocess
import time
from dataclasses import dataclass


@dataclass
class MountInfo:
    mountpoint: str
    fstype: str      # e.g. "fuse.tierfs"
    source: str      # e.g. "tierfs"
    options: str
    device: str = ""  # "major:minor", the name of its backing device info in /sys/class/bdi

    @property
    def owner_uid(self) -> int | None:
        """Who mounted it (a FUSE mount's user_id= option), None when not said."""
        for o in self.options.split(","):
            if o.startswith("user_id=") and o[8:].isdigit():
                return int(o[8:])
        return None


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts() -> list[MountInfo]:
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            rparts = right.split()
            if len(parts) < 6 or len(rparts) < 2:
                continue
            out.append(MountInfo(mountpoint=_unescape(parts[4]), fstype=rparts[0], source=_unescape(rparts[1]),
                                 options=parts[5] + "," + (rparts[2] if len(rparts) > 2 else ""),
                                 device=parts[2]))
    return out


def find_mount(path: str) -> MountInfo | None:
    path = os.path.abspath(path)
    for m in reversed(mounts()):
        if m.mountpoint == path:
            return m
    return None


def set_read_ahead(mountpoint: str, kb: int) -> str | None:
    """Set the kernel read-ahead of a mount (its /sys/class/bdi entry; root
    only). FUSE sends reads of up to 1 MiB only when the read-ahead window is
    that large (128 KiB by default). Returns why it could not, or None."""
    m = find_mount(mountpoint)
    if m is None or not m.device:
        return f"{mountpoint} is not mounted"
    try:
        with open(f"/sys/class/bdi/{m.device}/read_ahead_kb", "w") as f:
            f.write(str(kb))
    except OSError as e:
        return f"/sys/class/bdi/{m.device}/read_ahead_kb: {e.strerror}"
    return None


def tierfs_mounts() -> list[MountInfo]:
    return [m for m in mounts() if m.fstype == "fuse.tierfs" or m.source == "tierfs"]


def mount_of(path: str) -> MountInfo | None:
    """The tierfs mount containing `path` (the deepest one), or None."""
    path = os.path.abspath(path)
    best = None
    for m in tierfs_mounts():
        mp = m.mountpoint.rstrip("/") or "/"
        if path == mp or path.startswith(mp + "/") or mp == "/":
            if best is None or len(mp) > len(best.mountpoint):
                best = m
    return best


def is_stale(path: str) -> bool:
    """True when `path` is a mount whose daemon is gone (ENOTCONN). statvfs,
    not stat: the kernel answers stat from cached attributes (up to
    attr_timeout) even after the daemon died, but always asks for statfs."""
    try:
        os.statvfs(path)
        return False
    except OSError as e:
        return e.errno in (errno.ENOTCONN, errno.ECONNABORTED)


def unmount(path: str, lazy: bool = False, timeout: float = 30.0) -> None:
    """fusermount3 -u (or -uz); raises RuntimeError with its message on failure."""
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [path]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip() or f"fusermount3 exited {r.returncode}")


def wait_mounted(path: str, timeout: float, mounted: bool = True) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (find_mount(path) is not None) == mounted:
            return True
        time.sleep(0.02)
    return False


def runtime_key(mountpoint: str) -> str:
    """A short name for files that belong to one mountpoint (pidfile, log)."""
    mp = os.path.abspath(mountpoint)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(mp) or "root") + "-" + \
        hashlib.sha1(mp.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def pid_alive(pid: int) -> bool:
    """True while the process runs: the one liveness test (a zombie, exited
    but not yet reaped, and a dead task are not alive: a SIGKILLed daemon
    whose parent never reaps it must count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False
