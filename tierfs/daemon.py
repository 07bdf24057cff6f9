"""The mounted process: the FUSE loop, and the engine with its background
services (garbage collector, checksum backlog, heartbeat, staged uploads,
access times, policies, job workers), all built by tierfs/engine.py.

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

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
import uuid

import pyfuse3
import trio

from . import config as config_mod, errors, logs, mounts, runtime
from .catalog import open_catalog
from .catalog.base import Catalog, Session, now_ns
from .config import Config, prepare_embedded_dirs
from .engine import Engine, build_engine
from .passthrough import Passthrough
from .fs import FileSystem
from .fuse_ops import Operations
from .redact import redact_url

log = logging.getLogger("tierfs")

#: default kernel attr/entry cache timeouts (config attr_timeout / entry_timeout unset)
SHARED_KERNEL_CACHE_S = 1.0
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

    def __init__(self, cfg: Config, mountpoint: str, catalog: Catalog | None = None,
                 kernel_flags: tuple[str, ...] = ()):
        self.cfg = cfg
        self.kernel_flags = kernel_flags   # `-o ro`, `-o noexec`, ...: for the kernel's mount (cli/mount.py)
        self.mountpoint = os.path.abspath(mountpoint)
        self.catalog = catalog
        self._session_id = uuid.uuid4().hex[:16]
        self.engine: Engine | None = None
        self.fs: FileSystem | None = None
        self.warnings: list[str] = []  # said on the terminal of `tierfs mount` too (not only in the log)

    @property
    def session_id(self) -> str:
        """This mount's session: the one registered at mount, or the new one its heartbeat registered
        after another mount reaped it (heartbeat.py); the one unmount ends."""
        return self.fs.session_id if self.fs is not None else self._session_id

    # ---- setup (synchronous: errors here are startup errors) -------------
    def open(self) -> None:
        from .policy.scheduler import check_policies
        check_policies(self.cfg)   # [[policy]] errors stop the mount before it registers
        made_state_dir = not os.path.isdir(self.cfg.state_dir)
        prepare_embedded_dirs(self.cfg)   # the state directory first: a config may keep its catalog there
        try:
            if self.catalog is None:
                self.catalog = open_catalog(self.cfg.catalog)
            self.catalog.hold_for_mount(self.mountpoint)   # before init(): a second daemon must not even migrate it
            self.catalog.init(root_uid=os.getuid(), root_gid=os.getgid())
        except BaseException:
            # Refused (catalog unreachable, held by another daemon, newer): no empty state directory left behind.
            if made_state_dir:
                with contextlib.suppress(OSError):
                    os.rmdir(self.cfg.state_dir)
            raise
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
        try:
            self.engine = build_engine(self.cfg, self.catalog, tiers, self.session_id,
                                       staging_dir=os.path.join(self.cfg.state_dir, "staging",
                                                                mounts.runtime_key(self.mountpoint)),
                                       passthrough=Passthrough(self.cfg.passthrough), mountpoint=self.mountpoint)
        except BaseException:   # refused (metrics port in use, unknown archivers group): nothing to recover
            self.catalog.end_session(self.session_id, clean=True)
            raise
        self.fs = self.engine.fs

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
            self.warnings.append(msg)
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

    # ---- signals -----------------------------------------------------------
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
            for part in self.engine.reloadable():
                part.check_config(new)
        except errors.ConfigError as e:
            log.error("reload of %s refused, the running configuration stays: %s", source, e)
            return
        if not live:
            log.info("reload of %s: nothing changed", source)
            return
        self.cfg.take(new)
        for part in self.engine.reloadable():
            part.config_changed()
        logs.set_level(self.cfg.log_level)
        if any(key == "read_ahead_kb" for key, _, _ in live):
            self._set_read_ahead()
        for key, old, value in live:
            log.info("reload: %s: %s -> %s", key, old, value)
        log.info("reload of %s: %d change(s) applied in %.1f ms", source, len(live), (time.monotonic() - t0) * 1e3)
        self.engine.services.changed()   # job limits or rules may let more run now

    # ---- main ------------------------------------------------------------
    def _after_init(self) -> None:
        """Once the kernel has our answer to FUSE INIT."""
        self._set_read_ahead()
        self.fs.passthrough.probe(self.fs.staging.dir)

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
        opts = {"fsname=tierfs", "subtype=tierfs", "default_permissions", *self.kernel_flags}
        if self.cfg.allow_other:
            opts.add("allow_other")
        if os.environ.get("TIERFS_NO_AUTO_UNMOUNT") != "1":
            opts.add("auto_unmount")
        return opts

    async def _main(self, on_ready) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.signal_loop)
            self.engine.start(nursery)
            on_ready()
            await pyfuse3.main(min_tasks=4, max_tasks=256)
            log.info("FUSE session ended; flushing")
            await self.engine.stop()
            nursery.cancel_scope.cancel()

    def run(self, on_ready=lambda: None) -> None:
        ops = Operations(self.fs, attr_timeout=self.cfg.attr_timeout, entry_timeout=self.cfg.entry_timeout,
                         xattrs=self.cfg.xattrs, metrics=self.engine.metrics and self.engine.metrics.requests,
                         after_init=lambda: trio.lowlevel.current_trio_token().run_sync_soon(self._after_init))
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
                # (again with the new id when another mount reaps our session: `tierfs status` shows it)
                self.fs.on_session_renewed(lambda new: runtime.publish(dataclasses.replace(record, session=new)))
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



