"""The runtime file of a mount: what a running daemon publishes about itself.

Once mounted, a daemon writes one small JSON file (a MountRecord: pid,
mountpoint, config path or null for the embedded default, the -o overrides,
the redacted catalog URL, session id, uid, TIERFS_HOME, tierfs version) and
removes it at a clean unmount. Commands that take a mount (`tierfs umount`,
`status`, `queue`, `find`, `du`, `fsck`, `policy` inside a mount) read it to
find that mount's daemon, config and catalog, instead of scraping /proc
(which only root and the daemon's own user may read, and which mixed up the
caller's environment with the daemon's). A file whose pid is dead (a daemon
killed before it could remove it) is ignored, and removed by the next mount
that publishes in the same directory.

Where, and who can read it:
- a root daemon: /run/tierfs/ (0755, files 0644). Every local user who can
  use a root mount (allow_other) can then find its config: the mountpoint,
  pid and config path are visible anyway (mountinfo, ps), the catalog URL is
  redacted, and nothing secret goes in (an -o value holding a credential is
  named in `withheld`, its value is not kept);
- another user's daemon: $XDG_RUNTIME_DIR/tierfs/ (/run/user/UID is that
  user's own 0700 directory), else /tmp/tierfs-UID/ (0700, refused unless
  owned by UID: another user could create it first). Only that user and root
  read it: a third user of an allow_other mount is told so, and passes
  --config;
- $TIERFS_RUNTIME_DIR, when set, replaces both (tests; several daemons of
  one user that want their own directory), with the same modes by uid.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, field

from . import __version__, mounts
from .redact import redact_url, secret_keys

log = logging.getLogger(__name__)

RUNTIME_ENV = "TIERFS_RUNTIME_DIR"
SYSTEM_DIR = "/run/tierfs"
#: root's directory and files: readable by every user who may use a root mount (nothing secret in them)
SYSTEM_DIR_MODE, SYSTEM_FILE_MODE = 0o755, 0o644
#: a user's own: only that user (and root)
USER_DIR_MODE, USER_FILE_MODE = 0o700, 0o600


@dataclass(frozen=True)
class MountRecord:
    """The facts a running daemon publishes about its mount."""

    pid: int
    mountpoint: str
    config: str | None            # absolute path of the config file; None: the embedded default
    overrides: dict               # the -o KEY=VALUE it runs with (parsed), secrets left out
    catalog: str                  # catalog URL, password shown as ***
    session: str                  # its catalog session id
    uid: int                      # who mounted it
    home: str                     # the TIERFS_HOME its defaults (embedded tiers, catalog, state_dir) derive from
    version: str = __version__
    withheld: list[str] = field(default_factory=list)   # -o keys whose value holds a credential: not kept

    @classmethod
    def of(cls, *, mountpoint: str, config: str | None, overrides: dict, catalog: str, session: str,
           home: str) -> "MountRecord":
        """The record of the calling process's mount (pid, uid and version are ours)."""
        withheld = secret_keys(overrides)
        return cls(pid=os.getpid(), mountpoint=os.path.abspath(mountpoint),
                   config=os.path.abspath(config) if config else None,
                   overrides={k: v for k, v in overrides.items() if k not in withheld},
                   catalog=redact_url(catalog), session=session, uid=os.getuid(), home=home,
                   withheld=withheld)


class Unreadable(Exception):
    """The runtime file of a mount exists (or may) but the caller cannot read it."""


def own_dir() -> str:
    """The directory the calling process publishes in (see the module doc)."""
    if os.environ.get(RUNTIME_ENV):
        return os.path.abspath(os.environ[RUNTIME_ENV])
    if os.getuid() == 0:
        return SYSTEM_DIR
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "tierfs")
    return f"/tmp/tierfs-{os.getuid()}"


