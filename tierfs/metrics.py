"""Prometheus metrics of one mount, served over HTTP when the configuration
asks for it (`metrics_listen = "127.0.0.1:9108"`; off by default).

Where each figure comes from:
- FUSE requests: fuse_ops._guard times every request it answers and tells
  `RequestMetrics.observe` (operation, seconds, errno of a failure).
- Catalog calls: `instrument` wraps the public methods of the daemon's
  catalog instance (the Catalog interface's calls) from outside; only the
  outermost call of a thread is timed, so a call made inside another is
  not counted twice.
- Tier errors: the same wrapping around each tier's object calls counts the
  exceptions they raise, by tier and exception class.
- Restore waits: the engine's Events.restore_waited (archive.Offline, the
  time an open or a read blocked until a restore ended).
- Policy runs: the scheduler tells `policy_ran` each run's report.
- Files and bytes by state and tier, jobs by kind and state, the oldest
  active restore and tier health: `CatalogFigures`, a collector that runs
  the aggregate query `tierfs status` runs (Catalog.stats, a full scan of
  the inodes) on a connection of its own, in a thread of its own, at most
  once per `ttl` (100 times its last duration, at least MIN_TTL_S): a
  scrape never runs the scan on the mount's connection (SQLite serialises
  its calls: a scan there would stall every FUSE request behind it) and
  waits at most SCRAPE_WAIT_S for a fresh result, else answers with the
  last one (tierfs_catalog_figures_age_seconds says how old).

The HTTP server is prometheus_client's own (a thread per scrape, never the
trio event loop), over this mount's own registry, not the process-wide
default one. It has no authentication and no TLS.
"""

from __future__ import annotations

import errno
import functools
import logging
import re
import threading
import time
import types
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import __version__, errors
from .catalog import open_catalog
from .catalog.base import ACTIVE_JOB_STATES, Catalog, CatalogStats, JobKind
from .settings import split_listen
from .tierhealth import read_health

log = logging.getLogger(__name__)

#: FUSE requests: most answer in 20 us - 2 ms; an open that waits for a restore takes minutes
FUSE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 10.0, 60.0, 300.0)
#: catalog calls: ~30 us (SQLite, in memory) to ~1 ms (MongoDB over a LAN); scans take seconds
CATALOG_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 1.0, 5.0)
#: restores: a disk vault answers in a second, a tape library in minutes, Glacier in hours
RESTORE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0)
#: tier calls whose exceptions count as tier errors (the calls that reach the storage)
TIER_CALLS = ("put", "open_reader", "read", "delete", "verify", "prepare_restore", "create_empty", "probe", "usage")

MIN_TTL_S = 1.0        # catalog figures are at most this fresh (a small catalog: ~1 ms per scan)
TTL_FACTOR = 100       # ... and at least 100 x as old as their scan took: the scan uses <= 1% of a core
MAX_TTL_S = 600.0
SCRAPE_WAIT_S = 2.0    # a scrape waits this long for a refresh, then answers with the last figures


class _Depth(threading.local):
    busy = False   # a class default: a missing thread-local attribute costs 1.4 us (the AttributeError)


def instrument(obj, names: Iterable[str], observe: Callable[[str, float, BaseException | None], None]) -> None:
    """Replace the methods `names` of the instance `obj` by wrappers that tell
    observe(name, seconds, exception or None) of each outermost call of a
    thread. The wrappers are bound methods of `obj` with the original names,
    so code that tells calls apart by `fn.__self__` / `fn.__name__` (fs.cat's
    inline calls) sees no difference."""
    depth = _Depth()
    for name in names:
        fn = getattr(obj, name)

        def wrapper(self, *args, _fn=fn, _name=name, **kwargs):
            if depth.busy:
                return _fn(*args, **kwargs)
            depth.busy = True
            t0 = time.perf_counter()
            exc = None
            try:
                return _fn(*args, **kwargs)
            except BaseException as e:
                exc = e
                raise
            finally:
                depth.busy = False
                observe(_name, time.perf_counter() - t0, exc)
        functools.update_wrapper(wrapper, fn)
        setattr(obj, name, types.MethodType(wrapper, obj))


def catalog_calls(catalog: Catalog) -> list[str]:
    """The Catalog interface's calls, less those returning iterators (their
    time is spent after they return, by whoever iterates)."""
    import inspect
    return sorted(n for n, v in vars(Catalog).items()
                  if not n.startswith("_") and inspect.isfunction(v)
                  and not inspect.isgeneratorfunction(getattr(type(catalog), n, v)))


