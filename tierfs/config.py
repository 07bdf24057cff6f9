"""Configuration: the TOML file, its validation, and the embedded default.

Lookup order: --config FILE, $TIERFS_CONFIG, /etc/tierfs/tierfs.toml, then
the embedded default (no file at all): an SQLite catalog, a `disk` tier and
a `vault` archive tier under $TIERFS_HOME (default ~/.local/share/tierfs).

The tables' keys, types and defaults are the models of tierfs/settings.py;
this module reads the file, fills in the defaults that depend on
$TIERFS_HOME and the tiers, and checks what spans tables. Every error names
the key it is about and raises errors.ConfigError.
"""

from __future__ import annotations

import os
import stat
import tomllib
import logging
from typing import Any

from . import errors, private
from .redact import secret_keys
from .settings import AnyTier, DiskTable, Settings, TierTable, VaultTable, validate
from .tiers import tier_class

log = logging.getLogger(__name__)

SYSTEM_CONFIG = "/etc/tierfs/tierfs.toml"


def tierfs_home() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("TIERFS_HOME") or "~/.local/share/tierfs"))


class Config(Settings):
    """The validated configuration a daemon or command runs with: the
    Settings of the file, with the defaults that depend on $TIERFS_HOME and
    on the tiers filled in (catalog, state_dir, tiers, default_tier)."""

    catalog: str
    state_dir: str
    tiers: dict[str, AnyTier]
    default_tier: str
    path: str | None = None          # the file it came from, None for the embedded default
    overrides: dict = {}             # the -o KEY=VALUE it was loaded with (a reload keeps them)

    def make_tiers(self) -> dict:
        """Instantiate every configured tier."""
        return {name: tier_class(t.kind)(name, t) for name, t in self.tiers.items()}

    def take(self, new: "Config") -> None:
        """Take the live keys of `new` (a reload that reload_changes()
        allowed): a daemon's parts all hold this one object and read their
        settings from it when they use them, so they see the new values
        without being rebuilt."""
        for key in LIVE_KEYS:
            setattr(self, key, getattr(new, key))
        for name, t in self.tiers.items():
            for key in LIVE_TIER_OPTIONS:
                setattr(t, key, getattr(new.tiers[name], key))


def embedded_tiers(home: str) -> dict:
    return {
        "disk": {"kind": "disk", "path": os.path.join(home, "disk")},
        "vault": {"kind": "vault", "path": os.path.join(home, "vault")},
    }


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
    raw = read_file(path) if path is not None else {}
    if path is not None:
        _warn_if_secrets_readable(path, raw)
    raw.update(overrides or {})
    cfg = parse(raw, path, home)
    cfg.overrides = dict(overrides or {})
    return cfg


def read_file(path: str) -> dict:
    """The tables of the TOML file `path`, unvalidated (ConfigError when it cannot be read or parsed)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise errors.ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise errors.ConfigError(f"config file {path} is a directory") from None
    except PermissionError:
        raise errors.ConfigError(f"config file {path} is not readable") from None
    except tomllib.TOMLDecodeError as e:
        raise errors.ConfigError(f"config file {path}: invalid TOML: {e}") from None


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


def _refuse_shared_objects(tiers: dict[str, TierTable]) -> None:
    """Two tiers must not keep objects in the same place (one bucket with
    nested prefixes, one directory, one GridFS bucket): each would list the
    other's objects, and fsck would report them as orphans to delete."""
    seen: list[tuple[str, tuple, str]] = []
    for name, t in tiers.items():
        where = tier_class(t.kind).object_store(t)
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
    """The config file's table `raw` validated, with the defaults filled in."""
    home = home or tierfs_home()
    settings = validate(Settings, raw)
    if settings.tiers is None:
        settings.tiers = validate(Settings, {"tiers": embedded_tiers(home)}).tiers
    tiers = settings.tiers
    _refuse_shared_objects(tiers)
    archive = {n: tier_class(t.kind).archive for n, t in tiers.items()}
    online = [n for n, a in archive.items() if not a]
    archives = [n for n, a in archive.items() if a]
    if not online:
        raise errors.ConfigError("tiers: at least one online (non-archive) tier is required")
    default_tier = settings.default_tier or online[0]
    if default_tier not in tiers:
        raise errors.ConfigError(f"default_tier: no tier named {default_tier!r} (tiers: {', '.join(tiers)})")
    if archive[default_tier]:
        raise errors.ConfigError(f"default_tier: {default_tier!r} is an archive tier; new files need an online tier")
    default_archive = settings.default_archive or (archives[0] if archives else None)
    if default_archive is not None and not archive.get(default_archive):
        raise errors.ConfigError(f"default_archive: no archive tier named {default_archive!r}")
    state_dir = os.path.abspath(os.path.expanduser(settings.state_dir or os.path.join(home, "state")))
    for name, t in tiers.items():
        if t.kind == "command" and t.staging is None:
            t.staging = os.path.join(state_dir, f"command-{name}")
    return Config.model_construct(**dict(
        settings, catalog=settings.catalog or f"sqlite:///{os.path.join(home, 'catalog.db')}",
        state_dir=state_dir, default_tier=default_tier, default_archive=default_archive, path=path))


