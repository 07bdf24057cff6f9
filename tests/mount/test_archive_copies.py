"""Archive copies on several tiers (issue 18 part 6) through a real mount: a
vault tier and a command (copytool) tier. Archive to both; a restore reads
the first good copy and names a bad one; lost only when every copy is bad;
a policy with a list of tiers; fsck checks and re-makes every copy; every
drop of the archive copies garbages all of them."""

import errno
import hashlib
import json
import os
import subprocess
import time

import pytest

from tests.conftest import file_info as info, put_file as put, wait_for

pytestmark = pytest.mark.mount


def two_tier_mount(make_mount, tmp_path, settings: str = "", tables: str = ""):
    """disk + vault + tape (a command tier copying to tmp_path/tape)."""
    home, store = tmp_path / "home", tmp_path / "tape"
    for d in (home / "disk", home / "vault", store):
        d.mkdir(parents=True, exist_ok=True)
    m = make_mount(config=f"""
        job_retry_delay = 1
        {settings}
        [tiers.disk]
        kind = "disk"
        path = "{home}/disk"
        [tiers.vault]
        kind = "vault"
        path = "{home}/vault"
        [tiers.tape]
        kind = "command"
        archive_command = "cp {{path}} {store}/{{key}}"
        restore_command = "cp {store}/{{key}} {{path}}"
        delete_command = "rm -f {store}/{{key}}"
        {tables}
    """)
    m.vault = home / "vault"
    m.store = store
    return m


def vault_object(m, key: str):
    return m.vault / "objects" / key[:2] / key


def corrupt(path) -> None:
    """Overwrite 16 bytes of an archive object in place (bit rot on the medium)."""
    os.chmod(path, 0o600)
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"\xff" * 16)


def archive2(m, *names, extra=()):
    m.cli("archive", "--wait", "--timeout", "60", "--to", "vault", "--to", "tape", *extra,
          *[m.path(n) for n in names])


def copies(m, name: str) -> list[list[str]]:
    return info(m, name)["copies"]


def test_archive_to_two_tiers_state_lists_both(make_mount, tmp_path):
    m = two_tier_mount(make_mount, tmp_path)
    data = put(m, "f.bin", 300_000)
    archive2(m, "f.bin")
    assert m.state("f.bin") == "archived"
    cs = copies(m, "f.bin")
    assert [t for t, _ in cs] == ["vault", "tape"]
    (_, vk), (_, tk) = cs
    # both objects hold the file's bytes (the command tier's copy is what the copytool stored)
    assert vault_object(m, vk).read_bytes() == data and (m.store / tk).read_bytes() == data
    inf = info(m, "f.bin")
    assert inf["archive_tier"] == "vault" and inf["archive_location"] == vk
    assert inf["checksum"] == hashlib.sha256(data).hexdigest()
    out = m.cli("state", m.path("f.bin")).stdout
    assert f"archive copy: vault/{vk}" in out and f"archive copy: tape/{tk}" in out, out
    # status counts the archived bytes on both tiers
    tiers = json.loads(m.cli("status", "--json", m.mnt).stdout)[0]["tiers"]
    assert [(tiers[t]["files"], tiers[t]["bytes"]) for t in ("vault", "tape")] == [(1, 300_000)] * 2, tiers
    # a restore reads the primary; the file is dual with both copies kept
    assert open(m.path("f.bin"), "rb").read() == data
    assert m.state("f.bin") == "dual" and copies(m, "f.bin") == cs


