"""The policy criteria table: each condition a [[policy]] rule can have,
written once (Robinhood keeps one criteria table too).

An entry says, for one criterion:
- parse: its keys of the validated table (settings.PolicyTable) -> the
  Rule's fields, with the checks that need the rest of the config (a tier
  name, a user); ConfigError naming the rule and the key;
- active: whether a rule uses it;
- query: its part of the catalog query (FileQuery). `indexed` entries may
  drive the query; exactly one does (conditions.Matcher.query says why),
  the first active one in table order;
- check: the per-candidate test on the inode's fields (False: the file is
  skipped, counted under `skip`), in ascending `cost` (which decides the
  skip reason of a file failing several; ties keep table order);
- path_check: the test on the file's path relative to the mount;
- facts_check: the test on what the catalog says beyond the inode (the
  file's and its directories' xattrs: conditions.Facts): None when the file
  fails, else what matched;
- reason: what matched, for `--dry-run` and the job's cause, in table order
  (then what facts_check matched).

rules.parse_rule, Matcher.query, Matcher._field_checks, Matcher._path_check,
Matcher.evaluate and Matcher._reasons iterate this table; a new criterion is one entry here
(plus its key in settings.PolicyTable and, if the catalog can serve it, a
FileQuery field).
"""

from __future__ import annotations

import datetime
import grp
import posixpath
import pwd
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .. import errors, xattrs
from ..units import duration_value, fmt_duration, fmt_size

if TYPE_CHECKING:
    from ..catalog.base import Decidable, FileQuery
    from ..settings import PolicyTable
    from .conditions import Facts, Matcher
    from .rules import Rule

NS = 1_000_000_000


def size_text(n: int) -> str:
    """5200000 -> '5.2MB', 5000000 -> '5MB'."""
    return fmt_size(n).replace(".0", "")


def day_text(t_ns: int) -> str:
    """The local date of a time: '2026-07-24'."""
    return datetime.datetime.fromtimestamp(t_ns / NS).strftime("%Y-%m-%d")


@dataclass
class Context:
    """What parsing a criterion needs besides the table: the rule's label and the tiers."""
    label: str                       # "policy 'cold'" or "policy #2"
    archive: dict[str, bool]         # tier name -> is an archive tier
    raw: dict                        # the table as written (rule.text shows values so)

    def key(self, k: str) -> str:
        return f"{self.label}: {k}"


@dataclass
class Inactivity:
    """The inactivity a candidate was judged by: the rule's, or a directory's override."""
    seconds: float | None
    override_from: str | None = None     # the directory whose user.tierfs.inactive_for applied


@dataclass(frozen=True)
class Criterion:
    key: str
    parse: Callable[["PolicyTable", "Rule", Context], None]
    active: Callable[["Rule"], bool]
    query: Callable[["FileQuery", "Matcher"], None] | None = None
    indexed: bool = False
    check: Callable[["Decidable", "Matcher"], bool] | None = None
    cost: int = 0
    skip: str = ""
    path_check: Callable[[str, "Matcher"], bool] | None = None
    facts_check: Callable[["Facts", "Matcher"], list[str] | None] | None = None
    reason: Callable[["Decidable", "Matcher", Inactivity], list[str]] | None = None


# ---- parsing helpers --------------------------------------------------------------------
def _text(v) -> str:
    return v if isinstance(v, str) else str(v)


def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def _names(v, key: str, lookup) -> list[int]:
    vals = v if isinstance(v, list) else [v]
    if not vals:
        raise errors.ConfigError(f"{key}: expected a name or id, got an empty list")
    out = []
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, (str, int)):
            raise errors.ConfigError(f"{key}: expected a name or numeric id, got {x!r}")
        if isinstance(x, int) or x.isdigit():
            out.append(int(x))
            continue
        try:
            out.append(lookup(x))
        except KeyError:
            raise errors.ConfigError(f"{key}: no such {'user' if lookup is _uid else 'group'} {x!r}") from None
    return out


def _globs(v, key: str) -> list[str]:
    vals = [v] if isinstance(v, str) else v
    if not isinstance(vals, list) or not vals or not all(isinstance(x, str) and x.strip("/") for x in vals):
        raise errors.ConfigError(f"{key}: expected a glob or a list of globs like \"*.raw\", got {v!r}")
    return [x.strip("/") for x in vals]


def _local_midnight_ns(d: datetime.date) -> int:
    return int(datetime.datetime(d.year, d.month, d.day).astimezone().timestamp() * NS)


# ---- the criteria -----------------------------------------------------------------------------
def _parse_duration_key(k: str) -> Callable:
    def parse(t: "PolicyTable", rule: "Rule", cx: Context) -> None:
        if getattr(t, k) is not None:
            setattr(rule, k, getattr(t, k))
            rule.text[k] = _text(cx.raw[k])
    return parse


