"""The engine's life seen from outside: /health and /ready, a dead owner thread (made to
die through the test-only EDGE_AGENT_TEST_ENGINE_CRASH hook), and live model switches
under load."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.conftest import TINY, Daemon, start_daemon
from tests.mqtt_support import Broker, Device

CAPABILITIES = ["reasoning", "math", "coding", "general"]
CRASH = "Stop the engine thread, please."


def ask(content: str = "Tell me about the gateway.", **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}],
            "temperature": 0, **extra}  # fmt: skip


def test_a_dead_engine_thread_is_visible_and_ends_every_request(tmp_path: Path) -> None:
    broker = Broker(tmp_path).start()
    try:
        gateway = start_daemon("--mqtt-url", broker.url, "--device-id", "gw-dead",
                               "--max-batch", "1", "--max-context", "16384",
                               env={"EDGE_AGENT_TEST_ENGINE_CRASH": CRASH})  # fmt: skip
        try:
            check_engine_death(gateway, Device(broker))
        finally:
            gateway.stop()
    finally:
        broker.stop()


def check_engine_death(gateway: Daemon, device: Device) -> None:
    """Serving, then the owner thread dies with a request running and two queued."""
    assert device.status("gw-dead", "ready")["backends"]["local"] == "ready"
    health = httpx.get(f"{gateway.url}/health")
    assert health.status_code == 200
    assert health.json() == {"status": "healthy", "model": "tiny", "capabilities": CAPABILITIES}
    assert httpx.get(f"{gateway.url}/ready").status_code == 200

    with httpx.Client(timeout=30) as client, client.stream(
        "POST", f"{gateway.url}/v1/chat/completions",
        json=ask(max_tokens=16000, stream=True),
    ) as running:  # fmt: skip
        lines = running.iter_lines()
        next(line for line in lines if '"content":"' in line and '"content":""' not in line)
        queued = device.request("gw-dead", ask(max_tokens=4))
        assert device.replies(queued, until="accepted")[-1]["type"] == "accepted"
        fatal = device.request("gw-dead", ask(CRASH, max_tokens=4))  # the thread dies
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert events[-2]["error"]["message"].startswith("the local engine failed")
    assert events[-1]["choices"][0]["finish_reason"] == "error"
    for correlation in (queued, fatal):  # queued at the time of death: an error, no hang
        final = device.replies(correlation)[-1]
        assert final["type"] == "final" and final["finish_reason"] == "error", final

    assert device.status("gw-dead", "degraded")["backends"]["local"] == "failed"
    ready = httpx.get(f"{gateway.url}/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "engine_failed"
    health = httpx.get(f"{gateway.url}/health")
    assert health.status_code == 503  # `curl -f` in a HEALTHCHECK fails
    assert health.json()["status"] == "unhealthy"
    assert "EDGE_AGENT_TEST_ENGINE_CRASH" in health.json()["reason"]
    refused = httpx.post(f"{gateway.url}/v1/chat/completions", json=ask(max_tokens=4),
                         timeout=10)  # fmt: skip
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "engine_failed"
    assert gateway.status()["state"] == "engine_failed"


def point(pointer: Path, target: Path) -> None:
    """Swap the model pointer atomically, as `models activate` does."""
    staged = pointer.with_name(pointer.name + ".new")
    staged.unlink(missing_ok=True)
    staged.symlink_to(target)
    os.replace(staged, pointer)


def test_model_switches_during_bursts_end_every_request(tmp_path: Path) -> None:
    """A request still being admitted when the switch looks at the old engine was put in
    the stopped engine's queue and never answered. The window is a few milliseconds per
    switch, so four bursts of 50 requests run while the model pointer flips back and forth."""
    models = [tmp_path / "a", tmp_path / "b"]
    for model in models:
        shutil.copytree(TINY, model)
    pointer = tmp_path / "active"
    point(pointer, models[0])
    gateway = start_daemon("--model", str(pointer), "--max-queue", "64",
                           env={"EDGE_AGENT_MODEL_WATCH_INTERVAL_S": "3600",
                                "EDGE_AGENT_MAX_STREAMS_PER_CLIENT": "0"})  # fmt: skip
    try:
        for _ in range(4):
            results, switched = asyncio.run(burst_while_switching(gateway, pointer, models))
            assert switched >= 2  # the burst really spanned switches
            answered = [code == 200 and reason in ("length", "stop") for code, reason in results]
            assert len(results) == 50 and all(answered), Counter(results)  # (None, None): hung
    finally:
        gateway.stop()


def switches(gateway: Daemon) -> int:
    return sum(event.get("event") == "model switched" for event in list(gateway.logs))


async def burst_while_switching(
    gateway: Daemon, pointer: Path, models: list[Path]
) -> tuple[list[tuple[int | None, str | None]], int]:
    """50 requests from 10 clients, one after another on each (every request a fresh
    admission on whichever engine serves then), while the model pointer flips back and
    forth; an answer that does not come within 20 s counts as (None, None)."""
    results: list[tuple[int | None, str | None]] = []
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:

        async def one_client() -> None:
            for _ in range(5):
                try:
                    reply = await client.post("/v1/chat/completions", json=ask(max_tokens=2))
                except httpx.TimeoutException:
                    results.append((None, None))
                    continue
                reason = reply.json()["choices"][0]["finish_reason"] if reply.is_success else None
                results.append((reply.status_code, reason))

        clients = asyncio.gather(*(one_client() for _ in range(10)))
        switched = switches(gateway)
        start = switched
        while not clients.done():
            point(pointer, models[(switched + 1) % 2])
            gateway.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while switches(gateway) == switched:
                assert time.monotonic() < deadline, "the switch did not happen"
                await asyncio.sleep(0.005)
            switched += 1
        await clients
    return results, switched - start
