"""The namespace and move rules of every catalog, written once (as JuiceFS's
baseMeta over its engines' doRename, doUnlink, ...): CatalogCore implements
create, create_many, link, unlink, rmdir, rename, switch, purge and bury,
with their errnos, over the small set of transactional primitives (Txn)
each engine provides. An engine (catalog/sql.py, catalog/mongo.py)
subclasses CatalogCore and supplies transaction(); everything else it
implements is storage: reads, single-record updates, xattrs, queries, jobs,
sessions.

A new POSIX rule goes here once, and the conformance suite
(tests/catalog/test_conformance.py) checks it on every engine.
"""

from __future__ import annotations

import abc
from typing import Callable, Iterable, Protocol, Sequence, TypeVar

from .. import errors
from .base import (READABLE_STATES, ROOT_INO, Catalog, Inode, Tombstone, Transition, check_expected, check_owner,
                   copies_of, now_ns)

T = TypeVar("T")

#: Longest chain of parents walked up (a loop in a damaged catalog must not hang a rename).
MAX_DEPTH = 100000


class Txn(Protocol):
    """One engine transaction: every call sees and changes the same consistent
    state, and all of them commit together or not at all."""

    def find_inode(self, ino: int) -> Inode | None: ...
    def find_dentry(self, parent: int, name: bytes) -> tuple[int, int] | None:
        """(pos, ino) of the name, or None."""
    def has_children(self, ino: int) -> bool: ...
    def first_name(self, ino: int) -> tuple[int, bytes] | None:
        """(parent, name) of one name of `ino` (a directory's only one), or None."""
    def names_of(self, ino: int) -> list[tuple[int, int]]:
        """(pos, parent) of every name of `ino`."""
    def insert_inode(self, inode: Inode) -> int:
        """Store a new inode; returns the number it was given."""
    def insert_inodes(self, inodes: list[Inode]) -> list[int]:
        """insert_inode of each, in bulk."""
    def taken_name(self, parent: int, names: list[bytes]) -> bytes | None:
        """One of `names` that `parent` has already, or None."""
    def set_fields(self, ino: int, changes: dict) -> None: ...
    def delete_inode(self, ino: int) -> None:
        """The inode, its xattrs and its stub."""
    def add_dentry(self, parent: int, name: bytes, ino: int) -> None:
        """Exists when the name is taken (a concurrent create)."""
    def add_dentries(self, rows: list[tuple[int, bytes, int]]) -> None:
        """add_dentry of each (parent, name, ino), in bulk; Exists when a name is taken."""
    # A name is changed by its directory and position (and a move by its old name too): every write of
    # a name then names the directory, the dentries' shard key on a sharded catalog (docs/SHARDING.md),
    # so it goes to one shard instead of every one.
    def move_dentry(self, parent: int, name: bytes, pos: int, new_parent: int, new_name: bytes) -> None: ...
    def point_dentry(self, parent: int, pos: int, ino: int) -> None: ...
    def del_dentry(self, parent: int, pos: int) -> None: ...
    def touch_dirs(self, parents: Iterable[int], ctime_ns: int, nlinks: dict[int, int] | None = None) -> None:
        """The directories' entries changed: their mtime and ctime move forward to ctime_ns, never back
        (and the link count of those in `nlinks` becomes the one given: new subdirectories, in the same write)
        (MongoDB applies them after the commit, where mounts' changes may land out of order; an older
        ctime_ns, as from a host whose clock is behind, leaves them). Also a write that conflicts with a
        concurrent seal_dir of any of them (rmdir's guard)."""
    def seal_dir(self, ino: int) -> None:
        """The directory is about to go, empty: a concurrent touch_dirs of it (another mount adding a
        name) conflicts with this transaction, so one of them is retried and sees the other."""
    def cancel_pending_jobs(self, ino: int, now: int) -> None:
        """The file is deleted: its pending jobs are cancelled ("file deleted")."""
    def open_anywhere(self, ino: int) -> bool:
        """Some session has the inode open (set_open)."""
    def other_writer(self, ino: int, session: str) -> str | None:
        """A session other than `session` that has the inode open for writing."""
    def add_event(self, ino: int, frm, to, cause: str, detail: str) -> None: ...
    def add_garbage(self, items: Iterable[tuple[str | None, str | None]], reason: str) -> None:
        """Items with an empty tier or key are skipped."""
    def clear_dst_key(self, job_id: int, now: int) -> None: ...
    def end_job(self, job_id: int, now: int, *, keep_session: bool = False) -> None:
        """The job is done (last_error cleared; its session cleared unless
        keep_session), and the file's older failed jobs of its kind are
        cancelled, "superseded by job N": a later run brought it about."""
    def job_owner(self, job_id: int) -> tuple[str, str | None] | None:
        """(state, session) of a job; None if there is none."""
    def add_tombstone(self, values: dict) -> int:
        """Store a tombstone (Tombstone's fields but id); returns its id."""
    def set_stub(self, ino: int, data: bytes) -> None:
        """Store `data` as the inode's stub (b"": remove it)."""


