"""Files and directories only their owner can use.

Every object tierfs writes on a local tier (disk, vault, the objects it
creates in an in-place tier, command-tier staging, the staged copies of
remote tiers) is 0600 and every directory tierfs creates for them 0700:
other local users must not read file bytes around the mount's permission
checks (an archived 0600 secret used to land in the vault as 0644 under
umask 022).

The mode is set when the entry is created (the mode argument of open() and
mkdir(), which the umask can only narrow), never widened afterwards, so no
moment exposes the bytes. Where the umask also strips the owner's own bits
(0277...), an fchmod/chmod of the still-private entry gives them back, so
tierfs can reopen what it wrote. Directories that exist already (a tier's
root the administrator configured) keep their mode.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import Iterator

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
#: bits that let other users in: group and other
OPEN_BITS = 0o077


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777  # unknown: assume the worst (always fchmod)


#: open(..., 0o600) gives exactly 0600 unless the umask strips owner bits; only then
#: does a new file need an fchmod (3.7 us per file, on the create path of every new file).
#: tierfs never changes its umask, so this is read once.
_FIX_OWNER_BITS = bool(_umask() & DIR_MODE)


def too_open(mode: int) -> bool:
    """True when group or other have any permission on the entry."""
    return bool(mode & OPEN_BITS)


def create(path: str, flags: int = os.O_WRONLY) -> int:
    """Create the new file `path` (O_EXCL) with mode 0600; returns an fd opened with `flags`."""
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    if _FIX_OWNER_BITS:
        try:
            os.fchmod(fd, FILE_MODE)
        except OSError:
            os.close(fd)
            raise
    return fd


def makedirs(path: str) -> None:
    """os.makedirs(path, exist_ok=True) with every directory it creates 0700
    (os.makedirs leaves intermediate ones 0777 minus the umask); existing
    directories are left as they are."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
            continue  # made by someone else meanwhile: theirs
        if _FIX_OWNER_BITS:
            os.chmod(d, DIR_MODE)


def own_dir(path: str) -> None:
    """makedirs(path), and `path` itself made 0700 if it exists more open:
    tierfs's own directories (state, logs, the embedded default's home) hold
    the names and bytes of every user's files."""
    makedirs(path)
    mode = os.stat(path).st_mode & 0o777
    if too_open(mode):
        try:
            os.chmod(path, DIR_MODE)
        except PermissionError as e:
            log.warning("%s is mode %o (open to other users) and cannot be made 0700: %s", path, mode, e.strerror)


def tighten(path: str) -> None:
    """Take group and other permissions away: 0600 for a file, 0700 for a directory."""
    st = os.lstat(path)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE)


def walk_modes(top: str) -> Iterator[tuple[str, int]]:
    """(path, st_mode) of `top` and of everything below it, without following
    symlinks (one lstat per entry). A missing `top` yields nothing."""
    try:
        yield top, os.lstat(top).st_mode
    except FileNotFoundError:
        return
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            try:
                mode = e.stat(follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue  # deleted meanwhile (a live mount)
            yield e.path, mode
            if stat.S_ISDIR(mode):
                stack.append(e.path)
