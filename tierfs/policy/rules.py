"""[[policy]] tables -> validated Rule objects; tier watermarks.

A rule is: conditions (all optional, ANDed) + one action + triggers + limits.

    [[policy]]
    name = "cold"                   # required, unique; shown in `tierfs state` and logs
    action = "archive"              # archive | release | migrate | delete
    to = "vault"                    # archive: archive tier (default: default_archive); migrate: online tier
    keep_online = false             # archive: leave the file dual
    inactive_for = "90d"            # neither read nor written for this (Inode.last_access_ns: later of atime, mtime)
    older_than = "1y"               # created before now - this (crtime)
    modified_before = "30d"         # mtime older than this (a duration) or before a date ("2024-01-01")
    min_size = "1MB"                # size >= this
    max_size = "10GiB"              # size <= this
    path = ["*.raw", "data/**"]     # globs relative to the mount; without "/" they match the file name
    exclude = ["*.tmp"]             # same syntax; a match excludes the file
    scope = "/projects/x"           # only files under this directory of the mount
    owner = "alice"                 # user name or uid (or a list)
    group = "lab"                   # group name or gid (or a list)
    tier = "disk"                   # current tier (online, or the archive tier of archived files)
    xattr = { "user.classification" = "internal" }   # value, or a list of accepted values; inherited from dirs
    allow_user_override = false     # honour user.tierfs.inactive_for set on directories (inherited below)
    min_override = "7d"             # bounds for such overrides (default: inactive_for .. unbounded)
    max_override = "365d"
    interval = "1d"                 # run on this interval (none: only `tierfs policy run` and watermarks)
    initial_delay = "10m"           # not before this long after the mount starts
    watermark = true                # take part in watermark runs (default true for archive/release/migrate)
    max_files = 10000               # per run
    max_bytes = "1TB"               # per run
    rate = 20                       # moves per second per tier
    confirm_delete = false          # must be true for action = "delete"

Watermarks are keys of an online tier's table: `high_watermark = 0.90`,
`low_watermark = 0.75` (fractions of the tier's capacity in use).

Every error names the rule and the key and raises errors.ConfigError.
"""

from __future__ import annotations

import datetime
import difflib
import grp
import posixpath
import pwd
from dataclasses import dataclass, field

from .. import errors
from ..tiers import tier_class
from ..units import fmt_duration, parse_duration, parse_size

ACTIONS = ("archive", "release", "migrate", "delete")
#: actions that free space on the online tier a file is on (watermark runs use them)
FREEING = ("archive", "release", "migrate")

KEYS = {
    "name", "action", "to", "keep_online", "inactive_for", "older_than", "modified_before", "min_size",
    "max_size", "path", "exclude", "scope", "owner", "group", "tier", "xattr", "allow_user_override",
    "min_override", "max_override", "interval", "initial_delay", "watermark", "max_files", "max_bytes",
    "rate", "confirm_delete", "enabled",
}


@dataclass
class Rule:
    """One validated [[policy]] table. Durations in seconds, sizes in bytes."""

    name: str
    index: int                                  # position in the config (first rule = 0)
    action: str                                 # one of ACTIONS
    to: str | None = None                       # destination tier (archive, migrate)
    keep_online: bool = False
    inactive_for: float | None = None
    older_than: float | None = None
    modified_age: float | None = None           # modified_before given as a duration
    modified_date_ns: int | None = None         # modified_before given as a date
    min_size: int | None = None
    max_size: int | None = None
    paths: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    scope: str | None = None                    # "/projects/x" (normalised, no trailing slash)
    owners: list[int] | None = None
    groups: list[int] | None = None
    tier: str | None = None
    tier_is_archive: bool = False
    xattrs: dict[bytes, list[bytes]] = field(default_factory=dict)
    allow_user_override: bool = False
    min_override: float | None = None
    max_override: float | None = None
    interval: float | None = None
    initial_delay: float = 0.0
    watermark: bool = False
    max_files: int | None = None
    max_bytes: int | None = None
    rate: float | None = None
    confirm_delete: bool = False
    enabled: bool = True
    text: dict[str, str] = field(default_factory=dict)   # key -> value as written (for explanations)

    def describe(self) -> str:
        """One line for `tierfs policy check`."""
        conds = [f"{k} {v}" for k, v in self.text.items()]
        act = self.action + (f" to {self.to}" if self.to else "") + (" keep_online" if self.keep_online else "")
        trig = []
        if self.interval is not None:
            trig.append(f"every {fmt_duration(self.interval)}")
        if self.watermark:
            trig.append("watermarks")
        return (f"{self.name}: {act} where {', '.join(conds) or 'every file'}"
                f" [{', '.join(trig) or 'manual runs only'}]" + ("" if self.enabled else " (disabled)"))


