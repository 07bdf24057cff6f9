"""`tierfs find`'s path building (cli/admin._find_batches) over a catalog's
(parent, name, ino) stream: pure logic, so the catalog here is a stand-in
with query_names and paths_of only (the real catalogs are tested through
the CLI in tests/system/test_cli_admin.py and tests/catalog/test_scale_queries.py)."""

from __future__ import annotations

from tierfs.catalog.base import ROOT_INO
from tierfs.cli import admin


class Names:
    """query_names yields `rows`; paths_of knows the directories in `dirs` ({ino: path})."""

    def __init__(self, rows, dirs):
        self.rows, self.dirs, self.asked = rows, dirs, []

    def query_names(self, q):
        yield from self.rows

    def paths_of(self, inos, cache=None):
        inos = list(inos)
        self.asked.append(sorted(inos))
        return {i: self.dirs[i] for i in inos if i in self.dirs}


def _rows(n: int) -> list[tuple[int, bytes, int]]:
    """n names: the first 10 in the root, the others in directories 2..11."""
    return [(ROOT_INO if i < 10 else 2 + i % 10, b"f%05d" % i, 100 + i) for i in range(n)]


DIRS = {2 + d: b"top/d%d" % d for d in range(10)}


def _want(rows, prefix=b"/", gone=()):
    return [(prefix + (DIRS[p] + b"/" if p != ROOT_INO else b"") + n, i) for p, n, i in rows if p not in gone]


def test_every_name_once_in_order_in_growing_batches():
    rows = _rows(7500)
    cat = Names(rows, {ROOT_INO: b"", **DIRS})
    batches = list(admin._find_batches(cat, None, "/mnt/lab", False, None))
    assert [len(p) for p, _ in batches] == [1000, 2000, 4000, 500]
    got = [(p, i) for paths, inos in batches for p, i in zip(paths, inos)]
    assert got == _want(rows)
    # each directory's path was asked for once, whatever the number of its names
    assert sum(len(a) for a in cat.asked) == 11


def test_absolute_paths_carry_the_mountpoint():
    rows = _rows(30)
    cat = Names(rows, {ROOT_INO: b"", **DIRS})
    (paths, inos), = admin._find_batches(cat, None, "/mnt/lab/", True, None)
    assert list(zip(paths, inos)) == _want(rows, b"/mnt/lab/")


def test_a_directory_gone_meanwhile_drops_its_names_only():
    """A directory removed between its names' read and the paths' (paths_of does not find it): its
    names are left out, the stream goes on."""
    rows = _rows(2500)
    dirs = {ROOT_INO: b"", **{k: v for k, v in DIRS.items() if k != 5}}
    batches = list(admin._find_batches(Names(rows, dirs), None, "/", False, None))
    got = [(p, i) for paths, inos in batches for p, i in zip(paths, inos)]
    assert got == _want(rows, gone={5})
    assert len(batches) == 2 and sum(len(p) for p, _ in batches) == 2500 - 249


def test_only_one_inode_when_the_path_is_a_file():
    rows = _rows(3500)
    batches = list(admin._find_batches(Names(rows, {ROOT_INO: b"", **DIRS}), None, "/", False, 100 + 3017))
    assert [(p, i) for paths, inos in batches for p, i in zip(paths, inos)] == _want([rows[3017]])
    assert len(batches) == 3   # (every row was read: the stream ended, not the first empty batch)


def test_no_match_is_one_empty_batch():
    assert list(admin._find_batches(Names([], {ROOT_INO: b""}), None, "/", False, None)) == [([], [])]
