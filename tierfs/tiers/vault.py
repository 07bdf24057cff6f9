"""The `vault` archive tier: a directory (a slower disk, an NFS share, a tape
staging area) holding archive copies as objects keyed by id.

It stores like the disk tier but is an archive: files whose bytes are only
here are `archived` and must be restored to an online tier before reading.
`restore_delay` and `archive_delay` (durations) imitate a slow medium: every
restore read / archive write waits that long first, so demos and tests can
watch a move in progress.
"""

from __future__ import annotations

import time
from typing import BinaryIO

from ..settings import VaultTable
from .disk import DiskTier


class VaultTier(DiskTier):
    kind = "vault"
    archive = True
    settings: VaultTable

    def __init__(self, name: str, settings: VaultTable | None = None, /, **options):
        super().__init__(name, settings, **options)
        self.restore_delay = self.settings.restore_delay
        self.archive_delay = self.settings.archive_delay

    def local_path(self, key: str) -> str | None:
        return None  # archive copies are never read or written in place

    def put(self, key: str, src: BinaryIO) -> int:
        if self.archive_delay:
            time.sleep(self.archive_delay)
        return super().put(key, src)

    def open_reader(self, key: str) -> BinaryIO:
        if self.restore_delay:
            time.sleep(self.restore_delay)
        return super().open_reader(key)
