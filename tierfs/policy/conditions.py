"""Conditions of a rule: an indexed catalog query plus per-candidate checks.

The query (state, size, last access, creation, modification, tier, owner)
is what the catalog's indexes serve, so a run reads only the candidates.
Inactivity (inactive_for, its per-directory overrides, the order of
watermark runs) is measured from an inode's last access or modification,
whichever is later (Inode.last_access_ns): a file written a minute ago is
active however long ago it was read.
Everything the catalog cannot index is checked per candidate, cheapest
first: path and scope globs, pins (`user.tierfs.pin = 1` on the file or any
directory above it), xattr matches (inherited from directories), per-
directory overrides of inactive_for (`user.tierfs.inactive_for`), and
"already has a queued job". Directory facts are cached for one run.

Each accepted candidate comes with the values that matched, e.g.
["not accessed or modified for 120d (since 2026-07-24) > 90d",
"size 5.2MB >= 1MB"]: what `--dry-run` prints and what the job's cause
(and so `tierfs state`) says.
"""

from __future__ import annotations

import os
import posixpath
import re
import time
from dataclasses import dataclass, field

from .. import errors, xattrs
from ..catalog.base import ACTIVE_JOB_STATES, ROOT_INO, Decidable, FileQuery, State, missing_targets
from ..pins import is_pinned
from ..units import duration_value
from .criteria import CRITERIA, FIELD_CHECKS, Inactivity, size_text  # noqa: F401 - size_text: for the CLI
from .rules import Rule

#: states a file must be in for each action to apply
ACTION_STATES = {
    "archive": (State.ONLINE, State.DUAL),
    "archive+keep": (State.ONLINE,),
    "release": (State.DUAL,),
    "migrate": (State.ONLINE, State.DUAL),
    "delete": (State.ONLINE, State.DUAL, State.ARCHIVED, State.LOST),
}
DIR_CACHE_MAX = 100_000
NS = 1_000_000_000