def test_restore_falls_back_to_the_second_copy_when_the_first_is_missing(make_mount, tmp_path):
    m = two_tier_mount(make_mount, tmp_path)
    data = put(m, "m.bin", 200_000)
    archive2(m, "m.bin")
    (_, vk), _ = copies(m, "m.bin")
    vault_object(m, vk).unlink()
    r = subprocess.run(["cat", m.path("m.bin")], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == data, r.stderr
    assert m.state("m.bin") == "dual"
    log = m.log()
    assert f"archive copy vault/{vk} is bad" in log, log[-3000:]
    hist = m.cli("state", "-v", m.path("m.bin")).stdout
    assert f"archive copy vault/{vk} bad" in hist, hist


def test_restore_falls_back_when_the_first_copy_is_corrupt(make_mount, tmp_path):
    m = two_tier_mount(make_mount, tmp_path)
    data = put(m, "c.bin", 200_000)
    archive2(m, "c.bin")
    (_, vk), _ = copies(m, "c.bin")
    corrupt(vault_object(m, vk))
    assert open(m.path("c.bin"), "rb").read() == data
    assert f"archive copy vault/{vk} is bad" in m.log()


def test_restore_falls_back_when_the_first_tier_is_away(make_mount, tmp_path):
    m = two_tier_mount(make_mount, tmp_path)
    data = put(m, "a.bin", 100_000)
    archive2(m, "a.bin")
    away = tmp_path / "vault-away"
    os.rename(m.vault, away)   # the vault directory is unmounted: the tier is unavailable, not the copy bad
    try:
        assert open(m.path("a.bin"), "rb").read() == data
    finally:
        os.rename(away, m.vault)
    assert m.state("a.bin") == "dual" and len(copies(m, "a.bin")) == 2


def test_every_copy_bad_makes_the_file_lost(make_mount, tmp_path):
    m = two_tier_mount(make_mount, tmp_path)
    put(m, "l.bin", 100_000)
    archive2(m, "l.bin")
    (_, vk), (_, tk) = copies(m, "l.bin")
    vault_object(m, vk).unlink()
    corrupt(m.store / tk)
    with pytest.raises(OSError) as e:
        open(m.path("l.bin"), "rb").read()
    assert e.value.errno == errno.EIO
    assert m.state("l.bin") == "lost"
    log = m.log()
    assert f"archive copy vault/{vk} is bad" in log and f"archive copy tape/{tk} is bad" in log
    assert "is lost" in log


def test_policy_with_a_list_of_tiers(make_mount, tmp_path):
    m = two_tier_mount(make_mount, tmp_path, tables="""
        [[policy]]
        name = "twice"
        action = "archive"
        to = ["vault", "tape"]
        path = ["*.cold"]
        interval = "1s"
    """)
    data = put(m, "p.cold", 50_000)
    wait_for(lambda: m.state("p.cold") == "archived", timeout=60, what="policy archive to two tiers")
    assert [t for t, _ in copies(m, "p.cold")] == ["vault", "tape"]
    assert "policy rule 'twice'" in info(m, "p.cold")["state_cause"]
    assert open(m.path("p.cold"), "rb").read() == data


def fsck(m, *args):
    r = m.cli("fsck", "--json", "-c", m.config_path, *args, check=False)
    return r.returncode, json.loads(r.stdout)


def test_fsck_verifies_every_copy_and_repair_remakes_a_missing_one(make_mount, tmp_path):
    m = two_tier_mount(make_mount, tmp_path)
    data = put(m, "r.bin", 150_000)
    put(m, "other.bin", 1000)   # the vault keeps an object (an empty one reads as unmounted to fsck)
    archive2(m, "r.bin", "other.bin")
    (_, vk), (_, tk) = copies(m, "r.bin")
    vault_object(m, vk).unlink()   # the vault lost the first copy
    m.stop()
    rc, found = fsck(m, "--verify-data")
    archive = [f for f in found["findings"] if f["check"] == "archive"]
    assert rc != 0 and len(archive) == 1 and vk in archive[0]["problem"], found
    rc, found = fsck(m, "--verify-data", "--repair")
    fixed = [f for f in found["findings"] if f["check"] == "archive"]
    assert fixed[0]["repaired"] and "re-made from the copy on tape" in fixed[0]["action"], fixed
    rc, found = fsck(m, "--verify-data")
    assert rc == 0 and not [f for f in found["findings"] if f["severity"] == "error"], found
    m.start()
    (tier, vk2), (_, tk2) = copies(m, "r.bin")
    assert tier == "vault" and vk2 != vk and tk2 == tk and vault_object(m, vk2).read_bytes() == data
    (m.store / tk).unlink()   # the re-made copy is the one a restore now needs
    assert open(m.path("r.bin"), "rb").read() == data


def test_fsck_corrupt_copy_remade_and_bad_object_garbage(make_mount, tmp_path):
    m = two_tier_mount(make_mount, tmp_path)
    data = put(m, "k.bin", 150_000)
    archive2(m, "k.bin")
    (_, vk), _ = copies(m, "k.bin")
    p = vault_object(m, vk)
    corrupt(p)
    m.stop()
    rc, found = fsck(m, "--verify-data", "--repair")
    fixed = [f for f in found["findings"] if f["check"] == "archive"]
    assert len(fixed) == 1 and fixed[0]["repaired"] and "re-made from the copy on tape" in fixed[0]["action"]
    rc, found = fsck(m, "--verify-data", "--repair")   # the bad object was garbage: deleted now
    rc, found = fsck(m, "--verify-data")
    assert rc == 0 and not [f for f in found["findings"] if f["severity"] == "error"], found
    assert not p.exists()
    m.start()
    (_, vk2), _ = copies(m, "k.bin")
    assert vk2 != vk and vault_object(m, vk2).read_bytes() == data


def objects_gone(m, vk: str, tk: str) -> bool:
    return not vault_object(m, vk).exists() and not (m.store / tk).exists()


def no_orphans(m) -> None:
    _, found = fsck(m)
    assert not [f for f in found["findings"] if f["check"] == "orphans"], found


def test_o_trunc_of_an_archived_file_garbages_both_copies(make_mount, tmp_path):
    m = two_tier_mount(make_mount, tmp_path)
    put(m, "t.bin", 100_000)
    archive2(m, "t.bin")
    (_, vk), (_, tk) = copies(m, "t.bin")
    with open(m.path("t.bin"), "wb") as f:
        f.write(b"new")
    assert m.state("t.bin") == "online" and copies(m, "t.bin") == []
    wait_for(lambda: objects_gone(m, vk, tk), timeout=30, what="both archive copies deleted")
    assert open(m.path("t.bin"), "rb").read() == b"new"
    no_orphans(m)


def test_write_to_dual_garbages_both_copies(make_mount, tmp_path):
    m = two_tier_mount(make_mount, tmp_path)
    put(m, "d.bin", 100_000)
    archive2(m, "d.bin", extra=("--keep-online",))
    assert m.state("d.bin") == "dual"
    (_, vk), (_, tk) = copies(m, "d.bin")
    with open(m.path("d.bin"), "r+b") as f:
        f.write(b"X")
    assert m.state("d.bin") == "online" and copies(m, "d.bin") == []
    wait_for(lambda: objects_gone(m, vk, tk), timeout=30, what="both archive copies deleted")
    no_orphans(m)


def test_unlink_garbages_both_copies(make_mount, tmp_path):
    m = two_tier_mount(make_mount, tmp_path)
    put(m, "u.bin", 100_000)
    archive2(m, "u.bin")
    (_, vk), (_, tk) = copies(m, "u.bin")
    os.unlink(m.path("u.bin"))
    wait_for(lambda: objects_gone(m, vk, tk), timeout=30, what="both archive copies deleted")
    no_orphans(m)


def test_dual_file_gets_only_the_missing_copy(make_mount, tmp_path):
    m = two_tier_mount(make_mount, tmp_path)
    data = put(m, "g.bin", 100_000)
    m.cli("archive", "--wait", "--keep-online", "--to", "vault", m.path("g.bin"))
    [(_, vk)] = copies(m, "g.bin")
    archive2(m, "g.bin")
    (t1, vk2), (t2, tk) = copies(m, "g.bin")
    assert (t1, t2) == ("vault", "tape") and vk2 == vk   # the vault copy is kept, not made again
    assert m.state("g.bin") == "archived" and (m.store / tk).read_bytes() == data
    assert len(list((m.vault / "objects").rglob("*"))) == 2   # one object (and its fan-out directory)


def test_archived_file_gets_the_missing_copy_from_its_archive_copy(make_mount, tmp_path):
    m = two_tier_mount(make_mount, tmp_path)
    data = put(m, "h.bin", 100_000)
    m.cli("archive", "--wait", "--to", "vault", m.path("h.bin"))
    [(_, vk)] = copies(m, "h.bin")
    assert m.state("h.bin") == "archived"
    archive2(m, "h.bin")
    (t1, vk2), (t2, tk) = copies(m, "h.bin")
    assert (t1, vk2, t2) == ("vault", vk, "tape") and m.state("h.bin") == "archived"
    assert (m.store / tk).read_bytes() == data
    vault_object(m, vk).unlink()
    assert open(m.path("h.bin"), "rb").read() == data   # from the new copy
