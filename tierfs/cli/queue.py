"""`tierfs queue`: the job queue, read from the catalog of a mount (or of
--config): list, cancel, retry."""

from __future__ import annotations

import json
import time

import click

from .. import client, errors
from ..client import CliError
from ..display import echo, name_fields
from .common import CONTEXT, config_option
from .target import catalog_for

@click.command(context_settings=CONTEXT)
@click.argument("mount_path", required=False, type=click.Path())
@config_option()
@click.option("--failed", is_flag=True, help="Only failed jobs.")
@click.option("--all", "show_all", is_flag=True, help="Also done and cancelled jobs.")
@click.option("--cancel", "cancel", type=int, multiple=True, metavar="ID", help="Cancel a pending job.")
@click.option("--cancel-all", type=click.Choice(["restore", "archive", "migrate", "release"]),
              help="Cancel every pending job of a kind (a mass restore started by mistake).")
@click.option("--retry", "retry", type=int, multiple=True, metavar="ID", help="Queue a failed job again.")
@click.option("--limit", default=1000, show_default=True, metavar="N",
              help="Show at most N jobs, the most urgent first (0: all); says so when there are more.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def queue(mount_path, config_path, failed, show_all, cancel, cancel_all, retry, limit, as_json):
    """List pending, running and failed jobs (from the catalog).

    RUN BY names the mount running a job: HOST/SESSION, the session (and
    its host) that claimed it; waiting and failed jobs show "-".

    MOUNT_PATH (a mount or a path in it) selects the catalog that mount
    uses; without it, --config; else the mount the working directory is
    in, else the only running mount; else the usual config lookup.

    \b
    Examples:
      tierfs queue ~/tierfs
      tierfs queue --failed ~/tierfs
      tierfs queue --cancel-all restore ~/tierfs
      tierfs queue --all --limit 0 --json ~/tierfs > jobs.json
    """
    from ..catalog.base import JobState
    from ..jobs import WAITING
    cat = catalog_for(mount_path, config_path)
    try:
        if cancel or cancel_all:
            n = cat.cancel_jobs(list(cancel) if cancel else None, kind=cancel_all)
            click.echo(f"cancelled {n} job(s)")
            return
        if retry:
            for jid in retry:
                try:
                    job = cat.get_job(jid)
                except errors.NotFound:
                    raise CliError(f"no job {jid}", client.EXIT_NOT_FOUND) from None
                if job.state != JobState.FAILED:
                    raise CliError(f"job {jid} is {job.state}; only failed jobs can be retried")
                cat.retry_job(jid, "retried by operator", 0)
            click.echo(f"queued {len(retry)} job(s) again")
            return
        states = None if show_all else ([JobState.FAILED] if failed else
                                        [JobState.PENDING, JobState.RUNNING, JobState.FAILED])
        if limit < 0:
            raise CliError("--limit: expected 0 (all) or a positive number", client.EXIT_USAGE)
        jobs = cat.jobs(states, limit=(limit or 10**12) + 1)   # one more than shown: are there more?
        more = len(jobs) > limit > 0
        jobs = jobs[:limit] if more else jobs
        now = time.time_ns()
        hosts = {s.id: s.host for s in cat.sessions()}   # a running job's claim: which mount runs it
        rows = []
        for j in jobs:
            try:
                path = name_fields("path", b"/" + cat.path_of(j.ino))
            except errors.NotFound:
                path = {"path": f"(inode {j.ino}, deleted)"}
            waiting = j.state == JobState.PENDING and j.last_error.startswith(WAITING)
            rows.append(dict(id=j.id, kind=str(j.kind), state="waiting" if waiting else str(j.state), **path,
                             target=j.target_tier, age_s=round((now - j.created_ns) / 1e9, 1), attempts=j.attempts,
                             last_error=j.last_error, cause=j.cause,
                             session=j.session if j.state == JobState.RUNNING else None,
                             host=hosts.get(j.session) if j.state == JobState.RUNNING else None,
                             next_attempt_s=round(max(0, j.not_before_ns - now) / 1e9, 1)
                             if j.state == JobState.PENDING else None))
        if as_json:
            click.echo(json.dumps(rows, indent=1))
        elif not rows:
            click.echo("no jobs")
        else:
            click.echo(f"{'ID':>6} {'KIND':8} {'STATE':9} {'AGE':>8} {'TRIES':>5}  {'RUN BY':24} PATH")
            for r in rows:
                err = f"  ({r['last_error']})" if r["last_error"] else ""
                if r["state"] == "waiting" or r["next_attempt_s"]:
                    err += f", next attempt in {r['next_attempt_s']:.0f}s"
                by = f"{r['host'] or '?'}/{r['session']}" if r["session"] else "-"
                echo(f"{r['id']:>6} {r['kind']:8} {r['state']:9} {r['age_s']:>7.0f}s {r['attempts']:>5}  "
                     f"{by:24} {r['path']}{err}")
        if more:
            echo(f"tierfs: showing the first {limit} jobs; there are more (--limit N, or --limit 0 for all)",
                 err=True)
    finally:
        cat.close()


COMMANDS = (queue,)
