"""`tierfs import`: bring an existing directory tree into a mount, in place
(catalog entries pointing at the files where they are) or by copy
(tierfs/importer.py does the work)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys

import click

from .. import client, mounts
from ..client import CliError
from ..display import echo
from ..units import fmt_size
from .common import CONTEXT, config_option
from ..tiers.disk import own_dirs as tier_dirs
from .target import mount_of, open_catalog, target_of

def _inplace_tier(cfg, src: str, name: str | None) -> tuple[str, str]:
    """(tier name, its root) of the disk tier that holds SRC in place."""
    def root(tc) -> str:
        return os.path.realpath(os.path.expanduser(tc.path))

    def holds(tc) -> bool:
        r = root(tc)
        return src == r or src.startswith(r.rstrip("/") + "/")
    if name is not None:
        tc = cfg.tiers.get(name)
        if tc is None:
            raise CliError(f"--tier: no tier named {name!r} (tiers: {', '.join(cfg.tiers)})", client.EXIT_CONFIG)
        if tc.kind != "disk":
            raise CliError(f"--tier {name}: --in-place needs a tier of kind \"disk\", not {tc.kind!r}",
                           client.EXIT_CONFIG)
        if not holds(tc):
            raise CliError(f"--tier {name}: its path {root(tc)} does not contain {src}", client.EXIT_CONFIG)
        return name, root(tc)
    found = sorted((len(root(tc)), n) for n, tc in cfg.tiers.items() if tc.kind == "disk" and holds(tc))
    if not found:
        raise CliError(f"no disk tier has {src} under its path; add one to the mount's config and remount, e.g.\n"
                       f"  [tiers.data]\n  kind = \"disk\"\n  path = \"{src}\"", client.EXIT_CONFIG)
    n = found[-1][1]
    return n, root(cfg.tiers[n])


def _progress_bar(total_files: int, total_bytes: int, verb: str):
    """A progress bar on stderr by bytes, when stderr is a terminal."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext(), lambda files, nbytes: None
    done = {"files": 0}
    bar = click.progressbar(length=max(total_bytes, 1), label=verb, file=sys.stderr, width=30,
                            item_show_func=lambda _: f"{done['files']}/{total_files} files")

    def progress(files: int, nbytes: int) -> None:
        done["files"] += files
        if nbytes and total_bytes:
            bar.update(nbytes, current_item=done["files"])
        else:   # a file finished after its last bytes: click renders only on steps, so show the count itself
            bar.current_item = done["files"]
            bar.render_progress()
    return bar, progress


@click.command("import", context_settings=CONTEXT)
@click.argument("src", type=click.Path(file_okay=False))
@click.argument("dest", type=click.Path())
@click.option("--in-place", "mode", flag_value="in-place",
              help="Register the files where they are (no copy): SRC must be under a disk tier's path.")
@click.option("--copy", "mode", flag_value="copy", default=True, help="Copy the files in through the mount (default).")
@click.option("--tier", metavar="TIER", help="In place: the disk tier holding SRC (default: the one whose path "
              "contains it). Copy: migrate/archive each file to TIER after copying.")
@click.option("--defer-checksums", is_flag=True, help="Do not read the files for checksums now "
              "(in place: a later run without this option computes the missing ones).")
