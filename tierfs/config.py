"""Configuration: the TOML file, its validation, and the embedded default.

Lookup order: --config FILE, $TIERFS_CONFIG, /etc/tierfs/tierfs.toml, then
the embedded default (no file at all): an SQLite catalog, a `disk` tier and
a `vault` archive tier under $TIERFS_HOME (default ~/.local/share/tierfs).

Every error names the key it is about and raises errors.ConfigError.
"""

from __future__ import annotations

import os
import stat
import tomllib
import logging
from dataclasses import dataclass, field
from typing import Any

from . import errors, private
from .redact import secret_keys
from .tiers import tier_class
from .units import parse_duration, parse_size

log = logging.getLogger(__name__)

SYSTEM_CONFIG = "/etc/tierfs/tierfs.toml"


def tierfs_home() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("TIERFS_HOME") or "~/.local/share/tierfs"))


# Top-level keys: name -> (parser, default). Parsers raise ConfigError naming the key.
def _str(v, key):
    if not isinstance(v, str) or not v:
        raise errors.ConfigError(f"{key}: expected a non-empty string, got {v!r}")
    return v


def _bool(v, key):
    if not isinstance(v, bool):
        raise errors.ConfigError(f"{key}: expected true or false, got {v!r}")
    return v


def _choice(*choices):
    def parse(v, key):
        if v not in choices:
            raise errors.ConfigError(f"{key}: expected one of {', '.join(choices)}, got {v!r}")
        return v
    return parse


def _pos_int(v, key):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v > 1_000_000:
        raise errors.ConfigError(f"{key}: expected a positive integer, got {v!r}")
    return v


def _nonneg_int(v, key):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > 1_000_000:
        raise errors.ConfigError(f"{key}: expected an integer >= 0, got {v!r}")
    return v


def _seconds(v, key):
    return parse_duration(v, key)


def _fraction(v, key):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
        raise errors.ConfigError(f"{key}: expected a fraction in (0, 1], got {v!r}")
    return float(v)


def _str_list(v, key):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
        raise errors.ConfigError(f"{key}: expected a list of names, got {v!r}")
    return v


TOP_KEYS: dict[str, tuple[Any, Any]] = {
    "catalog": (_str, None),                 # catalog URL; default sqlite under $TIERFS_HOME
    "state_dir": (_str, None),               # staging files, default $TIERFS_HOME/state
    "default_tier": (_str, None),            # tier receiving new files; default: first online tier
    "default_archive": (_str, None),         # archive tier for `tierfs archive`; default: first archive tier
    "restore_mode": (_choice("block", "error"), "block"),  # opening an archived file waits, or fails with EAGAIN
    "block_timeout": (_seconds, 300.0),      # block mode: longest wait in open() before EAGAIN
    "attr_timeout": (_seconds, None),        # kernel attribute cache timeout; default 1 s on a shared catalog, else 30 s
    "entry_timeout": (_seconds, None),       # kernel name cache timeout; same default
    "xattrs": (_bool, True),                 # false: no xattr support at all (faster `ls -l`)
    "read_ahead_kb": (_nonneg_int, 1024),    # kernel read-ahead of the mount (root only; 0: the kernel's 128)
    "allow_other": (_bool, False),           # let users other than the mounter use the mount
    "allow_unarchive": (_bool, True),        # false: restores are refused (retention), EACCES
    "archivers": (_str, None),               # group whose members may archive/restore any file
    "workers": (_pos_int, 2),                # job worker tasks per mount
    "tier_concurrency": (_pos_int, 2),       # concurrent jobs per destination tier
    "job_retry_delay": (_seconds, 30.0),     # delay before a failed job is retried
    "job_retry_max_delay": (_seconds, 600.0),  # longest wait between attempts of a job waiting for a tier
    "job_max_attempts": (_pos_int, 5),       # failures before a job is marked failed
    "on_unclean": (_choice("warn", "refuse"), "warn"),  # previous daemon died without unmounting
    "log_level": (_choice("debug", "info", "warning", "error"), "info"),
    "track": (_choice("open", "read"), "open"),  # what counts as an access
    "atime_flush": (_seconds, 60.0),         # access times are written to the catalog this often
    "heartbeat_interval": (_seconds, 5.0),   # how often a mount records in the catalog that it is alive
    "session_timeout": (_seconds, 30.0),     # a mount silent this long is dead: others requeue its jobs
}


