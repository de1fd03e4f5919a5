"""`edge-agent detect`: the hardware inventory and the provider ranking, explained."""

from __future__ import annotations

import json
from pathlib import Path

from agent.hardware.inventory import HardwareInventory, detect
from agent.hardware.providers import Installed, rank
from agent.models.info import variant_providers

GIB = 1024**3


def report(root: Path, model_dir: Path, as_json: bool = False) -> str:
    profile = detect(root)
    installed = Installed.probe()
    variants = variant_providers(model_dir)
    ranking = rank(profile, installed, set(variants))
    if as_json:
        return json.dumps(
            {
                "profile": profile.to_dict(),
                "installed": vars(installed),
                "model_variants": variants,
                "providers": [
                    {
                        "provider": c.spec.label,
                        "accepted": c.accepted,
                        "reason": c.reason,
                        "variant": variants.get(c.variant_provider or ""),
                    }
                    for c in ranking
                ],
            },
            indent=2,
            default=str,
        )
    lines = _profile_lines(profile)
    lines += ["", f"{'rank':<5}{'provider':<15}{'verdict':<10}reason"]
    accepted = 0
    for candidate in ranking:
        order = str(accepted := accepted + 1) if candidate.accepted else "-"
        verdict = "use" if candidate.accepted else "reject"
        lines.append(f"{order:<5}{candidate.spec.label:<15}{verdict:<10}{candidate.reason}")
    return "\n".join(lines)


def _profile_lines(profile: HardwareInventory) -> list[str]:
    cpu, box = profile.cpu, profile.container

    def gib(value: int | None, missing: str = "unknown") -> str:
        return f"{value / GIB:.1f} GiB" if value is not None else missing

    temp = profile.max_temperature_c
    battery = profile.battery
    return [
        f"cpu        {cpu.vendor} {cpu.model} ({cpu.arch}), "
        f"{cpu.physical_cores} cores / {cpu.logical_cores} threads, "
        f"features: {', '.join(cpu.features) or 'none'}",
        f"memory     {gib(profile.usable_memory_bytes)} usable, "
        f"{gib(profile.available_memory_bytes)} available",
        f"container  cgroup v{box.version or '-'}: "
        f"memory limit {gib(box.memory_limit_bytes, 'none')}, "
        f"cpu quota {box.cpu_quota if box.cpu_quota is not None else 'none'}; "
        f"usable cores {profile.usable_cores}",
        f"gpus       {', '.join(f'{g.vendor} {g.name}' for g in profile.gpus) or 'none'}",
        f"npus       {', '.join(n.name for n in profile.npus) or 'none'}",
        f"thermal    {f'{temp:.1f} C max over {len(profile.thermal)} zones' if temp else 'unknown'}",  # noqa: E501
        f"battery    {f'{battery.percent}% (AC: {battery.on_ac})' if battery else 'none'}",
    ]
