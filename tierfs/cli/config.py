"""`tierfs config show|check|example`: the configuration a mount runs with,
validating a file before mounting it, and the example configs.

- `show [MOUNT]`: the effective configuration (defaults filled in, secrets
  redacted) of MOUNT (else the implied mount, target.implied_mount), or of
  --config FILE, or of the usual lookup, with where each value came from
  (tierfs/config.py: provenance). Printed as TOML that is itself a valid
  config (the source of each value in a comment; unset keys as comments),
  or --json. A mount's values are those of its daemon's config file and -o
  overrides as read now (a file edited since mount, and not yet reloaded
  with SIGHUP, shows its new values).
- `check FILE`: what a mount validates before it starts, without mounting
  or touching anything: every schema error (one line each: file, key,
  why), then the checks across tables and the policies. --connect also
  reaches the catalog (never creating it) and checks each tier as a mount
  does (which makes a disk tier's objects/ and tmp/, a command tier's
  staging directory, as the mount would).
- `example [NAME]`: lists or prints the commented configs installed with
  the package (tierfs/examples/*.toml).
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources

import click

from .. import client, config as config_mod, errors
from ..client import CliError
from ..display import echo
from ..redact import redact_url, secret_keys
from ..settings import Settings, problems
from .common import CONTEXT, config_option, parse_overrides
from .target import implied_mount, mount_config, mount_of

#: what a redacted value is shown as (a string: the printed TOML stays a valid config)
REDACTED = "***"


@click.group(context_settings=CONTEXT)
def config():
    """Show, check and start from configurations.

    \b
    Examples:
      tierfs config show                      # the mount you are in (or the only one running)
      tierfs config show --json /mnt/lab
      tierfs config check /etc/tierfs/lab.toml --connect
      tierfs config example lab > /etc/tierfs/lab.toml
    """


# ---- show ---------------------------------------------------------------------------
def _source_of_file(config_path: str | None, overrides: dict) -> tuple[config_mod.Config, str, str]:
    """(config, where its file came from, TIERFS_HOME its defaults derive from) without a mount."""
    path = config_mod.find_config_file(config_path)
    why = ("--config" if config_path else "$TIERFS_CONFIG" if os.environ.get("TIERFS_CONFIG")
           else "the system config" if path else "no config file: the embedded default")
    return config_mod.read(path, overrides), why, config_mod.tierfs_home()


def _redacted(tables: dict) -> tuple[dict, list[str]]:
    """`tables` with every credential replaced (a URL keeps all but its password), and their keys."""
    keys = secret_keys(tables)
    for key in keys:
        *parents, last = key.split(".")
        d = tables
        for p in parents:
            d = d[p]
        v = d[last]
        d[last] = redact_url(v) if isinstance(v, str) and redact_url(v) != v else REDACTED
    return tables, keys


@config.command(context_settings=CONTEXT)
@click.argument("mount_path", metavar="[MOUNT]", required=False, type=click.Path())
@config_option("TOML config to show instead of a mount's (with -o: as `tierfs mount -o` would run it).")
@click.option("-o", "options", multiple=True, metavar="KEY=VALUE", help="With --config: an override, as at mount.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: settings, sources, redacted keys.")
def show(mount_path, config_path, options, as_json):
    """Print the effective configuration and where each value came from.

    MOUNT (or the mount the working directory is in, or the only one
    running): the config file and -o overrides its daemon runs with. With
    --config FILE, or no mount running: that file (else $TIERFS_CONFIG,
    /etc/tierfs/tierfs.toml, the embedded default). Defaults are filled in,
    credentials shown as ***. The output is a valid config file.

    \b
    Examples:
      tierfs config show
      tierfs config show /mnt/lab
      tierfs config show -c /etc/tierfs/lab.toml -o restore_mode=error
      tierfs config show --json /mnt/lab | jq .sources
    """
    if options and not config_path:
        raise CliError("-o goes with --config (a mount's overrides are those it was mounted with)",
                       client.EXIT_USAGE)
    m = None if config_path else (mount_of(mount_path) if mount_path else implied_mount())
    if m is not None:
        cfg, why, rec = mount_config(m)
        home = rec.home if rec else config_mod.tierfs_home()
    else:
        cfg, why, home = _source_of_file(config_path, parse_overrides(options))
    tables, sources = config_mod.provenance(cfg, home)
    tables, secret = _redacted(tables)
    head = dict(mount=m.mountpoint if m else None, file=cfg.path, chosen_by=why, home=home, overrides={
        k: (REDACTED if k in secret else v) for k, v in cfg.overrides.items()})
    if as_json:
        click.echo(json.dumps(dict(**head, settings=tables, sources=sources, redacted=secret), indent=1))
        return
    echo(f"# tierfs config show: the effective configuration of "
         f"{'the mount ' + m.mountpoint if m else 'a mount made with this config'}")
    echo(f"# config: {cfg.path or 'none (the embedded default)'} ({why})")
    echo(f"# defaults under TIERFS_HOME = {home}")
    if secret:
        echo(f"# credentials shown as {REDACTED}: {', '.join(secret)}")
    for line in _toml(tables, sources):
        echo(line)   # one by one: display.echo escapes control characters within a line (none in TOML's)


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE.fullmatch(k) else json.dumps(k)


def _value(v) -> str:
    """A TOML value: JSON's strings, numbers and arrays are TOML's; booleans and tables differ."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return repr(v)


