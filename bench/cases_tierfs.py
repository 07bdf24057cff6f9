"""The cases only tierfs has: access tracking overhead, archive/restore
through the real CLI (with one restore shared by concurrent openers), and
the read speed of a restored file against an online one (issue 17).
Counters come from the mount's user.tierfs.stats."""

from __future__ import annotations

import filecmp
import math
import os
import threading
import time

from .cases_fs import read_file, write_file
from .util import DaemonRequests, Timer, drop_caches

ATIME_FLUSH_S = 10.0   # the bench mount's atime_flush, so a run spans several flush intervals


def open_read_close(path: str, n: int) -> float:
    """Seconds for n rounds of open, read (4 KiB), close of one file."""
    with Timer() as t:
        for _ in range(n):
            fd = os.open(path, os.O_RDONLY)
            os.read(fd, 4096)
            os.close(fd)
    return t.s


def access_tracking(system, native_path: str | None, reads: int, runs: int, log) -> dict:
    """Case 4: `reads` open+read+close rounds of one cached 4 KiB file per run;
    time, and the catalog atime writes they caused per flush interval."""
    path = os.path.join(system.path, "hot.txt")
    with open(path, "wb") as f:
        f.write(b"x" * 4096)
    open_read_close(path, 10)
    out = {"reads_per_run": reads, "time": [], "native_time": [], "atime_flush_s": ATIME_FLUSH_S}
    s0 = system.stats()
    t0 = time.monotonic()
    for _ in range(runs):
        out["time"].append(open_read_close(path, reads))
    # The last flush of the run happens up to one interval (plus the daemon's
    # 5 s tick) later: wait for it so every write the run caused is counted.
    time.sleep(ATIME_FLUSH_S + 5.5)
    s1 = system.stats()
    elapsed = time.monotonic() - t0
    writes = s1["catalog"]["atime_writes"] - s0["catalog"]["atime_writes"]
    intervals = math.ceil(elapsed / ATIME_FLUSH_S)
    out.update(atime_writes=writes, elapsed_s=elapsed, flush_intervals=intervals,
               writes_per_file_per_interval=writes / intervals)
    if native_path:
        npath = os.path.join(native_path, "hot.txt")
        with open(npath, "wb") as f:
            f.write(b"x" * 4096)
        for _ in range(runs):
            out["native_time"].append(open_read_close(npath, reads))
        os.unlink(npath)
    log(f"  access tracking: {writes} atime writes over {intervals} flush intervals of {ATIME_FLUSH_S:.0f} s")
    return out


def _write_files(d: str, n: int, size: int) -> None:
    os.makedirs(d)
    block = os.urandom(size)
    for i in range(n):
        with open(os.path.join(d, f"a{i:05d}.bin"), "wb") as f:
            f.write(block[i % 97:] + block[:i % 97])  # distinct contents, same size


def archive_restore(system, files: int, size: int, runs: int, openers: int, log) -> dict:
    """Case 5: `tierfs archive -r --wait` and `tierfs restore -r --wait` of
    `files` files of `size` bytes; then `openers` concurrent readers of one
    archived file (one vault read expected)."""
    out = {"files": files, "file_bytes": size, "archive": [], "restore": [], "openers": openers,
           "open_wait": [], "vault_reads": []}
    for r in range(runs):
        d = os.path.join(system.path, f"arch{r}")
        _write_files(d, files, size)
        with Timer() as t:
            system.cli("archive", "-r", "--wait", "--timeout", "1800", d, timeout=1900)
        out["archive"].append(t.s)
        with Timer() as t:
            system.cli("restore", "-r", "--wait", "--timeout", "1800", d, timeout=1900)
        out["restore"].append(t.s)
        log(f"  archive/restore run {r + 1}: archive {out['archive'][-1]:.1f} s, restore {out['restore'][-1]:.1f} s")
    one = os.path.join(system.path, "shared.bin")
    with open(one, "wb") as f:
        f.write(os.urandom(8 << 20))
    for r in range(runs):
        system.cli("archive", "--wait", one)
        assert os.getxattr(one, "user.tierfs.state") == b"archived"
        before = system.stats()["tiers"]["vault"]["reads"]
        barrier = threading.Barrier(openers + 1)
        errors = []

        def reader():
            barrier.wait()
            try:
                with open(one, "rb") as f:
                    while f.read(1 << 20):
                        pass
            except OSError as e:
                errors.append(e)
        threads = [threading.Thread(target=reader) for _ in range(openers)]
        for t in threads:
            t.start()
        with Timer() as t:
            barrier.wait()
            for th in threads:
                th.join()
        if errors:
            raise RuntimeError(f"concurrent openers failed: {errors[:3]}")
        out["open_wait"].append(t.s)
        out["vault_reads"].append(system.stats()["tiers"]["vault"]["reads"] - before)
    log(f"  {openers} concurrent openers: vault reads per run {out['vault_reads']}")
    return out


