"""Sampling profiles of the tierfs daemon while a case runs (py-spy, which
attaches to a running process by pid; bench/run installs it with --profile).

`with Profiler(pid, path):` records raw collapsed stacks to `path`;
summarize(path) gives the hottest functions, by own time and inclusive."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess


def py_spy() -> str | None:
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv", "bin", "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


class Profiler:
    def __init__(self, pid: int, path: str, rate: int = 250):
        self.pid, self.path, self.rate = pid, path, rate
        self.proc = None

    def __enter__(self):
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (./bench/run --profile installs it)")
        self.proc = subprocess.Popen([exe, "record", "-p", str(self.pid), "-r", str(self.rate), "--format", "raw",
                                      "-o", self.path, "--gil"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _frame(f: str) -> str:
    """'fn (path/to/mod.py:123)' -> 'fn (mod.py)'."""
    name, _, where = f.partition(" (")
    where = where.rstrip(")")
    return f"{name} ({os.path.basename(where.split(':')[0])})" if where else name


#: frames every sample of the daemon shares
BOILERPLATE = ("main ", "mount ", "run ", "<module> ", "Daemon.run ", "_run_foreground ", "Group.invoke ", "Daemon._main ")


def _package(f: str) -> str | None:
    """The library a frame belongs to (sqlalchemy, trio, pyfuse3, ...), or
    the tierfs module; None for the interpreter's own start-up frames."""
    where = "/" + f.partition(" (")[2]
    if "/_pyfuse3.py" in where or "/pyfuse3" in where:
        return "pyfuse3"
    for pkg in ("sqlalchemy", "trio", "pymongo", "tierfs/catalog", "tierfs/tiers", "tierfs"):
        if f"/{pkg}/" in where:
            return pkg
    return None


def summarize(path: str, top: int = 15) -> dict:
    """{'samples': n, 'self': [(frame, share)], 'inclusive': [(frame, share)]}
    from py-spy's raw output (one 'frame;frame;... count' line per stack)."""
    own, incl, pkgs = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    if not os.path.exists(path):
        return {"samples": 0, "self": [], "inclusive": []}
    with open(path, errors="replace") as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            n = int(n)
            raw = [x for x in stack.split(";") if x and not x.startswith("process ") and not x.startswith("thread ")]
            if not raw:
                continue
            frames = [_frame(x) for x in raw]
            total += n
            own[frames[-1]] += n
            # inclusive time of tierfs functions only (the callers everything shares say nothing)
            for fr, r in set(zip(frames, raw)):
                if (_package(r) or "").startswith("tierfs") and not fr.startswith(BOILERPLATE):
                    incl[fr] += n
            leaf_pkg = next((p for p in map(_package, reversed(raw)) if p), "other")
            pkgs[leaf_pkg] += n
    share = (lambda c: [(k, round(v / total, 3)) for k, v in c.most_common(top)]) if total else (lambda c: [])
    return {"samples": total, "self": share(own), "inclusive": share(incl), "by_package": share(pkgs)}