class CatalogCore(Catalog):
    """The rules; engines provide transaction()."""

    @abc.abstractmethod
    def transaction(self, fn: Callable[[Txn], T]) -> T:
        """fn(txn) in one transaction: committed when it returns, rolled back
        when it raises (an engine may run it again after a transient conflict,
        so fn only reads and writes through txn)."""

    # ---- helpers ---------------------------------------------------------
    @staticmethod
    def _inode_in(t: Txn, ino: int) -> Inode:
        inode = t.find_inode(ino)
        if inode is None:
            raise errors.NotFound(f"inode {ino}")
        return inode

    @classmethod
    def _dir_in(cls, t: Txn, ino: int) -> Inode:
        """A directory names may be added to: ENOENT once removed (rmdir leaves
        its inode, nlink 0, until the last mount forgets it; another mount's
        kernel does not know it is gone)."""
        inode = cls._inode_in(t, ino)
        if not inode.is_dir():
            raise errors.NotDir(f"inode {ino} is not a directory")
        if inode.nlink == 0:
            raise errors.NotFound(f"directory {ino} was removed")
        return inode

    @staticmethod
    def _name_in(t: Txn, parent: int, name: bytes) -> tuple[int, int]:
        d = t.find_dentry(parent, name)
        if d is None:
            raise errors.NotFound(f"{name!r} in directory {parent}")
        return d

    @staticmethod
    def _free_in(t: Txn, parent: int, name: bytes) -> None:
        if t.find_dentry(parent, name) is not None:
            raise errors.Exists(f"{name!r} exists in directory {parent}")

    @staticmethod
    def _ancestor_in(t: Txn, anc: int, ino: int) -> bool:
        """True if directory `anc` is `ino` or one of its ancestors."""
        for _ in range(MAX_DEPTH):
            if ino == anc:
                return True
            if ino == ROOT_INO:
                return False
            up = t.first_name(ino)
            if up is None:
                return False
            ino = up[0]
        return False

    @staticmethod
    def _path_in(t: Txn, ino: int) -> bytes:
        parts = []
        while ino != ROOT_INO:
            up = t.first_name(ino)
            if up is None:
                raise errors.NotFound(f"inode {ino} has no name")
            parts.append(up[1])
            ino = up[0]
            if len(parts) > MAX_DEPTH:
                raise errors.TierfsError(f"directory loop above inode {ino}")
        return b"/".join(reversed(parts))

    @classmethod
    def _subdirs_in(cls, t: Txn, parent: int, n: int) -> None:
        """A directory's nlink counts its subdirectories ('..' of each)."""
        if n:
            t.set_fields(parent, dict(nlink=cls._inode_in(t, parent).nlink + n))

    # ---- namespace -------------------------------------------------------
    def create(self, parent: int, name: bytes, inode: Inode) -> Inode:
        def fn(t: Txn) -> Inode:
            p = self._dir_in(t, parent)
            self._free_in(t, parent, name)
            ino = t.insert_inode(inode)
            t.add_dentry(parent, name, ino)
            t.touch_dirs([parent], inode.ctime_ns, {parent: p.nlink + 1} if inode.is_dir() else None)
            return inode.copy(ino=ino)
        return self.transaction(fn)

    def create_many(self, entries: Sequence[tuple[int, bytes, Inode]], ctime_ns: int) -> list[Inode]:
        entries = list(entries)
        names: dict[int, list[bytes]] = {}
        for parent, name, _ in entries:
            if name in names.setdefault(parent, []):
                raise errors.Exists(f"{name!r} given twice for directory {parent}")
            names[parent].append(name)

        def fn(t: Txn) -> list[Inode]:
            parents = {p: self._dir_in(t, p) for p in names}
            for parent, ns in names.items():
                taken = t.taken_name(parent, ns)
                if taken is not None:
                    raise errors.Exists(f"{taken!r} exists in directory {parent}")
            inos = t.insert_inodes([inode for _, _, inode in entries])
            t.add_dentries([(parent, name, ino) for (parent, name, _), ino in zip(entries, inos)])
            nlinks = {}
            for parent, p in parents.items():
                subdirs = sum(1 for e in entries if e[0] == parent and e[2].is_dir())
                if subdirs:
                    nlinks[parent] = p.nlink + subdirs
            t.touch_dirs(parents, ctime_ns, nlinks)
            return [inode.copy(ino=ino) for (_, _, inode), ino in zip(entries, inos)]
        return self.transaction(fn) if entries else []

    def link(self, ino: int, parent: int, name: bytes, ctime_ns: int) -> Inode:
        def fn(t: Txn) -> Inode:
            inode = self._inode_in(t, ino)
            if inode.is_dir():
                raise errors.PermissionDenied("hard links to directories are not allowed", err=1)  # EPERM
            self._dir_in(t, parent)
            self._free_in(t, parent, name)
            t.add_dentry(parent, name, ino)
            t.set_fields(ino, dict(nlink=inode.nlink + 1, ctime_ns=ctime_ns))
            t.touch_dirs([parent], ctime_ns)
            return inode.copy(nlink=inode.nlink + 1, ctime_ns=ctime_ns)
        return self.transaction(fn)

    def unlink(self, parent: int, name: bytes, ctime_ns: int) -> Inode:
        return self.transaction(lambda t: self._unlink_in(t, parent, name, ctime_ns))

    def remove(self, parent: int, name: bytes, ctime_ns: int,
               held: Callable[[Inode], bool] | None = None) -> tuple[Inode, bool]:
        def fn(t: Txn) -> tuple[Inode, bool]:
            inode = self._unlink_in(t, parent, name, ctime_ns)
            if inode.nlink > 0 or (held is not None and held(inode)):
                return inode, False
            return inode, self._purge_in(t, inode) is not None
        return self.transaction(fn)

    def _unlink_in(self, t: Txn, parent: int, name: bytes, ctime_ns: int) -> Inode:
        pos, ino = self._name_in(t, parent, name)
        inode = self._inode_in(t, ino)
        if inode.is_dir():
            raise errors.IsDir(f"{name!r} is a directory")
        t.del_dentry(parent, pos)
        t.set_fields(ino, dict(nlink=inode.nlink - 1, ctime_ns=ctime_ns))
        t.touch_dirs([parent], ctime_ns)
        return inode.copy(nlink=inode.nlink - 1, ctime_ns=ctime_ns)

    def rmdir(self, parent: int, name: bytes, ctime_ns: int) -> Inode:
        """A name added to the directory meanwhile by another mount conflicts
        (its touch_dirs with seal_dir), so the retry sees NotEmpty."""
        def fn(t: Txn) -> Inode:
            pos, ino = self._name_in(t, parent, name)
            inode = self._inode_in(t, ino)
            if not inode.is_dir():
                raise errors.NotDir(f"{name!r} is not a directory")
            t.seal_dir(ino)
            if t.has_children(ino):
                raise errors.NotEmpty(f"{name!r} is not empty")
            t.del_dentry(parent, pos)
            t.set_fields(ino, dict(nlink=0, ctime_ns=ctime_ns))
            self._subdirs_in(t, parent, -1)
            t.touch_dirs([parent], ctime_ns)
            return inode.copy(nlink=0, ctime_ns=ctime_ns)
        return self.transaction(fn)

    def rename(self, old_parent, old_name, new_parent, new_name, *, noreplace=False, exchange=False,
               ctime_ns=0) -> Inode | None:
        ctime_ns = ctime_ns or now_ns()

        def fn(t: Txn) -> Inode | None:
            src_pos, src_ino = self._name_in(t, old_parent, old_name)
            dst = t.find_dentry(new_parent, new_name)
            self._dir_in(t, new_parent)
            src = self._inode_in(t, src_ino)
            if src.is_dir() and self._ancestor_in(t, src_ino, new_parent):
                raise errors.Invalid("cannot move a directory into itself")
            if exchange:
                if dst is None:
                    raise errors.NotFound(f"{new_name!r} in directory {new_parent}")
                dst_pos, dst_ino = dst
                other = self._inode_in(t, dst_ino)
                if other.is_dir() and self._ancestor_in(t, dst_ino, old_parent):
                    raise errors.Invalid("cannot move a directory into itself")
                t.point_dentry(old_parent, src_pos, dst_ino)
                t.point_dentry(new_parent, dst_pos, src_ino)
                if old_parent != new_parent and src.is_dir() != other.is_dir():
                    delta = 1 if src.is_dir() else -1
                    self._subdirs_in(t, old_parent, -delta)
                    self._subdirs_in(t, new_parent, delta)
                for ino in {src_ino, dst_ino}:
                    t.set_fields(ino, dict(ctime_ns=ctime_ns))
                t.touch_dirs([old_parent, new_parent], ctime_ns)
                return None
            replaced = None
            if dst is not None:
                dst_pos, dst_ino = dst
                if dst_ino == src_ino:
                    return None  # same inode (hard links or same name): POSIX says do nothing
                if noreplace:
                    raise errors.Exists(f"{new_name!r} exists in directory {new_parent}")
                victim = self._inode_in(t, dst_ino)
                if victim.is_dir():
                    if not src.is_dir():
                        raise errors.IsDir(f"{new_name!r} is a directory")
                    t.seal_dir(dst_ino)
                    if t.has_children(dst_ino):
                        raise errors.NotEmpty(f"{new_name!r} is not empty")
                    replaced = victim.copy(nlink=0, ctime_ns=ctime_ns)
                    self._subdirs_in(t, new_parent, -1)
                else:
                    if src.is_dir():
                        raise errors.NotDir(f"{new_name!r} is not a directory")
                    replaced = victim.copy(nlink=victim.nlink - 1, ctime_ns=ctime_ns)
                t.set_fields(dst_ino, dict(nlink=replaced.nlink, ctime_ns=ctime_ns))
                t.del_dentry(new_parent, dst_pos)
            t.move_dentry(old_parent, old_name, src_pos, new_parent, new_name)
            if src.is_dir() and old_parent != new_parent:
                self._subdirs_in(t, old_parent, -1)
                self._subdirs_in(t, new_parent, 1)
            t.set_fields(src_ino, dict(ctime_ns=ctime_ns))
            t.touch_dirs([old_parent, new_parent], ctime_ns)
            return replaced
        return self.transaction(fn)

    def purge(self, ino: int) -> Inode | None:
        return self.transaction(lambda t: self._purge_in(t, t.find_inode(ino)))

    @staticmethod
    def _purge_in(t: Txn, inode: Inode | None) -> Inode | None:
        if inode is None or inode.nlink > 0 or inode.ino == ROOT_INO:
            return None
        if t.open_anywhere(inode.ino):
            return None  # another mount still has it open; the last one to close purges it
        t.delete_inode(inode.ino)
        t.cancel_pending_jobs(inode.ino, now_ns())
        t.add_garbage([(inode.tier, inode.location), *copies_of(inode)], "file deleted")
        return inode

    def bury(self, ino: int, who: str, why: str, *, expect_version: int | None = None) -> Tombstone:
        def fn(t: Txn) -> Tombstone:
            inode = self._inode_in(t, ino)
            if not inode.is_reg():
                raise errors.Invalid(f"inode {ino} is not a regular file")
            check_expected(inode, expect_version, None)
            path = self._path_in(t, ino)  # NotFound when it has no name any more
            now = now_ns()
            for pos, parent in t.names_of(ino):
                t.del_dentry(parent, pos)
                t.touch_dirs([parent], now)
            t.set_fields(ino, dict(nlink=0, ctime_ns=now))
            t.cancel_pending_jobs(ino, now)
            values = dict(ino=ino, path=path, size=inode.size, uid=inode.uid, gid=inode.gid,
                          crtime_ns=inode.crtime_ns, mtime_ns=inode.mtime_ns, atime_ns=inode.atime_ns,
                          state=inode.state.value, tier=inode.tier, archive_tier=inode.archive_tier,
                          checksum=inode.checksum, deleted_ns=now, who=who, why=why)
            tid = t.add_tombstone(values)
            t.add_event(ino, inode.state, "deleted", who, why)
            return Tombstone(id=tid, **values)
        return self.transaction(fn)

    # ---- moves -----------------------------------------------------------
    def switch(self, tr: Transition) -> Inode:
        def fn(t: Txn) -> Inode:
            inode = self._inode_in(t, tr.ino)
            check_expected(inode, tr.expect_version, tr.expect_states)
            if tr.ends_job and (tr.job_id is None or tr.job_session is None):
                raise ValueError(f"Transition of inode {tr.ino}: ends_job needs job_id and job_session")
            if tr.job_id is not None and tr.job_session is not None:
                check_owner(tr.job_id, tr.job_session, t.job_owner(tr.job_id))
            if tr.no_writers_except is not None:
                w = t.other_writer(tr.ino, tr.no_writers_except)
                if w is not None:
                    raise errors.VersionConflict(f"inode {tr.ino} is open for writing on another mount (session {w})")
            now = now_ns()
            changes = dict(tr.changes)
            if "state" in changes and changes["state"] != inode.state:
                changes.update(state_ns=now, state_cause=tr.cause)
                t.add_event(tr.ino, inode.state, changes["state"], tr.cause, tr.detail)
            stub = tr.stub
            if stub is None and inode.stub_size and changes.get("state", inode.state) in READABLE_STATES:
                stub = b""   # online again (restored, written, truncated): the stub was only for reads while offline
            if stub is not None:
                changes["stub_size"] = len(stub)
                t.set_stub(tr.ino, stub)
            t.set_fields(tr.ino, changes)
            t.add_garbage(tr.garbage, tr.garbage_reason or tr.cause)
            if tr.job_id is not None:
                t.clear_dst_key(tr.job_id, now)
                if tr.ends_job:
                    t.end_job(tr.job_id, now, keep_session=True)
            return inode.copy(**changes)
        return self.transaction(fn)
