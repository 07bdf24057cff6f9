"""FUSE passthrough: the kernel reads and writes an open file's local bytes itself.

With passthrough (Linux 6.9+, libfuse 3.17+, a root daemon) an open names a
*backing file*: the object file of a disk tier, an in-place original, or the
staged copy of a remote-tier file. The kernel then serves read, write,
splice and mmap of that open file from it and never sends them here; open,
flush, fsync, release, getattr and every name operation still come. Sequential
reads went from the pyfuse3 floor (0.55-0.65x native) to native speed when
measured (bench/README.md, issue 17).

`Passthrough` answers two questions for the rest of the daemon: may this mount
use it at all (`active`, and `why` not), and the backing id of an fd
(`register`/`unregister`, the /dev/fuse ioctls through our pyfuse3 patch
dev/pyfuse3/0002-passthrough.patch). Which opens use it, and what that means
for sizes, versions and moves, is openfiles.py's and fs.py's business.

The kernel says yes in two steps: INIT (it offers FUSE_PASSTHROUGH and we
ask for it), then the first BACKING_OPEN ioctl (EPERM without CAP_SYS_ADMIN in
the initial user namespace). `probe` makes that first ioctl on a scratch file
right after INIT, so `tierfs status` and the log tell the truth from the start.
An EPERM at any later registration turns passthrough off for the mount (said
once in the log); any other error (ELOOP: the object is on a too deeply stacked
file system) only leaves that one file on the daemon's read/write path.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile

log = logging.getLogger(__name__)

EPERM_WHY = ("the kernel refused to register a backing file (EPERM: passthrough was not negotiated, or the daemon "
             "lacks CAP_SYS_ADMIN)")


class NoPassthrough:
    """The daemon's read/write path for every file (no kernel: the in-process engine; or not available)."""

    active = False

    def __init__(self, why: str = "not mounted"):
        self.why = why
        self.registered = 0   # backing ids handed out over the mount's life (stats)

    @property
    def enable(self) -> bool:
        """Ask the kernel for passthrough at INIT (fuse_ops.Operations.enable_passthrough)."""
        return False

    def probe(self, scratch_dir: str) -> None:
        pass

    def register(self, fd: int) -> int | None:
        return None

    def unregister(self, backing_id: int) -> None:
        pass

    def describe(self) -> dict:
        return {"active": self.active, "why": self.why, "backing_files": self.registered}


class Passthrough(NoPassthrough):
    """Backing ids on this mount's FUSE connection (pyfuse3.backing_open/close)."""

    def __init__(self, wanted: bool):
        self._pyfuse3 = None
        self._wanted = wanted
        self._told: set[int] = set()   # errnos of per-file refusals already logged
        why = self._unavailable(wanted)
        super().__init__(why or "FUSE INIT has not happened yet (not mounted)")
        self.asking = not why           # asked for at INIT; active once probe() saw the kernel agree

    def _unavailable(self, wanted: bool) -> str:
        """Why this daemon cannot ask for passthrough at all ("" when it can)."""
        if not wanted:
            return "passthrough = false in the configuration"
        try:
            import pyfuse3
        except ImportError:
            return "pyfuse3 is not installed"
        if not hasattr(pyfuse3, "passthrough_available") or not pyfuse3.passthrough_available():
            return ("pyfuse3 was built against a libfuse without passthrough (< 3.17): dev/install could not "
                    "build its own libfuse (see its output)")
        if os.geteuid() != 0:
            return "the daemon does not run as root (the kernel allows passthrough to CAP_SYS_ADMIN only)"
        self._pyfuse3 = pyfuse3
        return ""

    @property
    def enable(self) -> bool:
        return self.asking

    def probe(self, scratch_dir: str) -> None:
        """After INIT: find out whether the kernel lets this daemon register
        backing files, with one BACKING_OPEN/CLOSE of a scratch file, and
        say once in the log whether the mount has passthrough."""
        if not self.asking:
            (log.warning if self._wanted else log.info)(
                "FUSE passthrough off for this mount: %s; file bytes pass through the daemon", self.why)
            return
        if not self._pyfuse3.passthrough_enabled():
            self._off("the kernel did not offer FUSE passthrough at INIT (it needs Linux 6.9+ built with "
                      "CONFIG_FUSE_PASSTHROUGH)")
            return
        try:
            with tempfile.TemporaryFile(dir=scratch_dir) as f:
                self.unregister(self._pyfuse3.backing_open(f.fileno()))
        except OSError as e:
            self._off(EPERM_WHY if e.errno == errno.EPERM else
                      f"registering a scratch backing file failed: {e.strerror}")
            return
        self.active, self.why = True, ""
        log.info("FUSE passthrough on: the kernel reads and writes files with local bytes itself")

    def register(self, fd: int) -> int | None:
        """A backing id for open file `fd`; None: serve this file through the daemon."""
        if not self.active:
            return None
        try:
            backing_id = self._pyfuse3.backing_open(fd)
        except OSError as e:
            self._refused(e)
            return None
        self.registered += 1
        return backing_id

    def unregister(self, backing_id: int) -> None:
        try:
            self._pyfuse3.backing_close(backing_id)
        except OSError as e:  # the connection is gone (unmount): the kernel dropped it already
            log.debug("closing backing id %d: %s", backing_id, e.strerror)

    def _refused(self, e: OSError) -> None:
        if e.errno == errno.EPERM:
            self._off(EPERM_WHY)
        elif e.errno not in self._told:   # once per cause, not once per file
            self._told.add(e.errno)
            log.info("FUSE passthrough not used for a file: %s (such files are read and written through the "
                     "daemon)", e.strerror)

    def _off(self, why: str) -> None:
        if self.asking:
            self.active = self.asking = False
            self.why = why
            log.warning("FUSE passthrough off for this mount: %s; file bytes pass through the daemon", why)
