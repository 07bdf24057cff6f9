"""Transactions a MongoDB client leaves open when it is cut off in the middle
of one. The server keeps such a transaction until transactionLifetimeLimitSeconds
(60 s by default), and it holds every document it wrote: meanwhile any other
transaction on one of them fails with WriteConflict. (CI, the partition test: the
mount that took over a reaped session's archive could not switch the file for
those 60 s.) Two ways end them early: the mount that reaps the dead session kills
its idle transactions, and a client that comes back kills the ones it was cut off
in. Real mongod; the cut is a TCP forwarder that stops forwarding."""

import socket
import threading
import time
import uuid

import pymongo
import pytest
from pymongo.errors import OperationFailure

from tierfs import errors
from tierfs.catalog.base import ROOT_INO, Inode, Session, now_ns
from tierfs.catalog.mongo import MongoCatalog
from tierfs.catalog.mongo_jobs import ORPHAN_IDLE_S, client_name

pytestmark = pytest.mark.mongo


def new_file() -> Inode:
    t = now_ns()
    return Inode(ino=0, mode=0o100644, uid=0, gid=0, nlink=1, atime_ns=t, mtime_ns=t, ctime_ns=t, crtime_ns=t,
                 state_ns=t)


@pytest.fixture
def db(mongod):
    return f"o{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cat(mongod, db):
    c = MongoCatalog(mongod.url(db))
    c.init()
    yield c
    c.close()


def left_open(client: pymongo.MongoClient, db: str, ino: int):
    """A transaction that wrote inode `ino` and was never ended (its client went quiet)."""
    s = client.start_session()
    s.start_transaction()
    client[db].inodes.update_one({"_id": ino}, {"$inc": {"open_gen": 1}}, session=s)
    return s


def conflicts(client: pymongo.MongoClient, db: str, ino: int) -> bool:
    """Does a transaction writing inode `ino` meet another's uncommitted write (WriteConflict)?"""
    with client.start_session() as s:
        s.start_transaction()
        try:
            client[db].inodes.update_one({"_id": ino}, {"$inc": {"open_gen": 1}}, session=s)
            s.commit_transaction()
            return False
        except OperationFailure as e:
            if e.code != 112:   # WriteConflict
                raise
            return True


def test_reaping_a_session_aborts_the_transactions_its_mount_left_open(mongod, db, cat):
    ino = cat.create(ROOT_INO, b"f", new_file()).ino
    t = now_ns()
    cat.register_session(Session(id="dead", host="ghost", pid=4242, mountpoint="/m", started_ns=t,
                                 heartbeat_ns=t - 10**11))
    cat.register_session(Session(id="live", host="ghost", pid=4343, mountpoint="/m2", started_ns=t, heartbeat_ns=t))
    ino2 = cat.create(ROOT_INO, b"g", new_file()).ino
    dead = pymongo.MongoClient(mongod.url(db), appname=client_name("ghost", 4242))
    live = pymongo.MongoClient(mongod.url(db), appname=client_name("ghost", 4343))
    check = pymongo.MongoClient(mongod.url(db))
    try:
        held = [left_open(dead, db, ino), left_open(live, db, ino2)]
        time.sleep(ORPHAN_IDLE_S + 0.2)
        assert conflicts(check, db, ino) and conflicts(check, db, ino2)   # held: the case this is about
        assert cat.reap_sessions(now_ns() - 10**10) == ["dead"]
        assert not conflicts(check, db, ino)     # the dead mount's transaction is gone
        assert conflicts(check, db, ino2)        # a live mount's is not touched
        t0 = time.monotonic()
        cat.update(ino, {"uid": 7})              # the catalog's own transactions go through at once
        assert time.monotonic() - t0 < 2 and cat.get(ino).uid == 7
        for s in held:
            s.end_session()
    finally:
        for c in (dead, live, check):
            c.close()


def test_ending_a_dead_daemons_session_aborts_its_transactions(mongod, db, cat):
    """The next mount on a host, or fsck, ends the session of a daemon that died without unmounting
    (killed inside a transaction, say): its transactions go with it."""
    ino = cat.create(ROOT_INO, b"f", new_file()).ino
    t = now_ns()
    cat.register_session(Session(id="killed", host="ghost", pid=4242, mountpoint="/m", started_ns=t,
                                 heartbeat_ns=t))
    dead = pymongo.MongoClient(mongod.url(db), appname=client_name("ghost", 4242))
    check = pymongo.MongoClient(mongod.url(db))
    try:
        held = left_open(dead, db, ino)
        time.sleep(ORPHAN_IDLE_S + 0.2)
        assert conflicts(check, db, ino)
        cat.end_session("killed", clean=True)
        assert not conflicts(check, db, ino)
        held.end_session()
    finally:
        dead.close()
        check.close()


class Cable:
    """A TCP forwarder to a server that can be cut like a pulled cable: while cut, nothing is
    forwarded and the peers hear nothing (no reset); the connections of before and during the cut
    never carry another byte, and are closed when it is plugged in again."""

    def __init__(self, port: int):
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.gen = 0
        self.cut = False
        self.conns: list[tuple[int, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(self.target)
            except OSError:
                c.close()
                continue
            with self.lock:
                gen = self.gen
                self.conns += [(gen, c), (gen, s)]
            for a, b in ((c, s), (s, c)):
                threading.Thread(target=self._pump, args=(a, b, gen), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, gen: int) -> None:
        try:
            while data := src.recv(65536):
                if self.cut or gen != self.gen:
                    continue   # lost on the wire
                dst.sendall(data)
        except OSError:
            pass

    def set(self, plugged: bool) -> None:
        with self.lock:
            self.cut = not plugged
            self.gen += 1
            if plugged:
                old, self.conns = [s for g, s in self.conns if g < self.gen], []
                for s in old:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    s.close()

    def close(self) -> None:
        self.listener.close()
        self.set(True)


def test_a_transaction_cut_off_midway_is_ended_when_the_catalog_answers_again(mongod, db, cat):
    ino = cat.create(ROOT_INO, b"f", new_file()).ino
    cable = Cable(mongod.port)
    quick = "socketTimeoutMS=1500&serverSelectionTimeoutMS=1500&connectTimeoutMS=1500"
    far = MongoCatalog(f"mongodb://127.0.0.1:{cable.port}/{db}?directConnection=true&{quick}")
    check = pymongo.MongoClient(mongod.url(db))
    try:
        first = []

        def fn(t):
            t.set_fields(ino, {"uid": 1})
            if not first:   # the first attempt: the cable is pulled between two writes
                first.append(1)
                cable.set(False)
            t.set_fields(ino, {"gid": 1})
        with pytest.raises(errors.CatalogUnavailable):
            far.transaction(fn)
        cable.set(True)
        assert conflicts(check, db, ino)       # the server still holds the cut-off transaction
        assert far.heartbeat("nobody") is False   # the first call that reaches the server...
        assert not conflicts(check, db, ino)   # ...ended it
        assert cat.get(ino).uid == 0           # and none of it was committed
        far.update(ino, {"uid": 5})
        assert cat.get(ino).uid == 5
    finally:
        far.close()
        check.close()
        cable.close()