@dataclass
class TierConfig:
    name: str
    kind: str
    options: dict


@dataclass
class Config:
    path: str | None                     # the file it came from, None for the embedded default
    catalog: str
    state_dir: str
    tiers: dict[str, TierConfig]
    default_tier: str
    default_archive: str | None
    values: dict = field(default_factory=dict)   # the other validated TOP_KEYS
    policies: list = field(default_factory=list)  # raw [[policy]] tables (validated by tierfs.policy)
    overrides: dict = field(default_factory=dict)  # the -o KEY=VALUE it was loaded with (a reload keeps them)

    def __getattr__(self, name):
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def make_tiers(self) -> dict:
        """Instantiate every configured tier."""
        return {t.name: tier_class(t.kind)(t.name, **t.options) for t in self.tiers.values()}

    def take(self, new: "Config") -> None:
        """Become `new` (a reload that reload_changes() allowed): a daemon's
        parts all hold this one object and read their settings from it when
        they use them, so they see the new values without being rebuilt."""
        self.__dict__.update(new.__dict__)


def embedded_tiers(home: str) -> dict:
    return {
        "disk": {"kind": "disk", "path": os.path.join(home, "disk")},
        "vault": {"kind": "vault", "path": os.path.join(home, "vault")},
    }


def _parse_tier(name: str, raw: Any) -> TierConfig:
    key = f"tiers.{name}"
    if not isinstance(raw, dict):
        raise errors.ConfigError(f"{key}: expected a table")
    if "kind" not in raw:
        raise errors.ConfigError(f"{key}.kind: missing (e.g. kind = \"disk\")")
    cls = tier_class(raw["kind"])
    common = {"kind": str, "allow_users": list, "allow_groups": list, "high_watermark": float,
              "low_watermark": float}
    opts = {}
    for k, v in raw.items():
        if k == "kind":
            continue
        if k not in cls.options and k not in common:
            allowed = ", ".join(sorted(set(cls.options) | set(common) - {"kind"}))
            raise errors.ConfigError(f"{key}.{k}: unknown key for kind {raw['kind']!r} (allowed: {allowed})")
        spec = cls.options.get(k) or common[k]
        opts[k] = _check_type(v, spec, f"{key}.{k}")
    for k, spec in cls.options.items():
        if k not in opts and getattr(cls, "required", None) and k in cls.required:
            raise errors.ConfigError(f"{key}.{k}: missing")
    if raw["kind"] in ("disk", "vault") and "path" not in opts:
        raise errors.ConfigError(f"{key}.path: missing")
    return TierConfig(name=name, kind=raw["kind"], options=opts)


def _check_type(v, spec, key):
    if spec is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if spec in ("size",):
        return parse_size(v, key)
    if spec in ("duration",):
        return parse_duration(v, key)
    if callable(spec) and not isinstance(spec, type):
        return spec(v, key)
    types = spec if isinstance(spec, tuple) else (spec,)
    if isinstance(v, bool) and bool not in types:
        raise errors.ConfigError(f"{key}: expected {' or '.join(t.__name__ for t in types)}, got {v!r}")
    if not isinstance(v, types):
        raise errors.ConfigError(f"{key}: expected {' or '.join(t.__name__ for t in types)}, got {v!r}")
    return v


