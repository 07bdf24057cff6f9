"""`tierfs import`: register an existing directory tree in a mounted tierfs.

Two ways, both resumable (run the same command again after an
interruption, or after some files were archived or migrated: what is
already registered is skipped):

- In place (`InPlaceImport`): catalog entries point at the existing files,
  nothing is copied. The files must lie under the `path` of a configured
  `disk` tier; each file's object key is its path relative to the tier's
  root (the disk tier reads keys containing "/" as such paths). Entries are
  written straight into the catalog, in batches of `batch` per transaction
  (Catalog.create_many); directories are looked up by name in the catalog,
  so the mount sees them at once. Afterwards the imported files are
  ordinary tierfs files: reading, writing, archiving, and deleting them
  through the mount act on the source files (deleting one through tierfs
  deletes the source file).
- By copy (`CopyImport`): the tree is copied through the mount with plain
  file system calls (so placement, permissions and checksums work as for
  any new file); a file whose copy already has the source's size and mtime
  is skipped.

Checksums: in place, each file's sha256 is computed while registering it
(or left for later with defer_checksums: a later run without it fills in
the missing ones); by copy, the sha256 of what was read is compared with
the one the daemon records for the copy.
Source entries on another file system (mountpoints), the disk tier's own
objects/ and tmp/ directories, and sockets/FIFOs/devices are skipped.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Callable

from . import errors, xattrs
from .catalog.base import Catalog, Inode, State, now_ns
from .tiers.disk import in_place_key, own_dirs

log = logging.getLogger(__name__)

CHUNK = 1 << 20
NAME_MAX = 255


@dataclass
class Summary:
    """What an import did (printed at the end; --json prints this)."""

    mode: str                      # "in-place" or "copy"
    files: int = 0                 # regular files registered/copied by this run
    bytes: int = 0                 # their bytes
    dirs: int = 0                  # directories created by this run
    symlinks: int = 0              # symlinks created by this run
    hardlinks: int = 0             # extra names of hard-linked files
    skipped: int = 0               # entries already there (an earlier run), left as they were
    skipped_bytes: int = 0
    checksums: int = 0             # sha256 computed (or verified, by copy)
    checksums_deferred: int = 0    # files registered without a checksum
    ignored: int = 0               # sockets, FIFOs, devices, other file systems
    tier_dirs: list[str] = field(default_factory=list)   # in place: the tier's own directories met in SRC, skipped
    queued: int = 0                # copy --tier: migrations/archives requested afterwards
    errors: list[str] = field(default_factory=list)   # one line per entry that failed
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


Progress = Callable[[int, int], None]   # (files done, bytes done) since the last call


def _noop(files: int, nbytes: int) -> None:
    pass


def sha256_file(path: str) -> tuple[str, os.stat_result]:
    """sha256 of a file and its stat after reading; Invalid when it changed meanwhile."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        before = os.fstat(fd)
        h = hashlib.sha256()
        while True:
            b = os.read(fd, CHUNK)
            if not b:
                break
            h.update(b)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise errors.Invalid("the file changed while its checksum was computed")
    return h.hexdigest(), after


def scan(src: str, skip_dir: Callable[[str], bool]) -> tuple[int, int]:
    """(regular files, bytes) under src, for the progress bar."""
    files = nbytes = 0
    dev = os.stat(src).st_dev
    stack = [src]
    while stack:
        d = stack.pop()
        try:
            it = list(os.scandir(d))
        except OSError:
            continue
        for e in it:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if st.st_dev == dev and not skip_dir(e.path):
                    stack.append(e.path)
            elif stat.S_ISREG(st.st_mode):
                files += 1
                nbytes += st.st_size
    return files, nbytes


