"""Catalog backends, chosen by URL scheme (see open_catalog)."""

from .. import errors
from .base import Catalog

#: The URL schemes open_catalog serves (for the refusal of any other).
SCHEMES = "sqlite:///PATH, mongodb://, mongodb+srv://"


def open_catalog(url: str) -> Catalog:
    """sqlite:///PATH -> the embedded SQLite catalog; mongodb://... -> MongoDB."""
    scheme = url.split(":", 1)[0].lower()
    if scheme.startswith("sqlite"):
        from .sql import SqlCatalog
        return SqlCatalog(url)
    if scheme in ("mongodb", "mongodb+srv"):
        try:
            from .mongo import MongoCatalog
        except ImportError as e:
            raise errors.ConfigError(f"catalog: MongoDB support needs pymongo ({e})") from e
        return MongoCatalog(url)
    if scheme.startswith("postgres"):
        raise errors.ConfigError(f"catalog: PostgreSQL is not supported (any more); use one of {SCHEMES}")
    raise errors.ConfigError(f"catalog: unsupported URL scheme {scheme!r} (use one of {SCHEMES})")
