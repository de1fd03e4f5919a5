"""The gateway under soak: its process (replaced after a kill -9 as systemd's Restart= would
bring it back), the HTTP requests in flight in it (the only ones a kill may cut), and its
model pointer with two real models that SIGHUP switches between."""

from __future__ import annotations

import contextlib
import itertools
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from soak_report import Kill, Switch

from tests.conftest import REPO, TINY, Daemon, start_daemon, wait_for

REAL = REPO / "models" / "real" / "smollm2-135m-instruct"  # `make real-model` builds it
READY_DEADLINE_S = 60.0
SWITCH_DEADLINE_S = 60.0


def install_models(models_dir: Path) -> tuple[str, str]:
    """The bundled tiny model and SmolLM2-135M-Instruct, installed as the store lays models
    out (NAME/VERSION, linked rather than copied), tiny active; returns their names."""
    if not (REAL / "manifest.toml").is_file():
        raise SystemExit(f"{REAL} is missing: run `make real-model` first")
    for name, source in (("tiny", TINY), ("smollm2-135m-instruct", REAL)):
        (models_dir / name).mkdir(parents=True, exist_ok=True)
        (models_dir / name / "1").symlink_to(source)
    activate(models_dir, "tiny")
    return "tiny", "smollm2-135m-instruct"


def activate(models_dir: Path, name: str) -> None:
    """`edge-agent models activate`, as an operator moves the pointer."""
    command = ["models", "activate", name, "--models-dir", str(models_dir)]
    subprocess.run(
        [sys.executable, "-m", "agent", *command], cwd=REPO, check=True, stdout=subprocess.DEVNULL
    )


@dataclass
class Gateway:
    """HTTP clients `admit` each request: it waits while the gateway is down and is noted in
    flight until `release`. A kill -9 takes the set in flight at that moment, under the same
    lock, so a request counts as cut only if it was in flight then."""

    flags: tuple[str, ...]
    models_dir: Path
    models: tuple[str, str]
    daemon: Daemon = field(init=False)
    up: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_flight: set[int] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    kills: list[Kill] = field(default_factory=list)
    pointed: str = ""  # the model the pointer names

    def __post_init__(self) -> None:
        self.pointed = self.models[0]
        self.start()

    @property
    def url(self) -> str:
        return self.daemon.url

    @property
    def pid(self) -> int:
        return self.daemon.process.pid

    def start(self) -> None:
        """Start the daemon (its "ready" log line is an event) and wait for /ready."""
        self.daemon = start_daemon(*self.flags)
        url = self.url
        wait_for(lambda: httpx.get(f"{url}/ready", timeout=5).status_code == 200, READY_DEADLINE_S)
        self.up.set()

    def admit(self, stop: threading.Event) -> int | None:
        """A ticket for one request once the gateway is up (None when the soak stops)."""
        while not stop.is_set():
            self.up.wait(0.5)
            with self._lock:
                if self.up.is_set():
                    ticket = next(self._ids)
                    self._in_flight.add(ticket)
                    return ticket
        return None

    def release(self, ticket: int) -> None:
        with self._lock:
            self._in_flight.discard(ticket)

    def cut(self, ticket: int) -> bool:
        """Whether a kill -9 found this request in flight (then it counts as cut by it)."""
        with self._lock:
            for kill in self.kills:
                if ticket in kill.in_flight:
                    kill.cut += 1
                    return True
        return False

    def kill_and_restart(self) -> Kill:
        with self._lock:
            self.up.clear()
            kill = Kill(time.monotonic(), frozenset(self._in_flight))
            self.kills.append(kill)
            self.daemon.process.kill()
        self.daemon.process.wait(10)
        self.start()
        kill.ready_at = time.monotonic()
        kill.pointed, kill.serving = self.pointed, self.daemon.status()["model"]["name"]
        return kill

    def switch_model(self) -> Switch:
        """Move the pointer to the model not serving, SIGHUP, and wait (with a deadline) for
        /v1/agent/status to name it; then a request served locally must name it too."""
        serving = self.daemon.status()["model"]["name"]
        wanted = self.models[1] if serving == self.models[0] else self.models[0]
        activate(self.models_dir, wanted)
        self.pointed = wanted
        switch = Switch(time.monotonic(), wanted)
        logged = len(self.daemon.logs)
        self.daemon.process.send_signal(signal.SIGHUP)

        def switched() -> bool:
            switch.seen = self.daemon.status()["model"]["name"]
            return switch.seen == wanted

        with contextlib.suppress(AssertionError):  # not by the deadline: the report says so
            wait_for(switched, SWITCH_DEADLINE_S)
        switch.took_s = time.monotonic() - switch.at
        switch.log = [  # what the daemon said about it: why, when it did not switch
            f"{event['event']} {event.get('error', event.get('model', ''))}"
            for event in self.daemon.logs[logged:]
            if "model" in event.get("event", "") or "reload" in event.get("event", "")
        ]
        reply = httpx.post(
            f"{self.url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Which model?"}], "max_tokens": 2},
            headers={"X-Edge-Route": "local_only"},
            timeout=60,
        )
        switch.answered_by = reply.json().get("model", "") if reply.status_code == 200 else ""
        return switch
