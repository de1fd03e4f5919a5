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
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from bench_common import REPO, ensure_model, start_broker
from peer_clients import Daemon, DaemonHttp, WorkerPeer, concurrent_runs
from peers import Prompts

from agent.hardware.inventory import detect

PROMPT_TOKENS = 128


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
    threads = detect().usable_cores
    prompts = Prompts(variant, PROMPT_TOKENS)
    with tempfile.TemporaryDirectory() as scratch:
        broker, port = start_broker(Path(scratch))
        on = Daemon(model, max_length, threads, port, "--telemetry-interval-s", "1")
        off = Daemon(model, max_length, threads, None)
        scraper = Scraper(on.url)
        runs: dict[str, list[float]] = {"on": [], "off": []}
        cpu = {name: psutil.Process(d.pid) for name, d in (("on", on), ("off", off))}
        cpu_before = {name: sum(p.cpu_times()[:2]) for name, p in cpu.items()}
        started = time.perf_counter()
        try:
            streams = {"on": DaemonHttp(on), "off": DaemonHttp(off)}
            for stream in streams.values():
                stream.run(prompts.next(), 8)  # warm-up
            for round_no in range(rounds):  # A B B A ...: neither side always goes first
                for name in ("on", "off")[:: 1 if round_no % 2 == 0 else -1]:
                    runs[name].append(streams[name].run(prompts.next(), tokens).decode_tps)
            wall = time.perf_counter() - started
            cpu_s = {name: sum(p.cpu_times()[:2]) - cpu_before[name] for name, p in cpu.items()}
        finally:
            scraper.stop.set()
            on.close(), off.close()
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
    variant = ensure_model(args.model) / "cpu-int4"
    if args.telemetry:
        telemetry_overhead(args.model, variant, args.rounds, args.tokens)
        return
    max_length = PROMPT_TOKENS + args.tokens + 64
    threads = detect().usable_cores  # what the daemon uses by default
    prompts = Prompts(variant, PROMPT_TOKENS)
    raw = WorkerPeer("raw og.Engine", "og-engine", variant, threads, max_length)
    daemon = Daemon(args.model, max_length, threads, None)
    http = DaemonHttp(daemon)
    raw_runs, http_runs = [], []
    levels = (1, 2, 4, 8)
    agg: dict[int, list[float]] = {n: [] for n in levels}
    try:
        raw.run(prompts.next(), 8), http.run(prompts.next(), 8)  # warm-up
        for _ in range(args.rounds):
            raw_runs.append(raw.run(prompts.next(), args.tokens))
            http_runs.append(http.run(prompts.next(), args.tokens))
            for n in levels:
                done, wall = concurrent_runs(http, [prompts.next() for _ in range(n)], args.tokens)
                agg[n].append(sum(r.generated for r in done) / wall)
    finally:
        raw.close(), daemon.close()

    def med(values: list[float]) -> float:
        return statistics.median(values)

    raw_ttft, raw_tps = med([r.ttft_s for r in raw_runs]), med([r.decode_tps for r in raw_runs])
    http_ttft, http_tps = med([r.ttft_s for r in http_runs]), med([r.decode_tps for r in http_runs])
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
