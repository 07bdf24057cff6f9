"""Tier conformance: every tier kind in TIER_KINDS must pass these (no FUSE).

A kind joins by adding a factory to TIER_FACTORIES: a function
(request, tmp_path) -> Tier that builds a fresh, checked tier.
"""

import hashlib
import io
import os
import time

import pytest

from tierfs import errors
from tierfs.tiers.base import new_key


def _disk(request, tmp_path):
    from tierfs.tiers.disk import DiskTier
    t = DiskTier("disk", path=str(tmp_path))
    t.check()
    return t


def _vault(request, tmp_path):
    from tierfs.tiers.vault import VaultTier
    t = VaultTier("vault", path=str(tmp_path))
    t.check()
    return t


def _gridfs(request, tmp_path):
    from tierfs.tiers.gridfs import GridFSTier
    server = request.getfixturevalue("mongod")
    import uuid
    t = GridFSTier("gridfs", url=server.url(f"g{uuid.uuid4().hex[:12]}"), bucket="objs",
                   chunk_size=64 * 1024)
    t.check()
    return t


def _s3(request, tmp_path, cls="S3Tier", **extra):
    """An S3 tier on the session's moto server, a fresh bucket, multipart above 5 MiB."""
    from tierfs.tiers import s3
    moto = request.getfixturevalue("moto")
    t = getattr(s3, cls)(cls, **moto.tier_options(moto.new_bucket(), prefix="conf/", multipart_threshold="5MiB",
                                                  multipart_chunksize="5MiB", **extra))
    t.check()
    return t


def _s3_archive(request, tmp_path):
    return _s3(request, tmp_path, "S3ArchiveTier", storage_class="GLACIER")


#: kind -> factory(request, tmp_path) -> Tier
TIER_FACTORIES = {
    "disk": _disk,
    "vault": _vault,
    "s3": _s3,
    "s3-archive": _s3_archive,
    "gridfs": _gridfs,
}


def readable(tier, key, timeout=30.0):
    """Archive tiers: prepare_restore() until the object may be read."""
    deadline = time.monotonic() + timeout
    while not tier.prepare_restore(key):
        assert time.monotonic() < deadline, f"{tier} did not restore {key} in {timeout}s"
        time.sleep(0.2)
    return key


@pytest.fixture(params=sorted(TIER_FACTORIES))
def tier(request, tmp_path):
    t = TIER_FACTORIES[request.param](request, tmp_path)
    yield t
    t.close()


def test_put_read_size_delete(tier):
    data = os.urandom(300_000)
    k = new_key()
    assert tier.size(k) is None
    assert tier.put(k, io.BytesIO(data)) == len(data)
    assert tier.size(k) == len(data)
    readable(tier, k)
    with tier.open_reader(k) as r:
        assert r.read() == data
    assert tier.read(k, 1000, 4096) == data[1000:5096]
    assert tier.read(k, len(data) - 10, 4096) == data[-10:]  # short at the end
    assert tier.verify(k, hashlib.sha256(data).hexdigest(), len(data))
    assert not tier.verify(k, hashlib.sha256(b"other").hexdigest(), len(data))
    assert k in set(tier.keys())
    tier.delete(k)
    assert tier.size(k) is None
    tier.delete(k)  # idempotent


def test_put_replaces_atomically(tier):
    k = new_key()
    tier.put(k, io.BytesIO(b"old"))
    tier.put(k, io.BytesIO(b"new contents"))
    readable(tier, k)
    with tier.open_reader(k) as r:
        assert r.read() == b"new contents"


def test_empty_object(tier):
    k = new_key()
    tier.put(k, io.BytesIO(b""))
    assert tier.size(k) == 0
    readable(tier, k)
    with tier.open_reader(k) as r:
        assert r.read() == b""


def test_missing_object(tier):
    with pytest.raises(errors.ObjectMissing):
        tier.open_reader(new_key()).read()


def test_failed_put_leaves_no_object(tier):
    class Boom(io.RawIOBase):
        def __init__(self):
            self.n = 0

        def read(self, n=-1):
            self.n += 1
            if self.n > 2:
                raise IOError("source went away")
            return b"x" * 65536

    k = new_key()
    with pytest.raises(Exception):
        tier.put(k, Boom())
    assert tier.size(k) is None


def test_large_object_streams(tier):
    k = new_key()
    block = os.urandom(1 << 20)

    class Gen(io.RawIOBase):
        def __init__(self):
            self.left = 12

        def read(self, n=-1):
            if not self.left:
                return b""
            self.left -= 1
            return block

    assert tier.put(k, Gen()) == 12 << 20
    assert tier.size(k) == 12 << 20
    readable(tier, k)
    assert tier.read(k, (5 << 20) + 7, 100) == block[7:107]
    assert tier.prepare_restore(k) in (True, False)
