"""Fencing by session (issue 20), on every catalog backend: a mount whose
session was reaped (it could not reach the catalog for session_timeout)
comes back still running a job that went back to the queue and on to
another mount. Whatever it then records of that job — its commit (switch),
finish, retry, dst_key — is refused with Fenced and changes nothing, while
the new owner's go through; its heartbeat says the session has ended, and
the policy lease it held is free for a live mount."""

import pytest

from tierfs import errors
from tierfs.catalog.base import ROOT_INO, Changes, JobKind, JobState, Session, State, Transition, now_ns

from tests.catalog.test_conformance import new


def _session(catalog, sid: str, age_s: float = 0) -> None:
    t = now_ns()
    catalog.register_session(Session(id=sid, host="h", pid=1, mountpoint=f"/m/{sid}", started_ns=t,
                                      heartbeat_ns=t - int(age_s * 1e9)))


def test_reaped_session_cannot_commit_or_record_a_job_it_lost(catalog):
    _session(catalog, "a", age_s=100)      # silent for 100 s: a partitioned mount
    _session(catalog, "b")
    f = catalog.create(ROOT_INO, b"f", new(size=3))
    catalog.update(f.ino, {"tier": "disk", "location": "k0"})
    job, _ = catalog.enqueue(f.ino, JobKind.ARCHIVE, target_tier="vault")
    mine = catalog.claim("a")
    assert mine.session == "a"             # the token the runner keeps with the job
    catalog.update_job(mine.id, {"dst_key": "a-copy"}, session="a")
    assert catalog.acquire_lease("policy", "a", 3600)

    assert catalog.heartbeat("b") is True
    assert catalog.reap_sessions(now_ns() - 10 * 10**9) == ["a"]
    assert catalog.heartbeat("a") is False          # A notices: its session ended
    assert catalog.acquire_lease("policy", "b", 60)  # the lease moved to the live mount
    theirs = catalog.claim("b")
    assert theirs.id == job.id and theirs.session == "b" and theirs.attempts == 2
    catalog.update_job(theirs.id, {"dst_key": "b-copy"}, session="b")

    # A comes back: everything it records of the job is refused and changes nothing.
    inode = catalog.get(f.ino)
    late = Transition(f.ino, inode.data_version, (inode.state,), Changes(state=State.ARCHIVED, archive_tier="vault",
                      archive_location="a-copy"), "test", job_id=job.id, job_session="a")
    with pytest.raises(errors.Fenced):
        catalog.switch(late)
    with pytest.raises(errors.Fenced):
        catalog.finish_job(job.id, JobState.DONE, session="a")
    with pytest.raises(errors.Fenced):
        catalog.finish_job(job.id, JobState.FAILED, "a's failure", session="a")
    with pytest.raises(errors.Fenced):
        catalog.retry_job(job.id, "a's retry", 0, session="a")
    with pytest.raises(errors.Fenced):
        catalog.update_job(job.id, {"dst_key": None}, session="a")
    now = catalog.get_job(job.id)
    assert (now.state, now.session, now.dst_key, now.attempts) == (JobState.RUNNING, "b", "b-copy", 2)
    assert catalog.get(f.ino) == inode and not [e for e in catalog.events(f.ino) if e.to_state == "archived"]

    # B, the owner, commits and finishes.
    done = catalog.switch(Transition(f.ino, inode.data_version, (inode.state,),
                                     Changes(state=State.ARCHIVED, archive_tier="vault", archive_location="b-copy"),
                                     "test", job_id=job.id, job_session="b"))
    assert done.archive_location == "b-copy"
    catalog.finish_job(job.id, JobState.DONE, session="b")
    assert catalog.get_job(job.id).state == JobState.DONE
    with pytest.raises(errors.Fenced):     # a finished job is nobody's any more
        catalog.finish_job(job.id, JobState.DONE, session="b")
    # Unfenced calls (fsck, an operator) still apply.
    catalog.update_job(job.id, {"last_error": "note"})


def test_fenced_retry_and_missing_job(catalog):
    _session(catalog, "a")
    f = catalog.create(ROOT_INO, b"f", new())
    catalog.enqueue(f.ino, JobKind.ARCHIVE, target_tier="vault")
    job = catalog.claim("a")
    catalog.retry_job(job.id, "busy", 0, count=False, session="a")   # the owner's retry applies
    assert catalog.get_job(job.id).state == JobState.PENDING
    with pytest.raises(errors.Fenced):      # pending: nobody runs it
        catalog.retry_job(job.id, "again", 0, session="a")
    with pytest.raises(errors.Fenced):
        catalog.finish_job(10**9, JobState.DONE, session="a")


def test_a_commit_that_ends_its_job_leaves_nothing_to_run_again(catalog):
    """The window between a move's commit and the runner's finish_job: a
    session reaped there used to have its job go back to the queue and run a
    second time on another mount. A commit with ends_job marks the job done
    in its own transaction, so the reaper finds nothing running; the
    runner's finish_job(DONE) that follows is a no-op, a late FAILED is
    refused, and the file's older failed job of the kind is superseded."""
    _session(catalog, "a", age_s=100)      # about to be reaped
    _session(catalog, "b")
    f = catalog.create(ROOT_INO, b"f", new(size=3))
    catalog.update(f.ino, {"tier": "disk", "location": "k0"})
    old, _ = catalog.enqueue(f.ino, JobKind.ARCHIVE, target_tier="vault")
    catalog.claim("b")
    catalog.finish_job(old.id, JobState.FAILED, "vault full", session="b")
    job, _ = catalog.enqueue(f.ino, JobKind.ARCHIVE, target_tier="vault")
    mine = catalog.claim("a")
    assert mine.id == job.id
    catalog.update_job(job.id, {"dst_key": "a-copy"}, session="a")
    inode = catalog.get(f.ino)
    catalog.switch(Transition(f.ino, inode.data_version, (inode.state,),
                              Changes(state=State.ARCHIVED, tier=None, location=None, archive_tier="vault",
                                      archive_location="a-copy"), "test", job_id=job.id, job_session="a",
                              ends_job=True))
    ended = catalog.get_job(job.id)
    assert (ended.state, ended.session, ended.dst_key, ended.last_error) == (JobState.DONE, "a", None, "")
    assert catalog.get_job(old.id).state == JobState.CANCELLED
    assert catalog.get_job(old.id).last_error == f"superseded by job {job.id}"
    # A is reaped right after its commit: nothing of its goes back to the queue.
    assert catalog.reap_sessions(now_ns() - 10 * 10**9) == ["a"] and catalog.claim("b") is None
    catalog.finish_job(job.id, JobState.DONE, session="a")     # the runner's finish: already recorded
    assert catalog.get_job(job.id).state == JobState.DONE
    with pytest.raises(errors.Fenced):
        catalog.finish_job(job.id, JobState.FAILED, "after the commit", session="a")
    with pytest.raises(errors.Fenced):     # another session's DONE is no such no-op
        catalog.finish_job(job.id, JobState.DONE, session="b")
    with pytest.raises(ValueError):        # ending a job needs its fencing token
        catalog.switch(Transition(f.ino, inode.data_version, (State.ARCHIVED,), Changes(), "test", job_id=job.id,
                                  ends_job=True))
