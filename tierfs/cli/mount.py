"""`tierfs mount`, `tierfs umount` and `tierfs reload` (SIGHUP to a mount's daemon,
found by its runtime file: logrotate's postrotate).

`tierfs mount` (without -f) starts `python -m tierfs.cli mount -f` in a new
session and waits on a pipe until it reports "ready" or the error that
stopped it; the daemon (tierfs/daemon.py) then publishes its runtime file
(tierfs/runtime.py), which `tierfs umount` reads to wait for it. Until
the mount is live the daemon writes its errors to the terminal of `tierfs
mount` (inherited stderr) and holds its log records in memory: a refused
mount says why there and creates no log file (tierfs/logs.py).

`-o` takes config overrides (KEY=VALUE) and the kernel's mount flags
(`ro`, `noexec`, ...: KERNEL_FLAGS), which the daemon hands to FUSE; that is
also what mount(8)'s helper (mount_helper.py) translates fstab options to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import click

from .. import client, config as config_mod, errors, mounts, runtime
from ..client import CliError
from ..display import echo
from ..redact import secret_keys
from .common import CONTEXT, fail, failure, parse_overrides

#: `tierfs mount` hands its -o options to the daemon it starts in this environment variable (a JSON list of
#: KEY=VALUE), not on the daemon's command line: every local user can read /proc/PID/cmdline for the life of the
#: mount, /proc/PID/environ only the daemon's uid and root, and `-o catalog=` may carry a password.
OPTIONS_ENV = "TIERFS_MOUNT_OPTIONS"


#: mount flags libfuse passes to mount(2) for us (its lib/mount.c); the rest of a mount's options are tierfs's
KERNEL_FLAGS = frozenset({"ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync", "async",
                          "dirsync", "noatime", "nodiratime", "strictatime", "nostrictatime", "norelatime",
                          "symfollow", "nosymfollow"})


def split_options(options) -> tuple[tuple[str, ...], dict]:
    """-o values: the kernel mount flags among them, and the config overrides."""
    flags = tuple(o for o in options if o in KERNEL_FLAGS)
    return flags, parse_overrides(tuple(o for o in options if o not in KERNEL_FLAGS))


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
@click.command(context_settings=CONTEXT)
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
              help="TOML config (default: $TIERFS_CONFIG, /etc/tierfs/tierfs.toml, else the embedded default)")
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground (what systemd runs).")
@click.option("-o", "options", multiple=True, metavar="KEY=VALUE|FLAG",
              help="Override a config key, e.g. -o restore_mode=error, or a kernel mount flag (ro, noexec, "
                   "nosuid, nodev, noatime, ...). Repeatable.")
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
      tierfs mount -o ro -o allow_other=true /mnt/lab
    """
    if ready_fd is None:
        _warn_secret_options(split_options(options)[1], on_daemon_cmdline=foreground)
    if foreground:
        options = daemon_options(options, os.environ.get(OPTIONS_ENV))
        os.environ.pop(OPTIONS_ENV, None)   # not for the copytools and helpers the daemon runs
    flags, overrides = split_options(options)
    cfg = config_mod.load(config_path, overrides)
    mp = os.path.abspath(os.path.expanduser(mountpoint))
    if ready_fd is None:
        _prepare_mountpoint(mp)
    if foreground:
        _run_foreground(cfg, mp, flags, ready_fd, log_file)
        return
    from ..logs import log_path as _log_path
    log_path = _log_path(cfg.state_dir, mounts.runtime_key(mp))
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "tierfs.cli", "mount", mp, "--foreground", "--ready-fd", str(w),
           "--log-file", log_path]
    if cfg.path:
        cmd += ["--config", cfg.path]
    env = {k: v for k, v in os.environ.items() if k != OPTIONS_ENV}
    if options:
        env[OPTIONS_ENV] = json.dumps(list(options))
    # stderr: ours until the mount is live (what stops it is said here); then the daemon's log (logs.start_log_file)
    with open(os.devnull, "r+b") as devnull:
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=devnull, pass_fds=(w,),
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
    where = f"see {log_path}" if os.path.exists(log_path) else "its output, if any, is above"
    fail(f"the daemon exited (status {code}) before the mount was live; {where}")


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


