"""Makes tests/catalog/test_sqlite_compat.py's catalog.db with the tierfs
before issue 15 (commit a5b1057: SQLAlchemy made the SQLite schema), so the
test opens a catalog that tierfs really made, not an imitation:

    git archive a5b1057 | tar -x -C /tmp/old
    cd /tmp/old && PYTHONPATH=. /path/to/.venv/bin/python /path/to/tests/data/catalog_v2/make.py /path/to/tests/data/catalog_v2

The tree (times relative to T0 = 2026-01-01 00:00 UTC):
  /docs            directory
  /docs/a.txt      5 bytes on tier disk (key k-a), xattr user.project=blue, hard link /b.txt
  /docs/sub        empty directory
  /link            symlink -> docs/a.txt
  /cold.bin        archived on vault (key v-cold), a pending restore job and its event
plus one garbage entry (disk, k-old), one tombstone (/gone), one clean session.
"""

import os
import shutil
import sqlite3
import sys
import tempfile

from tierfs.catalog import open_catalog
from tierfs.catalog.base import ROOT_INO, SCHEMA_VERSION, Inode, JobKind, Session, State, Transition

T0 = 1_767_225_600 * 10**9
FILE, DIR, LINK = 0o100644, 0o040755, 0o120777


def inode(mode, **kw):
    base = dict(atime_ns=T0, mtime_ns=T0, ctime_ns=T0, crtime_ns=T0, state_ns=T0, state_cause="create")
    return Inode(ino=0, mode=mode, uid=1000, gid=1000, nlink=2 if mode == DIR else 1, **{**base, **kw})


def main(out: str) -> None:
    assert SCHEMA_VERSION == 2
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "catalog.db")
    cat = open_catalog(f"sqlite:///{path}")
    cat.init(root_uid=1000, root_gid=1000)
    docs = cat.create(ROOT_INO, b"docs", inode(DIR))
    a = cat.create(docs.ino, b"a.txt", inode(FILE, size=5, tier="disk", location="k-a", checksum="c" * 64))
    cat.create(docs.ino, b"sub", inode(DIR))
    cat.link(a.ino, ROOT_INO, b"b.txt", T0)
    cat.setxattr(a.ino, b"user.project", b"blue")
    cat.create(ROOT_INO, b"link", inode(LINK, target=b"docs/a.txt", size=10))
    cold = cat.create(ROOT_INO, b"cold.bin", inode(FILE, size=1000, tier="disk", location="k-cold"))
    cat.switch(Transition(cold.ino, 0, (State.ONLINE,),
                          dict(state=State.ARCHIVED, tier=None, location=None, archive_tier="vault",
                               archive_location="v-cold"), "command archive by uid 1000", "disk -> vault"))
    cat.enqueue(cold.ino, JobKind.RESTORE, target_tier="disk", cause="command by uid 1000")
    cat.add_garbage([("disk", "k-old")], "test")
    gone = cat.create(ROOT_INO, b"gone", inode(FILE, size=3, tier="disk", location="k-gone"))
    cat.bury(gone.ino, "policy rule 'retention'", "created 400d ago > 365d")
    cat.register_session(Session(id="s1", host="h", pid=1, mountpoint="/mnt", started_ns=T0, heartbeat_ns=T0))
    cat.end_session("s1")
    cat.close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    os.makedirs(out, exist_ok=True)
    shutil.copy(path, os.path.join(out, "catalog.db"))
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main(sys.argv[1])
