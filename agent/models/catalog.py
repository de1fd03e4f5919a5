"""The model catalog (package data `agent/data/catalog/*.toml`): models edge-agent knows
how to fetch or build, with per-variant sources, size and memory estimates and tool-call
markup. The estimates are only used where the source's own figures are not known: `models
pull` reads every file's size from the hub's listing first (agent/models/fit.py)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

CATALOG_DIR = Path(str(resources.files("agent") / "data" / "catalog"))
DEFAULT_CONTEXT = 4096


class CatalogError(ValueError):
    """Unknown model or variant; the message lists what exists."""


@dataclass(frozen=True)
class CatalogFile:
    path: str
    size: int | None = None
    sha256: str | None = None  # pinned here where known; the hub's LFS hash otherwise


@dataclass(frozen=True)
class CatalogVariant:
    name: str
    provider: str
    precision: str
    ram_mib_estimate: int  # to load it and serve default_context tokens (see fit.py)
    size_mib_estimate: int  # its files on the gateway: the download, or what convert builds
    # Peak RSS at load / the weights file, measured on this variant's layout at full depth (the
    # catalog file says where); None: fit.py's conservative default (LOAD_PEAK).
    load_peak_ratio: float | None = None
    repo: str | None = None  # a prebuilt ONNX repository on the hub...
    revision: str = "main"
    folder: str = ""
    files: tuple[CatalogFile, ...] = ()
    convert_from: str | None = None  # ...or a checkpoint to convert with the builder
    convert_options: tuple[str, ...] = ()  # `models convert` flags this variant needs

    @property
    def downloadable(self) -> bool:
        """False for a variant built by `models convert` on a workstation, not on the hub."""
        return self.repo is not None


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    context_length: int
    variants: tuple[CatalogVariant, ...]
    manifest: dict[str, Any] = field(default_factory=dict)  # what installed models inherit

    @property
    def default_context(self) -> int:
        return int(self.manifest.get("default_context", min(self.context_length, DEFAULT_CONTEXT)))

    @property
    def kv_bytes_per_token(self) -> int:
        """2 x layers x KV heads x head size x 4 bytes (the builder's CPU models keep the KV
        cache in fp32); 0 for a model without one (an encoder)."""
        return int(self.manifest.get("kv_bytes_per_token", 0))

    def variant(self, wanted: str | None, provider: str | None = None) -> CatalogVariant:
        """`wanted` by name, else the first for `provider`, else the first CPU one."""
        if wanted is not None:
            for variant in self.variants:
                if variant.name == wanted:
                    return variant
            names = ", ".join(v.name for v in self.variants)
            raise CatalogError(f"{self.name} has no variant {wanted!r} (have: {names})")
        for preferred in (provider, "cpu"):
            for variant in self.variants:
                if variant.provider == preferred:
                    return variant
        return self.variants[0]


def load_catalog(directory: Path = CATALOG_DIR) -> dict[str, CatalogEntry]:
    entries = {}
    for path in sorted(directory.glob("*.toml")):
        raw = tomllib.loads(path.read_text())
        variants = tuple(
            CatalogVariant(
                **{k: v for k, v in variant.items() if k not in ("files", "convert_options")},
                files=tuple(CatalogFile(**f) for f in variant.get("files", ())),
                convert_options=tuple(variant.get("convert_options", ())),
            )
            for variant in raw.pop("variants")
        )
        entries[raw["name"]] = CatalogEntry(
            name=raw["name"],
            description=raw.get("description", ""),
            context_length=int(raw["context_length"]),
            variants=variants,
            manifest=raw,
        )
    return entries


def find(name: str, directory: Path = CATALOG_DIR) -> CatalogEntry:
    catalog = load_catalog(directory)
    entry = catalog.get(name) or next(
        (e for e in catalog.values() if name in e.manifest.get("ollama_tags", ())), None
    )
    if entry is None:
        raise CatalogError(f"{name!r} is not in the catalog (have: {', '.join(catalog)})")
    return entry