class _Walk:
    """Depth-first walk of a source tree shared by both importers: sorted
    entries per directory, one file system only, with the reasons entries
    are ignored counted in the summary."""

    def __init__(self, src: str, summary: Summary, skip_dir: Callable[[str], bool] = lambda p: False):
        self.src = os.path.abspath(src)
        self.summary = summary
        self.skip_dir = skip_dir
        self.dev = os.stat(self.src).st_dev

    def entries(self, path: str) -> list[tuple[str, bytes, os.stat_result]]:
        """(path, name bytes, lstat) of the entries to import from directory `path`."""
        out = []
        try:
            listing = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            self.error(path, e)
            return out
        for e in listing:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as err:
                self.error(e.path, err)
                continue
            fmt = stat.S_IFMT(st.st_mode)
            if fmt not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                log.info("import: skipping %s (not a file, directory or symlink)", e.path)
                self.summary.ignored += 1
                continue
            if fmt == stat.S_IFDIR and self.skip_dir(e.path):
                log.info("import: skipping %s (the tier's own directory)", e.path)
                self.summary.tier_dirs.append(e.path)
                continue
            if fmt == stat.S_IFDIR and st.st_dev != self.dev:
                log.info("import: skipping %s (another file system)", e.path)
                self.summary.ignored += 1
                continue
            name = os.fsencode(e.name)
            if len(name) > NAME_MAX:
                self.summary.errors.append(f"{e.path}: name longer than {NAME_MAX} bytes")
                continue
            out.append((e.path, name, st))
        return out

    def error(self, path: str, e: BaseException) -> None:
        msg = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e)
        self.summary.errors.append(f"{path}: {msg}")


