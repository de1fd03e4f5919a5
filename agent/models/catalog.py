"""The model catalog (package data `agent/data/catalog/*.toml`): models edge-agent knows
how to fetch or build, with per-variant sources, sizes, memory needs and tool-call markup."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

CATALOG_DIR = Path(str(resources.files("agent") / "data" / "catalog"))


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
    ram_mb: int
    download_mb: int
    repo: str | None = None  # a prebuilt ONNX repository on the hub...
    revision: str = "main"
    folder: str = ""
    files: tuple[CatalogFile, ...] = ()
    convert_from: str | None = None  # ...or a checkpoint to convert with the builder


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    context_length: int
    variants: tuple[CatalogVariant, ...]
    manifest: dict[str, Any] = field(default_factory=dict)  # what installed models inherit

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
                **{k: v for k, v in variant.items() if k != "files"},
                files=tuple(CatalogFile(**f) for f in variant.get("files", ())),
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