@click.option("--batch", default=1000, show_default=True, help="In place: entries per catalog transaction.")
@config_option()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def import_cmd(src, dest, mode, tier, defer_checksums, batch, config_path, as_json):
    """Bring an existing directory tree in (in place or by copy).

    SRC/x appears as DEST/x (DEST, inside a running mount, is created if
    missing).

    
    --copy (default) copies through the mount, like cp -a.
    --in-place writes catalog entries pointing at the files where they are,
    without copying a byte: SRC must be the path of a `disk` tier of the
    mount's config, or under it. The files then belong to tierfs: writes,
    archiving and deleting through the mount act on them, and DELETING AN
    IMPORTED FILE THROUGH THE MOUNT DELETES THE SOURCE FILE. Do not change
    them behind tierfs's back afterwards.

    Interrupted? Run the same command again: what is already there is
    skipped. A progress bar shows on a terminal; a summary ends the run.

    
    Examples:
      tierfs import ~/old-results ~/tierfs/results
      tierfs import --in-place /data/run42 /mnt/lab/run42     # [tiers.data] path = "/data"
      tierfs import --in-place --defer-checksums /data/big /mnt/lab/big
      tierfs import --copy --tier vault ~/scans /mnt/lab/scans
    """
    from .. import importer
    srcp = os.path.realpath(os.path.expanduser(src))
    if not os.path.isdir(srcp):
        raise CliError(f"{src}: no such directory", client.EXIT_NOT_FOUND)
    if mounts.mount_of(srcp) is not None:
        raise CliError(f"{src}: is inside a tierfs mount; import from outside it", client.EXIT_USAGE)
    destp = os.path.abspath(os.path.expanduser(dest))
    m = mount_of(os.path.dirname(destp) if not os.path.lexists(destp) else destp)
    if destp == srcp or destp.startswith(srcp.rstrip("/") + "/") or m.mountpoint.startswith(srcp.rstrip("/") + "/"):
        raise CliError(f"{dest}: the mount is inside {src}", client.EXIT_USAGE)
    t = target_of(m, config_path)
    if mode == "in-place":
        tier_name, root = _inplace_tier(t.cfg, srcp, tier)
        cat = open_catalog(t)
    try:
        if not os.path.lexists(destp):
            os.mkdir(destp)
        st = os.stat(destp)
    except OSError as e:
        raise client.os_error(dest, e) from None
    if not stat.S_ISDIR(st.st_mode):
        raise CliError(f"{dest}: not a directory", client.EXIT_FAILED)
    if not os.access(destp, os.W_OK):
        raise CliError(f"{dest}: permission denied", client.EXIT_PERMISSION)
    own = set(tier_dirs(root)) if mode == "in-place" else set()
    files, nbytes = importer.scan(srcp, lambda p: p in own) if sys.stderr.isatty() else (0, 0)
    bar, progress = _progress_bar(files, nbytes, f"import {mode}")
    with bar:
        if mode == "in-place":
            try:
                job = importer.InPlaceImport(cat, src=srcp, dest_ino=st.st_ino, tier=tier_name, tier_root=root,
                                             checksums=not defer_checksums, batch=batch, progress=progress,
                                             cause=f"import in place from {srcp} by uid {os.getuid()}")
                summary = job.run()
            finally:
                cat.close()
            # Through the mount, so the daemon re-reads what it may have cached: DEST (new entries, link
            # count) and what an earlier run registered and this one changed.
            for rel, atime, mtime in [(".", None, None)] + job.touched():
                try:
                    if atime is None:
                        os.utime(destp)
                    else:
                        os.utime(os.path.join(destp, rel), ns=(atime, mtime), follow_symlinks=False)
                except OSError:
                    pass  # not the owner: the mount shows the change once it forgets the entry
        else:
            tier_is_archive = False
            if tier is not None:
                if tier not in t.cfg.tiers:
                    raise CliError(f"--tier: no tier named {tier!r} (tiers: {', '.join(t.cfg.tiers)})",
                                   client.EXIT_USAGE)
                from ..tiers import tier_class
                tier_is_archive = tier_class(t.cfg.tiers[tier].kind).archive
            summary = importer.CopyImport(src=srcp, dest=destp, checksums=not defer_checksums, tier=tier,
                                          tier_is_archive=tier_is_archive, progress=progress).run()
    _print_summary(summary, srcp, destp, tier_name if mode == "in-place" else tier, as_json)
    if summary.errors:
        sys.exit(client.EXIT_FAILED)


def _print_summary(s, src: str, dest: str, tier: str | None, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(dict(s.as_dict(), src=src, dest=dest, tier=tier), indent=1))
        return
    how = f"registered in place on tier {tier}" if s.mode == "in-place" else "copied"
    rate = f" ({s.files / s.seconds:.0f} files/s)" if s.seconds > 0 and s.files else ""
    echo(f"import {src} -> {dest}: {s.files} files ({fmt_size(s.bytes)}), {s.dirs} directories, "
               f"{s.symlinks} symlinks, {s.hardlinks} hard links {how} in {s.seconds:.1f}s{rate}")
    if s.skipped:
        echo(f"  {s.skipped} entries ({fmt_size(s.skipped_bytes)}) were already there (an earlier run): skipped")
    if s.checksums or s.checksums_deferred:
        later = " (run again without --defer-checksums to compute them)" if s.mode == "in-place" else \
            " (the daemon records them)"
        echo(f"  checksums: {s.checksums} {'computed' if s.mode == 'in-place' else 'verified'}"
                   + (f", {s.checksums_deferred} deferred{later}" if s.checksums_deferred else ""))
    if s.queued:
        echo(f"  {s.queued} files queued to move to tier {tier} (see `tierfs queue`)")
    if s.tier_dirs:
        names = " and ".join(os.path.relpath(d, src) + "/" for d in s.tier_dirs)
        echo(f"  {names} under {src} {'are' if len(s.tier_dirs) > 1 else 'is'} tier {tier}'s own "
             f"{'directories' if len(s.tier_dirs) > 1 else 'directory'} (its objects): skipped")
    if s.ignored:
        echo(f"  {s.ignored} {'entry' if s.ignored == 1 else 'entries'} ignored (sockets, FIFOs, devices, other file systems)")
    for e in s.errors[:20]:
        echo(f"tierfs: {e}", err=True)
    if len(s.errors) > 20:
        echo(f"tierfs: ... and {len(s.errors) - 20} more errors", err=True)
    if s.errors:
        echo(f"  {len(s.errors)} errors; run the same command again to retry what failed")



COMMANDS = (import_cmd,)
