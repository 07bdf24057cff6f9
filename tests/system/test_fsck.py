"""`tierfs fsck`: every seeded corruption class is found (with the file's
path) and repaired; repairs never lose the bytes; a second run is clean; the
repaired file system mounts and reads right. Also: live mounts are checked
read-only, unreachable tiers are left alone, and `tierfs mount` warns or
refuses after an unclean stop (on_unclean).
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import uuid

import pytest

from tests.conftest import wait_for
from tests.reliability_util import (CatalogView, errors_of, fsck, home_of, mk, sha, start, stop,  # noqa: F401
                                    tiers_config, track, wait_dead, wait_idle, write)
from tierfs import fsck as F
from tierfs.catalog.base import Changes, JobKind, Session, State, Transition, now_ns


def _obj(home: str, tier: str, key: str) -> str:
    return os.path.join(home, tier, "objects", key[:2], key)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _finding(out: dict, check: str, path_part: str, problem_part: str = "") -> dict:
    for f in out["findings"]:
        if f["check"] == check and path_part in f["path"] and problem_part in f["problem"]:
            return f
    raise AssertionError(f"no {check} finding for {path_part!r} ({problem_part!r}) in:\n"
                         + "\n".join(f"{f['check']} {f['path']}: {f['problem']}" for f in out["findings"]))


@pytest.fixture
def populated(mk, catalog_url, tmp_path):
    """A stopped file system with online, dual and archived files; returns (mount, home, digests)."""
    home = home_of(tmp_path)
    m = mk(config="job_retry_delay = 1\n" + tiers_config(home), catalog_url=catalog_url)
    os.makedirs(m.path("d/sub"))
    data = {}
    for name in ("online1", "online2", "grow", "nlink", "orphan", "nameless", "stuck", "gbg", "bad-size",
                 "dual-lose-online", "dual-lose-archive", "archived-lose", "dual-flip-online", "dual-flip-archive"):
        data[name] = write(m.path("d", name), os.urandom(20_000 + len(data) * 1000))
    os.link(m.path("d/nlink"), m.path("d/sub/nlink2"))
    dual = [n for n in data if n.startswith("dual")]
    m.cli("archive", "--keep-online", "--wait", "--timeout", "60", *[m.path("d", n) for n in dual])
    m.cli("archive", "--wait", "--timeout", "60", m.path("d/archived-lose"))
    wait_idle(catalog_url)
    stop(m)
    return m, home, data


def test_seeded_corruption_found_and_repaired(populated, catalog_url, mk):
    m, home, data = populated
    v = CatalogView(catalog_url)
    cat = v.cat
    ino = {n: v.ino(f"d/{n}") for n in data}
    node = {n: cat.get(i) for n, i in ino.items()}
    d_ino = v.ino("d")

    # 1. wrong link counts (a file and a directory)
    cat.update(ino["nlink"], {"nlink": 7})
    cat.update(d_ino, {"nlink": 9})
    # 2. an unlinked inode no mount has open (its object must be collected)
    cat.unlink(d_ino, b"orphan", now_ns())
    # 3. a name pointing at an inode that does not exist
    cat.add_dentry(d_ino, b"ghost", 999_999)
    # 4. an inode with nlink 1 but no name
    pos, parent = next((p, parent) for p, parent, name, i in F.all_dentries(cat) if name == b"nameless")
    cat.remove_dentry(parent, pos)
    # 5. an online object missing (no other copy): lost, reversibly
    os.rename(_obj(home, "disk", node["online1"].location), f"{home}/saved-online1")
    # 6. a dual file's online object missing: it becomes archived
    os.unlink(_obj(home, "disk", node["dual-lose-online"].location))
    # 7. a dual file's archive object missing: it becomes online
    os.unlink(_obj(home, "vault", node["dual-lose-archive"].archive_location))
    # 8. an archived file's archive object missing: lost
    os.rename(_obj(home, "vault", node["archived-lose"].archive_location), f"{home}/saved-archived")
    # 9. the online object longer than the catalog says (a crash before the size was persisted)
    with open(_obj(home, "disk", node["grow"].location), "ab") as f:
        f.write(b"tail written before the crash")
    # 10. a file stuck in `archiving` with no job
    cat.switch(Transition(ino["stuck"], node["stuck"].data_version, (State.ONLINE,),
                          Changes(state=State.ARCHIVING), "test", "seeded"))
    # 11. a daemon that died without unmounting, with a job still running
    dead = Session(id="dead" + uuid.uuid4().hex[:8], host=socket.gethostname(), pid=_dead_pid(),
                   mountpoint=m.mnt, started_ns=now_ns(), heartbeat_ns=now_ns())
    cat.register_session(dead)
    job, _ = cat.enqueue(ino["online2"], JobKind.ARCHIVE, target_tier="vault", cause="seeded")
    assert cat.claim(dead.id).id == job.id
    # 12. a job for a file that no longer exists
    cat.enqueue(123_456, JobKind.RESTORE, cause="seeded")
    # 13. an object on a tier that nothing refers to
    orphan_key = uuid.uuid4().hex
    os.makedirs(os.path.dirname(_obj(home, "disk", orphan_key)), exist_ok=True)
    write(_obj(home, "disk", orphan_key), b"nobody's bytes")
    # 14. a garbage entry for an object a file still uses (GC must not delete it; fsck drops the entry)
    cat.add_garbage([("disk", node["gbg"].location)], "seeded")
    # 15. the online object shorter than the catalog says (bytes lost below tierfs): the size follows the object
    os.truncate(_obj(home, "disk", node["bad-size"].location), 100)
    v.close()

    code, out = fsck(m.config_path)
    assert code == 1, out
    _finding(out, "links", "/d/nlink", "nlink is 7, should be 2")
    _finding(out, "links", "/d", "nlink is 9, should be 3")
    _finding(out, "links", f"inode {ino['orphan']}", "unlinked")
    _finding(out, "dentries", "/d/ghost", "999999")
    _finding(out, "links", f"inode {ino['nameless']}", "no name")
    _finding(out, "online", "/d/online1", "missing")
    _finding(out, "online", "/d/dual-lose-online", "missing")
    _finding(out, "archive", "/d/dual-lose-archive", "missing")
    _finding(out, "archive", "/d/archived-lose", "missing")
    _finding(out, "online", "/d/grow", "bytes")
    _finding(out, "states", "/d/stuck", "archiving")
    _finding(out, "sessions", dead.id, "did not unmount cleanly")
    _finding(out, "jobs", "/d/online2", "dead")
    _finding(out, "jobs", "job", "no longer exists")
    _finding(out, "orphans", orphan_key, "no file refers")
    _finding(out, "garbage", node["gbg"].location, "still uses it")
    _finding(out, "online", "/d/bad-size", "has 100 bytes")
    assert not any(f["repaired"] for f in out["findings"])

    code, out = fsck(m.config_path, "--repair")
    assert code == 1, "online1 and archived-lose stay lost until their objects come back"
    remaining = {f["path"] for f in errors_of(out) if not f["repaired"]}
    assert remaining == {"/d/online1", "/d/archived-lose"}, out
    assert not os.path.exists(_obj(home, "disk", orphan_key))
    assert os.path.exists(_obj(home, "disk", node["gbg"].location))

    v = CatalogView(catalog_url)
    try:
        assert v.cat.get(ino["online1"]).state == State.LOST
        assert v.cat.get(ino["archived-lose"]).state == State.LOST
        assert v.cat.get(ino["dual-lose-online"]).state == State.ARCHIVED
        assert v.cat.get(ino["dual-lose-archive"]).state == State.ONLINE
        assert v.cat.get(ino["stuck"]).state == State.ONLINE
        assert v.cat.get(ino["nlink"]).nlink == 2
        assert v.cat.get_job(job.id).state.value == "pending"
        assert not [s for s in v.cat.sessions() if not s.clean]
    finally:
        v.close()

    # The lost copies come back (a tier remounted): fsck undoes `lost` after verifying them.
    os.rename(f"{home}/saved-online1", _obj(home, "disk", node["online1"].location))
    os.rename(f"{home}/saved-archived", _obj(home, "vault", node["archived-lose"].archive_location))
    code, out = fsck(m.config_path, "--repair")
    assert code == 0, out
    _finding(out, "lost", "/d/online1", "verified copy")
    code, out = fsck(m.config_path, "--verify-data")
    assert code == 0 and not errors_of(out), out

    # Everything reads back right through a mount.
    m2 = mk(config=m.extra_config, catalog_url=catalog_url)
    for n in ("online1", "online2", "archived-lose", "dual-lose-online", "dual-lose-archive", "stuck", "gbg",
              "nlink", "dual-flip-online"):
        assert sha(m2.path("d", n)) == data[n], n
    with open(m2.path("d/grow"), "rb") as f:
        assert f.read().endswith(b"tail written before the crash")
    assert sha(m2.path("lost+found", f"inode-{ino['nameless']}")) == data["nameless"]
    assert os.path.getsize(m2.path("d/bad-size")) == 100
    assert not os.path.exists(m2.path("d/ghost"))
    assert sorted(os.listdir(m2.path("d"))).count("ghost") == 0
    wait_idle(catalog_url)  # the requeued archive of online2 runs
    stop(m2)
    code, out = fsck(m.config_path, "--verify-data")
    assert code == 0 and not errors_of(out), out


def test_verify_data_finds_flipped_bytes(populated, catalog_url, mk):
    """Bit rot that keeps the size is only visible to --verify-data; a dual file
    keeps its good copy, the bad one goes."""
    m, home, data = populated
    v = CatalogView(catalog_url)
    on = v.cat.get(v.ino("d/dual-flip-online"))
    ar = v.cat.get(v.ino("d/dual-flip-archive"))
    v.close()
    assert on.checksum and ar.checksum
    for path in (_obj(home, "disk", on.location), _obj(home, "vault", ar.archive_location)):
        with open(path, "r+b") as f:
            b = f.read(1)
            f.seek(0)
            f.write(bytes([b[0] ^ 0xFF]))
    code, out = fsck(m.config_path)
    assert code == 0, "size-preserving corruption is invisible without --verify-data"
    code, out = fsck(m.config_path, "--verify-data")
    assert code == 1
    _finding(out, "online", "/d/dual-flip-online", "sha256")
    _finding(out, "archive", "/d/dual-flip-archive", "sha256")
    code, out = fsck(m.config_path, "--verify-data", "--repair")
    assert code == 0, out
    m2 = mk(config=m.extra_config, catalog_url=catalog_url)
    assert m2.state("d/dual-flip-online") == "archived"
    assert m2.state("d/dual-flip-archive") == "online"
    assert sha(m2.path("d/dual-flip-online")) == data["dual-flip-online"]   # restored from the good copy
    assert sha(m2.path("d/dual-flip-archive")) == data["dual-flip-archive"]
    wait_idle(catalog_url)
    stop(m2)
    code, out = fsck(m.config_path, "--verify-data")
    assert code == 0 and not errors_of(out), out


def test_unreachable_or_empty_tier_is_left_alone(populated, catalog_url):
    """A vault that is gone, or a disk tier whose storage is not mounted (an empty
    directory), must not turn every file `lost` or its objects into orphans."""
    m, home, data = populated
    os.rename(f"{home}/vault", f"{home}/vault.away")
    code, out = fsck(m.config_path, "--repair")
    assert code == 1
    _finding(out, "tiers", "tier vault", "unavailable")
    assert not [f for f in out["findings"] if f["check"] in ("archive", "lost")], out
    os.rename(f"{home}/vault.away", f"{home}/vault")
    os.rename(f"{home}/disk", f"{home}/disk.away")
    os.makedirs(f"{home}/disk")
    code, out = fsck(m.config_path, "--repair")
    assert code == 1
    _finding(out, "tiers", "tier disk", "holds no objects")
    assert not [f for f in out["findings"] if f["check"] in ("online", "lost")], out
    os.rmdir(f"{home}/disk/objects")
    os.rmdir(f"{home}/disk/tmp")
    os.rmdir(f"{home}/disk")
    os.rename(f"{home}/disk.away", f"{home}/disk")
    code, out = fsck(m.config_path, "--verify-data")
    assert code == 0 and not errors_of(out), out


def test_live_mount_is_checked_read_only(mk, catalog_url, tmp_path):
    home = home_of(tmp_path)
    m = mk(config=tiers_config(home), catalog_url=catalog_url)
    digest = write(m.path("a"), os.urandom(10_000))
    orphan = uuid.uuid4().hex
    os.makedirs(os.path.dirname(_obj(home, "disk", orphan)), exist_ok=True)
    write(_obj(home, "disk", orphan), b"x")
    # MOUNT: the config comes from the daemon serving it
    r = m.cli("fsck", "--json", m.mnt, check=False, env={"TIERFS_CONFIG": "/nonexistent"})
    assert r.returncode == 1, r.stderr
    assert orphan in r.stdout
    r = m.cli("fsck", "--repair", m.mnt, check=False)
    assert r.returncode == 1 and "unmount it" in r.stderr, r.stderr
    assert os.path.exists(_obj(home, "disk", orphan))
    assert sha(m.path("a")) == digest
    stop(m)
    r = m.cli("fsck", "--repair", "-c", m.config_path, check=False)
    assert r.returncode == 0 and "repaired: deleted" in r.stdout, r.stdout + r.stderr
    assert not os.path.exists(_obj(home, "disk", orphan))
    r = m.cli("fsck", "-c", m.config_path)
    assert "0 problem(s)" in r.stdout


def test_outside_any_mount(mk, tmp_path):
    m = mk(start=False)
    m.write_config()
    r = m.cli("fsck", str(tmp_path), check=False)
    assert r.returncode == 3 and "not a tierfs mount" in r.stderr, r.stderr


@pytest.mark.parametrize("mode", ["warn", "refuse"])
def test_mount_after_unclean_stop(mode, mk, catalog_url, tmp_path):
    home = home_of(tmp_path)
    cfg = f'on_unclean = "{mode}"\n' + tiers_config(home)
    m = mk(config=cfg, catalog_url=catalog_url)
    digest = write(m.path("a"), os.urandom(10_000))
    os.kill(m.pid, 9)
    wait_dead(m)
    m2 = mk(config=cfg, catalog_url=catalog_url, start=False)
    m2.write_config()
    r = m2.cli("mount", m2.mnt, "--config", m2.config_path, check=False)
    if mode == "warn":
        assert r.returncode == 0, r.stderr
        m2.pid = int(r.stdout.split("(pid ")[1].split(",")[0])
        track(m2.pid)
        assert "did not unmount cleanly" in m2.log()
        assert sha(m2.path("a")) == digest
        stop(m2)
        return
    assert r.returncode != 0
    line = r.stderr.strip().splitlines()[-1]
    assert "did not unmount cleanly" in line and "tierfs fsck" in line, r.stderr
    code, out = fsck(m2.config_path)
    assert code == 1
    _finding(out, "sessions", "session", "did not unmount cleanly")
    code, out = fsck(m2.config_path, "--repair")
    assert code == 0, out
    start(m2)
    assert sha(m2.path("a")) == digest
    stop(m2)


def test_lost_file_reads_eio(populated, catalog_url, mk):
    """After fsck marks a file lost, reading it fails with EIO at once (no hang, no wrong bytes)."""
    m, home, data = populated
    v = CatalogView(catalog_url)
    node = v.cat.get(v.ino("d/online1"))
    v.close()
    os.unlink(_obj(home, "disk", node.location))
    code, _ = fsck(m.config_path, "--repair")
    assert code == 1
    m2 = mk(config=m.extra_config, catalog_url=catalog_url)
    with pytest.raises(OSError) as ei:
        open(m2.path("d/online1"), "rb").read()
    assert ei.value.errno == errno.EIO
    assert m2.state("d/online1") == "lost"
    assert sha(m2.path("d/online2")) == data["online2"]
    wait_for(lambda: "lost" in m2.log(), 5, what="a log line naming the lost file")


def test_online_copy_missing_short_or_long_through_the_cli(mk, catalog_url, tmp_path):
    """A missing, short or long online object is reported as an error by the plain
    output, --json and --repair alike, with exit 1 (it used to crash with
    KeyError '' in the plain output, and --json counted `errors 0` and exited 0)."""
    home = home_of(tmp_path)
    m = mk(config=tiers_config(home), catalog_url=catalog_url)
    data = {n: write(m.path(n), os.urandom(20_000)) for n in ("missing", "short", "long", "dual")}
    m.cli("archive", "--keep-online", "--wait", "--timeout", "60", m.path("dual"))
    wait_idle(catalog_url)
    stop(m)
    v = CatalogView(catalog_url)
    loc = {n: v.cat.get(v.ino(n)).location for n in data}
    v.close()
    os.unlink(_obj(home, "disk", loc["missing"]))
    os.truncate(_obj(home, "disk", loc["short"]), 100)
    with open(_obj(home, "disk", loc["long"]), "ab") as f:
        f.write(b"written before a crash")
    os.unlink(_obj(home, "disk", loc["dual"]))

    r = m.cli("fsck", "-c", m.config_path, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert f"ERROR [online] /missing: object {loc['missing']} is missing on tier disk" in out, r.stdout
    assert f"ERROR [online] /short: object {loc['short']} on tier disk has 100 bytes, the file 20000" in out
    assert f"ERROR [online] /long: object {loc['long']} on tier disk has 20022 bytes, the file 20000" in out
    assert f"ERROR [online] /dual: object {loc['dual']} is missing on tier disk" in out
    assert out[-1].endswith("4 problem(s), 0 repaired, 4 remaining (run with --repair to fix them)"), out[-1]

    code, js = fsck(m.config_path)
    assert code == 1
    online = [f for f in js["findings"] if f["check"] == "online"]
    assert sorted(f["path"] for f in online) == ["/dual", "/long", "/missing", "/short"], js
    assert {f["severity"] for f in online} == {"error"} and not any(f["repaired"] for f in online)
    assert js["summary"]["errors"] == 4 and js["summary"]["remaining"] == 4, js["summary"]

    r = m.cli("fsck", "--repair", "-c", m.config_path, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert f"ERROR [online] /missing: object {loc['missing']} is missing on tier disk -> repaired: marked lost " \
           "(reads fail with EIO; undone if the object comes back)" in out, r.stdout
    assert any(line.startswith("ERROR [online] /short:") and line.endswith(
        "-> repaired: size set to the object's 100 bytes") for line in out), r.stdout
    assert any(line.startswith("ERROR [online] /long:") and line.endswith(
        "-> repaired: size set to the object's 20022 bytes") for line in out), r.stdout
    assert any(line.startswith("ERROR [online] /dual:") and line.endswith(
        "-> repaired: the file uses its archive copy (archived)") for line in out), r.stdout
    # the only copy of /missing is gone: it stays a problem (lost) until its object comes back
    assert "ERROR [lost] /missing: is lost: no copy of its bytes could be found or verified -> restore it " \
           "from a backup, or delete it" in out
    assert out[-1].endswith("5 problem(s), 4 repaired, 1 remaining"), out[-1]

    code, js = fsck(m.config_path, "--repair")
    assert code == 1 and [(f["check"], f["path"]) for f in errors_of(js)] == [("lost", "/missing")], js
    assert js["summary"]["errors"] == 1 and js["summary"]["remaining"] == 1

    m2 = mk(config=m.extra_config, catalog_url=catalog_url)
    with pytest.raises(OSError) as ei:
        open(m2.path("missing"), "rb").read()
    assert ei.value.errno == errno.EIO
    with open(m2.path("short"), "rb") as f:
        assert len(f.read()) == 100
    with open(m2.path("long"), "rb") as f:
        assert f.read().endswith(b"written before a crash")
    assert m2.state("dual") == "archived"
    assert sha(m2.path("dual")) == data["dual"]   # restored from the archive copy
    stop(m2)


def test_a_finding_refuses_a_misplaced_severity(catalog):
    """The construction that let a repair text land in `severity` now fails where it is written."""
    with pytest.raises(TypeError):
        F.Finding("online", "/f", "object missing", "")
    with pytest.raises(TypeError):
        F.Finding("online", "/f", "object missing", "info")
    f = F.Fsck(catalog, {})
    with pytest.raises(TypeError):
        f.report("online", "/f", "object missing", None, "fix by hand")   # fix and no_fix are keyword-only
    assert f.report("online", "/f", "object missing", no_fix="fix by hand").line() == \
        "ERROR [online] /f: object missing -> fix by hand"
    assert F.as_dict(f.findings[0])["severity"] == "error"


def test_files_imported_in_place_are_checked_by_their_path(mk, catalog_url, tmp_path):
    """An in-place tier lists no objects (its files are keyed by their paths), which
    fsck took for an unmounted tier (exit 1, and nothing on it checked). Now: a
    clean import checks clean, a source file deleted behind tierfs's back is
    reported by its path and repaired like any missing online copy, and the
    originals an archive leaves behind are no orphans."""
    from tests.system.test_import import volume_mount
    m, vol = volume_mount(mk, tmp_path, catalog_url)
    src = vol / "data"
    src.mkdir()
    data = {n: write(str(src / n), os.urandom(10_000)) for n in ("keep", "gone", "dual-gone", "archived")}
    m.cli("import", "--in-place", str(src), m.path("data"))
    m.cli("archive", "--keep-online", "--wait", "--timeout", "60", m.path("data", "dual-gone"))
    m.cli("archive", "--wait", "--timeout", "60", m.path("data", "archived"))
    wait_idle(catalog_url)
    stop(m)
    assert (src / "archived").exists()   # the original stays; nothing refers to it any more

    code, out = fsck(m.config_path, "--verify-data")
    assert code == 0 and not errors_of(out), out
    assert out["summary"]["objects"] >= 5 and out["summary"]["bytes_verified"] >= 50_000, out["summary"]

    os.unlink(src / "gone")
    os.unlink(src / "dual-gone")
    code, out = fsck(m.config_path)
    assert code == 1
    assert sorted((f["check"], f["path"]) for f in errors_of(out)) == [("online", "/data/dual-gone"),
                                                                     ("online", "/data/gone")], out
    assert _finding(out, "online", "/data/gone")["problem"] == f"imported file {src}/gone is missing on tier volume"
    code, out = fsck(m.config_path, "--repair")
    assert code == 1 and [(f["check"], f["path"]) for f in errors_of(out) if not f["repaired"]] == \
        [("lost", "/data/gone")], out
    assert not [f for f in out["findings"] if f["check"] == "orphans"], out
    m2 = mk(config=m.extra_config, catalog_url=catalog_url)
    assert m2.state("data/gone") == "lost" and m2.state("data/dual-gone") == "archived"
    assert sha(m2.path("data", "dual-gone")) == data["dual-gone"]   # restored from its archive copy
    assert sha(m2.path("data", "keep")) == data["keep"]
    stop(m2)
