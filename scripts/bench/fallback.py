"""Benchmark: a burst of concurrent requests with and without a cloud endpoint.

The gateway runs the bundled model with one batch slot, a short queue and a 1 s latency
budget; the "cloud" is a second edge-agent process on loopback. Prints one table:
requests completed, p95 latency and the share served locally.

Usage: python scripts/bench/fallback.py [--burst 24] [--tokens 400]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from bench_common import REPO


def start(*flags: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve", "--http-port", "0", "--provider", "cpu",
         "--log-format", "json", "--max-context", "4096", *flags],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    for line in process.stderr:
        event = json.loads(line)
        if event.get("event") == "ready":
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
            return process, event["url"]
    raise RuntimeError("daemon did not start")


def burst(url: str, size: int, tokens: int) -> list[tuple[int, float, str]]:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Report the pressure of the pump."}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=size)) as client:

        def one(_: int) -> tuple[int, float, str]:
            started = time.perf_counter()
            reply = client.post(f"{url}/v1/chat/completions", json=body)
            backend = reply.headers.get("x-edge-backend", "-")
            return reply.status_code, time.perf_counter() - started, backend

        with ThreadPoolExecutor(size) as pool:
            return list(pool.map(one, range(size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=400)
    args = parser.parse_args()
    gateway_flags = ("--max-batch", "1", "--max-queue", "4", "--latency-budget-s", "1")
    cloud, cloud_url = start("--max-batch", "8", "--max-queue", "64")
    rows = []
    try:
        for label, extra in (
            ("local only", ()),
            ("with cloud", ("--cloud", f"openai={cloud_url}/v1")),
        ):
            gateway, url = start(*gateway_flags, *extra)
            try:
                burst(url, 2, 8)  # warm-up, and the governor learns the service time
                results = burst(url, args.burst, args.tokens)
            finally:
                gateway.terminate()
                gateway.wait(30)
            done = [r for r in results if r[0] == 200]
            latencies = sorted(r[1] for r in done)
            p95 = latencies[max(0, int(len(latencies) * 0.95) - 1)] if latencies else float("nan")
            local = sum(r[2] == "local" for r in done)
            rows.append((label, len(done), p95, local / len(done) if done else 0.0))
    finally:
        cloud.terminate()
    print(f"\nburst of {args.burst} concurrent requests, {args.tokens} tokens each, tiny model\n")
    print("| gateway | completed | p95 latency s | served locally |")
    print("| --- | --- | --- | --- |")
    for label, done, p95, share in rows:
        print(f"| {label} | {done}/{args.burst} | {p95:.2f} | {share:.0%} |")


if __name__ == "__main__":
    main()
