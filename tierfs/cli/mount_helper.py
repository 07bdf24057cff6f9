"""mount(8)'s helper for the `fuse.tierfs` type, and `tierfs install-helper`.

`mount -t fuse.tierfs SOURCE DIR -o OPTS` and an fstab line of type
`fuse.tierfs` make util-linux run (its "External helpers": /sbin, then
/sbin/fs.d and /sbin/fs)

    /sbin/mount.fuse.tierfs SOURCE DIR [-s] [-f] [-n] [-v] [-o OPTS]

with its own options already taken out of OPTS (defaults, noauto, x-*,
comment=...) and `user` expanded to noexec,nosuid,nodev. `run` turns that into
`tierfs mount --config SOURCE DIR -o ...` in this process, so it returns once
the mount is live, its daemon running in its own session (it survives the
helper, and systemd's mount units, which let it run in the unit's cgroup).

- SOURCE: a config file; `tierfs` or `none` means what `tierfs mount` with
  no --config uses ($TIERFS_CONFIG, /etc/tierfs/tierfs.toml, else the
  embedded default under $TIERFS_HOME).
- OPTS, one by one (classify()): a kernel mount flag (ro, noexec, nosuid,
  ...) goes to the kernel's mount; KEY=VALUE overrides config key KEY (the
  config's own check names an unknown key); `allow_other` is
  `allow_other=true`; options that say when or how mount(8) mounts
  (_netdev, nofail, user, owner, ...) and FUSE behaviour tierfs always has
  (default_permissions) are accepted and change nothing; anything else is
  refused with one line naming it, unless -s (sloppy) asks to ignore it.
- -f (fake) checks the configuration and mounts nothing; -n and -v change
  nothing (tierfs writes no mtab; it says what it mounted anyway).
- Exit status per mount(8)'s RETURN CODES: 0 mounted, 1 incorrect
  invocation (a bad option, a missing argument), 32 mount failure (the
  reason on stderr, as `tierfs mount` says it).

`tierfs install-helper` writes /sbin/mount.fuse.tierfs: a two-line script
that runs this module with this installation's Python (its absolute path)
and, for a checkout rather than an installed package, with PYTHONPATH
pinned to that checkout. It is root's and 0755, and it never replaces a
file it did not write.
"""

from __future__ import annotations

import os
import shlex
import site
import sys

import click

from .. import client
from ..client import CliError
from .common import CONTEXT
from .mount import KERNEL_FLAGS

#: mount(8) return codes (man mount, RETURN CODES)
EXIT_INVOCATION, EXIT_MOUNT_FAILURE = 1, 32

#: say when or how mount(8) and systemd mount (or who may): nothing for tierfs to do
NOT_OURS = frozenset({"defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev",
                      "nofail", "atime", "relatime", "diratime", "lazytime", "nolazytime", "loud", "silent",
                      "default_permissions"})   # tierfs always mounts with default_permissions
NOT_OURS_PREFIXES = ("x-", "comment=")
#: FUSE options that are tierfs config keys
FUSE_KEYS = {"allow_other": "allow_other=true"}
#: SOURCE words that mean "no config file named here"
NO_SOURCE = ("tierfs", "none")

HELPER_NAME = "mount.fuse.tierfs"
#: first lines of the script install-helper writes: how it recognises its own (and never replaces another's)
MARK = "# mount(8) helper for fuse.tierfs, written by `tierfs install-helper`"


class Refused(Exception):
    """An option tierfs does not know (mount(8)'s "incorrect invocation")."""


def split_opts(text: str) -> list[str]:
    """A mount option string split at commas outside double quotes (libmount
    lets a value hold commas that way: catalog="mongodb://a,b/db")."""
    out, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    out.append(cur)
    return [o.replace('"', "") for o in out if o]


def classify(opt: str) -> str | None:
    """The `tierfs mount -o` value of one mount(8) option, None for one that
    changes nothing; Refused for one tierfs does not know."""
    if opt in KERNEL_FLAGS:
        return opt
    if opt in FUSE_KEYS:
        return FUSE_KEYS[opt]
    if opt in NOT_OURS or opt.startswith(NOT_OURS_PREFIXES):
        return None
    if "=" in opt and opt.partition("=")[0]:
        return opt
    raise Refused(opt)


def parse_args(argv: list[str]) -> tuple[str, str, list[str], set[str]]:
    """SOURCE, DIR, the -o options and the single-letter flags mount(8) passed."""
    positional, opts, flags = [], [], set()
    args = iter(argv)
    for a in args:
        if a == "-o":
            opts += split_opts(next(args, ""))
        elif a.startswith("-o"):
            opts += split_opts(a[2:])
        elif a.startswith("-") and len(a) > 1:
            unknown = set(a[1:]) - set("sfnv")
            if unknown:
                raise CliError(f"unknown flag -{''.join(sorted(unknown))} (mount(8) passes -s -f -n -v)",
                               EXIT_INVOCATION)
            flags |= set(a[1:])
        else:
            positional.append(a)
    if len(positional) != 2:
        raise CliError(f"usage: {HELPER_NAME} SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] "
                       "(SOURCE: a config file, or `tierfs`)", EXIT_INVOCATION)
    return positional[0], positional[1], opts, flags