def _state(path: str) -> str:
    return os.getxattr(path, "user.tierfs.state").decode()


def restored_read(system, size: int, runs: int, log) -> dict:
    """Issue 17: a file archived and then restored reads as fast as a file that never left the
    disk tier. Writes two files of `size` bytes, archives one (`tierfs archive --wait`) and restores
    it (`tierfs restore --wait`: the file is then dual, its bytes back on the disk tier), then reads
    both, 2 x `runs` rounds: in each, cold (page cache dropped before each read), then cached (caches
    dropped, both read once untimed, then timed). Each file goes first in half of the rounds, and the
    cache is filled afresh in each: on these FUSE mounts (3 files of 256 MiB, 10 rounds, tierfs-nopt)
    the first cached read of a series took ~20% longer than the next ones whichever file it was
    (native: no such effect), and after one fill for all rounds one file's cached reads took 1.3-1.5x
    another's in every round, whichever file that was. Counts the daemon's read/write requests during
    each timed read (DaemonRequests)."""
    online, restored = (os.path.join(system.path, f"{n}.bin") for n in ("online", "restored"))
    for path in (online, restored):
        write_file(path, size)
        system.quiesce(path)  # the checksum the archive job needs, computed before anything is timed
    out = {"bytes": size, "runs": {f"{f}_{how}": [] for how in ("cold", "cached") for f in ("online", "restored")}}
    with Timer() as t:
        system.cli("archive", "--wait", "--timeout", "1800", restored, timeout=1900)
    out["archive_s"], out["state_archived"] = t.s, _state(restored)
    if out["state_archived"] != "archived":
        raise RuntimeError(f"{system.name}: {restored} is {out['state_archived']} after archive --wait")
    with Timer() as t:
        system.cli("restore", "--wait", "--timeout", "1800", restored, timeout=1900)
    out["restore_s"], out["state_restored"] = t.s, _state(restored)
    if out["state_restored"] not in ("online", "dual"):
        raise RuntimeError(f"{system.name}: {restored} is {out['state_restored']} after restore --wait")
    requests = DaemonRequests(system)
    pairs = [("online", online), ("restored", restored)]
    for r in range(2 * runs):
        order = pairs if r % 2 == 0 else pairs[::-1]
        for how in ("cold", "cached"):
            if how == "cached":
                drop_caches()
                for _, path in order:
                    read_file(path)  # fill the cache
            for name, path in order:
                if how == "cold":
                    drop_caches()
                with requests.counting(f"{name}_{how}"):
                    s, n = read_file(path)
                if n != size:
                    raise RuntimeError(f"{system.name}: read {n} bytes of {size} from {path}")
                out["runs"][f"{name}_{how}"].append(s)
    # Both were written with the same bytes (write_file's pattern): the restored copy must read back as them.
    if not filecmp.cmp(online, restored, shallow=False):
        raise RuntimeError(f"{system.name}: the restored file does not read back the bytes written")
    out["daemon_requests"] = requests.by_step
    out["passthrough"] = system.passthrough()
    for path in (online, restored):
        os.unlink(path)
    log(f"  restored read: archive {out['archive_s']:.1f} s, restore {out['restore_s']:.1f} s, best s "
        + ", ".join(f"{k} {min(v):.3f}" for k, v in out["runs"].items()))
    return out
