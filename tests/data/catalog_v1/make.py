"""Makes the catalogs of tests/catalog/test_index.py's migration test with
the tierfs of schema version 1 (commit f50b51a), so the test upgrades
catalogs that tierfs really made, not imitations:

    git archive f50b51a | tar -x -C /tmp/v1
    cd /tmp/v1 && PYTHONPATH=. /path/to/.venv/bin/python /path/to/tests/data/catalog_v1/make.py /path/to/tests/data/catalog_v1

writes sqlite.sql (the SQLite database as SQL text: sqlite3's iterdump) and
mongo.json (every collection's documents and indexes, MongoDB extended JSON).

The tree (times relative to T0 = 2026-01-01 00:00 UTC):
  /logs/app.log   2 MB, read 200 days before T0, written 1 minute before T0
  /logs/old.log   2 MB, neither read nor written for 200 days
  /logs/read.log  2 MB, read 1 day before, written 300 days before T0
"""

import os
import shutil
import sqlite3
import sys
import tempfile

from bson import json_util

from tierfs.catalog import open_catalog
from tierfs.catalog.base import ROOT_INO, SCHEMA_VERSION, Inode

T0 = 1_767_225_600 * 10**9
DAY = 86400 * 10**9
FILES = {b"app.log": (T0 - 200 * DAY, T0 - 60 * 10**9), b"old.log": (T0 - 200 * DAY, T0 - 200 * DAY),
         b"read.log": (T0 - DAY, T0 - 300 * DAY)}


def fill(cat) -> None:
    cat.init()
    d = cat.create(ROOT_INO, b"logs", Inode(ino=0, mode=0o40755, uid=0, gid=0, nlink=2, atime_ns=T0, mtime_ns=T0,
                                           ctime_ns=T0, crtime_ns=T0, state_ns=T0, state_cause="create"))
    for name, (atime, mtime) in FILES.items():
        cat.create(d.ino, name, Inode(ino=0, mode=0o100644, uid=0, gid=0, size=2_000_000, atime_ns=atime,
                                      mtime_ns=mtime, ctime_ns=mtime, crtime_ns=T0 - 400 * DAY, state_ns=mtime,
                                      state_cause="create", tier="disk", location=name.decode()))


def main(out: str) -> None:
    assert SCHEMA_VERSION == 1, "run this with the tierfs of schema version 1"
    tmp = tempfile.mkdtemp()
    try:
        cat = open_catalog(f"sqlite:///{tmp}/c.db")
        fill(cat)
        cat.close()
        con = sqlite3.connect(f"{tmp}/c.db")
        with open(os.path.join(out, "sqlite.sql"), "w") as f:
            f.write("\n".join(con.iterdump()) + "\n")
        con.close()

        from tests.mongod import MongoServer
        server = MongoServer(tmp)
        server.start()
        try:
            cat = open_catalog(server.url("v1"))
            fill(cat)
            dump = {}
            for name in sorted(cat.db.list_collection_names()):
                coll = cat.db[name]
                dump[name] = {"documents": list(coll.find().sort("_id", 1)),
                              "indexes": {k: v for k, v in coll.index_information().items() if k != "_id_"}}
            cat.close()
        finally:
            server.stop()
        with open(os.path.join(out, "mongo.json"), "w") as f:
            f.write(json_util.dumps(dump, indent=1, sort_keys=True) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