def mount_options(opts: list[str], sloppy: bool) -> list[str]:
    """The `tierfs mount -o` values of mount(8)'s options (classify); -s: unknown ones ignored."""
    out = []
    for opt in opts:
        try:
            value = classify(opt)
        except Refused:
            if sloppy:
                continue
            raise CliError(f"unknown mount option {opt!r} (not a mount(8), FUSE or tierfs option; "
                           "config keys go as KEY=VALUE)", EXIT_INVOCATION) from None
        if value is not None:
            out.append(value)
    return out


def main(argv: list[str] | None = None) -> None:
    """/sbin/mount.fuse.tierfs (module doc)."""
    # tierfs mount's own command, not the root group (app.py imports this module: no cycle)
    from .. import config as config_mod, errors
    from .common import fail, failure
    from .mount import mount, split_options
    try:
        source, mountpoint, opts, flags = parse_args(sys.argv[1:] if argv is None else argv)
        config = None if source in NO_SOURCE else os.path.abspath(source)
        values = mount_options(opts, sloppy="s" in flags)
        if "f" in flags:   # fake: everything but the mount
            config_mod.load(config, split_options(values)[1])
            return
    except (CliError, errors.TierfsError) as e:
        msg, code = failure(e)
        fail(msg, code if code == EXIT_INVOCATION else EXIT_MOUNT_FAILURE)
    args = [os.path.abspath(mountpoint), *(["--config", config] if config else [])]
    for value in values:
        args += ["-o", value]
    os.chdir("/")   # the daemon must not hold the caller's directory (mount(8) may run anywhere)
    try:
        mount.main(args=args, prog_name="tierfs mount", standalone_mode=False)
    except (CliError, errors.TierfsError) as e:   # what the root group turns into a line and an exit code
        msg, code = failure(e)
        fail(msg, EXIT_INVOCATION if code == client.EXIT_USAGE else EXIT_MOUNT_FAILURE)
    except SystemExit as e:
        if e.code:
            sys.exit(EXIT_INVOCATION if e.code == client.EXIT_USAGE else EXIT_MOUNT_FAILURE)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_INVOCATION)


# ---- tierfs install-helper --------------------------------------------------
def helper_script() -> str:
    """The helper for this installation: its Python, and its package directory
    when that is not where the Python finds packages (a checkout)."""
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    installed = pkg_root in {os.path.abspath(p) for p in site.getsitepackages()}
    env = "" if installed else f"PYTHONPATH={shlex.quote(pkg_root)} "
    # -P: not the caller's directory first on sys.path (a directory named tierfs there must not be run);
    # -c, not -m: tierfs.cli imports this module already, and runpy warns about running it a second time
    code = "from tierfs.cli.mount_helper import main; main()"
    return (f"#!/bin/sh\n{MARK} (tierfs in {pkg_root}).\n"
            f"exec env {env}{shlex.quote(sys.executable)} -P -c {shlex.quote(code)} \"$@\"\n")


@click.command("install-helper", context_settings=CONTEXT)
@click.option("--prefix", default="/sbin", show_default=True, type=click.Path(file_okay=False),
              help="Directory mount(8) looks in for mount.TYPE helpers.")
@click.option("--remove", is_flag=True, help="Remove the helper this command installed.")
def install_helper(prefix, remove):
    """Install mount(8)'s helper, so that fstab lines and `mount -t fuse.tierfs` work.

    \b
    Then:
      mount -t fuse.tierfs /etc/tierfs/lab.toml /mnt/lab -o allow_other
      # /etc/fstab:
      /etc/tierfs/lab.toml  /mnt/lab  fuse.tierfs  defaults,_netdev,allow_other  0 0
    """
    path = os.path.join(prefix, HELPER_NAME)
    try:
        with open(path) as f:
            ours = MARK in f.read(512)
    except FileNotFoundError:
        ours = None
    except (OSError, UnicodeDecodeError):
        ours = False
    if ours is False:
        raise CliError(f"{path} exists and was not written by tierfs install-helper: left alone")
    if remove:
        if ours:
            os.unlink(path)
            click.echo(f"removed {path}")
        else:
            click.echo(f"{path}: not installed")
        return
    if os.geteuid() != 0:
        raise CliError(f"{path}: mount(8) runs helpers as root; run install-helper as root",
                       client.EXIT_PERMISSION)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
        with os.fdopen(fd, "w") as f:
            f.write(helper_script())
        os.chown(tmp, 0, 0)
        os.chmod(tmp, 0o755)   # not the umask's: root's, readable and runnable by all, writable by root only
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise CliError(f"{path}: {e.strerror}") from None
    click.echo(f"installed {path} (runs {sys.executable})")


COMMANDS = (install_helper,)
