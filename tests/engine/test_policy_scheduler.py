"""The policy scheduler on a real FileSystem and catalog (no FUSE), with an
accelerated clock: interval + initial_delay, last runs surviving a restart,
the lease (one mount runs policies), and purging of files buried by
`tierfs policy run` while a mount is live."""

from __future__ import annotations

import functools

import pytest
import trio

from tierfs import archive, config
from tierfs.requests import Requests
from tierfs.catalog.base import JobKind, JobState, Session, now_ns
from tierfs.fs import FileSystem
from tierfs.policy.clock import FakeClock
from tierfs.policy.engine import Engine, JobExecutor
from tierfs.policy.rules import parse_rules
from tierfs.policy.scheduler import META_LAST_RUN, PolicyScheduler
from tests.engine.test_policy_engine import Tree

HOUR, DAY = 3600.0, 86400.0


def make_cfg(tmp_path, *rules):
    for d in ("disk", "vault", "state"):
        (tmp_path / d).mkdir(exist_ok=True)
    raw = {"state_dir": str(tmp_path / "state"),
           "tiers": {"disk": {"kind": "disk", "path": str(tmp_path / "disk")},
                     "vault": {"kind": "vault", "path": str(tmp_path / "vault")}},
           "policy": list(rules)}
    return config.parse(raw, str(tmp_path / "c.toml"))


def make_fs(cfg, catalog, session_id: str) -> FileSystem:
    tiers = cfg.make_tiers()
    for t in tiers.values():
        t.check()
    catalog.register_session(Session(id=session_id, host="h", pid=1, mountpoint="/m", started_ns=now_ns(),
                                     heartbeat_ns=now_ns()))
    return FileSystem(cfg, catalog, tiers, session_id, staging_dir=f"{cfg.state_dir}/staging-{session_id}",
                      offline=archive.Offline, requests=Requests)


def scheduler(cfg, catalog, session_id="s1", clock=None) -> PolicyScheduler:
    sched = PolicyScheduler(make_fs(cfg, catalog, session_id), cfg, session_id, clock=clock or FakeClock())
    sched.started = sched.clock.now()
    return sched


COLD = dict(name="cold", action="archive", inactive_for="90d", interval="1d", initial_delay="1h")


def test_interval_and_initial_delay_on_an_accelerated_clock(catalog, tmp_path):
    cfg = make_cfg(tmp_path, COLD)
    t = Tree(catalog)
    first = t.file("first", idle=100)
    clock = FakeClock()
    sched = scheduler(cfg, catalog, clock=clock)

    async def main():
        assert await sched.tick() == pytest.approx(sched.tick_s)  # nothing before initial_delay (1h)
        assert sched.runs["cold"] == 0
        clock.advance(HOUR)
        assert await sched.tick() == pytest.approx(sched.tick_s)  # ran; next round at the idle tick
        assert sched.runs["cold"] == 1
        second = t.file("second", idle=100)
        clock.advance(DAY - 60)
        await sched.tick()
        assert sched.runs["cold"] == 1                         # a day has not passed yet
        clock.advance(60)
        await sched.tick()
        assert sched.runs["cold"] == 2
        return second
    second = trio.run(main)
    jobs = {j.ino: j for j in catalog.jobs([JobState.PENDING])}
    assert set(jobs) == {first.ino, second.ino}
    assert jobs[first.ino].kind == JobKind.ARCHIVE
    assert jobs[first.ino].cause.startswith("policy rule 'cold' (not accessed or modified for 100d")
    assert float(catalog.get_meta(META_LAST_RUN + "cold")) == pytest.approx(clock.now())

    # A restart (new scheduler, same catalog) remembers the last run: not due again at once.
    catalog.end_session("s1")
    again = scheduler(cfg, catalog, "s2", clock=clock)
    clock.advance(2 * HOUR)
    trio.run(again.tick)
    assert again.runs["cold"] == 0 and again.leader


