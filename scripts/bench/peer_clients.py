"""The engines peers.py compares, each behind one interface: run a prompt, time the tokens.

Every peer runs in a process of its own (its peak RSS is that process's VmHWM) and makes
exactly `tokens` greedy tokens, end-of-sequence ignored: raw engines in engine_worker.py,
the daemon over HTTP (OpenAI SSE) and MQTT (chunk messages), llama.cpp's server over HTTP.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from bench_common import REPO, free_port, mqtt_device
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WORKER = Path(__file__).with_name("engine_worker.py")


@dataclass(frozen=True)
class Prompt:
    """The same prompt two ways: a chat (MQTT) and its rendered text (completions)."""

    chat: list[dict]
    text: str
    tokens: int


@dataclass(frozen=True)
class Run:
    ttft_s: float
    decode_tps: float
    generated: int
    prompt_tokens: int
    prefill_s: float | None = None  # the daemon's own account: admission to first token


def _status_bytes(pid: int, field: str) -> int:
    """A memory figure from /proc/PID/status (reported in kB), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    return _status_bytes(pid, "VmHWM")


def current_rss(pid: int) -> int:
    return _status_bytes(pid, "VmRSS")


class Peer:
    label: str
    pid: int

    def run(self, prompt: Prompt, tokens: int) -> Run:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def concurrent_runs(peer: Peer, prompts: list[Prompt], tokens: int) -> tuple[list[Run], float]:
    """One request per prompt, all at once; their runs and the wall time to the last end."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        runs = list(pool.map(lambda prompt: peer.run(prompt, tokens), prompts))
    return runs, time.perf_counter() - started


class WorkerPeer(Peer):
    """An in-process engine (engine_worker.py) in its own process, one request at a time."""

    def __init__(
        self,
        label: str,
        engine: str,
        model: Path,
        threads: int,
        max_length: int,
        python: str = sys.executable,  # llama.cpp's peers may live in another venv
    ):
        self.label = label
        self.process = subprocess.Popen(
            [python, str(WORKER), engine, str(model), "--threads", str(threads),
             "--max-length", str(max_length)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.pid = self.process.pid
        if json.loads(self.process.stdout.readline()).get("ready") is not True:
            raise RuntimeError(f"{label} did not start")

    def run(self, prompt: Prompt, tokens: int) -> Run:
        self.process.stdin.write(json.dumps({"prompt": prompt.text, "tokens": tokens}) + "\n")
        self.process.stdin.flush()
        return Run(**json.loads(self.process.stdout.readline()))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


def stream_sse(client: httpx.Client, url: str, body: dict) -> tuple[float, list[float], int]:
    """POST a streaming OpenAI completion; (start, stamps of text chunks, usage tokens)."""
    started = time.perf_counter()
    stamps, generated = [], 0
    with client.stream("POST", url, json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0].get("text"):
                stamps.append(time.perf_counter())
            if event.get("usage"):
                generated = event["usage"]["completion_tokens"]
    return started, stamps, generated or len(stamps)


def sse_run(started: float, stamps: list[float], generated: int, prompt: Prompt) -> Run:
    # Text deltas can hold back a byte-level token or two: tokens/s uses the token count.
    spread = stamps[-1] - stamps[0]  # one chunk only: too short a reply to time decode
    return Run(
        ttft_s=stamps[0] - started,
        decode_tps=(generated - 1) / spread if spread > 0 else float("nan"),
        generated=generated,
        prompt_tokens=prompt.tokens,
    )


class Daemon:
    """`edge-agent serve` on a model, with HTTP on a free loopback port and MQTT.
    `provider` None: the daemon's default (`auto`, which calibrates the providers it may use
    in a new state directory, so at every start here)."""

    def __init__(
        self,
        model: Path,
        max_length: int,
        threads: int,
        mqtt_port: int | None,
        *extra: str,
        provider: str | None = "cpu",
    ):
        self.state = tempfile.TemporaryDirectory()
        self.finished: list[dict] = []
        command = [
            sys.executable, "-m", "agent", "serve", "--model", str(model), "--http-port", "0",
            "--threads", str(threads), "--max-context", str(max_length),
            "--max-batch", "8", "--max-queue", "64", "--log-format", "json",
            "--state-dir", self.state.name,
        ]  # fmt: skip
        if provider is not None:
            command += ["--provider", provider]
        if mqtt_port is not None:
            command += ["--mqtt-url", f"mqtt://127.0.0.1:{mqtt_port}", "--device-id", "bench"]
        command += extra
        spawned = time.perf_counter()
        self.process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
        self.pid = self.process.pid
        try:
            self.url = self._wait_ready()
            self.cold_start_s = time.perf_counter() - spawned
            self.client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=16))
            status = self.status()
            self.load_time_s = status["model"]["load_time_s"]
            self.model_name = status["model"]["name"]
            self.provider = status["provider"]
        except BaseException:
            self.close()
            raise

    def status(self) -> dict:
        return self.client.get(f"{self.url}/v1/agent/status").json()

    def _wait_ready(self) -> str:
        for line in self.process.stderr:
            event = json.loads(line)
            if event.get("event") == "ready":
                threading.Thread(target=self._read_log, daemon=True).start()
                return event["url"]
        raise RuntimeError("the daemon exited before it was ready")

    def prefill_s(self, logged: int) -> float:
        """The engine's own time to first token (queue excluded) for the request after
        the first `logged` ones, from its "request finished" line (logged before the
        final chunk goes out, read here by another thread)."""
        deadline = time.perf_counter() + 5
        while len(self.finished) <= logged and time.perf_counter() < deadline:
            time.sleep(0.001)
        event = self.finished[logged]
        return event["ttft_s"] - event["queue_s"]

    def _read_log(self) -> None:
        """Keep the server-side view of each request (its "request finished" line)."""
        for line in self.process.stderr:
            event = json.loads(line)
            if event.get("event") == "request finished":
                self.finished.append(event)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.state.cleanup()


class DaemonHttp(Peer):
    """`ignore_eos` False: the reply ends where the model ends it (at most `tokens`). The
    daemon serves `ignore_eos` (a minimum length) on og.Engine only, so a lone request on
    its default path needs it off."""

    def __init__(self, daemon: Daemon, label: str = "daemon HTTP SSE", ignore_eos: bool = True):
        self.daemon, self.pid, self.label, self.ignore_eos = daemon, daemon.pid, label, ignore_eos

    def run(self, prompt: Prompt, tokens: int) -> Run:
        body = {
            "model": self.daemon.model_name, "prompt": prompt.text, "max_tokens": tokens,
            "temperature": 0, "ignore_eos": self.ignore_eos,
            "stream": True, "stream_options": {"include_usage": True},
        }  # fmt: skip
        logged = len(self.daemon.finished)
        timing = stream_sse(self.daemon.client, f"{self.daemon.url}/v1/completions", body)
        run = sse_run(*timing, prompt)
        return replace(run, prefill_s=self.daemon.prefill_s(logged))

    def close(self) -> None:
        self.daemon.close()


class DaemonMqtt(Peer):
    """A paho MQTT 5 device: the request on infer/req, chunks and the final on its topic."""

    def __init__(
        self, daemon: Daemon, port: int, label: str = "daemon MQTT", ignore_eos: bool = True
    ):
        self.pid, self.model_name, self.label = daemon.pid, daemon.model_name, label
        self.ignore_eos = ignore_eos
        self.topic = f"bench/{uuid.uuid4().hex[:6]}"
        self.waiting: dict[bytes, queue.Queue] = {}
        self.client = mqtt_device(port, self.topic, self._on_message)

    def _on_message(self, client, userdata, message) -> None:
        reply = json.loads(message.payload)
        self.waiting[message.properties.CorrelationData].put((time.perf_counter(), reply))

    def run(self, prompt: Prompt, tokens: int) -> Run:
        correlation = uuid.uuid4().bytes
        replies: queue.Queue = queue.Queue()
        self.waiting[correlation] = replies
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self.topic
        properties.CorrelationData = correlation
        body = {
            "model": self.model_name, "messages": prompt.chat, "max_tokens": tokens,
            "temperature": 0, "ignore_eos": self.ignore_eos, "stream": True,
        }  # fmt: skip
        started = time.perf_counter()
        topic = "edge-agent/v1/bench/infer/req"
        self.client.publish(topic, json.dumps(body), 1, properties=properties)
        first = None
        while True:
            at, reply = replies.get(timeout=600)
            if reply["type"] == "chunk" and first is None:
                first = at
            elif reply["type"] == "rejected":
                raise RuntimeError(f"MQTT request rejected: {reply}")
            elif reply["type"] == "final":
                break
        del self.waiting[correlation]
        usage, timings = reply["usage"], reply["timings"]
        generated = usage["completion_tokens"]
        return Run(
            ttft_s=first - started,
            decode_tps=(generated - 1) / (at - first),
            generated=generated,
            prompt_tokens=usage["prompt_tokens"],
            prefill_s=timings["time_to_first_token_s"] - timings["queue_s"],
        )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class LlamaServer(Peer):
    """`python -m llama_cpp.server` on the GGUF, on a free loopback port."""

    def __init__(
        self,
        gguf: Path,
        threads: int,
        max_length: int,
        parallel: int = 1,
        python: str = sys.executable,
        label: str = "llama_cpp.server HTTP",
    ):
        self.label = label
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [python, "-m", "llama_cpp.server", "--model", str(gguf),
             "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads),
             "--n_threads_batch", str(threads), "--n_ctx", str(max_length * parallel),
             "--n_batch", "512", "--interrupt_requests", "false", "--verbose", "false"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.pid = self.process.pid
        self.client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=16))
        for _ in range(600):
            try:
                if self.client.get(f"{self.url}/v1/models").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError("llama_cpp.server exited while starting")
            time.sleep(0.1)

    def run(self, prompt: Prompt, tokens: int) -> Run:
        # No min_tokens: the server does it in a Python logits processor, a per-token cost
        # the others do not pay; random weights seldom pick end-of-sequence (the table
        # shows the tokens made).
        body = {"prompt": prompt.text, "max_tokens": tokens, "temperature": 0, "stream": True}
        timing = stream_sse(self.client, f"{self.url}/v1/completions", body)
        return sse_run(*timing, prompt)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)
