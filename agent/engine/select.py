"""Turn settings + hardware + installed packages + model variants into load plans."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from agent.engine.loading import LoadPlan
from agent.hardware.inventory import HardwareInventory
from agent.hardware.providers import Candidate, Installed, rank, register_plugin
from agent.models.info import resolve_model, variant_providers


@dataclass(frozen=True)
class Selection:
    ranking: list[Candidate]
    plans: list[LoadPlan]


def select(
    model_dir: Path,
    variant: str | None,
    provider: str,
    fallback: bool,
    options: dict[str, dict[str, str]],
    profile: HardwareInventory,
    installed: Installed,
) -> Selection:
    """`auto` tries every accepted candidate in rank order. A named provider is tried even
    when the ranking rejects it (the operator knows best); CPU follows only with
    `fallback`. An explicit `variant` pins the variant for every attempt."""
    ranking = rank(profile, installed, set(variant_providers(model_dir)))
    if provider == "auto":
        chosen = [c for c in ranking if c.accepted]
    else:
        named = [c for c in ranking if c.spec.name == provider]
        chosen = [c for c in named if c.accepted][:1] or named[:1]
        if fallback and provider != "cpu":
            chosen.append(next(c for c in ranking if c.spec.name == "cpu"))
    plans = [
        LoadPlan(
            label=c.spec.label,
            og_provider=c.spec.og_name,
            options={**c.spec.options, **options.get(c.spec.name, {})},
            info=resolve_model(model_dir, variant, c.variant_provider),
            prepare=partial(register_plugin, c.spec),
            threads_option=c.spec.threads_option,
        )
        for c in chosen
    ]
    return Selection(ranking, plans)