class InPlaceImport:
    """Register SRC's files where they are, as objects of a disk tier.

    `dest_ino` is the directory (already in the catalog) that receives SRC's
    contents; `tier_root` is the disk tier's path, which is SRC or one of
    its parents.
    """

    def __init__(self, catalog: Catalog, *, src: str, dest_ino: int, tier: str, tier_root: str,
                 checksums: bool = True, batch: int = 1000, progress: Progress = _noop, cause: str = ""):
        self.cat = catalog
        self.src = os.path.abspath(src)
        self.dest_ino = dest_ino
        self.tier = tier
        self.root = os.path.abspath(tier_root)
        if not (self.src == self.root or self.src.startswith(self.root.rstrip("/") + "/")):
            raise errors.Invalid(f"{self.src} is not under the tier's path {self.root}")
        self.checksums = checksums
        self.batch = max(1, batch)
        self.progress = progress
        self.cause = cause or f"import in place by uid {os.getuid()}"
        self.summary = Summary(mode="in-place")
        own = set(own_dirs(self.root))
        self.walk = _Walk(self.src, self.summary, skip_dir=lambda p: p in own)
        # Entries waiting for the next transaction, each with what to do once it has an inode number:
        # ("dir", source path, stat) or ("file", (st_dev, st_ino)) for a hard-linked file, or None.
        self.pending: list[tuple[int, bytes, Inode, tuple | None]] = []
        self.created_dirs: list[tuple[str, int]] = []    # (source path, inode) of directories just created
        self.links: dict[tuple[int, int], int | None] = {}  # hard-linked source file -> its inode (None: pending)
        self.dir_times: list[tuple[int, os.stat_result]] = []   # directories whose times are set at the end
        # Entries that existed before this run and were changed in the catalog (a checksum filled in, a
        # directory's times or link count): a daemon caching them must re-read them (see `touched`).
        self.changed: list[tuple[str, os.stat_result]] = []     # (source path, its stat)
        self.old_dirs: dict[int, tuple[str, os.stat_result, Inode]] = {}  # directories an earlier run made
        self.grew: set[int] = set()                              # directories that got new entries

    # ---- the walk --------------------------------------------------------
    def run(self) -> Summary:
        t0 = time.monotonic()
        stack: list[tuple[str, int]] = [(self.src, self.dest_ino)]
        while stack:
            path, ino = stack.pop()
            stack.extend(reversed(self._directory(path, ino)))
        self._flush()
        for ino, (p, st, old) in self.old_dirs.items():
            if ino in self.grew or (old.atime_ns, old.mtime_ns) != (st.st_atime_ns, st.st_mtime_ns):
                self.dir_times.append((ino, st))
                self.changed.append((p, st))
        for ino, st in self.dir_times:
            self.cat.update(ino, dict(atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns))
        self.summary.seconds = time.monotonic() - t0
        return self.summary

    def _existing(self, ino: int) -> dict[bytes, Inode]:
        out, pos = {}, 0
        while True:
            page = self.cat.readdir(ino, pos, 1000)
            if not page:
                return out
            for e in page:
                out[e.name] = e.inode
            pos = page[-1].pos

    def _directory(self, path: str, ino: int) -> list[tuple[str, int]]:
        """Queue the entries of one source directory; returns its subdirectories
        as (source path, catalog inode), creating those that are new."""
        have = self._existing(ino)
        subdirs: list[tuple[str, int]] = []
        new_dirs = False
        for p, name, st in self.walk.entries(path):
            old = have.get(name)
            if stat.S_ISDIR(st.st_mode):
                if old is None:
                    self.pending.append((ino, name, self._inode(st, stat.S_IFDIR), ("dir", p, st)))
                    self.summary.dirs += 1
                    new_dirs = True
                elif old.is_dir():
                    subdirs.append((p, old.ino))
                    self.old_dirs[old.ino] = (p, st, old)
                else:
                    self.summary.errors.append(f"{p}: a non-directory of that name is already there; skipped")
            elif old is not None:
                self._already(p, st, old)
            elif stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(os.fsencode(p))
                except OSError as e:
                    self.walk.error(p, e)
                    continue
                self.pending.append((ino, name, self._inode(st, stat.S_IFLNK, target=target, size=len(target)),
                                     None))
                self.summary.symlinks += 1
            else:
                self._file(p, name, st, ino)
            if len(self.pending) >= self.batch:
                self._flush()
        if new_dirs:
            self._flush()
        subdirs += self.created_dirs
        self.created_dirs = []
        return sorted(subdirs)

    def _file(self, path: str, name: bytes, st: os.stat_result, parent: int) -> None:
        key = self.key(path)
        if key is None:
            return
        ident = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and ident in self.links:  # another name of a file registered already
            if self.links[ident] is None:
                self._flush()
            try:
                self.cat.link(self.links[ident], parent, name, now_ns())
                self.grew.add(parent)
                self.summary.hardlinks += 1
            except errors.TierfsError as e:
                self.walk.error(path, e)
            return
        checksum = None
        if self.checksums:
            try:
                checksum, st = self._checksum(path)
            except (OSError, errors.TierfsError) as e:
                self.walk.error(path, e)
                return
            self.summary.checksums += 1
        else:
            self.summary.checksums_deferred += 1
        inode = self._inode(st, stat.S_IFREG, size=st.st_size, tier=self.tier, location=key, checksum=checksum)
        extra = None
        if st.st_nlink > 1:
            self.links[ident] = None
            extra = ("file", ident)
        self.pending.append((parent, name, inode, extra))
        self.summary.files += 1
        self.summary.bytes += st.st_size
        self.progress(1, st.st_size)

    def touched(self) -> list[tuple[str, int, int]]:
        """(path relative to SRC, atime_ns, mtime_ns) of the entries that existed
        before this run and changed in the catalog. A daemon whose catalog is
        not shared caches attributes for good: setting these times through
        the mount (os.utime) makes it re-read each one from the catalog."""
        return [(os.path.relpath(p, self.src), st.st_atime_ns, st.st_mtime_ns) for p, st in self.changed]

    def _checksum(self, path: str) -> tuple[str, os.stat_result]:
        try:
            return sha256_file(path)
        except errors.Invalid:
            return sha256_file(path)  # changed while reading: once more, then give up

    def _already(self, path: str, st: os.stat_result, old: Inode) -> None:
        """An entry registered by an earlier run (fill in a deferred checksum),
        or something else of that name (an error)."""
        if stat.S_ISLNK(st.st_mode) and old.is_symlink():
            self.summary.skipped += 1
            return
        here = old.is_reg() and old.tier == self.tier and self._same(path, st, old.location)
        if not here and not self._moved_off(st, old):
            self.summary.errors.append(f"{path}: another entry of that name is already there; skipped")
            return
        self.summary.skipped += 1
        self.summary.skipped_bytes += st.st_size
        if st.st_nlink > 1:
            self.links.setdefault((st.st_dev, st.st_ino), old.ino)
        if here and self.checksums and old.checksum is None and old.state == State.ONLINE:
            try:
                sha, st2 = self._checksum(path)
                if st2.st_size != old.size:
                    raise errors.Invalid(f"size {st2.st_size} differs from the registered {old.size}")
                self.cat.update(old.ino, {"checksum": sha}, expect_version=old.data_version)
                self.summary.checksums += 1
                self.changed.append((path, st))
            except (OSError, errors.TierfsError) as e:
                self.walk.error(path, e)
        self.progress(1, st.st_size)

    def _moved_off(self, st: os.stat_result, old: Inode) -> bool:
        """Is `old` an entry an earlier run registered for this source file whose
        bytes have moved since (archived, migrated, restored to a new object)?
        The source stays where it was (a move never deletes the original; a release
        does only on a tier with release_originals, and then leaves no source here) but
        nothing records that it was the entry's: a regular file whose bytes
        are not an imported file of this tier, with the source's size and
        mtime (what the import copied from it, and what a move keeps), is
        taken for it, as `--copy` takes a copy with the source's size and
        mtime for done."""
        if not old.is_reg():
            return False
        if old.tier == self.tier and old.location and in_place_key(old.location):
            return False  # the entry of another imported file
        return (old.size, old.mtime_ns) == (st.st_size, st.st_mtime_ns)

    def _same(self, path: str, st: os.stat_result, location: str | None) -> bool:
        """Does object `location` of the tier designate this source file (by its
        path, or for a hard-linked file by another name of the same inode)?"""
        if location is None:
            return False
        if location == self.key(path, quiet=True):
            return True
        if st.st_nlink < 2 or not in_place_key(location):
            return False
        try:
            other = os.stat(os.path.join(self.root, location), follow_symlinks=False)
        except OSError:
            return False
        return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)

    def key(self, path: str, quiet: bool = False) -> str | None:
        """The object key of a source file: its path relative to the tier root
        ("./name" at the top, so it always contains "/")."""
        rel = os.path.relpath(path, self.root)
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            if not quiet:
                self.summary.errors.append(f"{path}: path is not valid UTF-8, so it cannot be an object key; "
                                           "import it with --copy")
            return None
        return rel if "/" in rel else "./" + rel

    def _inode(self, st: os.stat_result, fmt: int, **kw) -> Inode:
        t = now_ns()
        return Inode(ino=0, mode=fmt | stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                     nlink=2 if fmt == stat.S_IFDIR else 1, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns,
                     ctime_ns=t, crtime_ns=min(st.st_mtime_ns, st.st_ctime_ns), state=State.ONLINE,
                     state_ns=t, state_cause=self.cause, **kw)

    def _flush(self) -> None:
        """Write the queued entries in one transaction."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self.grew.update(p for p, _, _, _ in batch)
        try:
            created = self.cat.create_many([(p, n, i) for p, n, i, _ in batch], now_ns())
        except errors.Exists:  # a name was created through the mount meanwhile: one by one
            batch, created = self._one_by_one(batch)
        for (_, _, _, extra), made in zip(batch, created):
            if extra is None:
                continue
            if extra[0] == "dir":
                self.created_dirs.append((extra[1], made.ino))
                self.dir_times.append((made.ino, extra[2]))
            else:
                self.links[extra[1]] = made.ino

    def _one_by_one(self, batch: list) -> tuple[list, list[Inode]]:
        done, created = [], []
        for parent, name, inode, extra in batch:
            try:
                created.append(self.cat.create(parent, name, inode))
                done.append((parent, name, inode, extra))
            except errors.Exists:
                self.summary.errors.append(f"{os.fsdecode(name)}: created in directory inode {parent} by someone "
                                           "else during the import; skipped")
        return done, created


class CopyImport:
    """Copy SRC's tree into DEST through the mount (resumable: a file whose
    copy has the source's size and mtime is skipped). Each file is written to
    a hidden temporary name, then renamed, so an interrupted copy never looks
    complete. With `tier`, each copied file not already on it is migrated
    (online tier) or archived (archive tier) there by a queued request."""

    PARTIAL = ".tierfs-import-partial"

    def __init__(self, *, src: str, dest: str, checksums: bool = True, tier: str | None = None,
                 tier_is_archive: bool = False, progress: Progress = _noop, verify_timeout: float = 120.0):
        self.src = os.path.abspath(src)
        self.dest = os.path.abspath(dest)
        self.checksums = checksums
        self.tier = tier
        self.tier_is_archive = tier_is_archive
        self.progress = progress
        self.verify_timeout = verify_timeout
        self.summary = Summary(mode="copy")
        self.walk = _Walk(self.src, self.summary)
        self.copied: list[tuple[str, str]] = []        # (copy, sha256 of what was read) to verify
        self.links: dict[tuple[int, int], str] = {}    # hard-linked source file -> its first copy
        self.dir_times: list[tuple[str, os.stat_result]] = []
        self.root = os.geteuid() == 0

    def run(self) -> Summary:
        t0 = time.monotonic()
        stack = [(self.src, self.dest)]
        while stack:
            sp, dp = stack.pop()
            subdirs = []
            for p, name, st in self.walk.entries(sp):
                target = os.path.join(os.fsencode(dp), name)
                try:
                    if stat.S_ISDIR(st.st_mode):
                        if self._mkdir(target, st):
                            subdirs.append((p, os.fsdecode(target)))
                    elif stat.S_ISLNK(st.st_mode):
                        self._symlink(p, target, st)
                    else:
                        self._file(p, target, st)
                except OSError as e:
                    self.walk.error(p, e)
            stack.extend(reversed(subdirs))
        for dp, st in reversed(self.dir_times):
            try:
                os.utime(dp, ns=(st.st_atime_ns, st.st_mtime_ns))
            except OSError as e:
                self.walk.error(dp, e)
        if self.checksums:
            self._verify()
        self.summary.seconds = time.monotonic() - t0
        return self.summary

    def _own(self, path: bytes, st: os.stat_result) -> None:
        if self.root:
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)

    def _mkdir(self, target: bytes, st: os.stat_result) -> bool:
        try:
            os.mkdir(target, 0o700)
            self._own(target, st)
            os.chmod(target, stat.S_IMODE(st.st_mode))
            self.summary.dirs += 1
        except FileExistsError:
            if not os.path.isdir(target) or os.path.islink(target):
                self.summary.errors.append(f"{os.fsdecode(target)}: exists and is not a directory; skipped")
                return False
        self.dir_times.append((os.fsdecode(target), st))
        return True

    def _symlink(self, src: str, target: bytes, st: os.stat_result) -> None:
        if os.path.lexists(target):
            self.summary.skipped += 1
            return
        os.symlink(os.readlink(os.fsencode(src)), target)
        self._own(target, st)
        self.summary.symlinks += 1

    def _file(self, src: str, target: bytes, st: os.stat_result) -> None:
        ident = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and ident in self.links:
            if not os.path.lexists(target):
                os.link(self.links[ident], target)
                self.summary.hardlinks += 1
            return
        try:
            have = os.lstat(target)
        except FileNotFoundError:
            have = None
        if have is not None and stat.S_ISREG(have.st_mode) and have.st_size == st.st_size \
                and have.st_mtime_ns == st.st_mtime_ns:
            self.summary.skipped += 1
            self.summary.skipped_bytes += st.st_size
            self.links.setdefault(ident, target)
            self.progress(1, st.st_size)
            return
        if have is not None and not stat.S_ISREG(have.st_mode):
            self.summary.errors.append(f"{os.fsdecode(target)}: exists and is not a file; skipped")
            return
        tmp = os.path.join(os.path.dirname(target), b"." + os.path.basename(target)[:NAME_MAX - 40]
                           + self.PARTIAL.encode())
        h = hashlib.sha256() if self.checksums else None
        n = 0
        with open(src, "rb") as r, open(tmp, "wb") as w:
            while True:
                b = r.read(CHUNK)
                if not b:
                    break
                if h is not None:
                    h.update(b)
                w.write(b)
                n += len(b)
                self.progress(0, len(b))
        self._own(tmp, st)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, target)
        self.progress(1, 0)
        self.summary.files += 1
        self.summary.bytes += n
        if st.st_nlink > 1:
            self.links[ident] = target
        if h is not None:
            self.copied.append((os.fsdecode(target), h.hexdigest()))
        else:
            self.summary.checksums_deferred += 1
        if self.tier:
            self._place(target)

    def _place(self, target: bytes) -> None:
        try:
            where = os.getxattr(target, xattrs.text(xattrs.TIER)).decode()
        except OSError:
            where = ""
        if where == self.tier:
            return
        verb = f"archive to={self.tier}" if self.tier_is_archive else f"migrate to={self.tier}"
        os.setxattr(target, xattrs.text(xattrs.REQUEST), verb.encode())
        self.summary.queued += 1

    def _verify(self) -> None:
        """Compare the sha256 of what was read with what the daemon recorded."""
        deadline = time.monotonic() + self.verify_timeout
        todo = list(self.copied)
        while todo:
            later = []
            for path, sha in todo:
                try:
                    got = os.getxattr(path, xattrs.text(xattrs.CHECKSUM)).decode()
                except OSError as e:
                    if e.errno != errno.ENODATA:
                        self.walk.error(path, e)
                        continue
                    later.append((path, sha))
                    continue
                if got != sha:
                    self.summary.errors.append(f"{path}: the copy's sha256 {got[:16]}.. differs from the source's "
                                               f"{sha[:16]}..")
                else:
                    self.summary.checksums += 1
            todo = later
            if todo:
                if time.monotonic() > deadline:
                    self.summary.checksums_deferred += len(todo)
                    log.warning("import: %d checksums not recorded by the daemon within %.0fs", len(todo),
                                self.verify_timeout)
                    return
                time.sleep(0.2)