def _label(raw: dict, index: int) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"policy '{name}'" if isinstance(name, str) and name else f"policy #{index + 1}"


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


def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def _globs(v, key: str) -> list[str]:
    vals = [v] if isinstance(v, str) else v
    if not isinstance(vals, list) or not vals or not all(isinstance(x, str) and x.strip("/") for x in vals):
        raise errors.ConfigError(f"{key}: expected a glob or a list of globs like \"*.raw\", got {v!r}")
    return [x.strip("/") for x in vals]


def _bool(v, key: str) -> bool:
    if not isinstance(v, bool):
        raise errors.ConfigError(f"{key}: expected true or false, got {v!r}")
    return v


def _count(v, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise errors.ConfigError(f"{key}: expected a positive integer, got {v!r}")
    return v


def _text(v) -> str:
    return v if isinstance(v, str) else str(v)


def _modified_before(v, key: str, rule: Rule) -> None:
    if isinstance(v, datetime.datetime):
        dt = v if v.tzinfo else v.astimezone()
        rule.modified_date_ns = int(dt.timestamp() * 1e9)
        return
    if isinstance(v, datetime.date):
        rule.modified_date_ns = int(datetime.datetime(v.year, v.month, v.day).astimezone().timestamp() * 1e9)
        return
    if isinstance(v, str):
        try:
            d = datetime.date.fromisoformat(v.strip())
        except ValueError:
            d = None
        if d is not None:
            rule.modified_date_ns = int(datetime.datetime(d.year, d.month, d.day).astimezone().timestamp() * 1e9)
            return
    try:
        rule.modified_age = parse_duration(v, key)
    except errors.ConfigError:
        raise errors.ConfigError(f"{key}: expected a duration like '30d' or a date like 2024-01-01, "
                                 f"got {v!r}") from None


def parse_rule(raw, index: int, cfg) -> Rule:
    """One [[policy]] table -> Rule (ConfigError naming the rule and key)."""
    label = _label(raw, index)
    if not isinstance(raw, dict):
        raise errors.ConfigError(f"{label}: expected a table")
    for k in raw:
        if k not in KEYS:
            close = difflib.get_close_matches(k, sorted(KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(KEYS))})"
            raise errors.ConfigError(f"{label}: {k}: unknown key{hint}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or "'" in name:
        raise errors.ConfigError(f"{label}: name: missing (every rule needs a name, e.g. name = \"cold\")"
                                 if name is None else f"{label}: name: expected a non-empty string without "
                                 f"quotes, got {name!r}")
    key = lambda k: f"{label}: {k}"  # noqa: E731
    action = raw.get("action")
    if action not in ACTIONS:
        raise errors.ConfigError(f"{key('action')}: expected one of {', '.join(ACTIONS)}, got {action!r}")
    rule = Rule(name=name, index=index, action=action)
    kinds = {n: tier_class(t.kind) for n, t in cfg.tiers.items()}

    # destination
    to = raw.get("to")
    if to is not None and not isinstance(to, str):
        raise errors.ConfigError(f"{key('to')}: expected a tier name, got {to!r}")
    if action == "archive":
        to = to or cfg.default_archive
        if to is None:
            raise errors.ConfigError(f"{key('to')}: missing, and no archive tier is configured")
        if to not in kinds or not kinds[to].archive:
            raise errors.ConfigError(f"{key('to')}: no archive tier named {to!r} "
                                     f"(archive tiers: {', '.join(n for n, c in kinds.items() if c.archive) or 'none'})")
    elif action == "migrate":
        if to is None:
            raise errors.ConfigError(f"{key('to')}: missing (migrate needs the online tier to move to)")
        if to not in kinds or kinds[to].archive:
            raise errors.ConfigError(f"{key('to')}: no online tier named {to!r} "
                                     f"(online tiers: {', '.join(n for n, c in kinds.items() if not c.archive)})")
    elif to is not None:
        raise errors.ConfigError(f"{key('to')}: action {action!r} takes no destination tier")
    rule.to = to
    if "keep_online" in raw:
        if action != "archive":
            raise errors.ConfigError(f"{key('keep_online')}: only for action = \"archive\"")
        rule.keep_online = _bool(raw["keep_online"], key("keep_online"))

    # conditions
    for k in ("inactive_for", "older_than"):
        if k in raw:
            setattr(rule, k, parse_duration(raw[k], key(k)))
            rule.text[k] = _text(raw[k])
    if "modified_before" in raw:
        _modified_before(raw["modified_before"], key("modified_before"), rule)
        rule.text["modified_before"] = _text(raw["modified_before"])
    for k in ("min_size", "max_size"):
        if k in raw:
            setattr(rule, k, parse_size(raw[k], key(k)))
            rule.text[k] = _text(raw[k])
    if rule.min_size is not None and rule.max_size is not None and rule.min_size > rule.max_size:
        raise errors.ConfigError(f"{key('min_size')}: {rule.text['min_size']} is larger than max_size "
                                 f"{rule.text['max_size']}: no file can match")
    if "path" in raw:
        rule.paths = _globs(raw["path"], key("path"))
        rule.text["path"] = " ".join(rule.paths)
    if "exclude" in raw:
        rule.excludes = _globs(raw["exclude"], key("exclude"))
        rule.text["exclude"] = " ".join(rule.excludes)
    if "scope" in raw:
        s = raw["scope"]
        if not isinstance(s, str) or not s.startswith("/"):
            raise errors.ConfigError(f"{key('scope')}: expected a directory relative to the mount starting "
                                     f"with '/', e.g. \"/projects/x\", got {s!r}")
        s = posixpath.normpath(s)
        rule.scope = "" if s == "/" else s
        rule.text["scope"] = s
    if "owner" in raw:
        rule.owners = _names(raw["owner"], key("owner"), _uid)
        rule.text["owner"] = _text(raw["owner"])
    if "group" in raw:
        rule.groups = _names(raw["group"], key("group"), _gid)
        rule.text["group"] = _text(raw["group"])
    if "tier" in raw:
        t = raw["tier"]
        if not isinstance(t, str) or t not in kinds:
            raise errors.ConfigError(f"{key('tier')}: no tier named {t!r} (tiers: {', '.join(kinds)})")
        rule.tier, rule.tier_is_archive = t, kinds[t].archive
        rule.text["tier"] = t
        if rule.tier_is_archive and action in ("archive", "migrate"):
            raise errors.ConfigError(f"{key('tier')}: {t!r} is an archive tier; files there are not "
                                     f"online, so action {action!r} never applies")
    if "xattr" in raw:
        x = raw["xattr"]
        if not isinstance(x, dict) or not x:
            raise errors.ConfigError(f"{key('xattr')}: expected a table like {{ \"user.classification\" = "
                                     f"\"internal\" }}, got {x!r}")
        for n, v in x.items():
            if not n.startswith("user.") or n.startswith("user.tierfs."):
                raise errors.ConfigError(f"{key('xattr')}: {n!r}: only user.* attributes (not user.tierfs.*) "
                                         "can be matched")
            vals = v if isinstance(v, list) else [v]
            if not vals or not all(isinstance(s, str) for s in vals):
                raise errors.ConfigError(f"{key('xattr')}.{n}: expected a string or a list of strings, got {v!r}")
            rule.xattrs[n.encode()] = [s.encode() for s in vals]
        rule.text["xattr"] = ", ".join(f"{n}={'|'.join(v if isinstance(v, list) else [v])}" for n, v in x.items())

    # user overrides
    if "allow_user_override" in raw:
        rule.allow_user_override = _bool(raw["allow_user_override"], key("allow_user_override"))
    for k in ("min_override", "max_override"):
        if k in raw:
            if not rule.allow_user_override:
                raise errors.ConfigError(f"{key(k)}: only meaningful with allow_user_override = true")
            setattr(rule, k, parse_duration(raw[k], key(k)))
    if rule.allow_user_override:
        if rule.inactive_for is None:
            raise errors.ConfigError(f"{key('allow_user_override')}: needs inactive_for (the value users override)")
        if rule.min_override is None:
            rule.min_override = rule.inactive_for   # by default users may only lengthen the lifetime
        if rule.max_override is not None and rule.max_override < rule.min_override:
            raise errors.ConfigError(f"{key('max_override')}: smaller than min_override")

    # triggers and limits
    if "interval" in raw:
        rule.interval = parse_duration(raw["interval"], key("interval"))
        if rule.interval < 1:
            raise errors.ConfigError(f"{key('interval')}: at least 1s, got {raw['interval']!r}")
    if "initial_delay" in raw:
        rule.initial_delay = parse_duration(raw["initial_delay"], key("initial_delay"))
    rule.watermark = action in FREEING and not rule.keep_online
    if "watermark" in raw:
        wm = _bool(raw["watermark"], key("watermark"))
        if wm and (action not in FREEING or rule.keep_online):
            raise errors.ConfigError(f"{key('watermark')}: watermark runs free online space; action "
                                     f"{action!r}{' with keep_online' if rule.keep_online else ''} frees none")
        rule.watermark = wm
    if "max_files" in raw:
        rule.max_files = _count(raw["max_files"], key("max_files"))
    if "max_bytes" in raw:
        rule.max_bytes = parse_size(raw["max_bytes"], key("max_bytes"))
    if "rate" in raw:
        r = raw["rate"]
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0:
            raise errors.ConfigError(f"{key('rate')}: expected moves per second (a positive number), got {r!r}")
        rule.rate = float(r)
    if "confirm_delete" in raw:
        rule.confirm_delete = _bool(raw["confirm_delete"], key("confirm_delete"))
    if "enabled" in raw:
        rule.enabled = _bool(raw["enabled"], key("enabled"))
    if action == "delete":
        if not rule.confirm_delete:
            raise errors.ConfigError(f"{key('confirm_delete')}: action = \"delete\" removes files for good; "
                                     "set confirm_delete = true in the rule to allow it")
        if rule.older_than is None:
            raise errors.ConfigError(f"{key('older_than')}: action = \"delete\" needs older_than "
                                     "(the retention age)")
    elif rule.confirm_delete:
        raise errors.ConfigError(f"{key('confirm_delete')}: only for action = \"delete\"")
    return rule


def parse_rules(cfg) -> list[Rule]:
    """All [[policy]] tables of the config, validated."""
    rules = []
    seen = set()
    for i, raw in enumerate(cfg.policies):
        r = parse_rule(raw, i, cfg)
        if r.name in seen:
            raise errors.ConfigError(f"policy '{r.name}': name: used by more than one rule")
        seen.add(r.name)
        rules.append(r)
    return rules


def parse_watermarks(cfg) -> dict[str, tuple[float, float]]:
    """Online tier -> (high, low) fractions from the tier tables."""
    out = {}
    for name, t in cfg.tiers.items():
        high, low = t.options.get("high_watermark"), t.options.get("low_watermark")
        if high is None and low is None:
            continue
        key = f"tiers.{name}"
        if tier_class(t.kind).archive:
            raise errors.ConfigError(f"{key}.high_watermark: watermarks apply to online tiers; {name!r} is an archive")
        if high is None or low is None:
            missing = "high_watermark" if high is None else "low_watermark"
            raise errors.ConfigError(f"{key}.{missing}: missing (set both high_watermark and low_watermark)")
        for k, v in (("high_watermark", high), ("low_watermark", low)):
            if not 0 < v <= 1:
                raise errors.ConfigError(f"{key}.{k}: expected a fraction in (0, 1], got {v!r}")
        if low >= high:
            raise errors.ConfigError(f"{key}.low_watermark: {low} must be below high_watermark {high}")
        out[name] = (float(high), float(low))
    return out
