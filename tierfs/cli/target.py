"""Which mount, config and catalog a command acts on.

A command given a mount (or a path inside one) uses the configuration that
mount's daemon runs with, read from the runtime file the daemon published
(tierfs/runtime.py: its config path, -o overrides and TIERFS_HOME, loaded
the normal way), whoever runs the command and whatever its own environment
($TIERFS_CONFIG, $TIERFS_HOME) says. --config overrides that. A mount
without a runtime file (its daemon predates it, or could not write it)
falls back to the usual lookup ($TIERFS_CONFIG, /etc/tierfs/tierfs.toml,
the embedded default). Either way the catalog must list the mount's live
session (its user.tierfs.stats attribute), or the command stops with exit
code 6 instead of answering from the wrong catalog.

A command whose MOUNT is optional (queue, policy, find, du, fsck) given
none acts on the implied mount (implied_mount): the one containing the
working directory, else ($TIERFS_CONFIG unset) the only running mount of
this user, else, with no mount running, the usual lookup; with several it
asks to name one.
`status` without MOUNT shows every running mount.

Exit codes (tierfs/client.py): 3 not in a running tierfs mount, 4 no such
file, 5 the runtime file or catalog is not readable by the caller, 6
configuration, 7 catalog unreachable.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass

from .. import client, config as config_mod, mounts, runtime, xattrs
from ..catalog.base import SCHEMA_VERSION
from ..client import CliError
from ..display import printable
from ..redact import redact_url


@dataclass
class Target:
    """A mount (or a path inside one) and the configuration it runs with."""

    mountpoint: str | None       # None: --config without a mount
    cfg: config_mod.Config
    how: str                     # where the config came from
    pid: int | None = None       # the daemon, when its runtime file says
    session: str | None = None   # its catalog session (user.tierfs.stats)


def config_target(config_path: str | None) -> Target:
    """A catalog named by --config (or the default lookup), no mount involved."""
    cfg = config_mod.load(config_path)
    return Target(None, cfg, ("--config " if config_path else "default lookup: ") + (cfg.path or "embedded default"))


def mount_config(m: mounts.MountInfo) -> tuple[config_mod.Config, str, runtime.MountRecord | None]:
    """(config, where it came from, runtime record or None) of the running
    mount `m`, from its runtime file, else the usual lookup (module doc)."""
    try:
        rec = runtime.find(m.mountpoint, m.owner_uid)
    except runtime.Unreadable as e:
        raise CliError(f"{m.mountpoint}: {e}; pass the mount's config with --config", client.EXIT_PERMISSION) from None
    if rec is None:
        t = config_target(None)
        return t.cfg, f"{t.how} (no runtime file of this mount in {' or '.join(runtime.dirs_of(m.owner_uid))})", None
    if rec.withheld:
        raise CliError(f"{m.mountpoint} was mounted with -o {', '.join(rec.withheld)} holding a credential, which its "
                       "runtime file does not keep; pass the mount's config with --config", client.EXIT_CONFIG)
    if rec.config and os.path.exists(rec.config) and not os.access(rec.config, os.R_OK):
        raise CliError(f"{m.mountpoint}: the config its daemon runs with, {rec.config}, is not readable by uid "
                       f"{os.getuid()} (it may hold credentials); ask its owner, or run this as uid {rec.uid} or root",
                       client.EXIT_PERMISSION)
    cfg = config_mod.read(rec.config, rec.overrides, home=rec.home)
    # as they were typed: -o allow_other=true (the record holds parsed values, Python's True)
    opts = "".join(f" -o {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in rec.overrides.items())
    return cfg, f"daemon pid {rec.pid}: {rec.config or 'embedded default'}{opts}", rec


def target_of(m: mounts.MountInfo, config_path: str | None) -> Target:
    """The Target of a running mount (see the module doc)."""
    rec = None
    if config_path:
        t = config_target(config_path)
        cfg, how = t.cfg, t.how
    else:
        cfg, how, rec = mount_config(m)
    session = rec.session if rec else None
    try:
        session = json.loads(os.getxattr(m.mountpoint, xattrs.text(xattrs.STATS))).get("session")
    except (OSError, ValueError):
        pass  # xattrs = false: the runtime file's word (or nothing) to check against
    return Target(m.mountpoint, cfg, how, rec.pid if rec else None, session)


def mount_of(path: str) -> mounts.MountInfo:
    """The running tierfs mount containing `path` (CliError otherwise)."""
    return client.check_in_mount(os.path.abspath(os.path.expanduser(path)))


def open_catalog(t: Target):
    """Open the target's catalog: one a mount has initialised (a reader never
    creates one: without this, reads fail with "no such table" on SQLite and
    answer from an empty database on MongoDB) and, for a mount, the one it uses."""
    from ..catalog import open_catalog as _open
    url = t.cfg.catalog
    cat = _open(url)
    try:
        if not cat.initialised():
            hint = f" {t.how}" if t.how.startswith("--config ") else f"; config: {t.how}"
            raise CliError(f"catalog {redact_url(url)} is empty: mount it once first (tierfs mount MOUNTPOINT{hint})",
                           client.EXIT_CONFIG)
        if cat.schema_version() < SCHEMA_VERSION:
            cat.init()  # made by an older tierfs: queries need its current schema (as fsck and policy run do)
        if t.session is not None and t.session not in {s.id for s in cat.sessions() if not s.clean}:
            raise CliError(f"{t.mountpoint}: catalog {redact_url(url)} (config: {t.how}) is not the one this mount "
                           f"uses (no live session {t.session}); pass the mount's config with --config",
                           client.EXIT_CONFIG)
    except BaseException:
        cat.close()
        raise
    return cat


def implied_mount() -> mounts.MountInfo | None:
    """The mount a command given no MOUNT acts on, the one rule for all:
    the running mount containing the working directory, else (unless
    $TIERFS_CONFIG names a config) the only running mount of this user (the
    one live runtime file where our daemons publish), else None (no mount:
    the usual config lookup). Several: a
    usage error listing them, since picking one would answer about the wrong
    catalog."""
    here = _cwd_mountpoint()
    if here is not None and not mounts.is_stale(here):
        return mounts.find_mount(here)
    if os.environ.get("TIERFS_CONFIG"):
        return None    # the caller named a config, as with --config
    running = [m for m in (mounts.find_mount(r.mountpoint) for r in runtime.published())
               if m is not None and not mounts.is_stale(m.mountpoint)]
    if len(running) > 1:
        raise CliError(f"{len(running)} tierfs mounts are running ({', '.join(printable(m.mountpoint) for m in running)}"
                       "): name one, or run this inside it", client.EXIT_USAGE)
    return running[0] if running else None


def target_for(mount_path: str | None, config_path: str | None) -> Target:
    """The target of a command taking an optional MOUNT: that mount; else
    --config alone; else the implied mount; else the usual config lookup."""
    if mount_path:
        return target_of(mount_of(mount_path), config_path)
    m = None if config_path else implied_mount()
    return target_of(m, None) if m is not None else config_target(config_path)


def catalog_for(mount_path: str | None, config_path: str | None):
    """The catalog of target_for(); CliError (exit 6, one line) when no
    tierfs has initialised it yet."""
    return open_catalog(target_for(mount_path, config_path))


def config_here(config_path: str | None, mount_path: str | None = None) -> config_mod.Config:
    """The config target_for() would use (`tierfs policy check [MOUNT]`),
    without opening a catalog."""
    if config_path:
        return config_mod.load(config_path)
    m = mount_of(mount_path) if mount_path else implied_mount()
    return mount_config(m)[0] if m is not None else config_mod.load(None)


def path_here(path: str | None) -> str:
    """The PATH of `find`/`du` when none is given: the working directory
    inside a mount, else the root of the implied mount, else "." (whose
    error says it is in no mount)."""
    if path is not None:
        return path
    m = implied_mount()
    return m.mountpoint if m is not None and m.mountpoint != _cwd_mountpoint() else "."


def _cwd_mountpoint() -> str | None:
    try:
        m = mounts.mount_of(os.getcwd())
    except OSError:
        return None
    return m.mountpoint if m is not None else None


@dataclass
class Place:
    """A path inside a mount, resolved to its catalog inode."""

    target: Target
    path: str            # absolute path as given
    rel: str             # path relative to the mountpoint ("" = the mount's root)
    ino: int
    is_dir: bool


def place_of(path: str, config_path: str | None) -> Place:
    m = mount_of(path)
    ap = os.path.abspath(os.path.expanduser(path))
    try:
        st = os.stat(ap)
    except OSError as e:
        raise client.os_error(path, e) from None
    t = target_of(m, config_path)
    rel = os.path.relpath(ap, m.mountpoint)
    return Place(t, ap, "" if rel == "." else rel, st.st_ino, stat.S_ISDIR(st.st_mode))
