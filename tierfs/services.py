"""Background services of a mount behind one protocol (run / wake / stop),
and the events the engine sends them.

A service is started once in the daemon's nursery (`run` never returns
while the mount lives), woken when something it waits for may have
happened (`wake`: cheap, never blocks, may be called any number of times),
and stopped at unmount, in registration order, after the FUSE session ended
(`stop`: its last work, such as uploading staged copies or writing pending
access times; then the nursery is cancelled).

The engine (fs.py, archive.py, staging.py, the job runner) does not know
the services: it reports what happened to an `Events` object it receives
at construction; `Services` is the daemon's implementation, `NoEvents`
the one of an engine without background services (in-process tests).
"""

from __future__ import annotations

from typing import Awaitable, Callable, Protocol


class Service(Protocol):
    async def run(self) -> None: ...

    def wake(self) -> None: ...

    async def stop(self) -> None: ...


class Collector(Service, Protocol):
    def deleted(self) -> None:
        """Objects became garbage: collect them soon, in a batch (gc.GarbageCollector)."""


class Observer(Service, Protocol):
    def restore_waited(self, seconds: float, outcome: str) -> None:
        """See Events.restore_waited (metrics.Metrics)."""


class Events(Protocol):
    """What the engine tells the background services."""

    def changed(self) -> None:
        """A move (or a job's end, a reaped session) changed files: jobs,
        policies and the collector may go on at once."""

    def garbage(self) -> None:
        """A file was deleted: its objects are garbage (collected in batches)."""

    def queued(self) -> None:
        """A job was queued: the job runner should look."""

    def restore_waited(self, seconds: float, outcome: str) -> None:
        """An open or a read blocked `seconds` for a restore, which ended with
        `outcome` ("restored", "timeout", "error"): for the metrics."""


class NoEvents:
    """Events of an engine without background services."""

    def changed(self) -> None:
        pass

    def garbage(self) -> None:
        pass

    def queued(self) -> None:
        pass

    def restore_waited(self, seconds: float, outcome: str) -> None:
        pass


class Task:
    """A service that is one coroutine, with nothing to wake or stop (the
    loop wakes itself on a timer, or the component wakes itself)."""

    def __init__(self, run: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]] | None = None):
        self._run = run
        self._stop = stop

    async def run(self) -> None:
        await self._run()

    def wake(self) -> None:
        pass

    async def stop(self) -> None:
        if self._stop is not None:
            await self._stop()


class Idle:
    """Stands for a role no service fills (a mount without job runner)."""

    async def run(self) -> None:
        pass

    def wake(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def deleted(self) -> None:
        pass

    def restore_waited(self, seconds: float, outcome: str) -> None:
        pass


class Services:
    """The mount's services, and the Events implementation that wakes them.
    The collector, the job runner and the metrics have roles of their own: a
    deletion wakes only the collector (batched), a queued job only the runner,
    and only the metrics hear of restore waits."""

    def __init__(self):
        self.all: list[Service] = []
        self.gc: Collector = Idle()
        self.jobs: Service = Idle()
        self.metrics: Observer = Idle()

    def add(self, service: Service) -> Service:
        self.all.append(service)
        return service

    def wake_all(self) -> None:
        for s in self.all:
            s.wake()

    async def stop_all(self) -> None:
        for s in self.all:
            await s.stop()

    # ---- Events --------------------------------------------------------------
    def changed(self) -> None:
        self.wake_all()

    def garbage(self) -> None:
        self.gc.deleted()

    def queued(self) -> None:
        self.jobs.wake()

    def restore_waited(self, seconds: float, outcome: str) -> None:
        self.metrics.restore_waited(seconds, outcome)
