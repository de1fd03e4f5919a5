"""Benchmark: raw onnxruntime-genai in-process vs the daemon over HTTP (OpenAI SSE).

Both on the CPU execution provider with the same thread count (the usable cores).

Prints one table: time to first token and decode tokens/s for a single stream, and the
aggregate tokens/s at 1, 2, 4 and 8 concurrent streams through the daemon. Engines are
measured alternately, round by round, so machine noise hits both alike; medians are shown.
Not a test: this machine is shared and noisy, so numbers go in a table, never in asserts.

With --telemetry it instead compares two daemons side by side: one publishing MQTT
telemetry every second to a local Mosquitto while /metrics is scraped every second, one
with neither; single-stream decode tokens/s, alternating round by round.

Usage: python scripts/bench/local.py [--model models/bench] [--rounds 3] [--tokens 128]
                                     [--telemetry]
(builds models/bench with .venv-build/bin/python scripts/build_bench_model.py if missing)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime_genai as og
import psutil
from bench_common import REPO, ensure_model, start_broker

from agent.hardware.profile import detect

PROMPT_TOKENS = 128


def prompt_text(tokenizer: og.Tokenizer) -> str:
    """Text that tokenizes to exactly PROMPT_TOKENS tokens."""
    words = " ".join(f"sensor {i} reports {i * 7 % 100} degrees." for i in range(200))
    ids = tokenizer.encode(words)[:PROMPT_TOKENS]
    text = tokenizer.decode(ids)
    assert len(tokenizer.encode(text)) == PROMPT_TOKENS
    return text


class RawEngine:
    """onnxruntime-genai's og.Engine driven directly, greedy, one stream."""

    def __init__(self, variant: Path, max_length: int) -> None:
        config = og.Config(str(variant))
        threads = detect().usable_cores  # what the daemon uses by default
        session = {"intra_op_num_threads": threads}
        config.overlay(
            json.dumps({"model": {"decoder": {"session_options": session}},
                        "search": {"max_length": max_length}})
        )  # fmt: skip
        config.clear_providers()
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.engine = og.Engine(self.model)
        self.events = self.engine.create_event_buffer(64)

    def run(self, prompt: str, tokens: int) -> tuple[float, float]:
        started = time.perf_counter()
        ids = self.tokenizer.encode(prompt)
        request = self.engine.create_request()
        options = og.TurnOptions(request)
        options.set_max_generated_tokens(tokens)
        options.set_do_sample(False)
        request.begin_turn(np.asarray(ids, dtype=np.int32), options)
        stamps = []
        while self.engine.has_pending_requests():
            for event in self.engine.run(self.events):
                if event.token is not None:
                    stamps.append(time.perf_counter())
        request.close()
        return stamps[0] - started, (len(stamps) - 1) / (stamps[-1] - stamps[0])


class Daemon:
    def __init__(self, model: Path, max_length: int, *extra: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", "serve", "--model", str(model), "--http-port", "0",
             "--provider", "cpu",
             "--max-context", str(max_length), "--max-batch", "8", "--log-format", "json",
             *extra],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for line in self.process.stderr:
            event = json.loads(line)
            if event.get("event") == "ready":
                self.url = event["url"]
                break
        threading.Thread(target=lambda: [None for _ in self.process.stderr], daemon=True).start()
        # One pooled client for all streams: a new httpx client per request costs ~20 ms
        # (TLS context) under the GIL, which would stagger "concurrent" arrivals.
        self.client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=16))

    def stream(self, prompt: str, tokens: int) -> tuple[float, float, int]:
        body = {
            "model": "bench",
            "prompt": prompt,
            "max_tokens": tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        stamps, generated = [], 0
        with self.client.stream("POST", f"{self.url}/v1/completions", json=body) as reply:
            for line in reply.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if event["choices"] and event["choices"][0]["text"]:
                    stamps.append(time.perf_counter())
                if event.get("usage"):
                    generated = event["usage"]["completion_tokens"]
        ttft = stamps[0] - started
        # Text deltas can hold back a few tokens; tokens/s uses the server's token count.
        return ttft, (generated - 1) / (stamps[-1] - stamps[0]), generated

    def aggregate(self, prompt: str, tokens: int, streams: int) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            results = list(pool.map(lambda _: self.stream(prompt, tokens), range(streams)))
        return sum(r[2] for r in results) / (time.perf_counter() - started)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


class Scraper:
    """Reads a daemon's /metrics every second, as Prometheus would, until stopped."""

    def __init__(self, url: str) -> None:
        self.stop = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self._loop, args=(url,), daemon=True)
        self.thread.start()

    def _loop(self, url: str) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.wait(1.0):
                client.get(f"{url}/metrics").raise_for_status()
                self.scrapes += 1


