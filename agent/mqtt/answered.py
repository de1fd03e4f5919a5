"""Finals already given, kept for a while: a request (or command) the broker delivers
again gets the same answer instead of running twice."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator

from agent.mqtt.connection import Payload
from agent.protocol.mqtt import ReplyRoute


class AnsweredFinals:
    """Final replies by key, each until it expires (oldest first, so expiry is cheap)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._finals: OrderedDict[str, tuple[float, ReplyRoute, Payload]] = OrderedDict()

    def expiry(self) -> float:
        """When a final given now expires."""
        return time.time() + self.ttl_s

    def add(self, key: str, route: ReplyRoute, payload: Payload, expires: float) -> None:
        self._finals[key] = (expires, route, payload)
        now = time.time()
        while self._finals and next(iter(self._finals.values()))[0] < now:
            self._finals.popitem(last=False)

    def get(self, key: str) -> tuple[ReplyRoute, Payload] | None:
        """The final given for `key`, unless it has expired."""
        cached = self._finals.get(key)
        if cached is None or cached[0] <= time.time():
            return None
        return cached[1], cached[2]

    def __len__(self) -> int:
        return len(self._finals)

    def __iter__(self) -> Iterator[tuple[str, float, ReplyRoute, Payload]]:
        for key, (expires, route, payload) in self._finals.items():
            yield key, expires, route, payload
