"""S3 tiers through a real mount, against moto's HTTP server: migrate
disk -> s3 -> disk, archive to an s3-archive (GLACIER) tier and restore on
`cat`, per-directory placement on S3, and the S3 endpoint going down and
coming back (reads fail with EIO within the deadline, disk files stay
readable, archive jobs retry and then succeed)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest

from tests.conftest import file_info as info, put_file as put, wait_for

pytestmark = pytest.mark.mount

MiB = 1 << 20


def s3_config(tmp_path, moto, bucket: str) -> str:
    os.makedirs(f"{tmp_path}/disk", exist_ok=True)
    remote = f"""
        bucket = {json.dumps(bucket)}
        endpoint_url = {json.dumps(moto.url)}
        region = "us-east-1"
        connect_timeout = 1
        read_timeout = 3
        deadline = 3
        max_attempts = 3
    """
    return f"""
        job_retry_delay = 1
        job_max_attempts = 50

        [tiers.disk]
        kind = "disk"
        path = "{tmp_path}/disk"

        [tiers.s3]
        kind = "s3"
        prefix = "online/"
        multipart_threshold = "5MiB"
        multipart_chunksize = "5MiB"
        {remote}

        [tiers.glacier]
        kind = "s3-archive"
        prefix = "archive/"
        storage_class = "GLACIER"
        restore_tier = "Expedited"
        {remote}
    """


#: credentials come from the environment (boto3's chain), not the config file
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


@pytest.fixture
def s3m(make_mount, tmp_path, moto, s3_bucket):
    m = make_mount(config=s3_config(tmp_path, moto, s3_bucket), env=AWS_ENV)
    m.bucket = s3_bucket
    return m




def objects(moto, bucket: str, prefix: str) -> dict:
    """key (without prefix) -> (size, storage class) of the bucket's objects under prefix."""
    out = {}
    for o in moto.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        out[o["Key"][len(prefix):]] = (o["Size"], o.get("StorageClass", "STANDARD"))
    return out


