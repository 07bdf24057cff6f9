"""Several mounts, one MongoDB catalog: two daemons on two mountpoints over
the same catalog and the same disk/vault directories (as two hosts sharing
storage would be).

- changes through one mount are seen through the other within the
  documented cache timeouts (attr/entry timeout 1 s, plus the engine's own
  attribute cache, which also expires after attr_timeout on a shared catalog);
- a job queued through A runs exactly once, on whichever mount claims it;
- a mount killed with SIGKILL is reaped by the other after session_timeout:
  its running job goes back to the queue and the survivor finishes it;
- bytes on a GridFS tier written by one mount's job are read through the other.
"""

import glob
import hashlib
import os
import time
import uuid

import pytest

from tierfs.catalog.base import JobKind, JobState, State
from tierfs.catalog.mongo import MongoCatalog
from tierfs.mounts import runtime_key

from tests.conftest import wait_for

pytestmark = [pytest.mark.mount, pytest.mark.mongo]

#: Fast heartbeats so a dead mount is reaped within seconds.
TOP = "heartbeat_interval = 1\nsession_timeout = 4\n"
#: Visibility bound asserted below: entry/attr timeout (1 s) + engine cache (1 s) + slack for a busy machine.
VISIBLE_S = 6.0


def tiers(home: str, archive_delay: float = 0, gridfs_url: str | None = None) -> str:
    os.makedirs(f"{home}/disk", exist_ok=True)
    os.makedirs(f"{home}/vault", exist_ok=True)
    text = (f'[tiers.disk]\nkind = "disk"\npath = "{home}/disk"\n\n'
            f'[tiers.vault]\nkind = "vault"\npath = "{home}/vault"\narchive_delay = {archive_delay}\n')
    if gridfs_url:
        text += f'\n[tiers.gridfs]\nkind = "gridfs"\nurl = "{gridfs_url}"\nbucket = "objs"\n'
    return text


@pytest.fixture
def url(mongod):
    return mongod.url(f"mm{uuid.uuid4().hex[:12]}")


@pytest.fixture
def cat(url):
    c = MongoCatalog(url)
    yield c
    c.close()


def seen_within(pred, what: str) -> float:
    """Seconds until pred() holds (asserting it does within VISIBLE_S)."""
    t0 = time.monotonic()
    wait_for(pred, timeout=VISIBLE_S, interval=0.05, what=what)
    return time.monotonic() - t0


def _per_mount(*mounts) -> dict:
    """How many archives each daemon logged (each writes its own log file)."""
    return {os.path.basename(m.mnt): read(f"{m.home}/state/logs/{runtime_key(m.mnt)}.log")
            .decode(errors="replace").count("archived /") for m in mounts}


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_changes_through_one_mount_are_seen_through_the_other(make_mount, url, tmp_path):
    home = f"{tmp_path}/home"
    a = make_mount(config=TOP + tiers(home), catalog_url=url, name="a")
    b = make_mount(config=TOP + tiers(home), catalog_url=url, name="b")
    lat = {}
    a.sh("mkdir d && printf hello > d/f")
    lat["create"] = seen_within(lambda: os.listdir(b.path("d")) == ["f"] and read(b.path("d", "f")) == b"hello",
                                "B lists and reads the file A created")
    # B now has the dentry, attributes and pages cached: A changes the content.
    a.sh("printf 'hello, world' > d/f")
    lat["overwrite"] = seen_within(lambda: read(b.path("d", "f")) == b"hello, world", "B reads A's new content")
    a.sh("chmod 600 d/f")
    lat["chmod"] = seen_within(lambda: os.stat(b.path("d", "f")).st_mode & 0o777 == 0o600, "B sees A's chmod")
    # rename through B, seen by A (which has the old name cached)
    assert read(a.path("d", "f")) == b"hello, world"
    b.sh("mkdir e && mv d/f e/g")
    lat["rename"] = seen_within(lambda: not os.path.exists(a.path("d", "f")) and os.path.exists(a.path("e", "g")),
                                "A sees B's rename")
    assert read(a.path("e", "g")) == b"hello, world"
    assert os.stat(a.path("e")).st_nlink == 2 and os.stat(a.path("d")).st_nlink == 2
    a.sh("rm e/g && rmdir d")
    lat["unlink"] = seen_within(lambda: not os.path.exists(b.path("e", "g")) and not os.path.exists(b.path("d")),
                                "B sees A's unlink and rmdir")
    assert os.listdir(b.path("e")) == [] and sorted(os.listdir(b.mnt)) == ["e"]
    print("cross-mount visibility (s):", {k: round(v, 2) for k, v in lat.items()})


