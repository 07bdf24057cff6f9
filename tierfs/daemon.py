"""The mounted process: FUSE loop, garbage collector, checksummer, heartbeat
(and, from tierfs/jobs.py, the job workers).

`tierfs mount --foreground` runs `run()` in the calling process; that is
what systemd starts (Type=notify: READY=1 once the mount is live,
STOPPING=1 on the way down). Without --foreground the CLI starts this same
command in a new session and waits on a pipe until it reports "ready" or
the error that stopped it.

Signals: SIGTERM and SIGINT unmount cleanly. SIGHUP never unmounts: it
reopens the log file (logrotate) and reloads the configuration the daemon
was started with (`reload`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import uuid

import pyfuse3
import trio

from . import config as config_mod, errors, faults, logs, mounts, runtime
from .catalog import open_catalog
from .catalog.base import Catalog, Session, now_ns
from .config import Config, prepare_embedded_dirs
from .fs import FileSystem
from .fuse_ops import Operations
from .redact import redact_url
from .tiers.disk import in_place_key

log = logging.getLogger("tierfs")

#: default kernel attr/entry cache timeouts (config attr_timeout / entry_timeout unset)
SHARED_KERNEL_CACHE_S = 1.0
#: the collector waits this long after a deletion wakes it, to batch the next ones
GC_BATCH_S = 0.2
UNSHARED_KERNEL_CACHE_S = 30.0


def sd_notify(msg: str) -> None:
    """Tell systemd about our state (Type=notify); a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(msg.encode())
    except OSError as e:
        log.warning("sd_notify %s: %s", msg, e)