def sha_of_cat(m, name: str, timeout: float = 60) -> str:
    r = subprocess.run(["cat", m.path(name)], capture_output=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return hashlib.sha256(r.stdout).hexdigest()


def sha_direct(m, name: str) -> str:
    """sha256 of the file read with O_DIRECT: from the tier, not the kernel's page cache."""
    r = subprocess.run(["dd", f"if={m.path(name)}", "iflag=direct", "bs=1M", "status=none"], capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return hashlib.sha256(r.stdout).hexdigest()


def test_migrate_disk_s3_disk_keeps_bytes_inode_and_xattrs(s3m, moto):
    m = s3m
    data = put(m, "big.bin", 7 * MiB + 3)   # multipart on s3 (threshold 5MiB)
    small = put(m, "small.bin", 1000)
    os.setxattr(m.path("big.bin"), "user.note", b"kept")
    ino = os.stat(m.path("big.bin")).st_ino
    assert info(m, "big.bin")["tier"] == "disk"

    m.cli("migrate", "--to", "s3", "--wait", "--timeout", "60", m.path("big.bin"), m.path("small.bin"))
    inf = info(m, "big.bin")
    assert inf["tier"] == "s3" and inf["state"] == "online"
    objs = objects(moto, m.bucket, "online/")
    assert objs[inf["location"]] == (len(data), "STANDARD")
    assert objs[info(m, "small.bin")["location"]] == (1000, "STANDARD")
    assert os.stat(m.path("big.bin")).st_ino == ino
    assert os.getxattr(m.path("big.bin"), "user.note") == b"kept"

    # a 4 KiB read in the middle fetches ranges, not the 7 MiB object
    n0 = len(moto.requests)
    with open(m.path("big.bin"), "rb") as f:
        f.seek(5 * MiB + 11)
        assert f.read(4096) == data[5 * MiB + 11: 5 * MiB + 11 + 4096]
    got = [r for r in moto.requests[n0:] if r["method"] == "GET"]
    assert got and all(r["range"] for r in got)
    assert sum(r["bytes"] for r in got) < 2 * MiB
    assert sha_direct(m, "big.bin") == hashlib.sha256(data).hexdigest()
    assert open(m.path("small.bin"), "rb").read() == small

    m.cli("migrate", "--to", "disk", "--wait", "--timeout", "60", m.path("big.bin"))
    inf = info(m, "big.bin")
    assert inf["tier"] == "disk" and os.stat(m.path("big.bin")).st_ino == ino
    assert os.getxattr(m.path("big.bin"), "user.note") == b"kept"
    assert sha_direct(m, "big.bin") == hashlib.sha256(data).hexdigest()
    # the superseded S3 object is garbage-collected
    wait_for(lambda: len(objects(moto, m.bucket, "online/")) == 1, timeout=30, what="s3 object collected")


def test_archive_to_glacier_then_cat_restores(s3m, moto):
    m = s3m
    data = put(m, "cold.bin", 6 * MiB + 5)
    m.cli("archive", "--to", "glacier", "--wait", "--timeout", "60", m.path("cold.bin"))
    inf = info(m, "cold.bin")
    assert inf["state"] == "archived" and inf["archive_tier"] == "glacier"
    assert inf["checksum"] == hashlib.sha256(data).hexdigest()
    assert objects(moto, m.bucket, "archive/") == {inf["archive_location"]: (len(data), "GLACIER")}
    # S3 refuses to serve it as it is
    with pytest.raises(Exception, match="InvalidObjectState"):
        moto.client().get_object(Bucket=m.bucket, Key="archive/" + inf["archive_location"])

    moto.set_restore_progress(polls=3)   # the restore needs a few polls of HEAD (job retries)
    try:
        n0 = len(moto.requests)
        t0 = time.monotonic()
        assert sha_of_cat(m, "cold.bin", timeout=120) == hashlib.sha256(data).hexdigest()
        took = time.monotonic() - t0
    finally:
        moto.set_restore_progress(None)
    assert m.state("cold.bin") == "dual"
    assert info(m, "cold.bin")["tier"] == "disk"
    restores = [r for r in moto.requests[n0:] if r["method"] == "POST" and "restore" in r["query"]]
    assert len(restores) == 1, restores
    assert "waits: tier glacier is still recalling" in m.log()   # the job polled HEAD until ready
    print(f"restore through cat took {took:.1f}s")


def test_placement_on_s3_lands_new_files_in_the_bucket(s3m, moto, tmp_path):
    m = s3m
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(300_000), "sub/empty": b""}
    for rel, b in files.items():
        (src / rel).write_bytes(b)
    os.mkdir(m.path("proj"))
    os.setxattr(m.path("proj"), "user.tierfs.placement", b"s3")
    m.sh(f"cp -r {src}/. proj/")
    for rel, b in files.items():
        assert info(m, f"proj/{rel}")["tier"] == "s3", rel
        assert open(m.path("proj", rel), "rb").read() == b
    want = {info(m, f"proj/{rel}")["location"]: (len(b), "STANDARD") for rel, b in files.items() if b}
    assert objects(moto, m.bucket, "online/") == want   # (an empty file has no object yet)


def test_endpoint_down_eio_within_deadline_and_jobs_retry(s3m, moto):
    m = s3m
    warm = put(m, "warm.bin", 200_000)
    cold = put(m, "cold.bin", 300_000)
    local = put(m, "local.bin", 100_000)
    later = put(m, "later.bin", 150_000)
    m.cli("migrate", "--to", "s3", "--wait", "--timeout", "60", m.path("warm.bin"), m.path("cold.bin"))
    assert open(m.path("warm.bin"), "rb").read() == warm   # S3 reads work (cold.bin stays uncached)

    moto.stop()
    try:
        t0 = time.monotonic()
        r = subprocess.run(["cat", m.path("cold.bin")], capture_output=True, timeout=60)
        took = time.monotonic() - t0
        assert r.returncode != 0 and b"Input/output error" in r.stderr, r
        assert took < 15, f"EIO after {took:.1f}s"
        assert open(m.path("local.bin"), "rb").read() == local   # the disk tier is unaffected
        m.cli("archive", "--to", "glacier", m.path("later.bin"))
        wait_for(lambda: any(j["kind"] == "archive" and j.get("last_error") for j in info(m, "later.bin")["jobs"]),
                 timeout=30, what="a failed archive attempt")
        assert info(m, "later.bin")["state"] in ("online", "archiving")
        assert open(m.path("later.bin"), "rb").read() == later
    finally:
        moto.start()
    wait_for(lambda: info(m, "later.bin")["state"] == "archived", timeout=60, what="archive after the endpoint came back")
    assert objects(moto, m.bucket, "archive/") == {info(m, "later.bin")["archive_location"]: (len(later), "GLACIER")}
    assert open(m.path("cold.bin"), "rb").read() == cold
    assert "testing-secret" not in m.log()   # credentials are never logged
    print(f"EIO from a down endpoint after {took:.1f}s")


@pytest.mark.mongo
def test_migrate_through_disk_s3_gridfs_disk(make_mount, tmp_path, moto, s3_bucket, mongod):
    """Bytes move between every online kind; path, inode and xattrs stay."""
    import uuid
    cfg = s3_config(tmp_path, moto, s3_bucket) + f"""
        [tiers.gfs]
        kind = "gridfs"
        url = "{mongod.url(f"g{uuid.uuid4().hex[:12]}")}"
    """
    m = make_mount(config=cfg, env=AWS_ENV)
    os.mkdir(m.path("d"))
    data = put(m, "d/f.bin", 3 * MiB + 17)
    os.setxattr(m.path("d/f.bin"), "user.note", b"travels")
    ino = os.stat(m.path("d/f.bin")).st_ino
    for to in ("s3", "gfs", "disk"):
        m.cli("migrate", "--to", to, "--wait", "--timeout", "60", m.path("d/f.bin"))
        inf = info(m, "d/f.bin")
        assert inf["tier"] == to and inf["checksum"] == hashlib.sha256(data).hexdigest()
        assert os.stat(m.path("d/f.bin")).st_ino == ino
        assert os.getxattr(m.path("d/f.bin"), "user.note") == b"travels"
        n0 = len(moto.requests)
        assert sha_direct(m, "d/f.bin") == hashlib.sha256(data).hexdigest()
        s3_bytes = sum(r["bytes"] for r in moto.requests[n0:] if r["method"] == "GET")
        assert (s3_bytes >= len(data)) == (to == "s3"), (to, s3_bytes)   # read from the tier it is on
    wait_for(lambda: objects(moto, s3_bucket, "online/") == {}, timeout=30, what="s3 copy collected")


def _s3_default(tmp_path, moto, bucket: str) -> str:
    return 'default_tier = "s3"\n' + s3_config(tmp_path, moto, bucket)


def test_failed_upload_never_serves_zeros(make_mount, tmp_path, moto, s3_bucket):
    """Regression (issue 14): with the endpoint down, close() said EIO but the file kept its
    new size with no object behind it and read back as NULs. Now: close/fsync fail with EIO,
    the written bytes stay in the staged copy and reads serve them, the catalog keeps the
    last uploaded state, status counts the pending upload, and the bytes are uploaded once
    the endpoint is back; a remount in between uploads them too."""
    m = make_mount(config=_s3_default(tmp_path, moto, s3_bucket), env=AWS_ENV)
    old = put(m, "f", 1000)                              # uploaded while the endpoint is up
    moto.stop()
    try:
        fd = os.open(m.path("f"), os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"hello world\n")
        with pytest.raises(OSError) as ei:
            os.close(fd)
        assert ei.value.errno == 5                      # EIO at close: the upload failed
        fd = os.open(m.path("new"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"brand new\n")
        with pytest.raises(OSError):
            os.close(fd)
        for name, want in (("f", b"hello world\n"), ("new", b"brand new\n")):
            assert os.stat(m.path(name)).st_size == len(want)
            r = subprocess.run(["od", "-c", m.path(name)], capture_output=True, timeout=30)
            assert r.returncode == 0 and b"\\0" not in r.stdout, r
            assert open(m.path(name), "rb").read() == want       # the written bytes, never zeros
        st = m.stats()
        assert st["pending_uploads"] == 2, json.dumps(st)
        status = m.cli("status", m.mnt).stdout
        assert "2 file(s) wait" in status and "upload" in status, status
        from tests.reliability_util import CatalogView
        v = CatalogView(m.catalog_url)
        try:
            f = v.cat.lookup(1, b"f")
            assert (f.size, f.location) != (12, None) and f.size == len(old), f    # no size without its bytes
            new = v.cat.lookup(1, b"new")
            assert new.size == 0 and new.location is None, new
        finally:
            v.close()
    finally:
        moto.start()
    wait_for(lambda: m.stats()["pending_uploads"] == 0, 60, what="the pending uploads once the endpoint is back")
    m.stop()
    m.start()
    assert open(m.path("f"), "rb").read() == b"hello world\n"
    assert open(m.path("new"), "rb").read() == b"brand new\n"
    assert "uploaded when the tier answers" in m.log()


def test_upload_pending_at_unmount_goes_up_at_next_mount(make_mount, tmp_path, moto, s3_bucket):
    m = make_mount(config=_s3_default(tmp_path, moto, s3_bucket), env=AWS_ENV)
    moto.stop()
    try:
        fd = os.open(m.path("f"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"kept across the remount\n")
        with pytest.raises(OSError):
            os.close(fd)
        m.stop()                                          # the last upload fails too: kept with a manifest
        assert "for the next mount" in m.log()
    finally:
        moto.start()
    m.start()
    wait_for(lambda: m.stats()["pending_uploads"] == 0, 30, what="the upload of the previous mount's bytes")
    assert open(m.path("f"), "rb").read() == b"kept across the remount\n"
    assert "uploaded the bytes the previous mount could not" in m.log()


def test_restore_to_a_down_endpoint_waits_with_the_copy_error(s3m, moto, tmp_path):
    """A restore to S3 while the endpoint is down: the job waits, and what `tierfs queue` shows is
    why the copy cannot be made (the S3 tier is unreachable), not the failure of the cleanup of an
    earlier attempt's object (issue 14); it completes when the endpoint is back."""
    m = s3m
    data = put(m, "f", 100_000)
    m.cli("archive", "--to", "glacier", "--wait", "--timeout", "60", m.path("f"))
    moto.stop()
    try:
        m.cli("restore", "--to", "s3", m.path("f"))
        wait_for(lambda: [r for r in json.loads(m.cli("queue", "--json", m.mnt).stdout)
                          if r["kind"] == "restore" and r["state"] == "waiting"], 60, what="a waiting restore")
        row = [r for r in json.loads(m.cli("queue", "--json", m.mnt).stdout) if r["kind"] == "restore"][0]
        assert "delete" not in row["last_error"] and "s3" in row["last_error"], row
        assert row["attempts"] <= 1, row
    finally:
        moto.start()
    wait_for(lambda: info(m, "f")["state"] == "dual", 90, what="the restore once the endpoint is back")
    assert info(m, "f")["tier"] == "s3"
    assert open(m.path("f"), "rb").read() == data
