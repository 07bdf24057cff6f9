"""The `gridfs` tier: objects as GridFS files in a MongoDB database.

Config: `url` (mongodb://..., required), `bucket` (GridFS bucket name,
default "tierfs"), `database` (default: the URL's database, else "tierfs"),
`chunk_size` (GridFS chunk size, default 255 KiB).

Storage: an object is a GridFS file whose filename is the tier key; the
bucket's `<bucket>.files` documents hold (_id, filename, length, chunkSize,
uploadDate) and `<bucket>.chunks` documents hold (files_id, n, data).

- put() uploads a new revision under the key and only then deletes the
  older revisions. GridFS writes the files document after the last chunk,
  so a reader finds either the old complete revision or the new complete
  one, never a partial upload. A failed upload aborts (its chunks go).
- read(key, offset, size) fetches only the chunks covering the range (one
  query on (files_id, n)), never the whole file.
- Every call has the client deadlines below; network failures and timeouts
  are retried briefly (retry_call) and then raise TierUnavailable.
"""

from __future__ import annotations

import logging
from typing import BinaryIO, Iterator

from .. import errors
from ..settings import GridFSTable
from .base import RawReader, Tier, copy_stream, retry_call

log = logging.getLogger(__name__)

#: Client deadlines (milliseconds) unless the URL sets them.
DEFAULTS = {"serverSelectionTimeoutMS": 5000, "connectTimeoutMS": 3000, "socketTimeoutMS": 20000}
DEADLINE_S = 20.0   # one tier call, retries included


def _is_temp(e: BaseException) -> bool:
    """Worth retrying: a dropped connection or a timeout. Not "no server
    found": that already waited serverSelectionTimeoutMS."""
    from pymongo.errors import ConnectionFailure, ExecutionTimeout, ServerSelectionTimeoutError, WTimeoutError
    if isinstance(e, ServerSelectionTimeoutError):
        return False
    return isinstance(e, (ConnectionFailure, ExecutionTimeout, WTimeoutError))


