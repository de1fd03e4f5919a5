"""The seed deployment's clients unchanged: Ollama's `curl -d` examples (no JSON
Content-Type), the older FastAPI ONNX engine's `/reasoning` and `GET /`, and requests that
name no model (a sensor need not know the model's name)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Daemon, start_daemon
from tests.mqtt_support import Broker, Device

HELLO = [{"role": "user", "content": "Hello, gateway!"}]
CURL_BODIES = {
    "/api/generate": ({"model": "tiny", "prompt": "Why is the sky blue?", "stream": False},
                      "response"),
    "/api/chat": ({"model": "tiny", "messages": HELLO, "stream": False}, "message"),
    "/v1/chat/completions": ({"model": "tiny", "messages": HELLO, "max_tokens": 4}, "choices"),
    "/v1/completions": ({"model": "tiny", "prompt": "Once", "max_tokens": 4}, "choices"),
    "/reasoning": ({"prompt": "2+2?", "max_length": 4}, "generated_text"),
}  # fmt: skip


def curl(url: str, data: str, *extra: str) -> tuple[int, dict]:
    """Real curl, as Ollama's documentation uses it: `-d` sends form-urlencoded."""
    done = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", url, "-d", data, *extra],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    body, status = done.stdout.rsplit("\n", 1)
    return int(status), json.loads(body)


@pytest.mark.parametrize("path", list(CURL_BODIES))
def test_curl_d_without_a_json_content_type_is_read_as_json(daemon: Daemon, path: str) -> None:
    body, field = CURL_BODIES[path]
    status, reply = curl(f"{daemon.url}{path}", json.dumps(body))
    assert status == 200, reply
    assert reply[field]


def test_curl_d_with_bad_json_gets_each_apis_error(daemon: Daemon) -> None:
    status, reply = curl(
        f"{daemon.url}/api/generate", "{not json", "-H", "content-type: text/plain"
    )
    assert status == 400 and isinstance(reply["error"], str)
    status, reply = curl(f"{daemon.url}/v1/chat/completions", "{not json")
    assert status == 400 and reply["error"]["code"] == "invalid_json"


def test_reasoning_returns_the_old_engines_fields(daemon: Daemon) -> None:
    reply = httpx.post(f"{daemon.url}/reasoning", json={"prompt": "2+2?", "task_type": "math",
                                                        "max_length": 4}, timeout=30)  # fmt: skip
    assert reply.status_code == 200
    body = reply.json()
    assert isinstance(body["generated_text"], str) and body["generated_text"]
    assert body["task_type"] == "math" and body["model"] == "tiny"
    assert isinstance(body["inference_time"], float) and body["inference_time"] > 0


def test_reasoning_accepts_any_task_type_on_the_plain_model(daemon: Daemon) -> None:
    ask = {"prompt": "Write a haiku", "max_length": 6, "temperature": 0}
    reply = httpx.post(f"{daemon.url}/reasoning", json={**ask, "task_type": "poetry"}, timeout=30)
    assert reply.status_code == 200
    body = reply.json()
    assert body["task_type"] == "poetry" and body["profile"] is None
    plain = httpx.post(f"{daemon.url}/v1/chat/completions", timeout=30, json={
        "model": "tiny", "messages": [{"role": "user", "content": ask["prompt"]}],
        "max_tokens": 6, "temperature": 0}).json()  # fmt: skip
    assert body["generated_text"] == plain["choices"][0]["message"]["content"]
    assert body["prompt_tokens"] == plain["usage"]["prompt_tokens"]


def test_reasoning_defaults_are_the_old_engines(daemon: Daemon) -> None:
    schema = httpx.get(f"{daemon.url}/openapi.json").json()["components"]["schemas"]
    fields = schema["ReasoningBody"]["properties"]
    assert (fields["max_length"]["default"], fields["temperature"]["default"]) == (200, 0.3)
    body = httpx.post(f"{daemon.url}/reasoning", json={"prompt": "Tell me a story"},
                      timeout=60).json()  # fmt: skip
    assert body["tokens_generated"] == 200 or body["finish_reason"] == "stop"
    assert body["tokens_generated"] <= 200


def test_root_answers_ollama_text_or_the_old_engines_json(daemon: Daemon) -> None:
    text = httpx.get(f"{daemon.url}/")
    assert text.status_code == 200 and text.text == "Ollama is running"
    described = httpx.get(f"{daemon.url}/", headers={"Accept": "application/json"}).json()
    assert described["name"] == "edge-agent" and described["model"] == "tiny"
    assert {"/reasoning", "/health", "/v1/chat/completions", "/api/chat"} <= set(
        described["endpoints"]
    )
    assert {"reasoning", "math", "coding"} <= set(described["capabilities"])


def test_openai_routes_without_a_model_use_the_served_one(daemon: Daemon) -> None:
    ask = {"messages": HELLO, "max_tokens": 5, "temperature": 0}
    unnamed = httpx.post(f"{daemon.url}/v1/chat/completions", json=ask, timeout=30).json()
    named = httpx.post(f"{daemon.url}/v1/chat/completions", json={**ask, "model": "tiny"},
                       timeout=30).json()  # fmt: skip
    assert unnamed["model"] == "tiny"
    assert unnamed["choices"][0]["message"] == named["choices"][0]["message"]
    completion = httpx.post(f"{daemon.url}/v1/completions", json={"prompt": "Once"}, timeout=30)
    assert completion.status_code == 200 and completion.json()["model"] == "tiny"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    instance = Broker(tmp_path).start()
    yield instance
    instance.stop()


def test_default_model_serves_requests_without_a_model_over_http_and_mqtt(
    broker: Broker,
) -> None:
    device_id = f"gw-{uuid.uuid4().hex[:6]}"
    gateway = start_daemon("--mqtt-url", broker.url, "--device-id", device_id,
                           env={"EDGE_AGENT_DEFAULT_MODEL": "math"})  # fmt: skip
    try:
        ask = {"messages": HELLO, "max_tokens": 3, "temperature": 0}
        unnamed = httpx.post(f"{gateway.url}/v1/chat/completions", json=ask, timeout=30).json()
        math = httpx.post(f"{gateway.url}/v1/chat/completions", json={**ask, "model": "math"},
                          timeout=30).json()  # fmt: skip
        plain = httpx.post(f"{gateway.url}/v1/chat/completions", json={**ask, "model": "tiny"},
                           timeout=30).json()  # fmt: skip
        assert unnamed["model"] == "math"
        assert unnamed["usage"]["prompt_tokens"] == math["usage"]["prompt_tokens"]
        assert unnamed["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]  # its system
        device = Device(broker)
        final = device.replies(device.request(device_id, ask))[-1]
        assert (
            final["type"] == "final"
            and final["text"] == unnamed["choices"][0]["message"]["content"]
        )
        assert final["usage"]["prompt_tokens"] == math["usage"]["prompt_tokens"]
        device.close()
    finally:
        gateway.stop()
