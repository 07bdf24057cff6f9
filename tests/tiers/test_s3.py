"""S3 tiers against moto's HTTP server: what the conformance suite
(test_tier_conformance.py runs s3 and s3-archive) does not cover.

Multipart uploads, ranged reads, deadlines when the endpoint is down or
silent, retries of injected failures, Glacier objects and RestoreObject as
moto implements them, odd characters in keys, verification, config checks.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import socket
import time

import pytest

from tierfs import config, errors
from tierfs.tiers.base import new_key
from tierfs.tiers.s3 import S3ArchiveTier, S3Tier, _parts

MiB = 1 << 20


class Stream(io.RawIOBase):
    """A non-seekable source of `data` in pieces of at most 1 MiB."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def readable(self):
        return True

    def read(self, n=-1):
        n = MiB if n is None or n < 0 else min(n, MiB)
        b = self.data[self.pos:self.pos + n]
        self.pos += len(b)
        return b


@pytest.fixture
def make_tier(moto, s3_bucket):
    made = []

    def factory(cls=S3Tier, name="s3", **extra):
        t = cls(name, **moto.tier_options(s3_bucket, **extra))
        made.append(t)
        return t
    yield factory
    for t in made:
        t.close()


def gets(moto, since: int) -> list[dict]:
    return [r for r in moto.requests[since:] if r["method"] == "GET" and "list-type" not in r["query"]]


# ---- writes ----------------------------------------------------------------------
def test_multipart_upload_above_threshold(moto, s3_bucket, make_tier):
    tier = make_tier(prefix="mp", multipart_threshold="5MiB", multipart_chunksize="5MiB")
    data = os.urandom(11 * MiB + 123)
    k = new_key()
    n0 = len(moto.requests)
    assert tier.put(k, Stream(data)) == len(data)
    parts = [r for r in moto.requests[n0:] if r["method"] == "PUT" and "partNumber=" in r["query"]]
    assert len(parts) == 3
    head = moto.client().head_object(Bucket=s3_bucket, Key=f"mp/{k}")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")
    assert moto.client().get_object(Bucket=s3_bucket, Key=f"mp/{k}")["Body"].read() == data
    assert tier.verify(k, hashlib.sha256(data).hexdigest(), len(data))


def test_small_object_is_one_put_with_sha256_metadata(moto, s3_bucket, make_tier):
    tier = make_tier(multipart_threshold="5MiB", multipart_chunksize="5MiB")
    data = os.urandom(5 * MiB)  # exactly the threshold: one PutObject
    k = new_key()
    n0 = len(moto.requests)
    tier.put(k, Stream(data))
    puts = [r for r in moto.requests[n0:] if r["method"] in ("PUT", "POST")]
    assert len(puts) == 1 and "uploadId" not in puts[0]["query"]
    head = moto.client().head_object(Bucket=s3_bucket, Key=k)
    assert head["Metadata"]["tierfs-sha256"] == hashlib.sha256(data).hexdigest()
    assert head.get("StorageClass", "STANDARD") == "STANDARD"


def test_failed_multipart_upload_is_aborted(moto, s3_bucket, make_tier):
    tier = make_tier(multipart_threshold="5MiB", multipart_chunksize="5MiB")
    moto.inject("PUT", query_contains="partNumber=2", status=400, code="InvalidPart")
    with pytest.raises(errors.TierfsError, match="InvalidPart"):
        tier.put(new_key(), Stream(os.urandom(12 * MiB)))
    assert moto.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert list(tier.keys()) == []


def test_lost_answer_to_complete_multipart_upload(moto, s3_bucket, make_tier):
    """S3 completed the upload but the answer was lost: the retry gets
    NoSuchUpload, and the put still succeeds because the object is ours."""
    tier = make_tier(multipart_threshold="5MiB", multipart_chunksize="5MiB")
    data = os.urandom(6 * MiB)
    k = new_key()
    n0 = len(moto.requests)
    moto.inject("POST", k, query_contains="uploadId=", truncate_after=10)   # done, answer cut
    moto.inject("POST", k, query_contains="uploadId=", status=404, code="NoSuchUpload")   # as AWS may answer
    assert tier.put(k, io.BytesIO(data)) == len(data)
    completes = [r for r in moto.requests[n0:] if r["method"] == "POST" and "uploadId=" in r["query"]]
    assert [r["fault"] for r in completes] == ["truncated", "NoSuchUpload"]
    assert tier.verify(k, hashlib.sha256(data).hexdigest(), len(data))
    assert moto.client().get_object(Bucket=s3_bucket, Key=k)["Body"].read() == data


