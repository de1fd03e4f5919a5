"""`provider = "auto"` chooses by measurement: real onnxruntime-genai calibration on the
bundled model, cached in the state directory per (model variant, hardware), chosen by the
`provider_objective`, shown by /v1/agent/status and `edge-agent detect`.

Only the CPU EP can run here (the OpenVINO plugin offers no CPU device), so the choice
between two providers is tested on one real CPU record plus an injected record for
OpenVINO in the same cache file the daemon reads, and on an `Installed` that claims the
plugin's CPU device: its real calibration then really fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.engine.select import Selection, select
from agent.hardware.inventory import detect
from agent.hardware.providers import Installed
from tests.conftest import REPO, TINY

CACHE = "provider_calibration.json"
# What a machine whose OpenVINO plugin offers a CPU device reports (not this one).
OPENVINO_CPU = Installed(openvino=True, openvino_devices=frozenset({"CPU"}))


def choose(
    state: Path, objective: str, installed: Installed, options: dict | None = None
) -> Selection:
    """What `edge-agent detect` does with `provider = "auto"`: a lone provider is measured
    in a load of its own (the daemon measures the model it serves instead)."""
    from agent.engine.calibration import Calibration

    calibration = Calibration(state, objective, threads=2, load_alone=True)  # type: ignore[arg-type]
    return select(TINY, None, "auto", False, options or {}, detect(), installed, calibration)


def events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e.get("event") == name]


def detect_json(state: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "detect", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "EDGE_AGENT_STATE_DIR": str(state), "EDGE_AGENT_PROVIDER": "auto"},
    )  # fmt: skip
    return dict(json.loads(result.stdout))


def test_auto_calibrates_once_then_reads_the_cache(daemon_factory, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = daemon_factory("--provider", "auto", "--state-dir", str(state))
    # Every accepted provider is measured: the CPU EP everywhere, OpenVINO where its plugin
    # offers the CPU device (not on this machine's AMD CPU).
    measured = events(first.logs, "provider calibrated")
    providers = [e["provider"] for e in measured]
    assert "cpu" in providers and all(e["decode_tok_s"] > 0 and e["ttft_ms"] > 0 for e in measured)
    choice = first.status()["provider_choice"]
    fastest = max(measured, key=lambda e: e["decode_tok_s"])["provider"]
    assert choice["objective"] == "decode" and choice["provider"] == fastest
    if providers == ["cpu"]:  # measured on the served model: no load of its own
        assert "only accepted provider" in choice["reason"]
        assert [e.get("on") for e in measured] == ["served"]
        assert choice["figures"][0]["load_s"] == round(first.status()["model"]["load_time_s"], 3)
    figures = {f["provider"]: f for f in choice["figures"]}
    assert set(figures) == set(providers)
    assert {f["source"] for f in figures.values()} == {"measured"}
    assert figures["cpu"]["decode_tok_s"] == measured[providers.index("cpu")]["decode_tok_s"]
    assert (state / CACHE).is_file()
    assert first.stop() == 0

    # The objective is not part of what was measured: the figures serve either.
    second = daemon_factory(
        "--provider", "auto", "--state-dir", str(state), "--provider-objective", "ttft"
    )
    assert events(second.logs, "provider calibrated") == []  # not measured again
    cached_events = events(second.logs, "provider calibration cached")
    assert [e["provider"] for e in cached_events] == providers
    again = second.status()["provider_choice"]
    quickest = min(measured, key=lambda e: e["ttft_ms"])["provider"]
    assert again["objective"] == "ttft" and again["provider"] == quickest
    cached = {f["provider"]: f for f in again["figures"]}
    assert cached == {name: {**f, "source": "cache"} for name, f in figures.items()}

    shown = detect_json(state)["provider_choice"]
    assert shown["provider"] == fastest and shown["figures"] == again["figures"]
    table = subprocess.run(
        [sys.executable, "-m", "agent", "detect"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "EDGE_AGENT_STATE_DIR": str(state), "EDGE_AGENT_PROVIDER": "auto"},
    ).stdout  # fmt: skip
    assert "provider choice (objective: decode tokens/s)" in table
    assert f"{cached['cpu']['decode_tok_s']:.1f} tok/s" in table


def test_a_named_provider_is_not_calibrated(daemon_factory) -> None:
    daemon = daemon_factory()  # the tests' `--provider cpu`
    assert events(daemon.logs, "provider calibrated") == []
    choice = daemon.status()["provider_choice"]
    assert choice["figures"] == [] and "named in the settings" in choice["reason"]


def test_the_objective_decides_between_measured_providers(tmp_path: Path) -> None:
    """A real CPU measurement, then an OpenVINO record that is faster to the first token and
    slower to decode, written where the daemon's calibration keeps its results."""
    measured = choose(tmp_path, "decode", Installed())
    assert [p.label for p in measured.plans] == ["cpu"]
    cache = json.loads((tmp_path / CACHE).read_text())
    [hardware] = cache["hardware"].values()
    [variant] = hardware["variants"].values()
    cpu = variant["providers"]["cpu"]
    variant["providers"]["openvino:cpu"] = {
        **cpu,
        "provider": "openvino:cpu",
        "ttft_ms": cpu["ttft_ms"] / 2,
        "decode_tok_s": cpu["decode_tok_s"] / 2,
    }
    (tmp_path / CACHE).write_text(json.dumps(cache))

    by_decode = choose(tmp_path, "decode", OPENVINO_CPU)
    by_ttft = choose(tmp_path, "ttft", OPENVINO_CPU)
    assert [p.label for p in by_decode.plans] == ["cpu", "openvino:cpu"]
    assert [p.label for p in by_ttft.plans] == ["openvino:cpu", "cpu"]
    assert "cpu has the highest decode tokens/s" in by_decode.choice.reason
    assert "openvino:cpu has the lowest TTFT" in by_ttft.choice.reason
    assert {f.source for f in by_decode.choice.figures + by_ttft.choice.figures} == {"cache"}