def _parse_modified(t: "PolicyTable", rule: "Rule", cx: Context) -> None:
    v = t.modified_before
    if v is None:
        return
    rule.text["modified_before"] = _text(v)
    if isinstance(v, datetime.datetime):
        rule.modified_date_ns = int((v if v.tzinfo else v.astimezone()).timestamp() * NS)
        return
    if isinstance(v, datetime.date):
        rule.modified_date_ns = _local_midnight_ns(v)
        return
    if isinstance(v, str):
        try:
            rule.modified_date_ns = _local_midnight_ns(datetime.date.fromisoformat(v.strip()))
            return
        except ValueError:
            pass
    try:
        rule.modified_age = duration_value(v)
    except ValueError:
        raise errors.ConfigError(f"{cx.key('modified_before')}: expected a duration like '30d' or a date like "
                                 f"2024-01-01, got {v!r}") from None


def _parse_size(t: "PolicyTable", rule: "Rule", cx: Context) -> None:
    for k in ("min_size", "max_size"):
        if getattr(t, k) is not None:
            setattr(rule, k, getattr(t, k))
            rule.text[k] = _text(cx.raw[k])
    if rule.min_size is not None and rule.max_size is not None and rule.min_size > rule.max_size:
        raise errors.ConfigError(f"{cx.key('min_size')}: {rule.text['min_size']} is larger than max_size "
                                 f"{rule.text['max_size']}: no file can match")


def _parse_tier(t: "PolicyTable", rule: "Rule", cx: Context) -> None:
    if t.tier is None:
        return
    if not isinstance(t.tier, str) or t.tier not in cx.archive:
        raise errors.ConfigError(f"{cx.key('tier')}: no tier named {t.tier!r} (tiers: {', '.join(cx.archive)})")
    rule.tier, rule.tier_is_archive = t.tier, cx.archive[t.tier]
    rule.text["tier"] = t.tier
    if rule.tier_is_archive and rule.action in ("archive", "migrate"):
        raise errors.ConfigError(f"{cx.key('tier')}: {t.tier!r} is an archive tier; files there are not "
                                 f"online, so action {rule.action!r} never applies")


def _parse_ids(k: str, field: str, lookup) -> Callable:
    def parse(t: "PolicyTable", rule: "Rule", cx: Context) -> None:
        if getattr(t, k) is not None:
            setattr(rule, field, _names(getattr(t, k), cx.key(k), lookup))
            rule.text[k] = _text(getattr(t, k))
    return parse


def _parse_scope(t: "PolicyTable", rule: "Rule", cx: Context) -> None:
    s = t.scope
    if s is None:
        return
    if not isinstance(s, str) or not s.startswith("/"):
        raise errors.ConfigError(f"{cx.key('scope')}: expected a directory relative to the mount starting "
                                 f"with '/', e.g. \"/projects/x\", got {s!r}")
    s = posixpath.normpath(s)
    rule.scope = "" if s == "/" else s
    rule.text["scope"] = s


def _parse_globs(k: str, field: str) -> Callable:
    def parse(t: "PolicyTable", rule: "Rule", cx: Context) -> None:
        if getattr(t, k) is not None:
            setattr(rule, field, _globs(getattr(t, k), cx.key(k)))
            rule.text[k] = " ".join(getattr(rule, field))
    return parse


def _parse_xattr(t: "PolicyTable", rule: "Rule", cx: Context) -> None:
    x = t.xattr
    if x is None:
        return
    if not isinstance(x, dict) or not x:
        raise errors.ConfigError(f"{cx.key('xattr')}: expected a table like {{ \"user.classification\" = "
                                 f"\"internal\" }}, got {x!r}")
    for n, v in x.items():
        if not n.startswith("user.") or n.startswith(xattrs.text(xattrs.PREFIX)):
            raise errors.ConfigError(f"{cx.key('xattr')}: {n!r}: only user.* attributes (not user.tierfs.*) "
                                     "can be matched")
        vals = v if isinstance(v, list) else [v]
        if not vals or not all(isinstance(s, str) for s in vals):
            raise errors.ConfigError(f"{cx.key('xattr')}.{n}: expected a string or a list of strings, got {v!r}")
        rule.xattrs[n.encode()] = [s.encode() for s in vals]
    rule.text["xattr"] = ", ".join(f"{n}={'|'.join(v if isinstance(v, list) else [v])}" for n, v in x.items())


def _xattrs_match(f: "Facts", m: "Matcher") -> list[str] | None:
    """Each xattr of the rule has an accepted value on the file or, if unset there, on its
    nearest directory that sets it."""
    matched = []
    for name, accepted in m.rule.xattrs.items():
        v = f.own.get(name)
        if v is None:
            found = f.dir.inherited(name)
            v = found[0] if found else None
        if v not in accepted:
            return None
        matched.append(f"{name.decode()}={v.decode(errors='replace')}")
    return matched


def _inactive_reason(inode: "Decidable", m: "Matcher", why: Inactivity) -> list[str]:
    note = f" (user.tierfs.inactive_for on {why.override_from})" if why.override_from else ""
    shown = fmt_duration(why.seconds) if why.override_from else m.rule.text["inactive_for"]
    return [f"not accessed or modified for {fmt_duration((m.now_ns - inode.last_access_ns) / NS)} "
            f"(since {day_text(inode.last_access_ns)}) > {shown}{note}"]


