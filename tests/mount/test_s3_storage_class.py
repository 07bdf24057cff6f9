"""Archiving in place on an s3 tier with `archive_storage_class`
(tierfs/storage_class.py), through a real mount against moto's HTTP server: the
object changes storage class in its bucket (no second copy, no second
bucket), the file becomes archived, and reading it restores it
(RestoreObject, then back to STANDARD); instant classes read back at
once; a crash between the catalog switch and the transition leaves the
file restorable and the re-run finishes; a writer is never lost; bad
options are config errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest

from tests.conftest import file_info as info, put_file as put, wait_for
from tests.reliability_util import CatalogView, mk, wait_dead, wait_idle  # noqa: F401 - mk is a fixture
from tierfs import faults

pytestmark = pytest.mark.mount

MiB = 1 << 20
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


def config(tmp_path, moto, bucket: str, archive_class: str = "GLACIER", extra: str = "") -> str:
    os.makedirs(f"{tmp_path}/disk", exist_ok=True)
    return f"""
        default_tier = "s3"
        job_retry_delay = 1
        job_max_attempts = 50

        [tiers.disk]
        kind = "disk"
        path = "{tmp_path}/disk"

        [tiers.s3]
        kind = "s3"
        bucket = {json.dumps(bucket)}
        prefix = "data/"
        endpoint_url = {json.dumps(moto.url)}
        region = "us-east-1"
        archive_storage_class = "{archive_class}"
        restore_tier = "Expedited"
        multipart_threshold = "5MiB"
        multipart_chunksize = "5MiB"
        connect_timeout = 1
        read_timeout = 3
        deadline = 3
        max_attempts = 3
        {extra}
    """


def bucket_objects(moto, bucket: str) -> dict:
    """Every object of the bucket: key -> (size, storage class)."""
    return {o["Key"]: (o["Size"], o.get("StorageClass", "STANDARD"))
            for o in moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])}


def storage_class(moto, bucket: str, key: str) -> str:
    return moto.client().head_object(Bucket=bucket, Key="data/" + key).get("StorageClass", "STANDARD")


def restore_posts(moto, since: int) -> list:
    return [r for r in moto.requests[since:] if r["method"] == "POST" and "restore" in r["query"]]


def cat_sha(m, name: str, timeout: float = 120) -> str:
    r = subprocess.run(["cat", m.path(name)], capture_output=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return hashlib.sha256(r.stdout).hexdigest()


@pytest.fixture
def s3m(make_mount, tmp_path, moto, s3_bucket):
    m = make_mount(config=config(tmp_path, moto, s3_bucket), env=AWS_ENV)
    m.bucket = s3_bucket
    return m


def test_archive_in_place_then_cat_restores(s3m, moto):
    m = s3m
    data = put(m, "cold.bin", 6 * MiB + 5)            # a multipart object
    put(m, "warm.bin", 1000)                           # stays online on the same tier
    inf = info(m, "cold.bin")
    key = inf["location"]
    assert inf["tier"] == "s3" and storage_class(moto, m.bucket, key) == "STANDARD"
    buckets = {b["Name"] for b in moto.client().list_buckets()["Buckets"]}

    m.cli("archive", "--to", "s3", "--wait", "--timeout", "60", m.path("cold.bin"))
    inf = info(m, "cold.bin")
    assert inf["state"] == "archived" and (inf["tier"], inf["location"]) == (None, None)
    assert (inf["archive_tier"], inf["archive_location"]) == ("s3", key)   # the same object
    assert inf["checksum"] == hashlib.sha256(data).hexdigest()
    assert os.stat(m.path("cold.bin")).st_blocks == 0
    warm = "data/" + info(m, "warm.bin")["location"]
    assert bucket_objects(moto, m.bucket) == {"data/" + key: (len(data), "GLACIER"), warm: (1000, "STANDARD")}
    assert {b["Name"] for b in moto.client().list_buckets()["Buckets"]} == buckets     # no second bucket
    # status and du count the archived object as archived bytes of the tier, apart from its online files
    s3 = json.loads(m.cli("status", "--json", m.mnt).stdout)[0]["tiers"]["s3"]
    assert (s3["files"], s3["bytes"]) == (1, 1000), s3
    assert s3["archived_in_place"] == {"files": 1, "bytes": len(data), "storage_class": "GLACIER"}, s3
    assert "(archived in place: GLACIER objects in the same bucket)" in m.cli("status", m.mnt).stdout
    by_tier = json.loads(m.cli("du", "--by", "tier", "--json", m.mnt).stdout)["by_tier"]
    assert by_tier["s3"] == {"role": "online", "files": 1, "bytes": 1000}, by_tier
    assert by_tier["s3 in place"] == {"role": "archive", "files": 1, "bytes": len(data)}, by_tier
    state = m.cli("state", m.path("cold.bin")).stdout
    assert f"archive copy: s3/{key}" in state, state
    r = m.cli("fsck", "--json", "--verify-data", m.mnt, check=False)   # the object is the file's one copy
    assert r.returncode == 0, r.stdout + r.stderr

    moto.set_restore_progress(polls=3)                 # the restore needs a few polls of HEAD
    try:
        n0 = len(moto.requests)
        assert cat_sha(m, "cold.bin") == hashlib.sha256(data).hexdigest()   # block mode: waits for it
    finally:
        moto.set_restore_progress(None)
    assert len(restore_posts(moto, n0)) == 1
    assert "waits: tier s3 is still recalling" in m.log()
    inf = info(m, "cold.bin")
    assert inf["state"] == "online" and (inf["tier"], inf["location"]) == ("s3", key)
    assert inf["archive_tier"] is None and inf["archive_location"] is None
    assert bucket_objects(moto, m.bucket) == {"data/" + key: (len(data), "STANDARD"), warm: (1000, "STANDARD")}
    assert os.stat(m.path("cold.bin")).st_blocks > 0
    # the object itself was read back after the class change: a full GET, not the put's ETag
    gets = [r for r in moto.requests[n0:] if r["method"] == "GET" and key in r["path"] and not r["range"]]
    assert gets, "the restored object was not read back to verify it"


@pytest.mark.parametrize("archive_class", ["GLACIER_IR", "INTELLIGENT_TIERING"])
def test_instant_class_reads_back_at_once(make_mount, tmp_path, moto, s3_bucket, archive_class):
    m = make_mount(config=config(tmp_path, moto, s3_bucket, archive_class), env=AWS_ENV)
    data = put(m, "f", 300_000)
    key = info(m, "f")["location"]
    # no --to: a file on a tier that archives in place is archived there by default
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    assert m.state("f") == "archived" and info(m, "f")["archive_tier"] == "s3"
    assert storage_class(moto, s3_bucket, key) == archive_class
    assert os.stat(m.path("f")).st_blocks == 0

    n0 = len(moto.requests)
    t0 = time.monotonic()
    assert cat_sha(m, "f") == hashlib.sha256(data).hexdigest()
    took = time.monotonic() - t0
    assert not restore_posts(moto, n0)                 # no RestoreObject for these classes
    assert took < 5, f"cat of an {archive_class} file took {took:.1f}s"
    assert m.state("f") == "online" and storage_class(moto, s3_bucket, key) == "STANDARD"
    assert bucket_objects(moto, s3_bucket) == {"data/" + key: (len(data), "STANDARD")}
    print(f"cat of an archived {archive_class} file: {took:.2f}s")


def test_other_tiers_files_are_refused_and_restore_elsewhere_is_a_copy(s3m, moto, tmp_path):
    m = s3m
    os.mkdir(m.path("d"))
    os.setxattr(m.path("d"), "user.tierfs.placement", b"disk")
    on_disk = put(m, "d/local", 1000)
    r = m.cli("archive", "--to", "s3", m.path("d/local"), check=False)
    assert r.returncode == 1, r
    assert "tier s3 archives in place" in r.stderr and "this file is on disk" in r.stderr, r.stderr
    assert "archives only files stored on it" in m.log()
    assert m.state("d/local") == "online" and open(m.path("d/local"), "rb").read() == on_disk
    data = put(m, "f", 5000)
    r = m.cli("archive", "--keep-online", "--to", "s3", m.path("f"), check=False)
    assert r.returncode == 1 and "--keep-online cannot keep an online copy" in r.stderr, r.stderr

    # restore --to another tier copies: dual, the archived object stays in its class; a release drops the copy
    key = info(m, "f")["location"]
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    m.cli("restore", "--to", "disk", "--wait", "--timeout", "60", m.path("f"))
    inf = info(m, "f")
    assert inf["state"] == "dual" and inf["tier"] == "disk" and (inf["archive_tier"], inf["archive_location"]) == \
        ("s3", key)
    assert storage_class(moto, m.bucket, key) == "GLACIER"
    assert open(m.path("f"), "rb").read() == data
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))   # the default for it: release the disk copy
    assert m.state("f") == "archived"
    wait_idle(m.catalog_url, 30)
    assert bucket_objects(moto, m.bucket) == {"data/" + key: (len(data), "GLACIER")}
    r = m.cli("migrate", "--to", "disk", m.path("f"), check=False)
    assert r.returncode == 1 and "is archived: restore it before migrating" in r.stderr, r.stderr
    assert cat_sha(m, "f") == hashlib.sha256(data).hexdigest()
    assert info(m, "f")["tier"] == "s3" and storage_class(moto, m.bucket, key) == "STANDARD"


def test_crash_between_switch_and_transition_leaves_it_restorable(mk, tmp_path, moto, s3_bucket):
    assert set(faults.IN_PLACE_POINTS) == {"archive.before_transition", "restore.after_transition"}
    cfg = config(tmp_path, moto, s3_bucket)
    m = mk(config=cfg, env=dict(AWS_ENV, TIERFS_FAULT="archive.before_transition"))
    data = put(m, "f", 200_000)
    key = info(m, "f")["location"]
    m.cli("archive", m.path("f"), check=False)         # the reply may lose the race with the kill
    wait_dead(m)
    assert "killing the daemon at archive.before_transition" in m.log()

    view = CatalogView(m.catalog_url)
    try:
        inode = view.cat.get(view.ino("f"))
        assert inode.state.value == "archived" and (inode.archive_tier, inode.archive_location) == ("s3", key)
        assert [j.state.value for j in view.jobs(inode.ino)] == ["running"]   # the job is not done
    finally:
        view.close()
    assert storage_class(moto, s3_bucket, key) == "STANDARD"   # readable: a restore would find it at once
    body = moto.client().get_object(Bucket=s3_bucket, Key="data/" + key)["Body"].read()
    assert body == data

    m2 = mk(config=cfg, env=AWS_ENV)                    # the re-run finishes the transition
    wait_idle(m2.catalog_url, 60)
    assert storage_class(moto, s3_bucket, key) == "GLACIER"
    assert "was in the online class (an archive interrupted, or a change outside tierfs): moved to GLACIER now" \
        in m2.log()
    assert m2.state("f") == "archived"
    assert cat_sha(m2, "f") == hashlib.sha256(data).hexdigest()
    assert m2.state("f") == "online" and storage_class(moto, s3_bucket, key) == "STANDARD"


def test_crash_after_the_transition_back_finishes_the_restore(mk, tmp_path, moto, s3_bucket):
    cfg = config(tmp_path, moto, s3_bucket)
    m = mk(config=cfg, env=dict(AWS_ENV, TIERFS_FAULT="restore.after_transition"))
    data = put(m, "f", 200_000)
    key = info(m, "f")["location"]
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    r = subprocess.run(["cat", m.path("f")], capture_output=True, timeout=60)
    assert r.returncode != 0
    wait_dead(m)
    assert "killing the daemon at restore.after_transition" in m.log()
    assert storage_class(moto, s3_bucket, key) == "STANDARD"

    m2 = mk(config=cfg, env=AWS_ENV)
    wait_idle(m2.catalog_url, 60)
    assert m2.state("f") in ("online", "archived")     # the re-run switched it, or recovery settled it
    assert cat_sha(m2, "f") == hashlib.sha256(data).hexdigest()
    inf = info(m2, "f")
    assert inf["state"] == "online" and (inf["tier"], inf["location"]) == ("s3", key)
    assert bucket_objects(moto, s3_bucket) == {"data/" + key: (len(data), "STANDARD")}


def test_a_writer_during_the_archive_loses_nothing(s3m, moto):
    """A file open for writing is not archived under the writer: the job
    waits, the written bytes get a new object, and that one is archived."""
    m = s3m
    put(m, "f", 100_000)
    old_key = info(m, "f")["location"]
    with open(m.path("f"), "r+b") as w:
        m.cli("archive", m.path("f"))
        wait_for(lambda: any("open for writing" in (j.get("last_error") or "") for j in info(m, "f")["jobs"]),
                 30, what="the archive job to wait for the writer")
        assert m.state("f") == "online"
        w.write(b"new bytes at the start")
        new = b"new bytes at the start" + open(m.path("f"), "rb").read()[22:]
    wait_for(lambda: m.state("f") == "archived", 60, what="the archive once the writer closed")
    inf = info(m, "f")
    assert inf["archive_location"] != old_key and inf["checksum"] == hashlib.sha256(new).hexdigest()
    wait_idle(m.catalog_url, 30)                        # the superseded object is collected
    assert bucket_objects(moto, m.bucket) == {"data/" + inf["archive_location"]: (len(new), "GLACIER")}
    assert cat_sha(m, "f") == hashlib.sha256(new).hexdigest()


def test_policy_archives_in_place_only_files_of_the_tier(make_mount, tmp_path, moto, s3_bucket):
    policy = """
        [[policy]]
        name = "cold"
        action = "archive"
        to = "s3"
        min_size = 1
    """
    m = make_mount(config=config(tmp_path, moto, s3_bucket) + policy, env=AWS_ENV)
    os.mkdir(m.path("d"))
    os.setxattr(m.path("d"), "user.tierfs.placement", b"disk")
    put(m, "d/local", 1000)
    data = put(m, "f", 3000)
    m.cli("policy", "run", "--rule", "cold", "-c", m.config_path)
    wait_for(lambda: m.state("f") == "archived", 60, what="the policy's in-place archive")
    assert storage_class(moto, s3_bucket, info(m, "f")["archive_location"]) == "GLACIER"
    assert m.state("d/local") == "online" and not info(m, "d/local")["jobs"]   # not a file of tier s3
    assert cat_sha(m, "f") == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("tier_keys, rule, says", [
    ('archive_storage_class = "COLD"', "", "tiers.s3.archive_storage_class: expected one of GLACIER"),
    ('archive_storage_class = "DEEP_ARCHIVE"\nrestore_tier = "Expedited"', "",
     "tiers.s3.restore_tier: DEEP_ARCHIVE has no Expedited retrieval"),
    ('archive_storage_class = "GLACIER"',
     '[[policy]]\nname = "p"\naction = "archive"\nto = "s3"\ntier = "disk"',
     "policy 'p': tier: tier 's3' archives in place and takes only its own files, not those of 'disk'"),
    ('archive_storage_class = "GLACIER"',
     '[[policy]]\nname = "p"\naction = "archive"\nto = "s3"\nkeep_online = true',
     "policy 'p': keep_online: tier 's3' archives in place"),
])
def test_bad_options_are_config_errors(make_mount, tmp_path, moto, s3_bucket, tier_keys, rule, says):
    cfg = config(tmp_path, moto, s3_bucket).replace('archive_storage_class = "GLACIER"\n        restore_tier = '
                                                    '"Expedited"', tier_keys) + "\n" + rule
    m = make_mount(config=cfg, env=AWS_ENV, start=False)
    m.write_config()
    r = m.cli("mount", m.mnt, "--config", m.config_path, check=False, timeout=60)
    assert r.returncode == 6, (r.stdout, r.stderr)
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_archive_again_puts_a_strayed_object_back_in_the_archive_class(make_mount, tmp_path, moto, s3_bucket):
    """An archived file whose object is in the online class (a transition
    that failed for good, or someone's copy behind tierfs's back): asking
    to archive it again moves the object back (storage_class.finish)."""
    m = make_mount(config=config(tmp_path, moto, s3_bucket, "GLACIER_IR"), env=AWS_ENV)
    data = put(m, "f", 3000)
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    key = info(m, "f")["archive_location"]
    moto.client().copy_object(Bucket=s3_bucket, Key="data/" + key, CopySource={"Bucket": s3_bucket,
                              "Key": "data/" + key}, StorageClass="STANDARD", MetadataDirective="COPY")
    r = m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    assert "archived 1 file, " in r.stdout, r.stdout
    assert storage_class(moto, s3_bucket, key) == "GLACIER_IR" and m.state("f") == "archived"
    assert "was in the online class" in m.log()
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))     # in its class already: nothing copied
    assert m.log().count("was in the online class") == 1
    assert cat_sha(m, "f") == hashlib.sha256(data).hexdigest()
