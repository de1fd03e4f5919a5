"""The watchdog loop: ping systemd only while the engine makes progress.

A wedged engine thread (a hung execution provider, a deadlock) or a dead one stops the
pings, and systemd restarts the daemon after WatchdogSec. Busy-and-not-stepping for longer
than `stall_s` counts as wedged; a long prefill is one step, so `stall_s` must exceed the
slowest prefill the gateway serves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from agent.supervision.notify import Notifier

log = structlog.get_logger(__name__)


@dataclass
class EngineWatch:
    """Decides from the engine's step counter whether it is alive."""

    steps: Callable[[], int]
    busy: Callable[[], bool]
    alive: Callable[[], bool]
    stall_s: float
    clock: Callable[[], float] = time.monotonic
    _last_steps: int = -1
    _progress_at: float = field(default=0.0)

    def healthy(self) -> bool:
        now, steps = self.clock(), self.steps()
        if steps != self._last_steps or not self.busy():
            self._last_steps, self._progress_at = steps, now
        return self.alive() and now - self._progress_at <= self.stall_s


async def ping_while_healthy(
    notifier: Notifier, watch: EngineWatch, describe: Callable[[], str]
) -> None:
    """WATCHDOG=1 (with a fresh STATUS=) every half WATCHDOG_USEC while `watch` says the
    engine is alive."""
    interval = notifier.watchdog_interval_s
    if interval is None:
        return
    reported = False
    while True:
        if watch.healthy():
            notifier.send("WATCHDOG=1", f"STATUS={describe()}")
            reported = False
        elif not reported:
            problem = "stalled" if watch.alive() else "thread died"
            log.error(f"engine {problem}: watchdog pings stopped", stall_s=watch.stall_s)
            notifier.status(f"engine {problem}; waiting for the watchdog")
            reported = True
        await asyncio.sleep(interval)
