"""The `command` archive tier: external copytool commands (tape, HSM, anything).

Sites archive to media tierfs knows nothing about by configuring commands,
run with /bin/sh -c after substituting placeholders (shell-quoted):
  {key}    the object key (32 hex digits)
  {path}   archive: the local file holding the bytes to store;
           restore: the local file the command must write the bytes to
  {size}   size in bytes (archive only)
  {sha256} sha256 of the bytes (archive only; a copytool may verify with it)
Exit status: 0 = done; 75 (EX_TEMPFAIL) = pending: an operator or a slow
recall must act, keep the request queued and retry later; anything else =
failed (its stderr is logged and kept as the job's last error).

`archive_command` and `restore_command` (or their batch forms) are
required; `delete_command` is optional (without it, deleting an archive copy
only forgets it).

Batches (tierfs/tiers/batch.py): with `restore_batch_command` /
`archive_batch_command`, one run handles many objects, so a tape mounts and
seeks once per batch, not once per file. The command gets
  {list}     a file listing the objects, one a line, sorted by key:
             KEY<TAB>PATH<TAB>SIZE<TAB>SHA256 (PATH: where to write the
             bytes (restore) or where they are (archive))
  {results}  a file the command may write: KEY<TAB>done|pending|failed[<TAB>why]
             per object; an object it does not name follows the exit status.
A restore request waits on disk (staging/batch-restore, a restart keeps it)
and its job is told when to ask again (errors.Pending.retry_s); an archive's
put() waits in its thread for the batch (put() must be durable when it
returns) and the runner lets `batch_max_files` of them wait (batch_slots).
A batch runs when its oldest request is `batch_wait` old or it holds
`batch_max_files` objects or `batch_max_bytes`; one at a time per tier and
kind (a lock file). A restored object is checked against the manifest (size,
sha256) before it is used. Each run has
a `timeout` (a duration such as "1h" or 90, default 3600 s). Staging files live in `staging`
(default: state_dir/command-<tier name>). A small manifest there records the
size and sha256 of each stored key (for fsck and verify). The staging
directories are 0700 and the files tierfs writes there 0600 (a restored file
the copytool wrote is made 0600 before it is used); tierfs/private.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shlex
import subprocess
import threading
import time
from typing import BinaryIO, Iterator

from .. import errors, private
from ..settings import CommandTable
from . import batch
from .base import HashingReader, Tier, copy_stream, sha256_stream

log = logging.getLogger(__name__)

EX_TEMPFAIL = 75


class CommandTier(Tier):
    kind = "command"
    archive = True
    settings: CommandTable

    def __init__(self, name: str, settings: CommandTable | None = None, /, **options):
        super().__init__(name, settings, **options)
        self.staging = os.path.abspath(os.path.expanduser(self.settings.staging or f"/tmp/tierfs-command-{name}"))
        self.timeout = self.settings.timeout
        self.manifest = os.path.join(self.staging, "manifest")
        self.restored = os.path.join(self.staging, "restored")
        #: restore requests waiting for a batch (restore_batch_command), else None: one run per object
        self.restore_batch = (batch.Requests(os.path.join(self.staging, "batch-restore"))
                              if self.settings.restore_batch_command else None)
        #: archive requests whose put() waits for a batch (archive_batch_command), else None
        self.archive_batch = (batch.Requests(os.path.join(self.staging, "batch-archive"))
                              if self.settings.archive_batch_command else None)
        self.batch_slots = self.settings.batch_max_files if self.archive_batch is not None else 0
        self._stopping = threading.Event()

    def check(self) -> None:
        for d in (self.staging, self.manifest, self.restored, os.path.join(self.staging, "out")):
            private.makedirs(d)
        for q in (self.restore_batch, self.archive_batch):
            if q is not None:
                q.check()

    @staticmethod
    def _create(path: str) -> BinaryIO:
        """A new 0600 file at `path`, replacing one a crashed run left there."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return os.fdopen(private.create(path), "wb")

    def probe(self) -> None:
        """Only the copytool knows whether its medium is there (it answers pending)."""

    def _exec(self, which: str, **values) -> subprocess.CompletedProcess:
        """Run a command with its placeholders shell-quoted; TierUnavailable when it times out."""
        template = getattr(self.settings, which)
        # Only the documented placeholders are replaced; other braces (shell { ...; }) stay.
        cmd = re.sub(r"\{(key|path|size|sha256|list|results)\}",
                     lambda m: shlex.quote(str(values[m.group(1)])) if m.group(1) in values else m.group(0),
                     template)
        try:
            return subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise errors.TierUnavailable(f"tier {self.name}: {which} timed out after {self.timeout:.0f}s") from None

    def _run(self, which: str, **values) -> int:
        r = self._exec(which, **values)
        if r.returncode == 0:
            return 0
        if r.returncode == EX_TEMPFAIL:
            raise errors.Pending(f"tier {self.name}: {which} for {values.get('key')} is pending "
                                 f"(exit 75): {_tail(r.stderr)}")
        raise errors.TierfsError(f"tier {self.name}: {which} exited {r.returncode}: {_tail(r.stderr)}")

    def put(self, key: str, src: BinaryIO) -> int:
        out = os.path.join(self.staging, "out", key)
        h = HashingReader(src)
        with self._create(out) as f:
            n = copy_stream(h, f.write)
        try:
            if self.archive_batch is not None:
                self._archive_batched(key, n, h.hexdigest())   # the batch recorded it in the manifest
                return n
            self._run("archive_command", key=key, path=out, size=n, sha256=h.hexdigest())
        finally:
            os.unlink(out)
        self._record(key, n, h.hexdigest())
        return n

    def _record(self, key: str, size: int, sha256: str) -> None:
        """The manifest entry of a stored object (verify, fsck, delete_command)."""
        with self._create(os.path.join(self.manifest, key)) as f:
            f.write(json.dumps({"size": size, "sha256": sha256}).encode())

    def _meta(self, key: str) -> dict | None:
        try:
            with open(os.path.join(self.manifest, key)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def verify(self, key: str, sha256: str, size: int) -> bool:
        """Trusts the copytool's exit 0 and the manifest (no tape read-back)."""
        m = self._meta(key)
        return m is not None and m["sha256"] == sha256 and m["size"] == size

    def prepare_restore(self, key: str) -> bool:
        path = os.path.join(self.restored, key)
        if os.path.exists(path):
            return True
        if self.restore_batch is not None:
            return self._prepare_batched(key, path)
        self.restores += 1
        tmp = path + ".part"
        self._run("restore_command", key=key, path=tmp)  # exit 75 raises Pending with the command's reason
        if not os.path.exists(tmp):
            raise errors.TierfsError(f"tier {self.name}: restore_command exited 0 but wrote nothing to {tmp}")
        private.tighten(tmp)  # the copytool's umask made it; restored/ (0700) kept others out meanwhile
        os.rename(tmp, path)
        return True

    # ---- restore batches (tierfs/tiers/batch.py) ------------------------------------------
    def _prepare_batched(self, key: str, path: str) -> bool:
        """Join the next restore batch; run it when it is due (in this job's
        thread; one at a time per tier). Pending until a batch restored `key`,
        with the time to ask again (errors.Pending.retry_s)."""
        q, s = self.restore_batch, self.settings
        ran = False
        while True:
            req = q.get(key)
            if req is None:
                meta = self._meta(key) or {}
                req = q.put(batch.Request(key, meta.get("size"), meta.get("sha256"), time.time()))
                if os.path.exists(path):   # a batch restored it since our look: no second recall
                    q.remove(key)
                    return True
                self.restores += 1
            if req.state == batch.FAILED:
                q.remove(key)   # the next attempt of the job asks again
                raise errors.CopytoolFailed(req.message)
            now = time.time()
            if req.not_before > now:   # (`tierfs queue` shows when the job asks again)
                raise errors.Pending(req.message, retry_s=req.not_before - now)
            nxt = batch.plan(q.all(), now, s.batch_wait, s.batch_max_files, s.batch_max_bytes)
            if ran or nxt.due_at > now:
                wait = max(nxt.due_at - now, 0.0)
                raise errors.Pending(f"tier {self.name}: queued for the next restore batch "
                                     f"({len(nxt.requests)} of {s.batch_max_files} objects)", retry_s=wait)
            with q.lock() as mine:
                if not mine:
                    # Ask again after a quarter of the time it has run (1 s to 30 s): a
                    # 10-minute tape batch's jobs ask about 40 times each, each answer a stat.
                    took = q.running_for(now)
                    raise errors.Pending(f"tier {self.name}: a restore batch is running ({took:.0f}s so far)",
                                         retry_s=min(max(took / 4, 1.0), 30.0))
                # Under the lock: the batch that just ended may have restored these.
                nxt = batch.plan(q.all(), time.time(), s.batch_wait, s.batch_max_files, s.batch_max_bytes)
                if nxt.requests:
                    self._run_restore_batch(nxt.requests)
            ran = True
            if os.path.exists(path):
                return True

    def _run_restore_batch(self, requests: tuple[batch.Request, ...]) -> None:
        """One restore_batch_command run; each object restored becomes restored/KEY
        (after its size and sha256 match the manifest), the others are marked
        pending or failed with their reason."""
        q = self.restore_batch
        parts = {r.key: os.path.join(self.restored, r.key + ".part") for r in requests}
        for p in parts.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)   # left by a crashed run: the copytool writes them afresh
        ran = self._run_batch("restore_batch_command", q, requests, parts)
        for r in requests:
            state, msg = ran.outcomes[r.key]
            if state == batch.DONE:
                bad = self._check_restored(parts[r.key], r)
                if bad is None:
                    private.tighten(parts[r.key])
                    os.rename(parts[r.key], os.path.join(self.restored, r.key))
                    q.remove(r.key)
                    continue
                state, msg = batch.FAILED, f"{ran.which}: {bad}"
                ran.outcomes[r.key] = (state, msg)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(parts[r.key])
            if state == batch.PENDING:
                delay = batch.pending_delay(self.settings.batch_wait, r.tries + 1)
                q.update(r, state=state, message=msg, tries=r.tries + 1, not_before=time.time() + delay)
            else:
                q.update(r, state=state, message=msg)
        if ran.returncode in (None, EX_TEMPFAIL):
            self._hold_restores(ran, max(r.tries for r in requests) + 1)
        ran.log()

    def _hold_restores(self, ran: batch.Ran, tries: int) -> None:
        """The whole run was pending (exit 75, a timeout): the medium or the
        library is away for every request, so all of them wait until the same
        time, with the run's reason, and then go together (not in groups as
        their own backoffs end: 250 requests made 4 tape mounts, not 3)."""
        q = self.restore_batch
        until = time.time() + batch.pending_delay(self.settings.batch_wait, tries)
        for r in q.all():
            if r.state in (batch.QUEUED, batch.PENDING) and r.not_before < until:
                q.update(r, state=batch.PENDING, message=ran.reason, tries=max(r.tries, tries), not_before=until)

    def _run_batch(self, which: str, q: batch.Requests, requests: tuple[batch.Request, ...],
                   paths: dict[str, str]) -> batch.Ran:
        """Run `which` once over `requests` (each object's bytes at paths[key]),
        listed sorted by key; each object's outcome and the reason."""
        listing, results = os.path.join(q.dir, "list"), os.path.join(q.dir, "results")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(results)   # a crashed run's: only this run's results count
        with self._create(listing) as f:
            f.write(batch.list_lines((r.key, paths[r.key], r.size, r.sha256) for r in requests).encode())
        t0 = time.monotonic()
        try:
            run = self._exec(which, list=listing, results=results)
            rc, why = run.returncode, _tail(run.stderr)
        except errors.TierUnavailable as e:   # timed out: the objects it did not finish stay queued
            rc, why = None, str(e)
        finally:
            os.unlink(listing)
        label = f"tier {self.name}: {which}"
        reason = (why if rc is None else f"{label} is pending (exit 75): {why}" if rc == EX_TEMPFAIL
                  else f"{label} exited {rc}: {why}")
        said = batch.read_results(results, paths, label)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(results)   # the copytool made it with its umask: fsck would call it too open
        outcomes = {}
        for r in requests:
            state, msg = batch.outcome(r.key, said, rc, why)
            outcomes[r.key] = (state, f"{label} reports {r.key} {state}: {msg}" if r.key in said else reason)
        return batch.Ran(label, outcomes, rc, why, reason, time.monotonic() - t0)

    # ---- archive batches -----------------------------------------------------------------
    def _archive_batched(self, key: str, size: int, sha256: str) -> None:
        """Join the next archive batch and wait in this thread until a batch
        has stored out/KEY (put() must be durable when it returns); the put()
        that finds the batch due runs it. The runner lets batch_max_files
        archive jobs wait here at once (batch_slots), so a batch can fill."""
        q, s = self.archive_batch, self.settings
        q.put(batch.Request(key, size, sha256, time.time(), owner=batch.OWNER))
        # At most batch_max_files puts wait, so at most the running batch and ours come first.
        limit = s.batch_wait + 2 * self.timeout + 60
        give_up, replan = time.monotonic() + limit, 0.0
        try:
            while True:
                r = q.get(key)
                if r is None:
                    raise errors.TierfsError(f"tier {self.name}: the archive request of {key} vanished")
                if r.state == batch.DONE:
                    return
                if r.state == batch.FAILED:
                    raise errors.CopytoolFailed(r.message)
                if r.state == batch.PENDING:   # the job waits (and copies again later), as with archive_command
                    raise errors.Pending(r.message)
                if self._stopping.is_set() and r.state == batch.QUEUED:   # (a running batch's: wait for it)
                    raise errors.TierUnavailable(f"tier {self.name}: unmounting before the archive batch ran")
                if time.monotonic() > give_up:
                    raise errors.TierUnavailable(f"tier {self.name}: no archive batch took {key} in {limit:.0f}s")
                now = time.time()
                # Between looks at the plan (all requests) only our own request is read: 100 waiters
                # reading 100 requests every second during a 10-minute tape batch is 10,000 reads a second.
                if now >= replan:
                    nxt = self._archive_plan(now)
                    replan = nxt.due_at
                    if nxt.due_at <= now:
                        with q.lock() as mine:
                            if mine:
                                self._drop_stale_archives()
                                nxt = self._archive_plan(time.time())
                                if nxt.requests:
                                    self._run_archive_batch(nxt.requests)
                                continue
                            replan = now + min(max(q.running_for(now) / 4, 1.0), 30.0)   # as restores ask again
                self._stopping.wait(min(max(replan - now, 0.05), 1.0))
        finally:
            q.remove(key)

    def stop_waiting(self) -> None:
        """Unmount: put()s waiting for a batch that has not started leave
        (their jobs copy again at the next mount) rather than hold the
        unmount for the rest of batch_wait; a running batch is waited for."""
        self._stopping.set()

    def _archive_plan(self, now: float) -> batch.Plan:
        s = self.settings
        mine = [r for r in self.archive_batch.all() if r.owner == batch.OWNER]
        return batch.plan(mine, now, s.batch_wait, s.batch_max_files, s.batch_max_bytes)

    def _drop_stale_archives(self) -> None:
        """Requests of a process that died waiting: their jobs copy again under
        new keys (and delete these keys first), so their staged bytes go."""
        for r in self.archive_batch.all():
            if r.owner != batch.OWNER:
                log.warning("tier %s: dropping archive request %s of a previous run", self.name, r.key)
                self.archive_batch.remove(r.key)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.staging, "out", r.key))

    def _run_archive_batch(self, requests: tuple[batch.Request, ...]) -> None:
        """One archive_batch_command run over the staged out/KEY files; each
        request gets its outcome, which its waiting put() acts on."""
        q = self.archive_batch
        requests = tuple(q.update(r, state=batch.RUNNING) for r in requests)   # their put()s wait for it
        ran = self._run_batch("archive_batch_command", q, requests,
                              {r.key: os.path.join(self.staging, "out", r.key) for r in requests})
        for r in requests:
            state, msg = ran.outcomes[r.key]
            if state == batch.DONE:   # recorded now, not by the waiting put(): a crash before it returns
                self._record(r.key, r.size, r.sha256)   # leaves an entry, so delete() removes the copy
            # Answered: no later batch takes it (plan() skips done and failed, and pending until then).
            q.update(r, state=state, message=msg, not_before=time.time() + batch.PENDING_MAX_S)
        ran.log()

    @staticmethod
    def _check_restored(path: str, r: batch.Request) -> str | None:
        """Why the bytes a copytool restored to `path` are not object r (None: they are)."""
        try:
            with open(path, "rb") as f:
                sha, n = sha256_stream(f)
        except FileNotFoundError:
            return f"reported {r.key} done but wrote nothing to {path}"
        if r.size is not None and n != r.size:
            return f"restored {n} bytes of {r.key}, the manifest says {r.size}"
        if r.sha256 and sha != r.sha256:
            return f"restored {r.key} with sha256 {sha[:12]}.., the manifest says {r.sha256[:12]}.."
        return None

    def open_reader(self, key: str) -> BinaryIO:
        self.reads += 1
        path = os.path.join(self.restored, key)
        if not os.path.exists(path) and not self.prepare_restore(key):
            raise errors.Pending(f"tier {self.name}: {key} is not restored yet")
        return _ConsumeOnClose(path)

    def read(self, key: str, offset: int, size: int) -> bytes:
        with self.open_reader(key) as r:
            r.seek(offset)
            return r.read(size)

    def size(self, key: str) -> int | None:
        m = self._meta(key)
        return None if m is None else m["size"]

    def delete(self, key: str) -> None:
        if self.settings.delete_command and self._meta(key) is not None:
            self._run("delete_command", key=key)
        for p in (os.path.join(self.manifest, key), os.path.join(self.restored, key)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        # A deleted object's batch requests go: a restore request no batch should recall, or the
        # request and staged bytes of a put() that died waiting for its batch (a crash).
        for q in (self.restore_batch, self.archive_batch):
            if q is not None:
                q.remove(key)
        if self.archive_batch is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.staging, "out", key))

    def keys(self) -> Iterator[str]:
        yield from sorted(os.listdir(self.manifest)) if os.path.isdir(self.manifest) else ()

    def private_entries(self) -> Iterator[tuple[str, int]]:
        return private.walk_modes(self.staging)


def _tail(stderr: str) -> str:
    """What a job keeps of a command's stderr: its last 300 characters."""
    return stderr.strip()[-300:]


class _ConsumeOnClose(io.FileIO):
    """A restored staging file, removed once it has been read."""

    def __init__(self, path: str):
        super().__init__(path, "r")
        self._path = path

    def close(self) -> None:
        if not self.closed:
            super().close()
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