def _lines(table: dict, sources: dict, prefix: str) -> list[str]:
    out = []
    for k, v in table.items():
        src = sources.get(prefix + k, "")
        out.append(f"# {_key(k)} unset  # {src}" if v is None else f"{_key(k)} = {_value(v)}  # {src}")
    return out


def _toml(tables: dict, sources: dict) -> list[str]:
    """The tables as a config file: top-level keys, [tiers.NAME] tables, [[policy]] tables."""
    top = {k: v for k, v in tables.items() if k not in ("tiers", "policy")}
    out = _lines(top, sources, "")
    for name, t in tables["tiers"].items():
        out += ["", f"[tiers.{_key(name)}]"] + _lines(t, sources, f"tiers.{name}.")
    for rule in tables["policy"]:
        out += ["", f"[[policy]]  # {sources['policy']}"] + [f"{_key(k)} = {_value(v)}" for k, v in rule.items()]
    return out


# ---- check --------------------------------------------------------------------------
@config.command(context_settings=CONTEXT)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "options", multiple=True, metavar="KEY=VALUE", help="An override, as at mount.")
@click.option("--connect", is_flag=True, help="Also reach the catalog (never creating it) and check every tier "
              "as a mount does.")
def check(file, options, connect):
    """Validate a config file as `tierfs mount` would, without mounting.

    Prints one summary line and exits 0 when it is valid; else one line per
    error naming the file and the key, exit 6 (--connect: 7 when the
    catalog or a tier cannot be reached).

    \b
    Examples:
      tierfs config check /etc/tierfs/lab.toml
      tierfs config check --connect /etc/tierfs/lab.toml
    """
    from ..policy.rules import parse_rules
    from ..policy.scheduler import check_policies
    overrides = parse_overrides(options)
    try:
        raw = {**config_mod.read_file(file), **overrides}
    except errors.ConfigError as e:
        raise CliError(str(e), client.EXIT_CONFIG) from None
    bad = problems(Settings, raw)
    if not bad:
        try:   # the checks across tables and the policies stop at their first error
            cfg = config_mod.read(file, overrides)
            check_policies(cfg)
        except errors.ConfigError as e:
            bad = [str(e)]
    if bad:
        for line in bad:
            echo(f"tierfs: {file}: {line}", err=True)
        raise SystemExit(client.EXIT_CONFIG)
    unreachable, code = _connect(cfg) if connect else ([], 0)
    for line in unreachable:
        echo(f"tierfs: {file}: {line}", err=True)
    if unreachable:
        raise SystemExit(code)
    tiers = ", ".join(f"{n} ({t.kind})" for n, t in cfg.tiers.items())
    echo(f"{file}: OK: catalog {redact_url(cfg.catalog)}; tiers {tiers}; default tier {cfg.default_tier}, "
         f"archive {cfg.default_archive or 'none'}; {len(parse_rules(cfg))} policy rule(s)"
         + ("; catalog and tiers reachable" if connect else ""))


def _connect(cfg: config_mod.Config) -> tuple[list[str], int]:
    """Why the catalog or a tier cannot be used now, one line each, and the
    exit code (6 when one is misconfigured, else 7); ([], 0) when all answer.
    Tiers get the check a mount makes (Tier.check)."""
    from ..catalog import open_catalog
    out, code = [], client.EXIT_UNAVAILABLE

    def failed(where: str, e: errors.TierfsError) -> None:
        nonlocal code
        out.append(str(e) if str(e).startswith(where.split()[0]) else f"{where}: {e}")
        if isinstance(e, errors.ConfigError):
            code = client.EXIT_CONFIG
    try:
        cat = open_catalog(cfg.catalog)
        try:
            cat.initialised()
        finally:
            cat.close()
    except errors.TierfsError as e:
        failed(f"catalog {redact_url(cfg.catalog)}", e)
    for name, tier in cfg.make_tiers().items():
        try:
            tier.check()
        except errors.TierfsError as e:
            failed(f"tiers.{name}", e)
        finally:
            tier.close()
    return out, (code if out else 0)


# ---- example ------------------------------------------------------------------------
def _examples() -> dict[str, str]:
    """NAME -> text of every example config installed with the package."""
    root = resources.files("tierfs.examples")
    return {f.name[:-5]: f.read_text(encoding="utf-8") for f in sorted(root.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".toml")}


@config.command(context_settings=CONTEXT)
@click.argument("name", required=False)
def example(name):
    """List the example configs, or print the one called NAME.

    \b
    Examples:
      tierfs config example
      tierfs config example single-host > ~/.config/tierfs.toml
    """
    found = _examples()
    if name is None:
        for n, text in found.items():
            echo(f"{n:12} {text.splitlines()[0].lstrip('# ')}")
        return
    if name not in found:
        raise CliError(f"no example config {name!r} (examples: {', '.join(found)})", client.EXIT_USAGE)
    click.echo(found[name], nl=False)


COMMANDS = (config,)