# ---- where each value came from (`tierfs config show`) -----------------------------------
def provenance(cfg: Config, home: str) -> tuple[dict, dict[str, str]]:
    """The settings `cfg` runs with as the tables of a config file (None:
    unset), and where each came from, by dotted key (`tiers.NAME.KEY`;
    `policy` for the [[policy]] tables): the file, an -o override, or a
    default (one derived from TIERFS_HOME `home`, state_dir or the tiers
    says so). The file is read again for this: its values as of now."""
    raw = read_file(cfg.path) if cfg.path else {}
    given = {**raw, **cfg.overrides}
    here = lambda k: "-o" if k in cfg.overrides else f"file {cfg.path}"   # noqa: E731
    under_home = f"default under TIERFS_HOME {home}"
    derived = {"catalog": under_home, "state_dir": under_home, "default_tier": "default: the first online tier",
               "default_archive": "default: the first archive tier"}
    tables = cfg.model_dump(exclude={"tiers", "path", "overrides"})
    sources = {k: here(k) if k in given else derived.get(k, "default") for k in tables}
    tables["tiers"] = {}
    for name, t in cfg.tiers.items():
        tables["tiers"][name] = table = t.model_dump()
        mine = (given.get("tiers") or {}).get(name, {})
        for k in table:
            sources[f"tiers.{name}.{k}"] = (
                (under_home if k == "path" else "default") if "tiers" not in given else here("tiers") if k in mine
                else "default under state_dir" if k == "staging" else "default")
    return tables, sources


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
    "on_unclean", "log_level", "notify_command", "notify_timeout", "notify_batch_window",
    "track", "atime_flush", "policy"})
#: tier options that are policy, not storage: live too (as tiers.NAME.KEY)
LIVE_TIER_OPTIONS = ("high_watermark", "low_watermark")


def _settings(cfg: Config) -> dict[str, Any]:
    """Every setting of `cfg` under its config key (tiers.NAME for a tier's
    kind and storage options, tiers.NAME.high_watermark, policy)."""
    out = cfg.model_dump(exclude={"tiers", "path", "overrides"})
    for name, t in cfg.tiers.items():
        for k in LIVE_TIER_OPTIONS:
            out[f"tiers.{name}.{k}"] = getattr(t, k)
        out[f"tiers.{name}"] = t.model_dump(exclude=set(LIVE_TIER_OPTIONS))
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
            if isinstance(t, (DiskTable, VaultTable)):
                private.makedirs(t.path)  # tierfs makes these roots: 0700 like their objects/
        if cfg.catalog.startswith("sqlite:///"):
            private.makedirs(os.path.dirname(cfg.catalog[len("sqlite:///"):]) or ".")
    private.own_dir(cfg.state_dir)