def _run_foreground(cfg, mp: str, flags: tuple[str, ...], ready_fd: int | None, log_file: str | None) -> None:
    import signal
    from ..daemon import Daemon
    from ..logs import setup_logging, start_log_file

    # SIGHUP reloads once the daemon runs (daemon.signal_loop); until then, and while it
    # flushes after SIGTERM, it must not kill the process (the default action). A handler,
    # not SIG_IGN: programs the daemon starts (fusermount3, copytools) get the default back.
    signal.signal(signal.SIGHUP, lambda signum, frame: None)
    background = ready_fd is not None and log_file is not None
    setup_logging(cfg.log_level, None if background else log_file, defer=background)
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

    def stop(msg: str, code: int) -> None:
        """Startup failed: the waiting `tierfs mount` says it (once), else we do."""
        if ready_fd is None:
            fail(msg, code)
        report(f"error:{code}: {msg}")
        sys.exit(code)

    def ready() -> None:
        if background:
            start_log_file(log_file)
        report("".join(f"warning: {w}\n" for w in d.warnings) + "ready\n")

    import logging
    log = logging.getLogger("tierfs")
    d = Daemon(cfg, mp, kernel_flags=flags)
    try:
        d.open()
    except errors.TierfsError as e:
        msg, code = failure(e)
        log.error("%s", msg)
        stop(msg, code)
    except Exception as e:  # noqa: BLE001 - a bug: keep the traceback in the log, tell the waiting CLI
        log.exception("tierfs failed to start")
        if background:
            start_log_file(log_file)
        stop(f"internal error at startup: {e!r} (see {log_file or 'the log'})", client.EXIT_FAILED)
    try:
        d.run(on_ready=ready)
    except errors.TierfsError as e:
        log.error("%s", e)
        stop(str(e), client.EXIT_FAILED)


@click.command(context_settings=CONTEXT)
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
    try:
        rec = runtime.find(mp, m.owner_uid)
    except runtime.Unreadable:
        rec = None   # fusermount3 decides whether we may unmount it; only the wait below needs the pid
    try:
        mounts.unmount(mp, lazy=lazy)
    except RuntimeError as e:
        hint = " (busy: close the files using it, or use --lazy)" if "busy" in str(e).lower() else ""
        raise CliError(f"{mp}: {e}{hint}") from None
    deadline = time.monotonic() + timeout
    while rec is not None and mounts.pid_alive(rec.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    click.echo(f"tierfs unmounted {mp}")


@click.command(context_settings=CONTEXT)
@click.argument("mountpoints", nargs=-1, type=click.Path(file_okay=False))
def reload(mountpoints):
    """Make tierfs daemons reopen their log and reload their configuration (SIGHUP).

    Without MOUNTPOINT: every tierfs mount whose daemon this user can signal
    (root: all); what logrotate's postrotate runs (systemd/logrotate). Each
    daemon logs what the reload changed, or why it refused it.

    \b
    Examples:
      tierfs reload /mnt/lab
      tierfs reload                 # all of them
    """
    import signal
    named = [os.path.abspath(os.path.expanduser(p)) for p in mountpoints]
    targets = [m for m in mounts.tierfs_mounts() if not named or m.mountpoint in named]
    missing = sorted(set(named) - {m.mountpoint for m in targets})
    if missing:
        raise CliError(f"{missing[0]}: not a tierfs mount", client.EXIT_NOT_TIERFS)
    problems = []
    for m in targets:
        try:
            rec = runtime.find(m.mountpoint, m.owner_uid)
            if rec is None:
                raise OSError(f"no runtime file of a live daemon in {', '.join(runtime.dirs_of(m.owner_uid))}")
            os.kill(rec.pid, signal.SIGHUP)
        except (runtime.Unreadable, OSError) as e:
            problems.append(f"{m.mountpoint}: {e.strerror if getattr(e, 'strerror', None) else e}")
            continue
        click.echo(f"tierfs reloading {m.mountpoint} (pid {rec.pid}): see its log")
    if problems and (named or os.getuid() == 0):
        raise CliError("; ".join(problems))


COMMANDS = (mount, umount, reload)
