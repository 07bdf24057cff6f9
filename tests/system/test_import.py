"""`tierfs import` through the real CLI and real mounts: in place (no byte
copied: source inodes, mtimes and the tiers' object directories checked),
by copy, resuming after an interruption, checksums now or later, and the
errors. Runs on every catalog backend where the fixture takes catalog_url."""

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import wait_for
from tierfs.catalog import open_catalog
from tierfs.importer import InPlaceImport

pytestmark = pytest.mark.mount


def volume_mount(make_mount, tmp_path, catalog_url=None, name="mnt", *, top: str = "", volume: str = "",
                 env: dict | None = None):
    """A mount whose config has a disk tier `volume` rooted at tmp_path/volume
    (besides the usual disk and vault tiers); returns (mount, volume path).
    `top`: more config before the tiers; `volume`: more keys of the volume tier."""
    vol = tmp_path / "volume"
    vol.mkdir(exist_ok=True)
    home = tmp_path / "home"
    for d in ("disk", "vault"):
        (home / d).mkdir(parents=True, exist_ok=True)
    m = make_mount(catalog_url=catalog_url, name=name, env=env, config=textwrap.dedent(top) + textwrap.dedent(f"""
        [tiers.disk]
        kind = "disk"
        path = "{home}/disk"

        [tiers.vault]
        kind = "vault"
        path = "{home}/vault"

        [tiers.volume]
        kind = "disk"
        path = "{vol}"
    """) + textwrap.dedent(volume))
    return m, vol


def make_tree(root, dirs: int, per_dir: int, seed: int = 0) -> dict:
    """dirs x per_dir small files (nested two levels), a symlink and a hard link;
    returns {relative path: (st_ino, st_mtime_ns, st_size)} of the regular files."""
    import random
    rnd = random.Random(seed)
    for d in range(dirs):
        sub = os.path.join(root, f"top{d // 10:02d}", f"sub{d % 10}")
        os.makedirs(sub, exist_ok=True)
        for k in range(per_dir):
            with open(os.path.join(sub, f"f{k:04d}.dat"), "wb") as f:
                f.write(rnd.randbytes(rnd.randrange(0, 3000)))
    os.symlink("top00/sub0/f0000.dat", os.path.join(root, "link"))
    os.link(os.path.join(root, "top00", "sub0", "f0001.dat"), os.path.join(root, "hard"))
    return snapshot(root)


