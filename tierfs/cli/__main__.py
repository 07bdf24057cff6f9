"""`python -m tierfs.cli` (what `tierfs mount` starts its daemon with)."""

from .app import main

main()
