"""The `tierfs` command line (click).

Exit codes: 0 ok, 1 failed, 2 usage, 3 not in a running tierfs mount,
4 no such file, 5 permission denied, 6 configuration error, 7 catalog or
tier unreachable, 8 --wait timed out (tierfs/client.py).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import subprocess
import sys
import time

import click

from . import client, config as config_mod, errors, mounts
from .client import CliError
from .units import fmt_size

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


def fail(msg: str, code: int = client.EXIT_FAILED):
    click.echo(f"tierfs: {msg}", err=True)
    sys.exit(code)


class Group(click.Group):
    """Turns CliError / ConfigError into one line on stderr and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CliError as e:
            fail(str(e), e.code)
        except errors.TierfsError as e:
            fail(*_failure(e))


def _failure(e: errors.TierfsError) -> tuple[str, int]:
    """The one line and the exit code a tierfs error ends a command with."""
    if isinstance(e, errors.ConfigError):
        return f"configuration: {e}", client.EXIT_CONFIG
    if isinstance(e, errors.CatalogUnavailable):
        return str(e), client.EXIT_UNAVAILABLE
    if isinstance(e, errors.PermissionDenied):
        return str(e), client.EXIT_PERMISSION
    return str(e), client.EXIT_FAILED


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(package_name="tierfs")
def cli():
    """tierfs: a filesystem whose files live on storage tiers.

    \b
    Quick start:
      tierfs mount ~/tierfs          # embedded default: SQLite catalog, disk + vault tiers
      cp data.bin ~/tierfs/
      tierfs state ~/tierfs/data.bin
      tierfs archive --wait ~/tierfs/data.bin
      tierfs umount ~/tierfs
    """


def load_config(path, overrides=None):
    return config_mod.load(path, overrides)


def _parse_overrides(opts: tuple[str, ...]) -> dict:
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


# ---- mount / umount ---------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
              help="TOML config (default: $TIERFS_CONFIG, /etc/tierfs/tierfs.toml, else the embedded default)")
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground (what systemd runs).")
@click.option("-o", "options", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. -o restore_mode=error. Repeatable.")
@click.option("--ready-fd", type=int, hidden=True)
@click.option("--log-file", type=click.Path(dir_okay=False), hidden=True)
def mount(mountpoint, config_path, foreground, options, ready_fd, log_file):
    """Mount tierfs on MOUNTPOINT (an empty directory).

    Returns once the mount is live; the daemon keeps running in the
    background and logs to the state directory (its path is printed).
    A stale mount left by a killed daemon is cleaned up first.

    \b
    Examples:
      tierfs mount ~/tierfs
      tierfs mount -c /etc/tierfs/lab.toml /mnt/lab
      tierfs mount -o restore_mode=error /mnt/lab
    """
    cfg = load_config(config_path, _parse_overrides(options))
    mp = os.path.abspath(os.path.expanduser(mountpoint))
    if ready_fd is None:
        _prepare_mountpoint(mp)
    if foreground:
        _run_foreground(cfg, mp, ready_fd, log_file)
        return
    from .logs import log_path as _log_path, open_log
    config_mod.prepare_embedded_dirs(cfg)
    log_path = _log_path(cfg.state_dir, mounts.runtime_key(mp))
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "tierfs.cli", "mount", mp, "--foreground", "--ready-fd", str(w),
           "--log-file", log_path]
    if cfg.path:
        cmd += ["--config", cfg.path]
    for o in options:
        cmd += ["-o", o]
    with open(os.devnull, "rb") as devnull, os.fdopen(open_log(log_path), "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=logf, stderr=logf, pass_fds=(w,),
                                start_new_session=True, close_fds=True)
    os.close(w)
    text = ""
    with os.fdopen(r, "rb") as rf:
        for line in rf:  # warnings, then one line when the daemon reports; EOF if it dies
            text = line.decode(errors="replace").strip()
            if not text.startswith("warning:"):
                break
            click.echo(f"tierfs: {text.partition(':')[2].strip()}", err=True)
            text = ""
    if text == "ready" and mounts.wait_mounted(mp, 10):
        click.echo(f"tierfs mounted on {mp} (pid {proc.pid}, log {log_path})")
        return
    code = proc.poll()
    if text.startswith("error:"):
        parts = text.split(":", 2)
        exit_code = int(parts[1]) if parts[1].isdigit() else client.EXIT_FAILED
        fail(parts[2].strip(), exit_code)
    fail(f"the daemon exited (status {code}) before the mount was live; see {log_path}")


