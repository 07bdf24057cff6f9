"""Which tiers the job runner found unreachable or full, probed until they recover.

A tier that is unavailable (its directory gone, its endpoint down) or full
is a transient condition: the jobs that hit it wait, with capped exponential
backoff, for as long as it lasts, and the wait is not a failed attempt
(tierfs/jobs.py). When a job has to wait, the tiers it uses are probed
(Tier.probe, and Tier.usage against the bytes the job needs); a tier that
fails is recorded here and in the catalog (meta key `tier_health:NAME`, a
JSON object read by `tierfs status`) with one log line, and probed every
PROBE_S seconds until it answers (or has the space); then one log line says
it is back and the jobs waiting for it become runnable at once, and the
record says `ok` and keeps the problem it recovered from (`last_error`,
when it began and ended), so `tierfs status` can say "ok, last error 5m
ago" after the fact.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import asdict, dataclass
from typing import Awaitable, Callable, Iterable

import trio

from . import errors
from .catalog.base import now_ns
from .tiers.base import Tier
from .units import fmt_size

log = logging.getLogger(__name__)

PROBE_S = 5.0
META_PREFIX = "tier_health:"


@dataclass
class Problem:
    state: str           # "unavailable" | "full"; "ok" in a record of a recovery
    reason: str          # what the probe said
    since_ns: int        # when it was first seen (ok: when the tier came back)
    need: int = 0        # full: bytes the waiting jobs need
    host: str = ""       # the mount that saw it
    session: str = ""
    last_error: str = ""     # ok: the problem it recovered from ("unavailable: ...")
    last_error_ns: int = 0   # ok: when that problem was first seen


def read_health(get_meta: Callable[[str], str | None], tier: str) -> Problem:
    """What the catalog says about a tier: its problem, or state "ok" (with
    the last problem, if one was ever recorded; since_ns 0: never any)."""
    raw = get_meta(META_PREFIX + tier)
    d = json.loads(raw) if raw else {}
    if d.get("state") in (None, "ok"):
        return Problem("ok", "", d.get("since_ns", 0), last_error=d.get("last_error", ""),
                       last_error_ns=d.get("last_error_ns", 0))
    return Problem(**{k: v for k, v in d.items() if k in Problem.__dataclass_fields__})


class TierHealth:
    def __init__(self, tiers: dict[str, Tier], call: Callable[..., Awaitable], set_meta: Callable[[str, str], None],
                 session: Callable[[], str]):
        self.tiers = tiers
        self.call = call                # runs a blocking catalog call (FileSystem.cat)
        self.set_meta = set_meta
        self.session = session          # the mount's session id now (it is renewed after a reap)
        self.problems: dict[str, Problem] = {}

    def _probe(self, tier: Tier, need: int) -> Problem | None:
        try:
            tier.probe()
        except errors.TierfsError as e:
            return Problem("unavailable", str(e), now_ns())
        if need:
            usage = tier.usage()
            if usage is not None and usage[1] < need:
                return Problem("full", f"{fmt_size(usage[1])} free, {fmt_size(need)} needed", now_ns(), need)
        return None

    async def diagnose(self, names: Iterable[str | None], need: int = 0) -> str | None:
        """A job using tiers `names` hit a transient error: probe them; returns
        what is wrong ("tier vault is unavailable: ...") or None if they all answer."""
        found = []
        for name in dict.fromkeys(n for n in names if n):
            tier = self.tiers.get(name)
            if tier is None:
                continue
            known = self.problems.get(name)
            p = await trio.to_thread.run_sync(self._probe, tier, max(need, known.need if known else 0))
            if p is None:
                continue
            if known is None:
                p.host, p.session = socket.gethostname(), self.session()
                self.problems[name] = p
                log.warning("tier %s is %s (%s): jobs that use it wait until it is back", name, p.state, p.reason)
                await self._publish(name, p)
            else:
                known.need = max(known.need, p.need)
            found.append(p.reason if p.state == "unavailable" and f"tier {name}" in p.reason
                         else f"tier {name} is {p.state}: {p.reason}")
        return "; ".join(found) or None

    async def _publish(self, name: str, p: Problem) -> None:
        value = json.dumps(asdict(p))
        try:
            await self.call(self.set_meta, META_PREFIX + name, value)
        except errors.TierfsError as e:
            log.debug("recording the health of tier %s: %s", name, e)

    async def run(self, on_recovered: Callable[[str], Awaitable]) -> None:
        """Probe the tiers with problems until each recovers."""
        while True:
            await trio.sleep(PROBE_S)
            for name, p in list(self.problems.items()):
                if await trio.to_thread.run_sync(self._probe, self.tiers[name], p.need) is not None:
                    continue
                del self.problems[name]
                log.warning("tier %s is available again (%s for %.0fs); waiting jobs resume", name, p.state,
                            (now_ns() - p.since_ns) / 1e9)
                await self._publish(name, Problem("ok", "", now_ns(), host=socket.gethostname(),
                                                  session=self.session(), last_error=f"{p.state}: {p.reason}",
                                                  last_error_ns=p.since_ns))
                await on_recovered(name)