def error_kind(e: BaseException) -> str:
    """A tier error's label: its class name in snake case (tier_unavailable, no_space, object_missing...)."""
    name = type(e).__name__ if isinstance(e, (errors.TierfsError, OSError)) else "other"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class RequestMetrics:
    """FUSE request latency and errors, per operation (fuse_ops.Operations)."""

    def __init__(self, registry: CollectorRegistry):
        self.latency = Histogram("tierfs_fuse_request_duration_seconds",
                                 "FUSE requests answered, by operation, and how long they took", ["op"],
                                 buckets=FUSE_BUCKETS, registry=registry)
        self.errors = Counter("tierfs_fuse_request_errors", "FUSE requests answered with an error, by errno",
                              ["op", "errno"], registry=registry)
        self._ops: dict[str, Histogram] = {}   # op -> its child (labels() costs ~3 us: a lock, a tuple, a lookup)
        self._errs: dict[tuple[str, int], Counter] = {}

    def observe(self, op: str, seconds: float, err: int = 0) -> None:
        child = self._ops.get(op)
        if child is None:
            child = self._ops[op] = self.latency.labels(op)
        child.observe(seconds)
        if err:
            counter = self._errs.get((op, err))
            if counter is None:
                counter = self._errs[op, err] = self.errors.labels(op, errno.errorcode.get(err, str(err)))
            counter.inc()


class CatalogFigures(Collector):
    """Files, bytes, jobs, the oldest active restore and tier health, from
    the catalog's aggregate query, refreshed in the background (module doc)."""

    def __init__(self, url: str, tiers: dict[str, bool], clock: Callable[[], float] = time.monotonic):
        self.url = url
        self.tiers = tiers              # name -> is an archive tier
        self.clock = clock
        self._cat: Catalog | None = None
        self._lock = threading.Lock()
        self._fresh = threading.Event()  # set when no refresh runs
        self._fresh.set()
        self._snap: dict | None = None
        self._taken = 0.0                # clock() when the last refresh ended
        self.duration = 0.0              # seconds the last refresh took
        self.error = ""

    @property
    def ttl(self) -> float:
        return min(MAX_TTL_S, max(MIN_TTL_S, TTL_FACTOR * self.duration))

    def _refresh(self) -> None:
        t0 = time.perf_counter()
        try:
            if self._cat is None:
                self._cat = open_catalog(self.url)
            cat = self._cat
            st = cat.stats()
            oldest = [j for j in cat.jobs(ACTIVE_JOB_STATES, limit=1) if j.kind == JobKind.RESTORE]
            self._snap = dict(stats=st, oldest_restore_ns=oldest[0].created_ns if oldest else None,
                              health={n: read_health(cat.get_meta, n) for n in self.tiers})
            self.error = ""
        except Exception as e:  # noqa: BLE001 - a scrape reports it (and the last figures) rather than fail
            self.error = str(e)
            log.warning("metrics: reading the catalog's figures: %s", e)
        finally:
            self.duration = time.perf_counter() - t0
            self._taken = self.clock()
            self._fresh.set()

    def refresh(self, wait: float = SCRAPE_WAIT_S) -> None:
        """Start a refresh unless one runs or the figures are younger than
        ttl; wait for it at most `wait` seconds."""
        with self._lock:
            if self._fresh.is_set() and (self._snap is None or self.clock() - self._taken >= self.ttl):
                self._fresh.clear()
                threading.Thread(target=self._refresh, name="tierfs-metrics-catalog", daemon=True).start()
        self._fresh.wait(wait)

    def close(self) -> None:
        self._fresh.wait(30)
        if self._cat is not None:
            self._cat.close()

    def collect(self):
        self.refresh()
        snap = self._snap
        age = GaugeMetricFamily("tierfs_catalog_figures_age_seconds",
                                "Age of the catalog figures below (files, bytes, jobs, tier health)")
        age.add_metric([], self.clock() - self._taken if snap else float("nan"))
        took = GaugeMetricFamily("tierfs_catalog_figures_duration_seconds",
                                 "How long the last aggregate query of the catalog took")
        took.add_metric([], self.duration)
        yield age
        yield took
        if snap is None:
            return
        yield from self._families(snap["stats"])
        oldest = GaugeMetricFamily("tierfs_oldest_restore_age_seconds",
                                   "Age of the oldest restore queued or running (0: none)")
        oldest.add_metric([], max(0.0, (time.time_ns() - snap["oldest_restore_ns"]) / 1e9)
                          if snap["oldest_restore_ns"] else 0.0)
        yield oldest
        up = GaugeMetricFamily("tierfs_tier_healthy", "1 unless a mount found the tier unreachable or full",
                               labels=["tier"])
        for name, health in snap["health"].items():
            up.add_metric([name], 1.0 if health.state == "ok" else 0.0)
        yield up

    def _families(self, st: CatalogStats):
        files = GaugeMetricFamily("tierfs_files", "Regular files, by state", labels=["state"])
        nbytes = GaugeMetricFamily("tierfs_file_bytes", "Logical size of the regular files, by state",
                                   labels=["state"])
        for state, (n, b) in sorted(st.by_state.items()):
            files.add_metric([state], n)
            nbytes.add_metric([state], b)
        objects = GaugeMetricFamily("tierfs_tier_objects", "Files with a copy on the tier", labels=["tier"])
        tbytes = GaugeMetricFamily("tierfs_tier_bytes", "Bytes of the files with a copy on the tier",
                                   labels=["tier"])
        for name, archive in self.tiers.items():
            n, b = (st.by_archive if archive else st.by_tier).get(name, (0, 0))
            objects.add_metric([name], n)
            tbytes.add_metric([name], b)
        jobs = GaugeMetricFamily("tierfs_jobs", "Jobs in the catalog, by kind and state", labels=["kind", "state"])
        for state, kinds in sorted(st.jobs.items()):
            for kind, n in sorted(kinds.items()):
                jobs.add_metric([kind, state], n)
        yield from (files, nbytes, objects, tbytes, jobs)


