"""The offline-file contract through a real mount: archive, release,
restore on open (block / error / O_NONBLOCK), states, checksums, retention,
restarts, and the command (copytool) tier. Runs on every catalog backend
where the fixture is any_mount / catalog_url."""

import errno
import hashlib
import json
import os
import subprocess
import threading
import time

import pytest

from tests.conftest import file_info as info, put_file as put, wait_for

pytestmark = pytest.mark.mount




def archive(m, *names, extra=()):
    m.cli("archive", "--wait", "--timeout", "60", *extra, *[m.path(n) for n in names])


def test_archive_then_cat_restores_in_block_mode(any_mount):
    m = any_mount
    data = put(m, "f.bin", 3_000_000)
    archive(m, "f.bin")
    assert m.state("f.bin") == "archived"
    time.sleep(1.1)  # attr_timeout: stat comes from the kernel cache otherwise
    st = os.stat(m.path("f.bin"))
    assert st.st_size == 3_000_000 and st.st_blocks == 0
    assert subprocess.run(["find", m.mnt, "-size", "+2M"], capture_output=True, text=True).stdout.strip() \
        == m.path("f.bin")
    inf = info(m, "f.bin")
    assert inf["archive_tier"] == "vault" and inf["tier"] is None
    assert inf["checksum"] == hashlib.sha256(data).hexdigest()
    out = m.cli("state", m.path("f.bin")).stdout
    assert "archived" in out and "command archive by uid 0" in out and "no restore queued" in out
    before = inf["atime_ns"]
    r = subprocess.run(["cat", m.path("f.bin")], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == data
    assert m.state("f.bin") == "dual"
    assert info(m, "f.bin")["atime_ns"] > before  # restore resets the clock
    # dual: release is instant and keeps the archive copy; a write makes it online again
    m.cli("release", m.path("f.bin"))
    assert m.state("f.bin") == "archived"
    assert open(m.path("f.bin"), "rb").read() == data
    with open(m.path("f.bin"), "r+b") as f:
        f.write(b"X")
    assert m.state("f.bin") == "online" and info(m, "f.bin")["archive_tier"] is None


def test_error_mode_and_nonblocking_open(make_mount):
    m = make_mount(config="restore_mode = \"error\"")
    data = put(m, "e.bin", 100_000)
    archive(m, "e.bin")
    r = subprocess.run(["cat", m.path("e.bin")], capture_output=True)
    assert r.returncode != 0 and b"Resource temporarily unavailable" in r.stderr
    r2 = subprocess.run(["cat", m.path("e.bin")], capture_output=True)  # queues nothing new
    assert (r2.returncode != 0 and b"Resource temporarily unavailable" in r2.stderr) or r2.stdout == data
    wait_for(lambda: m.state("e.bin") == "dual", timeout=30, what="queued restore")
    assert open(m.path("e.bin"), "rb").read() == data
    restores = [j for j in info(m, "e.bin")["jobs"] if j["kind"] == "restore"]
    assert len(restores) == 1, restores


def test_o_nonblock_in_block_mode(mount):
    m = mount
    data = put(m, "n.bin", 50_000)
    archive(m, "n.bin")
    with pytest.raises(BlockingIOError):
        os.open(m.path("n.bin"), os.O_RDONLY | os.O_NONBLOCK)
    wait_for(lambda: m.state("n.bin") == "dual", timeout=30, what="restore queued by O_NONBLOCK open")
    assert open(m.path("n.bin"), "rb").read() == data


def test_ten_concurrent_readers_one_tier_read(make_mount, tmp_path):
    m = _mount_with_vault(make_mount, tmp_path, restore_delay=1.5)
    data = put(m, "c.bin", 2_000_000)
    archive(m, "c.bin")
    reads0 = m.stats()["tiers"]["vault"]["reads"]
    results = []

    def reader():
        results.append(subprocess.run(["cat", m.path("c.bin")], capture_output=True, timeout=60).stdout)
    threads = [threading.Thread(target=reader) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 10 and all(r == data for r in results)
    assert m.stats()["tiers"]["vault"]["reads"] - reads0 == 1


def _mount_with_vault(make_mount, tmp_path, settings: str = "job_retry_delay = 1", **vault_opts):
    """A mount with a disk and a vault tier (vault_opts: archive_delay...); `settings`: top-level keys."""
    opts = "\n".join(f"{k} = {v}" for k, v in vault_opts.items())
    home = tmp_path / "home"
    for d in ("disk", "vault"):
        (home / d).mkdir(parents=True, exist_ok=True)
    return make_mount(config=f"""
        {settings}
        [tiers.disk]
        kind = "disk"
        path = "{home}/disk"
        [tiers.vault]
        kind = "vault"
        path = "{home}/vault"
        {opts}
    """)


def test_slow_restore_does_not_block_other_files(make_mount, tmp_path):
    m = _mount_with_vault(make_mount, tmp_path, restore_delay=4)
    data = put(m, "slow.bin", 100_000)
    other = put(m, "other.bin", 100_000)
    os.mkdir(m.path("dir"))
    archive(m, "slow.bin")
    out = []
    t = threading.Thread(target=lambda: out.append(open(m.path("slow.bin"), "rb").read()))
    t0 = time.monotonic()
    t.start()
    time.sleep(0.5)
    for _ in range(5):
        s = time.monotonic()
        assert open(m.path("other.bin"), "rb").read() == other
        os.listdir(m.mnt)
        open(m.path("dir", "new"), "w").close()
        assert time.monotonic() - s < 1.0
    t.join(30)
    assert out == [data] and time.monotonic() - t0 >= 3.5


def test_block_timeout_gives_eagain_and_restore_continues(make_mount, tmp_path):
    m = _mount_with_vault(make_mount, tmp_path, restore_delay=3)
    m.stop()
    m.extra_config = "block_timeout = 1\n" + m.extra_config
    m.start()
    data = put(m, "t.bin", 10_000)
    archive(m, "t.bin")
    t0 = time.monotonic()
    with pytest.raises(BlockingIOError):
        open(m.path("t.bin"), "rb")
    assert time.monotonic() - t0 < 2.5
    wait_for(lambda: m.state("t.bin") == "dual", timeout=30, what="restore to finish after the timeout")
    assert open(m.path("t.bin"), "rb").read() == data


def test_write_during_archiving_loses_nothing(make_mount, tmp_path):
    m = _mount_with_vault(make_mount, tmp_path, archive_delay=2)
    put(m, "w.bin", 500_000)
    m.cli("archive", m.path("w.bin"))
    wait_for(lambda: m.state("w.bin") == "archiving", timeout=10, what="archiving")
    with open(m.path("w.bin"), "ab") as f:
        f.write(b"appended while archiving")
    expected = open(m.path("w.bin"), "rb").read()
    assert expected.endswith(b"appended while archiving")
    # the first attempt's switch fails (content changed); the retry archives the new content
    wait_for(lambda: m.state("w.bin") == "archived", timeout=60, what="archive retry")
    assert info(m, "w.bin")["checksum"] == hashlib.sha256(expected).hexdigest()
    assert open(m.path("w.bin"), "rb").read() == expected
    # and a file held open for writing is not archived under the writer
    put(m, "held.bin", 1000)
    f = open(m.path("held.bin"), "ab")
    m.cli("archive", m.path("held.bin"))
    time.sleep(3)
    assert m.state("held.bin") == "online"
    f.write(b"tail")
    f.close()
    wait_for(lambda: m.state("held.bin") == "archived", timeout=60, what="archive after close")
    assert open(m.path("held.bin"), "rb").read().endswith(b"tail")


def test_truncate_and_otrunc_need_no_restore(mount):
    m = mount
    put(m, "a.bin", 10_000)
    put(m, "b.bin", 10_000)
    archive(m, "a.bin", "b.bin")
    reads0 = m.stats()["tiers"]["vault"]["reads"]
    with open(m.path("a.bin"), "wb") as f:  # O_TRUNC
        f.write(b"new")
    os.truncate(m.path("b.bin"), 0)
    assert open(m.path("a.bin"), "rb").read() == b"new"
    assert os.path.getsize(m.path("b.bin")) == 0
    assert m.state("a.bin") == "online" and m.state("b.bin") == "online"
    assert m.stats()["tiers"]["vault"]["reads"] == reads0
    # rename and unlink of an archived file need no restore either
    put(m, "c.bin", 10_000)
    archive(m, "c.bin")
    os.rename(m.path("c.bin"), m.path("c2.bin"))
    assert m.state("c2.bin") == "archived"
    os.unlink(m.path("c2.bin"))
    assert m.stats()["tiers"]["vault"]["reads"] == reads0


def test_corrupted_archive_copy_is_lost_and_eio(mount):
    m = mount
    put(m, "x.bin", 200_000)
    archive(m, "x.bin")
    inf = info(m, "x.bin")
    obj = os.path.join(m.home, "vault", "objects", inf["archive_location"][:2], inf["archive_location"])
    with open(obj, "r+b") as f:
        f.seek(1000)
        f.write(b"corrupt")
    with pytest.raises(OSError) as e:
        open(m.path("x.bin"), "rb").read()
    assert e.value.errno == errno.EIO
    assert m.state("x.bin") == "lost"
    assert "lost" in m.log() and "differs from the recorded" in m.log()
    with pytest.raises(OSError) as e:
        open(m.path("x.bin"), "rb")
    assert e.value.errno == errno.EIO


def test_retention_blocks_restore(make_mount):
    m = make_mount(config="allow_unarchive = false")
    put(m, "r.bin", 1000)
    archive(m, "r.bin")
    r = m.cli("restore", m.path("r.bin"), check=False)
    assert r.returncode == 5 and "Permission denied" in r.stderr
    with pytest.raises(PermissionError):
        open(m.path("r.bin"), "rb")
    assert "allow_unarchive = false" in m.log()


def test_permissions_of_requests(make_mount):
    m = make_mount(config="allow_other = true")
    os.chmod(m.mnt, 0o1777)
    put(m, "root.bin", 1000)
    # requests go through setxattr, so the daemon sees the caller's uid (the CLI does exactly this).
    # With mode 0644 the kernel already refuses user.* xattrs to non-writers:
    r = m.sh("setfattr -n user.tierfs.request -v archive root.bin", check=False, user="nobody")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    # a world-writable file passes the kernel's check; tierfs refuses: not the owner, root or an archiver
    os.chmod(m.path("root.bin"), 0o666)
    r = m.sh("setfattr -n user.tierfs.request -v archive root.bin", check=False, user="nobody")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert "archive of inode" in m.log() and "refused: not the owner" in m.log()
    assert m.state("root.bin") == "online"
    m.sh("head -c 5000 /dev/urandom > mine.bin && setfattr -n user.tierfs.request -v archive mine.bin",
         user="nobody")
    wait_for(lambda: m.state("mine.bin") == "archived", timeout=30, what="owner's archive request")


def test_recursive_restore_of_a_dataset(mount):
    m = mount
    os.makedirs(m.path("ds", "sub"))
    files = {}
    for i in range(8):
        name = os.path.join("ds", "sub" if i % 2 else "", f"f{i}")
        files[name] = put(m, name, 20_000 + i)
    m.cli("archive", "-r", "--wait", "--timeout", "60", m.path("ds"))
    assert all(m.state(n) == "archived" for n in files)
    r = m.cli("restore", "-r", "--wait", "--timeout", "60", m.path("ds"))
    assert "8 file(s)" in r.stdout
    assert all(m.state(n) == "dual" for n in files)
    for n, d in files.items():
        assert open(m.path(n), "rb").read() == d


def test_restart_with_queued_jobs_completes_them(make_mount, tmp_path):
    m = _mount_with_vault(make_mount, tmp_path, archive_delay=3)
    datas = {f"q{i}": put(m, f"q{i}", 10_000) for i in range(4)}
    for n in datas:
        m.cli("archive", m.path(n))
    time.sleep(0.5)
    m.stop()  # jobs are pending or mid-copy
    m.extra_config = m.extra_config.replace("archive_delay = 3", "archive_delay = 0")
    m.start()
    wait_for(lambda: all(m.state(n) == "archived" for n in datas), timeout=60, what="queued jobs after restart")
    for n, d in datas.items():
        assert open(m.path(n), "rb").read() == d


def test_command_tier_pending_restore(make_mount, tmp_path):
    store = tmp_path / "tape"
    store.mkdir()
    flag = tmp_path / "operator-mounted-the-tape"
    home = tmp_path / "home"
    (home / "disk").mkdir(parents=True)
    m = make_mount(config=f"""
        restore_mode = "error"
        job_retry_delay = 1
        [tiers.disk]
        kind = "disk"
        path = "{home}/disk"
        [tiers.tape]
        kind = "command"
        archive_command = "cp {{path}} {store}/{{key}}"
        restore_command = "test -e {flag} || {{ echo 'please mount the tape' >&2; exit 75; }}; cp {store}/{{key}} {{path}}"
        delete_command = "rm -f {store}/{{key}}"
    """)
    data = put(m, "t.bin", 30_000)
    archive(m, "t.bin")
    assert m.state("t.bin") == "archived" and len(os.listdir(store)) == 1
    with pytest.raises(BlockingIOError):
        open(m.path("t.bin"), "rb")
    time.sleep(3)
    assert m.state("t.bin") in ("restoring", "archived")
    q = json.loads(m.cli("queue", "--json", m.mnt).stdout)
    assert [j["kind"] for j in q] == ["restore"] and "please mount the tape" in q[0]["last_error"]
    flag.write_text("ok")
    wait_for(lambda: m.state("t.bin") == "dual", timeout=30, what="restore after the operator acted")
    assert open(m.path("t.bin"), "rb").read() == data
    # a write makes the tape copy stale: it is deleted through delete_command
    with open(m.path("t.bin"), "ab") as f:
        f.write(b"more")
    wait_for(lambda: os.listdir(store) == [], timeout=30, what="stale tape copy deleted")


def test_truncate_to_nonzero_restores_first(mount):
    """Regression: truncate held the inode lock while waiting for the restore,
    which needs that lock (a deadlock until block_timeout)."""
    m = mount
    data = put(m, "tr.bin", 100_000)
    archive(m, "tr.bin")
    t0 = time.monotonic()
    os.truncate(m.path("tr.bin"), 1000)
    assert time.monotonic() - t0 < 20
    assert open(m.path("tr.bin"), "rb").read() == data[:1000]
    assert m.state("tr.bin") == "online"