def compile_glob(pattern: str) -> re.Pattern:
    """Shell-style glob: `*` and `?` stay within one path component, `**`
    crosses them, `[abc]` / `[!abc]` are classes."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 2)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.S)


class Globs:
    """Patterns with a "/" match the path relative to the mount; without
    one they match the file name (as in .gitignore)."""

    def __init__(self, patterns: list[str]):
        self.full = [compile_glob(p) for p in patterns if "/" in p]
        self.name = [compile_glob(p) for p in patterns if "/" not in p]

    def match(self, rel: str) -> bool:
        base = rel.rsplit("/", 1)[-1]
        return any(p.match(rel) for p in self.full) or any(p.match(base) for p in self.name)


@dataclass
class DirFacts:
    """What one directory contributes to the files below it."""

    ino: int
    path: str                          # "/a/b" ("" for the root)
    parent: "DirFacts | None"
    own: dict[bytes, bytes] = field(default_factory=dict)   # interesting xattrs set on this directory

    def inherited(self, name: bytes) -> tuple[bytes, str] | None:
        """(value, directory path) of the nearest definition of `name`."""
        d = self
        while d is not None:
            if name in d.own:
                return d.own[name], d.path or "/"
            d = d.parent
        return None


@dataclass
class Facts:
    """What the catalog says about one candidate beyond its inode."""

    path: str                          # "/a/b/file"
    parent: int                        # directory holding that name
    skip: str | None = None            # set when the path alone excludes it (scope, globs)
    dir: DirFacts | None = None
    own: dict[bytes, bytes] = field(default_factory=dict)   # interesting xattrs of the file
    queued: bool = False               # an active job exists for it


#: Prefetched facts older than this are read again: a run whose actions are slow (a rate limit, a busy
#: catalog) must not act on a pin or override set since its page was read. A page of 500 is otherwise
#: worked through in 0.02-0.2 s.
FRESH_S = 1.0


class Lookups:
    """Per-run catalog lookups for candidates, with directory facts cached.

    The lookups of a page of candidates happen in one worker-thread call
    (prefetch): a thread hop costs more than the indexed reads themselves
    (10M entries, a rule of 100,000 candidates, warm: 17.9 s with one hop
    per candidate, py-spy putting most of it in trio's hand-over, not the
    catalog); directories are read once per run."""

    def __init__(self, cat, catalog, rules: list[Rule]):
        self.cat = cat
        self.catalog = catalog
        self.names = {xattrs.PIN, xattrs.INACTIVE_FOR}
        for r in rules:
            self.names.update(r.xattrs)
        self.dirs: dict[int, DirFacts] = {}
        # prefetch's results: (when read, the path check they were made with, ino -> facts); one page's
        self.ready: tuple[float, object, dict[int, Facts | None]] = (0.0, None, {})

    async def prefetch(self, inos: list[int], path_check) -> None:
        """Read the facts of `inos` in one worker-thread call, for facts()
        to hand out (each once, for the same path_check, while FRESH_S old);
        the previous page's that were not asked for are dropped."""
        self.ready = (0.0, None, {})
        if inos:
            got = await self.cat(self._facts_page, inos, path_check)
            self.ready = (time.monotonic(), path_check, got)

    async def facts(self, ino: int, path_check) -> Facts | None:
        """None when the file has no name any more; path_check(path) -> skip reason or None."""
        at, check, got = self.ready
        if ino in got and check == path_check:
            f = got.pop(ino)
            if time.monotonic() - at < FRESH_S:
                return f
        return await self.cat(self._facts, ino, path_check)

    def _facts_page(self, inos: list[int], path_check) -> dict[int, Facts | None]:
        """_facts of each of `inos`, the catalog read in bulk: their names, their directories' paths
        (level by level), their attributes and their queued jobs, a few queries for the page instead of
        five or more round trips per file (MongoDB: parent_of, path_of per level, listxattr, jobs).
        Directories' paths are resolved again for each page, so a directory renamed during a run is
        seen under its new name from the next page on, as _facts would."""
        c = self.catalog
        names = c.names_of(inos)
        dirs = c.paths_of({parent for parent, _ in names.values()}, {})
        out: dict[int, Facts | None] = {}
        live: dict[int, Facts] = {}   # those the path does not exclude
        for ino in inos:
            parent, name = names.get(ino, (None, b""))
            head = dirs.get(parent)
            if head is None:
                out[ino] = None   # no name any more (or its directory has none)
                continue
            path = "/" + os.fsdecode(head + b"/" + name if head else name)
            f = out[ino] = Facts(path=path, parent=parent, skip=path_check(path))
            if not f.skip:
                live[ino] = f
        if live:
            own = c.xattrs_of(live, self.names)
            queued = c.with_active_jobs(live)
            self._prefetch_dirs({f.parent: _dirname(f.path) for f in live.values()})
            for ino, f in live.items():
                f.dir = self._dir(f.parent, _dirname(f.path))
                f.own = own.get(ino, {})
                f.queued = ino in queued
        return out

    def _facts(self, ino: int, path_check) -> Facts | None:
        c = self.catalog
        try:
            path = "/" + os.fsdecode(c.path_of(ino))
            f = Facts(path=path, parent=c.parent_of(ino))
        except errors.NotFound:
            return None
        f.skip = path_check(path)
        if f.skip:
            return f
        f.dir = self._dir(f.parent, _dirname(path))
        f.own = self._xattrs(ino)
        f.queued = bool(c.jobs(ACTIVE_JOB_STATES, ino, 1))
        return f

    def _xattrs(self, ino: int) -> dict[bytes, bytes]:
        out = {}
        for n in self.catalog.listxattr(ino):
            if n in self.names:
                try:
                    out[n] = self.catalog.getxattr(ino, n)
                except errors.NoAttr:
                    pass
        return out

    def _prefetch_dirs(self, wanted: dict[int, str]) -> None:
        """The DirFacts of these directories (ino -> path) and of their ancestors, into the run's cache,
        read in bulk: their parents and attributes, two queries per level of the tree instead of two or
        three round trips per directory (10,000 candidates in 1,000 directories, MongoDB 2 ms away: most
        of a dry run's time). What cannot be resolved so is left to _dir."""
        if len(self.dirs) + len(wanted) > DIR_CACHE_MAX:
            self.dirs.clear()
        levels = []
        todo = {d: p for d, p in wanted.items() if d not in self.dirs}
        seen = set(todo)
        while todo:
            up = self.catalog.names_of(d for d in todo if d != ROOT_INO)
            own = self.catalog.xattrs_of(todo, self.names)
            levels.append((todo, up, own))
            todo = {}
            for d, p in levels[-1][0].items():
                parent = up.get(d, (None,))[0]
                if parent is not None and parent not in self.dirs and parent not in seen:
                    todo[parent] = _dirname(p)
                    seen.add(parent)
        for todo, up, own in reversed(levels):   # from the top down: each parent's facts before its children's
            for d, p in todo.items():
                parent = None if d == ROOT_INO else self.dirs.get(up.get(d, (None,))[0])
                if d == ROOT_INO or parent is not None:
                    self.dirs[d] = DirFacts(ino=d, path=p, parent=parent, own=own.get(d, {}))

    def _dir(self, ino: int, path: str) -> DirFacts:
        d = self.dirs.get(ino)
        if d is not None:
            return d
        if len(self.dirs) > DIR_CACHE_MAX:
            self.dirs.clear()
        parent = None if ino == ROOT_INO else self._dir(self.catalog.parent_of(ino), _dirname(path))
        d = DirFacts(ino=ino, path=path, parent=parent, own=self._xattrs(ino))
        self.dirs[ino] = d
        return d


