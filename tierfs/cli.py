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
from .display import echo, name_fields, printable
from .redact import secret_keys
from .units import fmt_size

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


def fail(msg: str, code: int = client.EXIT_FAILED):
    # Line by line: some messages span lines on purpose (a config snippet to add); names in them are
    # escaped where the message is made, this catches any other control character.
    for line in f"tierfs: {msg}".split("\n"):
        echo(line, err=True)
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


#: `tierfs mount` hands its -o options to the daemon it starts in this environment variable (a JSON list of
#: KEY=VALUE), not on the daemon's command line: every local user can read /proc/PID/cmdline for the life of the
#: mount, /proc/PID/environ only the daemon's uid and root, and `-o catalog=` may carry a password.
OPTIONS_ENV = "TIERFS_MOUNT_OPTIONS"


def daemon_options(cmdline_options, raw: str | bytes | None) -> tuple[str, ...]:
    """Every -o option a daemon runs with: those on its command line (`tierfs
    mount -f -o ...` run by hand or by systemd), then those handed over in
    its environment (`raw`: the value of $TIERFS_MOUNT_OPTIONS there)."""
    try:
        extra = json.loads(raw) if raw else []
        if not isinstance(extra, list) or not all(isinstance(o, str) for o in extra):
            raise ValueError
    except ValueError:
        raise CliError(f"${OPTIONS_ENV}: expected a JSON list of KEY=VALUE strings", client.EXIT_USAGE) from None
    return tuple(cmdline_options or ()) + tuple(extra)


def _warn_secret_options(overrides: dict, on_daemon_cmdline: bool) -> None:
    """One line on stderr when -o carries a credential (never the value)."""
    keys = secret_keys(overrides)
    if not keys:
        return
    where = ("it is on this daemon's command line, which every local user can read" if on_daemon_cmdline else
             "it stays out of the daemon's command line, but shell history and `ps` of this command show it")
    echo(f"tierfs: warning: -o {', '.join(keys)} carries a password or secret: {where}; "
         "keep secrets in the config file (mode 0600)", err=True)


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
    if ready_fd is None:
        _warn_secret_options(_parse_overrides(options), on_daemon_cmdline=foreground)
    if foreground:
        options = daemon_options(options, os.environ.get(OPTIONS_ENV))
        os.environ.pop(OPTIONS_ENV, None)   # not for the copytools and helpers the daemon runs
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
    env = {k: v for k, v in os.environ.items() if k != OPTIONS_ENV}
    if options:
        env[OPTIONS_ENV] = json.dumps(list(options))
    with open(os.devnull, "rb") as devnull, os.fdopen(open_log(log_path), "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=logf, stderr=logf, pass_fds=(w,),
                                start_new_session=True, close_fds=True, env=env)
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
    tree = client.walk(paths, recursive, files_only=False)
    for path in tree:
        try:
            inf = client.info(path)
        except OSError as e:
            raise client.os_error(path, e) from None
        inf.update(name_fields("path", path))
        if as_json:
            rows.append(inf)
        else:
            _print_state(inf, verbose)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    for err in tree.errors:
        echo(f"tierfs: {err}", err=True)
    if tree.errors:
        sys.exit(tree.errors[0].code)


def _print_state(inf: dict, verbose: bool) -> None:
    tier = inf.get("tier") or inf.get("archive_tier") or "-"
    echo(f"{inf['path']}  {inf['state']}  {tier}  {fmt_size(inf.get('size', 0))}  "
         f"accessed {_ts(inf.get('atime_ns'))}")
    st = inf["state"]
    if st in ("archived", "dual", "restoring", "lost", "archiving") or verbose:
        if inf.get("archive_tier"):
            echo(f"    archive copy: {inf['archive_tier']}/{inf.get('archive_location')}"
                 f"  sha256 {(inf.get('checksum') or '-')[:16]}")
        echo(f"    {st} since {_ts(inf.get('state_ns'))} by {inf.get('state_cause') or '-'}")
        active = [j for j in inf.get("jobs", []) if j["state"] in ("pending", "running")]
        for j in active:
            err = f", last error: {j['last_error']}" if j.get("last_error") else ""
            echo(f"    {j['kind']} {j['state']} (job {j['id']}, attempts {j['attempts']}{err})")
        if st == "archived" and not any(j["kind"] == "restore" for j in active):
            echo("    no restore queued (`tierfs restore` or open it to restore)")
    if verbose:
        for e in inf.get("events", []):
            echo(f"    {_ts(e['time_ns'])} {e['from_state']} -> {e['to_state']}: {e['cause']} {e['detail']}")


