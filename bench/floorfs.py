"""pyfuse3-floor: the least a pyfuse3 + trio filesystem can cost here.

A passthrough over a backing directory with no catalog, no locks, no
checksums and no threads: every request is answered inline with one or two
syscalls on the backing directory. tierfs uses the same library and event
loop, so what this system takes on a case is the part of tierfs's time that
is pyfuse3's and the kernel's, not tierfs's own; the benchmark shows it next
to tierfs and mergerfs (C++) to tell the two apart.

Usage: python -m bench.floorfs BACKING MOUNTPOINT   (foreground; unmount to stop)
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

TIMEOUT = 30.0  # the kernel's attr/entry cache, like tierfs on an unshared catalog


class FloorFS(pyfuse3.Operations):
    def __init__(self, backing: str):
        super().__init__()
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: backing}   # our inode -> backing path
        self.inos: dict[int, int] = {}                                # backing st_ino -> our inode
        self.lookups: dict[int, int] = {}
        self.fds: dict[int, int] = {}
        self.dirs: dict[int, list] = {}                               # opendir handle -> its listing
        self.next_dir = 1
        self.inos[os.lstat(backing).st_ino] = pyfuse3.ROOT_INODE

    # ---- helpers ----------------------------------------------------------------------
    def _attrs(self, ino: int, st: os.stat_result) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.entry_timeout = a.attr_timeout = TIMEOUT
        for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize", "st_blocks",
                  "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(a, k, getattr(st, k))
        return a

    def _path(self, parent: int, name: bytes) -> str:
        return os.path.join(self.paths[parent], os.fsdecode(name))

    def _enter(self, path: str) -> pyfuse3.EntryAttributes:
        """Attributes of a backing path, counting one kernel lookup of its inode."""
        st = os.lstat(path)
        ino = self.inos.get(st.st_ino)
        if ino is None:
            ino = self.inos[st.st_ino] = st.st_ino + 1  # never ROOT_INODE (1)
        self.paths[ino] = path
        self.lookups[ino] = self.lookups.get(ino, 0) + 1
        return self._attrs(ino, st)

    @staticmethod
    def _err(e: OSError):
        return pyfuse3.FUSEError(e.errno or errno.EIO)

    # ---- namespace --------------------------------------------------------------------
    async def lookup(self, parent, name, ctx=None):
        try:
            return self._enter(self._path(parent, name))
        except FileNotFoundError:
            a = pyfuse3.EntryAttributes()
            a.st_ino = 0
            a.entry_timeout = TIMEOUT
            return a
        except OSError as e:
            raise self._err(e) from None

    async def forget(self, items):
        for ino, n in items:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
            elif ino != pyfuse3.ROOT_INODE:
                self.lookups.pop(ino, None)
                self.paths.pop(ino, None)

    async def getattr(self, ino, ctx=None):
        try:
            fd = self.fds.get(ino)
            return self._attrs(ino, os.fstat(fd) if fd is not None else os.lstat(self.paths[ino]))
        except OSError as e:
            raise self._err(e) from None

    async def setattr(self, ino, attr, fields, fh, ctx):
        path = self.paths[ino]
        try:
            if fields.update_size:
                os.truncate(path, attr.st_size)
            if fields.update_mode:
                os.chmod(path, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                os.chown(path, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(path)
                os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                   attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        except OSError as e:
            raise self._err(e) from None
        return await self.getattr(ino)

    async def mkdir(self, parent, name, mode, ctx):
        path = self._path(parent, name)
        try:
            os.mkdir(path, mode & ~ctx.umask)
            return self._enter(path)
        except OSError as e:
            raise self._err(e) from None

    async def unlink(self, parent, name, ctx):
        try:
            os.unlink(self._path(parent, name))
        except OSError as e:
            raise self._err(e) from None

    async def rmdir(self, parent, name, ctx):
        try:
            os.rmdir(self._path(parent, name))
        except OSError as e:
            raise self._err(e) from None

    async def rename(self, p_old, n_old, p_new, n_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old, new = self._path(p_old, n_old), self._path(p_new, n_new)
        try:
            os.rename(old, new)
        except OSError as e:
            raise self._err(e) from None
        ino = self.inos.get(os.lstat(new).st_ino)
        if ino is not None:
            self.paths[ino] = new

    # ---- directories ------------------------------------------------------------------
    async def opendir(self, ino, ctx):
        # One scandir per opendir (offsets are indices into it): the least any
        # filesystem can do, so listing a big directory is not quadratic here.
        try:
            entries = list(os.scandir(self.paths[ino]))
        except OSError as e:
            raise self._err(e) from None
        fh = self.next_dir
        self.next_dir += 1
        self.dirs[fh] = entries
        return fh

    async def readdir(self, fh, start, token):
        entries = self.dirs[fh]
        for i in range(start, len(entries)):
            e = entries[i]
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            ours = self.inos.get(st.st_ino)
            if ours is None:
                ours = self.inos[st.st_ino] = st.st_ino + 1
            if not pyfuse3.readdir_reply(token, os.fsencode(e.name), self._attrs(ours, st), i + 1):
                return
            self.paths[ours] = e.path
            self.lookups[ours] = self.lookups.get(ours, 0) + 1

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    async def statfs(self, ctx):
        v = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        s = pyfuse3.StatvfsData()
        for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
                  "f_namemax"):
            setattr(s, k, getattr(v, k))
        return s

    # ---- files ------------------------------------------------------------------------
    async def create(self, parent, name, mode, flags, ctx):
        path = self._path(parent, name)
        try:
            fd = os.open(path, (flags | os.O_CREAT) & ~os.O_APPEND, mode & ~ctx.umask)
            a = self._enter(path)
        except OSError as e:
            raise self._err(e) from None
        self.fds[a.st_ino] = fd
        return pyfuse3.FileInfo(fh=fd, keep_cache=True), a

    async def open(self, ino, flags, ctx):
        try:
            fd = os.open(self.paths[ino], flags & ~(os.O_CREAT | os.O_APPEND))
        except OSError as e:
            raise self._err(e) from None
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def read(self, fh, off, size):
        return os.pread(fh, size, off)

    async def write(self, fh, off, buf):
        return os.pwrite(fh, buf, off)

    async def flush(self, fh):
        pass

    async def fsync(self, fh, datasync):
        (os.fdatasync if datasync else os.fsync)(fh)

    async def release(self, fh):
        for ino, fd in list(self.fds.items()):
            if fd == fh:
                del self.fds[ino]
        os.close(fh)

    # ---- links ------------------------------------------------------------------------
    async def symlink(self, parent, name, target, ctx):
        path = self._path(parent, name)
        try:
            os.symlink(target, path)
            return self._enter(path)
        except OSError as e:
            raise self._err(e) from None

    async def readlink(self, ino, ctx):
        try:
            return os.fsencode(os.readlink(self.paths[ino]))
        except OSError as e:
            raise self._err(e) from None

    async def link(self, ino, new_parent, new_name, ctx):
        path = self._path(new_parent, new_name)
        try:
            os.link(self.paths[ino], path)
            return self._enter(path)
        except OSError as e:
            raise self._err(e) from None

    # ---- xattrs: user.* passed to the backing file (like tierfs, nothing else) --------
    async def getxattr(self, ino, name, ctx):
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        try:
            return os.getxattr(self.paths[ino], name, follow_symlinks=False)
        except OSError as e:
            raise self._err(e) from None

    async def setxattr(self, ino, name, value, ctx):
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        try:
            os.setxattr(self.paths[ino], name, value, follow_symlinks=False)
        except OSError as e:
            raise self._err(e) from None

    async def listxattr(self, ino, ctx):
        try:
            return [os.fsencode(n) for n in os.listxattr(self.paths[ino], follow_symlinks=False)]
        except OSError as e:
            raise self._err(e) from None

    async def removexattr(self, ino, name, ctx):
        try:
            os.removexattr(self.paths[ino], name, follow_symlinks=False)
        except OSError as e:
            raise self._err(e) from None


def main() -> None:
    backing, mnt = sys.argv[1], sys.argv[2]
    pyfuse3.init(FloorFS(os.path.abspath(backing)), mnt,
                 {"fsname=pyfuse3-floor", "default_permissions", "auto_unmount"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
