"""Fencing by session in the engine (issue 20): the mount's session is
reaped while one of its archive jobs is copying (as when the mount was cut
off from the catalog for session_timeout), and another mount claims the
job. When the copy ends, this mount's commit is refused: it abandons the
job (its copy is deleted, nothing recorded), its heartbeat finds the
session ended and registers a new one, and it goes on working under it."""

from __future__ import annotations

import os

import trio

from tierfs.catalog.base import JobState, Session, now_ns
from tests.engine.faults import Gate
from tests.engine.harness import Posix, with_engine


@with_engine(heartbeat_interval=1, session_timeout=5)
async def test_reaped_mount_abandons_the_job_another_mount_took(eng, tmp_path):
    p = Posix(eng.fs)
    data = os.urandom(20000)
    await p.write_file("f", data)
    gate = Gate(eng.fs.tiers["vault"], "put")
    await p.request("f", "archive")
    cat = eng.catalog
    old = eng.fs.session_id
    executor = eng.daemon.engine.policy.engine.executor    # made now, with the session of now
    assert executor.who.startswith(f"session {old} on ")
    await gate.reached()   # the copy is written, held before put() returns
    assert [j.session for j in cat.jobs((JobState.RUNNING,))] == [old]
    # Another mount reaps this one (its heartbeat "stopped" for session_timeout) and takes the job.
    assert cat.reap_sessions(now_ns() + 10**12) == [old]
    t = now_ns()
    cat.register_session(Session(id="other", host="h2", pid=2, mountpoint="/m2", started_ns=t, heartbeat_ns=t))
    taken = cat.claim("other")
    assert taken is not None and taken.attempts == 2
    gate.open()
    # The copy ends, the commit is refused; the heartbeat renews the session.
    with trio.fail_after(120):
        while eng.fs.session_id == old or eng.jobs.running:
            await trio.sleep(0.2)
    job = cat.get_job(taken.id)
    assert (job.state, job.session, job.attempts) == (JobState.RUNNING, "other", 2)
    assert job.dst_key == taken.dst_key    # as the new owner found it (its cleanup of a previous attempt's key)
    assert not [e for e in cat.events(job.ino) if e.to_state == "archived"]
    assert not any(files for _, _, files in os.walk(os.path.join(eng.home, "vault")))   # A's copy was deleted
    live = {s.id for s in cat.sessions() if not s.clean}
    assert eng.fs.session_id in live and old not in live and eng.fs.session_id != old
    assert eng.daemon.session_id == eng.fs.session_id     # the session unmount ends
    # who shows the session id follows the renewal: tier health records, a policy run's deletions
    assert eng.jobs.health.session() == eng.fs.session_id
    assert executor.who.startswith(f"session {eng.fs.session_id} on ")
    # The mount works on under its new session: a new job is claimed and finished by it.
    await p.write_file("g", b"more")
    await p.request("g", "archive")
    with trio.fail_after(120):
        while await p.state("g") != "archived":
            await trio.sleep(0.2)
    [g_job] = cat.jobs(ino=(await p.stat("g")).ino)
    assert g_job.state == JobState.DONE
    assert await p.read_file("f") == data
    cat.finish_job(job.id, JobState.CANCELLED, "test over", session="other")


@with_engine(heartbeat_interval=1, session_timeout=5)
async def test_a_mount_reaped_right_after_its_commit_leaves_its_job_done(eng, tmp_path):
    """The other window: the archive's commit has landed, and the session is
    reaped before the runner records the job's end. The commit ended the job
    (Transition.ends_job), so the reaper puts nothing back in the queue:
    another mount finds nothing to claim, and the move is not made twice."""
    p = Posix(eng.fs)
    data = os.urandom(20000)
    await p.write_file("f", data)
    cat = eng.catalog
    old = eng.fs.session_id
    real = cat.finish_job
    seen: list = []

    def finish_after_a_reap(job_id, state, *args, session=None, **kw):
        if not seen:   # between the commit and this call: this mount is reaped, another one looks for work
            seen.append(cat.reap_sessions(now_ns() + 10**12))
            t = now_ns()
            cat.register_session(Session(id="other", host="h2", pid=2, mountpoint="/m2", started_ns=t,
                                         heartbeat_ns=t))
            seen.append(cat.claim("other"))
        return real(job_id, state, *args, session=session, **kw)
    cat.finish_job = finish_after_a_reap
    await p.request("f", "archive")
    with trio.fail_after(120):
        while not seen or eng.jobs.running:
            await trio.sleep(0.1)
    assert seen == [[old], None]       # reaped, and nothing of its went back to the queue
    [job] = cat.jobs(ino=(await p.stat("f")).ino)
    assert (job.state, job.attempts) == (JobState.DONE, 1)
    assert await p.state("f") == "archived"
    assert len([e for e in cat.events(job.ino) if e.to_state == "archived"]) == 1
    assert sum(len(files) for _, _, files in os.walk(os.path.join(eng.home, "vault"))) == 1
    assert await p.read_file("f") == data
