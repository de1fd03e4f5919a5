"""Metrics and MQTT telemetry agree with the traffic that was really sent."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import httpx
import matplotlib.image
from prometheus_client.parser import text_string_to_metric_families

from agent.telemetry.fleet import FleetView
from tests.conftest import REPO, Daemon, start_daemon
from tests.mqtt_support import Broker, Device

ASK = {"model": "tiny", "messages": [{"role": "user", "content": "Hello, gateway!"}]}


def scrape(url: str) -> dict[str, list]:
    text = httpx.get(f"{url}/metrics").text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def total(samples: list, suffix: str = "_total", **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name.endswith(suffix) and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_and_telemetry_count_http_and_mqtt_traffic(tmp_path) -> None:
    broker = Broker(tmp_path).start()
    daemon = start_daemon("--mqtt-url", broker.url, "--device-id", "gw-metrics",
                          "--telemetry-interval-s", "1")  # fmt: skip
    try:
        device = Device(broker)
        generated = 0
        for tokens in (3, 5, 7):
            reply = httpx.post(
                f"{daemon.url}/v1/chat/completions", json={**ASK, "max_tokens": tokens}, timeout=30
            ).json()
            generated += reply["usage"]["completion_tokens"]
        for tokens in (2, 4):
            final = device.replies(device.request("gw-metrics", {**ASK, "max_tokens": tokens}))[-1]
            generated += final["usage"]["completion_tokens"]
        metrics = scrape(daemon.url)
        assert total(metrics["edge_agent_requests"], backend="local") == 5
        assert total(metrics["edge_agent_generation_tokens"]) == generated
        assert total(metrics["edge_agent_time_to_first_token_seconds"], "_count") == 5
        assert total(metrics["edge_agent_e2e_request_latency_seconds"], "_count") == 5
        assert metrics["edge_agent_mqtt_connected"][0].value == 1
        assert metrics["edge_agent_queue_depth"][0].value == 0
        assert metrics["edge_agent_model_info"][0].labels["provider"] == "cpu"
        assert metrics["edge_agent_process_rss_bytes"][0].value > 0

        documents = []
        topic = "edge-agent/v1/gw-metrics/telemetry"
        while len(documents) < 3:
            item = device._take(lambda t, p, c: t == topic, 10)
            assert item is not None, "telemetry did not arrive"
            documents.append(item[1])
        seqs = [d["seq"] for d in documents]
        assert seqs == list(range(seqs[0], seqs[0] + 3))
        assert all(d["interval_s"] == 1 and d["device_id"] == "gw-metrics" for d in documents)
        latest = documents[-1]["metrics"]
        assert sum(latest["requests_total"].values()) == 5
        assert sum(latest["generation_tokens_total"].values()) == generated
        windows = [d["latency_s"]["ttft"]["count"] for d in documents]
        assert sum(windows) <= 5  # each request counted in one window only
    finally:
        daemon.stop()
        broker.stop()


def test_fleet_watch_sees_three_gateways_and_flags_a_killed_one(tmp_path) -> None:
    broker = Broker(tmp_path).start()
    gateways = {
        name: start_daemon(
            "--mqtt-url", broker.url, "--device-id", name, "--telemetry-interval-s", "1"
        )
        for name in ("gw-a", "gw-b", "gw-c")
    }
    watcher = subprocess.Popen(
        [sys.executable, "-m", "agent", "fleet", "watch", "--mqtt-url", broker.url, "--json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        rows: dict[str, dict] = {}

        def read_until(done) -> None:
            for line in watcher.stdout:
                row = json.loads(line)
                rows[row["device_id"]] = row
                if done():
                    return
            raise AssertionError(f"fleet watch ended early: {rows}")

        read_until(lambda: len(rows) == 3 and all(r["state"] == "ready" for r in rows.values()))
        assert {r["model"] for r in rows.values()} == {"tiny"}
        gateways["gw-b"].process.send_signal(signal.SIGKILL)
        gateways["gw-b"].process.wait(10)
        read_until(lambda: rows["gw-b"]["state"] == "lost")
        assert rows["gw-a"]["state"] == rows["gw-c"]["state"] == "ready"

        png = tmp_path / "fleet.png"
        snapshot = subprocess.run(
            [sys.executable, "-m", "agent", "fleet", "snapshot", "--mqtt-url", broker.url,
             "--png", str(png), "--wait-s", "30"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        shown = {r["device_id"]: r for r in map(json.loads, snapshot.stdout.splitlines())}
        assert {name: r["state"] for name, r in shown.items()} == {
            "gw-a": "ready", "gw-b": "lost", "gw-c": "ready"
        }  # fmt: skip
        assert shown["gw-a"]["requests_per_s"] is not None  # two telemetry documents seen
        assert png.read_bytes().startswith(b"\x89PNG")
        assert matplotlib.image.imread(png).shape[:2] == (7 * 80, 15 * 80)
    finally:
        watcher.kill()
        for daemon in gateways.values():
            if daemon.process.poll() is None:
                daemon.stop()
        broker.stop()


def test_fleet_view_rates_and_overdue_marks() -> None:
    view = FleetView()
    view.on_status("gw-1", {"state": "ready", "model": "tiny", "provider": "cpu"}, now=100)

    def document(ts: float, requests: int, tokens: int, fallbacks: int) -> dict:
        return {
            "ts": ts,
            "interval_s": 1,
            "latency_s": {"ttft": {"p95": 0.25}},
            "metrics": {
                "requests_total": {"backend=local,outcome=stop": requests},
                "generation_tokens_total": {"backend=local": tokens},
                "fallbacks_total": {"reason=memory": fallbacks},
                "memory_available_bytes": 512 * 2**20,
            },
        }

    view.on_telemetry("gw-1", document(100, 10, 100, 0), now=100)
    row = view.on_telemetry("gw-1", document(102, 14, 180, 2), now=102)
    assert (row.requests_per_s, row.tokens_per_s) == (2.0, 40.0)
    assert row.fallback_share == 2 / 14 and row.p95_ttft_s == 0.25
    assert row.memory_available_mib == 512
    assert view.mark_overdue(now=103) == []
    assert view.mark_overdue(now=105) == [row] and row.overdue
    table = view.table()
    assert "gw-1" in table and "OVERDUE" in table and "40.0" in table


def test_grafana_dashboard_uses_only_metrics_the_daemon_exposes(daemon: Daemon) -> None:
    dashboard = json.loads((REPO / "docker" / "grafana" / "edge-agent.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = set(re.findall(r"edge_agent_[a-z0-9_]+", " ".join(expressions)))
    assert len(used) >= 12
    exposed = {sample.name for samples in scrape(daemon.url).values() for sample in samples}
    # Families that only appear once something happened: a fallback, a cloud endpoint,
    # an MQTT broker, a thermal sensor. Their names come from the same registry code.
    conditional = {
        "edge_agent_fallbacks_total",
        "edge_agent_breaker_state",
        "edge_agent_mqtt_connected",
        "edge_agent_temperature_celsius",
    }
    httpx.post(f"{daemon.url}/v1/chat/completions", json={**ASK, "max_tokens": 3}, timeout=30)
    exposed |= {sample.name for samples in scrape(daemon.url).values() for sample in samples}
    missing = used - exposed - conditional
    assert not missing, f"dashboard queries unknown metrics: {missing}"
    source = (REPO / "agent" / "telemetry" / "metrics.py").read_text()
    for name in conditional & used:
        assert name.removesuffix("_total") in source
