"""`tierfs archive|restore|release|migrate` through a real mount: what --wait
waits for, deep trees, and the messages of refused requests (issue 14,
defects 6, 7 and 11)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import time

import pytest

from tests.conftest import file_info as info, put_file as put, wait_for
from tests.mount.test_archive import _mount_with_vault
from tierfs import client

pytestmark = pytest.mark.mount

REQ = "user.tierfs.request"


# ---- --wait: the jobs it queued, not a target state ----------------------------------------
def test_archive_wait_returns_when_readers_restore_the_files_meanwhile(make_mount, tmp_path):
    """Each file is read (restore on open: `dual`) as soon as it is archived: --wait waited for
    `archived` and hung until its timeout although every job succeeded."""
    m = _mount_with_vault(make_mount, tmp_path, archive_delay=0.3)
    names = [f"f{i}" for i in range(6)]
    data = {n: put(m, n, 1000 + i) for i, n in enumerate(names)}
    restored: set[str] = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set() and len(restored) < len(names):
            for n in names:
                if n not in restored and m.state(n) == "archived":
                    with open(m.path(n), "rb") as f:   # block mode: waits for the restore
                        assert f.read() == data[n]
                    restored.add(n)
            time.sleep(0.005)
    t = threading.Thread(target=reader)
    t.start()
    t0 = time.monotonic()
    try:
        r = m.cli("archive", "--wait", "--timeout", "30", *[m.path(n) for n in names], check=False, timeout=60)
    finally:
        stop.set()
        t.join()
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    assert "archived 6 files, 6" in r.stdout, r.stdout
    assert restored == set(names) and {m.state(n) for n in names} == {"dual"}
    assert took < 20, took


def test_a_file_with_a_long_job_history_shows_and_waits_for_its_current_job(make_mount, tmp_path):
    """user.tierfs.info listed a file's 20 oldest jobs (restores first): after 11 archive/restore
    cycles its current job was missing from `tierfs state`, and --wait could not find it."""
    m = _mount_with_vault(make_mount, tmp_path, archive_delay=0.2)

    def rewrite() -> bytes:   # online again (a dual file's archive would only drop its online copy)
        return put(m, "h.bin", 1000)
    for _ in range(11):   # 22 jobs
        data = rewrite()
        os.setxattr(m.path("h.bin"), REQ, b"archive")
        wait_for(lambda: m.state("h.bin") == "archived", timeout=30, what="archived")
        assert open(m.path("h.bin"), "rb").read() == data   # restore on open
    rewrite()
    os.setxattr(m.path("h.bin"), REQ, b"archive")
    jobs = info(m, "h.bin")["jobs"]
    assert len(jobs) == 20
    assert [j["id"] for j in jobs] == sorted((j["id"] for j in jobs), reverse=True)   # newest first
    # the current job is listed (what `tierfs state` prints)
    assert jobs[0]["kind"] == "archive" and jobs[0]["state"] in ("pending", "running"), jobs[0]
    wait_for(lambda: m.state("h.bin") == "archived", timeout=30, what="archived")
    rewrite()
    r = m.cli("archive", "--wait", "--timeout", "30", m.path("h.bin"))
    assert "archived 1 file, 1.0kB in " in r.stdout, r.stdout
    assert m.state("h.bin") == "archived"


def test_wait_reports_failed_jobs_and_what_needed_nothing(make_mount, tmp_path):
    m = _mount_with_vault(make_mount, tmp_path, "job_retry_delay = 0.2\njob_max_attempts = 2")
    home = tmp_path / "home"
    put(m, "a", 10)
    put(m, "b", 10)
    m.cli("archive", "--wait", m.path("a"))
    for obj in (home / "vault" / "objects").glob("*/*"):
        obj.unlink()                                  # the archive copy is gone: a failure no wait heals
    r = m.cli("restore", "--wait", "--timeout", "60", m.path("a"), m.path("b"), check=False, timeout=120)
    # b is online: its restore needs no job; a's fails (its only copy is missing: the file is lost)
    assert r.returncode == client.EXIT_FAILED, r.stdout + r.stderr
    assert "restored 0 files, 0B in " in r.stdout and "s (1 already online); 1 failed" in r.stdout, r.stdout
    assert f"{m.path('a')}: restore failed: " in r.stderr and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize("case,expected", [
    # (jobs before the request, jobs after it) -> the job carrying it out
    ("new job still pending", 7),
    ("joined the active job", 5),
    ("new job already done", 7),
    ("joined a job that finished since", 5),
    ("nothing needed", None),
])
def test_which_job_carries_out_a_request(case, expected):
    old = dict(id=3, kind="archive", state="done")
    restore = dict(id=6, kind="restore", state="pending")
    before, after = {
        "new job still pending": ([old, restore], [old, restore, dict(id=7, kind="archive", state="pending")]),
        "joined the active job": ([old, dict(id=5, kind="archive", state="running")],
                                  [old, dict(id=5, kind="archive", state="running")]),
        "new job already done": ([old], [old, dict(id=7, kind="archive", state="done")]),
        "joined a job that finished since": ([old, dict(id=5, kind="archive", state="pending")],
                                             [old, dict(id=5, kind="archive", state="failed")]),
        "nothing needed": ([old, restore], [old, restore]),
    }[case]
    assert client.job_for_request({"jobs": before}, {"jobs": after}, "archive") == expected


# ---- -r on deep trees --------------------------------------------------------------------------
def test_recursive_commands_on_a_1000_level_tree(make_mount, tmp_path):
    """os.walk recursed once per level: RecursionError at about 1,000 levels."""
    m = _mount_with_vault(make_mount, tmp_path)
    depth = 1000
    rel = "/".join(["d"] * depth)   # 2,000 bytes: within PATH_MAX
    subprocess.run(["mkdir", "-p", m.path(rel)], check=True, timeout=120)   # os.makedirs recurses too
    put(m, rel + "/leaf", 100)
    put(m, "/".join(["d"] * 500) + "/middle", 100)
    top = m.path("d")
    r = m.cli("state", "-r", "--json", top)
    rows = json.loads(r.stdout)
    assert [os.path.basename(row["path"]) for row in rows] == ["middle", "leaf"]
    # (restore -r walks the same way: each walk of this tree costs about 5 s through FUSE here)
    r = m.cli("archive", "-r", "--wait", "--timeout", "60", top)
    assert "archive: 2 file(s)" in r.stdout and "archived 2 files, 200B in " in r.stdout, r.stdout
    assert m.state(rel + "/leaf") == "archived"


# ---- refused requests: the right errno, and a CLI message that says why ------------------------
def test_empty_or_valueless_options_are_refused(mount):
    m = mount
    put(m, "f", 10)
    for value in (b"archive to=", b"archive to", b"restore to=", b"migrate to=", b"archive keep_online=yes"):
        with pytest.raises(OSError) as ei:
            os.setxattr(m.path("f"), REQ, value)
        assert ei.value.errno == errno.EINVAL, value
    assert m.state("f") == "online" and info(m, "f")["jobs"] == []
    assert "to= needs a tier name" in m.log()


def test_restore_to_a_bad_tier_is_refused_even_when_online(mount):
    m = mount
    put(m, "f", 10)
    for bad in (b"restore to=/etc", b"restore to=vault"):   # no such tier; an archive tier
        with pytest.raises(OSError) as ei:
            os.setxattr(m.path("f"), REQ, bad)
        assert ei.value.errno == errno.EINVAL, bad
    os.setxattr(m.path("f"), REQ, b"restore to=disk")   # a good one: nothing to do, success
    r = m.cli("restore", "--to", "/etc", m.path("f"), check=False)
    assert r.returncode == client.EXIT_USAGE and "--to /etc: no tier of that name" in r.stderr, r.stderr
    r = m.cli("archive", "--to", "disk", m.path("f"), check=False)
    assert r.returncode == client.EXIT_USAGE and "archive needs an archive tier" in r.stderr, r.stderr


def test_release_of_a_file_that_is_not_dual_says_why(mount):
    m = mount
    put(m, "f", 10)
    r = m.cli("release", m.path("f"), check=False)
    assert r.returncode == client.EXIT_FAILED
    assert r.stderr.splitlines()[0] == (f"tierfs: {m.path('f')}: release: is online, not dual: archive it first "
                                        "(or archive --keep-online)"), r.stderr


def test_requests_on_symlinks_and_fifos_say_they_were_skipped(mount):
    m = mount
    put(m, "d/f", 10)
    os.symlink("f", m.path("d", "link"))
    os.mkfifo(m.path("d", "fifo"))
    r = m.cli("archive", m.path("d", "link"), m.path("d", "fifo"), check=False)
    assert r.returncode == client.EXIT_FAILED, r.stdout
    assert "archive: 0 file(s), 0B requested; skipped 2 non-regular file(s)" in r.stdout, r.stdout
    assert f"{m.path('d', 'link')}: archive: a symbolic link, not a regular file: skipped" in r.stderr
    assert f"{m.path('d', 'fifo')}: archive: a FIFO, not a regular file: skipped" in r.stderr
    r = m.cli("archive", "-r", "--wait", m.path("d"))   # a tree with some: the files are archived, exit 0
    assert "archive: 1 file(s), 10B requested; skipped 2 non-regular file(s)" in r.stdout, r.stdout
    assert m.state("d/f") == "archived"


def test_queue_says_when_it_shows_only_some_jobs(mount):
    m = mount
    for i in range(5):
        put(m, f"f{i}", 10)
    m.cli("archive", "--wait", *[m.path(f"f{i}") for i in range(5)])
    r = m.cli("queue", "--all", "--json", "--limit", "3", m.mnt)
    assert len(json.loads(r.stdout)) == 3
    assert "showing the first 3 jobs; there are more" in r.stderr, r.stderr
    r = m.cli("queue", "--all", "--json", "--limit", "0", m.mnt)
    assert len(json.loads(r.stdout)) == 5 and r.stderr == ""
    r = m.cli("queue", "--all", "--json", m.mnt)   # default 1,000: all of these, nothing said
    assert len(json.loads(r.stdout)) == 5 and r.stderr == ""
