"""Will a catalog variant fit on this gateway? Its files' sizes (the hub's listing once `models
pull` has read it, else the catalog's estimate) against free disk, and the memory it needs to
load against what this process may use: RAM, or the cgroup's limit where that is lower.

Memory to load = the variant's load ratio x the files + the KV cache for the entry's
default_context. The ratio is the peak RSS at load over the weights file, measured where the
catalog gives one (`load_peak_ratio`: Phi-4-mini's layouts at full depth, 1.72 compact). Else
LOAD_PEAK, 2.5: measured on the Phi-4-mini-shaped bench model at 2 and 4 layers, where the
fixed runtime part dominates, so conservative for a model of that size and up; at 32 layers
the same layout peaks at 1.72x (scripts/bench/RESULTS.md). Only CPU variants are checked: a
GPU variant's weights live in device memory, which this does not read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agent.hardware.inventory import HardwareInventory
from agent.models.catalog import CatalogEntry, CatalogVariant, load_catalog

MIB = 1 << 20
LOAD_PEAK = 2.5  # the default ratio, from small shapes: see above
LISTINGS = ".listings"  # under the models dir: the hub's sizes, as the last pull read them


def mib(value: int) -> int:
    return round(value / MIB)


@dataclass(frozen=True)
class Need:
    files_bytes: int
    ram_bytes: int
    listed: bool  # the files' sizes come from the source's listing, not the catalog
    ratio: float = LOAD_PEAK  # peak at load / files

    @property
    def source(self) -> str:
        return "hub listing" if self.listed else "estimate"

    def describe(self, entry: CatalogEntry) -> str:
        if not self.listed:
            return f"about {mib(self.ram_bytes)} MiB (the catalog's estimate)"
        kv = entry.kv_bytes_per_token * entry.default_context
        return (
            f"about {mib(self.ram_bytes)} MiB ({self.ratio} x {mib(self.files_bytes)} MiB of "
            f"files, as the hub listing gives them, at load + {mib(kv)} MiB KV cache for "
            f"{entry.default_context} tokens)"
        )


def need(entry: CatalogEntry, variant: CatalogVariant, files_bytes: int | None = None) -> Need:
    """From the files' real sizes where known, else the catalog's estimates."""
    ratio = variant.load_peak_ratio or LOAD_PEAK
    if files_bytes is None:
        return Need(variant.size_mib_estimate * MIB, variant.ram_mib_estimate * MIB, False, ratio)
    kv = entry.kv_bytes_per_token * entry.default_context
    return Need(files_bytes, int(ratio * files_bytes) + kv, True, ratio)


def known_need(models_root: Path, entry: CatalogEntry, variant: CatalogVariant) -> Need:
    """The need from the listing a pull saved, else from the catalog's estimates."""
    path = _listing_path(models_root, entry, variant)
    try:
        sizes = json.loads(path.read_text())["sizes"]
    except (OSError, ValueError, KeyError):
        return need(entry, variant)
    return need(entry, variant, sum(int(size) for size in sizes.values()))


def save_listing(
    models_root: Path,
    entry: CatalogEntry,
    variant: CatalogVariant,
    commit: str,
    sizes: dict[str, int],
) -> None:
    path = _listing_path(models_root, entry, variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"repo": variant.repo, "commit": commit, "sizes": sizes}))


def _listing_path(models_root: Path, entry: CatalogEntry, variant: CatalogVariant) -> Path:
    return models_root / LISTINGS / f"{entry.name}.{variant.name}.json"


def fits_memory(variant: CatalogVariant, wanted: Need, usable: int | None) -> bool | None:
    """None where it is not known (no figure, or a GPU variant)."""
    if variant.provider != "cpu" or usable is None:
        return None
    return wanted.ram_bytes <= usable


def usable_text(hardware: HardwareInventory) -> str:
    limit, total = hardware.container.memory_limit_bytes, hardware.memory_total_bytes
    limited = limit is not None and (total is None or limit < total)
    where = "the cgroup's memory.max / memory.high" if limited else "RAM"
    return f"{mib(hardware.usable_memory_bytes or 0)} MiB usable here ({where})"


def how_to_get(entry: CatalogEntry, variant: CatalogVariant) -> str:
    if variant.downloadable:
        return f"pull it with `edge-agent models pull {entry.name} --variant {variant.name}`"
    options = "".join(f" {option}" for option in variant.convert_options)
    command = {
        "name": entry.name,
        "version": "VERSION",
        "source": {"url": "http://SERVER/DIR"},
        "manifest_url": "http://SERVER/DIR/files.json",
    }
    return (
        f"it is built by `edge-agent models convert {variant.convert_from} --out DIR{options}` "
        "on a workstation (the builder needs torch and the full checkpoint; a gateway does not run "
        "it), which writes DIR/files.json with every file's sha256; serve DIR from any HTTP "
        "server and push it to the gateways with the fleet command cmd/update_model "
        f"'{json.dumps(command)}', or copy DIR to one and install it with `edge-agent models "
        f"pull {entry.name} --variant {variant.name} --from DIR/{variant.name}`"
    )


def size_text(variant: CatalogVariant, wanted: Need) -> str:
    """`download 4699 MiB (hub listing)`, `build ~2303 MiB (estimate)`."""
    verb = "download" if variant.downloadable else "build"
    approx = "" if wanted.listed else "~"
    return f"{verb} {approx}{mib(wanted.files_bytes)} MiB ({wanted.source})"


def variant_line(models_root: Path, entry: CatalogEntry, variant: CatalogVariant) -> str:
    """One variant in `models list`: its files' size (listed where a pull read it) and the
    memory it needs to load."""
    wanted = known_need(models_root, entry, variant)
    memory = f"memory ~{mib(wanted.ram_bytes)} MiB"
    return f"  {variant.name:<24}{size_text(variant, wanted):<36}{memory}"


def refusal(
    entry: CatalogEntry, variant: CatalogVariant, wanted: Need, hardware: HardwareInventory
) -> str | None:
    """Why `variant` could not load here, and what would; None when it fits (or is not
    checked)."""
    usable = hardware.usable_memory_bytes
    if fits_memory(variant, wanted, usable) is not False or usable is None:
        return None
    lines = [
        f"{entry.name} {variant.name} needs {wanted.describe(entry)} to load, and there are "
        f"{usable_text(hardware)}: it could not load, so nothing was fetched"
    ]
    others = [v for v in entry.variants if v is not variant and v.provider == variant.provider]
    fitting = [v for v in others if fits_memory(v, need(entry, v), usable)]
    for other in others:
        estimate = f"{other.name} needs about {other.ram_mib_estimate} MiB (estimate)"
        if other in fitting:
            lines.append(f"{estimate} and fits: {how_to_get(entry, other)}")
        else:
            lines.append(f"{estimate}: it does not fit either")
    if not fitting:
        smaller = [
            f"{e.name} {v.name} (~{v.ram_mib_estimate} MiB)"
            for e in load_catalog().values()
            if e is not entry and e.manifest.get("kind") != "embedding"
            for v in e.variants[:1]
            if fits_memory(v, need(e, v), usable)
        ]
        lines.append(
            f"No variant of {entry.name} fits; catalog models that do: "
            + (", ".join(smaller) or "none")
        )
    return ". ".join(lines)
