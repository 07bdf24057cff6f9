"""Catalog backends, chosen by URL scheme (see open_catalog)."""

from .. import errors
from .base import Catalog


def open_catalog(url: str) -> Catalog:
    """sqlite:///... and postgresql://... -> SQLAlchemy; mongodb://... -> MongoDB."""
    scheme = url.split(":", 1)[0].lower()
    if scheme.startswith("sqlite") or scheme.startswith("postgresql"):
        from .sql import SqlCatalog
        return SqlCatalog(url)
    if scheme in ("mongodb", "mongodb+srv"):
        try:
            from .mongo import MongoCatalog
        except ImportError as e:
            raise errors.ConfigError(f"catalog: MongoDB support needs pymongo ({e})") from e
        return MongoCatalog(url)
    raise errors.ConfigError(f"catalog: unsupported URL scheme {scheme!r} (use sqlite:///, postgresql://, mongodb://)")
