"""Failure and delay wrappers around the engine's real tier and catalog
objects (the engine tests' only stand-ins: the call still reaches the real
object unless the wrapper fails it)."""

from __future__ import annotations

import threading
from typing import Callable

import trio


class Recorder:
    """Wraps `obj.name` (a method called in a worker thread): records the fake
    time of each call and raises `fail(n)`'s exception for call n when it
    returns one."""

    def __init__(self, obj, name: str, clock, fail: Callable[[int], Exception | None] = lambda n: None):
        self.obj, self.name, self.clock, self.fail = obj, name, clock, fail
        self.real = getattr(obj, name)
        self.times: list[float] = []
        setattr(obj, name, self)

    def __call__(self, *args, **kwargs):
        self.times.append(self.clock.current_time())
        e = self.fail(len(self.times))
        if e is not None:
            raise e
        return self.real(*args, **kwargs)

    def restore(self) -> None:
        setattr(self.obj, self.name, self.real)


class Gate:
    """Wraps `obj.name` (called in a worker thread) so that a chosen call,
    after the real call ran, holds its result until the test opens the gate:
    `await gate.reached()`, act, `gate.open()`. The clock stands still while
    the call is held (a worker thread runs)."""

    def __init__(self, obj, name: str, when: Callable[..., bool] = lambda *a, **k: True, before: bool = False):
        self.obj, self.name, self.when, self.before = obj, name, when, before
        self.real = getattr(obj, name)
        self.held = threading.Event()
        self.go = threading.Event()
        setattr(obj, name, self)

    def __call__(self, *args, **kwargs):
        if not self.when(*args, **kwargs) or self.go.is_set():
            return self.real(*args, **kwargs)
        if self.before:
            self.held.set()
            self.go.wait(60)
            return self.real(*args, **kwargs)
        result = self.real(*args, **kwargs)
        self.held.set()
        self.go.wait(60)
        return result

    async def reached(self) -> None:
        await trio.to_thread.run_sync(self.held.wait, 60)
        assert self.held.is_set(), f"{self.name} was not called within 60 s"

    def open(self) -> None:
        self.go.set()
        setattr(self.obj, self.name, self.real)
