"""tierfs: a FUSE filesystem whose namespace lives in a catalog and whose bytes live on storage tiers."""

__version__ = "0.1.0"
