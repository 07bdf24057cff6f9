"""`tierfs policy check|run`: validate, preview and run lifecycle policies.

Both read the config and the catalog directly (no mount needed): --config,
else MOUNT's config, else the implied mount's (the one containing the
working directory, else the only one running: target.implied_mount), else
the usual lookup. A real
`run` queues jobs in the catalog, which the mounted daemons' workers pick
up within a second, and buries files of delete rules at once. It does not
take the scheduler's lease: jobs are coalesced per file, so a scheduled run
at the same moment does no harm.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sys

import click
import trio

from .. import client, errors
from ..client import CliError
from ..display import echo, name_fields
from ..policy.conditions import size_text
from ..policy.engine import Action, Engine, JobExecutor
from ..policy.rules import parse_rules, parse_watermarks
from ..tiers import tier_class
from .common import CONTEXT, config_option, fail
from .target import config_here

_config_opt = config_option("TOML config (default: MOUNT's, else the mount the working directory is in, else "
                            "the only running mount's; else $TIERFS_CONFIG, /etc/tierfs/tierfs.toml, the embedded "
                            "default)")
_mount_arg = click.argument("mount_path", metavar="[MOUNT]", required=False, type=click.Path())


@click.group(context_settings=CONTEXT)
def policy():
    """Lifecycle policies ([[policy]] tables in the config).

    \b
    Examples:
      tierfs policy check
      tierfs policy check /mnt/lab
      tierfs policy run --dry-run
      tierfs policy run --rule cold /mnt/lab
    """


@policy.command(context_settings=CONTEXT)
@_mount_arg
@_config_opt
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def check(mount_path, config_path, as_json):
    """Validate the policies and watermarks; list what each rule does.

    Exits 6 with a message naming the rule and the key when something is wrong.
    """
    cfg = config_here(config_path, mount_path)
    rules = parse_rules(cfg)
    marks = parse_watermarks(cfg)
    usage = {}
    for name in marks:
        t = cfg.tiers[name]
        try:
            u = tier_class(t.kind)(name, t).usage()
        except Exception:  # noqa: BLE001 - usage is informative only
            u = None
        usage[name] = None if not u or not u[0] else round((u[0] - u[1]) / u[0], 4)
    if as_json:
        click.echo(json.dumps(dict(
            config=cfg.path, rules=[dict(name=r.name, action=r.action, to=r.to, interval=r.interval,
                                         watermark=r.watermark, enabled=r.enabled, describe=r.describe())
                                    for r in rules],
            watermarks={n: dict(high=h, low=lo, used=usage[n]) for n, (h, lo) in marks.items()}), indent=1))
        return
    click.echo(f"{cfg.path or 'embedded default config'}: {len(rules)} rule(s)")
    for r in rules:
        click.echo(f"  {r.describe()}")
    for n, (h, lo) in marks.items():
        used = "unknown" if usage[n] is None else f"{usage[n]:.0%}"
        click.echo(f"  tier {n}: watermarks high {h:.0%} low {lo:.0%}, in use now {used}")
    if not rules:
        click.echo("  no [[policy]] tables: nothing runs")
    click.echo("configuration OK")


@policy.command(context_settings=CONTEXT)
@_mount_arg
@_config_opt
@click.option("--dry-run", "-n", is_flag=True, help="Only list what would be done.")
@click.option("--rule", "names", multiple=True, metavar="NAME", help="Run only this rule (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: actions, per-rule counts, totals.")
def run(mount_path, config_path, dry_run, names, as_json):
    """Run the policies now (every enabled rule, or --rule NAME).

    Lists each file acted on with the rule and the values that matched,
    then totals. Paths are relative to the mount.

    \b
    Examples:
      tierfs policy run --dry-run
      tierfs policy run --rule cold --json
    """
    from ..catalog import open_catalog
    cfg = config_here(config_path, mount_path)
    rules = parse_rules(cfg)
    if not rules:
        raise CliError(f"{cfg.path or 'the embedded default config'} has no [[policy]] tables", client.EXIT_USAGE)
    known = {r.name for r in rules}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CliError(f"no policy rule named {', '.join(map(repr, unknown))} (rules: {', '.join(known)})",
                       client.EXIT_USAGE)
    cat = open_catalog(cfg.catalog)
    try:
        cat.init(root_uid=os.getuid(), root_gid=os.getgid())
        who = f"tierfs policy run by uid {os.getuid()} on {socket.gethostname()}"
        engine = Engine(cat, rules, executor=JobExecutor(cat, who=who))

        def show(a: Action) -> None:
            prefix = f"{a.done}: " if a.done else ""
            echo(prefix + a.line())
        # The engine's warnings (a rule stopped, an action failed) are the daemon's log lines; here the lines
        # below say the same once each (the action's "error: ..." line, the rule's line, the last line).
        engine_log = logging.getLogger(Engine.__module__)
        level = engine_log.level
        engine_log.setLevel(logging.ERROR)
        try:
            report = trio.run(functools.partial(engine.run, list(names) or None, dry_run=dry_run, collect=as_json,
                                                on_action=None if as_json else show))
        finally:
            engine_log.setLevel(level)
        try:
            live = any(not s.clean for s in cat.sessions())
        except errors.CatalogUnavailable:
            live = True   # unknown: the catalog went away during the run (said below), no advice on mounts
    finally:
        cat.close()
    if as_json:
        out = report.to_dict()
        for a in out["actions"]:
            a.update(name_fields("path", a["path"]))   # display.py: how JSON carries names that are not UTF-8
        click.echo(json.dumps(out, indent=1))
    else:
        for st in report.rules:
            skipped = ", ".join(f"{n} {k}" for k, n in sorted(st.skipped.items()))
            click.echo(f"rule '{st.rule}': {st.candidates} candidate(s), {st.actions} file(s), "
                       f"{size_text(st.bytes)}" + (f", {st.already_queued} already queued" if st.already_queued else "")
                       + (f"; skipped: {skipped}" if skipped else "")
                       + (f"; stopped: {st.stopped}" if st.stopped else ""))
        click.echo(("dry run: " if dry_run else "") + report.summary())
        queued = sum(st.applied.get("queued", 0) for st in report.rules)
        if queued and not live:
            click.echo(f"{queued} job(s) queued; no mount of this catalog is running: they run when one mounts it")
    unreachable = [st for st in report.rules if st.error]
    if unreachable:   # the run stopped these rules: the catalog went away meanwhile
        fail(f"rule {', '.join(repr(st.rule) for st in unreachable)} stopped: {unreachable[0].error}; "
             "run the policy again when the catalog answers", client.EXIT_UNAVAILABLE)
    errors_seen = sum(st.applied.get("error", 0) for st in report.rules)
    if errors_seen:
        click.echo(f"tierfs: {errors_seen} action(s) failed (see above)", err=True)
        sys.exit(client.EXIT_FAILED)


COMMANDS = (policy,)