def _dirname(path: str) -> str:
    """"/a/b" -> "/a"; "/a" -> "" (the root)."""
    return posixpath.dirname(path) if path.count("/") > 1 else ""


class Matcher:
    """One rule compiled for one run (at time `now_ns`); `tier`: only files
    whose online copy is on this tier, least recently used (accessed or
    modified) first (watermark runs)."""

    def __init__(self, rule: Rule, now_ns: int, tier: str | None = None):
        self.rule = rule
        self.now_ns = now_ns
        self.only_tier = tier
        self.paths = Globs(rule.paths) if rule.paths else None
        self.excludes = Globs(rule.excludes) if rule.excludes else None
        inactive = rule.inactive_for
        if inactive is not None and rule.allow_user_override:
            inactive = min(inactive, rule.min_override)   # users may shorten down to min_override
        self.query_inactive = inactive

    def states(self) -> tuple[State, ...]:
        r = self.rule
        return ACTION_STATES["archive+keep" if r.action == "archive" and r.keep_online else r.action]

    def query(self, *, limit: int | None = None, state: State | None = None) -> FileQuery:
        """The indexed part of the rule (`state`: only that one of its states).

        Exactly one indexed condition drives the query, in this order:
        last access, size, tier. Without statistics on value ranges
        (SQLite has none unless built with STAT4) a planner cannot tell
        whether (state, last access), (state, size) or (tier) is the
        narrowest index, and measured it walking the wide one (100x the
        work on 100k files); with one driver there is no such choice. The
        size rides along with a last-access driver outside watermark runs:
        (state, last access, size) tests it on its entries, so only the
        rows of candidates are read (10M entries, 100,000 candidates:
        100,000 rows instead of the 908,000 inactive ones).
        Watermark runs walk (state, last access) in order, one state per
        query (with several states no index yields that order, and a
        planner may sort them all), stopping at `limit`. The other
        conditions are checked on the returned rows (_field_checks), which
        costs nothing more than reading them."""
        q = FileQuery(states=(state,) if state is not None else self.states(), limit=limit,
                      order_by_last_access=self.only_tier is not None, regular_only=True)
        active = [c for c in CRITERIA if c.query is not None and c.active(self.rule)]
        # The driver: the first indexed criterion; a watermark run walks (state, last access) in
        # order, so only inactive_for (a bound on that same order) may drive it.
        drivers = [c for c in active if c.indexed and (self.only_tier is None or c.key == "inactive_for")]
        riders = {"size"} if drivers and drivers[0].key == "inactive_for" and self.only_tier is None else set()
        for c in active:
            if not c.indexed or drivers and c is drivers[0] or c.key in riders:
                c.query(q, self)
        return q

    def inactive_since(self, inactive_for: float) -> int:
        """The time a file inactive for `inactive_for` seconds was last used
        by: its last access or modification must be before it."""
        return self.now_ns - int(inactive_for * NS)

    def is_inactive(self, inode: Decidable, inactive_for: float) -> bool:
        """Neither read nor written for `inactive_for` seconds."""
        return inode.last_access_ns < self.inactive_since(inactive_for)

    def _field_checks(self, inode: Decidable) -> str | None:
        r = self.rule
        for c in FIELD_CHECKS:
            if c.active(r) and not c.check(inode, self):
                return c.skip
        if self.only_tier is not None and inode.tier != self.only_tier:
            return "other tier"
        if r.action == "migrate" and inode.tier == r.to:
            return "already there"
        if r.action == "archive" and inode.state == State.DUAL and not missing_targets(inode, r.targets) \
                and r.keep_online:
            return "already there"
        return None

    def _reasons(self, inode: Decidable, why: Inactivity) -> list[str]:
        return [text for c in CRITERIA if c.reason is not None and c.active(self.rule)
                for text in c.reason(inode, self, why)]

    def _path_check(self, path: str) -> str | None:
        for c in CRITERIA:
            if c.path_check is not None and c.active(self.rule) and not c.path_check(path, self):
                return c.skip
        return None

    async def prefetch(self, candidates: list[Decidable], lk: Lookups) -> None:
        """The catalog facts of those of `candidates` that pass the checks
        on their own fields, in one worker-thread call (Lookups.prefetch)."""
        await lk.prefetch([c.ino for c in candidates if self._field_checks(c) is None], self._path_check)

    async def evaluate(self, inode: Decidable, lk: Lookups) -> tuple[str | None, list[str], str, int]:
        """(skip reason or None, matched values, path, parent directory). Cheapest checks first."""
        r = self.rule
        skip = self._field_checks(inode)
        if skip:
            return skip, [], "", 0
        f = await lk.facts(inode.ino, self._path_check)
        if f is None:
            return "gone", [], "", 0
        path, parent, d, own = f.path, f.parent, f.dir, f.own
        if f.skip:
            return f.skip, [], path, parent
        pin = own.get(xattrs.PIN)
        if is_pinned(pin) or (pin is None and is_pinned((d.inherited(xattrs.PIN) or (None,))[0])):
            return "pinned", [], path, parent
        matched = []
        for c in CRITERIA:
            if c.facts_check is not None and c.active(r):
                got = c.facts_check(f, self)
                if got is None:
                    return c.skip, [], path, parent
                matched += got
        inactive, override_from = r.inactive_for, None
        if r.allow_user_override:
            found = d.inherited(xattrs.INACTIVE_FOR)
            if found is not None:
                try:
                    wanted = duration_value(found[0].decode(errors="replace").strip())
                except ValueError:
                    wanted = None   # unparsable: the administrator's value applies
                if wanted is not None:
                    inactive = max(wanted, r.min_override)
                    if r.max_override is not None:
                        inactive = min(inactive, r.max_override)
                    override_from = found[1]
            if not self.is_inactive(inode, inactive):
                return "override", [], path, parent
        if f.queued:
            return "queued", [], path, parent
        return None, self._reasons(inode, Inactivity(inactive, override_from)) + matched, path, parent