class Daemon:
    """Everything one mount runs."""

    def __init__(self, cfg: Config, mountpoint: str, catalog: Catalog | None = None):
        self.cfg = cfg
        self.mountpoint = os.path.abspath(mountpoint)
        self.catalog = catalog
        self.session_id = uuid.uuid4().hex[:16]
        self.fs: FileSystem | None = None
        self.gc_event: trio.Event | None = None
        self.gc_urgent = False   # a move (not a deletion) woke the collector: no batching delay
        self.extensions = []   # objects with async run(nursery-started) hooks (jobs, policy)
        self.warnings: list[str] = []  # said on the terminal of `tierfs mount` too (not only in the log)

    # ---- setup (synchronous: errors here are startup errors) -------------
    def open(self) -> None:
        from .policy.scheduler import PolicyScheduler  # [[policy]] errors stop the mount before it registers
        self.extensions.append(PolicyScheduler(lambda: self.fs, self.cfg, self.session_id))
        prepare_embedded_dirs(self.cfg)
        if self.catalog is None:
            self.catalog = open_catalog(self.cfg.catalog)
        self.catalog.hold_for_mount(self.mountpoint)   # before init(): a second daemon must not even migrate it
        self.catalog.init(root_uid=os.getuid(), root_gid=os.getgid())
        tiers = self.cfg.make_tiers()
        for t in tiers.values():
            try:
                t.check()
            except errors.TierUnavailable as e:
                # A remote tier that is down must not keep the other tiers' files from being used.
                log.warning("tier %s is unreachable at mount (%s); its files give EIO until it is back", t.name, e)
            if hasattr(t, "cleanup_tmp"):
                t.cleanup_tmp()
        self._check_previous_sessions()
        self._check_tiers_in_use(tiers)
        self.catalog.register_session(Session(
            id=self.session_id, host=socket.gethostname(), pid=os.getpid(), mountpoint=self.mountpoint,
            started_ns=now_ns(), heartbeat_ns=now_ns()))
        self._default_kernel_caches(self.cfg)
        self.fs = FileSystem(self.cfg, self.catalog, tiers, self.session_id,
                             staging_dir=os.path.join(self.cfg.state_dir, "staging",
                                                      mounts.runtime_key(self.mountpoint)))
        from . import archive, jobs
        self.fs.offline = archive.Offline(self.fs, self.cfg)
        self.extensions.append(jobs.JobRunner(self.fs, self.cfg, self.session_id))

    def _default_kernel_caches(self, cfg: Config) -> None:
        """attr_timeout / entry_timeout left unset: by whether the catalog is shared."""
        for key in ("attr_timeout", "entry_timeout"):
            if getattr(cfg, key) is None:
                # A catalog only this mount uses changes only through this kernel (moves invalidate
                # what they change), so the kernel may cache names and attributes much longer.
                setattr(cfg, key, SHARED_KERNEL_CACHE_S if self.catalog.shared else UNSHARED_KERNEL_CACHE_S)

    def _check_previous_sessions(self) -> None:
        """Warn about (or refuse, per `on_unclean`) a previous daemon on this
        host and mountpoint that died without unmounting, then recover."""
        host = socket.gethostname()
        dead = [s for s in self.catalog.sessions()
                if not s.clean and s.host == host and not mounts.pid_alive(s.pid)]
        for s in dead:
            msg = (f"the previous tierfs daemon (pid {s.pid}, mounted on {s.mountpoint}) did not unmount cleanly; "
                   "running recovery")
            if self.cfg.on_unclean == "refuse" and s.mountpoint == self.mountpoint:
                raise errors.ConfigError(msg.replace("running recovery", "run `tierfs fsck` (on_unclean = refuse)"))
            log.warning(msg)
            self.catalog.end_session(s.id, clean=True)
        live_other = [s for s in self.catalog.sessions() if not s.clean]
        if not live_other:
            # Nobody else uses the catalog: unlinked-but-open files of dead mounts can go.
            for inode in self.catalog.unlinked():
                self.catalog.purge(inode.ino)

    def _check_tiers_in_use(self, tiers: dict) -> None:
        """Files or jobs on tiers this config lacks: their reads fail here, and
        their jobs are left to mounts that have the tiers (jobs.JobRunner)."""
        missing = sorted(self.catalog.tiers_in_use() - set(tiers))
        if missing:
            msg = (f"the catalog uses tier(s) {', '.join(missing)} that this configuration does not define: "
                   "their files cannot be read here and their jobs are left to mounts that define them")
            log.warning("%s", msg)
            self.warnings.append(msg)

    # ---- background tasks ------------------------------------------------
    def wake(self) -> None:
        """A move finished: collect its garbage now (its space may be awaited);
        jobs and policies may go on."""
        self.gc_urgent = True
        self.wake_gc()
        for ext in self.extensions:
            if hasattr(ext, "wake"):
                ext.wake()

    def wake_gc(self) -> None:
        """Objects became garbage (a file was deleted): only the collector cares."""
        if self.gc_event is not None:
            self.gc_event.set()

    async def gc_loop(self) -> None:
        """Delete tier objects nothing references (after unlink or a move)."""
        while True:
            self.gc_event = trio.Event()
            try:
                await self.collect_garbage()
            except errors.TierfsError as e:
                log.warning("garbage collection: %s", e)
            except Exception:  # noqa: BLE001 - keep the loop alive, log the bug
                log.exception("garbage collection failed")
            with trio.move_on_after(2.0):
                await self.gc_event.wait()
                if not self.gc_urgent:
                    await trio.sleep(GC_BATCH_S)  # an rm -r deletes thousands: collect them in batches
            self.gc_urgent = False

    async def collect_garbage(self) -> int:
        fs = self.fs
        done = 0
        while True:
            items = await fs.cat(fs.catalog.garbage, 200)
            items = [g for g in items if not fs.objects.is_pinned(g.tier, g.key)]
            if not items:
                return done
            removed = []
            for g in items:
                tier = fs.tiers.get(g.tier)
                if tier is None:
                    continue  # a tier another mount has; it will collect it
                if await fs.cat(fs.catalog.references, g.tier, g.key):
                    log.warning("garbage entry %s/%s is still referenced; keeping the object", g.tier, g.key)
                elif in_place_key(g.key) and g.reason != "file deleted":
                    # The original of an imported file (tierfs import --in-place): moving the file's bytes
                    # elsewhere never deletes the user's own file; only deleting the file through tierfs does.
                    log.info("keeping %s/%s, the original of an imported file (%s)", g.tier, g.key, g.reason)
                else:
                    faults.point("gc.before_delete")
                    await trio.to_thread.run_sync(tier.delete, g.key)
                removed.append(g.id)
            if not removed:
                return done
            await fs.cat(fs.catalog.remove_garbage, removed)
            done += len(removed)

    async def atime_loop(self) -> None:
        """Batched access tracking: pending atimes reach the catalog here, and
        the size and mtime of files open for writing, at most once per file per
        atime_flush: a log a daemon keeps open and appends to for months is in
        use, and policies must see its mtime move (it reached the catalog only
        at close, so the catalog showed it idle since it was opened)."""
        offline = self.fs.offline
        written = time.monotonic()
        while True:
            await trio.sleep(min(self.cfg.atime_flush, 5.0))
            try:
                await offline.flush_atimes()
                if time.monotonic() - written >= self.cfg.atime_flush:
                    written = time.monotonic()
                    await self.fs.flush_all()
            except errors.TierfsError as e:
                log.warning("writing access times: %s", e)

    async def heartbeat_loop(self) -> None:
        """Renew our session; reap sessions silent for session_timeout. We
        reap only after reaching the catalog for a whole timeout ourselves:
        after a catalog outage every heartbeat is stale, and live mounts need
        that long to renew theirs."""
        # Never shorter than two heartbeats, so a live mount is not reaped.
        dead_s = max(self.cfg.session_timeout, 2 * self.cfg.heartbeat_interval)
        reachable_since: float | None = time.monotonic()  # open() just used the catalog
        while True:
            await trio.sleep(self.cfg.heartbeat_interval)
            try:
                await self.fs.cat(self.catalog.heartbeat, self.session_id)
                reachable_since = reachable_since or time.monotonic()
                if time.monotonic() - reachable_since < dead_s:
                    continue
                reaped = await self.fs.cat(self.catalog.reap_sessions, now_ns() - int(dead_s * 1e9))
                for sid in reaped:
                    log.warning("reaped dead session %s: its jobs return to the queue", sid)
                    self.wake()
                if reaped:
                    await self.purge_unlinked()
            except errors.TierfsError as e:
                reachable_since = None
                log.warning("heartbeat: %s", e)

    async def purge_unlinked(self) -> None:
        """Unlinked files nobody has open any more (a dead mount held them) go."""
        fs = self.fs
        for inode in await fs.cat(self.catalog.unlinked):
            if not fs.opens.get(inode.ino) and not fs.lookups.get(inode.ino):
                if await fs.cat(self.catalog.purge, inode.ino) is not None:
                    self.wake()

    async def signal_loop(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    self.hangup()
                    continue
                log.info("received %s: unmounting", signal.Signals(signum).name)
                sd_notify("STOPPING=1")
                pyfuse3.terminate()
                return

    def hangup(self) -> None:
        """SIGHUP (logrotate's postrotate, `systemctl reload`): a new log
        file at the original path, then the configuration reloaded."""
        log.info("received SIGHUP: reopening the log, reloading the configuration")
        try:
            if logs.reopen():
                log.info("log file reopened")
        except OSError as e:   # the old file stays in use
            log.error("reopening the log file: %s", e)
        try:
            self.reload()
        except Exception:  # noqa: BLE001 - a bug must not end the mount
            log.exception("reload failed; the running configuration stays")

    def _reloadable(self) -> list:
        """The parts that derive something from the configuration (parsed
        rules, a group id): they check a new one, and re-derive after it is taken."""
        return [p for p in (self.fs.offline, *self.extensions) if hasattr(p, "check_config")]

    def reload(self) -> None:
        """Read the config file (and -o overrides) the daemon started with
        again and take what may change live (config.LIVE_KEYS), one log line
        per change. A file that does not parse, or that changes what needs a
        remount, is refused with one log line: the running configuration
        stays, entirely."""
        t0 = time.monotonic()
        source = self.cfg.path or "the embedded default configuration"
        try:
            new = config_mod.reread(self.cfg)
            self._default_kernel_caches(new)
            live, fixed = config_mod.reload_changes(self.cfg, new)
            if fixed:
                raise errors.ConfigError(f"{', '.join(fixed)} cannot change while mounted (remount to apply)")
            for part in self._reloadable():
                part.check_config(new)
        except errors.ConfigError as e:
            log.error("reload of %s refused, the running configuration stays: %s", source, e)
            return
        if not live:
            log.info("reload of %s: nothing changed", source)
            return
        self.cfg.take(new)
        for part in self._reloadable():
            part.config_changed()
        logs.set_level(self.cfg.log_level)
        if any(key == "read_ahead_kb" for key, _, _ in live):
            self._set_read_ahead()
        for key, old, value in live:
            log.info("reload: %s: %s -> %s", key, old, value)
        log.info("reload of %s: %d change(s) applied in %.1f ms", source, len(live), (time.monotonic() - t0) * 1e3)
        self.wake()   # job limits or rules may let more run now

    # ---- main ------------------------------------------------------------
    def _set_read_ahead(self) -> None:
        """A 1 MiB read-ahead lets the kernel send 1 MiB reads (8x fewer
        requests than with its 128 KiB default); only root may set it. The
        kernel resets it while it handles our answer to FUSE INIT, so this
        runs on the next scheduler tick after Operations.init."""
        kb = self.cfg.read_ahead_kb
        if kb:
            why = mounts.set_read_ahead(self.mountpoint, kb)
            if why:
                log.info("read_ahead_kb = %d not applied (%s): reads come in 128 KiB requests", kb, why)

    def fuse_options(self) -> set[str]:
        opts = {"fsname=tierfs", "subtype=tierfs", "default_permissions"}
        if self.cfg.allow_other:
            opts.add("allow_other")
        if os.environ.get("TIERFS_NO_AUTO_UNMOUNT") != "1":
            opts.add("auto_unmount")
        return opts

    async def _main(self, on_ready) -> None:
        self.fs.on_change = self.wake
        self.fs.on_garbage = self.wake_gc
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.signal_loop)
            nursery.start_soon(self.gc_loop)
            nursery.start_soon(self.fs.checksums.run)
            nursery.start_soon(self.heartbeat_loop)
            nursery.start_soon(self.atime_loop)
            nursery.start_soon(self.fs.staging.run)
            for ext in self.extensions:
                nursery.start_soon(ext.run)
            on_ready()
            await pyfuse3.main(min_tasks=4, max_tasks=256)
            log.info("FUSE session ended; flushing")
            await self.fs.flush_all()
            await self.fs.staging.shutdown()
            try:
                await self.fs.offline.flush_atimes(force=True)
            except errors.TierfsError as e:
                log.error("writing access times at unmount: %s", e)
            for ext in self.extensions:
                if hasattr(ext, "stop"):
                    await ext.stop()
            nursery.cancel_scope.cancel()

    def run(self, on_ready=lambda: None) -> None:
        ops = Operations(self.fs, attr_timeout=self.cfg.attr_timeout, entry_timeout=self.cfg.entry_timeout,
                         xattrs=self.cfg.xattrs,
                         after_init=lambda: trio.lowlevel.current_trio_token().run_sync_soon(self._set_read_ahead))
        try:
            pyfuse3.init(ops, self.mountpoint, self.fuse_options())
        except RuntimeError as e:
            raise errors.TierfsError(f"cannot mount on {self.mountpoint}: {e}") from e
        clean = False
        record = runtime.MountRecord.of(mountpoint=self.mountpoint, config=self.cfg.path, overrides=self.cfg.overrides,
                                        catalog=self.cfg.catalog, session=self.session_id,
                                        home=config_mod.tierfs_home())
        try:
            def ready():
                log.info("tierfs mounted on %s (catalog %s, tiers %s, session %s)", self.mountpoint,
                         redact_url(self.cfg.catalog), ", ".join(f"{n}:{t.kind}" for n, t in self.fs.tiers.items()),
                         self.session_id)
                runtime.publish(record)   # before READY: `tierfs mount` returns with it in place
                sd_notify("READY=1")
                on_ready()
            trio.run(self._main, ready)
            clean = True
        finally:
            runtime.remove(record)
            try:
                pyfuse3.close(unmount=True)
            except Exception as e:  # noqa: BLE001
                log.warning("closing FUSE session: %s", e)
            try:
                self.catalog.end_session(self.session_id, clean=clean)
            except Exception as e:  # noqa: BLE001
                log.warning("ending session: %s", e)
            self.catalog.close()
            log.info("tierfs unmounted from %s", self.mountpoint)