def _prepare_mountpoint(mp: str) -> None:
    m = mounts.find_mount(mp)
    if m is not None:
        stale = mounts.is_stale(mp)
        if mounts.find_mount(mp) is None:
            pass  # auto_unmount removed a dead daemon's mount meanwhile
        elif stale:
            try:
                mounts.unmount(mp, lazy=True)
            except RuntimeError as e:
                raise CliError(f"{mp}: stale mount left by a dead daemon, and unmounting it failed: {e}") from None
            click.echo(f"tierfs: cleaned up a stale mount on {mp} left by a daemon that died", err=True)
        else:
            raise CliError(f"{mp}: already mounted ({m.fstype}); `tierfs umount {mp}` first")
    if not os.path.isdir(mp):
        raise CliError(f"{mp}: mountpoint does not exist or is not a directory", client.EXIT_NOT_FOUND)
    if os.listdir(mp):
        raise CliError(f"{mp}: mountpoint is not empty")


def _run_foreground(cfg, mp: str, ready_fd: int | None, log_file: str | None) -> None:
    import signal
    from .daemon import Daemon
    from .logs import setup_logging

    # SIGHUP reloads once the daemon runs (daemon.signal_loop); until then, and while it
    # flushes after SIGTERM, it must not kill the process (the default action). A handler,
    # not SIG_IGN: programs the daemon starts (fusermount3, copytools) get the default back.
    signal.signal(signal.SIGHUP, lambda signum, frame: None)
    setup_logging(cfg.log_level, log_file)
    if ready_fd is not None:
        os.set_inheritable(ready_fd, False)  # helpers we spawn (fusermount3) must not hold it open

    def report(text: str) -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            try:
                os.write(ready_fd, text.encode())
                os.close(ready_fd)
            except OSError:
                pass
            ready_fd = None

    import logging
    log = logging.getLogger("tierfs")
    d = Daemon(cfg, mp)
    try:
        d.open()
    except errors.TierfsError as e:
        msg, code = _failure(e)
        log.error("%s", msg)
        report(f"error:{code}: {msg}")
        fail(msg, code)
    except Exception as e:  # noqa: BLE001 - a bug: log the traceback, tell the waiting CLI
        log.exception("tierfs failed to start")
        report(f"error:{client.EXIT_FAILED}: internal error at startup: {e!r} (see the log)")
        fail(f"internal error at startup: {e!r}")
    try:
        d.run(on_ready=lambda: report("".join(f"warning: {w}\n" for w in d.warnings) + "ready\n"))
    except errors.TierfsError as e:
        log.error("%s", e)
        report(f"error:{client.EXIT_FAILED}: {e}")
        fail(str(e))


