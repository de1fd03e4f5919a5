"""Fixtures: the real daemon as a subprocess on a free loopback port, on the bundled model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "agent" / "data" / "tiny"
READY_TIMEOUT_S = 60
# A one-argument tool, as the OpenAI API declares it (real-model and real-upstream tests).
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@dataclass
class Daemon:
    process: subprocess.Popen
    url: str
    logs: list[dict] = field(default_factory=list)

    def status(self) -> dict:
        return httpx.get(f"{self.url}/v1/agent/status", timeout=5).json()

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=30)


def start_daemon(*flags: str, env: dict[str, str] | None = None) -> Daemon:
    """Start `edge-agent serve` on port 0 and wait for its one "ready" log line.

    The CPU provider unless the flags say otherwise: exact-token checks need it, and
    `auto` would pick OpenVINO where its plugin is installed (tested on its own). A fresh
    state directory unless one is given."""
    if "--provider" not in flags:
        flags = ("--provider", "cpu", *flags)
    if "--state-dir" not in flags:  # never the user's own state directory
        flags = ("--state-dir", tempfile.mkdtemp(prefix="edge-agent-state-"), *flags)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "serve",
            "--http-port",
            "0",
            "--log-format",
            "json",
            *flags,
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    logs: list[dict] = []
    ready = threading.Event()
    url: list[str] = []

    def read_logs() -> None:
        for line in process.stderr:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            logs.append(event)
            if event.get("event") == "ready":
                url.append(event["url"])
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=read_logs, daemon=True).start()
    if not ready.wait(READY_TIMEOUT_S) or not url:
        process.kill()
        raise RuntimeError(f"daemon did not become ready: {logs}")
    return Daemon(process, url[0], logs)


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    """The default daemon: bundled tiny model, int4 variant."""
    instance = start_daemon()
    yield instance
    assert instance.stop() == 0


@pytest.fixture(scope="session")
def fp32_daemon() -> Iterator[Daemon]:
    """The fp32 variant, whose greedy output must equal transformers' (reference.json)."""
    instance = start_daemon("--model-variant", "cpu-fp32")
    yield instance
    instance.stop()


@pytest.fixture
def daemon_factory() -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def factory(*flags: str, env: dict[str, str] | None = None) -> Daemon:
        started.append(start_daemon(*flags, env=env))
        return started[-1]

    yield factory
    for instance in started:
        instance.stop()


@pytest.fixture(scope="session")
def reference() -> dict:
    return json.loads((TINY / "reference.json").read_text())


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll a daemon-side condition (its status endpoint) until it holds."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        pause.wait(0.02)
