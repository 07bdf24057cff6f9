"""S3Tier.set_storage_class (archiving in place, tierfs/storage_class.py) against
moto's HTTP server: a CopyObject onto the same key keeps bytes and
metadata; a GLACIER object is restored before it can move back; above the
CopyObject limit the copy goes in parts; the options are checked."""

from __future__ import annotations

import io
import os

import pytest

from tierfs import errors
from tierfs.tiers import s3
from tierfs.tiers.base import new_key
from tierfs.tiers.s3 import S3Tier

MiB = 1 << 20


@pytest.fixture
def tier(moto, s3_bucket):
    t = S3Tier("s3", **moto.tier_options(s3_bucket, prefix="p/", archive_storage_class="glacier",
                                         multipart_threshold="5MiB", multipart_chunksize="5MiB"))
    yield t
    t.close()


def head(moto, bucket: str, key: str) -> dict:
    return moto.client().head_object(Bucket=bucket, Key=f"p/{key}")


def test_class_changes_in_place_and_back_after_a_restore(moto, s3_bucket, tier):
    data = os.urandom(100_000)
    k = new_key()
    tier.put(k, io.BytesIO(data))
    meta = head(moto, s3_bucket, k)["Metadata"]
    assert tier.archive_storage_class == "GLACIER" and tier.storage_class_of(k) == "STANDARD"

    assert tier.set_storage_class(k, "GLACIER") is True
    h = head(moto, s3_bucket, k)
    assert h["StorageClass"] == "GLACIER" and h["Metadata"] == meta   # (the sha256 metadata kept)
    assert [o["Key"] for o in moto.client().list_objects_v2(Bucket=s3_bucket)["Contents"]] == [f"p/{k}"]
    assert tier.set_storage_class(k, "GLACIER") is False              # already there: S3 refuses a no-op copy
    with pytest.raises(errors.Pending):
        tier.set_storage_class(k, "STANDARD")                         # not before a restore
    with pytest.raises(errors.Pending):
        tier.read(k, 0, 10)

    n0 = len(moto.requests)
    assert tier.prepare_restore(k) is True                            # moto restores at once
    assert [r for r in moto.requests[n0:] if r["method"] == "POST" and "restore" in r["query"]]
    assert tier.set_storage_class(k, "STANDARD") is True
    assert tier.storage_class_of(k) == "STANDARD" and "Restore" not in head(moto, s3_bucket, k)
    assert tier.verify(k, __import__("hashlib").sha256(data).hexdigest(), len(data))
    with tier.open_reader(k) as r:
        assert r.read() == data


def test_objects_above_the_copy_limit_are_copied_in_parts(moto, s3_bucket, tier, monkeypatch):
    """S3's CopyObject takes up to 5 GiB: larger objects change class with a
    multipart copy (UploadPartCopy). The limit is lowered to test it."""
    monkeypatch.setattr(s3, "COPY_MAX", 6 * MiB)
    monkeypatch.setattr(s3, "COPY_PART", 5 * MiB)
    data = os.urandom(12 * MiB + 7)
    k = new_key()
    tier.put(k, io.BytesIO(data))
    n0 = len(moto.requests)
    assert tier.set_storage_class(k, "GLACIER_IR") is True
    copies = [r for r in moto.requests[n0:] if r["method"] == "PUT" and "partNumber" in r["query"]]
    assert len(copies) == 3, copies                                   # 5 + 5 + 2 MiB
    assert tier.storage_class_of(k) == "GLACIER_IR"
    with tier.open_reader(k) as r:
        assert r.read() == data
    assert len(moto.client().list_objects_v2(Bucket=s3_bucket)["Contents"]) == 1
    assert not moto.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_missing_object(tier):
    with pytest.raises(errors.ObjectMissing):
        tier.set_storage_class(new_key(), "GLACIER")


@pytest.mark.parametrize("opts, says", [
    (dict(archive_storage_class="COLD"), "archive_storage_class: expected one of GLACIER, DEEP_ARCHIVE"),
    (dict(archive_storage_class="standard"), "archive_storage_class: expected one of"),
    (dict(storage_class="STANDARD_IA", archive_storage_class="standard_ia"), "is the tier's storage_class"),
    (dict(archive_storage_class="DEEP_ARCHIVE", restore_tier="Expedited"), "DEEP_ARCHIVE has no Expedited"),
    (dict(archive_storage_class="GLACIER", restore_days=0), "restore_days: expected a number of days"),
    (dict(archive_storage_class="GLACIER", restore_tier="Fast"), "restore_tier: expected Expedited, Standard"),
    (dict(archive_storage_class=3), "archive_storage_class: expected a non-empty string"),
])
def test_bad_options_are_config_errors(opts, says):
    with pytest.raises(errors.ConfigError) as e:
        S3Tier("s3", bucket="b", **opts)
    assert str(e.value).startswith("tiers.s3.") and says in str(e.value), e.value


def test_only_s3_tiers_archive_in_place():
    from tierfs.tiers.s3 import S3ArchiveTier
    with pytest.raises(errors.ConfigError, match="only for kind = \"s3\""):
        S3ArchiveTier("g", bucket="b", archive_storage_class="DEEP_ARCHIVE")


def test_a_lost_answer_to_the_copy_is_no_failure(moto, s3_bucket, tier):
    """The CopyObject went through but its answer was cut: the retry finds the
    object changed (S3 refuses a GLACIER source, or a no-op copy), and the
    class it wanted is there: done, not an error that fails the job."""
    k = new_key()
    tier.put(k, io.BytesIO(b"x" * 1000))
    moto.inject("PUT", k, truncate_after=20)
    n0 = len(moto.requests)
    assert tier.set_storage_class(k, "GLACIER") is True
    assert [r["fault"] for r in moto.requests[n0:] if r["method"] == "PUT"][0] == "truncated"
    assert tier.storage_class_of(k) == "GLACIER"