class GridFSTier(Tier):
    kind = "gridfs"
    settings: GridFSTable

    @classmethod
    def object_store(cls, settings: GridFSTable) -> tuple[tuple, str] | None:
        rest = settings.url.split("://", 1)[-1]
        hosts = rest.split("/", 1)[0].rsplit("@", 1)[-1]  # without credentials
        db = settings.database or (rest.split("/", 1)[1].split("?", 1)[0] if "/" in rest else "") or "tierfs"
        return ("gridfs", hosts, db, settings.bucket), ""

    def __init__(self, name: str, settings: GridFSTable | None = None, /, **options):
        super().__init__(name, settings, **options)
        import pymongo
        from pymongo.errors import ConfigurationError, InvalidURI
        from ..redact import redact_url
        self.url = self.settings.url
        self.safe_url = redact_url(self.url)
        try:
            parsed = pymongo.uri_parser.parse_uri(self.url)
        except (InvalidURI, ConfigurationError, ValueError) as e:
            raise errors.ConfigError(f"tiers.{name}.url: invalid MongoDB URL {self.safe_url}: {e}") from None
        given = {k.lower() for k in parsed["options"]}
        kw = {k: v for k, v in DEFAULTS.items() if k.lower() not in given}
        self.bucket_name = self.settings.bucket
        self.chunk_size = self.settings.chunk_size
        self.client = pymongo.MongoClient(self.url, appname=f"tierfs-{name}", **kw)
        self.db = self.client[self.settings.database or parsed["database"] or "tierfs"]
        self.files = self.db[f"{self.bucket_name}.files"]
        self.chunks = self.db[f"{self.bucket_name}.chunks"]
        self._bucket = None
        #: chunk documents fetched by read() (tests check ranged reads stay small)
        self.chunks_fetched = 0

    @property
    def bucket(self):
        if self._bucket is None:
            import gridfs
            self._bucket = gridfs.GridFSBucket(self.db, bucket_name=self.bucket_name,
                                               chunk_size_bytes=self.chunk_size)
        return self._bucket

    def __repr__(self) -> str:
        return f"<gridfs tier {self.name!r} {self.safe_url} bucket {self.bucket_name}>"

    def _call(self, fn, what: str):
        """Run fn with bounded retries; driver errors become TierfsErrors naming the tier."""
        from pymongo.errors import PyMongoError
        try:
            return retry_call(fn, what=f"tier {self.name} ({self.safe_url}): {what}", is_temp=_is_temp,
                              deadline_s=DEADLINE_S, max_attempts=3)
        except PyMongoError as e:
            raise errors.TierUnavailable(f"tier {self.name} ({self.safe_url}): {what}: {e}") from e

    def check(self) -> None:
        self._call(lambda: self.db.command("ping"), "ping")
        self._call(self._ensure_indexes, "create indexes")

    def _ensure_indexes(self) -> None:
        # The indexes GridFS itself creates on first upload; made up front so
        # lookups by filename and ranged chunk reads are indexed from the start.
        self.files.create_index([("filename", 1), ("uploadDate", 1)])
        self.chunks.create_index([("files_id", 1), ("n", 1)], unique=True)

    def close(self) -> None:
        self.client.close()

    # ---- objects -----------------------------------------------------------
    def _current(self, key: str) -> dict | None:
        """The newest complete revision's files document, or None."""
        return self.files.find_one({"filename": key}, sort=[("uploadDate", -1), ("_id", -1)])

    def put(self, key: str, src: BinaryIO) -> int:
        def upload():
            gin = self.bucket.open_upload_stream(key)
            try:
                n = copy_stream(src, gin.write)
                gin.close()     # inserts the files document: the revision becomes visible
            except BaseException:
                try:
                    gin.abort()  # deletes the chunks written so far
                except Exception as e:  # noqa: BLE001 - best effort; the source error matters more
                    log.warning("tier %s: aborting upload of %s: %s", self.name, key, e)
                raise
            return gin._id, n

        from pymongo.errors import PyMongoError
        try:
            file_id, n = upload()   # not retried: the source stream cannot be rewound
        except PyMongoError as e:
            raise errors.TierUnavailable(f"tier {self.name} ({self.safe_url}): write {key}: {e}") from e
        self._call(lambda: self._delete_revisions(key, keep=file_id), f"drop old revisions of {key}")
        return n

    def _delete_revisions(self, key: str, keep=None) -> None:
        from gridfs.errors import NoFile
        for d in self.files.find({"filename": key}, {"_id": 1}):
            if d["_id"] != keep:
                try:
                    self.bucket.delete(d["_id"])
                except NoFile:
                    pass

    def open_reader(self, key: str) -> BinaryIO:
        self.reads += 1
        doc = self._call(lambda: self._current(key), f"open {key}")
        if doc is None:
            raise errors.ObjectMissing(f"tier {self.name}: object {key} is missing")
        return _Reader(self, self._call(lambda: self.bucket.open_download_stream(doc["_id"]), f"open {key}"), key)

    def read(self, key: str, offset: int, size: int) -> bytes:
        self.reads += 1

        def ranged():
            doc = self._current(key)
            if doc is None:
                raise errors.ObjectMissing(f"tier {self.name}: object {key} is missing")
            end = min(offset + size, doc["length"])
            if size <= 0 or offset >= end:
                return b""
            cs = doc["chunkSize"]
            first, last = offset // cs, (end - 1) // cs
            parts = []
            for c in self.chunks.find({"files_id": doc["_id"], "n": {"$gte": first, "$lte": last}},
                                      sort=[("n", 1)]):
                self.chunks_fetched += 1
                parts.append(bytes(c["data"]))
            if len(parts) != last - first + 1:
                raise errors.TierfsError(f"tier {self.name}: object {key} has missing chunks "
                                         f"({len(parts)} of {last - first + 1} in range)")
            data = b"".join(parts)
            return data[offset - first * cs: end - first * cs]
        return self._call(ranged, f"read {key}")

    def size(self, key: str) -> int | None:
        doc = self._call(lambda: self.files.find_one({"filename": key}, {"length": 1},
                                                     sort=[("uploadDate", -1), ("_id", -1)]), f"stat {key}")
        return None if doc is None else int(doc["length"])

    def delete(self, key: str) -> None:
        self._call(lambda: self._delete_revisions(key), f"delete {key}")

    def keys(self) -> Iterator[str]:
        last = None
        docs = self._call(lambda: list(self.files.find({}, {"filename": 1, "_id": 0}).sort("filename", 1)),
                          "list objects")
        for d in docs:
            if d["filename"] != last:
                last = d["filename"]
                yield last


class _Reader(RawReader):
    """A whole-object stream over a GridOut that maps driver errors."""

    def __init__(self, tier: GridFSTier, gout, key: str):
        self.tier, self.gout, self.key = tier, gout, key

    def read(self, n: int = -1) -> bytes:
        from pymongo.errors import PyMongoError
        from gridfs.errors import CorruptGridFile
        try:
            return self.gout.read(n if n is not None and n >= 0 else -1)
        except CorruptGridFile as e:
            raise errors.TierfsError(f"tier {self.tier.name}: object {self.key} is corrupt: {e}") from e
        except PyMongoError as e:
            raise errors.TierUnavailable(f"tier {self.tier.name} ({self.tier.safe_url}): read {self.key}: {e}") from e

    def close(self) -> None:
        try:
            self.gout.close()
        finally:
            super().close()
