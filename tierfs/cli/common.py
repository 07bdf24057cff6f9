"""What every command module shares: the one mapping from errors to a
message and an exit code, the -o parser, and option helpers.

Command modules import from here (and from target.py), never from the root
(app.py), which imports them: no cycle.
"""

from __future__ import annotations

import sys

import click

from .. import client, errors
from ..client import CliError
from ..display import echo

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


def config_option(help: str = "TOML config (default: the one the mount's daemon runs with)."):
    return click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), help=help)


def with_options(opts):
    """Apply a list of click options (shared by several commands) in order."""
    def deco(f):
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


def fail(msg: str, code: int = client.EXIT_FAILED):
    # Line by line: some messages span lines on purpose (a config snippet to add); names in them are
    # escaped where the message is made, this catches any other control character.
    for line in f"tierfs: {msg}".split("\n"):
        echo(line, err=True)
    sys.exit(code)


def failure(e: Exception) -> tuple[str, int]:
    """The one line and the exit code an error ends a command with
    (CliError carries its own; tierfs errors by kind)."""
    if isinstance(e, CliError):
        return str(e), e.code
    if isinstance(e, errors.ConfigError):
        return f"configuration: {e}", client.EXIT_CONFIG
    if isinstance(e, errors.CatalogUnavailable):
        return str(e), client.EXIT_UNAVAILABLE
    if isinstance(e, errors.PermissionDenied):
        return str(e), client.EXIT_PERMISSION
    return str(e), client.EXIT_FAILED


def parse_overrides(opts: tuple[str, ...]) -> dict:
    """-o key=value options; values parsed as TOML scalars when possible."""
    import tomllib
    out = {}
    for o in opts:
        k, eq, v = o.partition("=")
        if not eq:
            raise CliError(f"-o {o}: expected KEY=VALUE", client.EXIT_USAGE)
        try:
            out[k.strip()] = tomllib.loads(f"v = {v}")["v"]
        except tomllib.TOMLDecodeError:
            out[k.strip()] = v
    return out