def test_part_size_doubles_to_stay_under_the_part_limit():
    data = b"x" * (1000 * 10 + 3 * 20 + 5)
    src = io.BytesIO(data)
    sizes = [len(p) for p in _parts(src.read(15), src, 10)]
    assert sizes[:1000] == [10] * 1000 and sizes[1000:] == [20, 20, 20, 5]
    assert sum(sizes) == len(data)


# ---- reads -----------------------------------------------------------------------
def test_ranged_read_fetches_only_the_range(moto, make_tier):
    tier = make_tier(multipart_threshold="5MiB", multipart_chunksize="5MiB")
    data = os.urandom(12 * MiB)
    k = new_key()
    tier.put(k, io.BytesIO(data))
    n0 = len(moto.requests)
    assert tier.read(k, 7 * MiB + 5, 4096) == data[7 * MiB + 5: 7 * MiB + 5 + 4096]
    assert tier.read(k, len(data) - 100, 4096) == data[-100:]
    assert tier.read(k, len(data) + 10, 4096) == b""     # known from the last read: at the end
    got = gets(moto, n0)
    assert [r["range"] for r in got] == [f"bytes={7 * MiB + 5}-{7 * MiB + 5 + 4095}",
                                         f"bytes={len(data) - 100}-{len(data) + 3995}"]
    assert sum(r["bytes"] for r in got) < 64 * 1024   # a few KiB went over the wire, not 12 MiB


def test_sequential_reads_fetch_growing_windows(moto, make_tier):
    tier = make_tier(multipart_threshold="5MiB", multipart_chunksize="5MiB", readahead="2MiB")
    data = os.urandom(9 * MiB + 1000)
    k = new_key()
    tier.put(k, io.BytesIO(data))
    n0 = len(moto.requests)
    step = 128 * 1024
    out = b"".join(tier.read(k, off, step) for off in range(0, len(data) + step, step))
    assert out == data
    sizes = [r["bytes"] for r in gets(moto, n0)]
    assert sizes[:3] == [512 * 1024, 1 * MiB, 2 * MiB] and max(sizes) == 2 * MiB   # doubling up to readahead
    assert len(sizes) <= 8 and sum(sizes) == len(data)                             # each byte fetched once
    n1 = len(moto.requests)
    for off in (5 * MiB, 1 * MiB, 8 * MiB):   # random reads fetch just what is asked
        assert tier.read(k, off + 3, 4096) == data[off + 3: off + 3 + 4096]
    assert [r["bytes"] for r in gets(moto, n1)] == [4096] * 3
    tier.put(k, io.BytesIO(b"replaced"))      # a put drops the key's window
    assert tier.read(k, 0, 100) == b"replaced"
    off_tier = make_tier(readahead=0)
    n2 = len(moto.requests)
    assert off_tier.read(k, 0, 4) == b"repl" and off_tier.read(k, 4, 4) == b"aced"
    assert [r["range"] for r in gets(moto, n2)] == ["bytes=0-3", "bytes=4-7"]


def test_concurrent_readers_of_one_object_get_the_right_bytes(moto, make_tier):
    """Like the kernel's parallel read-ahead: many threads, sequential and random, one key."""
    import random
    import threading
    tier = make_tier(multipart_threshold="5MiB", multipart_chunksize="5MiB", readahead="1MiB")
    data = os.urandom(6 * MiB + 777)
    k = new_key()
    tier.put(k, io.BytesIO(data))
    bad = []

    def reader(seed):
        rnd = random.Random(seed)
        off = 0 if seed % 2 else rnd.randrange(len(data))
        for _ in range(40):
            size = rnd.choice((4096, 65536, 131072))
            if seed % 2 == 0 and rnd.random() < 0.3:
                off = rnd.randrange(len(data) + 10)
            got = tier.read(k, off, size)
            if got != data[off:off + size]:
                bad.append((seed, off, size))
            off += size
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert bad == []


def test_stream_resumes_after_a_broken_connection(moto, make_tier):
    tier = make_tier()
    data = os.urandom(3 * MiB)
    k = new_key()
    tier.put(k, io.BytesIO(data))
    n0 = len(moto.requests)
    moto.inject("GET", k, truncate_after=MiB + 17)
    with tier.open_reader(k) as r:
        assert r.read() == data
    got = gets(moto, n0)
    assert [r.get("fault") for r in got] == ["truncated", None]
    assert got[1]["range"] == f"bytes={MiB + 17}-"


