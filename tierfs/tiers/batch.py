"""Batches of a `command` tier: requests gathered on disk, run by one copytool call.

A tape library mounts and seeks once per copytool run; one run per file makes
`tierfs restore -r` of 200 files 200 mounts. With `restore_batch_command`
(`archive_batch_command`), a request is a small file under
staging/batch-restore/requests/ (batch-archive/); a batch runs when the
oldest request is `batch_wait` old or `batch_max_files` / `batch_max_bytes`
are reached (plan()), with the list of its objects sorted by key (the
copytool's order on the medium), and the copytool reports each object's
outcome (outcome()). This module holds that bookkeeping;
tierfs/tiers/command.py runs the commands and moves the bytes.

List file: one line per object, tab-separated: KEY, PATH (where the bytes go
on the staging area), SIZE, SHA256. Results file (optional, written by the
copytool): one line per object, `KEY<TAB>done|pending|failed[<TAB>message]`;
objects it does not list follow the exit status (0 done, 75 pending, other
failed with the tail of stderr).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Iterator

from .. import private

log = logging.getLogger(__name__)

DONE, PENDING, FAILED, QUEUED, RUNNING = "done", "pending", "failed", "queued", "running"
OUTCOMES = (DONE, PENDING, FAILED)
EX_TEMPFAIL = 75
#: this process, in the archive requests its put() calls wait for: after a crash, the requests of
#: the dead process are stale (their jobs copy again under new keys) and no batch takes them
OWNER = uuid.uuid4().hex
#: longest wait before a request the copytool answered pending is tried again (the runner's
#: job_retry_max_delay default): a library that needs an operator is asked every 10 min at most
PENDING_MAX_S = 600.0


@dataclass(frozen=True)
class Request:
    """One object waiting for a batch."""
    key: str
    size: int | None          # from the manifest (None: tierfs has no record of the object)
    sha256: str | None
    since: float              # wall-clock time of the request (batch_wait counts from the oldest)
    state: str = QUEUED       # queued, running (archive), pending (the copytool said so), failed, done (archive)
    message: str = ""
    tries: int = 0            # batches that answered pending (the backoff exponent)
    not_before: float = 0.0   # a pending request waits until then
    owner: str = ""           # archive: the process whose put() waits for it (OWNER); another's is stale


@dataclass(frozen=True)
class Plan:
    """The next batch: what it holds and when it is due (wall-clock time)."""
    requests: tuple[Request, ...]
    due_at: float


def plan(requests: Iterable[Request], now: float, wait: float, max_files: int, max_bytes: int | None) -> Plan:
    """The next batch: eligible requests (queued, or pending past their
    not_before; not failed or done), oldest first, up to max_files and max_bytes (a first object
    larger than max_bytes goes alone). Due when it is full or its oldest
    request is `wait` old; due_at is infinite when nothing is eligible."""
    ready = sorted((r for r in requests if r.state in (QUEUED, PENDING) and r.not_before <= now),
                   key=lambda r: (r.since, r.key))
    chosen: list[Request] = []
    total, full = 0, False
    for r in ready:
        size = r.size or 0
        if len(chosen) >= max_files or (max_bytes is not None and chosen and total + size > max_bytes):
            full = True
            break
        chosen.append(r)
        total += size
    full = full or len(chosen) >= max_files or (max_bytes is not None and total >= max_bytes)
    if not chosen:
        return Plan((), float("inf"))
    return Plan(tuple(chosen), now if full else chosen[0].since + wait)


@dataclass
class Ran:
    """One run of a batch command: each object's (outcome, message), for the tier to act on."""
    which: str                               # "tier NAME: restore_batch_command"
    outcomes: dict[str, tuple[str, str]]
    returncode: int | None                   # None: timed out
    stderr: str                              # its tail
    reason: str                              # what an object the results do not name is told
    seconds: float

    def log(self) -> None:
        """One line per batch: warning unless every object is done."""
        n = {o: sum(s == o for s, _ in self.outcomes.values()) for o in OUTCOMES}
        (log.info if n[DONE] == len(self.outcomes) else log.warning)(
            "%s: batch of %d objects in %.1fs: %d done, %d pending, %d failed (exit %s)%s", self.which,
            len(self.outcomes), self.seconds, n[DONE], n[PENDING], n[FAILED],
            "timeout" if self.returncode is None else self.returncode,
            "" if self.returncode == 0 else f": {self.stderr}")


