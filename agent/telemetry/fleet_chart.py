"""`edge-agent fleet snapshot --png`: the fleet as bar charts, one bar per gateway.

matplotlib is an optional extra (`pip install 'edge-agent[plot]'`); it is imported only here.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.telemetry.fleet import FleetView, GatewayRow

PANELS: tuple[tuple[str, str], ...] = (
    ("tokens_per_s", "generated tokens/s"),
    ("requests_per_s", "requests/s"),
    ("p95_ttft_s", "p95 time to first token (s)"),
    ("fallback_share", "share sent to the cloud"),
    ("memory_available_mib", "memory available (MiB)"),
    ("temperature_c", "temperature (°C)"),
)
STATE_COLOURS = {"ready": "tab:green", "degraded": "tab:orange", "loading": "tab:blue"}


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed."""


def render(view: FleetView, path: Path) -> None:
    """Write a PNG: one panel per figure, one bar per gateway, coloured by state."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ChartUnavailable(
            "fleet snapshot --png needs matplotlib: pip install 'edge-agent[plot]'"
        ) from exc
    rows: list[GatewayRow] = sorted(view.rows.values(), key=lambda r: r.device_id)
    names = [row.device_id + (" (overdue)" if row.overdue else "") for row in rows]
    colours = [STATE_COLOURS.get(row.state, "tab:red") for row in rows]
    figure, axes = plt.subplots(2, 3, figsize=(15, 7), constrained_layout=True)
    for axis, (field, title) in zip(axes.flat, PANELS, strict=True):
        values = [getattr(row, field) for row in rows]
        axis.bar(names, [v or 0 for v in values], color=colours)
        for index, value in enumerate(values):
            if value is None:
                axis.annotate("n/a", (index, 0), ha="center", va="bottom", fontsize=8)
        axis.set_title(title)
        axis.tick_params(axis="x", labelrotation=30, labelsize=8)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    states = ", ".join(f"{row.device_id}: {row.state}" for row in rows) or "no gateways"
    figure.suptitle(f"edge-agent fleet at {stamp}: {states}")
    figure.savefig(path, format="png", dpi=80)
    plt.close(figure)
