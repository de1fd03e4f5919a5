"""Provider choice by measurement (`provider = "auto"`). The ranking alone misleads: it puts
OpenVINO on CPU above the CPU EP, which decodes 1.7x faster on SmolLM2 (issue 22). So each
accepted provider loads the model variant once, runs a fixed prompt and a few greedy decode
steps, and the figures are kept in `state_dir/provider_calibration.json` per hardware
fingerprint and model variant: later starts read them instead of measuring. A provider
whose calibration fails (or was never measured) leaves the choice to the ranking. The
measurement stays within a few seconds on any model: the prompt is sized by the warm-up's
speed (Phi-4-mini on a slow gateway prefills a few tokens per second), decode by a time
budget. With one accepted provider there is nothing to choose before loading, so the
daemon measures the model it serves instead of loading it once more (served_calibration)."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.metadata
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import onnxruntime_genai as og
import structlog

from agent.engine.loading import LoadPlan, og_config
from agent.hardware.inventory import HardwareInventory

log = structlog.get_logger(__name__)

Objective = Literal["decode", "ttft"]
CACHE_FILE = "provider_calibration.json"
PROMPT = (
    "You are the assistant of an industrial gateway. A conveyor motor on line 3 reports a "
    "bearing temperature of 78 degrees, vibration at 4.2 mm/s and a current draw 12 percent "
    "above its weekly average. Summarise the state of the motor for the shift supervisor."
)
MAX_PROMPT_TOKENS = 160  # a byte-level tokenizer makes many tokens of the prompt
MIN_PROMPT_TOKENS = 16
WARM_UP_TOKENS = 8
PREFILL_BUDGET_S = 1.0  # what the timed prompt should take, judged by the warm-up's pace
DECODE_STEPS = 16
DECODE_BUDGET_S = 1.0  # a slow provider stops decoding early; its rate is still known
SOFTWARE = ("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime-ep-openvino")
OBJECTIVE_NAMES = {"decode": "decode tokens/s", "ttft": "TTFT"}
UNMEASURED = "hardware read from a recorded tree is not measured"


@dataclass(frozen=True)
class Figures:
    """One provider's calibration on one model variant; no figures where it failed."""

    provider: str
    variant: str
    ttft_ms: float | None = None
    decode_tok_s: float | None = None
    load_s: float | None = None
    prompt_tokens: int = 0
    decode_steps: int = 0
    source: Literal["measured", "cache", "none"] = "measured"
    error: str = ""

    @property
    def usable(self) -> bool:
        return bool(self.ttft_ms and self.decode_tok_s)

    def line(self) -> str:
        if not self.usable:
            failed = "calibration failed" if self.source == "measured" else "not calibrated"
            return f"{self.provider:<15}{failed}: {self.error}"
        load = f", load {self.load_s:.2f} s" if self.load_s is not None else ""
        return f"{self.provider:<15}TTFT {_ttft(self)}, {_rate(self)}{load} ({self.source})"


@dataclass(frozen=True)
class Choice:
    """Which provider goes first and why, with the figures behind it. `measure_served`: the
    only provider has no figures yet; the daemon measures the model once it serves it."""

    objective: Objective
    provider: str
    reason: str
    figures: tuple[Figures, ...] = ()
    measure_served: bool = False

    def to_dict(self) -> dict[str, Any]:
        shown = {k: v for k, v in asdict(self).items() if k != "measure_served"}
        return {**shown, "figures": [asdict(f) for f in self.figures]}

    def lines(self) -> list[str]:
        head = f"provider choice (objective: {OBJECTIVE_NAMES[self.objective]}): {self.provider}"
        return ["", head, *(f"  {f.line()}" for f in self.figures), f"  reason: {self.reason}"]


