"""Turn settings + hardware + installed packages + model variants into load plans."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from agent.engine.calibration import Calibration, Choice
from agent.engine.loading import LoadPlan
from agent.engine.served_calibration import Served, measure_served
from agent.hardware.inventory import HardwareInventory
from agent.hardware.providers import Candidate, Installed, rank, register_plugin
from agent.models.info import ModelDirError, resolve_model, variant_providers
from agent.settings import SettingsError, load_settings


@dataclass(frozen=True)
class Selection:
    ranking: list[Candidate]
    plans: list[LoadPlan]
    choice: Choice
    calibration: Calibration | None = None
    profile: HardwareInventory | None = None

    async def measured_on(self, engine: Served) -> Selection:
        """This selection with the figures of the model `engine` serves, where `auto` had a
        lone provider left to measure (Choice.measure_served); else this selection."""
        if not self.choice.measure_served or self.calibration is None or self.profile is None:
            return self
        plan = self.plans[0]
        figures = await measure_served(engine, plan)
        choice = self.calibration.record(plan, self.profile, self.choice, figures)
        return replace(self, choice=choice)


def select(
    model_dir: Path,
    variant: str | None,
    provider: str,
    fallback: bool,
    options: dict[str, dict[str, str]],
    profile: HardwareInventory,
    installed: Installed,
    calibration: Calibration | None = None,
) -> Selection:
    """`auto` tries every accepted candidate, in the order `calibration` measured (else in
    rank order). A named provider is tried even when the ranking rejects it (the operator
    knows best); CPU follows only with `fallback`. An explicit `variant` pins the variant
    for every attempt."""
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
    objective = calibration.objective if calibration else "decode"
    first = plans[0].label if plans else "none"
    if provider != "auto":
        choice = Choice(objective, first, f"provider {provider} is named in the settings")
    elif calibration is None or not plans:
        choice = Choice(objective, first, "the ranking order (not calibrated)")
    else:
        plans, choice = calibration.choose(plans, profile)
    return Selection(ranking, plans, choice, calibration, profile)


def detect_choice(
    root: Path, model_dir: Path, profile: HardwareInventory, installed: Installed
) -> Choice:
    """What the daemon's settings would choose here (`edge-agent detect`): measured where
    figures are missing on this machine; a recorded tree (`--root`) shows only the cache."""
    try:
        settings = load_settings()
        engine = settings.engine
        calibration = Calibration(
            settings.state_dir,
            engine.provider_objective,
            engine.intra_op_num_threads or profile.usable_cores,
            measure=root == Path("/"),
            load_alone=True,  # nothing is served here to measure instead
        )
        return select(
            model_dir,
            settings.models.model_variant,
            engine.provider,
            engine.provider_fallback,
            engine.provider_options,
            profile,
            installed,
            calibration,
        ).choice
    except (SettingsError, ModelDirError) as exc:
        return Choice("decode", "none", f"no choice: {exc}")