def test_two_mounts_creating_in_one_directory_at_once(make_mount, url, cat, tmp_path):
    """Both mounts create files in one directory at the same time (their
    transactions conflict on it, and it becomes contended: catalog/mongo.py
    STRIPES): every file is there with its bytes, seen through both mounts,
    the directory's times are those of its last change, and it can be
    emptied and removed."""
    import subprocess
    home = f"{tmp_path}/home"
    a = make_mount(config=TOP + tiers(home), catalog_url=url, name="a")
    b = make_mount(config=TOP + tiers(home), catalog_url=url, name="b")
    a.sh("mkdir shared")
    seen_within(lambda: os.path.isdir(b.path("shared")), "B sees the directory")
    n = 150
    loops = [subprocess.Popen(["bash", "-ec", f'for i in $(seq 1 {n}); do printf "{k}-$i" > shared/{k}-$i; done'],
                              cwd=m.mnt) for k, m in (("a", a), ("b", b))]
    for p in loops:
        assert p.wait(timeout=300) == 0
    names = {f"{m}-{i}" for m in ("a", "b") for i in range(1, n + 1)}
    for k, m in (("A", a), ("B", b)):
        seen_within(lambda: set(os.listdir(m.path("shared"))) == names, f"{k} lists every file")
    for name in sorted(names)[::25]:
        assert read(b.path("shared", name)) == name.encode() == read(a.path("shared", name))
    d = os.stat(a.path("shared")).st_ino
    last = max(cat.lookup(d, name.encode()).crtime_ns for name in names)   # (the writes changed their ctime)
    got = cat.get(d)
    assert got.mtime_ns == got.ctime_ns == last and got.nlink == 2
    print("stripes written:", cat.dir_stripes.count_documents({"_id.dir": d}))
    b.sh("rm shared/*")
    a.sh("sleep 1.5; rmdir shared")   # (A's cached listing expires)
    seen_within(lambda: not os.path.exists(b.path("shared")), "B sees the rmdir")
    assert cat.dir_stripes.count_documents({"_id.dir": d}) == 0


def test_job_queued_through_one_mount_runs_exactly_once(make_mount, url, cat, tmp_path):
    home = f"{tmp_path}/home"
    a = make_mount(config=TOP + "workers = 3\n" + tiers(home), catalog_url=url, name="a")
    b = make_mount(config=TOP + "workers = 3\n" + tiers(home), catalog_url=url, name="b")
    n = 16
    a.sh(f"for i in $(seq 1 {n}); do head -c $((20000 + i)) /dev/urandom > f$i; done")
    sums = {f"f{i}": hashlib.sha256(read(a.path(f"f{i}"))).hexdigest() for i in range(1, n + 1)}
    a.cli("archive", *[a.path(f) for f in sums])
    inos = {f: os.stat(a.path(f)).st_ino for f in sums}
    wait_for(lambda: all(cat.get(i).state == State.ARCHIVED for i in inos.values())
             and not cat.jobs([JobState.PENDING, JobState.RUNNING]), timeout=60, what="every file archived")
    for f, ino in inos.items():
        jobs = cat.jobs(ino=ino)
        assert [(j.kind, j.state, j.attempts) for j in jobs] == [(JobKind.ARCHIVE, JobState.DONE, 1)], (f, jobs)
        moves = [e for e in cat.events(ino) if e.to_state == "archiving"]
        assert len(moves) == 1, (f, moves)
        inode = cat.get(ino)
        assert inode.checksum == sums[f] and inode.location is None
    vault_objects = glob.glob(f"{home}/vault/objects/*/*")
    assert len(vault_objects) == n
    assert {hashlib.sha256(read(p)).hexdigest() for p in vault_objects} == set(sums.values())
    logs = a.log()  # both daemons log into the shared state directory
    for f in sums:
        assert logs.count(f"archived /{f}:") == 1, f
    # both mounts see the new state (the one that did not run a job within the attribute timeout)
    seen_within(lambda: {b.state(f) for f in sums} == {a.state(f) for f in sums} == {"archived"},
                "both mounts report every file archived")
    print("archive jobs run per mount:", _per_mount(a, b))