@dataclass(frozen=True)
class Calibration:
    """Where figures are kept, what the choice optimises, and the threads serving will use
    (figures for another thread count do not apply). `measure=False` only reads the cache
    (hardware read from a recorded tree cannot be measured)."""

    state_dir: Path
    objective: Objective = "decode"
    threads: int | None = None
    measure: bool = True
    load_alone: bool = False  # measure a lone provider by loading it too (`detect`)

    def choose(
        self, plans: list[LoadPlan], profile: HardwareInventory
    ) -> tuple[list[LoadPlan], Choice]:
        """`plans` (accepted, in rank order) reordered by the objective, and the choice."""
        path = self.state_dir / CACHE_FILE
        cache = _read(path)
        machine = self._machine(cache, profile)
        figures, changed = [], False
        entries = {plan.label: _variant_entry(machine, plan) for plan in plans}
        cached = {p.label: _cached(entries[p.label]["providers"].get(p.label), p) for p in plans}
        # One prompt length for every figure compared: a cached one's, else the first measured.
        length = next((known.prompt_tokens for known in cached.values() if known), None)
        for plan in plans:
            entry, known = entries[plan.label], cached[plan.label]
            if known is not None:
                log.info("provider calibration cached", **_fields(known))
            elif not self.measure:
                known = Figures(plan.label, plan.info.variant, source="none", error=UNMEASURED)
            elif len(plans) == 1 and not self.load_alone:
                reason = f"{plan.label} is the only accepted provider"
                log.info("provider chosen", provider=plan.label, reason=reason)
                return plans, Choice(self.objective, plan.label, reason, measure_served=True)
            else:
                known = measure(plan, self.threads, length)
                _return_freed_memory()
                if known.usable:
                    entry["providers"][plan.label] = _fields(known)
                    changed = True
            figures.append(known)
            if known.usable and length is None:
                length = known.prompt_tokens
        if changed:
            for key, entry in list(machine["variants"].items()):
                if not Path(entry["path"]).is_dir():
                    del machine["variants"][key]  # a model update removed it
            _write(path, cache)
        order, reason = decide(plans, figures, self.objective)
        choice = Choice(self.objective, order[0].label, reason, tuple(figures))
        log.info("provider chosen", provider=choice.provider, reason=reason)
        return order, choice

    def record(
        self, plan: LoadPlan, profile: HardwareInventory, choice: Choice, known: Figures
    ) -> Choice:
        """`choice` with the served model's figures, which are kept for the next start."""
        if known.usable:
            path = self.state_dir / CACHE_FILE
            cache = _read(path)
            _variant_entry(self._machine(cache, profile), plan)["providers"][plan.label] = _fields(
                known
            )
            _write(path, cache)
        return Choice(choice.objective, choice.provider, choice.reason, (known,))

    def _machine(self, cache: dict[str, Any], profile: HardwareInventory) -> dict[str, Any]:
        hardware, description = fingerprint(profile, self.threads)
        machine: dict[str, Any] = cache["hardware"].setdefault(
            hardware, {"description": description}
        )
        return machine


def decide(
    plans: list[LoadPlan], figures: list[Figures], objective: Objective
) -> tuple[list[LoadPlan], str]:
    """Order by the objective when every provider has figures; else the ranking's order."""
    missing = [f for f in figures if not f.usable]
    if missing:
        why = "; ".join(
            f"calibration failed for {f.provider} ({f.error})"
            if f.source == "measured"
            else f"{f.provider} not calibrated ({f.error})"
            for f in missing
        )
        return plans, f"{why}: the ranking order applies"
    by_label = {f.provider: f for f in figures}
    if len(plans) == 1:
        return plans, f"{plans[0].label} is the only accepted provider"

    def score(plan: LoadPlan) -> float:
        """TTFT per prompt token: figures cached at different starts may differ in length."""
        known = by_label[plan.label]
        if objective == "ttft":
            return (known.ttft_ms or 0.0) / max(known.prompt_tokens, 1)
        return -(known.decode_tok_s or 0.0)

    order = sorted(plans, key=score)  # stable: a tie keeps the ranking's order
    figure = _ttft if objective == "ttft" else _rate
    best, *rest = (by_label[p.label] for p in order)
    against = ", ".join(f"{f.provider} {figure(f)}" for f in rest)
    superlative = "lowest TTFT" if objective == "ttft" else "highest decode tokens/s"
    return order, f"{best.provider} has the {superlative} ({figure(best)}; {against})"


