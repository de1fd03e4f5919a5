"""API keys, the refusal to open HTTP beyond loopback without one, and every request limit,
each refused with an error that names it; the daemon keeps serving afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from agent.security.api_keys import ApiKeys
from agent.security.rate_limit import RateLimiter
from tests.conftest import REPO, Daemon, start_daemon
from tests.mqtt_support import Broker, Device

ASK = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}
KEYS = ["k-first", "k-second"]


@pytest.fixture(scope="module")
def locked() -> Iterator[Daemon]:
    instance = start_daemon(env={"EDGE_AGENT_API_KEYS": json.dumps(KEYS)})
    yield instance
    instance.stop()


def test_every_route_but_health_and_ready_needs_a_key(locked: Daemon) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(base_url=f"{locked.url}/v1", api_key="wrong").chat.completions.create(
            model="tiny", messages=ASK["messages"], max_tokens=2
        )
    assert refused.value.body["code"] == "invalid_api_key"
    assert refused.value.response.headers["www-authenticate"] == "Bearer"
    for key in KEYS:  # several keys, each works
        reply = openai.OpenAI(base_url=f"{locked.url}/v1", api_key=key).chat.completions.create(
            model="tiny", messages=ASK["messages"], max_tokens=2
        )
        assert reply.usage.completion_tokens == 2
    with pytest.raises(ollama.ResponseError) as ollama_refused:
        ollama.Client(host=locked.url).list()
    assert ollama_refused.value.status_code == 401
    keyed = ollama.Client(host=locked.url, headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert keyed.list().models
    for path in ("/health", "/ready"):
        assert httpx.get(f"{locked.url}{path}").status_code == 200
    for path in ("/metrics", "/v1/models", "/v1/agent/status", "/", "/api/tags"):
        assert httpx.get(f"{locked.url}{path}").status_code == 401, path
    keyed_scrape = httpx.get(f"{locked.url}/metrics", headers={"Authorization": "Bearer k-second"})
    assert keyed_scrape.status_code == 200


def test_keys_from_a_file_and_open_metrics(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# one per line\nfile-key\n")
    daemon = start_daemon("--api-key-file", str(key_file),
                          env={"EDGE_AGENT_METRICS_REQUIRE_KEY": "false"})  # fmt: skip
    try:
        assert httpx.get(f"{daemon.url}/metrics").status_code == 200
        authorized = {"Authorization": "Bearer file-key"}
        reply = httpx.post(f"{daemon.url}/v1/chat/completions", json=ASK, headers=authorized)
        assert reply.status_code == 200
        assert httpx.post(f"{daemon.url}/v1/chat/completions", json=ASK).status_code == 401
    finally:
        daemon.stop()


def test_binding_beyond_loopback_needs_a_key(tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--http-host", "0.0.0.0"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "http_host=0.0.0.0 serves beyond this machine" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    for env in ({"EDGE_AGENT_API_KEYS": '["k"]'}, {"EDGE_AGENT_ALLOW_INSECURE_BIND": "true"}):
        daemon = start_daemon("--http-host", "0.0.0.0", env=env)
        try:
            assert httpx.get(f"http://127.0.0.1:{daemon.url.rsplit(':', 1)[1]}/health").is_success
        finally:
            daemon.stop()


@pytest.mark.parametrize("blank", ["keys", "key_file"])
def test_blank_keys_do_not_open_the_door(tmp_path: Path, blank: str) -> None:
    """`[""]`, or a key file of comments and blank lines, is no key: start-up fails."""
    key_file = tmp_path / "keys"
    key_file.write_text("# keys, one per line\n\n   \n")
    # Each on its own: blank keys alone, or a key file of comments and blanks alone.
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_API_KEYS"}
    flags: list[str] = []
    if blank == "keys":
        env["EDGE_AGENT_API_KEYS"] = '["", "  "]'
    else:
        flags = ["--api-key-file", str(key_file)]
    refused = subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--http-host", "0.0.0.0", "--http-port", "0",
         *flags],
        cwd=REPO, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "serves beyond this machine" in refused.stderr
    assert "the keys given are blank" in refused.stderr


@pytest.fixture(scope="module")
def limited() -> Iterator[Daemon]:
    env = {"EDGE_AGENT_MAX_REQUEST_BYTES": "4096", "EDGE_AGENT_MAX_MESSAGES": "3",
           "EDGE_AGENT_MAX_COMPLETION_TOKENS": "64",
           "EDGE_AGENT_MAX_PROMPT_TOKENS": "100"}  # fmt: skip
    instance = start_daemon("--max-context", "16384", env=env)
    yield instance
    instance.stop()


@pytest.mark.parametrize(
    ("body", "status", "code", "named"),
    [
        ({**ASK, "messages": [{"role": "user", "content": "x" * 5000}]}, 413,
         "request_too_large", "max_request_bytes"),
        ({**ASK, "messages": ASK["messages"] * 4}, 400, "too_many_messages", "max_messages"),
        ({**ASK, "max_tokens": 65}, 400, "max_tokens_too_large", "max_completion_tokens"),
        ({**ASK, "messages": [{"role": "user", "content": "word " * 200}]}, 400,
         "prompt_too_long", "max_prompt_tokens"),
    ],
)  # fmt: skip
def test_each_limit_is_refused_by_name(
    limited: Daemon, body: dict, status: int, code: str, named: str
) -> None:
    reply = httpx.post(f"{limited.url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["code"] == code and named in error["message"]
    assert httpx.post(f"{limited.url}/v1/chat/completions", json=ASK, timeout=30).is_success


def test_a_body_without_length_is_capped_too(limited: Daemon) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    reply = httpx.post(f"{limited.url}/v1/chat/completions", content=chunks(), timeout=30,
                       headers={"content-type": "application/json"})  # fmt: skip
    assert reply.status_code == 413


def test_concurrent_requests_per_client_are_capped() -> None:
    daemon = start_daemon("--max-context", "16384",
                          env={"EDGE_AGENT_MAX_STREAMS_PER_CLIENT": "1"})  # fmt: skip
    long = {**ASK, "max_tokens": 16000, "stream": True}
    try:
        with httpx.Client(timeout=60) as client, client.stream(
            "POST", f"{daemon.url}/v1/chat/completions", json=long
        ) as first:  # fmt: skip
            lines = first.iter_lines()
            assert next(lines).startswith("data: ")
            second = httpx.post(f"{daemon.url}/v1/chat/completions", json=ASK, timeout=30)
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "too_many_concurrent_requests"
            assert second.headers["retry-after"] == "1"
            list(lines)
        assert httpx.post(f"{daemon.url}/v1/chat/completions", json=ASK, timeout=30).is_success
    finally:
        daemon.stop()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"input": "Hello", "max_output_tokens": 2}),
        ("/api/chat", {"model": "tiny", "messages": ASK["messages"], "stream": False,
                       "options": {"num_predict": 2}}),
        ("/api/pull", {"model": "no-such-model"}),
    ],
)  # fmt: skip
def test_every_costly_route_shares_the_clients_rate_limit(path: str, body: dict) -> None:
    """The Responses API, Ollama's routes and pulls draw on the same per-client bucket as
    chat completions: the third request within the burst is refused whatever the route."""
    env = {"EDGE_AGENT_RATE_LIMIT_PER_MINUTE": "6", "EDGE_AGENT_RATE_LIMIT_BURST": "2"}
    daemon = start_daemon(env=env)
    try:
        first = httpx.post(f"{daemon.url}/v1/chat/completions", json=ASK, timeout=30)
        second = httpx.post(f"{daemon.url}{path}", json=body, timeout=30)
        third = httpx.post(f"{daemon.url}{path}", json=body, timeout=30)
        assert first.status_code == 200 and second.status_code != 429
        assert third.status_code == 429 and "Rate limit" in third.text
    finally:
        daemon.stop()


def test_rate_limit_over_http_and_mqtt(tmp_path: Path) -> None:
    broker = Broker(tmp_path).start()
    env = {"EDGE_AGENT_RATE_LIMIT_PER_MINUTE": "6", "EDGE_AGENT_RATE_LIMIT_BURST": "2",
           "EDGE_AGENT_MQTT_MAX_PAYLOAD_BYTES": "2048"}  # fmt: skip
    daemon = start_daemon("--mqtt-url", broker.url, "--device-id", "gw-rate", env=env)
    try:
        codes = [httpx.post(f"{daemon.url}/v1/chat/completions", json=ASK, timeout=30)
                 for _ in range(3)]  # fmt: skip
        assert [r.status_code for r in codes] == [200, 200, 429]
        assert codes[2].json()["error"]["code"] == "rate_limited"
        assert 1 <= int(codes[2].headers["retry-after"]) <= 10  # one token per 10 s
        device = Device(broker)
        finals = [device.replies(device.request("gw-rate", ASK))[-1] for _ in range(3)]
        assert [f["type"] for f in finals] == ["final", "final", "rejected"]
        assert finals[2]["code"] == "rate_limited" and finals[2]["retry_after_s"] >= 1
        other = Device(broker)  # another device has its own bucket, and a payload cap
        big = other.replies(other.request("gw-rate", {**ASK, "pad": "x" * 3000}))[-1]
        assert big["type"] == "rejected" and big["code"] == "payload_too_large"
        assert "mqtt_max_payload_bytes" in big["message"]
    finally:
        daemon.stop()
        broker.stop()


def test_key_comparison_and_buckets_on_their_own() -> None:
    keys = ApiKeys(["alpha", "beta"])
    assert keys.allows("Bearer beta") and keys.allows("bearer alpha")
    assert not keys.allows("Bearer alph") and not keys.allows("beta") and not keys.allows(None)
    now = [0.0]
    bucket = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert [bucket.take("a"), bucket.take("a")] == [0.0, 0.0]
    assert bucket.take("a") == pytest.approx(1.0)  # one token a second
    assert bucket.take("b") == 0.0  # clients are separate
    now[0] = 1.0
    assert bucket.take("a") == 0.0