class Metrics:
    """One mount's metrics: its registry, what the engine reports into it,
    and the HTTP server (a background service: `run` / `wake` / `stop`)."""

    def __init__(self, listen: str, *, catalog_url: str, tiers: dict[str, bool], session: str):
        self.listen = listen
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self._info = Info("tierfs", "This mount's daemon", registry=r)
        self._facts = dict(version=__version__, catalog=catalog_url.split(":", 1)[0].split("+", 1)[0])
        self.set_session(session)
        self.requests = RequestMetrics(r)
        self.catalog_latency = Histogram("tierfs_catalog_call_duration_seconds",
                                         "Catalog calls of the daemon, by call, and how long they took",
                                         ["call"], buckets=CATALOG_BUCKETS, registry=r)
        self.tier_errors = Counter("tierfs_tier_errors", "Exceptions raised by tier calls, by tier and kind",
                                   ["tier", "error"], registry=r)
        self.restore_wait = Histogram("tierfs_restore_wait_seconds",
                                      "How long opens and reads blocked waiting for a restore, by outcome",
                                      ["outcome"], buckets=RESTORE_BUCKETS, registry=r)
        self.policy_runs = Counter("tierfs_policy_runs", "Policy runs of this mount, by rule and trigger",
                                   ["rule", "trigger"], registry=r)
        self.policy_files = Counter("tierfs_policy_files", "Files policy runs acted on, by rule and action",
                                    ["rule", "action"], registry=r)
        self.policy_bytes = Counter("tierfs_policy_bytes", "Bytes of the files policy runs acted on",
                                    ["rule", "action"], registry=r)
        self.figures = CatalogFigures(catalog_url, tiers)
        r.register(self.figures)
        self._server = None
        self._thread = None
        self._calls: dict[str, Histogram] = {}

    # ---- wiring (engine.build_engine) ---------------------------------------
    def set_session(self, session: str) -> None:
        """The session label of tierfs_info (again after a renewal: FileSystem.on_session_renewed)."""
        self._info.info(dict(self._facts, session=session))

    def instrument_catalog(self, catalog: Catalog) -> None:
        instrument(catalog, catalog_calls(catalog), self._catalog_call)

    def _catalog_call(self, name: str, seconds: float, exc: BaseException | None) -> None:
        child = self._calls.get(name)
        if child is None:
            child = self._calls[name] = self.catalog_latency.labels(name)
        child.observe(seconds)

    def instrument_tier(self, tier) -> None:
        def observe(call: str, seconds: float, exc: BaseException | None) -> None:
            if exc is not None and not isinstance(exc, errors.Pending):   # Pending: a batch tier's "later"
                self.tier_errors.labels(tier.name, error_kind(exc)).inc()
        instrument(tier, [n for n in TIER_CALLS if hasattr(tier, n)], observe)

    # ---- what the engine reports ----------------------------------------------
    def restore_waited(self, seconds: float, outcome: str) -> None:
        self.restore_wait.labels(outcome).observe(seconds)

    def policy_ran(self, report, actions: dict[str, str]) -> None:
        """A run's report (policy/engine.Report); actions: rule name -> its action."""
        trigger = report.trigger.split(" ", 1)[0]   # "interval", "watermark" (the rest names the tier)
        for r in report.rules:
            action = actions.get(r.rule, "?")
            self.policy_runs.labels(r.rule, trigger).inc()
            self.policy_files.labels(r.rule, action).inc(r.actions)
            self.policy_bytes.labels(r.rule, action).inc(r.bytes)

    # ---- the HTTP server ---------------------------------------------------------
    def bind(self) -> None:
        """Listen, at mount (a port in use stops the mount, see the README)."""
        host, port = split_listen(self.listen)
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as e:
            raise errors.ConfigError(f"metrics_listen = {self.listen!r}: cannot listen there: "
                                     f"{e.strerror or e}") from None
        log.info("metrics served on http://%s/metrics (no authentication)", self.listen)

    async def run(self) -> None:
        pass   # the server runs in its own thread from bind() on

    def wake(self) -> None:
        pass

    async def stop(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening (unmount); idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None
            log.info("metrics server on %s stopped", self.listen)
        self.figures.close()
