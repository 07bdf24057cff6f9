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
    opts = "".join(f" -o {k}={v}" for k, v in rec.overrides.items())
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


def catalog_for(mount_path: str | None, config_path: str | None):
    """The catalog of the mount containing mount_path, else of the config;
    CliError (exit 6, one line) when no tierfs has initialised it yet."""
    t = target_of(mount_of(mount_path), config_path) if mount_path else config_target(config_path)
    return open_catalog(t)


def config_here(config_path: str | None) -> config_mod.Config:
    """--config if given, else the config of the mount the working directory
    is in (`tierfs policy check` run inside a mount), else the usual lookup."""
    if not config_path:
        try:
            m = mounts.mount_of(os.getcwd())
        except OSError:   # the working directory was deleted, or is in a mount whose daemon died
            m = None
        if m is not None and not mounts.is_stale(m.mountpoint):
            return mount_config(m)[0]
    return config_mod.load(config_path)


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
