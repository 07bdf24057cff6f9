"""Files imported in place leave the disk (issue 18, part 1): on a `disk` tier with
`release_originals = true`, releasing a file whose online copy is its in-place
original (`tierfs release`, an archive without --keep-online, the policy actions)
deletes the original from the user's tree once the archive copy is verified, and a
restore puts the bytes back at the same path (never over a file that appeared
there meanwhile). Without the opt-in the release is refused and the original stays.
`tierfs status` and `tierfs du` count the bytes really on the in-place tier.
Real mounts, the real CLI, a vault archive tier."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from tests.conftest import wait_for
from tests.reliability_util import track, wait_dead
from tests.system.test_import import volume_mount

pytestmark = pytest.mark.mount


def opt_in_mount(make_mount, tmp_path, *, release_originals: bool = True, top: str = "", env=None,
                 catalog_url=None):
    """A mount with the usual disk and vault tiers and a disk tier `volume` rooted at
    tmp_path/volume (the user's tree), with or without release_originals."""
    return volume_mount(make_mount, tmp_path, catalog_url, top=top, env=env,
                        volume=f"release_originals = {'true' if release_originals else 'false'}\n")


def make_project(vol) -> dict[str, bytes]:
    """vol/proj with three files in two directories; returns {relative path: bytes}."""
    files = {"a.bin": os.urandom(300_000), "sub/b.bin": os.urandom(200_000), "c.txt": b"small and kept\n"}
    for rel, data in files.items():
        p = vol / "proj" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(0o640)
    return files


def released_project(m, vol) -> tuple[dict[str, bytes], object]:
    """vol/proj imported in place and proj/a.bin archived (so released), its original gone;
    returns (the project's bytes, the original's path)."""
    files = make_project(vol)
    m.cli("import", "--in-place", str(vol / "proj"), m.path("proj"))
    m.cli("archive", "--wait", "--timeout", "60", m.path("proj", "a.bin"))
    orig = vol / "proj" / "a.bin"
    wait_for(lambda: not orig.exists(), 10, what="the original deleted")
    return files, orig


def bytes_under(root) -> int:
    """Apparent bytes of the regular files under `root` (what `du -b` counts for them)."""
    total = 0
    for d, _, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(d, n))
            if (st.st_mode & 0o170000) == 0o100000:
                total += st.st_size
    return total


def status_bytes(m, tier: str) -> int:
    return json.loads(m.cli("status", m.mnt, "--json").stdout)[0]["tiers"][tier]["bytes"]


def du_bytes(m, tier: str) -> int:
    out = json.loads(m.cli("du", m.mnt, "--by", "tier", "--json").stdout)
    return out["by_tier"].get(tier, {"bytes": 0})["bytes"]


def info(m, rel: str) -> dict:
    return json.loads(os.getxattr(m.path(rel), "user.tierfs.info"))


def test_release_deletes_originals_and_a_read_puts_them_back(make_mount, tmp_path, catalog_url):
    m, vol = opt_in_mount(make_mount, tmp_path, catalog_url=catalog_url)
    files = make_project(vol)
    m.cli("import", "--in-place", str(vol / "proj"), m.path("proj"))
    tree = bytes_under(vol)
    assert status_bytes(m, "volume") == du_bytes(m, "volume") == tree == sum(map(len, files.values()))

    # archive (without --keep-online) releases: the originals leave the tree, their directories stay
    m.cli("archive", "--wait", "--timeout", "60", m.path("proj", "a.bin"), m.path("proj", "sub", "b.bin"))
    assert m.state("proj/a.bin") == m.state("proj/sub/b.bin") == "archived"
    wait_for(lambda: not (vol / "proj" / "a.bin").exists() and not (vol / "proj" / "sub" / "b.bin").exists(), 10,
             what="the collector deleting the released originals")
    assert (vol / "proj" / "sub").is_dir() and (vol / "proj" / "c.txt").read_bytes() == files["c.txt"]
    assert bytes_under(vol) == len(files["c.txt"]) == status_bytes(m, "volume") == du_bytes(m, "volume")
    inf = info(m, "proj/a.bin")
    assert (inf["origin_tier"], inf["origin_location"]) == ("volume", "proj/a.bin"), inf
    assert "in-place original released from volume/proj/a.bin" in m.cli("state", m.path("proj", "a.bin")).stdout
    assert os.stat(m.path("proj", "a.bin")).st_size == len(files["a.bin"])   # still listed, full size

    # a read restores it to the very path, with its bytes, mode and mtime; dual there again
    mtime = os.stat(m.path("proj", "a.bin")).st_mtime_ns
    with open(m.path("proj", "a.bin"), "rb") as f:
        assert f.read() == files["a.bin"]
    orig = vol / "proj" / "a.bin"
    assert orig.read_bytes() == files["a.bin"]
    st = orig.stat()
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, mtime)
    inf = info(m, "proj/a.bin")
    assert (inf["state"], inf["tier"], inf["location"]) == ("dual", "volume", "proj/a.bin"), inf
    assert (inf["origin_tier"], inf["origin_location"]) == (None, None), inf
    # the restore's own object (its second name) is collected; status and du agree with the tree
    wait_for(lambda: status_bytes(m, "volume") == bytes_under(vol), 10, what="status matching the tree")
    assert bytes_under(vol) == len(files["a.bin"]) + len(files["c.txt"]) == du_bytes(m, "volume")

    # `tierfs release` of the dual file deletes it again once its archive copy verifies
    r = m.cli("release", m.path("proj", "a.bin"))
    assert "release: 1 file(s)" in r.stdout
    assert m.state("proj/a.bin") == "archived"
    wait_for(lambda: not orig.exists(), 10, what="the original deleted again")
    assert "online copy on volume released (in-place original proj/a.bin: the collector deletes it)" in \
        m.cli("state", "-v", m.path("proj", "a.bin")).stdout
    # restore -r puts both back
    m.cli("restore", "-r", "--wait", "--timeout", "60", m.path("proj"))
    assert orig.read_bytes() == files["a.bin"]
    assert (vol / "proj" / "sub" / "b.bin").read_bytes() == files["sub/b.bin"]
    wait_for(lambda: status_bytes(m, "volume") == bytes_under(vol) == tree, 10, what="status matching the tree")


