"""Local staged copies for writing files whose tier has no in-place access
(S3, GridFS): open-for-write fetches the object into a local file under
state_dir/staging, writes go there, and flush/fsync upload it as a NEW
object, then one catalog compare-and-swap points the file at it and sends
the old object to garbage (never an in-place overwrite of the only copy).

One staged copy per inode, shared by every handle open on it meanwhile, so
readers in this mount see their own writes. Data written but not yet
flushed is lost if the daemon dies, as with any write-back cache; fsync and
close (flush) make it durable on the tier.

An upload that fails (the endpoint is down) fails the close/fsync with EIO,
and the written bytes stay here: reads serve them, the catalog keeps the
file's last uploaded size and object (never a size with no bytes behind it:
the file read as zeros), and `run` uploads them when the tier answers again
(probed every PROBE_S seconds). At unmount the copies still not uploaded stay on disk with a
manifest (MANIFEST) and are uploaded by the next mount, unless the file
changed meanwhile (its content version moved).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass

import trio

from . import errors, private
from .attrcache import AttrCache
from .catalog.base import READABLE_STATES, Changes, Inode, Transition
from .services import Events
from .tiers.base import CHUNK, Tier, new_key

log = logging.getLogger(__name__)


#: staged copies kept at unmount because their upload failed, for the next mount
MANIFEST = "pending-uploads.json"
RETRY_MAX_S = 60.0   # how often run() looks when nothing waits (release() wakes it at once)
PROBE_S = 5.0        # how often a tier that refused an upload is asked again


@dataclass
class StagedCopy:
    ino: int
    tier: Tier                 # tier the uploads go to
    path: str                  # local staging file
    fd: int                    # read/write fd on it
    users: int = 0             # handles (bindings) using it
    dirty: bool = False        # changed since the last upload
    uploading: bool = False    # an upload is in flight (its bytes are not on the tier yet)
    failed: str = ""           # why the last upload failed ("" if it did not)
    kept: bool = False         # no handle uses it and its upload failed: said once in the log


@dataclass
class Leftover:
    """A manifest entry: a staged copy kept at unmount."""

    ino: int
    tier: str
    data_version: int          # the file's content version when it was written: adopted only if unchanged
    mtime_ns: int


class Staging:
    def __init__(self, fs, cache: AttrCache, events: Events, directory: str):
        self.fs = fs
        self.cache = cache      # the FileSystem's attribute cache (what a leftover records)
        self.events = events    # an upload switched a file to its new object
        self.dir = directory
        self.copies: dict[int, StagedCopy] = {}
        self._wake = trio.Event()
        self.closing = False
        private.makedirs(directory)  # 0700 (with state_dir/staging if missing): staged copies are file bytes
        self.leftovers = self._read_manifest()
        for f in os.listdir(directory):  # leftovers of a crash: never uploaded, never referenced
            if f not in self.leftovers and f != MANIFEST:
                try:
                    os.unlink(os.path.join(directory, f))
                except OSError:
                    pass

    def get(self, ino: int) -> StagedCopy | None:
        return self.copies.get(ino)

    def unuploaded(self, ino: int) -> bool:
        """Bytes written here that the tier does not have yet: the catalog
        must not get their size before it gets the object holding them."""
        c = self.copies.get(ino)
        return c is not None and (c.dirty or c.uploading)

    def stats(self) -> dict:
        """Files whose written bytes wait here for their tier (user.tierfs.stats)."""
        waiting = [c for c in self.copies.values() if (c.dirty or c.uploading) and c.failed]
        return {"pending_uploads": len(waiting),
                "pending_upload_bytes": sum(os.fstat(c.fd).st_size for c in waiting)}

    def mark_dirty(self, ino: int) -> None:
        """The staged copy was written: the next flush uploads it."""
        self.copies[ino].dirty = True

    async def acquire(self, inode: Inode, fetch: bool = True) -> StagedCopy:
        """The staged copy of `inode`, made (and filled from its object) if needed.
        The caller holds the inode lock."""
        c = self.copies.get(inode.ino)
        if c is None:
            tier = self.fs.tier(inode.tier)
            path = os.path.join(self.dir, f"{inode.ino}-{new_key()[:8]}")
            fd = private.create(path, os.O_RDWR)
            c = StagedCopy(inode.ino, tier, path, fd)
            try:
                if fetch and inode.location and inode.size:
                    await trio.to_thread.run_sync(self._download, tier, inode.location, fd)
                os.ftruncate(fd, inode.size if fetch else 0)
            except BaseException:
                os.close(fd)
                os.unlink(path)
                raise
            self.copies[inode.ino] = c
        c.users += 1
        return c

    @staticmethod
    def _download(tier: Tier, key: str, fd: int) -> None:
        with tier.open_reader(key) as r:
            off = 0
            while True:
                b = r.read(CHUNK * 4)
                if not b:
                    return
                os.pwrite(fd, b, off)
                off += len(b)

    async def upload(self, ino: int, locked: bool = False, changes: Changes | None = None) -> None:
        """Store the staged copy as a new object and switch the file to it."""
        if locked:
            await self._upload(ino, changes)
        else:
            async with self.fs.lock(ino):
                await self._upload(ino, changes)

    async def _upload(self, ino: int, changes: Changes | None = None) -> None:
        fs = self.fs
        c = self.copies.get(ino)
        if c is None or not c.dirty:
            return
        c.dirty, c.uploading = False, True
        key = new_key()
        try:
            def put():
                with os.fdopen(os.dup(c.fd), "rb") as f:
                    f.seek(0)
                    return c.tier.put(key, f)
            n = await trio.to_thread.run_sync(put)
            inode = await fs.get(ino)
            # The staged copy always has the file's size (acquire and truncate set it, writes extend it).
            await fs.fetch(fs.catalog.switch, Transition(
                ino, inode.data_version, READABLE_STATES, Changes(**(changes or {}), tier=c.tier.name, location=key,
                                                                  size=n),
                "write", f"uploaded {n} bytes to {c.tier.name}", garbage=((inode.tier, inode.location),)))
        except BaseException as e:
            c.dirty = True
            c.failed = str(e) or type(e).__name__
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(c.tier.delete, key)
                except errors.TierfsError:
                    pass
            raise
        finally:
            c.uploading = False
        if c.failed:
            log.info("inode %d: the staged bytes are on tier %s now (%d bytes)", ino, c.tier.name, n)
            c.failed = ""
        self.events.changed()

    def release(self, ino: int) -> None:
        """Drop one user; the last one discards the copy, unless its upload
        failed: then it stays (reads serve it) until `run` uploads it."""
        c = self.copies.get(ino)
        if c is None:
            return
        c.users -= 1
        if c.users > 0:
            return
        if c.dirty or c.uploading:  # (the background upload may be failing right now)
            if not c.kept:
                c.kept = True
                log.error("inode %d: the upload to tier %s failed (%s); its written bytes stay in %s and are "
                          "uploaded when the tier answers", ino, c.tier.name, c.failed or "not uploaded", c.path)
            self._wake.set()
            return
        self._discard(c)

    def _discard(self, c: StagedCopy) -> None:
        self.copies.pop(c.ino, None)
        os.close(c.fd)
        try:
            os.unlink(c.path)
        except OSError:
            pass

    # ---- copies whose upload failed ------------------------------------------------
    async def run(self) -> None:
        """Upload the copies whose upload failed (and those a previous mount
        left) once their tier answers a probe again, asked every PROBE_S; a
        daemon task."""
        await self._adopt_leftovers()
        delay = 1.0
        while not self.closing:
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()
            if self.closing:
                return
            # Copies no handle uses any more, and those whose upload failed (their readers must not wait
            # for a writer that is gone: they keep reading the copy meanwhile).
            stuck = [c for c in self.copies.values() if c.dirty and (c.users == 0 or c.failed)]
            delay = RETRY_MAX_S if not stuck else 1.0
            for tier in {c.tier for c in stuck}:
                try:  # a cheap question first (HEAD of the bucket), not an upload of every file
                    await trio.to_thread.run_sync(tier.probe)
                except errors.TierfsError as e:
                    log.debug("staged uploads to tier %s wait: %s", tier.name, e)
                    delay = PROBE_S
                    continue
                for c in [c for c in stuck if c.tier is tier]:
                    await self._retry(c)
                    if c.dirty:
                        delay = PROBE_S

    async def _retry(self, c: StagedCopy) -> None:
        try:
            await self.upload(c.ino)
            await self.fs.persist_attrs(c.ino)
            self.fs.checksums.want(c.ino)
        except errors.NotFound:
            log.warning("inode %d was deleted before its staged bytes could be uploaded", c.ino)
            c.dirty = False
        except errors.VersionConflict:
            log.error("inode %d changed on another mount while its upload to %s failed here: "
                      "dropping the bytes written here (%s)", c.ino, c.tier.name, c.failed)
            c.dirty = False
        except errors.TierfsError as e:
            log.debug("inode %d: upload to %s still fails: %s", c.ino, c.tier.name, e)
        if not c.dirty and not c.uploading and c.users == 0:
            self._discard(c)

    async def shutdown(self) -> None:
        """At unmount: a last upload of what failed; what still fails stays on
        disk with a manifest for the next mount."""
        self.closing = True
        self._wake.set()
        while any(c.uploading for c in self.copies.values()):  # run()'s upload in flight: its outcome decides
            await trio.sleep(0.05)
        keep: dict[str, dict] = {}
        for c in list(self.copies.values()):
            if c.dirty:
                try:
                    await self.upload(c.ino)
                    await self.fs.persist_attrs(c.ino)
                except errors.TierfsError as e:
                    inode = self.cache.peek(c.ino)
                    if inode is not None:
                        keep[os.path.basename(c.path)] = asdict(Leftover(c.ino, c.tier.name, inode.data_version,
                                                                         inode.mtime_ns))
                        log.error("inode %d: upload to tier %s fails at unmount (%s): its written bytes stay in "
                                  "%s for the next mount", c.ino, c.tier.name, e, c.path)
                        os.close(c.fd)
                        self.copies.pop(c.ino, None)
                        continue
            self._discard(c)
        path = os.path.join(self.dir, MANIFEST)
        if keep:
            tmp = path + ".tmp"
            if os.path.exists(tmp):
                os.unlink(tmp)
            with open(private.create(tmp), "w") as f:
                json.dump(keep, f)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        elif os.path.exists(path):
            os.unlink(path)

    def _read_manifest(self) -> dict[str, Leftover]:
        try:
            with open(os.path.join(self.dir, MANIFEST)) as f:
                return {name: Leftover(**e) for name, e in json.load(f).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as e:
            log.error("staging manifest %s is unreadable (%s): its staged copies are dropped",
                      os.path.join(self.dir, MANIFEST), e)
            return {}

    async def _adopt_leftovers(self) -> None:
        """Copies the previous mount could not upload: uploaded now if the
        file has not changed since (same content version), else dropped."""
        for name, e in self.leftovers.items():
            path = os.path.join(self.dir, name)
            try:
                inode = await self.fs.get(e.ino)
            except errors.NotFound:
                inode = None
            tier = self.fs.tiers.get(e.tier)
            if inode is None or tier is None or inode.data_version != e.data_version or \
                    inode.state not in READABLE_STATES or e.ino in self.copies:
                log.warning("dropping the staged copy %s of inode %d left by the previous mount: the file changed "
                            "or is gone since", path, e.ino)
                os.unlink(path)
                continue
            c = StagedCopy(e.ino, tier, path, os.open(path, os.O_RDWR), dirty=True, failed="left by the last mount")
            self.copies[e.ino] = c
            try:
                await self.upload(e.ino, changes=Changes(mtime_ns=e.mtime_ns, ctime_ns=e.mtime_ns))
                log.info("inode %d: uploaded the bytes the previous mount could not", e.ino)
                self._discard(c)
            except errors.TierfsError as err:
                log.warning("inode %d: the bytes the previous mount could not upload still wait (%s)", e.ino, err)
        self.leftovers = {}
        manifest = os.path.join(self.dir, MANIFEST)
        if os.path.exists(manifest) and not any(c.dirty for c in self.copies.values()):
            os.unlink(manifest)  # else the next unmount rewrites it (a crash before: adopted again)

    async def truncate(self, inode: Inode, size: int) -> None:
        """Truncate a file on a non-local tier (caller holds the inode lock)."""
        fs = self.fs
        c = self.copies.get(inode.ino)
        if c is not None:
            os.ftruncate(c.fd, size)
            c.dirty = True
            return
        if size == 0:
            await fs.fetch(fs.catalog.switch, Transition(inode.ino, inode.data_version, READABLE_STATES,
                                                         Changes(location=None, size=0), "truncate", "to 0",
                                                         garbage=((inode.tier, inode.location),)))
            return
        c = await self.acquire(inode)
        try:
            os.ftruncate(c.fd, size)
            c.dirty = True
            await self.upload(inode.ino, locked=True)
        finally:
            self.release(inode.ino)
