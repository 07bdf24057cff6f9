"""Jobs and tiers that are away: waiting is not failing.

- A tier that is unavailable for longer than job_max_attempts x job_retry_delay
  does not fail its jobs: they wait with capped backoff, `tierfs queue` shows
  them as waiting (reason, next attempt), `tierfs status` shows the tier as
  unavailable, and they run as soon as the tier is back (issue 13, defect 5).
- A mount whose configuration lacks a tier the catalog uses warns on the
  terminal at mount and never fails another mount's jobs for it (defect 7).
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from tests.conftest import wait_for
from tests.reliability_util import CatalogView, errors_of, fsck, home_of, mk, sha, stop, tiers_config, write  # noqa: F401
from tests.system.test_outages import bound_vault, kmounts  # noqa: F401  (fixtures)
from tierfs.catalog.base import JobKind, JobState


def _queue(m) -> list[dict]:
    return json.loads(m.cli("queue", "--json", m.mnt).stdout)


def test_archive_waits_through_an_outage_longer_than_its_attempts(mk, bound_vault, tmp_path):
    home = home_of(tmp_path)
    # Before: 2 attempts x 1 s and the job failed for good while the vault was away.
    m = mk(config="job_retry_delay = 1\njob_retry_max_delay = 2\njob_max_attempts = 2\n" + tiers_config(home))
    digest = write(m.path("f"), os.urandom(100_000))
    bound_vault.away()
    os.setxattr(m.path("f"), "user.tierfs.request", b"archive")
    time.sleep(8)                                   # several backoff rounds, far more than 2 attempts' worth
    rows = [r for r in _queue(m) if r["kind"] == "archive"]
    assert [r["state"] for r in rows] == ["waiting"], rows
    assert rows[0]["last_error"].startswith("waiting: tier vault") and "not available" in rows[0]["last_error"], rows
    assert rows[0]["next_attempt_s"] is not None and rows[0]["next_attempt_s"] <= 2, rows
    assert rows[0]["attempts"] <= 1, rows           # waiting is not an attempt
    text = m.cli("queue", m.mnt).stdout
    assert "waiting" in text and "next attempt in" in text, text
    status = json.loads(m.cli("status", "--json", m.mnt).stdout)[0]
    assert status["tiers"]["vault"]["health"]["state"] == "unavailable", status["tiers"]["vault"]
    text = m.cli("status", m.mnt).stdout
    row = next(x for x in text.splitlines() if x.startswith("vault "))
    assert row.split()[-1] == "UNAVAILABLE" and "^ UNAVAILABLE since " in text and " ago, seen by " in text, text
    log = m.log().splitlines()
    assert len([x for x in log if "tier vault is unavailable" in x and "wait until it is back" in x]) == 1, log
    assert len([x for x in log if "WARNING" in x and "waits:" in x]) == 1, "one line per waiting job, not a flood"
    assert sha(m.path("f")) == digest
    t_back = time.monotonic()
    bound_vault.back()
    wait_for(lambda: m.state("f") == "archived", 30, what="the archive once the vault is back")
    assert time.monotonic() - t_back < 15, "the waiting job runs when the tier is back, not at its backoff time"
    assert [r for r in _queue(m) if r["state"] in ("failed", "waiting")] == []
    health = wait_for(lambda: (lambda h: h if h["state"] == "ok" else None)(
        json.loads(m.cli("status", "--json", m.mnt).stdout)[0]["tiers"]["vault"]["health"]),
        10, what="status to show the vault healthy again")
    # the problem it recovered from is kept: what it was, when it began, how long it lasted
    assert health["last_error"].startswith("unavailable: ") and "vault" in health["last_error"], health
    assert 5 <= (health["since_ns"] - health["last_error_ns"]) / 1e9 < 60, health
    row, detail = [x for x in m.cli("status", m.mnt).stdout.splitlines() if x.startswith("vault ") or "last error" in x]
    assert row.split()[-1] == "ok" and "UNAVAILABLE" not in row, row
    assert "last error" in detail and " ago, for " in detail and "unavailable: " in detail, detail
    assert sha(m.path("f")) == digest


def _tiers(home: str, glacier: bool) -> str:
    out = tiers_config(home)
    if glacier:
        os.makedirs(f"{home}/glacier", exist_ok=True)
        out += f'\n[tiers.glacier]\nkind = "vault"\npath = "{home}/glacier"\n'
    return out


@pytest.mark.mongo
def test_mount_lacking_a_tier_leaves_its_jobs_to_others(mk, mongod, tmp_path):
    """Mount B has no `glacier` tier: it says so at mount, never claims (or fails) the
    archive to glacier or the restore from it; mount A, which has it, runs both."""
    home = home_of(tmp_path)
    url = mongod.url(f"lt{uuid.uuid4().hex[:12]}")
    top = "job_retry_delay = 1\nheartbeat_interval = 1\nsession_timeout = 4\n"
    a = mk(config=top + 'default_archive = "glacier"\n' + _tiers(home, glacier=True), catalog_url=url, name="a")
    write(a.path("to-glacier"), b"x" * 5000)
    write(a.path("from-glacier"), b"y" * 7000)
    a.cli("archive", "--wait", "--timeout", "60", a.path("from-glacier"))
    stop(a)
    b = mk(config=top + _tiers(home, glacier=False), catalog_url=url, name="b", start=False)
    b.write_config()
    r = b.cli("mount", b.mnt, "--config", b.config_path)
    assert "glacier" in r.stderr and "does not define" in r.stderr, r.stderr
    from tests.reliability_util import track
    b.pid = int(r.stdout.split("(pid ")[1].split(",")[0])
    track(b.pid)
    view = CatalogView(url)
    try:
        archive_job, _ = view.cat.enqueue(view.ino("to-glacier"), JobKind.ARCHIVE, target_tier="glacier", cause="t")
        restore_job, _ = view.cat.enqueue(view.ino("from-glacier"), JobKind.RESTORE, cause="t")
        time.sleep(4)                                # B polls the queue every second
        for jid in (archive_job.id, restore_job.id):
            job = view.cat.get_job(jid)
            assert job.state == JobState.PENDING, job
            assert job.attempts == 0, job
        assert "not configured" not in b.log() or "leaving it to a mount" in b.log(), b.log()[-3000:]
        assert "failed" not in [j.state.value for j in view.cat.jobs(None)]
        a.start()
        from tests.reliability_util import track as track_a
        track_a(a.pid)
        wait_for(lambda: all(view.cat.get_job(j).state == JobState.DONE for j in (archive_job.id, restore_job.id)),
                 30, what="mount A to run both jobs")
    finally:
        view.close()
    assert a.state("to-glacier") == "archived"
    assert open(a.path("from-glacier"), "rb").read() == b"y" * 7000


def test_a_restore_that_succeeds_later_clears_its_failed_row(mk, tmp_path):
    """A restore that failed for good (its archive copy was missing: the file is lost) stops being
    listed as failed once a later restore brought the file back (issue 13: the row stayed)."""
    home = home_of(tmp_path)
    m = mk(config="job_retry_delay = 1\nblock_timeout = 10\n" + tiers_config(home))
    digest = write(m.path("f"), os.urandom(50_000))
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    objects = [p for p in (tmp_path / "home" / "vault" / "objects").glob("*/*")]
    saved = {p: p.read_bytes() for p in objects}
    for p in objects:
        p.unlink()
    with pytest.raises(OSError):
        open(m.path("f"), "rb").read()               # the restore fails: the only copy is missing
    assert m.state("f") == "lost"
    wait_for(lambda: [r["kind"] for r in _queue(m) if r["state"] == "failed"] == ["restore"], 10,
             what="the failed restore in the queue")
    stop(m)
    for p, data in saved.items():                      # the copy comes back (a tape found again)
        p.write_bytes(data)
    code, out = fsck(m.config_path, "--repair")        # check_lost: a verified copy exists -> archived
    assert code == 0, out
    from tests.reliability_util import start
    start(m)
    assert sha(m.path("f")) == digest                  # this open restores it
    assert [r for r in _queue(m) if r["state"] == "failed"] == [], _queue(m)
    assert json.loads(m.cli("queue", "--json", "--all", m.mnt).stdout)[0]["last_error"].startswith("superseded")
