"""Builds one mount's engine: the FileSystem with its collaborators, and the
background services around it. The daemon (daemon.py) and the in-process
tests (tests/engine/) build it here, and nowhere else.

    engine = build_engine(cfg, catalog, tiers, session_id, staging_dir=..., clock=FakeClock())
    fs = engine.fs                      # POSIX operations (fuse_ops.py translates FUSE to them)
    async with trio.open_nursery() as n:
        engine.start(n)                 # every background service
        ...
        await engine.stop()             # cached attributes flushed, then each service's last work
        n.cancel_scope.cancel()

`clock` is the policy scheduler's (policy/clock.py); the other services sleep
on trio's clock, which trio.testing.MockClock replaces in tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import trio

from .archive import AtimeFlusher, Offline
from .catalog.base import Catalog
from .fs import FileSystem
from .gc import GarbageCollector
from .heartbeat import Heartbeat
from .jobs import JobRunner
from .metrics import Metrics
from .notify import Notifier
from .passthrough import NoPassthrough
from .policy.scheduler import PolicyScheduler
from .requests import Requests
from .services import Services, Task
from .tiers.base import Tier


class JobService:
    """jobs.JobRunner behind the Service protocol: it leaves nothing to do
    at unmount (a running job is the catalog's, and resumes at the next mount)
    but to end the waits of archives for a batch that has not started."""

    def __init__(self, runner: JobRunner):
        self.runner = runner

    async def run(self) -> None:
        await self.runner.run()

    def wake(self) -> None:
        self.runner.wake()

    async def stop(self) -> None:
        self.runner.stop_waiting()


@dataclass
class Engine:
    fs: FileSystem
    offline: Offline
    requests: Requests
    jobs: JobRunner
    policy: PolicyScheduler
    gc: GarbageCollector
    services: Services
    metrics: Metrics | None = None   # metrics_listen set: served over HTTP (metrics.py)

    def start(self, nursery: trio.Nursery) -> None:
        for s in self.services.all:
            nursery.start_soon(s.run)

    async def stop(self) -> None:
        """At unmount, after the FUSE session ended: sizes and times cached
        ahead of the catalog, then each service's last work, in order
        (staged copies uploaded before the last access times are written)."""
        await self.fs.flush_all()
        await self.services.stop_all()

    def reloadable(self) -> list:
        """The parts that derive something from the configuration (a group id,
        parsed rules): they check a new one, and re-derive after it is taken."""
        return [self.requests, self.policy]


def build_engine(cfg, catalog: Catalog, tiers: dict[str, Tier], session_id: str, *,
                 staging_dir: str | None = None, clock=None, passthrough: NoPassthrough | None = None,
                 mountpoint: str = "") -> Engine:
    """The FileSystem over `catalog` and `tiers`, with the offline contract,
    requests, job runner, policy scheduler and every background service.
    `clock`: the policy scheduler's (default the system clock); `passthrough`:
    FUSE passthrough of the mount (default none: no kernel); `mountpoint`:
    what notify_command is told (TIERFS_MOUNT). With `metrics_listen` set,
    the catalog's and the tiers' calls are instrumented (metrics.py) and the
    metrics server listens before this returns. Raises ConfigError for an
    unknown archivers group, an invalid [[policy]] or a metrics address in use."""
    services = Services()
    metrics = None
    if cfg.metrics_listen:
        metrics = Metrics(cfg.metrics_listen, catalog_url=cfg.catalog, session=session_id,
                          tiers={name: t.archive for name, t in tiers.items()})
        metrics.instrument_catalog(catalog)
        for t in tiers.values():
            metrics.instrument_tier(t)
    fs = FileSystem(cfg, catalog, tiers, session_id,
                    staging_dir=staging_dir or os.path.join(cfg.state_dir, "staging"),
                    events=services, offline=Offline, requests=Requests, passthrough=passthrough)
    if metrics is not None:
        fs.on_session_renewed(metrics.set_session)
    gc = services.gc = GarbageCollector(catalog, fs.cat, tiers, fs.files)
    notifier = Notifier(fs, cfg, mountpoint)
    runner = JobRunner(fs, cfg, ended=notifier.job_ended)
    policy = PolicyScheduler(fs, cfg, session_id, clock=clock, ran=metrics.policy_ran if metrics else None)
    services.add(gc)
    services.add(Task(fs.checksums.run))
    services.add(Heartbeat(fs, cfg, services))
    # stop order: staged copies are uploaded (and their sizes written) before the last access times
    services.add(Task(fs.staging.run, fs.staging.shutdown))
    services.add(AtimeFlusher(fs.offline, fs.flush_all, cfg))
    services.add(policy)
    services.jobs = services.add(JobService(runner))
    services.add(notifier)   # stops after the jobs: what ended before the unmount is still told
    if metrics is not None:
        metrics.bind()   # last: nothing after it can fail and leave the port open
        services.metrics = services.add(metrics)   # stops last: a scrape during the flush still answers
    return Engine(fs=fs, offline=fs.offline, requests=fs.requests, jobs=runner, policy=policy, gc=gc,
                  services=services, metrics=metrics)