def test_without_the_opt_in_release_is_refused_and_originals_stay(make_mount, tmp_path):
    m, vol = opt_in_mount(make_mount, tmp_path, release_originals=False, top=textwrap.dedent("""
        [[policy]]
        name = "free"
        action = "release"
    """))
    files = make_project(vol)
    m.cli("import", "--in-place", str(vol / "proj"), m.path("proj"))
    m.cli("archive", "--wait", "--keep-online", "--timeout", "60", m.path("proj", "a.bin"))
    assert m.state("proj/a.bin") == "dual"

    r = m.cli("release", m.path("proj", "a.bin"), check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    msg = [line for line in r.stderr.splitlines() if "a.bin" in line]
    assert len(msg) == 1 and "imported in place on tier volume" in msg[0] and \
        "set release_originals = true in [tiers.volume]" in msg[0], r.stderr
    assert m.state("proj/a.bin") == "dual"
    assert m.log().count("release_originals = true in [tiers.volume]") == 1, m.log()

    # an archive job without --keep-online archives, and the file stays dual, saying why
    m.cli("archive", "--wait", "--timeout", "60", m.path("proj", "sub", "b.bin"))
    inf = info(m, "proj/sub/b.bin")
    assert (inf["state"], inf["tier"], inf["location"], inf["archive_tier"]) == \
        ("dual", "volume", "proj/sub/b.bin", "vault"), inf
    assert "kept online: its online copy is the in-place original proj/sub/b.bin" in \
        m.cli("state", "-v", m.path("proj", "sub", "b.bin")).stdout
    assert "stays dual" in m.log()
    # a release job (the policy's path) ends with the reason, in one log line; the files stay dual
    m.cli("policy", "run", "--rule", "free", "-c", m.config_path)

    def failed():
        return [j for j in json.loads(m.cli("queue", m.mnt, "--failed", "--json").stdout)
                if j["kind"] == "release"]
    jobs = wait_for(lambda: len(failed()) == 2 and failed(), 30, what="the two release jobs ending")
    assert all("set release_originals = true in [tiers.volume]" in j["last_error"] for j in jobs), jobs
    assert m.state("proj/a.bin") == m.state("proj/sub/b.bin") == "dual"
    assert m.log().count("failed: inode") == 2, m.log()

    for rel, data in files.items():
        assert (vol / "proj" / rel).read_bytes() == data
    assert status_bytes(m, "volume") == du_bytes(m, "volume") == bytes_under(vol)


def test_restore_never_overwrites_a_file_that_took_the_path(make_mount, tmp_path):
    m, vol = opt_in_mount(make_mount, tmp_path)
    files, orig = released_project(m, vol)
    orig.write_bytes(b"another tool wrote a new file here")

    with open(m.path("proj", "a.bin"), "rb") as f:
        assert f.read() == files["a.bin"]
    assert orig.read_bytes() == b"another tool wrote a new file here"
    inf = info(m, "proj/a.bin")
    assert (inf["state"], inf["tier"]) == ("dual", "disk") and "/" not in inf["location"], inf
    assert "not back to proj/a.bin on tier volume: another file is at that path" in m.log()


def test_restore_into_a_path_taken_during_the_copy_keeps_both(make_mount, tmp_path):
    """The path was free when the restore chose it and taken before the copy was linked
    there: the link fails (no overwrite), the bytes stay on the tier as an object."""
    m, vol = opt_in_mount(make_mount, tmp_path)
    files, orig = released_project(m, vol)
    m.stop()
    # the vault reads slowly: the path is taken while the restore copies
    m.extra_config = m.extra_config.replace('kind = "vault"', 'kind = "vault"\nrestore_delay = "2s"')
    m.start()
    m.cli("restore", m.path("proj", "a.bin"))
    wait_for(lambda: m.state("proj/a.bin") == "restoring", 10, what="the restore running")
    orig.write_bytes(b"mine")
    wait_for(lambda: m.state("proj/a.bin") == "dual", 20, what="the restore done")
    assert orig.read_bytes() == b"mine"
    with open(m.path("proj", "a.bin"), "rb") as f:
        assert f.read() == files["a.bin"]
    inf = info(m, "proj/a.bin")
    assert inf["tier"] == "volume" and "/" not in inf["location"], inf
    assert "not put back at proj/a.bin" in m.log()


def test_policy_archive_frees_the_originals(make_mount, tmp_path):
    m, vol = opt_in_mount(make_mount, tmp_path, top=textwrap.dedent("""
        [[policy]]
        name = "to-tape"
        action = "archive"
        to = "vault"
        min_size = "100KB"
    """))
    files = make_project(vol)
    m.cli("import", "--in-place", str(vol / "proj"), m.path("proj"))
    m.cli("policy", "run", "--rule", "to-tape", "-c", m.config_path)
    wait_for(lambda: m.state("proj/a.bin") == m.state("proj/sub/b.bin") == "archived", 30,
             what="the policy archiving the big files")
    wait_for(lambda: bytes_under(vol) == len(files["c.txt"]), 10, what="the originals leaving the tree")
    assert m.state("proj/c.txt") == "online"
    assert status_bytes(m, "volume") == du_bytes(m, "volume") == len(files["c.txt"])


def test_a_crash_before_the_collector_deletes_the_original_is_finished_later(make_mount, tmp_path):
    m, vol = opt_in_mount(make_mount, tmp_path, env={"TIERFS_FAULT": "gc.before_delete"})
    track(m.pid)
    files = make_project(vol)
    m.cli("import", "--in-place", str(vol / "proj"), m.path("proj"))
    m.cli("archive", "--timeout", "60", m.path("proj", "a.bin"))
    wait_dead(m)
    assert (vol / "proj" / "a.bin").read_bytes() == files["a.bin"]   # switched, not yet deleted
    m.env.pop("TIERFS_FAULT")
    m.start()
    track(m.pid)
    assert m.state("proj/a.bin") == "archived"
    wait_for(lambda: not (vol / "proj" / "a.bin").exists(), 10, what="the collector finishing the release")
    with open(m.path("proj", "a.bin"), "rb") as f:
        assert f.read() == files["a.bin"]
    assert (vol / "proj" / "a.bin").read_bytes() == files["a.bin"]


def test_a_crash_during_a_restore_leaves_nothing_at_the_path(make_mount, tmp_path):
    m, vol = opt_in_mount(make_mount, tmp_path)
    files, orig = released_project(m, vol)
    m.stop()
    m.env["TIERFS_FAULT"] = "restore.after_copy"
    m.start()
    track(m.pid)
    m.cli("restore", m.path("proj", "a.bin"))
    wait_dead(m)
    assert not orig.exists()          # the copy was written as an object of the tier, not at the path
    m.env.pop("TIERFS_FAULT")
    m.start()
    track(m.pid)
    with open(m.path("proj", "a.bin"), "rb") as f:
        assert f.read() == files["a.bin"]
    assert orig.read_bytes() == files["a.bin"]
    assert info(m, "proj/a.bin")["location"] == "proj/a.bin"


def test_a_crash_between_putting_back_and_the_switch_is_undone_then_redone(make_mount, tmp_path):
    """The state a daemon killed right after linking a restored copy at the original's
    path (before its switch) leaves: the job's copy on the tier with a second name at the
    path, the file still archived. The next attempt removes that name (only because it
    is the same inode as its own copy), deletes the copy, and restores again."""
    from tests.reliability_util import CatalogView
    from tierfs.catalog.base import JobKind
    m, vol = opt_in_mount(make_mount, tmp_path)
    files, orig = released_project(m, vol)
    m.stop()
    key = "0123456789abcdef0123456789abcdef"
    obj = vol / "objects" / key[:2] / key
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(files["a.bin"])
    os.link(obj, orig)
    view = CatalogView(m.catalog_url)
    try:
        ino = view.ino("proj/a.bin")
        job, _ = view.cat.enqueue(ino, JobKind.RESTORE, target_tier="volume", cause="test")
        view.cat.update_job(job.id, {"dst_key": key})
    finally:
        view.close()
    m.start()
    wait_for(lambda: m.state("proj/a.bin") == "dual", 20, what="the restore done")
    assert orig.read_bytes() == files["a.bin"]
    assert info(m, "proj/a.bin")["location"] == "proj/a.bin"
    wait_for(lambda: not obj.exists(), 10, what="the first attempt's copy deleted")
    assert orig.stat().st_nlink == 1
