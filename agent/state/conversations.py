"""Conversations the Responses API continues by `previous_response_id`: kept in memory
only, the oldest forgotten first once `limit` are held (a restart forgets them all)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from agent.engine.types import Message


class Conversations:
    """Response id -> the whole conversation up to and including that response."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: OrderedDict[str, tuple[Message, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, response_id: str, messages: tuple[Message, ...]) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            self._held[response_id] = messages
            while len(self._held) > self.limit:
                self._held.popitem(last=False)

    def recall(self, response_id: str) -> tuple[Message, ...] | None:
        with self._lock:
            return self._held.get(response_id)

    def __len__(self) -> int:
        return len(self._held)
