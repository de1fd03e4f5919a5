"""Routing and cloud fallback against real servers: the "cloud" is a second edge-agent
process, which speaks both the OpenAI and the Ollama API exactly as vLLM/Ollama do."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import ollama
import openai
import psutil
import pytest

from agent.routing.governor import Signal
from tests.conftest import Daemon, start_daemon, wait_for
from tests.mqtt_support import Broker, Device, free_port

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


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_cloud_only_over_each_api_kind(daemon_factory, cloud: Daemon, kind: str) -> None:
    base = f"{cloud.url}/v1" if kind == "openai" else cloud.url
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


def test_local_only_never_leaves_the_gateway(daemon_factory, cloud: Daemon) -> None:
    # The CPU signal is off: the test's own processes share this machine's cores.
    gateway = daemon_factory("--cloud", f"openai={cloud.url}/v1", "--max-batch", "1",
                             "--max-queue", "0", "--cpu-enter-percent", "100", *LONG)  # fmt: skip
    before = served(cloud)
    with httpx.Client(timeout=60) as client, client.stream(
        "POST", f"{gateway.url}/v1/chat/completions",
        json={**ASK, "max_tokens": 16000, "stream": True, "route": "local_only"},
    ) as busy:  # fmt: skip
        lines = busy.iter_lines()
        next(line for line in lines if '"content":"' in line and '"content":""' not in line)
        refused = chat(gateway, "local_only", max_tokens=4)
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "server_busy"
        assert served(cloud) == before  # it never left the device
        spilled = chat(gateway, "prefer_local", max_tokens=4)
        assert spilled.headers["x-edge-backend"].startswith("openai:")
        assert spilled.headers["x-edge-route-reason"] == "fallback:queue_full"
    assert served(cloud) == before + 1
    assert gateway.status()["routing"]["fallbacks"] == {"queue_full": 1.0}


HOG = """
import sys
block = bytearray(int(sys.argv[1]) * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
print("allocated", flush=True)
sys.stdin.read()
"""


def test_memory_pressure_moves_traffic_to_the_cloud_and_back(daemon_factory, cloud) -> None:
    available_mb = psutil.virtual_memory().available / 2**20
    gateway = daemon_factory(
        "--cloud", f"openai={cloud.url}/v1",
        "--memory-reserve-mb", str(int(available_mb - 3000)),
        "--memory-resume-mb", str(int(available_mb - 2000)),
        "--governor-interval-s", "0.1",
        "--cpu-enter-percent", "100",  # only memory may decide here
    )  # fmt: skip

    def memory_short() -> bool:
        return gateway.status()["routing"]["signals"]["memory"]["short"]

    wait_for(lambda: not memory_short())
    assert chat(gateway, max_tokens=2).headers["x-edge-backend"] == "local"
    hog = subprocess.Popen(
        [sys.executable, "-c", HOG, "4500"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert hog.stdout.readline().startswith("allocated")
        wait_for(memory_short)
        moved = chat(gateway, max_tokens=2)
        assert moved.headers["x-edge-backend"].startswith("openai:")
        assert moved.headers["x-edge-route-reason"] == "fallback:memory"
        assert chat(gateway, "local_only", max_tokens=2).headers["x-edge-backend"] == "local"
    finally:
        hog.communicate("")
    wait_for(lambda: not memory_short())
    assert chat(gateway, max_tokens=2).headers["x-edge-backend"] == "local"
    assert gateway.status()["routing"]["fallbacks"]["memory"] == 1


def test_hysteresis_keeps_a_signal_from_flapping() -> None:
    memory = Signal("memory", enter=256, leave=512, worse_above=False)
    readings = [1000, 300, 250, 300, 500, 511, 513, 300, 255]
    states = []
    for value in readings:
        memory.update(value)
        states.append(memory.short)
    assert states == [False, False, True, True, True, True, False, False, True]


def test_latency_budget_spills_a_burst_to_the_cloud(daemon_factory, cloud: Daemon) -> None:
    gateway = daemon_factory("--cloud", f"openai={cloud.url}/v1", "--max-batch", "1",
                             "--latency-budget-s", "0.2", "--cpu-enter-percent", "100",
                             *LONG)  # fmt: skip
    assert chat(gateway, max_tokens=3000).headers["x-edge-backend"] == "local"  # learns timing
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def one() -> None:
        reply = chat(gateway, max_tokens=3000)
        with lock:
            results.append(reply)

    threads = [threading.Thread(target=one) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    backends = [r.headers["x-edge-backend"] for r in results]
    assert all(r.status_code == 200 for r in results)
    assert "local" in backends
    spilled = [r for r in results if r.headers["x-edge-backend"] != "local"]
    assert spilled
    assert all(r.headers["x-edge-route-reason"] == "fallback:latency_budget" for r in spilled)


def test_cloud_killed_mid_stream_then_breaker_opens_and_recovers(daemon_factory) -> None:
    port = free_port()
    doomed = start_daemon(*LONG, "--http-port", str(port))
    gateway = daemon_factory("--cloud", f"openai={doomed.url}/v1", "--breaker-failures", "1",
                             "--breaker-cooldown-s", "1", "--probe-interval-s", "0.2")  # fmt: skip
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x")
    stream = client.chat.completions.create(
        **ASK, max_tokens=16000, stream=True, extra_body={"route": "cloud_only"}
    )
    chunks = iter(stream)
    first = next(c for c in chunks if c.choices and c.choices[0].delta.content)
    assert first
    doomed.process.kill()
    doomed.process.wait(10)
    with pytest.raises(openai.APIError, match="failed mid-reply"):  # the SSE error event
        list(chunks)
    wait_for(lambda: set(gateway.status()["routing"]["breakers"].values()) == {"open"})
    after = chat(gateway, "prefer_cloud", max_tokens=2)
    assert after.headers["x-edge-backend"] == "local"
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(**ASK, max_tokens=2, extra_body={"route": "cloud_only"})
    assert raised.value.status_code == 503
    revived = start_daemon(*LONG, "--http-port", str(port))
    try:
        wait_for(lambda: set(gateway.status()["routing"]["breakers"].values()) == {"closed"})
        assert chat(gateway, "cloud_only", max_tokens=2).status_code == 200
    finally:
        revived.stop()


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