# ---- requests ---------------------------------------------------------------
def _request(verb: str, paths, recursive: bool, wait: bool, timeout: float, opts: dict) -> None:
    """Send `verb` for every regular file named (or under a directory, with -r).

    Exit status: the first refusal's code; 1 when nothing was requested
    because every path named was not a regular file; with --wait, 1 when a
    job failed or was cancelled and 8 on timeout."""
    mountpoints = {client.check_in_mount(p).mountpoint for p in paths}
    for mp in mountpoints if opts.get("to") else ():
        _check_tier_option(verb, opts["to"], mp)
    tree = client.walk(paths, recursive)
    words = [verb] + [k if v is True else f"{k}={v}" for k, v in opts.items() if v]
    value = " ".join(words)
    total = requested = 0
    refused: list[CliError] = []
    sent: list[tuple[str, dict]] = []   # with --wait: (file, its jobs of this kind before the request)
    for f in tree:
        try:
            before = {"jobs": [j for j in client.info(f)["jobs"] if j["kind"] == verb]} if wait else None
            try:
                client.request(f, value)
            except PermissionError:
                if verb != "restore":
                    raise
                client.restore_by_open(f)  # the kernel lets only writers set user.* xattrs
            total += os.lstat(f).st_size
            if wait:
                sent.append((f, before))
            requested += 1
        except OSError as e:
            err = client.os_error(f, e, verb)
            if e.errno == errno.EINVAL:
                err = CliError(f"{printable(f)}: {verb}: {_why_invalid(verb, f)}", client.EXIT_FAILED)
            echo(f"tierfs: {err}", err=True)
            refused.append(err)
    refused += tree.errors
    for err in tree.errors:
        echo(f"tierfs: {err}", err=True)
    named = set(paths)
    for path, what in tree.skipped:
        if path in named:
            echo(f"tierfs: {path}: {verb}: a {what}, not a regular file: skipped", err=True)
    skipped = f"; skipped {len(tree.skipped)} non-regular file(s) (symlinks, FIFOs, devices...)" \
        if tree.skipped else ""
    echo(f"{verb}: {requested} file(s), {fmt_size(total)} requested"
         + (f", {len(refused)} refused" if refused else "") + skipped)
    if wait and sent:
        _wait(verb, sent, timeout)
    if refused:
        sys.exit(refused[0].code)
    if tree.skipped and not requested:
        sys.exit(client.EXIT_FAILED)


def _check_tier_option(verb: str, name: str, mountpoint: str) -> None:
    """--to names a tier of the mount with the role `verb` needs (one message
    instead of an EINVAL per file). The daemon checks again; a mount without
    xattrs cannot be asked, and is left to it."""
    try:
        kinds = {n: t["kind"] for n, t in json.loads(os.getxattr(mountpoint, "user.tierfs.stats"))["tiers"].items()}
    except (OSError, ValueError, KeyError):
        return
    from .tiers import tier_class
    archive = verb == "archive"
    if name not in kinds:
        raise CliError(f"--to {printable(name)}: no tier of that name on this mount (tiers: {', '.join(kinds)})",
                       client.EXIT_USAGE)
    try:
        is_archive = tier_class(kinds[name]).archive
    except errors.ConfigError:
        return
    if is_archive != archive:
        role = "an archive" if is_archive else "an online"
        raise CliError(f"--to {name}: is {role} tier; {verb} needs {'an archive' if archive else 'an online'} tier",
                       client.EXIT_USAGE)


#: Why the daemon refused a request with EINVAL (its reason does not travel through the errno), by the file's state.
_INVALID = {
    ("release", "online"): "is online, not dual: archive it first (or archive --keep-online)",
    ("release", "archiving"): "is being archived, not dual yet: release it once the archive is done",
    ("release", "lost"): "is lost (its archive copy is missing or corrupt): nothing to release",
    ("migrate", "archived"): "is archived: restore it before migrating",
    ("migrate", "restoring"): "is being restored: migrate it once it is online",
    ("migrate", "lost"): "is lost (its archive copy is missing or corrupt)",
}


def _why_invalid(verb: str, path: str) -> str:
    try:
        st = client.state(path)
    except OSError:
        return os.strerror(errno.EINVAL)
    if (verb, st) in _INVALID:
        return _INVALID[verb, st]
    if verb == "archive":
        return "refused: this mount has no archive tier to send it to (see its config, or give --to)"
    return f"refused for a file that is {st} (Invalid argument; the mount's log says why)"


