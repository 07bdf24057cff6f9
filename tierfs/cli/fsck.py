"""`tierfs fsck`: the command line of tierfs/fsck.py.

The catalog and tiers come from --config (or $TIERFS_CONFIG, the system
file, the embedded default), or from MOUNT: the config and -o overrides of
the daemon serving that mountpoint (its runtime file: target.py). Exit status: 0 when no problem remains
(after repairs), 1 when some do, 6 for a bad config, 7 when the catalog
cannot be reached, 3 when MOUNT is neither mounted nor known to the catalog.
"""

from __future__ import annotations

import json
import os
import sys

import click

from .. import client, config as config_mod, mounts
from ..client import CliError
from ..display import echo
from ..redact import redact_url
from .common import CONTEXT
from .target import implied_mount, mount_config


def _load(config_path: str | None, mountpoint: str | None):
    """(config, absolute mountpoint or None): --config wins; else a running
    MOUNT's own config; else the implied mount's (target.implied_mount);
    else the usual lookup."""
    if mountpoint is None:
        m = None if config_path else implied_mount()
        if m is not None:
            return mount_config(m)[0], m.mountpoint
        return config_mod.load(config_path), None
    mp = os.path.abspath(os.path.expanduser(mountpoint))
    m = mounts.find_mount(mp)
    if config_path is None and m is not None and not mounts.is_stale(mp):
        return mount_config(m)[0], mp
    return config_mod.load(config_path), mp


@click.command(context_settings=CONTEXT)
@click.argument("mountpoint", required=False, type=click.Path(file_okay=False))
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
              help="TOML config naming the catalog and tiers (default: MOUNT's daemon, $TIERFS_CONFIG, ...).")
@click.option("--repair", is_flag=True, help="Fix what is safe to fix (needs the file system unmounted).")
@click.option("--verify-data", is_flag=True, help="Also read every copy back and compare its sha256 (slow).")
@click.option("--json", "as_json", is_flag=True, help="Findings as JSON.")
def fsck(mountpoint, config_path, repair, verify_data, as_json):
    """Check the catalog and the tiers for inconsistencies, and repair them.

    Checks: names vs link counts, unlinked and nameless inodes, names of
    missing inodes, jobs of dead daemons, files stuck mid-move, every copy
    of every file (exists, size, with --verify-data its sha256), lost files
    whose copy came back, pending deletes, tier objects no file uses, and
    objects or tierfs's directories other users may open (not 0600/0700).
    Each problem is printed with the file's path (a file imported in place:
    also the source file's). Repairs never delete the only copy of a file's
    bytes.

    \b
    Examples:
      tierfs fsck -c /etc/tierfs/lab.toml
      tierfs fsck --repair -c /etc/tierfs/lab.toml     # after `tierfs umount`
      tierfs fsck --verify-data --json /mnt/lab        # a live mount: report only
    """
    from .. import fsck as F
    from ..catalog import open_catalog
    cfg, mp = _load(config_path, mountpoint)
    cat = open_catalog(cfg.catalog)
    try:
        if not cat.initialised():  # checking must not create a catalog
            if mp is not None:
                raise CliError(f"{mp}: not a tierfs mount of catalog {redact_url(cfg.catalog)} (it is empty; "
                               "give the mount's --config)", client.EXIT_NOT_TIERFS)
            raise CliError(f"catalog {redact_url(cfg.catalog)} is empty: nothing to check (no tierfs has "
                           "mounted it)", client.EXIT_CONFIG)
        cat.init()  # brings an older layout up to date (indexes) before checking it
        live = F.live_sessions(cat)
        if mp is not None and mounts.find_mount(mp) is None and not any(s.mountpoint == mp for s in cat.sessions()):
            raise CliError(f"{mp}: not a tierfs mount of catalog {redact_url(cfg.catalog)} "
                           "(give its --config)", client.EXIT_NOT_TIERFS)
        if repair and live:
            where = ", ".join(f"{s.mountpoint} (pid {s.pid} on {s.host})" for s in live)
            raise CliError(f"the file system is mounted: {where}; unmount it everywhere before "
                           "`tierfs fsck --repair`", client.EXIT_FAILED)
        if live and not as_json:
            click.echo("tierfs fsck: the file system is mounted; checking only (moves in flight may show up)",
                       err=True)
        tiers = cfg.make_tiers()
        progress = (lambda name: None) if as_json else \
            (lambda name: click.echo(f"  {name.replace('check_', '').replace('_', ' ')}...", err=True))
        result = F.run(cat, tiers, repair=repair, verify_data=verify_data, live=bool(live), progress=progress,
                       private_dirs=[os.path.join(cfg.state_dir, "staging")])
    finally:
        cat.close()
    remaining = result.problems()
    summary = dict(errors=sum(1 for f in result.findings if f.severity == F.Severity.ERROR),
                   repaired=sum(1 for f in result.findings if f.repaired),
                   remaining=len(remaining), live=bool(live), **result.counts)
    if as_json:
        click.echo(json.dumps({"findings": [F.as_dict(f) for f in result.findings], "summary": summary}, indent=1))
    else:
        for f in result.findings:
            echo(f.line())
        click.echo(f"fsck: {summary['inodes']} inodes, {summary['objects']} objects checked; "
                   f"{summary['errors']} problem(s), {summary['repaired']} repaired, {len(remaining)} remaining"
                   + ("" if repair or not remaining else " (run with --repair to fix them)"))
    sys.exit(client.EXIT_FAILED if remaining else client.EXIT_OK)


COMMANDS = (fsck,)
