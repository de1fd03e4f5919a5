"""The watchdog loop: ping systemd only while the engine makes progress.

A wedged engine thread (a hung execution provider, a deadlock) or a dead one stops the
pings, and systemd restarts the daemon after WatchdogSec; a stall also turns /ready to 503
(`stalled`), for supervisors without a watchdog. Busy-and-not-stepping for longer than
`stall_s` counts as wedged; a long prefill is one step, so `stall_s` must exceed the
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

    def problem(self) -> str | None:
        """None while the engine is idle or stepping; otherwise what is wrong."""
        now, steps = self.clock(), self.steps()
        if steps != self._last_steps or not self.busy():
            self._last_steps, self._progress_at = steps, now
        if not self.alive():
            return "thread died"
        if (waited := now - self._progress_at) > self.stall_s:
            return f"stalled: busy with no engine step for {waited:.1f} s (> {self.stall_s:g} s)"
        return None


async def watch_engine(
    notifier: Notifier,
    watch: EngineWatch,
    describe: Callable[[], str],
    on_stall: Callable[[str | None], None],
) -> None:
    """WATCHDOG=1 (with a fresh STATUS=) every half WATCHDOG_USEC while `watch` finds the
    engine alive and stepping; no pings otherwise. A stall is also handed to `on_stall` (and
    None once steps resume), so /ready reports it with or without systemd's watchdog."""
    interval = notifier.watchdog_interval_s
    period = interval if interval is not None else min(1.0, watch.stall_s / 4)
    reported: str | None = None
    while True:
        problem = watch.problem()
        if problem is None and interval is not None:
            notifier.send("WATCHDOG=1", f"STATUS={describe()}")
        elif problem is not None and reported is None:
            log.error(f"engine {problem}: watchdog pings stopped", stall_s=watch.stall_s)
            notifier.status(f"engine {problem}; waiting for the watchdog")
        on_stall(problem if watch.alive() else None)  # a dead thread is readiness' own case
        reported = problem
        await asyncio.sleep(period)
