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
import stat
import uuid
from typing import BinaryIO, Iterator

from .. import errors, private
from ..settings import DiskTable
from .base import Tier, copy_stream, sha256_stream

TMP_PREFIX = ".tierfs-put-"   # temp files of atomic puts (cleanup_tmp removes only these)


#: garbage reason of an in-place original whose file was released (release_originals): the collector deletes it
RELEASED_ORIGINAL = "in-place original released"


def in_place_key(key: str) -> bool:
    """Keys with a "/" name files imported in place: paths relative to the tier's root."""
    return "/" in key


def releases_originals(tier: Tier | None) -> bool:
    """An online disk tier whose in-place originals a release may delete (release_originals)."""
    return isinstance(tier, DiskTier) and isinstance(tier.settings, DiskTable) and tier.settings.release_originals


def own_dirs(root: str) -> tuple[str, str]:
    """The directories a disk tier keeps under its root: objects/ and tmp/ (an import in place of
    that root skips them)."""
    return os.path.join(root, "objects"), os.path.join(root, "tmp")


class DiskTier(Tier):
    kind = "disk"
    settings: DiskTable

    def __init__(self, name: str, settings: DiskTable | None = None, /, **options):
        super().__init__(name, settings, **options)
        self.root = os.path.abspath(os.path.expanduser(self.settings.path))
        self.objdir, self.tmpdir = own_dirs(self.root)

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
        if in_place_key(key):
            self._delete_in_place(key, None)
            return
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._oserror(e, key, "delete") from e

    # ---- in-place originals (keys with "/": the user's own files in the user's tree) --------------
    # Every call below reaches the file through its directories without following a symlink
    # (_parent): the tree is the users', and the daemon is usually root, so a directory swapped for a
    # symlink must not make it delete, or create, a file elsewhere (/etc/...).

    def _parent(self, key: str) -> tuple[int, str]:
        """(fd of the directory holding in-place `key`, its last name); FileNotFoundError when
        that directory is gone, NotADirectoryError / ELOOP when a component is not a directory."""
        self._path(key)   # Invalid for an absolute key or one with ".."
        *dirs, name = [c for c in key.split("/") if c]
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY)
        try:
            for d in dirs:
                nfd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    def _delete_in_place(self, key: str, unless_changed_after_ns: int | None) -> bool:
        self._available()   # an unmounted share: its files are not gone, they wait
        try:
            dirfd, name = self._parent(key)
        except (FileNotFoundError, NotADirectoryError):
            return True     # its directory is gone, and the file with it
        except OSError as e:
            raise self._oserror(e, key, "delete") from e
        try:
            if unless_changed_after_ns is not None:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or st.st_ctime_ns > unless_changed_after_ns:
                    return False
            os.unlink(name, dir_fd=dirfd)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            raise self._oserror(e, key, "delete") from e
        finally:
            os.close(dirfd)

    def delete_original(self, key: str, released_ns: int) -> bool:
        """Delete a released in-place original (its directories stay: they are the user's).
        False, and the file stays, when what is at the path changed after `released_ns`
        (ctime later: another file was put there meanwhile, or this one was changed) or is
        not a regular file."""
        return self._delete_in_place(key, released_ns)

    def vacancy(self, key: str) -> str | None:
        """Why a restore cannot put a file back at in-place path `key` (None: it can):
        something is there, or its directory is gone."""
        try:
            self._available()
            dirfd, name = self._parent(key)
        except errors.TierUnavailable as e:
            return str(e)
        except OSError as e:
            return f"its directory is gone ({e.strerror})"
        try:
            os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            return "another file is at that path"
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"cannot look at it ({e.strerror})"
        finally:
            os.close(dirfd)

    def put_back(self, obj_key: str, key: str, mode: int, uid: int, gid: int, atime_ns: int, mtime_ns: int) -> None:
        """Give object `obj_key` (a verified copy on this tier) the in-place path `key` too, with
        the file's mode, owner and times: a hard link, so the path appears whole or not at all,
        and never over a file that appeared there meanwhile. Exists when the path is taken;
        another TierfsError when it cannot be made (its directory is gone, another filesystem)."""
        src = self._path(obj_key)
        try:
            dirfd, name = self._parent(key)
        except OSError as e:
            raise errors.TierfsError(f"tier {self.name}: cannot reach the directory of {key} ({e.strerror})",
                                     err=e.errno or errno.EIO) from None
        try:
            os.link(src, name, dst_dir_fd=dirfd, follow_symlinks=False)
        except FileExistsError:
            raise errors.Exists(f"tier {self.name}: {key} exists") from None
        except OSError as e:
            raise self._oserror(e, key, "put back") from e
        finally:
            os.close(dirfd)
        fd = os.open(src, os.O_RDONLY)   # the same inode, reached through our own private directory
        try:
            try:
                os.fchown(fd, uid, gid)
            except PermissionError:
                pass   # a daemon that is not root: its files are its user's anyway
            os.fchmod(fd, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
            os.utime(fd, ns=(atime_ns, mtime_ns))
        finally:
            os.close(fd)

    def take_back(self, key: str, obj_key: str) -> None:
        """Undo put_back: remove in-place `key` if it is still a name of object `obj_key`."""
        try:
            dirfd, name = self._parent(key)
        except OSError:
            return
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            obj = os.stat(self._path(obj_key))
            if (st.st_dev, st.st_ino) == (obj.st_dev, obj.st_ino):
                os.unlink(name, dir_fd=dirfd)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._oserror(e, key, "delete") from e
        finally:
            os.close(dirfd)

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
