"""`tierfs ls` (state, tier, size, last access and pin per entry, from one
catalog query per directory) and what `tierfs state` says of directories
and pins, through the real CLI on real mounts (every catalog backend).

Measure `tierfs ls -l` against `tierfs state` on a directory of N files:
    .venv/bin/python -m tests.system.test_cli_ls 10000
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import pytest
from click.testing import CliRunner

from tests.conftest import Mount, put_file as put
from tests.mount.test_private_files import USER, as_user, open_base  # noqa: F401 - a fixture

pytestmark = pytest.mark.mount


def table(out: str) -> dict[str, list[str]]:
    """name -> its columns, from `tierfs ls` lines (names here hold no spaces)."""
    rows = {}
    for line in out.splitlines():
        if line and not line.endswith(":"):
            *cols, name = line.split()
            rows[name] = cols
    return rows


@pytest.fixture
def proj(any_mount):
    """/proj: a.txt online, big.raw archived, keep.raw dual, link -> a.txt, sub/ pinned holding f
    (pinned through sub) and free (own pin 0: unpinned explicitly)."""
    m = any_mount
    put(m, "proj/a.txt", 10)
    put(m, "proj/big.raw", 300_000)
    put(m, "proj/keep.raw", 2_000)
    put(m, "proj/sub/f", 5)
    put(m, "proj/sub/free", 7)
    os.symlink("a.txt", m.path("proj/link"))
    os.setxattr(m.path("proj/sub"), "user.tierfs.pin", b"1")
    os.setxattr(m.path("proj/sub/free"), "user.tierfs.pin", b"0")
    m.cli("archive", "--wait", m.path("proj/big.raw"))
    m.cli("archive", "--wait", "--keep-online", m.path("proj/keep.raw"))
    return m


def test_ls_shows_state_tier_size_and_pin_of_each_entry(proj):
    m = proj
    rows = table(m.cli("ls", m.path("proj")).stdout)
    assert {n: (c[0], c[1], c[2], c[-1]) for n, c in rows.items()} == {
        "a.txt": ("online", "disk", "10B", "-"),
        "big.raw": ("archived", "vault", "300.0kB", "-"),
        "keep.raw": ("dual", "disk", "2.0kB", "-"),
        "link": ("link", "-", "-", "-"),
        "sub": ("dir", "-", "-", "pin"),
    }, rows
    rows = table(m.cli("ls", m.path("proj/sub")).stdout)
    assert {n: c[-1] for n, c in rows.items()} == {"f": "pin^", "free": "-"}
    # a file named lists that file, with its pin inherited from /proj/sub
    out = m.cli("ls", m.path("proj/sub/f"), m.path("proj/a.txt")).stdout.splitlines()
    assert [line.split()[0] + " " + line.split()[-2] + " " + line.split()[-1] for line in out] == \
        [f"online pin^ {m.path('proj/sub/f')}", f"online - {m.path('proj/a.txt')}"]


def test_ls_long_recursive_and_json(proj):
    m = proj
    out = m.cli("ls", "-l", "-r", m.path("proj")).stdout
    blocks = out.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [m.path("proj") + ":", m.path("proj/sub") + ":"]
    rows = table(out.replace(" -> a.txt", ""))
    # MODE OWNER GROUP STATE TIER SIZE COPIES STUB MODIFIED(2) ACCESSED(2) PIN
    assert rows["big.raw"][:8] == ["-rw-r--r--", "root", "root", "archived", "vault", "300.0kB", "vault", "-"]
    assert rows["keep.raw"][3:7] == ["dual", "disk", "2.0kB", "vault"]
    assert rows["sub"][0].startswith("d") and rows["f"][-1] == "pin^"
    assert "link -> a.txt" in out
    got = {os.path.relpath(x["path"], m.mnt): x for x in json.loads(m.cli("ls", "-r", "--json", m.path("proj")).stdout)}
    assert sorted(got) == ["proj/a.txt", "proj/big.raw", "proj/keep.raw", "proj/link", "proj/sub", "proj/sub/f",
                           "proj/sub/free"]
    big = got["proj/big.raw"]
    assert (big["type"], big["state"], big["tier"], big["archive_tier"], big["size"], big["copies"][0][0]) == \
        ("file", "archived", None, "vault", 300_000, "vault")
    assert (got["proj/sub"]["type"], got["proj/sub"]["pinned"], got["proj/sub"]["pin_inherited"]) == \
        ("directory", True, False)
    assert (got["proj/sub/f"]["pinned"], got["proj/sub/f"]["pin_from"], got["proj/sub/f"]["pin_inherited"]) == \
        (True, "/proj/sub", True)
    assert (got["proj/sub/free"]["pinned"], got["proj/sub/free"]["pin_from"]) == (False, "/proj/sub/free")
    assert got["proj/link"]["target"] == "a.txt" and "state" not in got["proj/link"]
    # the catalog and the mount agree on what it lists
    assert got["proj/a.txt"]["ino"] == os.stat(m.path("proj/a.txt")).st_ino


def test_ls_errors(mount, tmp_path):
    m = mount
    r = m.cli("ls", str(tmp_path), check=False)
    assert r.returncode == 3 and "not inside a tierfs mount" in r.stderr, r.stderr
    r = m.cli("ls", m.path("nope"), check=False)
    assert r.returncode == 4 and r.stderr == f"tierfs: {m.path('nope')}: No such file or directory\n", r.stderr
    os.mkdir(m.path("empty"))
    assert m.cli("ls", m.path("empty")).stdout == ""


class CountingCatalog:
    """A catalog that counts the calls made to it."""

    def __init__(self, cat, calls: list):
        self._cat, self._calls = cat, calls

    def __getattr__(self, name):
        fn = getattr(self._cat, name)
        if not callable(fn) or name == "close":
            return fn

        def counted(*a, **kw):
            self._calls.append(name)
            return fn(*a, **kw)
        return counted


def test_ls_reads_one_query_per_directory(mount, monkeypatch):
    """However many files a directory holds, listing it costs the same catalog calls: one
    list_dir per directory (the pin of the top directory: one getxattr per level above)."""
    from tierfs.cli import listing, target
    m = mount
    monkeypatch.setenv("TIERFS_HOME", m.home)
    calls: list[str] = []
    opened = target.open_catalog
    monkeypatch.setattr(listing, "open_catalog", lambda t: CountingCatalog(opened(t), calls))
    counts = {}
    for n in (3, 60):
        for i in range(n):
            put(m, f"d{n}/sub/f{i}", 1)
        calls.clear()
        r = CliRunner().invoke(listing.ls, ["-l", "-r", m.path(f"d{n}")], catch_exceptions=False)
        assert r.exit_code == 0 and len(r.output.splitlines()) == 4 + n, r.output
        counts[n] = list(calls)
    assert counts[3] == counts[60] and counts[60].count("list_dir") == 2, counts


def test_ls_lists_only_what_the_caller_may_list(open_base, mongod):
    """Another user (allow_other, a catalog it may read) lists a 0755 directory, is refused a
    0700 one with one line and exit 5, as ls(1) through the mount would be."""
    base, made = open_base
    m = Mount(base, mongod.url(f"ls{os.getpid()}"), config="allow_other = true\n")
    made.append(m)
    m.start()
    os.chmod(m.mnt, 0o755)
    put(m, "open/a", 3)
    put(m, "closed/secret", 3)
    os.chmod(m.path("closed"), 0o700)
    r = as_user(["ls", m.path("open")])
    assert r.returncode == 0 and table(r.stdout)["a"][:3] == ["online", "disk", "3B"], (r.stdout, r.stderr)
    r = as_user(["ls", "-r", m.mnt])
    assert r.returncode == 5 and "secret" not in r.stdout, r.stdout
    assert r.stderr == f"tierfs: {m.path('closed')}: cannot open directory: permission denied\n", r.stderr
    assert "a" in table(r.stdout)   # the rest is still listed


# ---- tierfs state: directories and pins -----------------------------------------------------------
def test_state_shows_a_directory_as_one_with_its_placement_and_pin(proj):
    m = proj
    m.cli("place", m.path("proj/sub"), "disk")
    out = m.cli("state", m.path("proj"), m.path("proj/sub"), m.path("proj/sub/f"), m.path("proj/sub/free"),
                m.path("proj/link")).stdout.splitlines()
    assert out == [f"{m.path('proj')}  directory  5 entries  placement disk (from default_tier)",
                   f"{m.path('proj/sub')}  directory  2 entries  placement disk (from /proj/sub)  pinned",
                   out[2], out[3], f"{m.path('proj/link')}  symbolic link"], out
    assert out[2].startswith(f"{m.path('proj/sub/f')}  online  disk  5B  accessed ") and \
        out[2].endswith("  pinned (from /proj/sub)")
    assert "pinned" not in out[3]
    rows = {os.path.relpath(x["path"], m.mnt): x for x in
            json.loads(m.cli("state", "--json", m.path("proj/sub"), m.path("proj/sub/f")).stdout)}
    sub, f = rows["proj/sub"], rows["proj/sub/f"]
    assert (sub["type"], sub["entries"], sub["placement"], sub["pinned"], "state" in sub, "size" in sub) == \
        ("directory", 2, "disk", True, False, False)
    assert (f["type"], f["state"], f["pinned"], f["pin_from"], f["pin_inherited"]) == \
        ("file", "online", True, "/proj/sub", True)
    # the one documented entry point without the CLI carries the pin too
    raw = json.loads(os.getxattr(m.path("proj/sub/f"), "user.tierfs.info"))
    assert (raw["pinned"], raw["pin_from"], raw["state"], raw["tier"]) == (True, "/proj/sub", "online", "disk")


def test_state_help_and_verbose_point_at_getfattr(mount):
    m = mount
    put(m, "f", 1)
    assert "getfattr -n user.tierfs.info" in " ".join(m.cli("state", "--help").stdout.split())
    out = m.cli("state", "-v", m.path("f")).stdout
    assert out.splitlines()[-1].startswith("(getfattr -d lists no user.tierfs.* attribute; `getfattr -n "
                                           "user.tierfs.info FILE`")
    # what the hint says holds: -d shows none of them, -n names one
    import subprocess
    d = subprocess.run(["getfattr", "-d", "-m", "-", m.path("f")], capture_output=True, text=True).stdout
    assert "user.tierfs" not in d
    n = subprocess.run(["getfattr", "--only-values", "-n", "user.tierfs.info", m.path("f")], capture_output=True,
                       text=True, check=True).stdout
    assert json.loads(n)["state"] == "online"


# ---- measurement ----------------------------------------------------------------------------------
def measure(n: int) -> None:
    """`tierfs ls -l` vs `tierfs state` of a directory of n files, on a scratch mount."""
    import subprocess
    base = tempfile.mkdtemp(prefix="listing-measure-")
    m = Mount(base, f"sqlite:///{base}/catalog.db")
    m.start()
    try:
        d = m.path("big")
        os.mkdir(d)
        for i in range(n):
            with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
                f.write(b"x")
        for args in (["ls", "-l", d], ["ls", "--json", d], ["state", "-r", d]):
            t0 = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "tierfs.cli", *args], capture_output=True, env=m.env,
                               cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
            print(f"tierfs {' '.join(args[:-1])} DIR ({n} files): {time.monotonic() - t0:.2f}s, "
                  f"{len(r.stdout.splitlines())} lines, exit {r.returncode}")
    finally:
        m.cleanup()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    measure(int(sys.argv[1]) if len(sys.argv) > 1 else 10000)
