"""[[policy]] tables -> validated Rule objects; tier watermarks.

The keys and their value types are settings.PolicyTable; each condition is
one entry of criteria.CRITERIA (its parsing, query part, check and reason).

A rule is: conditions (all optional, ANDed) + one action + triggers + limits.

    [[policy]]
    name = "cold"                   # required, unique; shown in `tierfs state` and logs
    action = "archive"              # archive | release | migrate | delete
    to = "vault"                    # archive: archive tier (default: default_archive), or a list of them
                                    # (["vault", "glacier"]: a verified copy on each); migrate: online tier
    keep_online = false             # archive: leave the file dual
    stub_bytes = "64KiB"            # archive, release: first bytes kept online (default: the archive tier's)
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
    enabled = true                  # false: the rule is kept (and checked) but never runs

Watermarks are keys of an online tier's table: `high_watermark = 0.90`,
`low_watermark = 0.75` (fractions of the tier's capacity in use).

Every error names the rule and the key and raises errors.ConfigError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .. import errors
from ..settings import PolicyTable, archives_in_place, validate
from ..tiers import tier_class
from ..units import fmt_duration
from .criteria import CRITERIA, Context

ACTIONS = ("archive", "release", "migrate", "delete")
#: actions that free space on the online tier a file is on (watermark runs use them)
FREEING = ("archive", "release", "migrate")

@dataclass
class Rule:
    """One validated [[policy]] table. Durations in seconds, sizes in bytes."""

    name: str
    index: int                                  # position in the config (first rule = 0)
    action: str                                 # one of ACTIONS
    to: str | None = None                       # destination tier (archive, migrate)
    more_to: tuple[str, ...] = ()               # archive: further archive tiers, a copy on each
    keep_online: bool = False
    stub_bytes: int | None = None               # archive, release: overrides the archive tier's stub_bytes
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

    @property
    def targets(self) -> list[str]:
        """Every destination tier: `to`, then the further archive tiers."""
        return [t for t in (self.to, *self.more_to) if t]

    def describe(self) -> str:
        """One line for `tierfs policy check`."""
        conds = [f"{k} {v}" for k, v in self.text.items()]
        act = self.action + (f" to {', '.join(self.targets)}" if self.to else "") + (
            " keep_online" if self.keep_online else "")
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


def parse_rule(raw, index: int, cfg) -> Rule:
    """One [[policy]] table -> Rule (ConfigError naming the rule and key).
    Keys and value types: settings.PolicyTable; conditions: criteria.CRITERIA."""
    label = _label(raw, index)
    if not isinstance(raw, dict):
        raise errors.ConfigError(f"{label}: expected a table")
    t = validate(PolicyTable, raw, label)
    name = t.name
    if not isinstance(name, str) or not name.strip() or "'" in name:
        raise errors.ConfigError(f"{label}: name: missing (every rule needs a name, e.g. name = \"cold\")"
                                 if name is None else f"{label}: name: expected a non-empty string without "
                                 f"quotes, got {name!r}")
    cx = Context(label, {n: tier_class(tt.kind).archive for n, tt in cfg.tiers.items()}, raw)
    in_place = {n for n, tt in cfg.tiers.items() if archives_in_place(tt)}
    key = cx.key
    action = t.action
    if action not in ACTIONS:
        raise errors.ConfigError(f"{key('action')}: expected one of {', '.join(ACTIONS)}, got {action!r}")
    rule = Rule(name=name, index=index, action=action)

    # destination
    to, more = (t.to[0], list(dict.fromkeys(t.to[1:]))) if isinstance(t.to, list) else (t.to, [])
    if more and action != "archive":
        raise errors.ConfigError(f"{key('to')}: a list of tiers is only for action = \"archive\" (a copy on each)")
    if action == "archive":
        to = to or cfg.default_archive
        if to is None:
            raise errors.ConfigError(f"{key('to')}: missing, and no archive tier is configured")
        for dest in (to, *more):
            if not cx.archive.get(dest) and dest not in in_place:
                targets = [n for n, a in cx.archive.items() if a or n in in_place]
                raise errors.ConfigError(f"{key('to')}: no archive tier named {dest!r} "
                                         f"(archive tiers: {', '.join(targets) or 'none'})")
        if more and any(n in in_place for n in (to, *more)):
            raise errors.ConfigError(f"{key('to')}: a tier that archives in place cannot be one of several")
        rule.more_to = tuple(m for m in more if m != to)
    elif action == "migrate":
        if to is None:
            raise errors.ConfigError(f"{key('to')}: missing (migrate needs the online tier to move to)")
        if cx.archive.get(to, True):
            raise errors.ConfigError(f"{key('to')}: no online tier named {to!r} "
                                     f"(online tiers: {', '.join(n for n, a in cx.archive.items() if not a)})")
    elif to is not None:
        raise errors.ConfigError(f"{key('to')}: action {action!r} takes no destination tier")
    rule.to = to
    if t.keep_online is not None:
        if action != "archive":
            raise errors.ConfigError(f"{key('keep_online')}: only for action = \"archive\"")
        rule.keep_online = t.keep_online
    if t.stub_bytes is not None:
        if action not in ("archive", "release"):
            raise errors.ConfigError(f"{key('stub_bytes')}: only for action = \"archive\" or \"release\"")
        rule.stub_bytes = t.stub_bytes

    for c in CRITERIA:
        c.parse(t, rule, cx)
    if action == "archive" and to in in_place:
        _in_place(rule, key)

    # user overrides
    rule.allow_user_override = bool(t.allow_user_override)
    for k in ("min_override", "max_override"):
        if getattr(t, k) is not None:
            if not rule.allow_user_override:
                raise errors.ConfigError(f"{key(k)}: only meaningful with allow_user_override = true")
            setattr(rule, k, getattr(t, k))
    if rule.allow_user_override:
        if rule.inactive_for is None:
            raise errors.ConfigError(f"{key('allow_user_override')}: needs inactive_for (the value users override)")
        if rule.min_override is None:
            rule.min_override = rule.inactive_for   # by default users may only lengthen the lifetime
        if rule.max_override is not None and rule.max_override < rule.min_override:
            raise errors.ConfigError(f"{key('max_override')}: smaller than min_override")

    # triggers and limits
    rule.interval = t.interval
    if rule.interval is not None and rule.interval < 1:
        raise errors.ConfigError(f"{key('interval')}: at least 1s, got {raw['interval']!r}")
    if t.initial_delay is not None:
        rule.initial_delay = t.initial_delay
    rule.watermark = action in FREEING and not rule.keep_online
    if t.watermark is not None:
        if t.watermark and (action not in FREEING or rule.keep_online):
            raise errors.ConfigError(f"{key('watermark')}: watermark runs free online space; action "
                                     f"{action!r}{' with keep_online' if rule.keep_online else ''} frees none")
        rule.watermark = t.watermark
    rule.max_files, rule.max_bytes, rule.rate = t.max_files, t.max_bytes, t.rate
    rule.confirm_delete = bool(t.confirm_delete)
    if t.enabled is not None:
        rule.enabled = t.enabled
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


def _in_place(rule: Rule, key) -> None:
    """A rule archiving to a tier that archives in place (archive_storage_class)
    applies to the files on that tier only: it has no copy to make of others."""
    if rule.keep_online:
        raise errors.ConfigError(f"{key('keep_online')}: tier {rule.to!r} archives in place (the object itself "
                                 "changes storage class): no online copy can be kept")
    if rule.tier not in (None, rule.to):
        raise errors.ConfigError(f"{key('tier')}: tier {rule.to!r} archives in place and takes only its own files, "
                                 f"not those of {rule.tier!r}")
    rule.tier, rule.tier_is_archive = rule.to, False
    rule.text.setdefault("tier", rule.to)


def cause_of(rule: str, reasons: list[str]) -> str:
    """The cause a rule's jobs carry (`tierfs state` shows it; rule_of reads the rule back)."""
    return f"policy rule '{rule}' ({', '.join(reasons)})"


