"""The `tierfs` command line (click): the root group is app.py, each command
group a module of its own (see app.py); `tierfs = "tierfs.cli:main"`."""

from .app import cli, main

__all__ = ["cli", "main"]
