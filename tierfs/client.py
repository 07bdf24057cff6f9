"""Talking to a running mount from the CLI: through the filesystem itself.

Requests are setxattr calls of user.tierfs.request on the file (so the
daemon sees the caller's uid and checks permissions); information comes from
the read-only user.tierfs.info / user.tierfs.state attributes.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field

from . import mounts, xattrs
from .display import printable

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
    msg = f"{printable(path)}: {what + ': ' if what else ''}{os.strerror(e.errno) if e.errno else e}"
    if e.errno == errno.ENOTCONN:
        msg += " (the tierfs daemon for this mount is not running; `tierfs mount` it again)"
    return CliError(msg, errno_exit(e))


def check_in_mount(path: str) -> mounts.MountInfo:
    m = mounts.mount_of(path)
    if m is None:
        raise CliError(f"{printable(path)}: not inside a tierfs mount", EXIT_NOT_TIERFS)
    if mounts.is_stale(m.mountpoint):
        mp = printable(m.mountpoint)
        raise CliError(f"{printable(path)}: the tierfs mount {mp} is not running (its daemon died); "
                       f"run `tierfs mount {mp}` to recover it", EXIT_NOT_TIERFS)
    return m


def info(path: str) -> dict:
    try:
        raw = os.getxattr(path, xattrs.text(xattrs.INFO), follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            st = os.lstat(path)
            return {"state": "online", "tier": None, "size": st.st_size, "atime_ns": st.st_atime_ns,
                    "ino": st.st_ino, "events": [], "jobs": []}
        raise
    return json.loads(raw)


_KINDS = {stat.S_IFLNK: "symbolic link", stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket",
          stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}


def kind_of(mode: int) -> str:
    """What st_mode says an entry is: "file", "directory", "symbolic link", "FIFO"..."""
    return {stat.S_IFREG: "file", stat.S_IFDIR: "directory"}.get(stat.S_IFMT(mode)) or \
        _KINDS.get(stat.S_IFMT(mode), "special file")


@dataclass
class Walk:
    """The regular files named and, with recursive, those under the named
    directories (sorted, depth first), without following symlinks.

    Iterative: a recursive walk (os.walk before Python 3.12) overflows the
    interpreter's stack on a 1,000-level tree. Other entries (symlinks,
    FIFOs, devices, sockets) are yielded too with files_only=False, else
    counted in `skipped`; directories that cannot be listed are in `errors`.
    """

    paths: list[str]
    recursive: bool
    files_only: bool = True
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, what it is) not yielded
    errors: list[CliError] = field(default_factory=list)

    def __iter__(self):
        for p in self.paths:
            try:
                st = os.lstat(p)
            except OSError as e:
                raise os_error(p, e) from None
            if not stat.S_ISDIR(st.st_mode):
                yield from self._entry(p, st.st_mode)
            elif not self.recursive:
                if self.files_only:
                    raise CliError(f"{printable(p)}: is a directory (use -r)", EXIT_FAILED)
                yield p
            else:
                yield from self._tree(p)

    def _entry(self, path: str, mode: int):
        if stat.S_ISREG(mode) or not self.files_only:
            yield path
        else:
            self.skipped.append((path, kind_of(mode)))

    def _tree(self, top: str):
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                self.errors.append(os_error(d, e, "cannot list"))
                continue
            subdirs = []
            for e in entries:
                try:
                    mode = e.stat(follow_symlinks=False).st_mode
                except OSError as err:
                    self.errors.append(os_error(e.path, err))
                    continue
                if stat.S_ISDIR(mode):
                    subdirs.append(e.path)
                else:
                    yield from self._entry(e.path, mode)
            stack.extend(reversed(subdirs))   # popped in name order


def walk(paths: list[str], recursive: bool, files_only: bool = True) -> Walk:
    return Walk(list(paths), recursive, files_only)


def request(path: str, verb: str) -> None:
    os.setxattr(path, xattrs.text(xattrs.REQUEST), verb.encode(), follow_symlinks=False)


def state(path: str) -> str:
    return os.getxattr(path, xattrs.text(xattrs.STATE), follow_symlinks=False).decode()


#: States in which a job is over (JobState in catalog/base.py); pending and running jobs are active.
JOB_FINISHED = ("done", "failed", "cancelled")


def job_for_request(before: dict, after: dict, kind: str) -> int | None:
    """The id of the job that carries out a `kind` request made between two
    reads of a file's info (user.tierfs.info lists its newest jobs), or None
    when the request needed no job (archive of an archived file, restore of
    an online one).

    A request is coalesced into the file's active job of that kind if there
    is one, so the job is: the active one after the request (new, or the one
    joined); else one created since `before` (it already finished); else the
    one that was active before (joined, and finished since)."""
    def of_kind(inf: dict) -> list[dict]:
        return [j for j in inf.get("jobs", []) if j["kind"] == kind]
    seen = max((j["id"] for j in of_kind(before)), default=0)
    active = [j["id"] for j in of_kind(after) if j["state"] not in JOB_FINISHED]
    if active:
        return max(active)
    new = [j["id"] for j in of_kind(after) if j["id"] > seen]
    if new:
        return min(new)
    joined = [j["id"] for j in of_kind(before) if j["state"] not in JOB_FINISHED]
    return max(joined, default=None)


def job_of(inf: dict, job_id: int) -> dict | None:
    """Job `job_id` among a file's info, None when no longer listed (only
    the newest jobs are)."""
    return next((j for j in inf.get("jobs", []) if j["id"] == job_id), None)


def restore_by_open(path: str) -> None:
    """Queue a restore as a reader: a non-blocking open of an archived file
    queues its restore and fails with EAGAIN (DMAPI style); a user with read
    but not write permission cannot set the request xattr."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except BlockingIOError:
        pass
