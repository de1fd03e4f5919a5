"""Routing and cloud fallback where no server from elsewhere can play the upstream: the
"cloud" is a second edge-agent process, for the Ollama API (llama.cpp does not serve it),
for an endpoint kept busy so that it is slow to a first token, and where the test reads the
upstream's own count of cancelled streams. Against a real OpenAI-compatible server
(llama.cpp's): tests/upstream/."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest

from agent.routing.governor import Signal
from tests.conftest import Daemon, start_daemon, wait_for
from tests.mqtt_support import Broker, Device

ASK = {"model": "tiny", "messages": [{"role": "user", "content": "Hello, gateway!"}]}
LONG = ("--max-context", "16384")


def served(daemon: Daemon) -> int:
    """Requests a daemon has finished, whatever their outcome."""
    return sum(daemon.status()["finished"].values())


def chat(daemon: Daemon, route: str | None = None, **body) -> httpx.Response:
    headers = {"X-Edge-Route": route} if route else {}
    return httpx.post(
        f"{daemon.url}/v1/chat/completions",
        json={**ASK, "temperature": 0, **body},
        headers=headers,
        timeout=60,
    )


@pytest.fixture(scope="module")
def cloud() -> Iterator[Daemon]:
    instance = start_daemon(*LONG)
    yield instance
    instance.stop()


def endpoint_name(kind: str, daemon: Daemon) -> str:
    return f"{kind}:127.0.0.1:{daemon.url.rsplit(':', 1)[1]}"


def test_cloud_only_over_the_ollama_api(daemon_factory, cloud: Daemon) -> None:
    kind, base = "ollama", cloud.url
    gateway = daemon_factory("--cloud", f"{kind}={base}")
    before = served(cloud)
    local = chat(gateway, "local_only", max_tokens=12).json()
    remote = chat(gateway, "cloud_only", max_tokens=12)
    assert remote.status_code == 200
    assert remote.headers["x-edge-backend"] == endpoint_name(kind, cloud)
    assert remote.headers["x-edge-route-reason"] == "cloud_only"
    assert (
        remote.json()["choices"][0]["message"]["content"]
        == local["choices"][0]["message"]["content"]
    )
    assert remote.json()["usage"]["completion_tokens"] == 12
    assert served(cloud) == before + 1
    streamed = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x").chat.completions.create(
        **ASK, max_tokens=12, temperature=0, stream=True, extra_body={"route": "cloud_only"}
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == local["choices"][0]["message"]["content"]
    ollama_client = ollama.Client(host=gateway.url, headers={"X-Edge-Route": "cloud_only"})
    via_ollama = ollama_client.chat(**ASK, options={"temperature": 0, "num_predict": 12})
    assert via_ollama.message.content == text
    assert served(cloud) == before + 3


def test_hysteresis_keeps_a_signal_from_flapping() -> None:
    memory = Signal("memory", enter=256, leave=512, worse_above=False)
    readings = [1000, 300, 250, 300, 500, 511, 513, 300, 255]
    states = []
    for value in readings:
        memory.update(value)
        states.append(memory.short)
    assert states == [False, False, True, True, True, True, False, False, True]


def test_an_endpoint_slow_to_first_token_is_abandoned(daemon_factory, cloud: Daemon) -> None:
    slow = daemon_factory("--max-batch", "1", *LONG)
    gateway = daemon_factory("--cloud", f"openai={slow.url}/v1", "--cloud",
                             f"openai={cloud.url}/v1", "--first-token-timeout-s", "1")  # fmt: skip
    with httpx.Client(timeout=60) as client, client.stream(
        "POST", f"{slow.url}/v1/chat/completions",
        json={**ASK, "max_tokens": 16000, "stream": True},
    ) as busy:  # fmt: skip
        lines = busy.iter_lines()  # kept: dropping the iterator would close the stream
        next(line for line in lines if '"content":"' in line)
        reply = chat(gateway, "cloud_only", max_tokens=3)
        assert reply.status_code == 200
        assert reply.headers["x-edge-backend"] == endpoint_name("openai", cloud)
    wait_for(lambda: slow.status()["finished"].get("cancelled", 0) >= 1)


def test_mqtt_cancel_and_expiry_close_a_cloud_stream(tmp_path, daemon_factory) -> None:
    """The MQTT cancel and Message Expiry reach a request routed to the cloud: its
    upstream stream is closed (the upstream counts it cancelled) and the reply ends."""
    upstream = daemon_factory("--max-batch", "1", *LONG)
    broker = Broker(tmp_path).start()
    try:
        daemon_factory("--cloud", f"openai={upstream.url}/v1", "--mqtt-url", broker.url,
                       "--device-id", "gw-cloud", "--first-token-timeout-s", "120")  # fmt: skip
        device = Device(broker)
        device.status("gw-cloud", "ready")
        long = {**ASK, "max_tokens": 16000, "stream": True, "route": "cloud_only"}

        def cancelled() -> int:
            return upstream.status()["finished"].get("cancelled", 0)

        streaming = device.request("gw-cloud", long)
        assert device.replies(streaming, until="chunk")[-1]["type"] == "chunk"
        device.cancel("gw-cloud", streaming)
        final = device.replies(streaming)[-1]
        assert final["finish_reason"] == "cancelled"
        assert final["backend"] == endpoint_name("openai", upstream)
        wait_for(lambda: cancelled() == 1)  # the upstream saw its stream closed
        assert upstream.status()["queue"]["running"] == 0

        # Message Expiry while the request waits upstream for its first token.
        with httpx.Client(timeout=120) as client, client.stream(
            "POST", f"{upstream.url}/v1/chat/completions", json={**long, "route": None}
        ) as blocker:  # fmt: skip
            lines = blocker.iter_lines()  # kept: dropping the iterator would close the stream
            next(line for line in lines if '"content":"' in line)
            expiring = device.request("gw-cloud", long, expiry_s=1)
            wait_for(lambda: upstream.status()["queue"]["depth"] == 1)  # no first token yet
            final = device.replies(expiring, timeout_s=120)[-1]
        assert final["finish_reason"] == "expired"
        wait_for(lambda: cancelled() >= 2)  # the expired one's stream was closed upstream
    finally:
        broker.stop()