def find_config_file(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get("TIERFS_CONFIG"):
        return os.environ["TIERFS_CONFIG"]
    if os.path.exists(SYSTEM_CONFIG):
        return SYSTEM_CONFIG
    return None


def load(explicit: str | None = None, overrides: dict | None = None) -> Config:
    """Load and validate the configuration (see module doc for the lookup order)."""
    return read(find_config_file(explicit), overrides)


def reread(cfg: Config) -> Config:
    """The configuration `cfg` came from, read again (SIGHUP): the same file
    (or none: the embedded default) with the same -o overrides."""
    return read(cfg.path, cfg.overrides)


def read(path: str | None, overrides: dict | None = None, home: str | None = None) -> Config:
    """Parse the config file `path` (None: the embedded default) with -o overrides; `home`: the
    TIERFS_HOME defaults derive from (default: ours; a mount's runtime file names its daemon's)."""
    raw: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise errors.ConfigError(f"config file {path} does not exist") from None
        except PermissionError:
            raise errors.ConfigError(f"config file {path} is not readable") from None
        except tomllib.TOMLDecodeError as e:
            raise errors.ConfigError(f"config file {path}: invalid TOML: {e}") from None
        _warn_if_secrets_readable(path, raw)
    raw.update(overrides or {})
    cfg = parse(raw, path, home)
    cfg.overrides = dict(overrides or {})
    return cfg


#: Words that mark a config key (or a config file's text) as holding a credential.


def _warn_if_secrets_readable(path: str, raw: dict) -> None:
    if secret_keys(raw):
        try:
            if os.stat(path).st_mode & stat.S_IROTH:
                log.warning("config file %s holds credentials and is readable by other users; chmod o-r it", path)
        except OSError:
            pass


def _describe_store(store: tuple, prefix: str) -> str:
    kind, *where = store
    text = {"s3": lambda e, b: f"bucket {b} at {e}", "directory": lambda p: f"directory {p}",
            "gridfs": lambda h, d, b: f"GridFS bucket {b} in database {d} on {h}"}[kind](*where)
    return text + (f" under prefix {prefix!r}" if prefix else "")


def _refuse_shared_objects(tiers: dict, classes: dict) -> None:
    """Two tiers must not keep objects in the same place (one bucket with
    nested prefixes, one directory, one GridFS bucket): each would list the
    other's objects, and fsck would report them as orphans to delete."""
    seen: list[tuple[str, tuple, str]] = []
    for name, t in tiers.items():
        where = classes[name].object_store(t.options)
        if where is None:
            continue
        store, prefix = where
        for other, ostore, oprefix in seen:
            if ostore == store and (prefix.startswith(oprefix) or oprefix.startswith(prefix)):
                raise errors.ConfigError(
                    f"tiers.{other} and tiers.{name} keep objects in the same place "
                    f"({_describe_store(ostore, oprefix)}; {_describe_store(store, prefix)}): each would see the "
                    "other's objects as its own; give them separate buckets, prefixes or directories")
        seen.append((name, store, prefix))


def parse(raw: dict, path: str | None = None, home: str | None = None) -> Config:
    home = home or tierfs_home()
    values = {}
    for k, v in raw.items():
        if k in ("tiers", "policy"):
            continue
        if k not in TOP_KEYS:
            raise errors.ConfigError(f"{k}: unknown configuration key (known: {', '.join(sorted(TOP_KEYS))}, tiers, policy)")
        values[k] = TOP_KEYS[k][0](v, k)
    for k, (_, default) in TOP_KEYS.items():
        values.setdefault(k, default)

    raw_tiers = raw.get("tiers")
    if raw_tiers is None:
        raw_tiers = embedded_tiers(home)
    if not isinstance(raw_tiers, dict) or not raw_tiers:
        raise errors.ConfigError("tiers: expected at least one [tiers.NAME] table")
    tiers = {}
    for name, t in raw_tiers.items():
        tiers[name] = _parse_tier(name, t)
    classes = {n: tier_class(t.kind) for n, t in tiers.items()}
    _refuse_shared_objects(tiers, classes)
    online = [n for n, c in classes.items() if not c.archive]
    archives = [n for n, c in classes.items() if c.archive]
    if not online:
        raise errors.ConfigError("tiers: at least one online (non-archive) tier is required")
    default_tier = values.pop("default_tier") or online[0]
    if default_tier not in tiers:
        raise errors.ConfigError(f"default_tier: no tier named {default_tier!r} (tiers: {', '.join(tiers)})")
    if classes[default_tier].archive:
        raise errors.ConfigError(f"default_tier: {default_tier!r} is an archive tier; new files need an online tier")
    default_archive = values.pop("default_archive") or (archives[0] if archives else None)
    if default_archive is not None and (default_archive not in tiers or not classes[default_archive].archive):
        raise errors.ConfigError(f"default_archive: no archive tier named {default_archive!r}")

    catalog = values.pop("catalog") or f"sqlite:///{os.path.join(home, 'catalog.db')}"
    state_dir = os.path.abspath(os.path.expanduser(values.pop("state_dir") or os.path.join(home, "state")))
    for t in tiers.values():
        if t.kind == "command":
            t.options.setdefault("staging", os.path.join(state_dir, f"command-{t.name}"))
    policies = raw.get("policy", [])
    if not isinstance(policies, list):
        raise errors.ConfigError("policy: expected [[policy]] tables")
    return Config(path=path, catalog=catalog, state_dir=state_dir, tiers=tiers, default_tier=default_tier,
                  default_archive=default_archive, values=values, policies=policies)


# ---- reload (SIGHUP) -------------------------------------------------------------------
#: Keys a mounted daemon takes on SIGHUP. Each is read from the one live Config
#: where it is used (a job claim, an open, a policy round, the log), so changing
#: it between two uses is safe. The rest is fixed for the life of a mount:
#: catalog, state_dir, tiers and their options (objects already written live
#: there), allow_other (a mount option), xattrs and the kernel cache timeouts
#: (given to the kernel at mount), heartbeat_interval and session_timeout (all
#: mounts of a catalog must agree on them).
LIVE_KEYS = frozenset({
    "default_tier", "default_archive", "restore_mode", "block_timeout", "read_ahead_kb", "allow_unarchive",
    "archivers", "workers", "tier_concurrency", "job_retry_delay", "job_retry_max_delay", "job_max_attempts",
    "on_unclean", "log_level",
    "track", "atime_flush", "policy"})
#: tier options that are policy, not storage: live too (as tiers.NAME.KEY)
LIVE_TIER_OPTIONS = ("high_watermark", "low_watermark")


def _settings(cfg: Config) -> dict[str, Any]:
    """Every setting of `cfg` under its config key (tiers.NAME for a tier's
    kind and storage options, tiers.NAME.high_watermark, policy)."""
    out = dict(cfg.values, catalog=cfg.catalog, state_dir=cfg.state_dir, default_tier=cfg.default_tier,
               default_archive=cfg.default_archive, policy=cfg.policies)
    for name, t in cfg.tiers.items():
        opts = dict(t.options)
        for k in LIVE_TIER_OPTIONS:
            out[f"tiers.{name}.{k}"] = opts.pop(k, None)
        out[f"tiers.{name}"] = (t.kind, opts)
    return out


def reload_changes(old: Config, new: Config) -> tuple[list[tuple[str, str, str]], list[str]]:
    """What replacing `old` by `new` in a mounted daemon changes:
    ([(key, old value, new value) of live keys, printable], [keys that need a remount])."""
    a, b = _settings(old), _settings(new)
    live, fixed = [], []
    for key in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(key), b.get(key)
        if va == vb:
            continue
        if key in LIVE_KEYS or (key.startswith("tiers.") and key.endswith(LIVE_TIER_OPTIONS)
                                and key.rsplit(".", 1)[0] in a and key.rsplit(".", 1)[0] in b):
            live.append((key, _show(key, va), _show(key, vb)))
        else:
            fixed.append(key)
    return live, fixed


def _show(key: str, v: Any) -> str:
    """A setting's value for the log line of a reload (live keys hold no secrets)."""
    if key == "policy":
        names = [p.get("name", "?") if isinstance(p, dict) else "?" for p in v]
        return f"{len(names)} rule(s)" + (f" ({', '.join(map(str, names))})" if names else "")
    return "unset" if v is None else str(v)


def prepare_embedded_dirs(cfg: Config) -> None:
    """Create the state directory, and the directories of tiers when the
    config is the embedded default (a user's explicit paths must exist);
    all private (0700)."""
    if cfg.path is None:
        private.own_dir(tierfs_home())
        for t in cfg.tiers.values():
            if "path" in t.options:
                private.makedirs(t.options["path"])  # tierfs makes these roots: 0700 like their objects/
        if cfg.catalog.startswith("sqlite:///"):
            private.makedirs(os.path.dirname(cfg.catalog[len("sqlite:///"):]) or ".")
    private.own_dir(cfg.state_dir)