def test_temporary_errors_are_retried(moto, make_tier):
    tier = make_tier()
    k = new_key()
    tier.put(k, io.BytesIO(b"hello world"))
    n0 = len(moto.requests)
    moto.inject("GET", k, status=503, code="SlowDown", times=2)
    assert tier.read(k, 6, 5) == b"world"
    assert [r["status"] for r in gets(moto, n0)] == [503, 503, 206]


def test_permanent_errors_are_not_retried(moto, make_tier):
    tier = make_tier()
    k = new_key()
    tier.put(k, io.BytesIO(b"hello"))
    n0 = len(moto.requests)
    moto.inject("GET", k, status=403, code="AccessDenied", times=5)
    with pytest.raises(errors.TierfsError, match="access denied") as ei:
        tier.read(k, 0, 5)
    assert not isinstance(ei.value, errors.TierUnavailable)
    assert len(gets(moto, n0)) == 1


def test_missing_object(make_tier):
    tier = make_tier()
    k = new_key()
    assert tier.size(k) is None
    with pytest.raises(errors.ObjectMissing):
        tier.read(k, 0, 10)
    with pytest.raises(errors.ObjectMissing):
        tier.open_reader(k)
    tier.delete(k)  # idempotent


# ---- deadlines -------------------------------------------------------------------
def test_endpoint_down_fails_within_the_deadline(moto, make_tier, caplog):
    tier = make_tier(name="s3down", connect_timeout=1, read_timeout=2, deadline=3, max_attempts=4)
    k, k2 = new_key(), new_key()
    tier.put(k, io.BytesIO(b"still here"))
    tier.put(k2, io.BytesIO(b"not read yet"))
    assert tier.size(k) == 10   # a pooled keep-alive connection exists now
    moto.stop()
    try:
        for call in (lambda: tier.read(k2, 0, 5), lambda: tier.size(k),
                     lambda: tier.put(new_key(), io.BytesIO(b"x")), lambda: list(tier.keys())):
            t0 = time.monotonic()
            with pytest.raises(errors.TierUnavailable) as ei:
                call()
            took = time.monotonic() - t0
            assert took < 10, f"took {took:.1f}s"
            assert ei.value.errno == errno.EIO
            assert "s3down" in str(ei.value) and moto.url in str(ei.value)
            assert "cannot connect to the endpoint (gave up after" in str(ei.value)
    finally:
        moto.start()
    assert tier.read(k, 0, 10) == b"still here"   # same port, same bucket: works again
    assert "testing" not in caplog.text          # the test credentials are never logged


