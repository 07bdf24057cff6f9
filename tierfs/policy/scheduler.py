"""The policy scheduler: a daemon extension (like jobs.JobRunner).

- Only the mount holding the catalog lease "policy" runs policies; the
  lease is renewed every tick (and between pages of a long run) and lapses
  `session_timeout` after its holder dies, or at once when it unmounts.
- Interval rules run when due: not before `initial_delay` after the mount
  started, and `interval` after the rule's last run. Last runs are kept in
  the catalog (meta "policy.last_run.NAME"), so a restart or another mount
  taking over the lease does not run a daily rule again at once.
- Watermarks: every WATERMARK_CHECK_S (and when woken), each online tier
  with high/low watermarks is measured; above high, the least recently
  used (accessed or modified) files eligible under the watermark rules are
  archived/released/migrated until the projected usage is below low. A tier is not measured
  again until the jobs of its previous watermark run are done.
- Files buried by `tierfs policy run` in another process while this mount
  runs are purged here, once the kernel and open handles let go.
Time comes from an injectable clock (clock.py), so tests run a day of
schedule in milliseconds.
"""

from __future__ import annotations

import logging
import os
import posixpath
import socket
from collections import Counter

import trio

from .. import errors
from ..catalog.base import ACTIVE_JOB_STATES
from .clock import SystemClock
from .engine import Action, Engine, JobExecutor, Report
from .rules import parse_rules, parse_watermarks

log = logging.getLogger(__name__)

LEASE = "policy"
TICK_S = 5.0                # longest sleep between ticks with watermarks to watch
IDLE_TICK_S = 60.0          # ... without (interval rules wake it when due)
MIN_TICK_S = 0.5            # wakes closer together than this are merged
WATERMARK_CHECK_S = 5.0
WATERMARK_SETTLE_S = 5.0    # after a watermark run's jobs finish, let garbage collection catch up
META_LAST_RUN = "policy.last_run."
#: A rule the catalog stopped (engine.RuleStats.error) runs again this soon (its interval if shorter),
#: not a whole interval later: a daily rule cut short by a failover need not wait a day.
RULE_RETRY_S = 60.0


class DaemonExecutor(JobExecutor):
    """Applies actions inside the mounted daemon: queued jobs wake the
    workers; a deleted file also leaves the kernel's caches and this
    mount's cache, and its bytes go as soon as nothing holds it open."""

    def __init__(self, fs):
        super().__init__(fs.catalog, fs.cat)
        self.fs = fs
        self.recent: list[int] = []       # job ids queued since the caller last cleared it

    @property
    def who(self) -> str:
        """This mount's session as it is now (renewed after a reap)."""
        return f"session {self.fs.session_id} on {socket.gethostname()}"

    def queued(self, job) -> None:
        self.recent.append(job.id)
        self.fs.events.queued()

    async def after_delete(self, a: Action) -> None:
        fs = self.fs
        if a.parent and fs.kernel_knows(a.parent):
            try:
                import pyfuse3
                pyfuse3.invalidate_entry_async(a.parent, os.fsencode(posixpath.basename(a.path)),
                                               deleted=a.ino, ignore_enoent=True)
            except Exception as e:  # noqa: BLE001 - not mounted (unit tests)
                log.debug("invalidate entry %s: %s", a.path, e)
        await purge_when_free(fs, a.ino)


async def purge_when_free(fs, ino: int) -> None:
    """Let this mount know the file has no name; it is purged now, or when
    its last handle closes / the kernel forgets it."""
    try:
        await fs.fetch(fs.catalog.get, ino)
    except errors.NotFound:
        return
    await fs.purge_if_unused(ino)


def check_policies(cfg) -> None:
    """ConfigError naming the rule or tier unless `cfg`'s policies and watermarks are valid."""
    parse_rules(cfg)
    parse_watermarks(cfg)