def telemetry_overhead(model: Path, variant: Path, rounds: int, tokens: int) -> None:
    """Decode tok/s with telemetry on vs off, two daemons measured alternately."""
    max_length = PROMPT_TOKENS + tokens + 64
    prompt = prompt_text(og.Tokenizer(og.Model(str(variant))))
    with tempfile.TemporaryDirectory() as scratch:
        broker, port = start_broker(Path(scratch))
        on = Daemon(model, max_length, "--mqtt-url", f"mqtt://127.0.0.1:{port}",
                    "--telemetry-interval-s", "1", "--device-id", "bench")  # fmt: skip
        off = Daemon(model, max_length)
        scraper = Scraper(on.url)
        runs: dict[str, list[float]] = {"on": [], "off": []}
        cpu = {name: psutil.Process(d.process.pid) for name, d in (("on", on), ("off", off))}
        cpu_before = {name: sum(p.cpu_times()[:2]) for name, p in cpu.items()}
        started = time.perf_counter()
        try:
            on.stream(prompt, 8), off.stream(prompt, 8)  # warm-up
            for round_no in range(rounds):  # A B B A ...: neither side always goes first
                order = [("on", on), ("off", off)][:: 1 if round_no % 2 == 0 else -1]
                for name, daemon in order:
                    runs[name].append(daemon.stream(prompt, tokens)[1])
            wall = time.perf_counter() - started
            cpu_s = {name: sum(p.cpu_times()[:2]) - cpu_before[name] for name, p in cpu.items()}
        finally:
            scraper.stop.set()
            on.stop(), off.stop()
            broker.terminate()
    on_tps, off_tps = statistics.median(runs["on"]), statistics.median(runs["off"])
    extra = (cpu_s["on"] - cpu_s["off"]) / wall
    print(f"\nbench model {variant}, {tokens} greedy tokens, {rounds} alternating rounds,")
    print(
        f"medians; telemetry on = MQTT telemetry every 1 s + {scraper.scrapes} /metrics scrapes\n"
    )
    print("| telemetry | decode tok/s | vs off | daemon CPU s |")
    print("| --- | --- | --- | --- |")
    print(f"| off | {off_tps:.1f} | 1.000 | {cpu_s['off']:.2f} |")
    print(f"| on | {on_tps:.1f} | {on_tps / off_tps:.3f} | {cpu_s['on']:.2f} |")
    print(f"\ntelemetry's extra CPU: {extra * 100:.2f}% of one core over {wall:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "bench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--telemetry", action="store_true", help="telemetry on vs off instead")
    args = parser.parse_args()
    variant = ensure_model(args.model)
    if args.telemetry:
        telemetry_overhead(args.model, variant, args.rounds, args.tokens)
        return
    max_length = PROMPT_TOKENS + args.tokens + 64
    raw = RawEngine(variant, max_length)
    prompt = prompt_text(raw.tokenizer)
    daemon = Daemon(args.model, max_length)
    raw_runs, http_runs = [], []
    levels = (1, 2, 4, 8)
    agg: dict[int, list[float]] = {n: [] for n in levels}
    try:
        raw.run(prompt, 8), daemon.stream(prompt, 8)  # warm-up
        for _ in range(args.rounds):
            raw_runs.append(raw.run(prompt, args.tokens))
            http_runs.append(daemon.stream(prompt, args.tokens)[:2])
            for n in levels:
                agg[n].append(daemon.aggregate(prompt, args.tokens, n))
    finally:
        daemon.stop()

    def med(values: list[float]) -> float:
        return statistics.median(values)

    raw_ttft, raw_tps = med([r[0] for r in raw_runs]), med([r[1] for r in raw_runs])
    http_ttft, http_tps = med([r[0] for r in http_runs]), med([r[1] for r in http_runs])
    print(f"\nbench model {variant}, prompt {PROMPT_TOKENS} tokens, {args.tokens} greedy tokens,")
    print(f"{args.rounds} alternating rounds, medians\n")
    print("| path | TTFT ms | decode tok/s | vs raw |")
    print("| --- | --- | --- | --- |")
    print(f"| raw og.Engine in-process | {raw_ttft * 1e3:.0f} | {raw_tps:.1f} | 1.00 |")
    print(
        f"| daemon HTTP SSE | {http_ttft * 1e3:.0f} | {http_tps:.1f} | {http_tps / raw_tps:.2f} |"
    )
    print("\n| concurrent streams | aggregate tok/s | vs 1 stream |")
    print("| --- | --- | --- |")
    for n in levels:
        print(f"| {n} | {med(agg[n]):.1f} | {med(agg[n]) / med(agg[1]):.2f} |")


if __name__ == "__main__":
    main()