def _set_tier(q: "FileQuery", m: "Matcher") -> None:
    if m.rule.tier_is_archive:
        q.archive_tier = m.rule.tier
    else:
        q.tier = m.rule.tier


def _set_owner(q: "FileQuery", m: "Matcher") -> None:
    if len(m.rule.owners) == 1:
        q.uid = m.rule.owners[0]


def _set_group(q: "FileQuery", m: "Matcher") -> None:
    if len(m.rule.groups) == 1:
        q.gid = m.rule.groups[0]


def _set_mtime(q: "FileQuery", m: "Matcher") -> None:
    r = m.rule
    q.mtime_before_ns = m.now_ns - int(r.modified_age * NS) if r.modified_age is not None else r.modified_date_ns


def _modified_reason(inode: "Decidable", m: "Matcher", why: Inactivity) -> list[str]:
    r = m.rule
    if r.modified_age is not None:
        return [f"modified {fmt_duration((m.now_ns - inode.mtime_ns) / NS)} ago > {r.text['modified_before']}"]
    return [f"modified {day_text(inode.mtime_ns)} < {r.text['modified_before']}"]


def _size_reason(inode: "Decidable", m: "Matcher", why: Inactivity) -> list[str]:
    r = m.rule
    return ([f"size {size_text(inode.size)} >= {r.text['min_size']}"] if r.min_size is not None else []) + \
        ([f"size {size_text(inode.size)} <= {r.text['max_size']}"] if r.max_size is not None else [])


def _set_size(q: "FileQuery", m: "Matcher") -> None:
    q.min_size, q.max_size = m.rule.min_size, m.rule.max_size


def _size_ok(inode: "Decidable", m: "Matcher") -> bool:
    r = m.rule
    return not (r.min_size is not None and inode.size < r.min_size or r.max_size is not None and inode.size > r.max_size)


def _in_scope(path: str, m: "Matcher") -> bool:
    s = m.rule.scope
    return path == s or path.startswith(s + "/")


CRITERIA: tuple[Criterion, ...] = (
    Criterion(
        "inactive_for", _parse_duration_key("inactive_for"), lambda r: r.inactive_for is not None,
        query=lambda q, m: setattr(q, "last_access_before_ns", m.inactive_since(m.query_inactive)), indexed=True,
        check=lambda inode, m: m.is_inactive(inode, m.query_inactive), cost=1, skip="inactive",
        reason=_inactive_reason),
    Criterion(
        "older_than", _parse_duration_key("older_than"), lambda r: r.older_than is not None,
        query=lambda q, m: setattr(q, "crtime_before_ns", m.now_ns - int(m.rule.older_than * NS)),
        reason=lambda inode, m, why: [f"created {fmt_duration((m.now_ns - inode.crtime_ns) / NS)} ago > "
                                      f"{m.rule.text['older_than']}"]),
    Criterion(
        "modified_before", _parse_modified,
        lambda r: r.modified_age is not None or r.modified_date_ns is not None,
        query=_set_mtime, reason=_modified_reason),
    Criterion(
        "size", _parse_size, lambda r: r.min_size is not None or r.max_size is not None,
        query=_set_size, indexed=True, check=_size_ok, cost=0, skip="size", reason=_size_reason),
    Criterion(
        "tier", _parse_tier, lambda r: r.tier is not None, query=_set_tier, indexed=True,
        check=lambda inode, m: (inode.archive_tier if m.rule.tier_is_archive else inode.tier) == m.rule.tier,
        cost=2, skip="tier", reason=lambda inode, m, why: [f"tier {m.rule.tier}"]),
    Criterion(
        "owner", _parse_ids("owner", "owners", _uid), lambda r: r.owners is not None, query=_set_owner,
        check=lambda inode, m: inode.uid in m.rule.owners, cost=3, skip="owner",
        reason=lambda inode, m, why: [f"owner {m.rule.text['owner']}"]),
    Criterion(
        "group", _parse_ids("group", "groups", _gid), lambda r: r.groups is not None, query=_set_group,
        check=lambda inode, m: inode.gid in m.rule.groups, cost=4, skip="group",
        reason=lambda inode, m, why: [f"group {m.rule.text['group']}"]),
    Criterion(
        "scope", _parse_scope, lambda r: r.scope is not None, path_check=_in_scope, skip="scope",
        reason=lambda inode, m, why: [f"under {m.rule.text['scope']}"]),
    Criterion(
        "path", _parse_globs("path", "paths"), lambda r: bool(r.paths),
        path_check=lambda path, m: m.paths.match(path[1:]), skip="path",
        reason=lambda inode, m, why: [f"path {m.rule.text['path']}"]),
    Criterion(
        "exclude", _parse_globs("exclude", "excludes"), lambda r: bool(r.excludes),
        path_check=lambda path, m: not m.excludes.match(path[1:]), skip="excluded"),
    Criterion("xattr", _parse_xattr, lambda r: bool(r.xattrs), facts_check=_xattrs_match, skip="xattr"),
)

#: the per-candidate field checks, cheapest first
FIELD_CHECKS: tuple[Criterion, ...] = tuple(sorted((c for c in CRITERIA if c.check), key=lambda c: c.cost))