def snapshot(root) -> dict:
    out = {}
    for dp, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dp, f)
            st = os.lstat(p)
            if not os.path.islink(p):
                out[os.path.relpath(p, root)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def objects(tier_root) -> list[str]:
    d = os.path.join(tier_root, "objects")
    return [os.path.join(dp, f) for dp, _, fs in os.walk(d) for f in fs] if os.path.isdir(d) else []


def same_trees(a, b) -> None:
    r = subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_in_place_import_of_10000_files_copies_nothing(make_mount, tmp_path, catalog_url):
    m, vol = volume_mount(make_mount, tmp_path, catalog_url)
    src = vol / "run42"
    before = make_tree(src, 100, 100)
    assert len(before) == 10_001  # + the second name of the hard link
    os.mkdir(m.path("existing"))
    assert os.listdir(m.mnt) == ["existing"]  # the daemon has the root cached now
    disk_objects = objects(m.home + "/disk")
    r = m.cli("import", "--in-place", str(src), m.path("run42"), timeout=600)
    assert "10000 files" in r.stdout and "1 hard links" in r.stdout and "1 symlinks" in r.stdout, r.stdout
    assert "registered in place on tier volume" in r.stdout and "checksums: 10000 computed" in r.stdout
    sys.stderr.write("\n" + r.stdout)
    # not a byte copied: the same source inodes and mtimes, no object on any tier
    assert snapshot(src) == before
    assert objects(vol) == [] and objects(m.home + "/disk") == disk_objects
    assert objects(m.home + "/vault") == []
    # the new entries show in the (cached) root and read back identical through the mount
    assert sorted(os.listdir(m.mnt)) == ["existing", "run42"]
    same_trees(src, m.path("run42"))
    st = os.stat(m.path("run42", "top03", "sub4", "f0007.dat"))
    assert st.st_mtime_ns == os.stat(src / "top03" / "sub4" / "f0007.dat").st_mtime_ns
    assert os.stat(m.path("run42", "hard")).st_ino == os.stat(m.path("run42", "top00", "sub0", "f0001.dat")).st_ino
    assert os.stat(m.path("run42", "hard")).st_nlink == 2
    inf = json.loads(os.getxattr(m.path("run42", "top09", "sub9", "f0099.dat"), "user.tierfs.info"))
    data = (src / "top09" / "sub9" / "f0099.dat").read_bytes()
    assert inf["tier"] == "volume" and inf["location"] == "run42/top09/sub9/f0099.dat"
    assert inf["checksum"] == hashlib.sha256(data).hexdigest() and inf["state"] == "online"
    assert m.cli("find", "--count", m.path("run42")).stdout == "10001\n"  # hard link: two names
    # running it again finds everything registered
    r = m.cli("import", "--in-place", str(src), m.path("run42"), timeout=600)
    assert "0 files" in r.stdout and "10002 entries" in r.stdout and "already there" in r.stdout, r.stdout


def test_in_place_import_resumes_after_an_interruption(make_mount, tmp_path, catalog_url):
    m, vol = volume_mount(make_mount, tmp_path, catalog_url)
    src = vol / "data"
    make_tree(src, 12, 50)
    os.mkdir(m.path("data"))
    # an import killed (^C) in the middle of its third batch
    cat = open_catalog(m.catalog_url)
    seen = []

    def progress(files, nbytes):
        seen.append(files)
        if len(seen) == 250:
            raise KeyboardInterrupt
    job = InPlaceImport(cat, src=str(src), dest_ino=os.stat(m.path("data")).st_ino, tier="volume",
                        tier_root=str(vol), checksums=False, batch=100, progress=progress)
    with pytest.raises(KeyboardInterrupt):
        job.run()
    cat.close()
    partial = int(m.cli("find", "--count", m.path("data")).stdout)
    assert 100 <= partial < 600
    # Open handles: the kernel asks the daemon about them without a lookup, i.e. from its cache.
    top00 = os.open(m.path("data", "top00"), os.O_RDONLY)
    f0010 = os.open(m.path("data", "top00", "sub3", "f0010.dat"), os.O_RDONLY)
    assert len(os.listdir(top00)) == 10
    (src / "top00" / "new").mkdir()  # and new data arrived in the source meanwhile
    (src / "top00" / "new" / "late.dat").write_bytes(b"late")
    # the same command again: the rest, nothing twice; then the deferred checksums
    r = m.cli("import", "--in-place", "--defer-checksums", "--json", str(src), m.path("data"))
    s = json.loads(r.stdout)
    assert s["files"] + s["hardlinks"] == 602 - partial and s["errors"] == [], s
    assert s["checksums_deferred"] == s["files"]
    assert int(m.cli("find", "--count", m.path("data")).stdout) == 602
    same_trees(src, m.path("data"))
    time.sleep(1.1)  # the kernel's attribute cache (attr_timeout)
    st = os.fstat(top00)  # the cached directory: a new subdirectory, the source's times
    assert st.st_nlink == 13 and st.st_mtime_ns == os.stat(src / "top00").st_mtime_ns
    assert json.loads(os.getxattr(f0010, "user.tierfs.info"))["checksum"] is None
    s = json.loads(m.cli("import", "--in-place", "--json", str(src), m.path("data")).stdout)
    assert s["files"] == 0 and s["checksums"] == 601 and s["errors"] == []
    data = (src / "top00" / "sub3" / "f0010.dat").read_bytes()
    assert os.getxattr(f0010, "user.tierfs.checksum").decode() == hashlib.sha256(data).hexdigest()
    os.close(f0010)
    os.close(top00)


def test_imported_files_are_tierfs_files(make_mount, tmp_path):
    """Archive and restore work on them; a write changes the source file; a
    delete through the mount deletes it (as documented)."""
    m, vol = volume_mount(make_mount, tmp_path)
    src = vol / "proj"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(100_000))
    (src / "b.txt").write_bytes(b"hello\n")
    (src / "c.txt").write_bytes(b"keep\n")
    m.cli("import", "--in-place", str(src), m.path("proj"))
    a = (src / "a.bin").read_bytes()
    m.cli("archive", "--wait", "--keep-online", "--timeout", "60", m.path("proj", "a.bin"))
    assert m.state("proj/a.bin") == "dual"
    assert open(m.path("proj", "a.bin"), "rb").read() == a
    with open(m.path("proj", "b.txt"), "ab") as f:
        f.write(b"more\n")
    assert (src / "b.txt").read_bytes() == b"hello\nmore\n"
    os.unlink(m.path("proj", "c.txt"))
    wait_for(lambda: not (src / "c.txt").exists(), 30, what="the garbage collector deleting the source file")
    assert (src / "a.bin").read_bytes() == a