def test_a_failing_calibration_falls_back_to_the_ranking(tmp_path: Path) -> None:
    """OpenVINO cannot create a session on a device that does not exist (nor at all on this
    machine): the ranking applies."""
    bogus = {"openvino": {"device_type": "NO_SUCH_DEVICE"}}
    selection = choose(tmp_path, "decode", OPENVINO_CPU, bogus)
    assert [p.label for p in selection.plans] == ["openvino:cpu", "cpu"]  # the ranking
    reason = selection.choice.reason
    assert "calibration failed for openvino:cpu" in reason and "ranking order" in reason
    failed, cpu = selection.choice.figures
    assert failed.error and failed.decode_tok_s is None
    assert cpu.source == "measured" and cpu.decode_tok_s
    providers = json.loads((tmp_path / CACHE).read_text())["hardware"]
    stored = [set(v["providers"]) for h in providers.values() for v in h["variants"].values()]
    assert stored == [{"cpu"}]  # a failure is tried again at the next start


def test_an_unreadable_cache_is_measured_again(tmp_path: Path) -> None:
    (tmp_path / CACHE).write_text('{"hardware": {"x": {"variants": [1]}}, "tru')
    selection = choose(tmp_path, "decode", Installed())
    assert [f.source for f in selection.choice.figures] == ["measured"]
    assert choose(tmp_path, "decode", Installed()).choice.figures[0].source == "cache"


def test_the_timed_prompt_fits_the_budget_at_the_warm_up_pace(tmp_path: Path) -> None:
    """A slow model (Phi-4-mini on a gateway) gets a short prompt, a fast one the whole
    prompt; TTFTs measured at different lengths (cached at different starts) are compared
    per prompt token."""
    from agent.engine.calibration import (
        MIN_PROMPT_TOKENS,
        PREFILL_BUDGET_S,
        WARM_UP_TOKENS,
        Figures,
        decide,
        measure,
        prompt_length,
    )

    assert prompt_length(61, warm_up_s=0.001) == 61  # SmolLM2-fast: the whole prompt
    assert prompt_length(160, warm_up_s=WARM_UP_TOKENS * PREFILL_BUDGET_S / 40) == 40
    assert prompt_length(61, warm_up_s=5.0) == MIN_PROMPT_TOKENS  # 0.6 s a token
    plan = choose(tmp_path, "decode", Installed()).plans[0]
    assert measure(plan, 2, prompt_tokens=20).prompt_tokens == 20
    assert measure(plan, 2).prompt_tokens > 20  # the bundled model is fast: the whole prompt

    plans = choose(tmp_path, "ttft", OPENVINO_CPU, {"openvino": {"device_type": "NONE"}}).plans
    long_slow = Figures("openvino:cpu", "v", ttft_ms=100.0, decode_tok_s=1.0, prompt_tokens=100)
    short_fast = Figures("cpu", "v", ttft_ms=40.0, decode_tok_s=1.0, prompt_tokens=20)
    order, reason = decide(plans, [long_slow, short_fast], "ttft")
    assert [p.label for p in order] == ["openvino:cpu", "cpu"]  # 1.0 against 2.0 ms a token
    assert "100.0 ms for 100 tokens" in reason and "40.0 ms for 20 tokens" in reason
