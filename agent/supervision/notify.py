"""systemd's notify protocol (READY, STATUS, WATCHDOG, STOPPING) through `sdnotify`.

Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op, so the daemon runs the
same under a container runtime or in a terminal.
"""

from __future__ import annotations

import os

import sdnotify
import structlog

log = structlog.get_logger(__name__)


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._socket = sdnotify.SystemdNotifier() if self.enabled else None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s = int(usec) / 1e6 / 2 if wanted and int(usec) > 0 else None

    def send(self, *lines: str) -> None:
        if self._socket is not None:
            self._socket.notify("\n".join(lines))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def ready(self, text: str) -> None:
        self.send("READY=1", f"STATUS={text}")

    def stopping(self, text: str) -> None:
        self.send("STOPPING=1", f"STATUS={text}")