def test_copy_import_and_resume(make_mount, tmp_path, catalog_url):
    m = make_mount(catalog_url=catalog_url)
    src = tmp_path / "src"
    before = make_tree(src, 3, 20)
    os.utime(src / "top00", ns=(10**18, 10**18))
    r = m.cli("import", str(src), m.path("copy"))
    assert "60 files" in r.stdout and "copied" in r.stdout and "checksums: 60 verified" in r.stdout, r.stdout
    same_trees(src, m.path("copy"))
    assert snapshot(src) == before
    assert os.stat(m.path("copy", "top00", "sub1", "f0003.dat")).st_mtime_ns == \
        os.stat(src / "top00" / "sub1" / "f0003.dat").st_mtime_ns
    assert os.stat(m.path("copy", "top00")).st_mtime_ns == 10**18
    assert os.stat(m.path("copy", "hard")).st_ino == os.stat(m.path("copy", "top00", "sub0", "f0001.dat")).st_ino
    assert json.loads(os.getxattr(m.path("copy", "top00", "sub2", "f0000.dat"), "user.tierfs.info"))["tier"] == "disk"
    # again: nothing to copy; a changed source file is copied again
    (src / "top00" / "sub2" / "f0005.dat").write_bytes(b"changed")
    s = json.loads(m.cli("import", "--json", str(src), m.path("copy")).stdout)
    assert s["files"] == 1 and s["skipped"] >= 59 and s["errors"] == [], s
    assert open(m.path("copy", "top00", "sub2", "f0005.dat"), "rb").read() == b"changed"
    assert not [f for f in os.listdir(m.path("copy", "top00", "sub2")) if "partial" in f]


def test_copy_import_to_an_archive_tier(make_mount, tmp_path):
    m = make_mount()
    src = tmp_path / "scans"
    src.mkdir()
    for i in range(3):
        (src / f"s{i}.img").write_bytes(os.urandom(50_000))
    r = m.cli("import", "--copy", "--tier", "vault", str(src), m.path("scans"))
    assert "3 files queued to move to tier vault" in r.stdout, r.stdout
    for i in range(3):
        wait_for(lambda: m.state(f"scans/s{i}.img") == "archived", 60, what="archive after import")
    assert open(m.path("scans", "s2.img"), "rb").read() == (src / "s2.img").read_bytes()


def test_import_errors(make_mount, tmp_path):
    m, vol = volume_mount(make_mount, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("x")
    r = m.cli("import", str(tmp_path / "missing"), m.path("x"), check=False)
    assert r.returncode == 4 and "no such directory" in r.stderr and r.stderr.count("\n") == 1
    r = m.cli("import", str(outside), str(tmp_path / "not-a-mount" / "x"), check=False)
    assert r.returncode == 3 and "not inside a tierfs mount" in r.stderr
    r = m.cli("import", "--in-place", str(outside), m.path("x"), check=False)
    assert r.returncode == 6 and "no disk tier has" in r.stderr and not os.path.exists(m.path("x"))
    r = m.cli("import", "--in-place", "--tier", "vault", str(vol), m.path("x"), check=False)
    assert r.returncode == 6 and 'needs a tier of kind "disk"' in r.stderr
    os.mkdir(m.path("in"))
    r = m.cli("import", m.path("in"), m.path("x"), check=False)
    assert r.returncode == 2 and "inside a tierfs mount" in r.stderr
    r = m.cli("import", str(outside), m.path("no", "such", "parent"), check=False)
    assert r.returncode == 4
    # a name that cannot be an object key: reported, the rest imported, exit 1
    src = vol / "odd"
    src.mkdir()
    (src / "ok.txt").write_text("fine")
    with open(os.fsencode(str(src)) + b"/bad\xff.txt", "wb") as f:
        f.write(b"x")
    r = m.cli("import", "--in-place", str(src), m.path("odd"), check=False)
    assert r.returncode == 1 and "not valid UTF-8" in r.stderr and "--copy" in r.stderr
    assert os.listdir(m.path("odd")) == ["ok.txt"]
    r = m.cli("import", str(src), m.path("odd2"))  # by copy it works
    assert sorted(os.listdir(os.fsencode(m.path("odd2")))) == [b"bad\xff.txt", b"ok.txt"]


def test_release_or_migrate_never_deletes_an_imported_source(make_mount, tmp_path):
    m, vol = volume_mount(make_mount, tmp_path)
    src = vol / "keep"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(10_000))
    (src / "b.bin").write_bytes(os.urandom(10_000))
    m.cli("import", "--in-place", str(src), m.path("keep"))
    m.cli("archive", "--wait", "--timeout", "60", m.path("keep", "a.bin"))  # archive, then release
    m.cli("migrate", "--wait", "--timeout", "60", "--to", "disk", m.path("keep", "b.bin"))
    assert m.state("keep/a.bin") == "dual"   # the tier has no release_originals: the original stays online
    deadline = time.monotonic() + 5  # the garbage collector runs every 2 s
    while time.monotonic() < deadline:
        assert (src / "a.bin").exists() and (src / "b.bin").exists()
        time.sleep(0.2)