def measure(plan: LoadPlan, threads: int | None, prompt_tokens: int | None = None) -> Figures:
    """Load `plan` as serving would, warm up, then time a fixed prompt's first token and a
    few greedy decode steps (og.Generator, one request: the common case on a gateway).
    The prompt is `prompt_tokens` long, else as long as the warm-up's pace allows."""
    started = time.perf_counter()
    try:
        plan.prepare()
        # The serving configuration; the KV cache only as long as the calibration needs.
        model = og.Model(og_config(plan, threads, MAX_PROMPT_TOKENS + DECODE_STEPS))
        tokenizer = og.Tokenizer(model)
        prompt = list(tokenizer.encode(PROMPT))[:MAX_PROMPT_TOKENS]
        load_s = time.perf_counter() - started
        # First-call allocations stay out of the figures; its pace sizes the prompt.
        warm_up_s, _, _ = _generate(model, prompt[:WARM_UP_TOKENS], 2)
        prompt = prompt[: prompt_tokens or prompt_length(len(prompt), warm_up_s)]
        ttft_s, steps, decode_s = _generate(model, prompt, DECODE_STEPS)
        if steps == 0:
            raise RuntimeError("no decode step finished")
    except Exception as exc:
        return failed(plan, exc)
    return calibrated(plan, started, ttft_s, steps / decode_s, load_s, len(prompt), steps)


def calibrated(
    plan: LoadPlan,
    started: float,
    ttft_s: float,
    decode_tok_s: float,
    load_s: float,
    prompt_tokens: int,
    decode_steps: int,
    **logged: str,
) -> Figures:
    """One provider's figures, logged (with `logged`: where they were taken)."""
    figures = Figures(
        provider=plan.label,
        variant=plan.info.variant,
        ttft_ms=round(ttft_s * 1000, 3),
        decode_tok_s=round(decode_tok_s, 2),
        load_s=round(load_s, 3),
        prompt_tokens=prompt_tokens,
        decode_steps=decode_steps,
    )
    log.info("provider calibrated", **_fields(figures), calibration_s=_since(started), **logged)
    return figures


def failed(plan: LoadPlan, exc: Exception) -> Figures:
    log.warning("provider calibration failed", provider=plan.label, error=str(exc))
    return Figures(plan.label, plan.info.variant, error=str(exc).strip() or type(exc).__name__)


def prompt_length(available: int, warm_up_s: float) -> int:
    """As many prompt tokens as PREFILL_BUDGET_S holds at the warm-up's pace (which counts
    first-call allocations too, so it errs short), within [MIN_PROMPT_TOKENS, available]."""
    per_token_s = max(warm_up_s, 1e-6) / WARM_UP_TOKENS
    fits = int(PREFILL_BUDGET_S / per_token_s)
    return min(available, max(MIN_PROMPT_TOKENS, fits))


def _generate(model: og.Model, prompt: list[int], steps: int) -> tuple[float, int, float]:
    """(time to the first token, decode steps after it, their time)."""
    length = len(prompt) + steps
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=length, min_length=length)
    generator = og.Generator(model, params)
    started = time.perf_counter()
    generator.append_tokens(prompt)
    generator.generate_next_token()
    first = time.perf_counter()
    done = 0
    while done < steps - 1 and not generator.is_done():
        generator.generate_next_token()
        done += 1
        if time.perf_counter() - first > DECODE_BUDGET_S:
            break
    return first - started, done, time.perf_counter() - first


