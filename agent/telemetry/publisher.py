"""The periodic telemetry document on `.../telemetry` (QoS 0) for fleet consumers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from agent.telemetry.metrics import Metrics, snapshot


class TelemetryPublisher:
    def __init__(
        self,
        metrics: Metrics,
        publish: Callable[[dict[str, Any]], None],
        interval_s: float,
        device_id: str,
    ) -> None:
        self.metrics = metrics
        self.publish = publish
        self.interval_s = interval_s
        self.device_id = device_id
        self.seq = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def document(self) -> dict[str, Any]:
        self.seq += 1
        return {
            "ts": time.time(),
            "seq": self.seq,
            "device_id": self.device_id,
            "interval_s": self.interval_s,
            "latency_s": self.metrics.drain_window(),
            "metrics": snapshot(self.metrics.registry),
        }

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.publish(self.document())
