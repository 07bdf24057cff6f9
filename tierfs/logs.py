"""The daemon's log: who may read it, what one line may contain, and
reopening it after logrotate.

- The log names every user's files, owners and errors, so a log file is
  created 0600 in a 0700 directory (an older, more open one is tightened
  when the daemon opens it).
- One record is one line: control characters of the message (a newline or
  a terminal escape sequence in a file name, an error text quoting one) are
  written as backslash escapes (`escape`), and a traceback's lines are
  indented under their record, so no file name can start a line of its own
  or drive the terminal of whoever reads the log.
- SIGHUP reopens the file at its original path (`reopen`): logrotate
  renames the log, sends `kill -HUP` (systemd/logrotate), and the daemon
  goes on in a new file.
- A daemon started in the background keeps its records in memory until its
  mount is live (`setup_logging(defer=True)`, then `start_log_file`): a
  refused mount says why on the terminal and leaves no log file (nor its
  directory) behind.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from .display import printable
from .private import own_dir

#: file mode of a log file (the directory is 0700)
LOG_FILE_MODE = 0o600

#: log lines escape names as the CLI shows them (one rule: tierfs/display.py)
escape = printable


class OneLineFormatter(logging.Formatter):
    """A Formatter whose every record starts one line of its own (module doc)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape(line) for line in text.splitlines())


def open_log(path: str) -> int:
    """An fd appending to the log file `path`, created 0600 (an existing
    file more open than that, from an older tierfs, is tightened)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE)
    if os.fstat(fd).st_mode & 0o777 & ~LOG_FILE_MODE:
        os.fchmod(fd, LOG_FILE_MODE)
    return fd


def log_path(state_dir: str, key: str) -> str:
    """The log file of the mount whose runtime key is `key` (nothing is created:
    `start_log_file` makes its directory when the daemon first writes)."""
    return os.path.join(state_dir, "logs", key + ".log")


class LogFile(logging.FileHandler):
    """A FileHandler on a 0600 file that SIGHUP can reopen (`reopen`)."""

    def __init__(self, path: str):
        super().__init__(path, mode="a", encoding="utf-8")

    def _open(self):
        return os.fdopen(open_log(self.baseFilename), "a", encoding=self.encoding, errors=self.errors)

    def reopen(self) -> None:
        """Go on writing at the original path (logrotate renamed the old
        file). stdout and stderr follow when they wrote to the old file (a
        daemon started in the background), so stray output does too."""
        self.acquire()
        try:
            old = os.fstat(self.stream.fileno())
            new = self._open()
            for fd in (sys.stdout.fileno(), sys.stderr.fileno()):
                try:
                    st = os.fstat(fd)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == (old.st_dev, old.st_ino):
                    os.dup2(new.fileno(), fd)
            self.stream.close()
            self.stream = new
        finally:
            self.release()


def _formatter() -> logging.Formatter:
    """Under systemd without timestamps of our own: journald adds them."""
    under_systemd = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    return OneLineFormatter("%(levelname)s %(name)s: %(message)s" if under_systemd else
                            "%(asctime)s %(levelname)s %(name)s: %(message)s")


class _Held(logging.handlers.MemoryHandler):
    """Records kept until the log file exists (module doc); a daemon logs a few
    dozen lines before its mount is live, so no bound is needed."""

    def __init__(self):
        super().__init__(capacity=1 << 30, flushLevel=logging.CRITICAL + 1)


def setup_logging(level: str, log_file: str | None = None, defer: bool = False) -> None:
    """Root logging of the daemon: to `log_file`, else to stderr; `defer`:
    held in memory until `start_log_file`."""
    if defer:
        handler = _Held()
    else:
        handler = LogFile(log_file) if log_file else logging.StreamHandler(sys.stderr)
        handler.setFormatter(_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    logging.getLogger("pyfuse3").setLevel(logging.WARNING)
    for noisy in ("pymongo", "botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # they log every request at debug


def set_level(level: str) -> None:
    """The config's log_level (at start and on reload)."""
    logging.getLogger().setLevel(level.upper())


def start_log_file(path: str) -> None:
    """Log to `path` from now on (its directory made private), with the records
    held since `setup_logging(defer=True)` first; stdout and stderr go there
    too (a background daemon must not keep the terminal of `tierfs mount`)."""
    own_dir(os.path.dirname(path))
    handler = LogFile(path)
    handler.setFormatter(_formatter())
    root = logging.getLogger()
    for held in [h for h in root.handlers if isinstance(h, _Held)]:
        held.setTarget(handler)
        held.flush()
        held.close()
    root.handlers[:] = [handler]
    sys.stdout.flush()
    sys.stderr.flush()
    for fd in (sys.stdout.fileno(), sys.stderr.fileno()):
        os.dup2(handler.stream.fileno(), fd)


def reopen() -> bool:
    """Reopen the log file (SIGHUP); False when logging goes to stderr."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, LogFile)]
    for h in files:
        h.reopen()
    return bool(files)
