"""Archiving by storage class: an s3 tier with `archive_storage_class` archives the
files on it by moving their objects to that storage class in the same
bucket (what Clowder's archival extractor does), with no second copy.

The catalog record of such a file: state archived, tier/location None,
archive_tier = the s3 tier itself, archive_location = the same key. There
is no garbage: the object is the archive copy.

Archive (the order keeps the bytes readable or restorable at every step):
  1. verify: read the object once and compare its sha256 with the recorded
     checksum (record it when there is none);
  2. switch: one compare-and-swap on the content version (no writer on any
     mount, not busy here) makes the file archived;
  3. transition: CopyObject onto the same key with the archive class.
A crash between 2 and 3 leaves an archived file whose object is still in
the online class: a restore finds it readable at once, and the job (still
running, re-run after the restart) finishes the transition, since an
archive job of an archived file whose object is in the wrong class redoes
it. The reverse order would leave an online file whose object S3 refuses
to serve (GLACIER) until someone restores it by hand.

Restore (Mover.restore marks the file restoring and asks the tier to make
the object readable: RestoreObject and polling for GLACIER / DEEP_ARCHIVE,
nothing for GLACIER_IR, INTELLIGENT_TIERING, STANDARD_IA, ONEZONE_IA):
  1. transition back: CopyObject onto the same key with the tier's
     storage_class (skipped when it is there already: a re-run);
  2. verify: read it and compare with the recorded sha256 (a mismatch or a
     missing object makes the file lost: the object was its only copy);
  3. switch: online on the tier, same key, no archive fields.
Reads are not served from the archive class directly (a GLACIER_IR object
could be): a restore brings the file back to the online class as Clowder's
unarchive does, and the file is online again in every sense (st_blocks).

A restore to ANOTHER tier (`tierfs restore --to disk`) is an ordinary
restore (a copy): the file becomes dual, its archive copy the object in
the archive class.
"""

from __future__ import annotations

import logging

import trio

from typing import Callable

from . import errors, faults
from .catalog.base import Changes, Inode, Job, State, Transition, copies_changes, copies_of, now_ns
from .settings import archives_in_place
from .tiers.base import Tier, sha256_stream
from .units import fmt_size

log = logging.getLogger(__name__)


class Busy(errors.TierfsError):
    """Not now: the file is busy or changed under the archive (the job goes
    back to the queue, uncounted: moves.Retry)."""


def in_place(tier: Tier) -> bool:
    """`tier` archives its own files in place (archive_storage_class)."""
    return archives_in_place(tier.settings)


def restores_in_place(src: Tier, target: str | None) -> bool:
    """A restore of a file archived in place on `src` to `target` (None: the
    default) transitions the object back rather than copying it elsewhere."""
    return in_place(src) and target in (None, src.name)


def refusal(tier: Tier, inode: Inode) -> str | None:
    """Why a file cannot be archived in place on `tier` (None: it can): the
    tier transitions its own objects, it takes no copies of other tiers'."""
    if tier.name in (inode.tier, inode.archive_tier):
        return None
    return _not_here(tier, inode)


def _not_here(tier: Tier, inode: Inode) -> str:
    return (f"tier {tier.name} archives in place (archive_storage_class = {tier.archive_storage_class}): it "
            f"archives only files stored on it, and inode {inode.ino} is on {inode.tier or inode.archive_tier}; "
            f"migrate it to {tier.name} first, or archive it to an archive tier")