def fingerprint(profile: HardwareInventory, threads: int | None) -> tuple[str, str]:
    """(key, description) of what the figures depend on: processors, threads, and the
    onnxruntime-genai and plugin versions."""
    cpu = profile.cpu
    software = {}
    for name in SOFTWARE:
        try:
            software[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    facts = {
        "cpu": f"{cpu.vendor} {cpu.model} ({cpu.arch})",
        "features": sorted(cpu.features),
        "usable_cores": profile.usable_cores,
        "threads": threads,
        "gpus": sorted(g.name for g in profile.gpus),
        "npus": sorted(n.name for n in profile.npus),
        "software": software,
    }
    text = json.dumps(facts, sort_keys=True)
    description = f"{facts['cpu']}, {threads} threads, " + ", ".join(
        f"{k} {v}" for k, v in software.items()
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16], description


def _variant_entry(machine: dict[str, Any], plan: LoadPlan) -> dict[str, Any]:
    entry: dict[str, Any] = machine.setdefault("variants", {}).setdefault(
        variant_key(plan.info.path),
        {"path": str(plan.info.path), "variant": plan.info.variant, "providers": {}},
    )
    return entry


def variant_key(path: Path) -> str:
    """A model variant's identity: its folder and each file's size and mtime (a model
    replaced in place is measured again)."""
    folder = path.resolve()
    files = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()
    )
    return hashlib.sha256(json.dumps([str(folder), files]).encode()).hexdigest()[:16]


def _cached(stored: Any, plan: LoadPlan) -> Figures | None:
    """A stored record as Figures; None where there is none or it cannot be used."""
    if not isinstance(stored, dict):
        return None
    names = {f.name for f in fields(Figures)} - {"provider", "variant", "source"}
    try:
        known = Figures(
            plan.label,
            plan.info.variant,
            source="cache",
            **{k: v for k, v in stored.items() if k in names},
        )
        positive = float(known.ttft_ms or 0) > 0 and float(known.decode_tok_s or 0) > 0
    except (TypeError, ValueError):
        return None
    return known if positive else None


def _fields(figures: Figures) -> dict[str, Any]:
    """What is logged and stored: the figures without where they came from."""
    return {k: v for k, v in asdict(figures).items() if k not in ("source", "error")}


def _read(path: Path) -> dict[str, Any]:
    try:
        cache = json.loads(path.read_text())
    except FileNotFoundError:
        cache = {}
    except (OSError, ValueError) as exc:
        log.warning("provider calibration cache unreadable: measuring again", error=str(exc))
        cache = {}
    machines = cache.get("hardware") if isinstance(cache, dict) else None
    if not isinstance(machines, dict):
        machines = {}
    return {"version": 1, "hardware": {k: v for k, v in machines.items() if _valid(v)}}


def _valid(machine: Any) -> bool:
    variants = machine.get("variants", {}) if isinstance(machine, dict) else None
    return isinstance(variants, dict) and all(
        isinstance(v, dict)
        and isinstance(v.get("path"), str)
        and isinstance(v.get("providers"), dict)
        for v in variants.values()
    )


def _write(path: Path, cache: dict[str, Any]) -> None:
    """Atomically: a reader (another start, `edge-agent detect`) sees the old or the new."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(cache, indent=2, sort_keys=True))
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("provider calibration not cached", path=str(path), error=str(exc))


def _return_freed_memory() -> None:
    """The calibration's model is freed on this thread, into a glibc malloc arena that the
    engine's owner thread does not allocate from: without a trim, serving idles 113 MiB
    higher on SmolLM2 (scripts/bench/RESULTS.md). Elsewhere (musl) there is nothing to do."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _ttft(figures: Figures) -> str:
    return f"{figures.ttft_ms:.1f} ms for {figures.prompt_tokens} tokens"


def _rate(figures: Figures) -> str:
    return f"{figures.decode_tok_s:.1f} tok/s"


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)