def _wait(verb: str, sent: list[tuple[str, dict]], timeout: float) -> None:
    """Wait until the job behind each request has finished (done, failed or
    cancelled), whatever state the file is in by then (a reader may have
    restored a file archived meanwhile); report failures and a summary.
    `sent`: (file, its info's jobs of this kind before the request); the
    job is identified at the first look after it (client.job_for_request)."""
    pending = dict(sent)
    job_ids: dict[str, int | None] = {}
    done = needless = 0      # needless: the request needed no job (archive of an archived file...)
    failed: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    pause = 0.05
    with click.progressbar(length=len(sent), label=f"waiting for {verb}", file=sys.stderr,
                           show_pos=True, hidden=not sys.stderr.isatty()) as bar:
        while pending and time.monotonic() < deadline:
            for f, before in sorted(pending.items()):
                try:
                    inf = client.info(f)
                except OSError as e:
                    failed.append((f, f"{os.strerror(e.errno)} while waiting (deleted or renamed?)"))
                else:
                    if f not in job_ids:
                        job_ids[f] = client.job_for_request(before, inf, verb)
                    jid = job_ids[f]
                    job = client.job_of(inf, jid) if jid is not None else None
                    if job is not None and job["state"] not in client.JOB_FINISHED:
                        continue
                    if jid is None:
                        needless += 1
                    elif job is None or job["state"] == "done":   # None: 20 newer jobs since: long finished
                        done += 1
                    else:
                        failed.append((f, job.get("last_error") or job["state"]))
                del pending[f]
                bar.update(1)
            if pending:
                time.sleep(pause)
                pause = min(pause * 1.5, 1.0)   # 1,000 files: at most one info read per file per second
    for f, err in failed:
        echo(f"tierfs: {f}: {verb} failed: {err}", err=True)
    echo(f"{verb}: {done} done, {len(failed)} failed" + (f", {needless} needed nothing" if needless else "")
         + (f", {len(pending)} not finished" if pending else ""))
    if pending:
        fail(f"{len(pending)} file(s) not done after {timeout:.0f}s (still queued; see `tierfs state`)",
             client.EXIT_TIMEOUT)
    if failed:
        sys.exit(client.EXIT_FAILED)


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
@click.option("--limit", default=1000, show_default=True, metavar="N",
              help="Show at most N jobs, the most urgent first (0: all); says so when there are more.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def queue(mount_path, config_path, failed, show_all, cancel, cancel_all, retry, limit, as_json):
    """List pending, running and failed jobs (from the catalog).

    MOUNT_PATH (a mount or a path in it) selects the catalog that mount
    uses; without it, --config or the usual config lookup does.

    \b
    Examples:
      tierfs queue ~/tierfs
      tierfs queue --failed ~/tierfs
      tierfs queue --cancel-all restore ~/tierfs
      tierfs queue --all --limit 0 --json ~/tierfs > jobs.json
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
        if limit < 0:
            raise CliError("--limit: expected 0 (all) or a positive number", client.EXIT_USAGE)
        jobs = cat.jobs(states, limit=(limit or 10**12) + 1)   # one more than shown: are there more?
        more = len(jobs) > limit > 0
        jobs = jobs[:limit] if more else jobs
        now = time.time_ns()
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
                             next_attempt_s=round(max(0, j.not_before_ns - now) / 1e9, 1)
                             if j.state == JobState.PENDING else None))
        if as_json:
            click.echo(json.dumps(rows, indent=1))
        elif not rows:
            click.echo("no jobs")
        else:
            click.echo(f"{'ID':>6} {'KIND':8} {'STATE':9} {'AGE':>8} {'TRIES':>5}  PATH")
            for r in rows:
                err = f"  ({r['last_error']})" if r["last_error"] else ""
                if r["state"] == "waiting" or r["next_attempt_s"]:
                    err += f", next attempt in {r['next_attempt_s']:.0f}s"
                echo(f"{r['id']:>6} {r['kind']:8} {r['state']:9} {r['age_s']:>7.0f}s {r['attempts']:>5}  "
                     f"{r['path']}{err}")
        if more:
            echo(f"tierfs: showing the first {limit} jobs; there are more (--limit N, or --limit 0 for all)",
                 err=True)
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
            err = CliError(f"{printable(directory)}: cannot place on {tier!r}: not an online tier of this mount, "
                           "or not a directory", client.EXIT_FAILED)
        raise err from None
    name, _, source = value.partition(" ")
    echo(f"{directory}: {name} (from {source if source != 'default_tier' else 'default_tier'})")


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
