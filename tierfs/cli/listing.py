"""`tierfs ls`: a directory listing with each entry's state, tier, size,
last access and pin, like DMF's dmls or `lfs hsm_state`.

It reads the catalog the mount uses (target.py, as `find` and `du` do):
one Catalog.list_dir query per directory listed (entries joined with their
inodes and pin attributes), where `tierfs state` reads one
user.tierfs.info attribute per file. Permissions are the kernel's: a
directory is listed only when the caller could list it through the mount
(os.access R_OK|X_OK on its path there), and a path named is stat'ed
through the mount.

Last access comes from the catalog, which the daemon updates every
`atime_flush` (60 s by default): a file read just now may show its
previous access for that long (`tierfs state` asks the daemon, which knows
it at once).
"""

from __future__ import annotations

import datetime
import grp
import json
import os
import stat
import sys
from dataclasses import dataclass

import click

from .. import client, pins, xattrs
from ..catalog.base import Inode, copies_of
from ..client import CliError
from ..display import echo, name_fields
from ..units import fmt_size
from .common import CONTEXT, config_option
from .target import Place, open_catalog, place_of

_KIND = {stat.S_IFDIR: "dir", stat.S_IFLNK: "link", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
         stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev"}


@dataclass
class Entry:
    """One line of the listing."""

    path: bytes          # as the user names it: the argument, or a directory argument joined with the name
    name: bytes          # what the line shows
    inode: Inode
    pin: pins.Pin
    rel: str             # its path relative to the mount ("/a/b"), where its pin says pins come from


def _time(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M") if ns else "-"


def _user(uid: int) -> str:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _state(i: Inode) -> str:
    return str(i.state) if i.is_reg() else _KIND.get(stat.S_IFMT(i.mode), "other")


def _pin_column(e: Entry) -> str:
    """pin: its own attribute pins it; pin^: a directory above does; -: not pinned."""
    if not e.pin.pinned:
        return "-"
    return "pin^" if e.pin.inherited else "pin"


def _columns(e: Entry, long: bool) -> list[str]:
    i = e.inode
    reg = i.is_reg()
    tier = (i.tier or i.archive_tier or "-") if reg else "-"
    cols = [_state(i), tier, fmt_size(i.size) if reg else "-", _time(i.atime_ns), _pin_column(e)]
    if long:
        copies = ",".join(t for t, _ in copies_of(i)) or "-"
        cols = [stat.filemode(i.mode), _user(i.uid), _group(i.gid), *cols[:3], copies,
                fmt_size(i.stub_size) if i.stub_size else "-", _time(i.mtime_ns), cols[3], cols[4]]
    return cols


#: columns aligned right (sizes); by position in the short and the long form
_RIGHT = {False: {2}, True: {5, 7}}


def _print(entries: list[Entry], long: bool) -> None:
    rows = [_columns(e, long) for e in entries]
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))] if rows else []
    for e, r in zip(entries, rows):
        cells = [c.rjust(w) if k in _RIGHT[long] else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths))]
        link = b" -> " + e.inode.target if long and e.inode.target is not None else b""
        echo("  ".join(cells) + "  " + os.fsdecode(e.name + link))


def _json(e: Entry) -> dict:
    i = e.inode
    d = dict(**name_fields("path", e.path), type=client.kind_of(i.mode), ino=i.ino,
             mode=oct(i.mode), uid=i.uid, owner=_user(i.uid), gid=i.gid, group=_group(i.gid),
             mtime_ns=i.mtime_ns, atime_ns=i.atime_ns, **e.pin.fields())
    if i.is_reg():
        d.update(state=str(i.state), tier=i.tier, archive_tier=i.archive_tier, size=i.size,
                 copies=[list(c) for c in copies_of(i)], stub_size=i.stub_size)
    if i.target is not None:
        d.update(name_fields("target", i.target))
    return d


