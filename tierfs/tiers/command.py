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

`archive_command` and `restore_command` are required; `delete_command` is
optional (without it, deleting an archive copy only forgets it). Each run has
a `timeout` (a duration such as "1h" or 90, default 3600 s). Staging files live in `staging`
(default: state_dir/command-<tier name>). A small manifest there records the
size and sha256 of each stored key (for fsck and verify). The staging
directories are 0700 and the files tierfs writes there 0600 (a restored file
the copytool wrote is made 0600 before it is used); tierfs/private.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shlex
import subprocess
from typing import BinaryIO, Iterator

from .. import errors, private
from ..settings import CommandTable
from .base import HashingReader, Tier, copy_stream

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

    def check(self) -> None:
        for d in (self.staging, self.manifest, self.restored, os.path.join(self.staging, "out")):
            private.makedirs(d)

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

    def _run(self, which: str, **values) -> int:
        template = getattr(self.settings, which)
        # Only the documented placeholders are replaced; other braces (shell { ...; }) stay.
        cmd = re.sub(r"\{(key|path|size|sha256)\}",
                     lambda m: shlex.quote(str(values[m.group(1)])) if m.group(1) in values else m.group(0),
                     template)
        try:
            r = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise errors.TierUnavailable(f"tier {self.name}: {which} timed out after {self.timeout:.0f}s") from None
        if r.returncode == 0:
            return 0
        if r.returncode == EX_TEMPFAIL:
            raise errors.Pending(f"tier {self.name}: {which} for {values.get('key')} is pending "
                                 f"(exit 75): {r.stderr.strip()[-300:]}")
        raise errors.TierfsError(f"tier {self.name}: {which} exited {r.returncode}: {r.stderr.strip()[-300:]}")

    def put(self, key: str, src: BinaryIO) -> int:
        out = os.path.join(self.staging, "out", key)
        h = HashingReader(src)
        with self._create(out) as f:
            n = copy_stream(h, f.write)
        try:
            self._run("archive_command", key=key, path=out, size=n, sha256=h.hexdigest())
        finally:
            os.unlink(out)
        with self._create(os.path.join(self.manifest, key)) as f:
            f.write(json.dumps({"size": n, "sha256": h.hexdigest()}).encode())
        return n

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
        self.restores += 1
        tmp = path + ".part"
        self._run("restore_command", key=key, path=tmp)  # exit 75 raises Pending with the command's reason
        if not os.path.exists(tmp):
            raise errors.TierfsError(f"tier {self.name}: restore_command exited 0 but wrote nothing to {tmp}")
        private.tighten(tmp)  # the copytool's umask made it; restored/ (0700) kept others out meanwhile
        os.rename(tmp, path)
        return True

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

    def keys(self) -> Iterator[str]:
        yield from sorted(os.listdir(self.manifest)) if os.path.isdir(self.manifest) else ()

    def private_entries(self) -> Iterator[tuple[str, int]]:
        return private.walk_modes(self.staging)


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
