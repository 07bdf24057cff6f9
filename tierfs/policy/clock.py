"""The injectable clock of the policy engine and scheduler.

Wall-clock time decides ages (inactive for 90 days) and when a rule is due;
tests pass a FakeClock whose sleep() advances time at once, so a day of
scheduling takes milliseconds instead of a day.
"""

from __future__ import annotations

import time

import trio


class SystemClock:
    """Real time."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def now_ns(self) -> int:
        return time.time_ns()

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(max(0.0, seconds))


class FakeClock(SystemClock):
    """Time that only moves when told to (or when someone sleeps)."""

    def __init__(self, start: float | None = None):
        self.t = time.time() if start is None else start
        self.slept = 0.0        # total seconds slept through, for tests of rates

    def now(self) -> float:
        return self.t

    def now_ns(self) -> int:
        return int(self.t * 1e9)

    def advance(self, seconds: float) -> None:
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.t += seconds
        self.slept += seconds
        await trio.sleep(0)  # let other tasks run, as a real sleep would
