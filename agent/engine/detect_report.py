"""`edge-agent detect`: the hardware inventory and the provider ranking, explained, and
which catalog models (their variant for this hardware) fit its memory and disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from agent.engine.select import detect_choice
from agent.hardware.inventory import HardwareInventory, detect
from agent.hardware.providers import Installed, rank
from agent.models import fit
from agent.models.catalog import load_catalog
from agent.models.info import variant_providers
from agent.settings import SettingsError, load_settings

GIB = 1024**3


def report(root: Path, model_dir: Path, as_json: bool = False) -> str:
    profile = detect(root)
    installed = Installed.probe()
    variants = variant_providers(model_dir)
    ranking = rank(profile, installed, set(variants))
    choice = detect_choice(root, model_dir, profile, installed)  # `auto`: measured
    catalog = _catalog_fit(profile, installed)
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
                "provider_choice": choice.to_dict(),
                "catalog": catalog,
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
    lines += choice.lines()
    return "\n".join(lines + _catalog_lines(profile, catalog))


def _models_root() -> Path | None:
    try:
        return load_settings().models_root
    except SettingsError:
        return None


def _catalog_fit(profile: HardwareInventory, installed: Installed) -> list[dict[str, Any]]:
    """Each catalog model's variants for the provider it would use here, with their needs
    (the hub's listing where a pull read it, else the catalog's estimates)."""
    root = _models_root()
    free = _free_disk(root) if root is not None else None
    usable = profile.usable_memory_bytes
    rows = []
    for entry in load_catalog().values():
        ranked = rank(profile, installed, {v.provider for v in entry.variants})
        provider = next((c.variant_provider for c in ranked if c.accepted), None) or "cpu"
        for variant in entry.variants:
            if variant.provider != provider:
                continue
            wanted = fit.known_need(root, entry, variant) if root else fit.need(entry, variant)
            rows.append({
                "model": entry.name, "variant": variant.name, "provider": provider,
                "ram_mib": fit.mib(wanted.ram_bytes), "files_mib": fit.mib(wanted.files_bytes),
                "sizes_from": wanted.source, "downloadable": variant.downloadable,
                "fits_memory": fit.fits_memory(variant, wanted, usable),
                "fits_disk": None if free is None else wanted.files_bytes <= free,
                "free_disk_mib": None if free is None else fit.mib(free),
            })  # fmt: skip
    return rows


def _free_disk(root: Path) -> int | None:
    """Free bytes where models are installed (its nearest existing folder)."""
    for folder in (root, *root.parents):
        if folder.is_dir():
            return shutil.disk_usage(folder).free
    return None


def _catalog_lines(profile: HardwareInventory, rows: list[dict[str, Any]]) -> list[str]:
    usable = profile.usable_memory_bytes
    free = next((r["free_disk_mib"] for r in rows if r["free_disk_mib"] is not None), None)
    lines = [
        "",
        f"catalog models: memory to load, of {fit.mib(usable)} MiB usable"
        if usable is not None
        else "catalog models: memory to load (usable memory unknown)",
        f"{'model':<26}{'variant':<18}{'memory':<12}{'verdict':<14}files"
        + (f" (of {free} MiB free in the models dir)" if free is not None else ""),
    ]
    verdicts = {True: "fits", False: "does not fit", None: "not checked"}
    for row in rows:
        approx = "" if row["sizes_from"] == "hub listing" else "~"
        disk = "" if row["fits_disk"] is not False else ", no room on disk"
        how = "" if row["downloadable"] else ", built by models convert"
        lines.append(
            f"{row['model']:<26}{row['variant']:<18}{'~' + str(row['ram_mib']) + ' MiB':<12}"
            f"{verdicts[row['fits_memory']]:<14}{approx}{row['files_mib']} MiB "
            f"({row['sizes_from']}{disk}{how})"
        )
    return lines


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
