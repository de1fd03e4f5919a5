"""Prometheus metrics, named like vLLM's with an `edge_agent_` prefix.

Recording happens once per finished request (never per token); live figures (queue,
breakers, system gauges) are read at scrape time by a collector.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.engine.types import Chunk

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True)
class LiveSource:
    """Where the scrape-time figures come from (wired by the service)."""

    queue_depth: Callable[[], int]
    running: Callable[[], int]
    batches: Callable[[], dict[int, int]]  # static batches started, by size
    breakers: Callable[[], dict[str, str]]
    memory_available_bytes: Callable[[], float | None]
    temperature_c: Callable[[], float | None]
    battery_percent: Callable[[], float | None]
    mqtt_connected: Callable[[], bool | None]
    mqtt_connects: Callable[[], int]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edge_agent_requests", "Finished requests", ["backend", "outcome"], registry=r
        )
        self.fallbacks = Counter(
            "edge_agent_fallbacks", "Requests sent to the cloud, by reason", ["reason"], registry=r
        )
        self.prompt_tokens = Counter(
            "edge_agent_prompt_tokens", "Prompt tokens processed", ["backend"], registry=r
        )
        self.generation_tokens = Counter(
            "edge_agent_generation_tokens", "Tokens generated", ["backend"], registry=r
        )
        self.ttft = Histogram(
            "edge_agent_time_to_first_token_seconds", "Time to first token", ["backend"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "edge_agent_inter_token_latency_seconds", "Mean time between tokens of a request",
            ["backend"], buckets=ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "edge_agent_e2e_request_latency_seconds", "Request latency, queue included",
            ["backend"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.decode_rate = Histogram(
            "edge_agent_decode_tokens_per_second", "Decode speed of a request", ["backend"],
            buckets=RATE_BUCKETS, registry=r,
        )  # fmt: skip
        self.load_time = Gauge(
            "edge_agent_model_load_seconds", "Time the model took to load", registry=r
        )
        self.model = Info("edge_agent_model", "The model being served", registry=r)
        self._window: dict[str, list[float]] = {"ttft": [], "e2e": []}

    def attach(self, live: LiveSource) -> None:
        self.registry.register(_LiveCollector(live))

    def observe(self, backend: str, final: Chunk) -> None:
        """Record one finished request (called once per request, at its final chunk)."""
        outcome = final.finish_reason.value if final.finish_reason else "unknown"
        self.requests.labels(backend, outcome).inc()
        if final.usage is not None:
            self.prompt_tokens.labels(backend).inc(final.usage.prompt_tokens)
            self.generation_tokens.labels(backend).inc(final.usage.completion_tokens)
        timings = final.timings
        if timings is None:
            return
        self.e2e.labels(backend).observe(timings.total_s)
        self._window["e2e"].append(timings.total_s)
        completion = final.usage.completion_tokens if final.usage else 0
        if completion:
            self.ttft.labels(backend).observe(timings.time_to_first_token_s)
            self._window["ttft"].append(timings.time_to_first_token_s)
        if completion > 1:
            self.itl.labels(backend).observe(timings.decode_s / (completion - 1))
            self.decode_rate.labels(backend).observe(timings.decode_tokens_per_s)

    def drain_window(self) -> dict[str, dict[str, float | None]]:
        """p50/p95 of the latencies recorded since the last call (for MQTT telemetry)."""
        window, self._window = self._window, {"ttft": [], "e2e": []}
        return {name: _quantiles(values) for name, values in window.items()}


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "p50": None, "p95": None}
    if len(values) == 1:
        return {"count": 1, "p50": values[0], "p95": values[0]}
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return {"count": len(values), "p50": statistics.median(values), "p95": cuts[18]}


class _LiveCollector(Collector):
    def __init__(self, live: LiveSource) -> None:
        self.live = live
        self.process = psutil.Process()

    def collect(self) -> Iterator[Metric]:
        live = self.live
        yield _gauge(
            "edge_agent_queue_depth", "Requests waiting for the local engine", live.queue_depth()
        )
        yield _gauge(
            "edge_agent_running_requests", "Requests the local engine is decoding", live.running()
        )
        batches = CounterMetricFamily(
            "edge_agent_engine_batches", "Static batches the local engine started, by size",
            labels=["size"],
        )  # fmt: skip
        for size, count in sorted(live.batches().items()):
            batches.add_metric([str(size)], count)
        yield batches
        breakers = GaugeMetricFamily(
            "edge_agent_breaker_state", "Cloud breaker: 0 closed, 1 half-open, 2 open",
            labels=["endpoint"],
        )  # fmt: skip
        for endpoint, state in live.breakers().items():
            breakers.add_metric([endpoint], BREAKER_STATES.get(state, 2))
        yield breakers
        connected = live.mqtt_connected()
        if connected is not None:
            yield _gauge(
                "edge_agent_mqtt_connected", "1 while connected to the broker", int(connected)
            )
            yield _gauge(
                "edge_agent_mqtt_reconnects",
                "Connections after the first",
                max(0, live.mqtt_connects() - 1),
            )
        yield _gauge("edge_agent_cpu_percent", "System CPU use", psutil.cpu_percent(None))
        yield _gauge(
            "edge_agent_process_rss_bytes", "Daemon resident memory", self.process.memory_info().rss
        )
        for name, doc, value in (
            (
                "edge_agent_memory_available_bytes",
                "Available memory (cgroup-aware)",
                live.memory_available_bytes(),
            ),
            ("edge_agent_temperature_celsius", "Hottest thermal zone", live.temperature_c()),
            (
                "edge_agent_battery_percent",
                "Battery charge while on battery",
                live.battery_percent(),
            ),
        ):
            if value is not None:
                yield _gauge(name, doc, value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def snapshot(registry: CollectorRegistry) -> dict[str, object]:
    """Counters as totals and gauges as values, keyed like /metrics (histograms are left to
    the caller's window quantiles)."""
    figures: dict[str, object] = {}
    labelled: dict[str, dict[str, float]] = {}  # the per-label buckets within `figures`
    for family in registry.collect():
        if family.type not in ("counter", "gauge", "info"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if family.type == "info":
                figures[family.name] = dict(sample.labels)
                continue
            name = sample.name.removeprefix("edge_agent_")
            if sample.labels:
                key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                bucket = labelled.setdefault(name, {})
                figures.setdefault(name, bucket)
                bucket[key] = sample.value
            else:
                figures[name] = sample.value
    return figures


def totals_by(counter: Counter, label: str) -> dict[str, float]:
    """A counter's totals grouped by one label (for /v1/agent/status)."""
    grouped: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels[label]
                grouped[key] = grouped.get(key, 0) + sample.value
    return grouped
