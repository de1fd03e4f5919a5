"""Cancellation on client disconnect (running and queued) and the bounded queue."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import Daemon, start_daemon, wait_for

# The tiny model writes thousands of tokens a second: give it room to run for a while.
LONG_CONTEXT = ("--max-context", "16384")
LONG = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "Tell me everything."}],
    "max_tokens": 16000,
    "stream": True,
}


@pytest.fixture(scope="module")
def long_daemon() -> Iterator[Daemon]:
    instance = start_daemon(*LONG_CONTEXT)
    yield instance
    instance.stop()


@contextmanager
def streaming(daemon: Daemon, body: dict) -> Iterator[httpx.Response]:
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{daemon.url}/v1/chat/completions", json=body) as response,
    ):
        yield response


def first_content(lines: Iterator[str]) -> str:
    """Read SSE lines up to the first content delta (keep `lines` alive: dropping the
    iterator closes the response)."""
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            delta = json.loads(line[6:])["choices"][0]["delta"]
            if delta.get("content"):
                return delta["content"]
    raise AssertionError("stream ended without content")


def test_disconnect_cancels_a_running_generation(long_daemon: Daemon) -> None:
    daemon = long_daemon
    before = daemon.status()["finished"].get("cancelled", 0)
    with streaming(daemon, LONG) as response:
        assert first_content(response.iter_lines())
    wait_for(lambda: daemon.status()["finished"].get("cancelled", 0) == before + 1)
    assert daemon.status()["queue"]["running"] == 0


def test_disconnect_cancels_a_non_streaming_request(long_daemon: Daemon) -> None:
    daemon = long_daemon
    before = daemon.status()["finished"].get("cancelled", 0)
    body = {**LONG, "stream": False}
    done = threading.Event()

    def send() -> None:
        with contextlib.suppress(httpx.TimeoutException):  # the client gives up, hangs up
            httpx.post(f"{daemon.url}/v1/chat/completions", json=body, timeout=0.3)
        done.set()

    threading.Thread(target=send).start()
    assert done.wait(10)
    wait_for(lambda: daemon.status()["finished"].get("cancelled", 0) == before + 1)


def test_queue_full_gets_503_and_queued_requests_cancel(daemon_factory) -> None:
    small = daemon_factory("--max-batch", "1", "--max-queue", "1", *LONG_CONTEXT)
    with streaming(small, LONG) as running:
        lines = running.iter_lines()
        assert first_content(lines)
        queued_done = threading.Event()
        queued_status: list[int] = []

        def queued() -> None:
            with streaming(small, LONG) as response:
                queued_status.append(response.status_code)
                queued_done.wait(30)  # hold the queued request open until told

        waiter = threading.Thread(target=queued)
        waiter.start()
        wait_for(lambda: small.status()["queue"]["depth"] == 1)
        refused = httpx.post(f"{small.url}/v1/chat/completions", json={**LONG, "stream": False})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "2"
        assert refused.json()["error"]["code"] == "server_busy"
        queued_done.set()  # the queued client disconnects while still waiting
        waiter.join(30)
        wait_for(lambda: small.status()["queue"]["depth"] == 0)
        assert small.status()["finished"].get("cancelled", 0) == 1
        assert small.status()["queue"]["running"] == 1  # the first one is untouched
        assert first_content(lines)
    assert queued_status == [200]
