"""Stop strings over streamed text (the CPU og.Engine cannot match them itself)."""

from __future__ import annotations


class StopMatcher:
    """Feeds text deltas; holds back any tail that could still become a stop string.

    `feed` returns the text that is safe to emit and whether a stop string matched (the
    stop string itself and everything after it are never emitted, as OpenAI does).
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._hold = max((len(s) - 1 for s in self._stops), default=0)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        buffer = self._pending + text
        cut = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._pending = ""
            return buffer[:cut], True
        keep = self._tail_to_hold(buffer)
        self._pending = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text

    def _tail_to_hold(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of a stop string."""
        for size in range(min(self._hold, len(buffer)), 0, -1):
            tail = buffer[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
