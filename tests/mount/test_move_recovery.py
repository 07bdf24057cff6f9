"""Crash recovery of files a dead daemon left mid-move (moves.Mover.recover),
through a real mount: each file settles by its own copies."""

from __future__ import annotations

import os

from tests.conftest import wait_for
from tests.reliability_util import CatalogView, mk, start, stop, write  # noqa: F401 - mk is a fixture
from tierfs.catalog.base import Changes, State, Transition


def test_recovery_settles_each_file_by_its_own_copies(mk):
    """Regression: recovery kept the state it chose for one archiving file for
    the next ones, so after a file with an older archive copy (back to dual),
    a file with no archive copy became dual too: `archived` in the catalog with
    no archive copy behind it."""
    m = mk()
    for name in ("a", "b", "c"):   # created in this order: recovery meets them by inode number
        write(m.path(name), os.urandom(50_000))
    m.cli("archive", "--keep-online", "--wait", "--timeout", "60", m.path("a"))
    m.cli("archive", "--wait", "--timeout", "60", m.path("c"))
    assert [m.state(n) for n in "abc"] == ["dual", "online", "archived"]
    stop(m)

    # A daemon died mid-move with no job left: a and b archiving, c restoring.
    view = CatalogView(m.catalog_url)
    try:
        for name, mid in (("a", State.ARCHIVING), ("b", State.ARCHIVING), ("c", State.RESTORING)):
            i = view.cat.get(view.ino(name))
            view.cat.switch(Transition(i.ino, i.data_version, (i.state,), Changes(state=mid), "test", "crash"))
    finally:
        view.close()

    start(m)
    wait_for(lambda: "recovery: inode" in m.log() and m.log().count("recovery: inode") == 3, 10,
             what="the recovery of the three files")
    assert [m.state(n) for n in "abc"] == ["dual", "online", "archived"], m.log()
    view = CatalogView(m.catalog_url)
    try:
        b = view.cat.get(view.ino("b"))
        assert b.archive_tier is None and b.tier == "disk"
    finally:
        view.close()
