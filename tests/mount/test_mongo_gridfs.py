"""GridFS tier beyond the conformance suite: ranged reads fetch only the
chunks they need, a failed or concurrent put never shows a partial object,
deadlines, config. Real mongod (the session `mongod` fixture)."""

import io
import os
import threading
import time
import uuid

import pytest

from tierfs import config, errors
from tierfs.tiers.base import new_key
from tierfs.tiers.gridfs import GridFSTier

pytestmark = pytest.mark.mongo

CHUNK = 64 * 1024


@pytest.fixture
def tier(mongod):
    t = GridFSTier("g", url=mongod.url(f"g{uuid.uuid4().hex[:12]}"), bucket="b", chunk_size=CHUNK)
    t.check()
    yield t
    t.close()


def test_ranged_read_fetches_only_covering_chunks(tier):
    data = os.urandom(40 * CHUNK + 123)
    k = new_key()
    tier.put(k, io.BytesIO(data))
    tier.chunks_fetched = 0
    assert tier.read(k, 17 * CHUNK + 5, 100) == data[17 * CHUNK + 5: 17 * CHUNK + 105]
    assert tier.chunks_fetched == 1
    assert tier.read(k, 3 * CHUNK - 10, 20) == data[3 * CHUNK - 10: 3 * CHUNK + 10]  # spans two chunks
    assert tier.chunks_fetched == 3
    assert tier.read(k, len(data) - 50, 4096) == data[-50:]
    assert tier.read(k, len(data), 10) == b"" and tier.read(k, len(data) + 5, 10) == b""
    assert tier.chunks_fetched == 4
    with pytest.raises(errors.ObjectMissing):
        tier.read(new_key(), 0, 10)


def test_failed_put_leaves_no_chunks_and_keeps_the_old_object(tier):
    k = new_key()
    tier.put(k, io.BytesIO(b"old" * 1000))

    class Boom(io.RawIOBase):
        n = 0

        def read(self, n=-1):
            self.n += 1
            if self.n > 3:
                raise IOError("source went away")
            return b"x" * (CHUNK * 2)
    with pytest.raises(IOError):
        tier.put(k, Boom())
    with tier.open_reader(k) as r:
        assert r.read() == b"old" * 1000
    assert tier.files.count_documents({}) == 1
    assert tier.chunks.count_documents({}) == 1  # only the old object's single chunk