class PolicyScheduler:
    """Runs the config's rules on intervals and watermarks (see module doc)."""

    def __init__(self, fs, cfg, session_id: str, clock=None, ran=None):
        """fs: the FileSystem, or a function returning it (the daemon builds
        it after the configuration, policies included, has been checked);
        ran(report, {rule name: action}): told of every run (metrics.Metrics.policy_ran)."""
        self._fs = fs
        self.cfg = cfg                              # the daemon's live Config (a reload changes it in place)
        self._session_id = session_id
        self.clock = clock or SystemClock()
        self._engine: Engine | None = None
        self._reconfigured = trio.Event()
        self.config_changed()                       # ConfigError here stops the mount, naming the rule
        self.leader = False
        self.started = 0.0
        self.last_run: dict[str, float] = {}
        self.retry_at: dict[str, float] = {}    # rule -> when it is due again after a catalog error
        self.next_watermark = 0.0
        self.inflight: dict[str, list[int]] = {}    # tier -> job ids of its last watermark run
        self.settle_until: dict[str, float] = {}
        self.warned: set[str] = set()
        self.runs: Counter = Counter()              # rule name or "watermark TIER" -> runs (for tests)
        self.reports: list[Report] = []             # the last few reports (for tests and debugging)
        self._wake = trio.Event()
        self.ran = ran or (lambda report, actions: None)

    def check_config(self, cfg) -> None:
        """ConfigError naming the rule or tier unless `cfg`'s policies and watermarks are valid (reload)."""
        check_policies(cfg)

    def config_changed(self) -> None:
        """Rules, watermarks and timings from the live config (at start, and
        after a reload: a sleeping scheduler wakes up to them)."""
        self.rules = parse_rules(self.cfg)
        self.watermarks = parse_watermarks(self.cfg)
        self._engine = None
        #: longest sleep between rounds; the lease outlives it (a dead holder's lease is freed when its
        #: session is reaped, so a long TTL does not delay a takeover)
        self.tick_s = TICK_S if self.watermarks else IDLE_TICK_S
        self.lease_ttl = float(getattr(self.cfg, "session_timeout", 30.0)) + 2 * self.tick_s
        #: without the lease: how soon to try again (a rule's interval if shorter, so a freed lease
        #: is taken within one interval)
        self.retry_s = min([self.tick_s] + [r.interval for r in self.rules if r.interval and r.enabled])
        self._reconfigured.set()

    @property
    def fs(self):
        return self._fs() if callable(self._fs) else self._fs

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            fs = self.fs
            self.executor = DaemonExecutor(fs)
            self._engine = Engine(fs.catalog, self.rules, cat=fs.cat, clock=self.clock, executor=self.executor)
        return self._engine

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        pass    # nothing half done: a run's queued jobs are in the catalog

    async def run(self) -> None:
        self.started = self.clock.now()
        while True:
            if self._reconfigured.is_set():
                self._reconfigured = trio.Event()
                if self.rules:
                    log.info("policy scheduler: %d rule(s); watermarks on %s", len(self.rules),
                             ", ".join(self.watermarks) or "no tier")
            if not self.rules:
                await self._reconfigured.wait()    # none configured (yet: a reload may add some)
                continue
            try:
                delay = await self.tick()
            except errors.TierfsError as e:
                log.warning("policy scheduler: %s", e)
                delay = min(self.tick_s, TICK_S)
            except Exception:  # noqa: BLE001 - a bug must not stop the daemon
                delay = min(self.tick_s, TICK_S)
                log.exception("policy scheduler failed; trying again in %.0fs", delay)
            await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        """Sleep on the clock; a wake() (a job finished: usage may have
        changed) ends it early when watermarks are watched, not before
        MIN_TICK_S; a reload of the configuration ends it at once."""
        if self.watermarks:
            await self.clock.sleep(min(delay, MIN_TICK_S))
            if delay <= MIN_TICK_S:
                return
            delay -= MIN_TICK_S
        async with trio.open_nursery() as n:
            async def sleeper():
                await self.clock.sleep(delay)
                n.cancel_scope.cancel()

            async def waiter(event: trio.Event):
                await event.wait()
                n.cancel_scope.cancel()
            n.start_soon(sleeper)
            n.start_soon(waiter, self._reconfigured)
            if self.watermarks:
                n.start_soon(waiter, self._wake)
        if self.watermarks:
            self._wake = trio.Event()

    @property
    def session_id(self) -> str:
        """The lease holder: this mount's session now (heartbeat.py registers a new one after a reap)."""
        return getattr(self.fs, "session_id", None) or self._session_id

    async def renew(self) -> bool:
        """Take or keep the lease; False when another mount holds it."""
        ok = await self.fs.cat(self.fs.catalog.acquire_lease, LEASE, self.session_id, self.lease_ttl)
        if ok and not self.leader:
            log.info("policy scheduler: this mount (session %s) runs the policies", self.session_id)
            self.last_run = {}     # other mounts may have run them meanwhile
        if ok:
            for r in self.rules:
                if r.name not in self.last_run:   # also a rule a reload added
                    v = await self.fs.cat(self.fs.catalog.get_meta, META_LAST_RUN + r.name)
                    self.last_run[r.name] = float(v) if v else 0.0
        elif not ok and self.leader:
            log.info("policy scheduler: another mount holds the policy lease now")
        self.leader = ok
        return ok

    def due(self, rule) -> float:
        return max(self.started + rule.initial_delay, self.retry_at.get(rule.name, 0.0),
                   self.last_run.get(rule.name, 0.0) + rule.interval)

    async def tick(self) -> float:
        """One round: lease, due interval rules, watermarks. Returns the
        seconds until the next round is needed."""
        if not await self.renew():
            return self.retry_s
        await self.sweep_buried()
        now = self.clock.now()
        next_at = now + self.tick_s
        for rule in self.rules:
            if not rule.enabled or rule.interval is None:
                continue
            if now >= self.due(rule):
                await self.run_rule(rule, now)
                if not self.leader:
                    return self.tick_s
            next_at = min(next_at, self.due(rule))
        if self.watermarks:
            if now >= self.next_watermark:
                await self.check_watermarks()
                self.next_watermark = self.clock.now() + WATERMARK_CHECK_S
            next_at = min(next_at, self.next_watermark)
        return max(0.0, next_at - self.clock.now())

    async def run_rule(self, rule, now: float) -> Report:
        report = await self.engine.run([rule.name], trigger="interval", collect=False, keep_going=self.renew)
        self._remember(rule.name, report)
        if any(st.error for st in report.rules):
            self.retry_at[rule.name] = now + min(rule.interval, RULE_RETRY_S)
        else:
            self.retry_at.pop(rule.name, None)
            self.last_run[rule.name] = now
            await self.fs.cat(self.fs.catalog.set_meta, META_LAST_RUN + rule.name, repr(now))
        return report

    def _remember(self, what: str, report: Report) -> None:
        self.runs[what] += 1
        self.reports = (self.reports + [report])[-20:]
        self.ran(report, {r.name: r.action for r in self.rules})

    async def _busy(self, tier: str) -> bool:
        """True while jobs of the tier's previous watermark run are active (or settling)."""
        ids = self.inflight.get(tier)
        while ids:
            try:
                job = await self.fs.cat(self.fs.catalog.get_job, ids[-1])
            except errors.NotFound:
                job = None
            if job is not None and job.state in ACTIVE_JOB_STATES:
                return True
            ids.pop()
            if not ids:
                self.settle_until[tier] = self.clock.now() + WATERMARK_SETTLE_S
        return self.clock.now() < self.settle_until.get(tier, 0.0)

    async def check_watermarks(self) -> None:
        for name, (high, low) in self.watermarks.items():
            tier = self.fs.tiers.get(name)
            if tier is None:
                continue
            usage = await trio.to_thread.run_sync(tier.usage)
            if not usage or not usage[0]:
                if name not in self.warned:
                    log.warning("tier %s has watermarks but reports no capacity; not checked", name)
                    self.warned.add(name)
                continue
            total, free = usage
            used = total - free
            if used <= high * total or await self._busy(name):
                continue
            need = used - int(low * total)
            trigger = f"watermark {name} {used / total:.0%} > {high:.0%}"
            engine = self.engine
            self.executor.recent = []
            report = await engine.run_watermark(name, need, trigger=trigger, collect=False,
                                                     keep_going=self.renew)
            self.inflight[name] = list(self.executor.recent)
            self._remember(f"watermark {name}", report)
            t = report.totals()
            if t["bytes"] < need:
                log.warning("tier %s is %.0f%% full (high_watermark %.0f%%) and the watermark rules found only "
                            "%d file(s), %d bytes, of the %d bytes needed to reach %.0f%%", name,
                            100 * used / total, 100 * high, t["files"], t["bytes"], need, 100 * low)

    async def sweep_buried(self) -> None:
        """Purge files buried by another process (`tierfs policy run`) when free."""
        for inode in await self.fs.cat(self.fs.catalog.unlinked):
            if self.fs.known_unlinked(inode.ino):
                continue   # this mount already knows; it purges on release/forget
            if await self.fs.cat(self.fs.catalog.tombstones, inode.ino, 1):
                await purge_when_free(self.fs, inode.ino)
