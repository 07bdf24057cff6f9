"""Talking to a running mount from the CLI: through the filesystem itself.

Requests are setxattr calls of user.tierfs.request on the file (so the
daemon sees the caller's uid and checks permissions); information comes from
the read-only user.tierfs.info / user.tierfs.state attributes.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass

from . import mounts

# Exit codes of the CLI (documented in the README).
EXIT_OK = 0
EXIT_FAILED = 1          # the operation failed (details on stderr)
EXIT_USAGE = 2           # bad command line (click's own code)
EXIT_NOT_TIERFS = 3      # path is not inside a running tierfs mount
EXIT_NOT_FOUND = 4       # no such file or directory
EXIT_PERMISSION = 5      # permission denied
EXIT_CONFIG = 6          # invalid configuration
EXIT_UNAVAILABLE = 7     # catalog or tier unreachable
EXIT_TIMEOUT = 8         # --wait gave up


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def errno_exit(e: OSError) -> int:
    return {errno.ENOENT: EXIT_NOT_FOUND, errno.EACCES: EXIT_PERMISSION, errno.EPERM: EXIT_PERMISSION,
            errno.ENOTCONN: EXIT_NOT_TIERFS, errno.EIO: EXIT_UNAVAILABLE}.get(e.errno, EXIT_FAILED)


def os_error(path: str, e: OSError, what: str = "") -> CliError:
    msg = f"{path}: {what + ': ' if what else ''}{os.strerror(e.errno) if e.errno else e}"
    if e.errno == errno.ENOTCONN:
        msg += " (the tierfs daemon for this mount is not running; `tierfs mount` it again)"
    return CliError(msg, errno_exit(e))


def check_in_mount(path: str) -> mounts.MountInfo:
    m = mounts.mount_of(path)
    if m is None:
        raise CliError(f"{path}: not inside a tierfs mount", EXIT_NOT_TIERFS)
    if mounts.is_stale(m.mountpoint):
        raise CliError(f"{path}: the tierfs mount {m.mountpoint} is not running (its daemon died); "
                       f"run `tierfs mount {m.mountpoint}` to recover it", EXIT_NOT_TIERFS)
    return m


@dataclass
class FileInfo:
    path: str
    info: dict


def info(path: str) -> dict:
    try:
        raw = os.getxattr(path, "user.tierfs.info", follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            st = os.lstat(path)
            return {"state": "online", "tier": None, "size": st.st_size, "atime_ns": st.st_atime_ns,
                    "ino": st.st_ino, "events": [], "jobs": []}
        raise
    return json.loads(raw)


def walk(paths: list[str], recursive: bool, files_only: bool = True):
    """Yield the regular files named (and, with recursive, under directories)."""
    for p in paths:
        try:
            st = os.lstat(p)
        except OSError as e:
            raise os_error(p, e) from None
        import stat as S
        if S.S_ISDIR(st.st_mode):
            if not recursive:
                if files_only:
                    raise CliError(f"{p}: is a directory (use -r)", EXIT_FAILED)
                yield p
                continue
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    fp = os.path.join(root, f)
                    if not files_only or S.S_ISREG(os.lstat(fp).st_mode):
                        yield fp
        elif S.S_ISREG(st.st_mode) or not files_only:
            yield p


def request(path: str, verb: str) -> None:
    os.setxattr(path, "user.tierfs.request", verb.encode(), follow_symlinks=False)


def state(path: str) -> str:
    return os.getxattr(path, "user.tierfs.state", follow_symlinks=False).decode()


def restore_by_open(path: str) -> None:
    """Queue a restore as a reader: a non-blocking open of an archived file
    queues its restore and fails with EAGAIN (DMAPI style); a user with read
    but not write permission cannot set the request xattr."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except BlockingIOError:
        pass
