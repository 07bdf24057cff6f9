"""Tier kinds, registered by the name used in the config's `kind` key."""

from __future__ import annotations

import importlib

from .. import errors
from .base import Tier

#: kind -> "module:Class"; modules import lazily so optional dependencies
#: (boto3, pymongo) are only needed when such a tier is configured.
KINDS = {
    "disk": "tierfs.tiers.disk:DiskTier",
    "vault": "tierfs.tiers.vault:VaultTier",
    "command": "tierfs.tiers.command:CommandTier",
    "s3": "tierfs.tiers.s3:S3Tier",
    "s3-archive": "tierfs.tiers.s3:S3ArchiveTier",
    "gridfs": "tierfs.tiers.gridfs:GridFSTier",
}


def tier_class(kind: str) -> type[Tier]:
    if kind not in KINDS:
        raise errors.ConfigError(f"unknown tier kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    mod, cls = KINDS[kind].split(":")
    try:
        return getattr(importlib.import_module(mod), cls)
    except ImportError as e:
        raise errors.ConfigError(f"tier kind {kind!r} is not available: {e}") from e
