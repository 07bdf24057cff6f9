"""Issue 5's done-when configuration through one real mount: two disk tiers,
two S3 buckets (moto over HTTP), GridFS (real mongod), a vault and an S3
Glacier archive. Directories are placed on each online tier, files move
between all of them by migrate and archive/restore, bytes verified each time,
and a user denied a tier gets EACCES."""

import hashlib
import json
import os
import uuid

import pytest

from tests.conftest import file_info as info, wait_for

pytestmark = [pytest.mark.mount, pytest.mark.mongo]

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
ONLINE = ("disk", "disk2", "s3a", "s3b", "gfs")


def config(tmp_path, moto, bucket_a, bucket_b, mongo_url) -> str:
    for d in ("disk", "disk2", "vault"):
        os.makedirs(f"{tmp_path}/{d}", exist_ok=True)

    def s3(bucket):
        return (f'bucket = {json.dumps(bucket)}\nendpoint_url = {json.dumps(moto.url)}\nregion = "us-east-1"\n'
                "connect_timeout = 1\nread_timeout = 3\ndeadline = 5\nmax_attempts = 3\n")
    return f"""
        job_retry_delay = 1
        allow_other = true
        [tiers.disk]
        kind = "disk"
        path = "{tmp_path}/disk"
        [tiers.disk2]
        kind = "disk"
        path = "{tmp_path}/disk2"
        allow_users = ["root"]
        [tiers.s3a]
        kind = "s3"
        prefix = "a/"
        {s3(bucket_a)}
        [tiers.s3b]
        kind = "s3"
        prefix = "b/"
        {s3(bucket_b)}
        [tiers.gfs]
        kind = "gridfs"
        url = "{mongo_url}"
        [tiers.vault]
        kind = "vault"
        path = "{tmp_path}/vault"
        [tiers.glacier]
        kind = "s3-archive"
        prefix = "arch/"
        storage_class = "GLACIER"
        restore_tier = "Expedited"
        {s3(bucket_a)}
    """



def test_every_tier_kind_in_one_mount(make_mount, tmp_path, moto, mongod):
    a, b = moto.new_bucket(), moto.new_bucket()
    m = make_mount(config=config(tmp_path, moto, a, b, mongod.url(f"g{uuid.uuid4().hex[:12]}")), env=AWS_ENV)
    # placement: each directory on its tier; cp -r lands the bytes there
    files = {}
    for t in ONLINE:
        os.mkdir(m.path(t))
        m.cli("place", m.path(t), t)
        data = os.urandom(200_000 + len(t))
        src = tmp_path / f"src-{t}"
        src.mkdir()
        (src / "f.bin").write_bytes(data)
        m.sh(f"cp -r '{src}/.' {t}/")
        files[f"{t}/f.bin"] = data
        wait_for(lambda t=t: info(m, f"{t}/f.bin")["tier"] == t, timeout=10, what=f"file on {t}")
        assert f"{t} (from /{t})" in m.cli("place", m.path(t)).stdout
    s3 = moto.client()
    keys = {bk: [o["Key"] for o in s3.list_objects_v2(Bucket=bk).get("Contents", [])] for bk in (a, b)}
    assert any(k.startswith("a/") for k in keys[a]) and any(k.startswith("b/") for k in keys[b]), keys
    # migrate every file around every online tier, and archive/restore through both archives
    for rel, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        ino = os.stat(m.path(rel)).st_ino
        for to in ONLINE:
            m.cli("migrate", "--to", to, "--wait", "--timeout", "60", m.path(rel))
            assert info(m, rel)["tier"] == to
        for arch in ("vault", "glacier"):
            m.cli("archive", "--to", arch, "--wait", "--timeout", "60", m.path(rel))
            inf = info(m, rel)
            assert inf["state"] == "archived" and inf["archive_tier"] == arch and inf["checksum"] == digest
            assert open(m.path(rel), "rb").read() == data  # restore on open (block mode)
            assert m.state(rel) == "dual"
        assert os.stat(m.path(rel)).st_ino == ino
    # a user not in allow_users of disk2 cannot place on it, nor create files under a disk2 directory
    os.chmod(m.mnt, 0o1777)
    os.chmod(m.path("disk2"), 0o1777)
    m.sh("mkdir mine")
    os.chown(m.path("mine"), 65534, 65534)
    r = m.sh("setfattr -n user.tierfs.placement -v disk2 mine", check=False, user="nobody")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = m.sh("touch disk2/theirs", check=False, user="nobody")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert "may not" in m.log() and "tier disk2" in m.log()
