"""Named fault points in the move protocol, for crash tests.

`point("archive.after_copy")` kills the process with SIGKILL (no cleanup,
like a power cut) when the environment variable TIERFS_FAULT names that
point. Nothing happens otherwise; production never sets the variable.
Every point is listed in POINTS so tests can iterate over all of them.
"""

import logging
import os
import signal

log = logging.getLogger(__name__)

POINTS = (
    "archive.after_mark",      # state set to archiving, nothing copied
    "archive.after_copy",      # archive copy written, not verified
    "archive.after_verify",    # copy verified, catalog not switched
    "archive.after_switch",    # catalog points at the archive copy; online copy not yet deleted
    "restore.after_mark",      # state set to restoring
    "restore.after_copy",      # online copy written, not verified
    "restore.after_switch",    # catalog points at the new online copy
    "release.before_switch",   # release decided, catalog unchanged
    "migrate.after_copy",      # destination written, not verified
    "migrate.after_switch",    # catalog points at the destination; source not yet deleted
    "gc.before_delete",        # garbage entry about to be deleted from its tier
    "checksum.before_compute",  # a closed file's checksum is about to be computed in the background
)
#: the points of archiving in place (storage_class.py), which need an S3 tier: their crash tests are in
#: tests/mount/test_s3_storage_class.py (tests/system/test_faults.py runs POINTS on vault tiers)
IN_PLACE_POINTS = (
    "archive.before_transition",  # archived in place: catalog switched, the object still in the online class
    "restore.after_transition",   # restored in place: the object back in the online class, catalog not switched
)


def bug(handler: str) -> None:
    """Raise an unexpected exception in FUSE handler `handler` when
    TIERFS_FAULT is "handler.<name>": proves a bug answers EIO and the
    mount survives."""
    if ACTIVE == "handler." + handler:
        raise RuntimeError(f"injected bug in {handler}")


#: the fault point chosen for this process (read once: the check is on hot paths)
ACTIVE = os.environ.get("TIERFS_FAULT") or None


def point(name: str) -> None:
    if ACTIVE == name:
        log.error("fault injection: killing the daemon at %s", name)
        for h in logging.getLogger().handlers:
            h.flush()
        os.kill(os.getpid(), signal.SIGKILL)
