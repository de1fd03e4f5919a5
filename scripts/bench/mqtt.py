"""Benchmark: MQTT vs HTTP round trips on the bundled model, side by side in one run.

Starts Mosquitto on a free loopback port and the daemon on the bundled tiny model, then
measures, alternating transports round by round: the latency (p50/p99) of a 1-token
request, and sustained requests/s with 8 requests in flight. Prints one table.

Usage: python scripts/bench/mqtt.py [--requests 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from bench_common import REPO, mqtt_device, start_broker
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def start_daemon(port: int) -> tuple[subprocess.Popen, str]:
    daemon = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve", "--http-port", "0", "--provider", "cpu",
         "--log-format", "json", "--mqtt-url",
         f"mqtt://127.0.0.1:{port}", "--device-id", "bench", "--max-batch", "8",
         "--max-queue", "64"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    url = None
    for line in daemon.stderr:
        event = json.loads(line)
        if event.get("event") == "ready":
            url = event["url"]
            break
    threading.Thread(target=lambda: [None for _ in daemon.stderr], daemon=True).start()
    return daemon, url


class MqttClient:
    """A paho MQTT 5 device waiting for each request's final reply."""

    def __init__(self, port: int) -> None:
        self.waiting: dict[bytes, queue.Queue] = {}
        self.topic = f"bench/{uuid.uuid4().hex[:6]}"
        self.client = mqtt_device(port, self.topic, self._on_message)

    def _on_message(self, client, userdata, message) -> None:
        if json.loads(message.payload)["type"] in ("final", "rejected"):
            self.waiting.pop(message.properties.CorrelationData).put(True)

    def call(self) -> float:
        correlation = uuid.uuid4().bytes
        done: queue.Queue = queue.Queue()
        self.waiting[correlation] = done
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self.topic
        properties.CorrelationData = correlation
        started = time.perf_counter()
        self.client.publish(
            "edge-agent/v1/bench/infer/req", json.dumps(BODY), 1, properties=properties
        )
        done.get(timeout=60)
        return time.perf_counter() - started


def http_call(client: httpx.Client, url: str) -> float:
    started = time.perf_counter()
    client.post(f"{url}/v1/chat/completions", json=BODY).raise_for_status()
    return time.perf_counter() - started


def sustained(call, requests: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: call(), range(requests)))
    return requests / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker, port = start_broker(Path(tmp))
        daemon, url = start_daemon(port)
        try:
            mqtt = MqttClient(port)
            http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=16))
            calls = {"HTTP": lambda: http_call(http, url), "MQTT": mqtt.call}
            for call in calls.values():
                for _ in range(20):
                    call()  # warm-up
            latency: dict[str, list[float]] = {name: [] for name in calls}
            rate: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    latency[name] += [call() for _ in range(args.requests)]
                    rate[name].append(sustained(call, args.requests))
        finally:
            daemon.terminate()
            broker.terminate()
    print(f"\n1-token chat request, tiny model, {args.rounds} alternating rounds of "
          f"{args.requests}\n")  # fmt: skip
    print("| transport | p50 ms | p99 ms | req/s (8 in flight) |")
    print("| --- | --- | --- | --- |")
    for name in calls:
        ordered = sorted(latency[name])
        p50 = statistics.median(ordered) * 1e3
        p99 = ordered[int(len(ordered) * 0.99) - 1] * 1e3
        print(f"| {name} | {p50:.2f} | {p99:.2f} | {statistics.median(rate[name]):.0f} |")
    extra = (statistics.median(latency["MQTT"]) - statistics.median(latency["HTTP"])) * 1e3
    print(f"\nMQTT adds {extra:.2f} ms at p50")


if __name__ == "__main__":
    main()
