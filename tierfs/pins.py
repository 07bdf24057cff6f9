"""Pins: the `user.tierfs.pin` attribute keeps policies away from a file,
or, set on a directory, from everything below it.

"1" pins; "0" (or "", "false", "no", "off") unpins explicitly, which
overrides a pin set higher up. The nearest definition decides: the file's
own attribute, else its directory's, else that directory's parent's, up to
the root. The policy engine (policy/conditions.py) applies this rule;
`tierfs state` (through user.tierfs.info) and `tierfs ls` show its result
with `Pin`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from . import errors, xattrs
from .catalog.base import ROOT_INO


def is_pinned(value: bytes | None) -> bool:
    """Whether a pin attribute's value pins (None: no attribute)."""
    return value is not None and value.strip().lower() not in (b"", b"0", b"false", b"no", b"off")


@dataclass(frozen=True)
class Pin:
    """The effective pin of one file or directory."""

    pinned: bool
    source: str | None = None   # path ("/a/b", "/" for the root) whose attribute decides; None: none anywhere above
    inherited: bool = False     # that path is a directory above, not the entry itself

    def below(self, own: bytes | None, path: str) -> "Pin":
        """The pin of an entry at `path` directly in the directory this is the pin of, whose own
        attribute is `own` (None: it has none)."""
        if own is not None:
            return Pin(is_pinned(own), path)
        return Pin(self.pinned, self.source, inherited=self.source is not None)

    def text(self) -> str:
        """"pinned", "pinned (from /a)", or "" (not pinned, or unpinned explicitly)."""
        if not self.pinned:
            return ""
        return f"pinned (from {self.source})" if self.inherited else "pinned"

    def fields(self) -> dict:
        """Its JSON fields: pinned; pin_from, the path whose attribute decides (null when none is
        set); pin_inherited, whether that is a directory above."""
        return {"pinned": self.pinned, "pin_from": self.source, "pin_inherited": self.inherited}

    @classmethod
    def of(cls, d: dict) -> "Pin":
        """The Pin whose fields() are in `d` (user.tierfs.info's JSON)."""
        return cls(bool(d.get("pinned")), d.get("pin_from"), bool(d.get("pin_inherited")))


def resolve(catalog, ino: int) -> Pin:
    """The pin of inode `ino`, from the catalog: its own attribute, else the
    nearest directory above that has one (a few indexed reads per level)."""
    holder = ino
    while True:
        try:
            value = catalog.getxattr(holder, xattrs.PIN)
        except errors.NoAttr:
            value = None
        if value is not None:
            return Pin(is_pinned(value), "/" + catalog.path_of(holder).decode("utf-8", "surrogateescape"),
                       inherited=holder != ino)
        if holder == ROOT_INO:
            return Pin(False)
        holder = catalog.parent_of(holder)