def test_killed_mount_is_reaped_and_its_job_finished(make_mount, url, cat, tmp_path):
    home = f"{tmp_path}/home"
    # A's vault is slow, so A is in the middle of the archive when it dies.
    a = make_mount(config=TOP + tiers(home, archive_delay=120), catalog_url=url, name="a")
    a.sh("head -c 300000 /dev/urandom > big")
    digest = hashlib.sha256(read(a.path("big"))).hexdigest()
    ino = os.stat(a.path("big")).st_ino
    a.cli("archive", a.path("big"))
    sess_a = next(s.id for s in cat.sessions() if s.pid == a.pid)
    wait_for(lambda: any(j.state == JobState.RUNNING and j.session == sess_a for j in cat.jobs(ino=ino)),
             timeout=20, what="A running the archive")
    b = make_mount(config=TOP + tiers(home), catalog_url=url, name="b")
    t_kill = time.monotonic()
    a.kill()
    wait_for(lambda: cat.jobs(ino=ino)[0].state == JobState.DONE, timeout=45, what="B finishing A's archive")
    took = time.monotonic() - t_kill
    [job] = cat.jobs(ino=ino)
    assert job.attempts == 2 and cat.get(ino).state == State.ARCHIVED  # A's attempt, then B's
    sessions = {s.id: s for s in cat.sessions()}
    assert sessions[sess_a].clean  # reaped
    assert not [s for s in sessions.values() if s.pid == b.pid][0].clean
    assert "reaped dead session " + sess_a in b.log()
    assert len(glob.glob(f"{home}/vault/objects/*/*")) == 1  # A's unfinished copy left nothing behind
    assert cat.get(ino).checksum == digest
    # reading through B restores it from the archive copy B wrote
    assert hashlib.sha256(read(b.path("big"))).hexdigest() == digest
    print(f"killed mount reaped and its job finished {took:.1f}s after SIGKILL (session_timeout 4 s)")


def test_gridfs_object_written_by_one_mount_read_through_the_other(make_mount, url, tmp_path):
    home = f"{tmp_path}/home"
    cfg = TOP + tiers(home, gridfs_url=url)
    a = make_mount(config=cfg, catalog_url=url, name="a")
    b = make_mount(config=cfg, catalog_url=url, name="b")
    a.sh("head -c 3000000 /dev/urandom > blob")
    data = read(a.path("blob"))
    a.cli("migrate", "--wait", "--timeout", "60", "--to", "gridfs", a.path("blob"))
    assert os.getxattr(b.path("blob"), "user.tierfs.tier") == b"gridfs"
    assert read(b.path("blob")) == data
    with open(b.path("blob"), "rb") as f:  # a ranged read in the middle
        f.seek(1_234_567)
        assert f.read(1000) == data[1_234_567:1_235_567]
    from tierfs.tiers.gridfs import GridFSTier
    t = GridFSTier("gridfs", url=url, bucket="objs")
    try:
        assert len(list(t.keys())) == 1
    finally:
        t.close()
    wait_for(lambda: not glob.glob(f"{home}/disk/objects/*/*"), timeout=20, what="disk copy garbage-collected")


def test_move_waits_for_a_writer_on_the_other_mount(make_mount, url, tmp_path):
    """A has the file open for writing; an archive queued through B must not
    switch it underneath (the writes would be lost). Once A closes, the archive
    runs and carries every byte."""
    home = str(tmp_path / "home")
    a = make_mount(config=TOP + "job_retry_delay = 1\n" + tiers(home), catalog_url=url, name="a")
    b = make_mount(config=TOP + "job_retry_delay = 1\n" + tiers(home), catalog_url=url, name="b")
    f = open(a.path("w.bin"), "wb")
    f.write(b"x" * 100_000)
    f.flush()
    seen_within(lambda: os.path.exists(b.path("w.bin")), "file created through A")
    b.cli("archive", b.path("w.bin"))
    time.sleep(4)
    assert b.state("w.bin") == "online"
    f.write(b"y" * 100_000)
    f.close()
    expected = b"x" * 100_000 + b"y" * 100_000
    wait_for(lambda: b.state("w.bin") == "archived", timeout=60, what="archive after A closed")
    time.sleep(1.5)
    assert open(b.path("w.bin"), "rb").read() == expected
    assert hashlib.sha256(open(a.path("w.bin"), "rb").read()).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_unlinked_file_open_on_the_other_mount_stays_readable(make_mount, url, tmp_path):
    home = str(tmp_path / "home")
    a = make_mount(config=TOP + tiers(home), catalog_url=url, name="a")
    b = make_mount(config=TOP + tiers(home), catalog_url=url, name="b")
    data = os.urandom(300_000)
    with open(a.path("u.bin"), "wb") as f:
        f.write(data)
    seen_within(lambda: os.path.exists(b.path("u.bin")), "file created through A")
    with open(b.path("u.bin"), "rb") as held:
        os.unlink(a.path("u.bin"))
        time.sleep(3)  # A forgets the name; its GC must not delete the object B reads
        assert held.read() == data
        assert os.fstat(held.fileno()).st_size == len(data)
    # after B closes it, the object goes
    wait_for(lambda: not glob.glob(f"{home}/disk/objects/*/*"), timeout=30, what="object collected after close")