class Lister:
    """Lists paths of one command line, one catalog per mount."""

    def __init__(self, config_path: str | None, long: bool, recursive: bool, as_json: bool):
        self.config_path, self.long, self.recursive, self.as_json = config_path, long, recursive, as_json
        self.catalogs: dict[str, object] = {}
        self.rows: list[dict] = []
        self.errors: list[CliError] = []
        self.blocks = 0   # directory blocks printed (a blank line between two)

    def close(self) -> None:
        for cat in self.catalogs.values():
            cat.close()

    def catalog(self, p: Place):
        mp = p.target.mountpoint
        if mp not in self.catalogs:
            self.catalogs[mp] = open_catalog(p.target)
        return self.catalogs[mp]

    def run(self, paths: tuple[str, ...]) -> None:
        places = [(path, place_of(path, self.config_path)) for path in paths]
        files = [(path, p) for path, p in places if not p.is_dir]
        dirs = [(path, p) for path, p in places if p.is_dir]
        if files:
            self.emit(None, [self.file_entry(path, p) for path, p in files])
        label = len(places) > 1 or self.recursive
        for path, p in dirs:
            cat = self.catalog(p)
            self.tree(cat, os.fsencode(path), "/" + p.rel if p.rel else "/", p.ino, pins.resolve(cat, p.ino), label)

    def file_entry(self, path: str, p: Place) -> Entry:
        cat = self.catalog(p)
        return Entry(os.fsencode(path), os.fsencode(path), cat.get(p.ino), pins.resolve(cat, p.ino), "/" + p.rel)

    def tree(self, cat, path: bytes, rel: str, ino: int, pin: pins.Pin, label: bool) -> None:
        """List directory `path` (mount-relative `rel`, inode `ino`, pin `pin`) and, with -r, below it,
        depth first in name order, one catalog query per directory."""
        stack = [(path, rel, ino, pin)]
        while stack:
            path, rel, ino, pin = stack.pop()
            if not os.access(path, os.R_OK | os.X_OK):
                self.errors.append(CliError(f"{os.fsdecode(path)}: cannot open directory: permission denied",
                                            client.EXIT_PERMISSION))
                continue
            entries = []
            for x in cat.list_dir(ino, [xattrs.PIN]):
                name_rel = rel.rstrip("/") + "/" + os.fsdecode(x.name)
                entries.append(Entry(os.path.join(path, x.name), x.name, x.inode,
                                     pin.below(x.xattrs.get(xattrs.PIN), name_rel), name_rel))
            self.emit(path if label else None, entries)
            if self.recursive:
                stack += [(e.path, e.rel, e.inode.ino, e.pin) for e in reversed(entries) if e.inode.is_dir()]

    def emit(self, heading: bytes | None, entries: list[Entry]) -> None:
        if self.as_json:
            self.rows += [_json(e) for e in entries]
            return
        if self.blocks:
            echo()
        self.blocks += 1
        if heading is not None:
            echo(os.fsdecode(heading) + ":")
        _print(entries, self.long)


@click.command("ls", context_settings=CONTEXT)
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("-l", "long", is_flag=True, help="Also mode, owner, group, archive copies, stub and mtime.")
@click.option("-r", "-R", "--recursive", is_flag=True, help="List subdirectories too (one query per directory).")
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per entry (path, path_b64 when "
              "the name is not UTF-8).")
@config_option()
def ls(paths, long, recursive, as_json, config_path):
    """List directories with each entry's state, tier, size, last access and pin.

    \b
    Columns:     STATE TIER SIZE ACCESSED PIN NAME
    with -l:     MODE OWNER GROUP STATE TIER SIZE COPIES STUB MODIFIED ACCESSED PIN NAME
    STATE is the file's state (online, dual, archived, ...), or dir, link...
    TIER holds its bytes (the archive tier once archived); COPIES: every
    archive tier with a copy; STUB: bytes kept online while archived.
    PIN: pin (its own user.tierfs.pin), pin^ (inherited from a directory
    above: --json says which, in pin_from), - (not pinned).

    Reads the mount's catalog, one query per directory, so a directory of
    100,000 files lists in seconds. ACCESSED is the catalog's, which the
    mount updates every atime_flush (60 s by default); `tierfs state`
    shows the mount's current value.

    \b
    Examples:
      tierfs ls ~/tierfs
      tierfs ls -l /mnt/lab/project/data.bin
      tierfs ls -lr --json /mnt/lab/project | jq '.[] | select(.state == "archived") | .path'
    """
    lister = Lister(config_path, long, recursive, as_json)
    try:
        lister.run(paths or (".",))
    finally:
        lister.close()
    if as_json:
        click.echo(json.dumps(lister.rows, indent=1))
    for err in lister.errors:
        echo(f"tierfs: {err}", err=True)
    if lister.errors:
        sys.exit(lister.errors[0].code)


COMMANDS = (ls,)