@cli.command(context_settings=CONTEXT)
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--lazy", "-z", is_flag=True, help="Detach a busy mount now; it goes away when no longer used.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the daemon to finish.")
def umount(mountpoint, lazy, timeout):
    """Unmount a tierfs mount and wait for its daemon to finish flushing.

    \b
    Examples:
      tierfs umount ~/tierfs
      tierfs umount --lazy /mnt/lab     # busy: detach now
    """
    mp = os.path.abspath(os.path.expanduser(mountpoint))
    m = mounts.find_mount(mp)
    if m is None:
        raise CliError(f"{mp}: not mounted", client.EXIT_NOT_TIERFS)
    if m.fstype != "fuse.tierfs" and m.source != "tierfs":
        raise CliError(f"{mp}: not a tierfs mount ({m.fstype})", client.EXIT_NOT_TIERFS)
    pids = _daemon_pids(mp)
    try:
        mounts.unmount(mp, lazy=lazy)
    except RuntimeError as e:
        hint = " (busy: close the files using it, or use --lazy)" if "busy" in str(e).lower() else ""
        raise CliError(f"{mp}: {e}{hint}") from None
    deadline = time.monotonic() + timeout
    while any(mounts.pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    click.echo(f"tierfs unmounted {mp}")


def _daemon_pids(mp: str) -> list[int]:
    """Daemons serving `mp` (processes whose command line mounts it)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"tierfs.cli" in b" ".join(args) and b"--foreground" in args and mp.encode() in args:
            pids.append(int(d))
    return pids


# ---- state ------------------------------------------------------------------
def _ts(ns: int | None) -> str:
    if not ns:
        return "-"
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-r", "--recursive", is_flag=True, help="Every file under directories.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file (a JSON list).")
@click.option("-v", "--verbose", is_flag=True, help="Also the history and queued jobs of every file.")
def state(paths, recursive, as_json, verbose):
    """Show where each file's bytes are: state, tier, size, last access.

    Archived files also say when, by what and to where they were archived,
    and whether a restore is queued.

    \b
    Examples:
      tierfs state ~/tierfs/data.bin
      tierfs state -r --json ~/tierfs/project
    """
    rows = []
    for p in paths:
        client.check_in_mount(p)
    for path in client.walk(list(paths), recursive, files_only=False):
        try:
            inf = client.info(path)
        except OSError as e:
            raise client.os_error(path, e) from None
        inf["path"] = path
        rows.append(inf)
        if not as_json:
            _print_state(inf, verbose)
    if as_json:
        click.echo(json.dumps(rows, indent=1))


def _print_state(inf: dict, verbose: bool) -> None:
    tier = inf.get("tier") or inf.get("archive_tier") or "-"
    click.echo(f"{inf['path']}  {inf['state']}  {tier}  {fmt_size(inf.get('size', 0))}  "
               f"accessed {_ts(inf.get('atime_ns'))}")
    st = inf["state"]
    if st in ("archived", "dual", "restoring", "lost", "archiving") or verbose:
        if inf.get("archive_tier"):
            click.echo(f"    archive copy: {inf['archive_tier']}/{inf.get('archive_location')}"
                       f"  sha256 {(inf.get('checksum') or '-')[:16]}")
        click.echo(f"    {st} since {_ts(inf.get('state_ns'))} by {inf.get('state_cause') or '-'}")
        active = [j for j in inf.get("jobs", []) if j["state"] in ("pending", "running")]
        for j in active:
            err = f", last error: {j['last_error']}" if j.get("last_error") else ""
            click.echo(f"    {j['kind']} {j['state']} (job {j['id']}, attempts {j['attempts']}{err})")
        if st == "archived" and not any(j["kind"] == "restore" for j in active):
            click.echo("    no restore queued (`tierfs restore` or open it to restore)")
    if verbose:
        for e in inf.get("events", []):
            click.echo(f"    {_ts(e['time_ns'])} {e['from_state']} -> {e['to_state']}: {e['cause']} {e['detail']}")


# ---- requests ---------------------------------------------------------------
WAIT_TARGETS = {
    "archive": lambda inf, opts: inf["state"] in (("dual",) if opts.get("keep_online") else ("archived",)),
    "restore": lambda inf, opts: inf["state"] in ("online", "dual"),
    "release": lambda inf, opts: inf["state"] == "archived",
    "migrate": lambda inf, opts: inf["state"] in ("online", "dual") and inf.get("tier") == opts.get("to"),
}


def _request(verb: str, paths, recursive: bool, wait: bool, timeout: float, opts: dict) -> None:
    for p in paths:
        client.check_in_mount(p)
    files = list(client.walk(list(paths), recursive))
    words = [verb] + [k if v is True else f"{k}={v}" for k, v in opts.items() if v]
    value = " ".join(words)
    total = 0
    errors_seen = 0
    first_code = client.EXIT_OK
    for f in files:
        try:
            try:
                client.request(f, value)
            except PermissionError:
                if verb != "restore":
                    raise
                client.restore_by_open(f)  # the kernel lets only writers set user.* xattrs
            total += os.lstat(f).st_size
        except OSError as e:
            err = client.os_error(f, e, verb)
            click.echo(f"tierfs: {err}", err=True)
            errors_seen += 1
            first_code = first_code or err.code
    queued = len(files) - errors_seen
    click.echo(f"{verb}: {queued} file(s), {fmt_size(total)} requested"
               + (f", {errors_seen} refused" if errors_seen else ""))
    if wait and queued:
        _wait(verb, [f for f in files], opts, timeout)
    if errors_seen:
        sys.exit(first_code)


def _wait(verb: str, files: list[str], opts: dict, timeout: float) -> None:
    target = WAIT_TARGETS[verb]
    pending = set(files)
    failed = []
    deadline = time.monotonic() + timeout
    with click.progressbar(length=len(files), label=f"waiting for {verb}", file=sys.stderr,
                           show_pos=True, hidden=not sys.stderr.isatty()) as bar:
        while pending and time.monotonic() < deadline:
            for f in sorted(pending):
                try:
                    inf = client.info(f)
                except OSError:
                    pending.discard(f)
                    bar.update(1)
                    continue
                if target(inf, opts):
                    pending.discard(f)
                    bar.update(1)
                elif inf["state"] == "lost" or _gave_up(inf, verb):
                    failed.append((f, inf))
                    pending.discard(f)
                    bar.update(1)
            if pending:
                time.sleep(0.1)
    for f, inf in failed:
        err = next((j["last_error"] for j in inf.get("jobs", []) if j.get("last_error")), inf["state"])
        click.echo(f"tierfs: {f}: {verb} failed: {err}", err=True)
    if pending:
        fail(f"{len(pending)} file(s) not done after {timeout:.0f}s (still queued; see `tierfs state`)",
             client.EXIT_TIMEOUT)
    if failed:
        sys.exit(client.EXIT_FAILED)


def _gave_up(inf: dict, verb: str) -> bool:
    """The newest job of this kind for the file failed or was cancelled."""
    mine = [j for j in inf.get("jobs", []) if j["kind"] == verb]
    newest = max(mine, key=lambda j: j["id"], default=None)
    return newest is not None and newest["state"] in ("failed", "cancelled")


_wait_opts = [
    click.option("-r", "--recursive", is_flag=True, help="Every file under directories."),
    click.option("--wait", "-w", is_flag=True, help="Wait (with a progress bar) until done."),
    click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits."),
]


def _with(opts):
    def deco(f):
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@_with(_wait_opts)
@click.option("--keep-online", is_flag=True, help="Keep the online copy too (the file becomes dual).")
@click.option("--to", "to", metavar="TIER", help="Archive tier (default: default_archive).")
def archive(paths, recursive, wait, timeout, keep_online, to):
    """Queue files for archiving (their bytes move to an archive tier).

    \b
    Examples:
      tierfs archive --wait ~/tierfs/big.raw
      tierfs archive -r --keep-online --to vault ~/tierfs/project
    """
    _request("archive", paths, recursive, wait, timeout, {"keep_online": keep_online, "to": to})


@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@_with(_wait_opts)
@click.option("--to", "to", metavar="TIER", help="Online tier to restore to (default: the placement).")
def restore(paths, recursive, wait, timeout, to):
    """Queue restores of archived files (all of a tree with -r, in one batch).

    \b
    Examples:
      tierfs restore --wait ~/tierfs/big.raw
      tierfs restore -r --wait ~/tierfs/dataset
    """
    _request("restore", paths, recursive, wait, timeout, {"to": to})


@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-r", "--recursive", is_flag=True, help="Every file under directories.")
def release(paths, recursive):
    """Drop the online copy of dual files (instant; the archive copy stays).

    \b
    Example:
      tierfs release ~/tierfs/big.raw
    """
    _request("release", paths, recursive, False, 0, {})


@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@_with(_wait_opts)
@click.option("--to", "to", metavar="TIER", required=True, help="Online tier to move the bytes to.")
def migrate(paths, recursive, wait, timeout, to):
    """Move files' bytes to another online tier (paths and inodes stay).

    \b
    Example:
      tierfs migrate -r --wait --to s3 ~/tierfs/old-project
    """
    _request("migrate", paths, recursive, wait, timeout, {"to": to})


# ---- queue (reads the catalog) ------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.argument("mount_path", required=False, type=click.Path())
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), help="TOML config.")
@click.option("--failed", is_flag=True, help="Only failed jobs.")
@click.option("--all", "show_all", is_flag=True, help="Also done and cancelled jobs.")
@click.option("--cancel", "cancel", type=int, multiple=True, metavar="ID", help="Cancel a pending job.")
@click.option("--cancel-all", type=click.Choice(["restore", "archive", "migrate", "release"]),
              help="Cancel every pending job of a kind (a mass restore started by mistake).")
@click.option("--retry", "retry", type=int, multiple=True, metavar="ID", help="Queue a failed job again.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def queue(mount_path, config_path, failed, show_all, cancel, cancel_all, retry, as_json):
    """List pending, running and failed jobs (from the catalog).

    MOUNT_PATH (a mount or a path in it) selects the catalog that mount
    uses; without it, --config or the usual config lookup does.

    \b
    Examples:
      tierfs queue ~/tierfs
      tierfs queue --failed ~/tierfs
      tierfs queue --cancel-all restore ~/tierfs
    """
    from .catalog.base import JobState
    from .jobs import WAITING
    cat = _catalog_for(mount_path, config_path)
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
        jobs = cat.jobs(states)
        now = time.time_ns()
        rows = []
        for j in jobs:
            try:
                path = "/" + cat.path_of(j.ino).decode(errors="replace")
            except errors.NotFound:
                path = f"(inode {j.ino}, deleted)"
            waiting = j.state == JobState.PENDING and j.last_error.startswith(WAITING)
            rows.append(dict(id=j.id, kind=str(j.kind), state="waiting" if waiting else str(j.state), path=path,
                             target=j.target_tier, age_s=round((now - j.created_ns) / 1e9, 1), attempts=j.attempts,
                             last_error=j.last_error, cause=j.cause,
                             next_attempt_s=round(max(0, j.not_before_ns - now) / 1e9, 1)
                             if j.state == JobState.PENDING else None))
        if as_json:
            click.echo(json.dumps(rows, indent=1))
            return
        if not rows:
            click.echo("no jobs")
            return
        click.echo(f"{'ID':>6} {'KIND':8} {'STATE':9} {'AGE':>8} {'TRIES':>5}  PATH")
        for r in rows:
            err = f"  ({r['last_error']})" if r["last_error"] else ""
            if r["state"] == "waiting" or r["next_attempt_s"]:
                err += f", next attempt in {r['next_attempt_s']:.0f}s"
            click.echo(f"{r['id']:>6} {r['kind']:8} {r['state']:9} {r['age_s']:>7.0f}s {r['attempts']:>5}  "
                       f"{r['path']}{err}")
    finally:
        cat.close()


# ---- placement ----------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path())
@click.argument("tier", required=False)
@click.option("--clear", is_flag=True, help="Remove the directory's own placement (inherit again).")
def place(directory, tier, clear):
    """Show or set the tier new files under DIRECTORY go to.

    Without TIER: print the effective placement and where it comes from.
    With TIER: new files and subdirectories below DIRECTORY go to TIER
    (inherited until another directory overrides it). Existing files stay
    where they are (use `tierfs migrate -r --to TIER DIRECTORY`).

    \b
    Examples:
      tierfs place ~/tierfs/scratch            # -> "disk (from default_tier)"
      tierfs place ~/tierfs/results s3
      tierfs place --clear ~/tierfs/results
    """
    client.check_in_mount(directory)
    try:
        if clear:
            try:
                os.removexattr(directory, "user.tierfs.placement")
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
        elif tier:
            os.setxattr(directory, "user.tierfs.placement", tier.encode())
        value = os.getxattr(directory, "user.tierfs.effective_placement").decode()
    except OSError as e:
        err = client.os_error(directory, e, "placement")
        if e.errno == errno.EINVAL and tier:
            err = CliError(f"{directory}: cannot place on {tier!r}: not an online tier of this mount, "
                           "or not a directory", client.EXIT_FAILED)
        raise err from None
    name, _, source = value.partition(" ")
    click.echo(f"{directory}: {name} (from {source if source != 'default_tier' else 'default_tier'})")


# Command groups that live in their own modules register here (one line each).
from . import cli_admin; cli_admin.register(cli)  # noqa: E402,E702
from . import cli_policy; cli_policy.register(cli)  # noqa: E402,E702
from . import cli_fsck; cli_fsck.register(cli)  # noqa: E402,E702


def _catalog_for(mount_path: str | None, config_path: str | None):
    """The catalog of the mount containing mount_path, else of the config;
    CliError (exit 6, one line) when no tierfs has initialised it yet."""
    from . import cli_admin
    if mount_path:
        t = cli_admin.target_of(cli_admin.mount_of(mount_path).mountpoint, config_path)
    else:
        t = cli_admin.config_target(config_path)
    return cli_admin.open_catalog(t)


def main():
    cli(prog_name="tierfs")


if __name__ == "__main__":
    main()