def test_in_place_import_resumes_after_files_were_archived(make_mount, tmp_path, catalog_url):
    """Running the import again after some files were archived, released, migrated
    or restored skips them (it used to fail with one error per moved file, for
    ever); a new source file is registered; an unrelated entry of the same name
    is still an error."""
    m, vol = volume_mount(make_mount, tmp_path, catalog_url)
    src = vol / "proj"
    src.mkdir()
    (src / "sub").mkdir()
    names = ["archived.bin", "dual.bin", "migrated.bin", "restored.bin", "sub/kept.bin"]
    for n in names:
        (src / n).write_bytes(os.urandom(30_000))
    m.cli("import", "--in-place", str(src), m.path("proj"))
    m.cli("archive", "--wait", "--timeout", "60", m.path("proj", "archived.bin"), m.path("proj", "restored.bin"))
    m.cli("archive", "--wait", "--keep-online", "--timeout", "60", m.path("proj", "dual.bin"))
    m.cli("migrate", "--wait", "--to", "disk", "--timeout", "60", m.path("proj", "migrated.bin"))
    m.cli("restore", "--wait", "--timeout", "60", m.path("proj", "restored.bin"))
    states = {n: m.state(f"proj/{n}") for n in names}
    # (an archive of an in-place file without release_originals keeps its original: dual)
    assert states == {"archived.bin": "dual", "dual.bin": "dual", "migrated.bin": "online",
                      "restored.bin": "dual", "sub/kept.bin": "online"}, states
    (src / "new.bin").write_bytes(b"arrived later")
    r = m.cli("import", "--in-place", "--json", str(src), m.path("proj"), check=False)
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["errors"] == [], r.stdout + r.stderr
    assert s["files"] == 1 and s["skipped"] == 5, s
    assert {n: m.state(f"proj/{n}") for n in names} == states   # nothing re-registered
    assert open(m.path("proj", "new.bin"), "rb").read() == b"arrived later"
    for n in names:
        assert open(m.path("proj", n), "rb").read() == (src / n).read_bytes(), n
    # an entry made through the mount is not the source file of the same name: still an error
    with open(m.path("proj", "mine.txt"), "wb") as f:
        f.write(b"made through the mount")
    (src / "mine.txt").write_bytes(b"a different source file")
    r = m.cli("import", "--in-place", "--json", str(src), m.path("proj"), check=False)
    s = json.loads(r.stdout)
    assert r.returncode == 1 and len(s["errors"]) == 1 and "mine.txt: another entry" in s["errors"][0], s
    assert open(m.path("proj", "mine.txt"), "rb").read() == b"made through the mount"


def test_in_place_import_of_a_tier_root_names_the_tiers_own_directories(make_mount, tmp_path):
    """The tier's objects/ and tmp/ (made at mount inside the user's tree) are skipped and said to be
    the tier's, not counted with sockets and FIFOs among the ignored entries."""
    m, vol = volume_mount(make_mount, tmp_path)
    assert sorted(os.listdir(vol)) == ["objects", "tmp"]   # made by the mount's tier check
    make_tree(vol / "data", 2, 3)
    os.mkfifo(vol / "data" / "fifo")
    r = m.cli("import", "--in-place", str(vol), m.path("vol"))
    assert f"  objects/ and tmp/ under {vol} are tier volume's own directories (its objects): skipped\n" \
        in r.stdout, r.stdout
    assert "  1 entry ignored (sockets, FIFOs, devices, other file systems)\n" in r.stdout, r.stdout
    assert sorted(os.listdir(m.path("vol"))) == ["data"]
    s = json.loads(m.cli("import", "--in-place", "--json", str(vol), m.path("vol")).stdout)
    assert (s["ignored"], sorted(s["tier_dirs"])) == (1, [str(vol / "objects"), str(vol / "tmp")]), s


@pytest.mark.parametrize("mode", ["copy", "in-place"])
def test_import_progress_bar_ends_at_every_file(make_mount, tmp_path, mode):
    """On a terminal (script(1) gives the command one), the bar's file count ends at 10/10: the last
    file's count came after its last bytes, a step of 0 that click did not draw (it ended at 9/10)."""
    m, vol = volume_mount(make_mount, tmp_path)
    src = vol / "src"
    src.mkdir()
    for i in range(10):
        (src / f"f{i}").write_bytes(os.urandom(1000 + i))
    typescript = tmp_path / "typescript"
    cmd = [sys.executable, "-m", "tierfs.cli", "import", f"--{mode}", str(src), m.path("in")]
    r = subprocess.run(["script", "-qec", " ".join(cmd), str(typescript)], capture_output=True, env=m.env,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), timeout=120)
    assert r.returncode == 0, typescript.read_bytes()[-2000:]
    counts = re.findall(r"(\d+/\d+) files", typescript.read_bytes().decode())
    assert counts and counts[-1] == "10/10", counts