_CAUSE = re.compile(r"policy rule '([^']+)' \(")


def rule_of(cause: str, cfg) -> Rule | None:
    """The rule of the config that queued a job with this cause (cause_of),
    if it still exists; None for a job a user or the daemon asked for."""
    m = _CAUSE.match(cause)
    if m is None:
        return None
    for i, raw in enumerate(cfg.policy):
        if isinstance(raw, dict) and raw.get("name") == m.group(1):
            return parse_rule(raw, i, cfg)
    return None


def parse_rules(cfg) -> list[Rule]:
    """All [[policy]] tables of the config, validated."""
    rules = []
    seen = set()
    for i, raw in enumerate(cfg.policy):
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
        high, low = t.high_watermark, t.low_watermark
        if high is None and low is None:
            continue
        key = f"tiers.{name}"
        if tier_class(t.kind).archive:
            raise errors.ConfigError(f"{key}.high_watermark: watermarks apply to online tiers; {name!r} is an archive")
        if high is None or low is None:
            missing = "high_watermark" if high is None else "low_watermark"
            raise errors.ConfigError(f"{key}.{missing}: missing (set both high_watermark and low_watermark)")
        if low >= high:
            raise errors.ConfigError(f"{key}.low_watermark: {low} must be below high_watermark {high}")
        out[name] = (float(high), float(low))
    return out
