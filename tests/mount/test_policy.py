"""Policies through real mounts, driven by shell tools and the real CLI:
the issue's done-when scenario (the running daemon archives an inactive
file by itself within one interval; a small and a pinned file stay; the
dry run predicted exactly that; reading restores and resets the clock),
inactivity counting writes as use (a log appended to a minute ago but not
read for 200 days stays), watermarks on a small tmpfs tier, delete rules in
the daemon, and the CLI's errors and exit codes."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from tierfs import mounts
from tierfs.catalog import open_catalog
from tierfs.catalog.base import SCHEMA_VERSION
from tests.conftest import wait_for
from tests.catalog.test_index import DAY_NS, T0, load_v1

pytestmark = pytest.mark.mount

COLD = """
[[policy]]
name = "cold"
action = "archive"
to = "vault"
inactive_for = "90d"
min_size = "1MB"
interval = "2s"
"""


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def dry_run(m, *args) -> dict:
    r = m.cli("policy", "run", "--dry-run", "--json", "-c", m.config_path, *args)
    return json.loads(r.stdout)


def idle_for(m, rel: str, days: int, limit: str) -> str:
    """The explanation of a file neither read nor written for `days`, dated
    by the later of its access and modification times as stat shows them."""
    st = os.stat(m.path(rel))
    since = datetime.datetime.fromtimestamp(max(st.st_atime_ns, st.st_mtime_ns) / 1e9).strftime("%Y-%m-%d")
    return f"not accessed or modified for {days}d (since {since}) > {limit}"


def test_done_when_the_daemon_archives_an_inactive_file_by_itself(make_mount):
    m = make_mount(config=COLD, start=False)
    m.write_config()
    # Hold the policy lease so the daemon cannot act before the dry run has been taken.
    cat = open_catalog(m.catalog_url)
    cat.init()
    assert cat.acquire_lease("policy", "test", 3600)
    m.start()
    m.sh("""
        mkdir keep
        head -c 5000000 /dev/urandom > big
        head -c 500000 /dev/urandom > small
        head -c 5000000 /dev/urandom > keep/pinned
        setfattr -n user.tierfs.pin -v 1 keep
    """)
    digest = sha(m.path("big"))   # (a read: before the clocks are set back)
    m.sh("touch -d '100 days ago' big small keep/pinned")
    assert os.stat(m.path("big")).st_atime < time.time() - 99 * 86400  # stat shows it at once
    idle = idle_for(m, "big", 100, "90d")
    time.sleep(3)   # more than one interval: a mount without the lease does nothing
    predicted = dry_run(m)
    assert [(a["path"], a["action"], a["target"]) for a in predicted["actions"]] == [("/big", "archive", "vault")]
    assert predicted["actions"][0]["reasons"] == [idle, "size 5MB >= 1MB"]
    assert predicted["totals"]["files"] == 1 and predicted["totals"]["bytes"] == 5_000_000
    # `small` is no candidate: the size rides on the query's last-access range (policy Matcher.query)
    assert predicted["rules"][0]["skipped"] == {"pinned": 1} and predicted["rules"][0]["candidates"] == 2
    text = m.cli("policy", "run", "--dry-run", "-c", m.config_path).stdout
    assert f"archive -> vault /big (5MB): rule 'cold': {idle}, size 5MB >= 1MB" in text
    assert "dry run: would act on 1 file(s), 5MB, freeing 5MB online" in text
    assert m.state("big") == "online"

    assert cat.acquire_lease("policy", "test", 0)      # let go: the daemon takes over within one interval
    released = time.monotonic()
    wait_for(lambda: m.state("big") == "archived", timeout=30, what="the daemon archiving big")
    took = time.monotonic() - released
    assert took < 15, took
    assert (m.state("small"), m.state("keep/pinned")) == ("online", "online")
    st = m.cli("state", m.path("big")).stdout
    assert "archived since" in st and f"by policy rule 'cold' ({idle}, size 5MB >= 1MB)" in st
    assert os.stat(m.path("big")).st_blocks == 0
    cat.close()

    # Reading restores it and resets its clock: no longer a candidate.
    assert sha(m.path("big")) == digest
    assert m.state("big") == "dual"
    assert os.stat(m.path("big")).st_atime > time.time() - 60
    assert [a["path"] for a in dry_run(m)["actions"]] == []
    time.sleep(2.5)                                    # another interval: the daemon leaves it alone
    assert m.state("big") == "dual"


def test_a_log_appended_to_a_minute_ago_is_not_inactive(make_mount, catalog_url):
    """Issue 13, defect 8: a file written recently is in use however long ago
    it was read. The dry run, `tierfs find --inactive` and the daemon agree:
    only the file neither read nor written for 200 days is archived."""
    m = make_mount(config=COLD, catalog_url=catalog_url, start=False)
    m.write_config()
    cat = open_catalog(m.catalog_url)
    cat.init()
    assert cat.acquire_lease("policy", "test", 3600)   # the daemon waits until the dry run has been taken
    m.start()
    m.sh("""
        head -c 5000000 /dev/urandom > app.log
        head -c 5000000 /dev/urandom > old.dat
        head -c 5000000 /dev/urandom > read.dat
        touch -d '200 days ago' app.log old.dat
        echo 'one more line' >> app.log             # appended now: a write, not a read
        touch -m -d '200 days ago' read.dat         # written long ago, read (created) now
    """)
    st = os.stat(m.path("app.log"))
    assert st.st_atime < time.time() - 199 * 86400 and st.st_mtime > time.time() - 60
    idle = idle_for(m, "old.dat", 200, "90d")
    predicted = dry_run(m)
    assert [(a["path"], a["reasons"]) for a in predicted["actions"]] == [("/old.dat", [idle, "size 5MB >= 1MB"])]
    assert predicted["rules"][0]["candidates"] == 1    # the catalog query itself left the others out
    assert m.cli("find", m.mnt, "--inactive", "90d").stdout.split() == ["/old.dat"]
    assert m.cli("find", m.mnt, "--inactive", "90d", "--count").stdout.strip() == "1"
    assert sorted(m.cli("find", m.mnt, "--inactive", "1h").stdout.split()) == ["/old.dat"]

    assert cat.acquire_lease("policy", "test", 0)      # let go: the daemon takes over within one interval
    cat.close()
    wait_for(lambda: m.state("old.dat") == "archived", timeout=30, what="the daemon archiving old.dat")
    time.sleep(2.5)                                    # another interval
    assert (m.state("app.log"), m.state("read.dat")) == ("online", "online")
    assert f"by policy rule 'cold' ({idle}, size 5MB >= 1MB)" in m.cli("state", m.path("old.dat")).stdout


def test_a_log_held_open_and_appended_to_is_not_inactive(make_mount):
    """A log a daemon keeps open for writing (never closed, never read): its mtime reaches the
    catalog on the access-time schedule, not only at close, so no inactivity rule selects it."""
    m = make_mount(config="atime_flush = 1\n" + COLD, start=False)
    m.write_config()
    cat = open_catalog(m.catalog_url)
    cat.init()
    assert cat.acquire_lease("policy", "test", 3600)   # only the dry run looks
    m.start()
    m.sh("head -c 2000000 /dev/urandom > app.log && touch -d '200 days ago' app.log")
    # The writer is another process that only writes (every close of a copy of the fd, a fork+exec of
    # this process or a shell redirection's dup, flushes the size and mtime to the catalog).
    writer = subprocess.Popen([sys.executable, "-c", "import os, time; fd = os.open('app.log', os.O_WRONLY | "
                               "os.O_APPEND); os.write(fd, b'a line\\n'); time.sleep(8)"], cwd=m.mnt)
    try:
        time.sleep(3)                                  # more than atime_flush; the file stays open
        assert dry_run(m)["actions"] == []
        assert m.cli("find", m.mnt, "--inactive", "90d").stdout.split() == []
    finally:
        writer.kill()
        writer.wait()
    cat.close()


def test_a_catalog_of_schema_version_1_is_upgraded_by_the_first_command_then_mounted(make_mount, catalog_url):
    """A catalog the previous tierfs made (tests/data/catalog_v1): the first
    command that reads it upgrades it, and `find --inactive` through a mount
    counts /logs/app.log's write (1 minute before 2026-01-01; read 200 days
    before) as use: of the files idle 400 days by atime, only old.log is
    idle that long by its last access or modification."""
    load_v1(catalog_url)
    m = make_mount(catalog_url=catalog_url, start=False)
    m.write_config()
    assert m.cli("queue", "--config", m.config_path).stdout == "no jobs\n"
    cat = open_catalog(catalog_url)
    assert cat.schema_version() == SCHEMA_VERSION == 7
    cat.close()
    m.start()
    assert m.cli("find", m.mnt, "--inactive", "400d").stdout.split() == ["/logs/old.log"]
    st = os.stat(m.path("logs", "app.log"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (T0 - 200 * DAY_NS, T0 - 60 * 10**9)


def test_watermarks_archive_least_recently_used_files_of_a_full_tier(make_mount, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    small = tmp_path / "small-tier"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(small)], check=True)
    try:
        m = make_mount(start=False, config=f"""
            [tiers.disk]
            kind = "disk"
            path = "{small}"
            high_watermark = 0.52
            low_watermark = 0.25

            [tiers.vault]
            kind = "vault"
            path = "{tmp_path}/home/vault"

            [[policy]]
            name = "spill"
            action = "archive"
            min_size = "1MB"
        """)
        os.makedirs(f"{tmp_path}/home/vault", exist_ok=True)
        m.start()
        # 12 MiB (50%): below high. Oldest first: pinned (100d), f1 (50d) ... f5 (10d).
        m.sh("""
            head -c 2097152 /dev/urandom > pinned
            setfattr -n user.tierfs.pin -v 1 pinned
            touch -d '100 days ago' pinned
            for i in 1 2 3 4 5; do
              head -c 2097152 /dev/urandom > f$i
              touch -d "$(( 60 - i * 10 )) days ago" f$i
            done
        """)
        time.sleep(6)   # one watermark check: nothing to do yet
        assert {m.state(f) for f in ("pinned", "f1", "f2", "f3", "f4", "f5")} == {"online"}
        m.sh("head -c 1048576 /dev/urandom > trigger")   # 13 MiB: above 52%
        wait_for(lambda: [m.state(f) for f in ("f1", "f2", "f3", "f4")] == ["archived"] * 4, timeout=60,
                 what="the 4 least recently used files archived")

        def usage():
            st = os.statvfs(small)
            return 1 - st.f_bavail / st.f_blocks
        wait_for(lambda: usage() <= 0.25, timeout=30, what="usage below the low watermark")
        time.sleep(6)   # one more check: below low, nothing else moves
        assert [m.state(f) for f in ("pinned", "f5", "trigger")] == ["online"] * 3
        assert "policy rule 'spill' (watermark disk" in m.log()
        m.stop()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_delete_rules_remove_names_in_the_daemon_and_keep_tombstones(make_mount):
    m = make_mount(config="""
        [[policy]]
        name = "scratch-retention"
        action = "delete"
        older_than = "3s"
        scope = "/scratch"
        interval = "1s"
        confirm_delete = true
    """)
    m.sh("mkdir scratch keep && echo gone > scratch/a && echo still-open > scratch/b && echo stays > keep/c")
    with open(m.path("scratch", "b"), "rb") as held:
        wait_for(lambda: os.listdir(m.path("scratch")) == [], timeout=30, what="scratch emptied by the policy")
        assert not os.path.exists(m.path("scratch", "a"))
        assert held.read() == b"still-open\n"      # an open file stays readable until closed
    assert open(m.path("keep", "c")).read() == "stays\n"
    cat = open_catalog(m.catalog_url)
    try:
        tombs = {t.path: t for t in cat.tombstones()}
        assert set(tombs) == {b"scratch/a", b"scratch/b"}
        assert tombs[b"scratch/a"].who.startswith("policy rule 'scratch-retention' (session ")
        assert tombs[b"scratch/a"].why.startswith("created ") and "ago > 3s, under /scratch" in tombs[b"scratch/a"].why
    finally:
        cat.close()
    assert "deleted /scratch/a" in m.log()


def test_cli_errors_and_exit_codes(make_mount):
    m = make_mount(start=False, config="""
        [[policy]]
        name = "oops"
        action = "delete"
        older_than = "1y"
    """)
    m.write_config()
    r = m.cli("policy", "check", "-c", m.config_path, check=False)
    assert r.returncode == 6
    assert r.stderr.strip() == ("tierfs: configuration: policy 'oops': confirm_delete: action = \"delete\" removes "
                                "files for good; set confirm_delete = true in the rule to allow it")
    r = m.cli("mount", m.mnt, "--config", m.config_path, check=False)
    assert r.returncode == 6 and "policy 'oops': confirm_delete" in r.stderr
    assert mounts.find_mount(m.mnt) is None
    m.extra_config = COLD
    m.write_config()
    r = m.cli("policy", "check", "-c", m.config_path)
    assert "cold: archive to vault where inactive_for 90d, min_size 1MB [every 2s, watermarks]" in r.stdout
    r = m.cli("policy", "run", "--rule", "nope", "-c", m.config_path, check=False)
    assert r.returncode == 2 and "no policy rule named 'nope' (rules: cold)" in r.stderr
    report = dry_run(m, "--rule", "cold")   # no mount needed: the catalog is read directly
    assert report["actions"] == [] and report["dry_run"] is True