def dirs_of(uid: int | None) -> list[str]:
    """Where the daemon of a mount made by `uid` (None: unknown) publishes, as
    seen from the calling process."""
    if os.environ.get(RUNTIME_ENV):
        return [own_dir()]
    if uid == os.getuid():
        return [own_dir()]
    if uid == 0:
        return [SYSTEM_DIR]
    if uid is None:
        return [own_dir(), SYSTEM_DIR]
    return [f"/run/user/{uid}/tierfs", f"/tmp/tierfs-{uid}"]


def file_name(mountpoint: str) -> str:
    return mounts.runtime_key(mountpoint) + ".json"


def _own_directory(path: str) -> None:
    """Create the publishing directory (mode by who we are), or check that the
    one there is ours and not writable by others; OSError otherwise."""
    mode = SYSTEM_DIR_MODE if os.getuid() == 0 else USER_DIR_MODE
    try:
        os.makedirs(path, mode=mode)
        os.chmod(path, mode)   # the umask may have narrowed it
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PermissionError(f"{path} is not a directory of uid {os.getuid()} that only it may write to")


def publish(rec: MountRecord) -> str | None:
    """Write `rec` atomically (a temporary file renamed over) into our
    directory; sweep the files of dead daemons there. Returns the path, or
    None when the directory cannot be used (logged: commands then need
    --config for this mount, the mount itself works)."""
    d = own_dir()
    try:
        _own_directory(d)
        _sweep(d)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
        try:
            os.fchmod(fd, SYSTEM_FILE_MODE if os.getuid() == 0 else USER_FILE_MODE)
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(rec), f, indent=1, default=str)
            path = os.path.join(d, file_name(rec.mountpoint))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        log.warning("runtime file not written in %s (%s): commands need --config for this mount", d, e)
        return None
    return path


def remove(rec: MountRecord) -> None:
    """Remove our record at unmount (only if it is still ours: a new daemon may have replaced it)."""
    path = os.path.join(own_dir(), file_name(rec.mountpoint))
    try:
        if _load(path).pid == rec.pid:
            os.unlink(path)
    except (OSError, ValueError, TypeError, KeyError):
        pass


def _sweep(d: str) -> None:
    for name in os.listdir(d):
        if name.endswith(".json") and not name.startswith(".tmp-"):
            path = os.path.join(d, name)
            try:
                if not mounts.pid_alive(_load(path).pid):
                    os.unlink(path)
            except (OSError, ValueError, TypeError, KeyError):
                pass


def _load(path: str) -> MountRecord:
    with open(path, encoding="utf-8") as f:
        return MountRecord(**json.load(f))


def published() -> list[MountRecord]:
    """The records of the live daemons that publish where we would (our own
    directory: the calling user's mounts, or all of $TIERFS_RUNTIME_DIR's),
    unreadable or foreign files skipped."""
    d = own_dir()
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return []
    out = []
    for name in names:
        if name.endswith(".json") and not name.startswith(".tmp-"):
            try:
                rec = _load(os.path.join(d, name))
            except (OSError, ValueError, TypeError, KeyError):
                continue
            if mounts.pid_alive(rec.pid):
                out.append(rec)
    return out


def find(mountpoint: str, uid: int | None) -> MountRecord | None:
    """The record of the live daemon serving `mountpoint`, mounted by `uid`
    (mountinfo's user_id; None: unknown); None when no daemon published one
    (a tierfs older than this file, or its directory was unusable) or its
    pid is dead. Unreadable when the caller may not read where it is."""
    mp = os.path.abspath(mountpoint)
    denied = []
    for d in dirs_of(uid):
        path = os.path.join(d, file_name(mp))
        try:
            rec = _load(path)
        except FileNotFoundError:
            continue
        except PermissionError:
            denied.append(d)
            continue
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warning("ignoring runtime file %s: %s", path, e)
            continue
        if rec.mountpoint == mp and mounts.pid_alive(rec.pid):
            return rec
    if denied:
        raise Unreadable(f"its daemon (uid {uid}) publishes where it runs in {denied[0]}, "
                         f"which uid {os.getuid()} cannot read")
    return None
