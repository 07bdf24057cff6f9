"""Domain exceptions, each carrying the errno it means at the syscall.

Catalog, tiers and the filesystem engine raise these; fuse_ops.py turns them
into pyfuse3.FUSEError in one place, and the CLI turns them into messages.
"""

import errno


class TierfsError(Exception):
    """Base class: an error with an errno and a human-readable cause."""

    errno = errno.EIO

    def __init__(self, message: str = "", *, err: int | None = None):
        super().__init__(message or self.__class__.__name__)
        if err is not None:
            self.errno = err


class NotFound(TierfsError):
    errno = errno.ENOENT


class Exists(TierfsError):
    errno = errno.EEXIST


class NotEmpty(TierfsError):
    errno = errno.ENOTEMPTY


class NotDir(TierfsError):
    errno = errno.ENOTDIR


class IsDir(TierfsError):
    errno = errno.EISDIR


class Invalid(TierfsError):
    errno = errno.EINVAL


class PermissionDenied(TierfsError):
    errno = errno.EACCES


class NoAttr(TierfsError):
    errno = errno.ENODATA


class TryAgain(TierfsError):
    """The file is offline (archived) and its restore is queued or running."""

    errno = errno.EAGAIN


class NoSpace(TierfsError):
    errno = errno.ENOSPC


class CatalogUnavailable(TierfsError):
    """The catalog could not be reached within its deadline."""

    errno = errno.EIO


class CatalogFailover(CatalogUnavailable):
    """The catalog's primary is gone but other members of its replica set
    answer: an election is under way (10-11 s measured), so the call is worth
    repeating until the catalog's failover_wait_s (FileSystem.cat does)."""


class TierUnavailable(TierfsError):
    """A tier could not be reached within its deadline (a temporary failure)."""

    errno = errno.EIO


class UnknownTier(TierfsError):
    """A file or job names a tier this mount's configuration does not define."""

    errno = errno.EIO


class ObjectMissing(TierfsError):
    """A tier has no object under the requested key."""

    errno = errno.EIO


class ChecksumMismatch(TierfsError):
    """Bytes read back from a tier do not match the recorded sha256."""

    errno = errno.EIO


class ConfigError(TierfsError):
    """The configuration is invalid; the message names the key."""

    errno = errno.EINVAL


class VersionConflict(TierfsError):
    """A compare-and-swap on a file's content version lost a race."""

    errno = errno.EAGAIN


class Fenced(TierfsError):
    """A job's bookkeeping or commit came from a session that no longer runs
    it (fencing by session): the session was reaped while this mount could
    not reach the catalog, and the job went back to the queue, maybe to
    another mount. Nothing changed; the caller abandons the job."""

    errno = errno.EAGAIN


class Pending(TierfsError):
    """An archive tier accepted a request that completes later (an operator
    must act, a slow recall is running): keep the job queued and retry.
    `retry_s`: when the tier knows the answer will be there (a batch due in
    3 s), the job comes back then instead of after the runner's backoff."""

    errno = errno.EAGAIN

    def __init__(self, message: str = "", *, retry_s: float | None = None):
        super().__init__(message)
        self.retry_s = retry_s


class CopytoolFailed(TierfsError):
    """A copytool reported that one object of its batch failed: the job
    counts an attempt and tries again in a later batch (job_max_attempts)."""

    errno = errno.EIO
