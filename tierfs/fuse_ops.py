"""pyfuse3 Operations: a thin translation layer over tierfs.fs.FileSystem.

Converts pyfuse3 arguments to domain calls and Inodes to EntryAttributes,
counts nothing itself (the engine does; with metrics on, `_guard` times each
request and tells metrics.RequestMetrics), and maps exceptions to errno in one
place (`_guard`): a TierfsError becomes its errno; any other exception is
logged with its traceback and answered as EIO, so no handler can kill the
mount (pyfuse3 would end its main loop on anything but FUSEError).
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from typing import TYPE_CHECKING

import pyfuse3
import trio

from . import errors, faults
from .catalog.base import Inode, State
from .fs import Caller, FileSystem

if TYPE_CHECKING:
    from .metrics import RequestMetrics

log = logging.getLogger(__name__)


def _guard(fn):
    name = fn.__name__.lstrip("_")

    @functools.wraps(fn)
    async def wrapper(self, *args):
        self.fs.count_request(name)
        if self.metrics is None:
            return await answer(self, args)
        t0 = time.perf_counter()
        err = 0
        try:
            return await answer(self, args)
        except pyfuse3.FUSEError as e:
            err = e.errno
            raise
        finally:
            self.metrics.observe(name, time.perf_counter() - t0, err)

    async def answer(self, args):
        try:
            if faults.ACTIVE:
                faults.bug(fn.__name__)
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except errors.TierfsError as e:
            if e.errno in (errno.EIO, errno.ENOSPC):
                log.error("%s: %s", fn.__name__, e)
            else:
                log.debug("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except (trio.Cancelled, KeyboardInterrupt):
            raise
        except OSError as e:
            log.error("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:  # noqa: BLE001 - the mount must survive any bug
            log.exception("unexpected error in %s%r; answering EIO", fn.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def _caller(ctx) -> Caller:
    if ctx is None:
        return Caller()
    return Caller(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid, umask=ctx.umask)


#: pyfuse3 SetattrFields flag -> the Inode field it changes, from which EntryAttributes field
SETATTR_FIELDS = (("update_mode", "mode", "st_mode"), ("update_uid", "uid", "st_uid"), ("update_gid", "gid", "st_gid"),
                  ("update_size", "size", "st_size"), ("update_atime", "atime_ns", "st_atime_ns"),
                  ("update_mtime", "mtime_ns", "st_mtime_ns"), ("update_ctime", "ctime_ns", "st_ctime_ns"))

class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: FileSystem, *, attr_timeout: float = 1.0, entry_timeout: float = 1.0,
                 xattrs: bool = True, after_init=None, metrics: RequestMetrics | None = None):
        super().__init__()
        self.fs = fs
        self.metrics = metrics  # times and counts each request (metrics.py); None: metrics off
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.xattrs = xattrs
        self.after_init = after_init  # called while the kernel's FUSE INIT is answered
        self.enable_passthrough = fs.passthrough.enable   # asked for at INIT (our pyfuse3 patch reads it)
        self._readdir_fit = 64   # entries the last full readdir reply held, plus a few (readdir)
        self._attrs_memo: dict[int, tuple[Inode, pyfuse3.EntryAttributes]] = {}   # attrs()

    def init(self) -> None:
        if self.after_init is not None:
            try:
                self.after_init()
            except Exception:  # noqa: BLE001 - init must not raise (pyfuse3)
                log.exception("after FUSE init")

    # ---- conversion ------------------------------------------------------
    def attrs(self, inode: Inode) -> pyfuse3.EntryAttributes:
        # Inodes are never changed in place (a change makes a copy), so the
        # reply built for one object serves it again: a listing of cached
        # inodes spent 31% of its time here (issue 16). Dropped at forget.
        memo = self._attrs_memo.get(inode.ino)
        if memo is not None and memo[0] is inode:
            return memo[1]
        a = self._build_attrs(inode)
        self._attrs_memo[inode.ino] = (inode, a)
        return a

    def _build_attrs(self, inode: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode.ino
        a.generation = 0
        a.entry_timeout = self.entry_timeout
        a.attr_timeout = self.attr_timeout
        a.st_mode = inode.mode
        a.st_nlink = inode.nlink
        a.st_uid = inode.uid
        a.st_gid = inode.gid
        a.st_rdev = inode.rdev
        a.st_size = inode.size
        a.st_blksize = 131072
        # Offline files occupy no online space but their stub's (as `du` should show).
        on = inode.stub_size if inode.state in (State.ARCHIVED, State.RESTORING, State.LOST) else inode.size
        a.st_blocks = (on + 511) // 512
        a.st_atime_ns = inode.atime_ns
        a.st_mtime_ns = inode.mtime_ns
        a.st_ctime_ns = inode.ctime_ns
        return a

    # ---- namespace -------------------------------------------------------
    @_guard
    async def lookup(self, parent_inode, name, ctx=None):
        try:
            return self.attrs(await self.fs.lookup(parent_inode, name))
        except errors.NotFound:
            # A negative entry the kernel may cache (st_ino 0) saves repeated lookups.
            a = pyfuse3.EntryAttributes()
            a.st_ino = 0
            a.entry_timeout = self.entry_timeout
            return a

    @_guard
    async def forget(self, inode_list):
        inode_list = list(inode_list)
        for ino, _ in inode_list:
            self._attrs_memo.pop(ino, None)
        await self.fs.forget(inode_list)

    @_guard
    async def getattr(self, inode, ctx=None):
        return self.attrs(await self.fs.getattr(inode))

    @_guard
    async def setattr(self, inode, attr, fields, fh, ctx):
        changes = {key: getattr(attr, st) for flag, key, st in SETATTR_FIELDS if getattr(fields, flag)}
        return self.attrs(await self.fs.setattr(inode, changes, fh, _caller(ctx)))

    @_guard
    async def readlink(self, inode, ctx):
        return await self.fs.readlink(inode)

    @_guard
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self.attrs(await self.fs.mknod(parent_inode, name, mode, rdev, _caller(ctx)))

    @_guard
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self.attrs(await self.fs.mkdir(parent_inode, name, mode, _caller(ctx)))

    @_guard
    async def unlink(self, parent_inode, name, ctx):
        await self.fs.unlink(parent_inode, name)

    @_guard
    async def rmdir(self, parent_inode, name, ctx):
        await self.fs.rmdir(parent_inode, name)

    @_guard
    async def symlink(self, parent_inode, name, target, ctx):
        return self.attrs(await self.fs.symlink(parent_inode, name, target, _caller(ctx)))

    @_guard
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new,
                             noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE),
                             exchange=bool(flags & pyfuse3.RENAME_EXCHANGE))

    @_guard
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self.attrs(await self.fs.link(inode, new_parent_inode, new_name))

    # ---- directories -----------------------------------------------------
    @_guard
    async def opendir(self, inode, ctx):
        node = await self.fs.getattr(inode)
        if not node.is_dir():
            raise errors.NotDir()
        return inode

    @_guard
    async def readdir(self, fh, start_id, token):
        # Each request fetches about as many entries as the last full reply took
        # (what does not fit is thrown away), doubling while they fit. Kernel 6.18
        # took a listing of 500 in one request; fewer per request on other
        # kernels or with long names. A shorter batch than asked ends the reply
        # (the kernel asks again from the last position); an empty one ends the
        # listing.
        pos = start_id
        batch = self._readdir_fit
        taken = 0
        while True:
            entries = await self.fs.readdir(fh, pos, batch)
            if not entries:
                return
            for e in entries:
                if not pyfuse3.readdir_reply(token, e.name, self.attrs(e.inode), e.pos):
                    self._readdir_fit = taken + 8
                    return
                self.fs.readdir_accepted(e)
                taken += 1
                pos = e.pos
            if len(entries) < batch:
                return
            batch = min(1000, batch * 2)

    async def releasedir(self, fh):
        pass

    @_guard
    async def fsyncdir(self, fh, datasync):
        await self.fs.sync_catalog()   # names live in the catalog only

    @_guard
    async def statfs(self, ctx):
        bs, blocks, free = await self.fs.statfs()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = bs
        s.f_blocks = blocks
        s.f_bfree = s.f_bavail = free
        s.f_files = 1 << 32
        s.f_ffree = s.f_favail = 1 << 31
        s.f_namemax = 255
        return s

    # ---- files -----------------------------------------------------------
    @_guard
    async def create(self, parent_inode, name, mode, flags, ctx):
        fh, inode = await self.fs.create(parent_inode, name, mode, flags, _caller(ctx))
        return self._file_info(fh), self.attrs(inode)

    @_guard
    async def open(self, inode, flags, ctx):
        return self._file_info(await self.fs.open(inode, flags, _caller(ctx)))

    def _file_info(self, fh: int) -> pyfuse3.FileInfo:
        """keep_cache: the page cache outlives a close (files change only
        through this mount, or the attribute timeout tells). With a backing id
        the kernel reads and writes the backing file itself and keeps no page
        cache of its own (it refuses keep_cache then)."""
        if self.fs.reads_stub(fh):
            # direct_io: an O_NONBLOCK read running past the stub is cut at its end (fs.py, _read_stub),
            # and only direct_io hands a short read to the program as it is (the page cache takes it for
            # the end of the file); nor does a direct_io open put the inode in the kernel's caching mode,
            # which would refuse the passthrough opens that follow a restore while this one is open.
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        backing_id = self.fs.backing_id(fh)
        if backing_id:
            return pyfuse3.FileInfo(fh=fh, keep_cache=False, backing_id=backing_id)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_guard
    async def read(self, fh, off, size):
        return await self.fs.read(fh, off, size)

    @_guard
    async def write(self, fh, off, buf):
        return await self.fs.write(fh, off, buf)

    @_guard
    async def flush(self, fh):
        await self.fs.flush(fh)

    @_guard
    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh, datasync)

    @_guard
    async def fallocate(self, fh, mode, offset, length):
        # Called only by a pyfuse3 with a fallocate handler (dev/pyfuse3/build);
        # without one the kernel answers EOPNOTSUPP itself.
        await self.fs.fallocate(fh, mode, offset, length)

    @_guard
    async def release(self, fh):
        await self.fs.release(fh)

    # ---- xattrs ----------------------------------------------------------
    def _no_xattrs(self):
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # the kernel stops asking for the rest of the mount

    async def getxattr(self, inode, name, ctx):
        # Fast path, no catalog and no exception machinery: `ls -l` asks for
        # security.selinux and system.posix_acl_access of every file, and
        # every write() for security.capability. Only user.* exist here, so
        # other namespaces are "not supported" (as setxattr says), not merely
        # absent: ls caches that answer per filesystem and stops asking.
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if not name.startswith(b"user."):
            self.fs.count_request("getxattr")
            if self.metrics is not None:   # counted with the others; its time is nothing worth a clock read
                self.metrics.observe("getxattr", 0.0, errno.EOPNOTSUPP)
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        return await self._getxattr(inode, name, ctx)

    @_guard
    async def _getxattr(self, inode, name, ctx):
        return await self.fs.getxattr(inode, name, _caller(ctx))

    @_guard
    async def setxattr(self, inode, name, value, ctx):
        self._no_xattrs()
        await self.fs.setxattr(inode, name, value, _caller(ctx))

    @_guard
    async def listxattr(self, inode, ctx):
        self._no_xattrs()
        return await self.fs.listxattr(inode)

    @_guard
    async def removexattr(self, inode, name, ctx):
        self._no_xattrs()
        await self.fs.removexattr(inode, name, _caller(ctx))