def test_silent_endpoint_fails_within_the_deadline(tmp_path):
    """A server that accepts connections and never answers (a hung proxy)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)   # never accept(): connects succeed, reads time out
    try:
        port = lsock.getsockname()[1]
        tier = S3Tier("silent", bucket="b-silent", endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1",
                      access_key_id="testing", secret_access_key="testing", connect_timeout=1, read_timeout=1,
                      deadline=2, max_attempts=3)
        t0 = time.monotonic()
        with pytest.raises(errors.TierUnavailable, match="silent.*no answer within read_timeout"):
            tier.read(new_key(), 0, 4096)
        assert time.monotonic() - t0 < 10
        tier.close()
    finally:
        lsock.close()


# ---- archive storage classes -----------------------------------------------------------
def test_glacier_read_refused_until_restored(moto, s3_bucket, make_tier):
    moto.set_restore_progress(polls=3)   # moto: a restore stays in progress for a few reads
    try:
        tier = make_tier(S3ArchiveTier, name="glacier", prefix="arch/", restore_days=2, restore_tier="Bulk")
        data = os.urandom(100_000)
        k = new_key()
        tier.put(k, io.BytesIO(data))
        assert moto.client().head_object(Bucket=s3_bucket, Key=f"arch/{k}")["StorageClass"] == "GLACIER"
        assert tier.verify(k, hashlib.sha256(data).hexdigest(), len(data))   # without a GET
        for read in (lambda: tier.read(k, 0, 10), lambda: tier.open_reader(k)):
            with pytest.raises(errors.Pending) as ei:
                read()
            assert ei.value.errno == errno.EAGAIN
        n0 = len(moto.requests)
        answers = []
        deadline = time.monotonic() + 30
        while not (answers and answers[-1]) and time.monotonic() < deadline:
            answers.append(tier.prepare_restore(k))
            if not answers[-1]:
                with pytest.raises(errors.Pending):   # still archived while the restore runs
                    tier.read(k, 0, 10)
        assert answers[-1] is True and False in answers
        restores = [r for r in moto.requests[n0:] if r["method"] == "POST" and "restore" in r["query"]]
        assert len(restores) == 1 and tier.restores == 1   # polling does not ask again
        restore_hdr = moto.client().head_object(Bucket=s3_bucket, Key=f"arch/{k}")["Restore"]
        assert 'ongoing-request="false"' in restore_hdr
        assert tier.read(k, 50_000, 10) == data[50_000:50_010]
        with tier.open_reader(k) as r:
            assert r.read() == data
    finally:
        moto.set_restore_progress(None)


def test_restore_already_in_progress_is_not_an_error(moto, make_tier):
    tier = make_tier(S3ArchiveTier, name="glacier")
    k = new_key()
    tier.put(k, io.BytesIO(b"archived"))
    moto.inject("POST", k, query_contains="restore", status=409, code="RestoreAlreadyInProgress")
    assert tier.prepare_restore(k) is False   # someone else asked; poll later
    assert tier.restores == 0
    assert tier.prepare_restore(k) is True    # moto restores at once once asked
    assert tier.restores == 1


def test_glacier_ir_is_readable_without_restore(moto, s3_bucket, make_tier):
    tier = make_tier(S3ArchiveTier, name="gir", storage_class="GLACIER_IR")
    k = new_key()
    tier.put(k, io.BytesIO(b"instant"))
    assert moto.client().head_object(Bucket=s3_bucket, Key=k)["StorageClass"] == "GLACIER_IR"
    n0 = len(moto.requests)
    assert tier.prepare_restore(k) is True
    assert not [r for r in moto.requests[n0:] if "restore" in r["query"]]
    assert tier.read(k, 0, 7) == b"instant"


def test_multipart_archive_object_gets_the_class(moto, s3_bucket, make_tier):
    tier = make_tier(S3ArchiveTier, name="deep", storage_class="DEEP_ARCHIVE", multipart_threshold="5MiB",
                     multipart_chunksize="5MiB")
    data = os.urandom(6 * MiB)
    k = new_key()
    tier.put(k, io.BytesIO(data))
    head = moto.client().head_object(Bucket=s3_bucket, Key=k)
    assert head["StorageClass"] == "DEEP_ARCHIVE" and head["ETag"].strip('"').endswith("-2")
    assert tier.verify(k, hashlib.sha256(data).hexdigest(), len(data))
    assert not tier.verify(k, hashlib.sha256(b"other").hexdigest(), len(data))


# ---- verification ----------------------------------------------------------------
def test_verify_trusts_matching_etags_and_reads_back_otherwise(moto, s3_bucket, make_tier):
    tier = make_tier(prefix="v/")
    data = os.urandom(200_000)
    sha = hashlib.sha256(data).hexdigest()
    k = new_key()
    tier.put(k, io.BytesIO(data))
    n0 = len(moto.requests)
    assert tier.verify(k, sha, len(data))
    assert gets(moto, n0) == []                     # S3's ETag matched the bytes put() hashed
    fresh = make_tier(prefix="v/")                  # another process: nothing remembered
    assert fresh.verify(k, sha, len(data))
    assert len(gets(moto, n0)) == 1                 # so it reads the object back
    bad = bytearray(data)
    bad[1000] ^= 1
    moto.client().put_object(Bucket=s3_bucket, Key=f"v/{k}", Body=bytes(bad))   # replaced behind our back
    assert not tier.verify(k, sha, len(data))
    assert not fresh.verify(k, sha, len(data))


# ---- keys ------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "tier fs/ü+%&=?#;:@$,/x"])
def test_odd_characters_in_keys_and_prefix(moto, s3_bucket, make_tier, prefix):
    tier = make_tier(prefix=prefix)
    keys = ["plain", "with space", "ünïcødé✓", "plus+percent%20amp&eq=q?hash#", "dir/sub/file.txt", "~tilde'quote\""]
    for i, k in enumerate(keys):
        tier.put(k, io.BytesIO(f"object {i}".encode()))
    assert sorted(tier.keys()) == sorted(keys)
    want_prefix = prefix if prefix.endswith("/") or not prefix else prefix + "/"
    listed = {o["Key"] for o in moto.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])}
    assert listed == {want_prefix + k for k in keys}
    for i, k in enumerate(keys):
        assert tier.size(k) == len(f"object {i}")
        assert tier.read(k, 7, 10) == str(i).encode()
    for k in keys:
        tier.delete(k)
    assert list(tier.keys()) == []


def test_keys_pages_through_long_listings(moto, s3_bucket, make_tier):
    tier = make_tier(prefix="many")
    client = moto.client()
    names = [f"k{i:05d}" for i in range(1203)]   # more than one 1000-key page
    for n in names:
        client.put_object(Bucket=s3_bucket, Key=f"many/{n}", Body=b"")
    client.put_object(Bucket=s3_bucket, Key="other/x", Body=b"")
    assert sorted(tier.keys()) == names


# ---- configuration ----------------------------------------------------------------------
def _cfg(**tier):
    return config.parse({"tiers": {"disk": {"kind": "disk", "path": "/tmp"}, "s3": tier}})


def test_config_accepts_s3_options():
    cfg = _cfg(kind="s3", bucket="b", prefix="p", endpoint_url="http://127.0.0.1:9", region="eu-west-1",
               storage_class="STANDARD_IA", multipart_threshold="64MB", multipart_chunksize="8MiB",
               connect_timeout="2s", read_timeout=10, deadline="1m", max_attempts=3, profile="x",
               access_key_id="AKIA", secret_access_key="s3cr3t")
    opts = cfg.tiers["s3"]
    assert opts.multipart_threshold == 64_000_000 and opts.multipart_chunksize == 8 * MiB
    assert opts.deadline == 60.0 and opts.connect_timeout == 2.0
    tier = cfg.make_tiers()["s3"]
    assert "s3cr3t" not in repr(tier) and "AKIA" not in repr(tier)
    cfg = config.parse({"tiers": {"disk": {"kind": "disk", "path": "/tmp"},
                                  "g": {"kind": "s3-archive", "bucket": "b", "restore_days": 3,
                                        "restore_tier": "Expedited"}}})
    assert cfg.default_archive == "g" and cfg.make_tiers()["g"].storage_class == "GLACIER"


@pytest.mark.parametrize("tier,match", [
    (dict(kind="s3"), "tiers.s3.bucket: missing"),
    (dict(kind="s3", bucket="b", colour="red"), "tiers.s3.colour: unknown key"),
    (dict(kind="s3", bucket="b", multipart_threshold="lots"), "tiers.s3.multipart_threshold"),
    (dict(kind="s3", bucket="b", multipart_chunksize="1MiB"), "tiers.s3.multipart_chunksize: must be between"),
    (dict(kind="s3", bucket="b", deadline="soon"), "tiers.s3.deadline"),
    (dict(kind="s3", bucket="b", max_attempts="3"), "tiers.s3.max_attempts"),
    (dict(kind="s3", bucket="b", access_key_id="AKIA"), "go together"),
    (dict(kind="s3", bucket="b", storage_class="glacier"), "tiers.s3.storage_class: GLACIER objects cannot be read"),
    (dict(kind="s3-archive", bucket="b", storage_class="STANDARD"), "tiers.s3.storage_class: expected GLACIER"),
    (dict(kind="s3-archive", bucket="b", restore_tier="Fast"), "tiers.s3.restore_tier"),
    (dict(kind="s3-archive", bucket="b", storage_class="DEEP_ARCHIVE", restore_tier="Expedited"), "no Expedited"),
])
def test_config_errors_name_the_key(tier, match):
    with pytest.raises(errors.ConfigError, match=match.replace(".", r"\.")):
        _cfg(**tier).make_tiers()


def test_check_reports_a_missing_bucket(moto):
    tier = S3Tier("s3", **moto.tier_options("no-such-bucket-here"))
    with pytest.raises(errors.ConfigError, match="tiers.s3.bucket: bucket 'no-such-bucket-here' does not exist"):
        tier.check()
    tier.close()


def test_credentials_from_the_environment(moto, s3_bucket, monkeypatch, caplog):
    """Without keys in the config, boto3's chain (here: the environment) supplies them."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret-do-not-log")
    opts = moto.tier_options(s3_bucket)
    del opts["access_key_id"], opts["secret_access_key"]
    tier = S3Tier("s3", **opts)
    tier.check()
    k = new_key()
    tier.put(k, io.BytesIO(b"env"))
    assert tier.read(k, 0, 3) == b"env"
    assert tier.client._request_signer._credentials.access_key == "envkey"
    assert "envsecret-do-not-log" not in caplog.text
    tier.close()