def test_run_loop_runs_two_days_of_schedule_in_no_time(catalog, tmp_path):
    cfg = make_cfg(tmp_path, COLD, dict(name="manual", action="release"))
    clock = FakeClock()
    sched = PolicyScheduler(make_fs(cfg, catalog, "s1"), cfg, "s1", clock=clock)
    sched.tick_s = HOUR
    start = clock.now()

    async def main():
        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                n.start_soon(sched.run)
                # A checkpoint, not a real millisecond: the scheduler's fake sleeps move the clock an hour
                # at a time, and on a quiet machine a real 1 ms let it run past +49h (a third run).
                while clock.now() < start + 2 * DAY:
                    await trio.sleep(0)
                n.cancel_scope.cancel()
    trio.run(main)
    assert sched.runs == {"cold": 2}   # at +1h and +25h; the rule without an interval never runs by itself


def test_only_the_lease_holder_runs_policies(catalog, tmp_path):
    cfg = make_cfg(tmp_path, dict(COLD, initial_delay="0s"))
    Tree(catalog).file("f", idle=100)
    clock = FakeClock()
    a = scheduler(cfg, catalog, "sa", clock)
    b = scheduler(cfg, catalog, "sb", clock)

    async def main():
        await a.tick()
        await b.tick()
        assert (a.leader, b.leader) == (True, False)
        assert (a.runs["cold"], b.runs["cold"]) == (1, 0)
        catalog.end_session("sa")      # a unmounts: its lease is freed
        clock.advance(DAY)
        await b.tick()
        assert b.leader and b.runs["cold"] == 1
        await a.tick()                 # a cannot take it back while b holds it
        assert not a.leader
    trio.run(main)


def test_files_buried_by_the_cli_are_purged_by_the_mounted_scheduler(catalog, tmp_path):
    cfg = make_cfg(tmp_path, dict(name="ret", action="delete", older_than="1s", confirm_delete=True))
    t = Tree(catalog)
    f = t.file("old", created=10)
    sched = scheduler(cfg, catalog)            # a live session: the CLI must not purge
    engine = Engine(catalog, parse_rules(cfg), clock=FakeClock(), executor=JobExecutor(catalog, who="cli"))
    report = trio.run(functools.partial(engine.run, None, dry_run=False))
    assert [a.done for a in report.actions] == ["deleted"]
    assert catalog.get(f.ino).nlink == 0 and catalog.garbage() == []
    trio.run(sched.tick)
    assert [(g.tier, g.key) for g in catalog.garbage()] == [("disk", "obj-old")]
    assert catalog.tombstones(ino=f.ino)[0].who == "policy rule 'ret' (cli)"


def test_a_rule_stopped_by_the_catalog_runs_again_within_a_minute_not_a_day(catalog, tmp_path, monkeypatch):
    """A daily rule whose candidates could not be read (the catalog failed over mid-run) is due again
    RULE_RETRY_S later, and its last run is not recorded until one completes."""
    from tests.engine.test_policy_engine import LOST, failing_query
    from tierfs.policy.scheduler import RULE_RETRY_S
    cfg = make_cfg(tmp_path, COLD)
    t = Tree(catalog)
    old = t.file("old", idle=100)
    clock = FakeClock()
    sched = scheduler(cfg, catalog, clock=clock)
    failing_query(catalog, monkeypatch, after=0, calls=(1,))   # the first run's candidates

    async def main():
        clock.advance(HOUR)
        await sched.tick()
        assert sched.runs["cold"] == 1 and sched.reports[-1].rules[0].error == str(LOST)
        assert catalog.get_meta(META_LAST_RUN + "cold") is None and not catalog.jobs([JobState.PENDING])
        clock.advance(RULE_RETRY_S - 1)
        await sched.tick()
        assert sched.runs["cold"] == 1                          # not yet
        clock.advance(1)
        await sched.tick()
        assert sched.runs["cold"] == 2 and not sched.reports[-1].rules[0].error
        assert float(catalog.get_meta(META_LAST_RUN + "cold")) == pytest.approx(clock.now(), abs=1)
        clock.advance(DAY - 60)
        await sched.tick()
        assert sched.runs["cold"] == 2                          # then daily again
    trio.run(main)
    assert [j.ino for j in catalog.jobs([JobState.PENDING])] == [old.ino]
