"""The `tierfs` command line: the root group.

It turns every CliError / TierfsError a command raises into one line on
stderr and an exit code (common.failure, the one mapping), and registers
the command groups, one module each:

    mount.py      mount, umount, reload
    mount_helper.py  install-helper (and mount(8)'s /sbin/mount.fuse.tierfs)
    files.py      state, archive, restore, release, migrate, wait, place (through the mount's xattrs)
    queue.py      queue (the catalog's jobs)
    admin.py      status, find, du (catalog queries)
    listing.py    ls (a listing with states, from the catalog)
    importing.py  import
    policy.py     policy check | run
    fsck.py       fsck
    config.py     config show | check | example

Which mount, config and catalog a command acts on: target.py (the mount's
runtime file, tierfs/runtime.py). The root imports the command modules,
never the reverse.

Exit codes: 0 ok, 1 failed, 2 usage, 3 not in a running tierfs mount,
4 no such file, 5 permission denied, 6 configuration error, 7 catalog or
tier unreachable, 8 --wait timed out (tierfs/client.py).
"""

from __future__ import annotations

import click

from .. import errors
from ..client import CliError
from . import admin, config, files, fsck, importing, listing, mount, mount_helper, policy, queue
from .common import CONTEXT, fail, failure


class Group(click.Group):
    """Turns CliError / TierfsError into one line on stderr and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (CliError, errors.TierfsError) as e:
            fail(*failure(e))


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


for _module in (mount, mount_helper, files, listing, queue, admin, importing, policy, fsck, config):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main():
    cli(prog_name="tierfs")