def test_readers_see_old_or_new_never_partial(tier):
    k = new_key()
    versions = [bytes([i]) * (CHUNK * 5 + i) for i in range(6)]
    tier.put(k, io.BytesIO(versions[0]))
    seen, bad, stop = set(), [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                with tier.open_reader(k) as r:
                    got = r.read()
            except errors.ObjectMissing:
                bad.append("missing")  # the old revision goes only after the new one is complete
                continue
            except errors.TierfsError:
                continue  # the revision being read was deleted under the stream: retry
            if got in versions:
                seen.add(versions.index(got))
            else:
                bad.append(len(got))
    th = threading.Thread(target=reader)
    th.start()
    for v in versions[1:]:
        tier.put(k, io.BytesIO(v))
        time.sleep(0.02)
    stop.set()
    th.join(30)
    assert not bad, bad
    assert seen
    assert tier.size(k) == len(versions[-1]) and tier.files.count_documents({"filename": k}) == 1


def test_unreachable_server_is_tier_unavailable_without_password():
    from tests.mongod import free_port
    t = GridFSTier("g", url=f"mongodb://u:hunter2@127.0.0.1:{free_port()}/x?serverSelectionTimeoutMS=500")
    t0 = time.monotonic()
    with pytest.raises(errors.TierUnavailable) as ei:
        t.size("k")
    assert time.monotonic() - t0 < 10
    assert "hunter2" not in str(ei.value) and "u:***@" in str(ei.value)
    with pytest.raises(errors.TierUnavailable):
        t.put("k", io.BytesIO(b"x"))
    t.close()


def test_config_validation(tmp_path):
    def parse(tier):
        return config.parse({"tiers": {"disk": {"kind": "disk", "path": str(tmp_path)}, "g": tier}})
    cfg = parse({"kind": "gridfs", "url": "mongodb://h/db", "bucket": "objs", "chunk_size": "1MiB"})
    t = cfg.make_tiers()["g"]
    assert t.bucket_name == "objs" and t.chunk_size == 1 << 20 and t.db.name == "db"
    t.close()
    with pytest.raises(errors.ConfigError, match="tiers.g.url"):
        parse({"kind": "gridfs"})
    with pytest.raises(errors.ConfigError, match="tiers.g.buckets"):
        parse({"kind": "gridfs", "url": "mongodb://h/db", "buckets": "x"})
    with pytest.raises(errors.ConfigError, match="chunk_size"):
        parse({"kind": "gridfs", "url": "mongodb://h/db", "chunk_size": 10}).make_tiers()


@pytest.mark.mount
def test_mount_on_mongo_with_gridfs_default_tier(make_mount, mongod, tmp_path):
    """The done-when configuration: catalog and bytes both in MongoDB, driven by shell tools."""
    url = mongod.url(f"m{uuid.uuid4().hex[:12]}")
    os.makedirs(f"{tmp_path}/home/vault", exist_ok=True)
    m = make_mount(catalog_url=url, config=f"""
        default_tier = "gridfs"
        [tiers.gridfs]
        kind = "gridfs"
        url = "{url}"
        bucket = "bytes"
        [tiers.vault]
        kind = "vault"
        path = "{tmp_path}/home/vault"
    """)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(700_000))
    (src / "sub" / "b.txt").write_text("hello\n" * 1000)
    (src / "empty").write_bytes(b"")
    m.sh(f"cp -a {src} tree && diff -r {src} tree")
    m.sh("printf 'more' >> tree/sub/b.txt && dd if=/dev/urandom of=tree/c bs=64k count=40 status=none conv=fsync "
         "&& truncate -s 100 tree/a.bin && mv tree/sub tree/sub2 && ln tree/c tree/c2")
    assert os.path.getsize(m.path("tree", "a.bin")) == 100
    assert open(m.path("tree", "a.bin"), "rb").read() == (src / "a.bin").read_bytes()[:100]
    assert open(m.path("tree", "sub2", "b.txt")).read() == "hello\n" * 1000 + "more"
    c = open(m.path("tree", "c"), "rb").read()
    assert len(c) == 40 * 65536 and open(m.path("tree", "c2"), "rb").read() == c
    assert os.getxattr(m.path("tree", "c"), "user.tierfs.tier") == b"gridfs"
    m.cli("archive", "--wait", "--timeout", "60", m.path("tree", "c"))
    assert m.state("tree/c") == "archived"
    assert open(m.path("tree", "c"), "rb").read() == c  # restored from the vault into GridFS
    assert m.state("tree/c") == "dual"
    t = GridFSTier("g", url=url, bucket="bytes")
    try:
        # every file's bytes are in GridFS (no disk tier at all); superseded revisions get collected
        want = 3  # a.bin, b.txt, c (restored copy); the empty file has no object
        assert wait_for_count(lambda: len(list(t.keys())), want) == want
    finally:
        t.close()
    m.sh("rm -r tree")
    t = GridFSTier("g", url=url, bucket="bytes")
    try:
        assert wait_for_count(lambda: len(list(t.keys())), 0) == 0
    finally:
        t.close()


def wait_for_count(fn, want, timeout=20.0):
    deadline = time.monotonic() + timeout
    while (n := fn()) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    return n


@pytest.mark.mount
def test_archive_of_empty_file_on_gridfs(make_mount, mongod, tmp_path):
    url = mongod.url(f"m{uuid.uuid4().hex[:12]}")
    os.makedirs(f"{tmp_path}/home/vault", exist_ok=True)
    m = make_mount(catalog_url=url, config=f"""
        [tiers.gridfs]
        kind = "gridfs"
        url = "{url}"
        [tiers.vault]
        kind = "vault"
        path = "{tmp_path}/home/vault"
    """)
    m.sh("touch empty")
    m.cli("archive", m.path("empty"))
    from tierfs.catalog.base import ACTIVE_JOB_STATES
    from tierfs.catalog.mongo import MongoCatalog
    cat = MongoCatalog(url)
    try:
        ino = os.stat(m.path("empty")).st_ino
        deadline = time.monotonic() + 20
        while any(j.state in ACTIVE_JOB_STATES for j in cat.jobs(ino=ino)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cat.get(ino).state.value == "archived", cat.jobs(ino=ino)
    finally:
        cat.close()
