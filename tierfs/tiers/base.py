"""The Tier interface: where file bytes live, as whole objects keyed by id.

A tier stores objects under opaque keys chosen by tierfs (never paths, so a
rename never touches bytes). The interface is deliberately small:
put / open_reader / read (a range) / size / delete / keys, plus optional
in-place access for local tiers and restore staging for archive tiers.

Rules every tier follows (checked by tests/tiers/test_conformance.py):
- put() is atomic: a reader sees the old object, the new one, or none.
- delete() is idempotent: deleting a missing key is not an error.
- Temporary failures raise errors.TierUnavailable after a bounded retry
  (retry_call below), never hang: every remote call has a deadline.
- A missing object raises errors.ObjectMissing.
"""

from __future__ import annotations

import abc
import hashlib
import io
import logging
import time
import uuid
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

from .. import errors
from ..settings import TierTable, tier_table

log = logging.getLogger(__name__)

T = TypeVar("T")
CHUNK = 1 << 20


def new_key() -> str:
    """A fresh object key: 32 hex digits."""
    return uuid.uuid4().hex


class Tier(abc.ABC):
    """A named storage tier of some kind, built from its config table."""

    #: kind name used in the config (`kind = "disk"`)
    kind: str = ""
    #: archive tiers hold copies that need a restore before they can be read
    archive: bool = False
    #: archive jobs that may wait inside put() at once for a batch (jobs.py gives them no worker); 0: none
    batch_slots: int = 0
    def __init__(self, name: str, settings: TierTable | None = None, /, **options: Any):
        """`settings`: the tier's validated [tiers.NAME] table (settings.py);
        without it, `options` are validated as that table (tests, tools)."""
        self.name = name
        self.settings = settings if settings is not None else tier_table(name, dict(options, kind=self.kind))
        #: users/groups allowed to place files on this tier (None = everyone)
        self.allow_users: list | None = self.settings.allow_users
        self.allow_groups: list | None = self.settings.allow_groups
        #: counters for tests and benchmarks
        self.reads = 0          # open_reader / read calls
        self.restores = 0       # prepare_restore calls that started a restore

    def __repr__(self) -> str:
        return f"<{self.kind} tier {self.name!r}>"

    @classmethod
    def object_store(cls, settings: TierTable) -> tuple[tuple, str] | None:
        """Where this kind keeps the objects of a tier configured with `settings`:
        (the store, a key prefix in it), or None when tierfs cannot tell (an
        external copytool). Two tiers in one store whose prefixes nest would
        list each other's objects (fsck would call them orphans): config
        validation refuses that."""
        return None

    # ---- required ----------------------------------------------------------
    @abc.abstractmethod
    def put(self, key: str, src: BinaryIO) -> int:
        """Store everything readable from `src` as object `key`, atomically
        and durably (fsync or the remote's equivalent). Returns bytes stored."""

    @abc.abstractmethod
    def open_reader(self, key: str) -> BinaryIO:
        """A stream of the whole object (a context manager). ObjectMissing if absent."""

    @abc.abstractmethod
    def read(self, key: str, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of the object; short at its end."""

    @abc.abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size, or None if it does not exist."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    @abc.abstractmethod
    def keys(self) -> Iterator[str]:
        """Every object key on the tier (for fsck)."""

    # ---- optional ----------------------------------------------------------
    def usage(self) -> tuple[int, int] | None:
        """(total bytes, free bytes) if the tier has a capacity, else None."""
        return None

    def local_path(self, key: str) -> str | None:
        """A local file path of the object for in-place reads and writes, or
        None when the tier has no such thing (remote tiers, archives)."""
        return None

    def create_empty(self, key: str) -> None:
        """Create an empty object (used by local tiers before in-place writes)."""
        import io
        self.put(key, io.BytesIO(b""))

    def verify(self, key: str, sha256: str, size: int) -> bool:
        """True when the stored object has this sha256 and size. The default
        reads it back; tiers that cannot read back cheaply (tape) override."""
        with self.open_reader(key) as r:
            got, n = sha256_stream(r)
        return got == sha256 and n == size

    def prepare_restore(self, key: str) -> bool:
        """Archive tiers: make the object readable. True when open_reader()
        may be called now; False (or errors.Pending with a reason) when the
        restore is pending (an operator or a slow medium must act): the job is
        retried later. Raises other errors on failure."""
        return True

    def private_entries(self) -> Iterator[tuple[str, int]]:
        """(path, st_mode) of every local file and directory tierfs made for
        this tier (objects, their directories, staging files), which must be
        0600/0700 (tierfs/private.py; fsck checks them). The root a user
        configured and files imported in place are not listed. Remote tiers
        have none."""
        return iter(())

    def close(self) -> None:
        """Release connections."""

    def stop_waiting(self) -> None:
        """Unmount: end waits that are no I/O (a put() waiting for a batch) soon."""

    def check(self) -> None:
        """Raise ConfigError/TierUnavailable if the tier is unusable (at mount)."""

    def probe(self) -> None:
        """Raise TierUnavailable if the tier cannot be used now (the job
        runner asks while it waits for a tier to come back). Unlike check(),
        it never creates anything."""
        try:
            self.check()
        except errors.ConfigError as e:
            raise errors.TierUnavailable(str(e)) from None


class RawReader(io.RawIOBase):
    """A read-only stream defined by its read(n); readinto() follows from it
    (io.BufferedReader and shutil call readinto)."""

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        b = self.read(len(buf))
        buf[: len(b)] = b
        return len(b)


class HashingReader(RawReader):
    """Wraps a binary stream and computes the sha256 and length of what passes."""

    def __init__(self, raw: BinaryIO, head: int = 0):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.nbytes = 0
        self.head = head            # keep this many first bytes in `first` (an archive's stub: moves.py)
        self.first = bytearray()

    def read(self, n: int = -1) -> bytes:
        b = self.raw.read(n if n is not None and n >= 0 else CHUNK * 8)
        self.sha.update(b)
        if len(self.first) < self.head:
            self.first += b[:self.head - len(self.first)]
        self.nbytes += len(b)
        return b

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def copy_stream(src: BinaryIO, write: Callable[[bytes], object], chunk: int = CHUNK * 4,
                limit: int | None = None) -> int:
    """Pass what `src` yields to `write`, `chunk` bytes a read, up to its end
    (or `limit` bytes); returns the count. Every tier's put() and read-back
    streams through here: 4 MiB reads keep a copy's syscalls and remote
    round trips few while its memory stays one chunk."""
    n = 0
    while limit is None or n < limit:
        b = src.read(chunk if limit is None else min(chunk, limit - n))
        if not b:
            break
        write(b)
        n += len(b)
    return n


def sha256_stream(stream: BinaryIO) -> tuple[str, int]:
    h = hashlib.sha256()
    n = copy_stream(stream, h.update, CHUNK)
    return h.hexdigest(), n


def retry_call(fn: Callable[[], T], *, what: str, is_temp: Callable[[BaseException], bool],
               deadline_s: float = 30.0, max_attempts: int = 5, base_delay: float = 0.2) -> T:
    """Call fn, retrying temporary failures with exponential backoff until
    max_attempts or the deadline; then raise TierUnavailable naming `what`."""
    start = time.monotonic()
    delay = base_delay
    for attempt in range(1, max_attempts + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below
            if not is_temp(e):
                raise
            left = deadline_s - (time.monotonic() - start)
            if attempt == max_attempts or left <= delay:
                raise errors.TierUnavailable(f"{what}: {e} (gave up after {attempt} attempts)") from e
            log.debug("%s: temporary failure %s, retry %d in %.1fs", what, e, attempt, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")
