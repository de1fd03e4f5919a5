"""`edge-agent fleet watch|snapshot`: every gateway's status and telemetry, from the broker."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt.connection import BrokerAddress

OVERDUE_AFTER_INTERVALS = 2.5


@dataclass
class GatewayRow:
    device_id: str
    state: str = "unknown"
    model: str | None = None
    model_version: str | None = None
    provider: str | None = None
    requests_per_s: float | None = None
    tokens_per_s: float | None = None
    p95_ttft_s: float | None = None
    fallback_share: float | None = None
    memory_available_mib: float | None = None
    temperature_c: float | None = None
    last_seen: float = 0.0
    overdue: bool = False
    _interval_s: float | None = None
    _telemetry_at: float | None = None
    _last_totals: tuple[float, float, float] | None = None

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


class FleetView:
    def __init__(self) -> None:
        self.rows: dict[str, GatewayRow] = {}

    def row(self, device_id: str) -> GatewayRow:
        return self.rows.setdefault(device_id, GatewayRow(device_id))

    def on_status(self, device_id: str, status: dict[str, Any], now: float) -> GatewayRow:
        row = self.row(device_id)
        row.state = status.get("state", "unknown")
        row.model = status.get("model", row.model)
        row.model_version = status.get("model_version", row.model_version)
        row.provider = status.get("provider", row.provider)
        row.last_seen = now
        return row

    def on_telemetry(self, device_id: str, document: dict[str, Any], now: float) -> GatewayRow:
        row = self.row(device_id)
        figures = document.get("metrics", {})
        requests = sum(figures.get("requests_total", {}).values())
        tokens = sum(figures.get("generation_tokens_total", {}).values())
        fallbacks = sum(figures.get("fallbacks_total", {}).values())
        ts = float(document.get("ts", now))
        if (
            row._last_totals is not None
            and row._telemetry_at is not None
            and ts > row._telemetry_at
        ):
            elapsed = ts - row._telemetry_at
            row.requests_per_s = (requests - row._last_totals[0]) / elapsed
            row.tokens_per_s = (tokens - row._last_totals[1]) / elapsed
        row._last_totals = (requests, tokens, fallbacks)
        row._telemetry_at = ts
        row._interval_s = float(document.get("interval_s", 60))
        row.fallback_share = fallbacks / requests if requests else None
        row.p95_ttft_s = document.get("latency_s", {}).get("ttft", {}).get("p95")
        memory = figures.get("memory_available_bytes")
        row.memory_available_mib = memory / 2**20 if memory is not None else None
        row.temperature_c = figures.get("temperature_celsius")
        row.last_seen = now
        row.overdue = False
        return row

    def mark_overdue(self, now: float) -> list[GatewayRow]:
        """Rows whose telemetry is late (newly marked ones are returned)."""
        changed = []
        for row in self.rows.values():
            late = (
                row._interval_s is not None
                and now - row.last_seen > OVERDUE_AFTER_INTERVALS * row._interval_s
            )
            if late != row.overdue:
                row.overdue = late
                changed.append(row)
        return changed

    def table(self) -> str:
        header = f"{'gateway':<16}{'state':<9}{'model':<10}{'version':<9}{'provider':<14}{'req/s':>7}{'tok/s':>8}{'p95 ttft':>9}{'fallback':>9}{'mem MiB':>9}{'temp':>6}  last seen"  # noqa: E501
        lines = [header]
        for row in sorted(self.rows.values(), key=lambda r: r.device_id):
            age = f"{time.time() - row.last_seen:.0f}s ago" + (" OVERDUE" if row.overdue else "")
            lines.append(
                f"{row.device_id:<16}{row.state:<9}{row.model or '-':<10}"
                f"{row.model_version or '-':<9}{row.provider or '-':<14}"
                f"{_num(row.requests_per_s, 2):>7}{_num(row.tokens_per_s, 1):>8}"
                f"{_num(row.p95_ttft_s, 3):>9}{_pct(row.fallback_share):>9}"
                f"{_num(row.memory_available_mib, 0):>9}{_num(row.temperature_c, 0):>6}  {age}"
            )
        return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _subscribe(
    url: str,
    prefix: str,
    view: FleetView,
    lock: threading.Lock,
    on_row: Callable[[GatewayRow], None],
) -> Client:
    """A started client feeding every gateway's status and telemetry into `view`."""
    address = BrokerAddress.parse(url)

    def on_connect(
        client: Client,
        userdata: object,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        client.subscribe([(f"{prefix}/+/status", 1), (f"{prefix}/+/telemetry", 0)])

    def on_message(client: Client, userdata: object, message: MQTTMessage) -> None:
        try:
            payload = json.loads(message.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if not isinstance(payload, dict):  # junk on a gateway topic must not stop the loop
            return
        device_id, kind = message.topic.removeprefix(prefix + "/").rsplit("/", 1)
        with lock:
            if kind == "status":
                on_row(view.on_status(device_id, payload, time.time()))
            else:
                on_row(view.on_telemetry(device_id, payload, time.time()))

    client = Client(callback_api_version=CallbackAPIVersion.VERSION2)
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set()
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(address.host, address.port)
    client.loop_start()
    return client


def watch(url: str, prefix: str, as_json: bool, refresh_s: float = 1.0) -> None:
    """Subscribe to every gateway's status and telemetry; print until interrupted."""
    view = FleetView()
    lock = threading.Lock()

    def emit(row: GatewayRow) -> None:
        if as_json:
            print(json.dumps(row.public()), flush=True)

    client = _subscribe(url, prefix, view, lock, emit)
    try:
        while True:
            time.sleep(refresh_s)
            with lock:
                for row in view.mark_overdue(time.time()):
                    emit(row)
                if not as_json:
                    sys.stdout.write("\x1b[2J\x1b[H" + view.table() + "\n")
                    sys.stdout.flush()
    finally:
        client.loop_stop()
        client.disconnect()


def snapshot(url: str, prefix: str, wait_s: float) -> FleetView:
    """The fleet as it is now: retained statuses, and rates from two telemetry documents.

    Returns once every live gateway has reported twice (rates need a difference), or after
    `wait_s`, whichever comes first.
    """
    view = FleetView()
    lock = threading.Lock()
    complete = threading.Event()

    def check(row: GatewayRow) -> None:
        live = [r for r in view.rows.values() if r.state not in ("offline", "lost")]
        if live and all(r.requests_per_s is not None for r in live):
            complete.set()

    client = _subscribe(url, prefix, view, lock, check)
    try:
        complete.wait(wait_s)
    finally:
        client.loop_stop()
        client.disconnect()
    with lock:
        view.mark_overdue(time.time())
        return view
