"""The `disk` tier: objects as files under a directory, keyed by id.

Layout: ROOT/objects/<first 2 hex digits>/<key> (a fan-out so no directory
grows huge) and ROOT/tmp/ for atomic writes (write, fsync, rename).
Keys that contain "/" are paths relative to ROOT itself: that is how
`tierfs import --in-place` points at files that already exist.

Objects are 0600 and objects/, tmp/ and the fan-out directories 0700
whatever the umask (tierfs/private.py); ROOT keeps the mode its
administrator gave it, and so do files imported in place (the user's own).
"""

from __future__ import annotations

import errno
import os
import uuid
from typing import BinaryIO, Iterator

from .. import errors, private
from ..settings import DiskTable
from .base import Tier, copy_stream, sha256_stream

TMP_PREFIX = ".tierfs-put-"   # temp files of atomic puts (cleanup_tmp removes only these)


def in_place_key(key: str) -> bool:
    """Keys with a "/" name files imported in place: paths relative to the tier's root."""
    return "/" in key


class DiskTier(Tier):
    kind = "disk"
    settings: DiskTable

    def __init__(self, name: str, settings: DiskTable | None = None, /, **options):
        super().__init__(name, settings, **options)
        self.root = os.path.abspath(os.path.expanduser(self.settings.path))
        self.objdir = os.path.join(self.root, "objects")
        self.tmpdir = os.path.join(self.root, "tmp")

    def check(self) -> None:
        if not os.path.isdir(self.root):
            raise errors.ConfigError(f"tiers.{self.name}.path: directory {self.root} does not exist")
        for d in (self.objdir, self.tmpdir):
            private.makedirs(d)
        if not os.access(self.root, os.W_OK):
            raise errors.ConfigError(f"tiers.{self.name}.path: directory {self.root} is not writable")

    @classmethod
    def object_store(cls, settings: DiskTable) -> tuple[tuple, str] | None:
        return ("directory", os.path.abspath(os.path.expanduser(settings.path))), ""

    def _path(self, key: str) -> str:
        if in_place_key(key):
            if key.startswith("/") or ".." in key.split("/"):
                raise errors.Invalid(f"bad object key {key!r}")
            return os.path.join(self.root, key)
        return os.path.join(self.objdir, key[:2], key)

    def local_path(self, key: str) -> str | None:
        return self._path(key)

    def _oserror(self, e: OSError, key: str, what: str) -> errors.TierfsError:
        if e.errno == errno.ENOENT and not os.path.isdir(self.objdir):
            # The whole tier is away (an unmounted NFS share or disk), not one object: temporary.
            return errors.TierUnavailable(f"tier {self.name}: directory {self.root} is not available "
                                          f"({self.objdir} is missing; unmounted?)")
        if e.errno == errno.ENOENT:
            return errors.ObjectMissing(f"tier {self.name}: object {key} is missing")
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return errors.NoSpace(f"tier {self.name}: no space left to {what} {key}")
        return errors.TierUnavailable(f"tier {self.name}: {what} {key}: {e.strerror}", err=e.errno or errno.EIO)

    def probe(self) -> None:
        self._available()
        try:  # a file that never gets a name: what a put would meet (read-only, no space for inodes...)
            os.close(os.open(self.tmpdir, os.O_TMPFILE | os.O_WRONLY, 0o600))
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:
                return  # a filesystem without O_TMPFILE: the next put tells
            raise errors.TierUnavailable(f"tier {self.name}: cannot write in {self.tmpdir}: {e.strerror}") from None

    def _available(self) -> None:
        """Refuse to write into a tier directory that is not there (an unmounted
        share shows an empty mountpoint: never recreate our layout inside it)."""
        if not os.path.isdir(self.objdir) or not os.path.isdir(self.tmpdir):
            raise errors.TierUnavailable(f"tier {self.name}: directory {self.root} is not available "
                                         f"({self.objdir} or {self.tmpdir} is missing; unmounted?)")

    def create_empty(self, key: str) -> None:
        """An empty object (a new file's). Its fan-out directory usually
        exists: one open(); the checks and makedirs only when it does not."""
        path = self._path(key)
        try:
            try:
                os.close(private.create(path))
            except FileNotFoundError:
                self._available()
                private.makedirs(os.path.dirname(path))
                os.close(private.create(path))
        except OSError as e:
            raise self._oserror(e, key, "create") from e

    def put(self, key: str, src: BinaryIO) -> int:
        path = self._path(key)
        tmp = os.path.join(self.tmpdir, f"{TMP_PREFIX}{os.path.basename(key)}.{uuid.uuid4().hex[:8]}")
        self._available()
        try:
            private.makedirs(os.path.dirname(path))
            with os.fdopen(private.create(tmp), "wb") as f:  # 0600 from the start: rename keeps the mode
                n = copy_stream(src, f.write)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
            return n
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise self._oserror(e, key, "write") from e

    def open_reader(self, key: str) -> BinaryIO:
        self.reads += 1
        try:
            return open(self._path(key), "rb")
        except OSError as e:
            raise self._oserror(e, key, "read") from e

    def verify(self, key: str, sha256: str, size: int) -> bool:
        try:
            with open(self._path(key), "rb") as f:
                got, n = sha256_stream(f)
        except OSError as e:
            raise self._oserror(e, key, "verify") from e
        return got == sha256 and n == size

    def read(self, key: str, offset: int, size: int) -> bytes:
        self.reads += 1
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except OSError as e:
            raise self._oserror(e, key, "read") from e
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def size(self, key: str) -> int | None:
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._oserror(e, key, "stat") from e

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._oserror(e, key, "delete") from e

    def keys(self) -> Iterator[str]:
        if not os.path.isdir(self.objdir):
            return
        for sub in sorted(os.listdir(self.objdir)):
            d = os.path.join(self.objdir, sub)
            if os.path.isdir(d):
                yield from sorted(os.listdir(d))

    def private_entries(self) -> Iterator[tuple[str, int]]:
        yield from private.walk_modes(self.objdir)
        # tmp/ and our temp files only (an in-place tier's root may hold a user folder named tmp)
        try:
            yield self.tmpdir, os.lstat(self.tmpdir).st_mode
            names = [n for n in os.listdir(self.tmpdir) if n.startswith(TMP_PREFIX)]
        except FileNotFoundError:
            return
        for n in names:
            try:
                yield os.path.join(self.tmpdir, n), os.lstat(os.path.join(self.tmpdir, n)).st_mode
            except FileNotFoundError:
                pass  # renamed into place meanwhile (a live mount)

    def usage(self) -> tuple[int, int] | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    def cleanup_tmp(self) -> None:
        """Remove half-written temp files left by a crash (only ours: an
        in-place tier's root may hold a user folder named tmp)."""
        try:
            names = os.listdir(self.tmpdir)
        except OSError:
            return
        for n in names:
            if n.startswith(TMP_PREFIX):
                try:
                    os.unlink(os.path.join(self.tmpdir, n))
                except OSError:
                    pass
