"""Per-directory placement: which online tier new files go to.

A directory's `user.tierfs.placement` xattr names a tier; it is inherited by
everything created below it (files and subdirectories) until another
directory overrides it. Without one, `default_tier` applies. Users may only
place on (and create files on) tiers whose allow_users/allow_groups admit
them: otherwise EACCES and one log line saying why.

Effective placements are cached per directory; any placement change or
directory rename clears the cache (shared catalogs also expire it).
"""

from __future__ import annotations

import logging
import time

from . import errors, xattrs
from .requests import tier_allows
from .catalog.base import ROOT_INO, Inode

log = logging.getLogger(__name__)



class Placer:
    def __init__(self, fs):
        self.fs = fs
        self._cache: dict[int, tuple[str | None, int | None, float]] = {}  # dir -> (tier, source dir, fetched)

    def forget(self) -> None:
        self._cache.clear()

    async def _own(self, ino: int) -> str | None:
        try:
            return (await self.fs.cat(self.fs.catalog.getxattr, ino, xattrs.PLACEMENT)).decode()
        except errors.NoAttr:
            return None

    async def effective(self, dir_ino: int) -> tuple[str, int | None]:
        """(tier name, directory it comes from or None for default_tier)."""
        chain = []
        ino = dir_ino
        found: tuple[str | None, int | None] = (None, None)
        now = time.monotonic()
        while True:
            c = self._cache.get(ino)
            if c is not None and now - c[2] < self.fs.cache_ttl:
                found = (c[0], c[1])
                break
            chain.append(ino)
            own = await self._own(ino)
            if own is not None and own in self.fs.tiers:
                found = (own, ino)
                break
            if ino == ROOT_INO:
                break
            try:
                ino = await self.fs.cat(self.fs.catalog.parent_of, ino)
            except errors.NotFound:
                break
        for d in chain:
            self._cache[d] = (found[0], found[1], now)
        return (found[0] or self.fs.cfg.default_tier), found[1]

    async def for_new_file(self, parent: Inode, caller):
        """The tier a file created in `parent` by `caller` goes to (EACCES if denied)."""
        name, src = await self.effective(parent.ino)
        tier = self.fs.tier(name)
        if not tier_allows(tier, caller):
            log.warning("uid %d may not create files on tier %s (placement of directory inode %s; "
                        "allow_users/allow_groups)", caller.uid, name, src)
            raise errors.PermissionDenied(f"uid {caller.uid} may not store files on tier {name}")
        return tier

    async def validate(self, inode: Inode, value: bytes, caller) -> None:
        if not inode.is_dir():
            raise errors.Invalid("placement applies to directories")
        name = value.decode("utf-8", "replace").strip()
        tier = self.fs.tiers.get(name)
        if tier is None:
            raise errors.Invalid(f"no tier named {name!r}")
        if tier.archive:
            raise errors.Invalid(f"tier {name!r} is an archive tier; place directories on online tiers")
        if caller.uid != 0 and caller.uid != inode.uid:
            raise errors.PermissionDenied("only the directory's owner or root may set its placement")
        if not tier_allows(tier, caller):
            log.warning("uid %d may not place directory inode %d on tier %s (allow_users/allow_groups)",
                        caller.uid, inode.ino, name)
            raise errors.PermissionDenied(f"uid {caller.uid} may not use tier {name}")