def pending_delay(wait: float, tries: int) -> float:
    """Backoff of a request the copytool answered pending `tries` times: batch_wait (at least 1 s), doubling."""
    return min(max(wait, 1.0) * 2 ** min(tries - 1, 30), PENDING_MAX_S)


def list_lines(entries: Iterable[tuple[str, str, int | None, str | None]]) -> str:
    """The list file: KEY, PATH, SIZE, SHA256 tab-separated, sorted by key
    (unknown size or sha256: an empty column)."""
    return "".join(f"{k}\t{p}\t{'' if s is None else s}\t{h or ''}\n" for k, p, s, h in sorted(entries))


def read_results(path: str, keys: Iterable[str], who: str) -> dict[str, tuple[str, str]]:
    """The copytool's per-object results (key -> (outcome, message)). Lines
    naming another key or another outcome are ignored with a log line (a
    copytool's bug must not touch objects outside its batch)."""
    wanted = set(keys)
    found: dict[str, tuple[str, str]] = {}
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return found
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) < 2 or parts[0] not in wanted or parts[1].strip() not in OUTCOMES:
            log.warning("%s: results line %d ignored (want KEY<TAB>done|pending|failed[<TAB>message] for a key "
                        "of the batch): %r", who, n, line[:200])
            continue
        found[parts[0]] = (parts[1].strip(), parts[2].strip() if len(parts) > 2 else "")
    return found


def outcome(key: str, results: dict[str, tuple[str, str]], returncode: int | None, why: str) -> tuple[str, str]:
    """One object's outcome: the copytool's results line, else the exit
    status (None: the run timed out, so pending). `why` is the run's reason
    (stderr's tail or the timeout) for an object the results do not name."""
    if key in results:
        return results[key]
    if returncode == 0:
        return DONE, ""
    if returncode is None or returncode == EX_TEMPFAIL:
        return PENDING, why
    return FAILED, why


class Requests:
    """The requests of one kind of batch on disk: directory/requests/KEY (JSON)
    and directory/lock (one batch at a time; flock, so a crash frees it)."""

    def __init__(self, directory: str):
        self.dir = directory
        self.requests = os.path.join(directory, "requests")
        self.lock_path = os.path.join(directory, "lock")

    def check(self) -> None:
        private.makedirs(self.requests)

    def _path(self, key: str) -> str:
        return os.path.join(self.requests, key)

    def get(self, key: str) -> Request | None:
        try:
            with open(self._path(key)) as f:
                return Request(key=key, **json.load(f))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:   # a torn or foreign file: ask again
            log.warning("batch request %s unreadable (%s); requesting it again", self._path(key), e)
            return None

    def put(self, r: Request) -> Request:
        """Write a request atomically (a reader sees the old or the new one)."""
        tmp = self._path(r.key) + ".tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        with os.fdopen(private.create(tmp), "w") as f:
            d = asdict(r)
            del d["key"]
            json.dump(d, f)
        os.replace(tmp, self._path(r.key))
        return r

    def update(self, r: Request, **changes) -> Request:
        return self.put(replace(r, **changes))

    def remove(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def all(self) -> list[Request]:
        out = []
        for name in sorted(os.listdir(self.requests)):
            if not name.endswith(".tmp"):
                r = self.get(name)
                if r is not None:
                    out.append(r)
        return out

    @contextlib.contextmanager
    def lock(self) -> Iterator[bool]:
        """Take the batch lock without waiting: yields False when another batch runs."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, private.FILE_MODE)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            os.utime(fd)   # the batch's start, for running_for()
            yield True
        finally:
            os.close(fd)

    def running_for(self, now: float) -> float:
        """How long the running batch has run (the lock file's mtime)."""
        try:
            return max(0.0, now - os.stat(self.lock_path).st_mtime)
        except FileNotFoundError:
            return 0.0
