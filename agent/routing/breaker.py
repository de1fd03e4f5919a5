"""A circuit breaker per cloud endpoint: consecutive failures open it; after a cool-down
one trial (a request or a health probe) decides whether it closes again."""

from __future__ import annotations

import time


class Breaker:
    def __init__(self, failures: int = 3, cooldown_s: float = 30.0) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0

    def allows(self) -> bool:
        if self.state == "open" and time.monotonic() - self.opened_at >= self.cooldown_s:
            self.state = "half_open"
        return self.state != "open"

    def success(self) -> None:
        self.state, self.failures = "closed", 0

    def failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.threshold:
            self.state, self.opened_at = "open", time.monotonic()