async def archive(fs, job: Job, inode: Inode, tier: Tier, busy: Callable[[], str | None]) -> None:
    """Archive `inode` in place on `tier` (module doc); a re-run finishes a
    transition a crash interrupted. `busy`: why the file must not switch
    now (moves.busy), checked before the verification and at the switch."""
    ino = inode.ino
    async with fs.lock(ino):   # the version under the lock (see Mover.migrate)
        inode = await fs.fetch(fs.catalog.get, ino)
    if inode.state == State.ARCHIVED:
        await finish(inode, tier)
        return
    if inode.state not in (State.ONLINE, State.DUAL):
        return   # restoring, lost, or another move under way: nothing to do now
    if inode.tier != tier.name:
        raise errors.TierfsError(_not_here(tier, inode))
    why = busy()
    if why:
        raise Busy(why)
    if inode.location is None:
        log.info("archive of inode %d in place on %s: the file has no object yet (empty): nothing to archive",
                 ino, tier.name)
        return
    key = inode.location
    sha, n = await trio.to_thread.run_sync(_sha_of, tier, key)
    if n != inode.size or (inode.checksum and sha != inode.checksum):
        if (await fs.cat(fs.catalog.get, ino)).data_version != inode.data_version:
            raise Busy("file changed during the verification")
        raise errors.ChecksumMismatch(
            f"{tier.name}/{key}: {n} bytes with sha256 {sha[:12]}.., the catalog says {inode.size} bytes"
            + (f" with {inode.checksum[:12]}.." if inode.checksum else "") + ": not archived")
    faults.point("archive.after_verify")
    # A dual file's older archive copies (on other tiers) are superseded by this one.
    garbage = tuple(c for c in copies_of(inode) if c[0] != tier.name)
    commit = Transition(ino, inode.data_version, (inode.state,), Changes(
        state=State.ARCHIVED, tier=None, location=None, checksum=sha, **copies_changes([(tier.name, key)])),
        job.cause, f"in place on {tier.name} ({tier.storage_class} -> {tier.archive_storage_class}), {n} bytes",
        garbage=garbage, job_id=job.id, job_session=job.session, no_writers_except=fs.session_id)
    async with fs.lock(ino):
        why = busy()
        if why:
            raise Busy(f"{why} (opened during the verification)")
        try:
            await fs.fetch(fs.catalog.switch, commit)
        except errors.VersionConflict:
            raise Busy("file changed during the verification") from None
        except errors.NotFound:
            return   # deleted meanwhile: nothing to archive
    await fs.invalidate(ino)   # st_blocks is 0 now
    faults.point("archive.before_transition")
    await trio.to_thread.run_sync(tier.set_storage_class, key, tier.archive_storage_class)
    log.info("archived inode %d in place: %s/%s is %s now, %s (%s)", ino, tier.name, key,
             tier.archive_storage_class, fmt_size(n), job.cause)
    fs.events.changed()


async def finish(inode: Inode, tier: Tier) -> None:
    """An archived file of `tier` whose object is in the online class (a
    crash between the switch and the transition, a transition that failed,
    a copy made outside tierfs): transition it now."""
    if inode.archive_tier != tier.name or not inode.archive_location:
        return
    if await trio.to_thread.run_sync(tier.set_storage_class, inode.archive_location, tier.archive_storage_class):
        log.warning("inode %d: archived in place but its object %s/%s was in the online class (an archive "
                    "interrupted, or a change outside tierfs): moved to %s now", inode.ino, tier.name,
                    inode.archive_location, tier.archive_storage_class)


async def restore(fs, job: Job, inode: Inode, tier: Tier) -> None:
    """Bring a file archived in place back online (module doc). `inode` is
    marked restoring and its object readable (tier.prepare_restore)."""
    ino, key = inode.ino, inode.archive_location
    try:
        await trio.to_thread.run_sync(tier.set_storage_class, key, tier.storage_class)
        faults.point("restore.after_transition")
        ok = await trio.to_thread.run_sync(_matches, tier, key, inode)
        if not ok:
            raise errors.ChecksumMismatch(f"{tier.name}/{key} does not match the recorded sha256")
    except (errors.ChecksumMismatch, errors.ObjectMissing) as e:
        cur = await fs.cat(fs.catalog.get, ino)
        if cur.data_version != inode.data_version:
            return   # truncated or rewritten meanwhile: its bytes no longer come from this object
        await fs.fetch(fs.catalog.switch, Transition(ino, inode.data_version, (State.RESTORING,),
                                                     Changes(state=State.LOST), str(job.kind), str(e)))
        log.error("inode %d is lost: %s", ino, e)
        raise errors.TierfsError(f"inode {ino} is lost: {e}") from e
    try:
        await fs.fetch(fs.catalog.switch, Transition(
            ino, inode.data_version, (State.RESTORING,),
            Changes(state=State.ONLINE, tier=tier.name, location=key, atime_ns=now_ns(), **copies_changes(())),
            job.cause, f"in place on {tier.name} ({tier.archive_storage_class} -> {tier.storage_class}), "
            f"{inode.size} bytes", garbage=tuple(copies_of(inode)[1:]), job_id=job.id, job_session=job.session,
            ends_job=job.session is not None))
    except (errors.VersionConflict, errors.NotFound):
        return   # truncated, rewritten or deleted meanwhile: nothing to bring back
    await fs.invalidate(ino)
    log.info("restored inode %d in place: %s/%s is %s again, %s (%s)", ino, tier.name, key, tier.storage_class,
             fmt_size(inode.size), job.cause)
    fs.events.changed()


def _sha_of(tier: Tier, key: str) -> tuple[str, int]:
    """The object's sha256 and size, read once through the tier."""
    with tier.open_reader(key) as r:
        return sha256_stream(r)


def _matches(tier: Tier, key: str, inode: Inode) -> bool:
    """The object holds the file's recorded bytes (read back: the storage
    class change made a new object under the key)."""
    if not inode.checksum:
        return (tier.size(key) or 0) == inode.size
    return tier.verify(key, inode.checksum, inode.size)
